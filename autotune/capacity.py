"""Capacity: the largest Poisson arrival rate a measured config serves within its latency SLOs.

A measurement (autotune/measure/throughput.py) times generate() of one full batch: ttft_s is the
prefill of the whole batch plus its first token, tpot_s the time per output token after that. It
says how fast one batch runs, not how many requests per second a server built on the config can
take while keeping its latency promises: requests come at random, wait for the server, and share
batches. This module answers that with a queueing simulation over the measured samples. Pure: no
torch, no I/O; the inputs are plain numbers, so Measurements can fill them (ServiceModel.from_measurements).

The model
---------
- Arrivals: Poisson at rate_rps (independent exponential gaps).
- Server: one model process doing static batching, as a simple transformers-based server does.
  When it is idle and requests are waiting, it takes up to batch_size of them, first come first
  served, and runs them as one generate() to completion; requests arriving meanwhile wait for the
  next batch. It never holds a batch back to fill it (no batching timeout).
- Service time of a batch of k: prefill_s(k) + (L - 1) * tpot_s(k), L the longest output of the
  batch: generate() runs until its longest request is done, so the shorter ones decode padding.
  prefill_s is what a measurement calls ttft_s (prefill plus the first token), so for one fixed
  output length this is the measured generate() time.
- Measured points: prefill and tpot samples at one or more batch sizes. batch_size, the largest
  batch the server forms, is the largest measured size. Each batch draws one uniform u and takes
  the u-quantile of the prefill samples and of the tpot samples; at a measured size that is a
  uniform draw of its samples, so the spread of the measurement enters the queue. One u for both
  makes a slow prefill go with a slow decode, as a slow repeat (clocks, contention) has both:
  the coupling that gives the widest service-time spread, the conservative one. Between measured
  sizes a < k < b the two quantiles are interpolated linearly in k; below the smallest measured
  size the smallest size's are used (a smaller batch is rarely slower: conservative). A compiled
  server (CUDA graphs recorded for a few batch sizes, `bucket_sizes`) pads a batch of k to the
  smallest of them >= k and runs as that many rows: `ServiceModel(rounds_up=True)` uses the
  smallest measured size >= k instead of interpolating (without a prompt slope slightly
  conservative for the prefill: the measured batches' prompts are padded to the longest of more
  requests than k; with one, the batch's own longest prompt counts).
- Prompts: a prefill grows with the padded prompt (rows × the batch's longest prompt). Where the
  measured batches' prompt lengths are known (prompt_scaling.py), the model has a slope fitted
  within each size, and a batch's prefill draw moves by slope × rows × (its longest prompt − the
  reference the samples were normalised to; rows: k where k is measured or interpolated, the
  size whose samples it takes otherwise); without, every batch of a size draws alike. A prompt
  shorter than any measured one extrapolates the line (floored at 0 s).
- Output lengths: one fixed length, or a list every request draws its length (and prompt) from.
- Per request, with wait = batch start - arrival:
    TTFT = wait + prefill_s(k)   when its first token exists (what a streaming server could send);
    TPOT = tpot_s(k)             its batch's pace; a request of one output token has none;
    e2e  = wait + the batch's whole service time: generate() returns the batch when its longest
           request is done, so a request that finished early is still returned at the end.
- Statistics: the first warmup_fraction of the requests (by arrival) are left out. The simulation
  starts empty and idle, and the first requests see shorter queues than the steady state's, an
  optimistic bias. Every request is served to completion (no cut at the end). Percentiles
  interpolate linearly between order statistics. Throughput and utilisation are over the batches
  that hold counted requests. Mean concurrency (requests in the system, waiting or running) is
  rate × mean e2e (Little's law).

Saturation
----------
With a long queue every batch is full, so the queue is stable exactly when
rate < batch_size / E[service time of a full batch]. That rate, saturation_rps, is computed, not
simulated: the mean of the quantile draws is the samples' mean (interpolated between sizes), and
E[longest of batch_size output lengths] is exact for the length list (and E[longest prompt], which
the prompt term is linear in, for the prompt list); a finite simulation near
saturation only says "slow". Holding it needs batch_size requests in the system (full batches back
to back, none waiting): the concurrency reported with it. Above it the queue grows without bound.

Capacity
--------
The largest rate R below saturation_rps such that every SLO limit given (--slo's limits,
autotune/slo.py: TTFT, TPOT or end-to-end latency at p50, p90, p95 or p99) holds in the simulation
at R and at every lighter load scanned below it. Latency is not monotone in rate: batches grow with
load, and where a batch's time barely grows with its size (decode bound by per-step overhead, not
by the batch) small batches queue worse at a light load than full ones at a heavier one. The H100
replay of 2026-12-06 measured such service times (batches of 16 and 32 no slower end to end than
batches of 2 to 8; its capacity came out 0.41 req/s). A server cannot choose its load, so the
capacity is the first miss from below, not the highest rate that meets the limits. It is found by
a scan of SCAN_POINTS rates spaced evenly in log rate from a tiny rate (TINY_FRACTION of
saturation, where batches are almost always of one request) to saturation, then bisection between
the last scanned rate that meets every limit and the first that misses, until the two are within
rel_tol. Scanned rates above the first miss that meet every limit again are reported
(Capacity.meets_again_rps): the config would hold that heavier load, not the lighter one between.
Every rate sees the same random numbers: arrival gaps are one set of unit exponential draws scaled
by 1/rate, and the output lengths and service draws are the same sequences (common random
numbers). Comparing two rates then compares the rates, not the noise, and the answer is
deterministic for a seed. When even the tiny rate misses a limit, the capacity is 0 with that limit.
"""

