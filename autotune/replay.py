"""Replay: the workload's requests arriving on a clock at a given rate, served by one loaded model
with real request queueing, to check the capacity simulation (autotune/capacity.py) against reality.

The server is the one the simulation models: one process, static batching. When it is idle and
requests have arrived, it takes up to batch_size of them, first come first served, left-pads them to
the longest prompt and runs one generate() to the longest output (autotune/measure/traffic.py
builds the batch as the measurement does); requests that arrive meanwhile wait for the next batch.
A compiled config's server runs CUDA graphs recorded for a few batch sizes: it pads a batch with
filler rows to the smallest of them that holds it (traffic.serving_rows), and its KV cache has one
length, fixed before anything is timed (fix_static_cache_length), so a warmed-up server compiles
nothing while serving (each rate's `compiled_graphs` says whether that held).

Arrivals: Poisson at the rate, `capacity.arrival_times` (the simulation's own stream for the seed).
Request i is admitted once the wall clock has passed start + arrival_i. The loop is single-threaded
and looks at the queue only when the model is idle, which is exactly when a server's batcher looks
at it: the queue it sees is the one a producer thread would have filled, without a thread's
scheduling noise, and an idle server sleeps until the next arrival.

Per request, seconds from its arrival:
  ttft = the batch's first generated token - arrival: a streamer's clock when generate() hands it
         the first token (generate copies each token to the host, which waits for the device)
  e2e  = the batch's end - arrival (generate() returns the batch when its longest is done)
  tpot = (batch end - first token) / (longest - 1), for requests of two or more output tokens
Statistics leave out the first warmup_fraction of requests by arrival, as the simulation does.
Building a batch's inputs counts as service time (a server tokenises too); it is small next to
generate().

Start-up, as a server's: the GPU capped at the study's memory budget (replay_deployment), the
static cache length fixed, the static cache then allocated once for the largest bucket and kept,
every batch size running on its first rows (kv_arena.py; `--kv-cache per-call` lets generate()
make a new one per call, as before 2026-12-07), a compiled config's graphs captured for every
bucket with and without padding, then Python's heap frozen (measure/gc_pauses.py; vLLM freezes after its warm-up, SGLang
offers it) before anything is timed, so a collection does not walk the objects start-up left; the
heap is unfrozen when the check ends. The batch log keeps, per batch, what can still make a
replayed batch slower than the service model's batches of its size: how long the server sat idle
before it, Python's collections during it, and (CUDA) the caching allocator's slow paths it met
(measure.memory.AllocatorEvents: a new shape near the budget can make the allocator free its
whole cache and retry), and the CUDA graphs recorded during it (measure/graph_recordings.py: a
compiled decode records again when a static input moves, as a KV cache new in every generate()
can). The service points keep the same counts over their measurement.
"""

from __future__ import annotations

import dataclasses
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from autotune.capacity import DEFAULT_WARMUP_FRACTION, Percentiles
from autotune.measure.gc_pauses import GcPauses
from autotune.measure.graph_recordings import GraphRecordings
from autotune.measure.memory import AllocatorEvents
from autotune.measure.slow_paths import SlowPaths, counted_since, slow_path_counts
from autotune.prompt_scaling import PromptFit, prompted_service
from autotune.replay_comparison import Comparison, comparison_markdown, simulate_comparison, simulated_band
from autotune.workload import Request


@dataclass(frozen=True)
class BatchTiming:
    """One generate() of a batch, seconds from the call."""

    first_token_s: float
    total_s: float
    allocator: AllocatorEvents | None = None  # the caching allocator's slow paths during it (CUDA)
    gc: GcPauses | None = None  # Python's garbage collections during it
    graphs: GraphRecordings | None = None  # CUDA graphs recorded during it (measure/graph_recordings.py)


@dataclass(frozen=True)
class BatchLogEntry:
    """One batch a replay served (warm-up included): what the service model is checked against."""

    requests: int
    longest_output: int
    first_token_s: float  # from its start
    total_s: float  # from its start to its end
    # The server idle before it: since the previous batch ended (the first: since the replay's start;
    # the GPU idled longer, as the simulation ran before it).
    idle_before_s: float
    allocator: AllocatorEvents | None = None
    gc: GcPauses | None = None
    graphs: GraphRecordings | None = None
    longest_prompt: int | None = None  # tokens: the batch is left-padded to it


