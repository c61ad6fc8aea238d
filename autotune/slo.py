"""Latency SLOs: `--slo ttft_p95=500ms,tpot_p95=50ms,e2e_p95=8s` (any subset).

A limit names a latency and a percentile: `ttft` (time to first token: the prefill of the batch
plus one token), `tpot` (time per output token after the first) or `e2e` (a request's whole
latency), at p50, p90, p95 or p99. Each limit is a constraint of the study like the memory
budget: a candidate that breaks one is `slo_violated` with its figures, the sampler learns the
region, and it is never the best config.

What the percentile is taken over: the measurement's timed repeats. Under today's fixed request
shape every request of a batch has its batch's TTFT, TPOT and end-to-end latency, so the
per-request distribution is the repeats' distribution with each batch weighted by its requests
(equal weights); with 3 repeats a p95 is close to the slowest repeat, which is the honest reading
of so few samples (linear interpolation between order statistics, numpy's default). Under a
workload (autotune/measure/traffic.py) the samples are per request: one TTFT and one end-to-end
latency per timed request, one TPOT per timed request of two or more output tokens.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    from autotune.spec import Measurement, Stat

LATENCIES = {"ttft": "time to first token", "tpot": "time per output token", "e2e": "end-to-end request latency"}
PERCENTILES = (50, 90, 95, 99)
_UNITS_S = {"ms": 1e-3, "s": 1.0, "us": 1e-6}
# A limit over a day cannot be meant for a request's latency (a typo of units, e.g. 500 for 500ms).
MAX_LIMIT_S = 24 * 3600.0


class SloLimit(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    latency: str = Field(description="ttft, tpot or e2e")
    percentile: int = Field(description="50, 90, 95 or 99")
    limit_s: float = Field(gt=0, le=MAX_LIMIT_S)

    @property
    def key(self) -> str:
        return f"{self.latency}_p{self.percentile}"

    def label(self) -> str:
        return f"{self.key} <= {format_s(self.limit_s)}"


def percentile(samples: Sequence[float], pct: float) -> float:
    """The pct-th percentile (0-100), linear between order statistics (numpy's default); the one
    the simulation's results and the --slo judgement of a measurement (autotune/slo.py) share."""
    if not samples:
        raise ValueError("no samples")
    ordered = sorted(samples)
    position = (len(ordered) - 1) * pct / 100
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def format_s(seconds: float) -> str:
    return f"{seconds * 1000:,.0f} ms" if seconds < 1 else f"{seconds:,.2f} s"


def parse_slo(text: str) -> list[SloLimit]:
    """'ttft_p95=500ms,tpot_p95=50ms,e2e_p95=8s' -> limits (one per latency and percentile).
    Raises ValueError with one line naming the bad part and the form it should take."""
    limits: dict[str, SloLimit] = {}
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if not parts:
        raise ValueError("--slo is empty; give limits like ttft_p95=500ms,tpot_p95=50ms,e2e_p95=8s")
    for part in parts:
        match = re.fullmatch(r"(ttft|tpot|e2e)_p(\d+)\s*=\s*([0-9]*\.?[0-9]+(?:e-?\d+)?)\s*(ms|s|us)?", part)
        if not match:
            name = part.split("=")[0].strip()
            known = ", ".join(f"{lat}_p95" for lat in LATENCIES)
            if "=" in part and re.fullmatch(r"(ttft|tpot|e2e)_p\d+", name):
                raise ValueError(f"--slo {part}: cannot read the limit; write a number with ms or s, e.g. {name}=500ms")
            raise ValueError(f"--slo {part}: unknown limit {name!r}; use LATENCY_pNN=VALUE with LATENCY one of {known} "
                             f"(p50, p90, p95, p99), e.g. ttft_p95=500ms")
        latency, pct, value, unit = match.group(1), int(match.group(2)), float(match.group(3)), match.group(4)
        if pct not in PERCENTILES:
            raise ValueError(f"--slo {part}: percentile p{pct} is not offered; use p50, p90, p95 or p99")
        if unit is None:
            raise ValueError(f"--slo {part}: the limit has no unit; write {latency}_p{pct}={match.group(3)}ms or "
                             f"{latency}_p{pct}={match.group(3)}s")
        seconds = value * _UNITS_S[unit]
        if not seconds > 0 or not math.isfinite(seconds):
            raise ValueError(f"--slo {part}: a latency limit must be above zero")
        if seconds > MAX_LIMIT_S:
            raise ValueError(f"--slo {part}: {format_s(seconds)} is more than a day; did you mean {match.group(3)}ms?")
        limit = SloLimit(latency=latency, percentile=pct, limit_s=seconds)
        if limit.key in limits:
            raise ValueError(f"--slo names {limit.key} twice; give each limit once")
        limits[limit.key] = limit
    return list(limits.values())


def _stat(measurement: Measurement, latency: str) -> Stat | None:
    return {"ttft": measurement.ttft_s, "tpot": measurement.tpot_s, "e2e": measurement.request_latency_s}[latency]


def observed(measurement: Measurement, limit: SloLimit) -> float | None:
    """The measured percentile a limit is judged on (None: not measured, e.g. TPOT of a reranker)."""
    stat = _stat(measurement, limit.latency)
    return percentile(stat.samples, limit.percentile) if stat is not None and stat.samples else None


def excess(measurement: Measurement, limits: list[SloLimit]) -> float:
    """The constraint value Optuna gets: the largest relative excess over a limit (0.2 = 20% over),
    <= 0 when every limit is met. A limit on a latency the kind does not measure counts as met."""
    worst = -1.0
    for limit in limits:
        value = observed(measurement, limit)
        if value is not None:
            worst = max(worst, value / limit.limit_s - 1.0)
    return round(worst, 6)


def violations(measurement: Measurement, limits: list[SloLimit]) -> list[str]:
    """One phrase per broken limit, e.g. 'ttft_p95 612 ms > 500 ms'."""
    out = []
    for limit in limits:
        value = observed(measurement, limit)
        if value is not None and value > limit.limit_s:
            out.append(f"{limit.key} {format_s(value)} > {format_s(limit.limit_s)}")
    return out


def goodput_share(measurement: Measurement, limits: list[SloLimit]) -> float:
    """The share of measured requests whose own latencies meet every limit's figure (a request
    meets ttft_p95 <= X when its TTFT <= X). Under the fixed shape each repeat's batch carries the
    same number of requests, so this is the share of repeats within every limit. Under a workload
    the samples are per request, TPOT only for requests of two or more output tokens
    (Measurement.request_output_tokens says which): a request without a TPOT meets a TPOT limit."""
    per_request = {"ttft": measurement.ttft_s.samples, "e2e": measurement.request_latency_s.samples}
    n = len(per_request["ttft"])
    if measurement.tpot_s is not None and any(limit.latency == "tpot" for limit in limits):
        tpot = list(measurement.tpot_s.samples)
        outputs = measurement.request_output_tokens
        if len(tpot) == n:
            per_request["tpot"] = tpot
        elif outputs is not None and len(outputs) == n and sum(1 for o in outputs if o > 1) == len(tpot):
            it = iter(tpot)
            per_request["tpot"] = [next(it) if o > 1 else 0.0 for o in outputs]
        else:
            raise ValueError("the TPOT samples cannot be matched to requests; goodput needs the same requests behind every latency")
    if not n:
        return 0.0
    judged = [(limit, per_request[limit.latency]) for limit in limits if limit.latency in per_request]
    good = sum(1 for i in range(n) if all(samples[i] <= limit.limit_s for limit, samples in judged))
    return good / n


def goodput(measurement: Measurement, limits: list[SloLimit]) -> Stat:
    """Requests/s within every limit: each timed repeat's requests/s times the measurement's share
    of requests within every limit (goodput_share)."""
    share = goodput_share(measurement, limits)
    stat = type(measurement.requests_per_s)  # spec.Stat, without importing spec (which imports this module's users)
    return stat.of([rps * share for rps in measurement.requests_per_s.samples])