from __future__ import annotations

import bisect
import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from autotune.slo import SloLimit, percentile

if TYPE_CHECKING:  # annotations only: spec pulls in the knob tables, this module does not need them
    from autotune.spec import Measurement

# The "tiny rate" a capacity search starts from, as a fraction of saturation: batches are then of
# one request nearly always, so a limit it misses is missed by the config itself, not by load.
TINY_FRACTION = 1e-3
# Rates scanned between the tiny rate and saturation (three decades): neighbours 1.6x apart, so a
# band of misses narrower than that below the capacity can go unseen; 16 runs of 20,000 requests.
SCAN_POINTS = 16
MIN_COUNTED_REQUESTS = 100  # fewer after the warm-up leave no p99 to speak of
DEFAULT_N_REQUESTS = 20_000  # p95 to about ±1% at moderate load, in well under a second
DEFAULT_WARMUP_FRACTION = 0.1


# ------------------------------------------------------------------------------ service model


def bucket_sizes(batch_size: int) -> list[int]:
    """The batch sizes a capacity check measures, and the row counts a compiled server pads a batch
    to (one set of CUDA graphs per size: about log2(batch_size) of them, not batch_size): the
    powers of two below batch_size, and batch_size."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    sizes, k = [], 1
    while k < batch_size:
        sizes.append(k)
        k *= 2
    return sizes + [batch_size]


def bucket_of(k: int, batch_size: int) -> int:
    """The rows a compiled server of batch_size runs a batch of k requests as: the smallest bucket >= k."""
    if not 1 <= k <= batch_size:
        raise ValueError(f"a batch of {k} is outside 1..{batch_size}")
    return next(size for size in bucket_sizes(batch_size) if size >= k)


def _sorted_seconds(name: str, values: Sequence[float]) -> tuple[float, ...]:
    seconds = tuple(float(v) for v in values)
    if not seconds:
        raise ValueError(f"{name}: no samples; a measured point needs at least one timing")
    for v in seconds:
        if not (math.isfinite(v) and v > 0):
            raise ValueError(f"{name}: samples must be finite seconds > 0, got {v!r}")
    return tuple(sorted(seconds))  # sorted: a draw takes the u-quantile


def _quantile(sorted_samples: tuple[float, ...], u: float) -> float:
    """The u-quantile for u in [0, 1): each sample is equally likely for a uniform u."""
    return sorted_samples[min(int(u * len(sorted_samples)), len(sorted_samples) - 1)]


@dataclass(frozen=True)
class ServicePoint:
    """The timings measured at one batch size, in seconds (stored sorted)."""

    prefill_s: tuple[float, ...]  # a Measurement's ttft_s samples: prefill of the batch plus its first token
    tpot_s: tuple[float, ...] | None  # per output token after the first; None: nothing decoded (a reranker)

    def __post_init__(self) -> None:
        object.__setattr__(self, "prefill_s", _sorted_seconds("prefill_s", self.prefill_s))
        if self.tpot_s is not None:
            object.__setattr__(self, "tpot_s", _sorted_seconds("tpot_s", self.tpot_s))


@dataclass(frozen=True, eq=False)
class ServiceModel:
    """Service time of a batch of k requests, from measured points {batch size: ServicePoint}."""

    points: Mapping[int, ServicePoint]
    # True for a compiled server, which pads a batch to a measured size (bucket_sizes): a batch of k
    # takes the smallest measured size >= k's times, not an interpolation between two sizes.
    rounds_up: bool = False
    # A prefill grows with the padded prompt (rows × the batch's longest prompt). With a slope
    # (seconds per padded prompt token, prompt_scaling.py), the prefill samples are normalised to a
    # batch whose longest prompt is reference_prompt_tokens, and a batch whose longest prompt is L
    # takes its draw + slope × rows × (L − reference). 0: prompt-blind, every batch of a size draws
    # from the same samples (a fixed-shape workload, or prompts not known).
    prompt_slope_s: float = 0.0
    reference_prompt_tokens: float = 0.0
    # Per k in 1..batch_size: the measured sizes to blend, the weight of the upper one, the rows run.
    _blend: tuple[tuple[ServicePoint, ServicePoint, float, int], ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not self.points:
            raise ValueError("no measured points; give at least one {batch_size: (prefill samples, tpot samples)}")
        sizes = sorted(self.points)
        for size in sizes:
            if isinstance(size, bool) or not isinstance(size, int) or size < 1:
                raise ValueError(f"batch sizes must be integers ≥ 1, got {size!r}")
        if len({self.points[s].tpot_s is None for s in sizes}) > 1:
            raise ValueError("tpot samples are given at some batch sizes and not at others; a model decodes or it does not")
        if not (math.isfinite(self.prompt_slope_s) and self.prompt_slope_s >= 0 and math.isfinite(self.reference_prompt_tokens)):
            raise ValueError(f"prompt_slope_s must be finite and >= 0 and reference_prompt_tokens finite, got "
                             f"{self.prompt_slope_s!r} and {self.reference_prompt_tokens!r}")
        blend = []
        for k in range(1, sizes[-1] + 1):
            i = bisect.bisect_left(sizes, k)
            # The rows the prompt term scales with: k's own where k is measured or interpolated;
            # the size whose samples it takes otherwise (padded up, or below the smallest size:
            # that size's time at this batch's prompt, conservative as the samples are).
            rows = k if sizes[i] == k or not (i == 0 or self.rounds_up) else sizes[i]
            if sizes[i] == k or i == 0 or self.rounds_up:  # measured, below the smallest size, or padded up to sizes[i]
                blend.append((self.points[sizes[i]], self.points[sizes[i]], 0.0, rows))
            else:
                a, b = sizes[i - 1], sizes[i]
                blend.append((self.points[a], self.points[b], (k - a) / (b - a), rows))
        object.__setattr__(self, "points", dict(self.points))
        object.__setattr__(self, "_blend", tuple(blend))

    @classmethod
    def from_samples(cls, points: Mapping[int, tuple[Sequence[float], Sequence[float] | None]], *,
                     rounds_up: bool = False, prompt_slope_s: float = 0.0, reference_prompt_tokens: float = 0.0) -> ServiceModel:
        """{batch_size: (prefill samples, tpot samples or None)}, seconds."""
        return cls({size: ServicePoint(tuple(pre), None if tpot is None else tuple(tpot)) for size, (pre, tpot) in points.items()},
                   rounds_up=rounds_up, prompt_slope_s=prompt_slope_s, reference_prompt_tokens=reference_prompt_tokens)

    @classmethod
    def from_measurements(cls, measurements: Mapping[int, Measurement], *, rounds_up: bool = False) -> ServiceModel:
        """{batch_size: the Measurement of a config at that batch size} (ttft_s and tpot_s samples)."""
        return cls.from_samples({size: (m.ttft_s.samples, None if m.tpot_s is None else m.tpot_s.samples)
                                 for size, m in measurements.items()}, rounds_up=rounds_up)

    @property
    def batch_size(self) -> int:
        """The largest batch the server forms: the largest measured size (no extrapolation above it)."""
        return len(self._blend)

    @property
    def decodes(self) -> bool:
        return next(iter(self.points.values())).tpot_s is not None

    def _check(self, k: int, u: float) -> tuple[ServicePoint, ServicePoint, float, int]:
        if not 1 <= k <= self.batch_size:
            raise ValueError(f"a batch of {k} is outside 1..{self.batch_size} (the largest measured batch size)")
        if not 0.0 <= u < 1.0:
            raise ValueError(f"u must be in [0, 1), got {u!r}")
        return self._blend[k - 1]

    def _prompt_s(self, rows: int, longest_prompt: float | None) -> float:
        """What a batch's longest prompt adds to (or takes from) the normalised prefill draw."""
        if longest_prompt is None or not self.prompt_slope_s:
            return 0.0
        return self.prompt_slope_s * rows * (longest_prompt - self.reference_prompt_tokens)

    def prefill_s(self, k: int, u: float, longest_prompt: float | None = None) -> float:
        """The u-quantile of a batch of k's prefill (plus first token) time; `longest_prompt`: its
        longest prompt in tokens, which moves the draw when the model has a prompt slope."""
        a, b, w, rows = self._check(k, u)
        drawn = (1 - w) * _quantile(a.prefill_s, u) + w * _quantile(b.prefill_s, u)
        return max(drawn + self._prompt_s(rows, longest_prompt), 0.0)  # (a slope extrapolated far below the measured prompts)

    def tpot_s(self, k: int, u: float) -> float:
        """The u-quantile of a batch of k's time per output token after the first."""
        a, b, w, _ = self._check(k, u)
        if a.tpot_s is None or b.tpot_s is None:
            raise ValueError("this service model decodes nothing (no tpot samples); its requests have one output token")
        return (1 - w) * _quantile(a.tpot_s, u) + w * _quantile(b.tpot_s, u)

    def _draw(self, k: int, u: float, longest_prompt: float | None) -> tuple[float, float]:
        """prefill_s and tpot_s (0 when nothing is decoded) of one batch: the simulation's hot path,
        one call per batch, k and u already known to be valid."""
        a, b, w, rows = self._blend[k - 1]
        prefill_s = _quantile(a.prefill_s, u)
        tpot_s = _quantile(a.tpot_s, u) if a.tpot_s is not None else 0.0
        if w:
            prefill_s = (1 - w) * prefill_s + w * _quantile(b.prefill_s, u)
            if b.tpot_s is not None:
                tpot_s = (1 - w) * tpot_s + w * _quantile(b.tpot_s, u)
        return max(prefill_s + self._prompt_s(rows, longest_prompt), 0.0), tpot_s

    def batch_s(self, k: int, longest_output_tokens: int, u: float, longest_prompt: float | None = None) -> float:
        """Service time of a batch of k whose longest request generates longest_output_tokens."""
        if longest_output_tokens == 1:
            return self.prefill_s(k, u, longest_prompt)
        return self.prefill_s(k, u, longest_prompt) + (longest_output_tokens - 1) * self.tpot_s(k, u)

    def mean_batch_s(self, k: int, mean_longest_output_tokens: float, mean_longest_prompt: float | None = None) -> float:
        """E[service time of a batch of k]: the quantile draws average to the samples' means, and
        the output length is drawn apart from u, so the mean is prefill + (E[L] - 1) * tpot; the
        prompt term is linear in the longest prompt, so its mean is taken at E[longest prompt]."""
        a, b, w, rows = self._check(k, 0.0)
        mean = lambda samples: sum(samples) / len(samples)  # noqa: E731
        prefill = (1 - w) * mean(a.prefill_s) + w * mean(b.prefill_s) + self._prompt_s(rows, mean_longest_prompt)
        if a.tpot_s is None or b.tpot_s is None:
            return prefill
        return prefill + (mean_longest_output_tokens - 1) * ((1 - w) * mean(a.tpot_s) + w * mean(b.tpot_s))