RunBatch = Callable[[Sequence[Request]], BatchTiming]


@dataclass(frozen=True)
class ReplayResult:
    """What the requests after the warm-up saw (seconds), and how the server ran."""

    rate_rps: float  # offered
    requests: int  # counted
    ttft_s: Percentiles
    tpot_s: Percentiles | None
    e2e_s: Percentiles
    wait_s: Percentiles
    throughput_rps: float  # counted requests / the time from the first counted one's batch start to the last end
    mean_batch_size: float  # over the batches holding counted requests
    batches: int
    duration_s: float  # the whole replay, warm-up included
    batch_log: tuple[BatchLogEntry, ...] = ()  # every batch served, warm-up included

    @property
    def allocator(self) -> AllocatorEvents | None:
        """The allocator's slow paths over every batch (None: not a CUDA replay)."""
        return _total(b.allocator for b in self.batch_log)

    @property
    def gc(self) -> GcPauses | None:
        """Python's garbage collections over every batch (None: the runner did not count them)."""
        return _total(b.gc for b in self.batch_log)

    @property
    def graphs(self) -> GraphRecordings | None:
        """CUDA graphs recorded over every batch (None: not counted)."""
        return _total(b.graphs for b in self.batch_log)


def _total(counts):
    """The sum of the counts that are known (None when none is)."""
    known = [c for c in counts if c is not None]
    return sum(known[1:], known[0]) if known else None


def replay(requests: Sequence[Request], arrivals_s: Sequence[float], batch_size: int, run_batch: RunBatch, *,
           warmup_fraction: float = DEFAULT_WARMUP_FRACTION, rate_rps: float = 0.0,
           clock: Callable[[], float] = time.perf_counter, sleep: Callable[[float], None] = time.sleep) -> ReplayResult:
    """Serve `requests`, request i arriving at arrivals_s[i] seconds after the start (sorted), with
    the static-batching server of the module docstring; `run_batch` runs one batch and times it.
    `clock`/`sleep` are the wall clock's unless a test drives a virtual one."""
    n = len(requests)
    if n != len(arrivals_s) or n == 0:
        raise ValueError(f"need one arrival time per request and at least one request, got {n} requests and {len(arrivals_s)} times")
    if any(b < a for a, b in zip(arrivals_s, arrivals_s[1:])):
        raise ValueError("arrival times must be sorted")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    warmup = int(n * warmup_fraction)
    if not 0 <= warmup < n:
        raise ValueError(f"warmup_fraction {warmup_fraction} leaves no request to count")

    ttft, tpot, e2e, wait = [], [], [], []
    counted_batches = counted_batch_requests = 0
    window_start_s: float | None = None
    waiting: deque[int] = deque()
    batch_log: list[BatchLogEntry] = []
    start = clock()
    next_arrival = served = 0
    end_s = 0.0
    while served < n:
        now_s = clock() - start
        while next_arrival < n and arrivals_s[next_arrival] <= now_s:
            waiting.append(next_arrival)
            next_arrival += 1
        if not waiting:
            sleep(max(0.0, arrivals_s[next_arrival] - now_s))
            continue
        members = [waiting.popleft() for _ in range(min(batch_size, len(waiting)))]
        idle_before_s = now_s - end_s  # end_s: the previous batch's end (0.0: the start)
        timing = run_batch([requests[i] for i in members])
        end_s = clock() - start
        first_s = now_s + timing.first_token_s
        longest = max(requests[i].output_tokens for i in members)
        batch_log.append(BatchLogEntry(len(members), longest, timing.first_token_s, end_s - now_s, idle_before_s,
                                       timing.allocator, timing.gc, timing.graphs,
                                       max(requests[i].prompt_tokens for i in members)))
        served += len(members)
        if members[-1] >= warmup:
            window_start_s = now_s if window_start_s is None else window_start_s
            counted_batches += 1
            counted_batch_requests += len(members)
        for i in members:
            if i < warmup:
                continue
            wait.append(now_s - arrivals_s[i])
            ttft.append(first_s - arrivals_s[i])
            e2e.append(end_s - arrivals_s[i])
            if requests[i].output_tokens > 1 and longest > 1:
                tpot.append((end_s - first_s) / (longest - 1))
    return ReplayResult(
        rate_rps=rate_rps, requests=len(e2e), ttft_s=Percentiles.of(ttft), tpot_s=Percentiles.of(tpot) if tpot else None,
        e2e_s=Percentiles.of(e2e), wait_s=Percentiles.of(wait),
        throughput_rps=counted_batch_requests / max(end_s - (window_start_s or 0.0), 1e-9),
        mean_batch_size=counted_batch_requests / max(counted_batches, 1), batches=counted_batches, duration_s=end_s,
        batch_log=tuple(batch_log))