# ------------------------------------------------------------------------------ output lengths


def _output_lengths(output_tokens: int | Sequence[int], service: ServiceModel) -> tuple[int, ...]:
    """The lengths requests draw from: one fixed length, or a list (each entry equally likely)."""
    lengths = (output_tokens,) if isinstance(output_tokens, int) else tuple(output_tokens)
    if not lengths:
        raise ValueError("output_tokens: an empty list; give a length or a list of lengths")
    for n in lengths:
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"output_tokens must be integers ≥ 1, got {n!r}")
    if not service.decodes and max(lengths) > 1:
        raise ValueError(f"output_tokens up to {max(lengths)} needs tpot samples; this service model decodes nothing (use 1)")
    return lengths


def expected_longest(lengths: Sequence[int], k: int) -> float:
    """E[the longest of k independent draws from lengths]: the output a batch of k runs to.
    E[max] = Σ_v v · (F(v)^k − F(v⁻)^k), F the lengths' cumulative distribution."""
    n, below, total = len(lengths), 0, 0.0
    for v in sorted(set(lengths)):
        at_most = sum(1 for x in lengths if x <= v)
        total += v * ((at_most / n) ** k - (below / n) ** k)
        below = at_most
    return total


def _prompt_lengths(prompt_tokens: Sequence[int] | None, lengths: tuple[int, ...]) -> tuple[int, ...] | None:
    """The requests' prompt lengths, entry i going with output length i (a request draws both)."""
    if prompt_tokens is None:
        return None
    prompts = tuple(prompt_tokens)
    if len(prompts) != len(lengths):
        raise ValueError(f"prompt_tokens has {len(prompts)} entries and output_tokens {len(lengths)}; give one prompt "
                         "length per output length (entry i of both is one request)")
    for n in prompts:
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"prompt_tokens must be integers ≥ 1, got {n!r}")
    return prompts


def saturation_rps(service: ServiceModel, output_tokens: int | Sequence[int], prompt_tokens: Sequence[int] | None = None) -> float:
    """The rate above which the queue grows without bound: batch_size / E[full batch's service time]."""
    lengths = _output_lengths(output_tokens, service)
    prompts = _prompt_lengths(prompt_tokens, lengths)
    b = service.batch_size
    return b / service.mean_batch_s(b, expected_longest(lengths, b), expected_longest(prompts, b) if prompts else None)


# ------------------------------------------------------------------------------ simulation


@dataclass(frozen=True)
class Percentiles:
    """Seconds over the counted requests."""

    mean: float
    p50: float
    p90: float
    p95: float
    p99: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Percentiles:
        ordered = sorted(values)  # sorted once: sorting a sorted list again is linear
        return cls(mean=sum(ordered) / len(ordered), p50=percentile(ordered, 50), p90=percentile(ordered, 90),
                   p95=percentile(ordered, 95), p99=percentile(ordered, 99))


@dataclass(frozen=True)
class SimResult:
    """One simulated run at rate_rps, over the requests after the warm-up."""

    rate_rps: float  # offered
    requests: int  # counted (after the warm-up)
    ttft_s: Percentiles
    tpot_s: Percentiles | None  # None when no counted request generated more than one token
    e2e_s: Percentiles
    wait_s: Percentiles  # arrival to batch start
    throughput_rps: float  # requests served / time, over the batches holding counted requests
    concurrency: float  # mean requests in the system, Little's law: rate_rps × mean e2e
    utilisation: float  # fraction of that time the server was running a batch
    mean_batch_size: float  # over the batches holding counted requests