def generate_runner(model, candidate, device: str, vocab_size: int) -> RunBatch:
    """run_batch for a loaded model: the batch left-padded as the measurement pads it
    (traffic.batch_inputs; a compiled candidate's batch padded with filler rows to its bucket,
    traffic.serving_rows) and timed as the measurement times it (traffic.timed_batch_generate:
    one generate() to its longest output, the first token's time from a streamer)."""
    from autotune.loading import generate_kwargs
    from autotune.measure.traffic import WorkloadBatch, _pad_token, batch_inputs, serving_rows, timed_batch_generate

    base, pad = generate_kwargs(candidate), _pad_token(model)
    calls = [0]

    def run(requests: Sequence[Request]) -> BatchTiming:
        before = slow_path_counts(device)
        start = time.perf_counter()
        batch = WorkloadBatch(tuple(requests), 0)
        calls[0] += 1
        input_ids, attention_mask = batch_inputs(batch, vocab_size, pad, 5000 + calls[0], device,
                                                 rows=serving_rows(candidate, len(requests)))
        built_s = time.perf_counter() - start  # building the inputs is service time too
        first_s, total_s = timed_batch_generate(model, input_ids, attention_mask, base, pad, batch.new_tokens, device)
        slow = counted_since(before, device)
        return BatchTiming(built_s + first_s, built_s + total_s, slow.allocator, slow.gc, slow.graphs)

    return run


@dataclass(frozen=True)
class ServicePointSummary:
    """What the service model was built from at one batch size (replay.json keeps it: a capacity is
    only as right as these)."""

    batch_size: int
    ttft_p50_s: float
    tpot_p50_s: float | None
    tpot_p95_s: float | None
    e2e_p50_s: float
    requests: int  # timed requests (the batches measured × batch_size)
    # The samples the service model was built from (capacity.ServiceModel.from_samples): a replay
    # report can be simulated again (e.g. with another service model).
    prefill_samples_s: tuple[float, ...] = ()
    tpot_samples_s: tuple[float, ...] | None = None
    # Compiled: graphs compiled inside the timed runs (their compile time is in the samples; 0 when
    # the warm-up compiled every shape). None: not compiled.
    graphs_compiled_while_timed: int | None = None
    # CUDA: the caching allocator's slow paths over this size's whole measurement (its warm-up, and
    # its memory tracker emptying the cache first, included: more than the timed batches met). None: not CUDA.
    allocator: AllocatorEvents | None = None
    gc: GcPauses | None = None  # Python's collections over the same span (on CPU it starts with one full collection)
    graphs: GraphRecordings | None = None  # CUDA graphs recorded over the same span
    batch_prompt_tokens: tuple[int, ...] = ()  # each timed batch's longest prompt, in order (prompt_scaling.py)

    @classmethod
    def of(cls, batch_size: int, m, slow: SlowPaths | None = None, prompts: Sequence[int] = ()) -> ServicePointSummary:
        from autotune.slo import percentile

        tpot = m.tpot_s.samples if m.tpot_s is not None else None
        return cls(batch_size, m.ttft_s.median, m.tpot_s.median if tpot else None, percentile(tpot, 95) if tpot else None,
                   m.request_latency_s.median, len(m.ttft_s.samples), tuple(m.ttft_s.samples),
                   tuple(tpot) if tpot is not None else None,
                   m.compile_stats.graphs_while_timed if m.compile_stats is not None else None,
                   allocator=slow.allocator if slow else None, gc=slow.gc if slow else None,
                   graphs=slow.graphs if slow else None, batch_prompt_tokens=tuple(prompts))


@dataclass(frozen=True)
class ServerShape:
    """How the check's server ran the config (replay.json keeps it: a report simulated again needs it)."""

    pads_to_buckets: bool  # batches padded to bucket_sizes (a compiled config); the service model rounds up
    buckets: tuple[int, ...]  # the batch sizes measured (and, when padding, the rows a batch runs as)
    static_cache_tokens: int | None  # the static KV cache's fixed length (transformers' own figure); None: not static or not known
    # Python's heap frozen once start-up was done (the cache fixed, every bucket run with and
    # without padding), before anything was timed, as vLLM does after its warm-up (measure/gc_pauses.py).
    gc_frozen: bool = False
    # The static KV cache kept in one allocation that every bucket's generate() ran on (kv_arena.py),
    # as a server keeps its cache; False: a new cache in every generate(), as generate() makes one.
    kv_arena: bool = False
    prompt_fit: PromptFit | None = None  # the service model's prompt slope (prompt_scaling.py); None: prompt-blind


Checkpoint = Callable[[object, list[ServicePointSummary], list[Comparison], ServerShape], None]


def replay_requests(sampler, max_length: int, n_requests: int, seed: int) -> list[Request]:
    """The requests a capacity check replays and simulates (their prompt and output lengths), fitted to max_length."""
    from autotune.measure.traffic import fit_request

    return [fit_request(r, max_length)[0] for r in sampler.draw(n_requests, seed + 10_007, max_length)]


def service_batches(sampler, batch_size: int, max_length: int, repeats: int, seed: int) -> dict[int, list]:
    """{k: the `repeats` workload batches of k requests the capacity check times} for each of
    capacity.bucket_sizes(batch_size): draws seeded seed + k, fitted to max_length."""
    from autotune.capacity import bucket_sizes
    from autotune.measure.traffic import build_batches

    return {k: build_batches(sampler.draw(repeats * k, seed + k, max_length), k, max_length) for k in bucket_sizes(batch_size)}


# Where transformers keeps the length every later static cache is allocated at (the longest seen).
_STATIC_CACHE_LENGTH_ATTR = "_previous_max_cache_length"


def fix_static_cache_length(model, candidate, device: str, vocab_size: int, served: Sequence[Request]) -> int | None:
    """Fix the length of a static-cache candidate's KV cache before anything is timed, and return the
    length transformers then holds (None when this transformers keeps none: then a longer batch
    later allocates a longer cache, a new shape that a compiled config compiles while timed; the
    replay's compiled_graphs would show it). transformers 5.17-5.25 allocate every static cache at
    the longest length generate() has seen (`_previous_max_cache_length`). One untimed generate()
    of one request with the longest prompt and the longest output among `served` (at least
    max_length in all: the worst-case check runs at max_length) sets it, as a server sizes its
    cache for the longest request it admits; no batch's prompt padding plus longest output exceeds
    it. Where the workload's longest prompt plus longest output exceed max_length, the cache is
    longer than the study's worst case (more memory, slower attention): the check says so."""
    longest_prompt = max(r.prompt_tokens for r in served)
    longest_output = max(r.output_tokens for r in served)
    prompt = max(longest_prompt, candidate.max_length - longest_output)
    generate_runner(model, candidate, device, vocab_size)([Request(prompt, longest_output)])
    length = model.__dict__.get(_STATIC_CACHE_LENGTH_ATTR)
    return int(length) if length is not None else None