@dataclass(frozen=True)
class _Draws:
    """The random numbers of one seed, shared by every rate (common random numbers)."""

    unit_gaps: tuple[float, ...]  # Exp(1): the gaps at rate r are these / r
    output_tokens: tuple[int, ...]  # per request
    batch_u: tuple[float, ...]  # per batch (at most one batch per request): the service quantile
    prompt_tokens: tuple[int, ...] | None = None  # per request; None: prompts not known (prompt-blind)


def _unit_gaps(n_requests: int, seed: int) -> tuple[float, ...]:
    arrivals = random.Random(f"{seed}:arrivals")
    return tuple(arrivals.expovariate(1.0) for _ in range(n_requests))


def arrival_times(n_requests: int, rate_rps: float, seed: int = 0) -> list[float]:
    """Seconds from the start at which n_requests Poisson arrivals at rate_rps come: the
    simulation's own arrivals for that seed (a replay, autotune/replay.py, sends its requests at them)."""
    _check_run(rate_rps, max(n_requests, MIN_COUNTED_REQUESTS), 0.0)
    out, t = [], 0.0
    for gap in _unit_gaps(n_requests, seed):
        t += gap / rate_rps
        out.append(t)
    return out


def _draw(n_requests: int, seed: int, lengths: tuple[int, ...], draw_seed: int | None = None,
          prompts: tuple[int, ...] | None = None, in_order: bool = False) -> _Draws:
    # One generator per stream, so a different length list leaves the arrivals and service draws as
    # they were; draw_seed (default: seed) redraws the requests (unless in order) and service times alone.
    other = seed if draw_seed is None else draw_seed
    outputs, service = (random.Random(f"{other}:{stream}") for stream in ("outputs", "service"))
    if in_order:  # request i is entry i: a replay's own requests, in its order
        if len(lengths) != n_requests:
            raise ValueError(f"in order, output_tokens needs one entry per request: {len(lengths)} for {n_requests} requests")
        picks = range(n_requests)
    else:  # each request draws an entry (randrange(n) takes the stream's numbers as choice() did)
        picks = [0] * n_requests if len(lengths) == 1 else [outputs.randrange(len(lengths)) for _ in range(n_requests)]
    return _Draws(
        unit_gaps=_unit_gaps(n_requests, seed),
        output_tokens=tuple(lengths[i] for i in picks),
        batch_u=tuple(service.random() for _ in range(n_requests)),
        prompt_tokens=None if prompts is None else tuple(prompts[i] for i in picks),
    )