def capacity_check(model, candidate, device: str, vocab_size: int, sampler, limits, *, fractions: Sequence[float],
                   requests: Sequence[Request], seed: int = 0, repeats: int = 3, note: Callable[[str], None] = lambda text: None,
                   checkpoint: Checkpoint = lambda found, points, rows, server: None,
                   keep_kv_cache: bool = True) -> tuple[object, list[Comparison]]:
    """Measure the config's service times on the workload at capacity.bucket_sizes (each `repeats`
    batches, traffic.measure_workload), compute its capacity under `limits` (autotune.slo.SloLimit)
    from them (the service model with its prompt slope, prompt_scaling.prompted_service), then at each
    fraction of it simulate and replay `requests` (replay_requests): the simulation takes the
    replay's own requests in their order at its arrival times (replay_comparison.simulate_comparison).
    A compiled candidate is served as a compiled server runs (serving.pads_to_buckets): every batch
    padded to a bucket (traffic.serving_rows), so the service model takes a bucket's times for the
    batches it pads (ServiceModel rounds_up), and dynamo given room for a graph per bucket. A
    static KV cache is fixed first at the longest prompt plus the longest output of every batch to
    come (`fix_static_cache_length`), so no batch meets a new cache shape while timed.
    `checkpoint(capacity, service points, comparisons so far, ServerShape)` runs once the capacity
    is known and after every rate, so a run stopped in a long replay keeps what it measured.
    `keep_kv_cache`: once its length is fixed, a static cache is allocated once for the largest
    bucket and every generate() runs on it (kv_arena.py), as a server keeps its cache, so its address
    never moves under a compiled decode's recorded CUDA graphs; False: a new cache per generate().
    Returns (capacity.Capacity, the comparisons)."""
    import contextlib

    from autotune.measure.gc_pauses import frozen_heap
    from autotune.serving import pads_to_buckets

    with _room_to_compile(pads_to_buckets(candidate)), frozen_heap() as freeze_heap, contextlib.ExitStack() as stack:
        return _capacity_check(model, candidate, device, vocab_size, sampler, limits, fractions=fractions, requests=requests,
                               seed=seed, repeats=repeats, note=note, checkpoint=checkpoint, freeze_heap=freeze_heap,
                               keep_kv_cache=stack.enter_context if keep_kv_cache else None)


def _keep_kv_cache(model, candidate, rows: int, tokens: int, enter: Callable[[object], object],
                   note: Callable[[str], None]) -> bool:
    """Enter (on capacity_check's stack) a KV arena of `rows` rows and `tokens` tokens that every
    generate() from here on runs on, until the check ends; whether it did (with a note either way)."""
    from autotune.kv_arena import KvArena, serve_from
    from autotune.loading import generate_kwargs

    if not KvArena.supports(model, generate_kwargs(candidate)):  # (a fixed length: a static cache)
        note("the KV cache is not kept (not a plain static cache of full-attention layers): a new one in every generate()")
        return False
    try:
        enter(serve_from(model, KvArena(model, rows, tokens)))
    except ValueError as e:  # e.g. a model spread over several GPUs: generate() makes its own, as without the arena
        note(f"the KV cache is not kept ({e}): a new one in every generate()")
        return False
    note(f"the KV cache kept in one allocation for {rows} rows, every batch size on its first rows")
    return True


# A compiled server compiles a graph per bucket and per attention-mask form (a batch without padding
# takes another path than a padded one), which can be more than dynamo's default 8 recompiles per
# function; past the limit dynamo would run new shapes eagerly, slowly and without a word. While the
# check runs the limit is 64 (transformers 5.17 sets the same for chunked prefill,
# generation/utils.py), and hitting it fails the check instead of running on eagerly.
RECOMPILE_LIMIT = 64


def _room_to_compile(compiled: bool):
    import contextlib

    if not compiled:
        return contextlib.nullcontext()
    import torch._dynamo

    config = torch._dynamo.config
    name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"  # torch < 2.6's name
    changes = {name: max(RECOMPILE_LIMIT, getattr(config, name))}
    if hasattr(config, "fail_on_recompile_limit_hit"):
        changes["fail_on_recompile_limit_hit"] = True
    return config.patch(changes)