def _check_run(rate_rps: float, n_requests: int, warmup_fraction: float) -> int:
    """The number of warm-up requests left out."""
    if not (isinstance(rate_rps, (int, float)) and math.isfinite(rate_rps) and rate_rps > 0):
        raise ValueError(f"rate_rps must be a finite number > 0, got {rate_rps!r}")
    if not 0.0 <= warmup_fraction < 1.0:
        raise ValueError(f"warmup_fraction must be in [0, 1), got {warmup_fraction!r}")
    warmup = int(n_requests * warmup_fraction)
    if n_requests - warmup < MIN_COUNTED_REQUESTS:
        raise ValueError(f"n_requests={n_requests} leaves {n_requests - warmup} after the warm-up; "
                         f"at least {MIN_COUNTED_REQUESTS} are needed")
    return warmup


def _run(service: ServiceModel, rate_rps: float, draws: _Draws, warmup: int) -> SimResult:
    n = len(draws.unit_gaps)
    arrival_s, t = [], 0.0
    for gap in draws.unit_gaps:
        t += gap / rate_rps
        arrival_s.append(t)

    ttft, tpot, e2e, wait = [], [], [], []
    cap = service.batch_size
    varied = len(set(draws.output_tokens)) > 1
    free_at_s = 0.0  # when the server finishes its current batch
    # Throughput and utilisation are over the batches holding counted requests, from the first
    # one's start: in overload the server is still working off warm-up requests when the first
    # counted one arrives, and that time is not the counted requests'.
    window_start_s: float | None = None
    busy_s = 0.0
    counted_batches = counted_batch_requests = 0
    first, batch_no = 0, 0
    while first < n:
        start_s = max(free_at_s, arrival_s[first])
        # Everyone waiting at the start joins, up to the cap, in arrival order.
        last = first + 1
        while last < n and last - first < cap and arrival_s[last] <= start_s:
            last += 1
        k = last - first
        u = draws.batch_u[batch_no]
        batch_no += 1
        longest = max(draws.output_tokens[first:last]) if varied else draws.output_tokens[0]
        prompt = max(draws.prompt_tokens[first:last]) if draws.prompt_tokens is not None else None
        prefill_s, per_token_s = service._draw(k, u, prompt)
        batch_s = prefill_s + (longest - 1) * per_token_s
        free_at_s = start_s + batch_s
        if last > warmup:
            if window_start_s is None:
                window_start_s = start_s
            busy_s += batch_s
            counted_batches += 1
            counted_batch_requests += k
        for r in range(max(first, warmup), last):
            wait_s = start_s - arrival_s[r]
            wait.append(wait_s)
            ttft.append(wait_s + prefill_s)
            e2e.append(wait_s + batch_s)
            if draws.output_tokens[r] > 1:
                tpot.append(per_token_s)
        first = last

    window_s = free_at_s - window_start_s
    e2e_stats = Percentiles.of(e2e)
    return SimResult(
        rate_rps=rate_rps,
        requests=len(e2e),
        ttft_s=Percentiles.of(ttft),
        tpot_s=Percentiles.of(tpot) if tpot else None,
        e2e_s=e2e_stats,
        wait_s=Percentiles.of(wait),
        throughput_rps=counted_batch_requests / window_s,
        concurrency=rate_rps * e2e_stats.mean,
        utilisation=busy_s / window_s,
        mean_batch_size=counted_batch_requests / counted_batches,
    )


def simulate(service: ServiceModel, rate_rps: float, *, output_tokens: int | Sequence[int],
             prompt_tokens: Sequence[int] | None = None, in_order: bool = False,
             n_requests: int = DEFAULT_N_REQUESTS, seed: int = 0,
             warmup_fraction: float = DEFAULT_WARMUP_FRACTION, draw_seed: int | None = None) -> SimResult:
    """Poisson arrivals at rate_rps into the static-batching server (module docstring), n_requests
    of them; statistics over those after the first warmup_fraction. output_tokens: one length for
    every request, or a list of requests each simulated request draws one of; prompt_tokens: their
    prompt lengths (entry i with output length i), which move each batch's prefill by the model's
    prompt slope. in_order: request i is entry i (a replay's own requests; n_requests entries).
    `draw_seed` (default `seed`) redraws the requests (unless in order) and the service times while
    the arrivals stay those of `seed`: how much a finite run's percentiles move by chance."""
    lengths = _output_lengths(output_tokens, service)
    prompts = _prompt_lengths(prompt_tokens, lengths)
    warmup = _check_run(rate_rps, n_requests, warmup_fraction)
    return _run(service, float(rate_rps), _draw(n_requests, seed, lengths, draw_seed, prompts, in_order), warmup)


# ------------------------------------------------------------------------------ capacity


def missed(result: SimResult, limits: Sequence[SloLimit]) -> list[tuple[str, float, float]]:
    """(limit key, the percentile simulated, the limit) for every limit of --slo's form
    (autotune/slo.py: a latency at p50, p90, p95 or p99) the result misses. TPOT counts as met
    when no counted request generated two tokens."""
    out = []
    for limit in limits:
        stats = {"ttft": result.ttft_s, "tpot": result.tpot_s, "e2e": result.e2e_s}[limit.latency]
        value = 0.0 if stats is None else getattr(stats, f"p{limit.percentile}")
        if value > limit.limit_s:
            out.append((limit.key, value, limit.limit_s))
    return out


@dataclass(frozen=True)
class Capacity:
    """The largest arrival rate meeting the SLO at it and every lighter load, and what holding it looks like."""

    rate_rps: float  # 0 when even a tiny rate misses a limit
    concurrency: float  # mean requests in the system at rate_rps (Little's law); batch_size at saturation
    saturation_rps: float  # the stable queue's upper bound, whatever the SLO
    limited_by: str  # the limit a slightly higher rate misses ("ttft_p95", ...), or "saturation"
    reason: str  # one line with the numbers
    simulated: SimResult | None  # the simulation at rate_rps; at the tiny rate when capacity is 0; None at saturation
    # (lowest, highest) scanned rate above the first miss that meets every limit again; None when none does
    meets_again_rps: tuple[float, float] | None = None