def _capacity_check(model, candidate, device: str, vocab_size: int, sampler, limits, *, fractions: Sequence[float],
                    requests: Sequence[Request], seed: int, repeats: int, note: Callable[[str], None],
                    checkpoint: Checkpoint, freeze_heap: Callable[[], None],
                    keep_kv_cache: Callable[[object], object] | None) -> tuple[object, list[Comparison]]:
    from autotune.capacity import arrival_times, bucket_sizes, capacity
    from autotune.kv_cache import cache_kind
    from autotune.measure.compile_stats import snapshot
    from autotune.measure.traffic import measure_workload, warmup_requests
    from autotune.serving import pads_to_buckets

    points = {}
    _, share = sampler.over_limit(candidate.max_length)
    buckets = bucket_sizes(candidate.batch_size)
    timed_batches = service_batches(sampler, candidate.batch_size, candidate.max_length, repeats, seed)
    padded, tokens = pads_to_buckets(candidate), None
    if padded:
        note(f"compiled: each batch padded to {buckets} rows")
    if cache_kind(candidate).static:
        served = [r for batches in timed_batches.values() for b in batches for r in b.requests] + list(requests)
        tokens = fix_static_cache_length(model, candidate, device, vocab_size, served)
        if tokens is None:
            kept = ", and it is not kept: a new one in every generate()" if keep_kv_cache is not None else ""
            note(f"this transformers keeps no {_STATIC_CACHE_LENGTH_ATTR}: the static KV cache grows with the longest "
                 f"batch so far, and a longer one allocates (and, compiled, compiles) while timed{kept}")
        else:
            longer = f", longer than max_length {candidate.max_length}: more memory and attention than the study's worst case" \
                if tokens > candidate.max_length else ""
            note(f"the static KV cache fixed at {tokens} tokens (the longest prompt plus the longest output){longer}")
    arena = keep_kv_cache is not None and tokens is not None and _keep_kv_cache(model, candidate, max(buckets), tokens,
                                                                               keep_kv_cache, note)
    if padded:  # a compiled server captures its graphs for every bucket at start-up, for both mask forms
        warm = generate_runner(model, candidate, device, vocab_size)
        for k in buckets:
            warm(warmup_requests(k, padded=False))
            if k > 1:  # the padded path most batches take (a single row is never padded)
                warm(warmup_requests(k, padded=True))
    # Start-up done: what is alive now (the model, the graphs compiled so far) is never walked by a
    # collection again (measure/gc_pauses.py); what is made later (e.g. chunked prefill's graphs
    # for shapes start-up did not meet) is collected as usual, and counted per batch.
    freeze_heap()
    server = ServerShape(padded, tuple(buckets), tokens, gc_frozen=True, kv_arena=arena)
    # With the cache length fixed each service batch is timed on its first run, as the replay meets
    # it (no untimed re-run of its own inputs first); its compile_stats say whether anything compiled
    # while timed. Chunked prefill compiles a prefill shape per last-chunk length: re-run untimed.
    rewarm = candidate.compile and (tokens is None or bool(candidate.prefill_chunk_size))
    # The counts span each size's whole measurement: its warm-up and its memory tracker's start
    # (which empties the CUDA cache, and on CPU collects) as well as the timed batches.
    slow = {}
    for k, batches in timed_batches.items():
        at_k = candidate.model_copy(update={"batch_size": k})
        before = slow_path_counts(device)
        points[k] = measure_workload(model, at_k, device, batches, vocab_size, workload={}, over_limit_share=share,
                                     rewarm_each_batch=rewarm)
        slow[k] = counted_since(before, device)
        stats, allocator, graphs = points[k].compile_stats, slow[k].allocator, slow[k].graphs
        compiled_while_timed = f"; {stats.graphs_while_timed} graph(s) compiled while timed" if stats and stats.graphs_while_timed else ""
        retries = f"; {allocator.alloc_retries} allocator cache flush(es)" if allocator and allocator.alloc_retries else ""
        recorded = f"; {graphs.recordings} CUDA graph(s) recorded" if graphs and graphs.recordings else ""
        note(f"service time at batch {k}: TTFT p50 {points[k].ttft_s.median * 1000:,.1f} ms, "
             f"e2e p50 {points[k].request_latency_s.median:.3f} s{compiled_while_timed}{retries}{recorded}")
    samples = {k: (m.ttft_s.samples, m.tpot_s.samples if m.tpot_s is not None else None) for k, m in points.items()}
    shapes = {k: [(len(b.requests), b.prompt_length) for b in batches] for k, batches in timed_batches.items()}
    service, fit = prompted_service(samples, shapes, rounds_up=padded)
    server = dataclasses.replace(server, prompt_fit=fit)
    if fit is not None:
        note(f"prefill: {fit.slope_s_per_token * 1e6:.3g} µs more per padded prompt token (rows × longest prompt), fitted "
             f"over {fit.batches} service batches (median error {fit.median_error:.1%})")
    summaries = [ServicePointSummary.of(k, m, slow[k], [p for _, p in shapes[k]]) for k, m in sorted(points.items())]
    n_requests = len(requests)
    found = capacity(service, limits, output_tokens=[r.output_tokens for r in requests],
                     prompt_tokens=[r.prompt_tokens for r in requests])
    note(f"capacity {found.rate_rps:.4g} req/s ({found.reason})")
    checkpoint(found, summaries, [], server)
    if found.rate_rps <= 0:
        return found, []
    runner = generate_runner(model, candidate, device, vocab_size)
    runner(requests[:1])  # the replay's first generate() (a streamer attached) is not timed
    comparisons = []
    for fraction in fractions:
        rate = fraction * found.rate_rps
        # The arrivals alone take n_requests / rate: a capacity near 0 makes a long replay, said before it starts.
        note(f"{fraction:.0%} of capacity ({rate:.3g} req/s): replaying {n_requests} requests, arrivals over about "
             f"{n_requests / rate:,.0f} s")
        # The replay's own requests at its own arrival times: the two differ by the service times alone.
        simulated = simulate_comparison(service, rate, requests, seed)
        band = simulated_band(service, rate, requests, seed)
        before = snapshot()
        replayed = replay(requests, arrival_times(n_requests, rate, seed), candidate.batch_size, runner, rate_rps=rate)
        compiled_graphs = snapshot().graphs - before.graphs
        comparisons.append(Comparison(fraction, rate, simulated, replayed, Comparison.service_ratio_of(replayed, service), band,
                                      compiled_graphs))
        if compiled_graphs:
            note(f"{fraction:.0%} of capacity: {compiled_graphs} graph(s) compiled while replaying: those batches' times "
                 "include compiling")
        if replayed.allocator is not None and replayed.allocator.alloc_retries:
            flushed = sum(1 for b in replayed.batch_log if b.allocator and b.allocator.alloc_retries)
            note(f"{fraction:.0%} of capacity: the CUDA caching allocator flushed its cache and retried "
                 f"{replayed.allocator.alloc_retries} time(s), in {flushed} of {len(replayed.batch_log)} batches")
        if replayed.graphs is not None and replayed.graphs.recordings:  # a static input (the KV cache) moved
            recorded = sum(1 for b in replayed.batch_log if b.graphs and b.graphs.recordings)
            note(f"{fraction:.0%} of capacity: {replayed.graphs.recordings} CUDA graph(s) recorded while replaying, in "
                 f"{recorded} of {len(replayed.batch_log)} batches, {replayed.graphs.recording_s * 1000:,.0f} ms in all")
        if replayed.gc is not None and replayed.gc.full_collections:
            note(f"{fraction:.0%} of capacity: {replayed.gc.full_collections} full garbage collection(s) while replaying, "
                 f"{replayed.gc.collecting_s * 1000:,.0f} ms of collecting in all")
        figures = "; ".join(f"{name} simulated {sim * 1000:,.1f} ms, replayed {rep * 1000:,.1f} ms ({err:+.1%})"
                            for name, sim, rep, err in comparisons[-1].rows())
        note(f"{fraction:.0%} of capacity ({rate:.3g} req/s): replayed {replayed.requests} requests in "
             f"{replayed.duration_s:.1f} s; {figures}")
        checkpoint(found, summaries, comparisons, server)
    return found, comparisons


def replay_deployment(path, *, device: str | None, fractions: Sequence[float], n_requests: int, seed: int = 0,
                      repeats: int = 3, slo: str | None = None, note: Callable[[str], None] = lambda text: None,
                      save: Callable[[dict], None] = lambda report: None, keep_kv_cache: bool = True) -> dict:
    """The capacity check of a best.yaml: its model loaded here as it was tuned, its workload (the
    fixed shape when it had none) and its --slo (or `slo`, when given); returns a JSON-ready report.
    `save(report so far)` runs once the capacity is known and after every rate ("complete": false
    until the last)."""
    from dataclasses import asdict

    from autotune.loading import load_model
    from autotune.deploy import read_deployment
    from autotune.measure.traffic import workload_sampler
    from autotune.models import relocate
    from autotune.slo import parse_slo

    limits = parse_slo(slo) if slo else None  # a bad --slo is refused before anything is read or loaded
    config = read_deployment(path)
    if limits is None:
        slo, limits = config.slo, parse_slo(config.slo) if config.slo else []
    candidate = config.settings
    if candidate.has_images or config.measured.output_tokens_per_s is None:
        raise ValueError("a replay sends text requests that generate; this best.yaml serves images or scores (a reranker)")
    device = device or config.device
    ref = relocate(config.model)
    budget_gib = config.memory_budget_gib if device.startswith("cuda") else None
    if budget_gib is not None:  # served as it was tuned: under the study's cap (the allocator flushes at it, not at the card's size)
        from autotune.system import cap_gpu_memory, cuda_index

        first = cuda_index(device)
        for index in range(first, first + max(1, candidate.num_gpus)):
            cap_gpu_memory(index, budget_gib)
    model, tokenizer = load_model(ref, candidate, device)
    text_config = getattr(model.config, "text_config", None) or model.config
    sampler = workload_sampler(config.measured.workload, candidate.new_tokens, tokenizer, ref.config())
    requests = replay_requests(sampler, candidate.max_length, n_requests, seed)
    outputs = [r.output_tokens for r in requests]  # kept in the report (with the prompts): the requests simulated

    def report(found, points: list[ServicePointSummary], rows: list[Comparison], server: ServerShape) -> dict:
        return {
            "best_yaml": str(path), "device": device, "settings": candidate.label(), "slo": slo or "", "study_slo": config.slo or "",
            "memory_budget_gib": budget_gib,  # the GPU cap the check ran under (None: uncapped, or CPU)
            "workload": sampler.workload.describe(), "requests_per_rate": n_requests, "seed": seed, "repeats": repeats,
            "complete": len(rows) == len(fractions) or found.rate_rps <= 0, "fractions": list(fractions),
            "service_points": [asdict(point) for point in points],
            # A compiled server's batches were padded to its buckets: simulate it again with
            # ServiceModel(rounds_up=True); its cache length is what the service times were measured at.
            "server": asdict(server),
            "output_tokens": outputs, "prompt_tokens": [r.prompt_tokens for r in requests], "capacity_rps": found.rate_rps, "saturation_rps": found.saturation_rps,
            "capacity_reason": found.reason,
            "meets_again_rps": list(found.meets_again_rps or ()),
            "recorded_capacity_rps": config.capacity.rate_rps if config.capacity else None,
            "rows": [{"fraction": c.fraction, "rate_rps": c.rate_rps, "figure": figure, "simulated_s": sim, "replayed_s": rep,
                      "error": err, "mean_batch_simulated": c.simulated.mean_batch_size,
                      "mean_batch_replayed": c.replayed.mean_batch_size, "requests": c.replayed.requests,
                      "batch_time_replayed_over_modelled": c.service_ratio,
                      "simulated_band_s": c.band.get(figure) if c.band else None, "within_band": c.within_band(figure, rep),
                      "replay_s": c.replayed.duration_s, "graphs_compiled_while_replaying": c.compiled_graphs,
                      "allocator_while_replaying": asdict(c.replayed.allocator) if c.replayed.allocator else None,
                      "gc_while_replaying": asdict(c.replayed.gc) if c.replayed.gc else None,
                      "cuda_graphs_recorded_while_replaying": asdict(c.replayed.graphs) if c.replayed.graphs else None}
                     for c in rows for figure, sim, rep, err in c.rows()],
            "batch_logs": {f"{c.fraction:g}": [asdict(b) for b in c.replayed.batch_log] for c in rows},
            "markdown": comparison_markdown(rows),
        }

    latest: list[dict] = []

    def checkpoint(found, points: list[ServicePointSummary], rows: list[Comparison], server: ServerShape) -> None:
        latest[:] = [report(found, points, rows, server)]
        save(latest[0])

    # checkpoint runs once the capacity is known and after every rate: latest holds the last report.
    capacity_check(model, candidate, device, int(text_config.vocab_size), sampler, limits, fractions=fractions,
                   requests=requests, seed=seed, repeats=repeats, note=note, checkpoint=checkpoint, keep_kv_cache=keep_kv_cache)
    return latest[0]