def _describe(missed: list[tuple[str, float, float]]) -> str:
    return ", ".join(f"{name} {value:.4g} s > {limit:.4g} s" for name, value, limit in missed)


def capacity(service: ServiceModel, limits: Sequence[SloLimit], *, output_tokens: int | Sequence[int],
             prompt_tokens: Sequence[int] | None = None, n_requests: int = DEFAULT_N_REQUESTS, seed: int = 0,
             warmup_fraction: float = DEFAULT_WARMUP_FRACTION, rel_tol: float = 0.01) -> Capacity:
    """The largest rate below saturation whose simulation meets every limit (--slo's, parsed by
    autotune.slo.parse_slo; module docstring); with no limit, the saturation rate itself.
    output_tokens/prompt_tokens: the requests each simulated request draws from (simulate)."""
    lengths = _output_lengths(output_tokens, service)
    prompts = _prompt_lengths(prompt_tokens, lengths)
    if not 0 < rel_tol < 1:
        raise ValueError(f"rel_tol must be in (0, 1), got {rel_tol!r}")
    if any(limit.latency == "tpot" for limit in limits) and not service.decodes:
        raise ValueError("a tpot limit needs tpot samples; this service model decodes nothing")
    saturation = saturation_rps(service, lengths, prompts)
    if not limits:
        return Capacity(rate_rps=saturation, concurrency=float(service.batch_size), saturation_rps=saturation,
                        limited_by="saturation", simulated=None,
                        reason=f"no SLO: saturation, full batches of {service.batch_size} back to back")

    tiny = saturation * TINY_FRACTION
    warmup = _check_run(tiny, n_requests, warmup_fraction)
    draws = _draw(n_requests, seed, lengths, prompts=prompts)
    scanned = [tiny * (1 / TINY_FRACTION) ** (i / SCAN_POINTS) for i in range(SCAN_POINTS)]  # saturation excluded
    scan = []  # (rate, its simulation, the limits it misses)
    for rate in scanned:
        result = _run(service, rate, draws, warmup)
        scan.append((rate, result, missed(result, limits)))
    first_miss = next((i for i, (_, _, misses) in enumerate(scan) if misses), None)
    again = [] if first_miss is None else [rate for rate, _, misses in scan[first_miss + 1:] if not misses]
    meets_again = (again[0], again[-1]) if again else None
    again_words = (f"; meets every limit again at the scanned rates {meets_again[0]:.4g}-{meets_again[1]:.4g} req/s (larger batches "
                   f"serve faster than small ones queue): the lighter load is the limit" if meets_again else "")
    if first_miss == 0:
        _, at_tiny, misses = scan[0]
        return Capacity(rate_rps=0.0, concurrency=0.0, saturation_rps=saturation, limited_by=misses[0][0], simulated=at_tiny,
                        reason=f"even {tiny:.4g} req/s (batches of about {at_tiny.mean_batch_size:.3g}) misses "
                               f"{_describe(misses)}{again_words}", meets_again_rps=meets_again)

    if first_miss is None:  # every scanned rate meets: the boundary lies between the last one and saturation
        (low_rps, meets, _), high_rps, high_missed = scan[-1], saturation, []
    else:
        (low_rps, meets, _), (high_rps, _, high_missed) = scan[first_miss - 1], scan[first_miss]
    while high_rps > low_rps * (1 + rel_tol):
        mid_rps = math.sqrt(low_rps * high_rps)  # bisection in log rate
        result = _run(service, mid_rps, draws, warmup)
        if misses := missed(result, limits):
            high_rps, high_missed = mid_rps, misses
        else:
            low_rps, meets = mid_rps, result
    if high_missed:  # at saturation itself nothing is simulated: the queue is unstable
        limited_by = high_missed[0][0]
        reason = f"{high_rps:.4g} req/s misses {_describe(high_missed)}{again_words}"
    else:
        limited_by = "saturation"
        reason = f"meets every limit up to within {rel_tol:.0%} of saturation ({saturation:.4g} req/s)"
    return Capacity(rate_rps=low_rps, concurrency=meets.concurrency, saturation_rps=saturation,
                    limited_by=limited_by, reason=reason, simulated=meets, meets_again_rps=meets_again)
