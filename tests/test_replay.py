"""The replay load generator (autotune/replay.py): on a virtual clock with the simulation's own
service times it serves exactly what the simulation predicts (same queue, same batches), and on
the tiny random model on CPU it measures real batches with a streamer's first token; the capacity
check end to end on CPU."""

from __future__ import annotations

from dataclasses import astuple

import pytest
from autotune.capacity import ServiceModel, arrival_times, simulate
from autotune.measure.traffic import WorkloadBatch, batch_inputs
from autotune.replay import BatchTiming, capacity_check, generate_runner, replay, replay_requests
from autotune.slo import parse_slo
from autotune.spec import Candidate
from autotune.workload import Request, WorkloadSampler, parse_workload_flag
from tests.test_workload_measure import tiny_model  # noqa: F401 (a fixture)

# Deterministic service: one sample per measured size, so every batch of k takes the same time.
SERVICE = ServiceModel.from_samples({1: ([0.05], [0.010]), 4: ([0.08], [0.012]), 8: ([0.12], [0.015])})


class VirtualClock:
    """Time that moves only when the server sleeps or a batch runs."""

    def __init__(self) -> None:
        self.now = 0.0

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds >= 0
        self.now += seconds

    def runner(self, service: ServiceModel):
        def run(requests) -> BatchTiming:
            k, longest = len(requests), max(r.output_tokens for r in requests)
            prefill_s, total_s = service.prefill_s(k, 0.0), service.batch_s(k, longest, 0.0)
            self.now += total_s
            return BatchTiming(first_token_s=prefill_s, total_s=total_s)
        return run


@pytest.mark.parametrize("rate_rps", [5.0, 30.0, 60.0])  # light, moderate and near saturation (about 62 req/s)
def test_on_a_virtual_clock_the_replay_is_the_simulation(rate_rps: float) -> None:
    """Same arrivals, same deterministic service times: the replay's queue forms the simulation's
    batches, so every percentile agrees to rounding. This pins the replay's queueing to the model
    the capacity is computed with; on hardware the difference is then the service-time model."""
    n = 2_000
    vc = VirtualClock()
    requests = [Request(16, 32)] * n
    rep = replay(requests, arrival_times(n, rate_rps, seed=4), 8, vc.runner(SERVICE), clock=vc.clock, sleep=vc.sleep)
    sim = simulate(SERVICE, rate_rps, output_tokens=32, n_requests=n, seed=4)
    assert rep.requests == sim.requests == n - n // 10
    for name in ("ttft_s", "tpot_s", "e2e_s", "wait_s"):
        assert astuple(getattr(rep, name)) == pytest.approx(astuple(getattr(sim, name)), rel=1e-9, abs=1e-12), name
    assert rep.mean_batch_size == pytest.approx(sim.mean_batch_size)
    assert rep.throughput_rps == pytest.approx(sim.throughput_rps)


def test_the_service_ratio_says_how_far_real_batches_are_from_the_model() -> None:
    """Batches that take exactly the model's time give 1.0; a server 1.5x slower than its
    measured service times gives 1.5 (what the GPU replay's gap is read against)."""
    from autotune.replay_comparison import Comparison

    for slowdown in (1.0, 1.5):
        vc = VirtualClock()
        base = vc.runner(SERVICE)

        def slower(requests, base=base, vc=vc, slowdown=slowdown):
            timing = base(requests)
            vc.now += (slowdown - 1) * timing.total_s
            return BatchTiming(timing.first_token_s * slowdown, timing.total_s * slowdown)

        rep = replay([Request(16, 32)] * 300, arrival_times(300, 30.0, seed=1), 8, slower, clock=vc.clock, sleep=vc.sleep)
        assert len(rep.batch_log) >= rep.batches and Comparison.service_ratio_of(rep, SERVICE) == pytest.approx(slowdown)


def test_batches_fill_up_to_batch_size_under_overload_and_stay_single_when_idle() -> None:
    vc = VirtualClock()
    requests = [Request(4, 8)] * 200
    burst = replay(requests, [0.0] * 200, 8, vc.runner(SERVICE), clock=vc.clock, sleep=vc.sleep)
    assert burst.mean_batch_size == 8 and burst.batches == 180 // 8 + 1
    vc = VirtualClock()
    sparse = replay(requests, [i * 10.0 for i in range(200)], 8, vc.runner(SERVICE), clock=vc.clock, sleep=vc.sleep)
    assert sparse.mean_batch_size == 1 and sparse.wait_s.p99 == 0
    assert sparse.ttft_s.p50 == pytest.approx(0.05) and sparse.e2e_s.p50 == pytest.approx(0.05 + 7 * 0.010)


def test_the_batch_log_says_how_long_the_server_idled_before_each_batch() -> None:
    """Arrivals at 0, 1 and 1.01 s, each batch of one 0.05 s + 7 tokens x 0.010 s = 0.12 s: the first
    batch starts at once (idle 0), the second after 1 - 0.12 s idle, the third waits queued (idle 0).
    What a replayed batch's slowness is read against (a GPU's clocks and the host idle between arrivals)."""
    vc = VirtualClock()
    rep = replay([Request(4, 8)] * 3, [0.0, 1.0, 1.01], 1, vc.runner(SERVICE), clock=vc.clock, sleep=vc.sleep,
                 warmup_fraction=0.0)
    assert [b.idle_before_s for b in rep.batch_log] == pytest.approx([0.0, 1.0 - 0.12, 0.0])
    assert [b.requests for b in rep.batch_log] == [1, 1, 1] and rep.batch_log[0].total_s == pytest.approx(0.12)
    assert rep.allocator is None  # a run_batch that reports no allocator events (CPU, this virtual one)


def test_allocator_events_add_up_over_the_batches_and_are_none_on_cpu() -> None:
    from autotune.measure.memory import AllocatorEvents, allocator_events

    assert allocator_events("cpu") is None
    assert AllocatorEvents(3, 10, 4) - AllocatorEvents(1, 6, 4) == AllocatorEvents(2, 4, 0)
    vc = VirtualClock()
    base = vc.runner(SERVICE)
    events = iter([AllocatorEvents(0, 2, 0), AllocatorEvents(1, 5, 3), AllocatorEvents(0, 0, 0)])

    def run(requests):
        timing = base(requests)
        return BatchTiming(timing.first_token_s, timing.total_s, next(events))

    rep = replay([Request(4, 8)] * 3, [0.0, 5.0, 10.0], 1, run, clock=vc.clock, sleep=vc.sleep, warmup_fraction=0.0)
    assert rep.allocator == AllocatorEvents(1, 7, 3)
    assert [b.allocator.alloc_retries for b in rep.batch_log] == [0, 1, 0]


@pytest.mark.parametrize("call, message", [
    (lambda run: replay([Request(4, 4)] * 3, [0.0, 1.0], 2, run), "one arrival time per request"),
    (lambda run: replay([Request(4, 4)] * 2, [1.0, 0.0], 2, run), "sorted"),
    (lambda run: replay([Request(4, 4)] * 2, [0.0, 1.0], 0, run), "batch_size"),
    (lambda run: replay([Request(4, 4)] * 2, [0.0, 1.0], 2, run, warmup_fraction=1.0), "no request to count"),
])
def test_bad_replay_inputs_say_what_is_wrong(call, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call(VirtualClock().runner(SERVICE))


def test_a_compiled_candidate_runs_each_batch_padded_to_its_bucket(tiny_model) -> None:
    """Filler rows of one token each take a compiled server's batch to its bucket (one CUDA-graph
    shape per bucket); an eager candidate runs the requests as they are. On CPU generate() does not
    compile, so this checks the rows generate() gets, and that it runs them."""
    model = tiny_model
    seen: list[tuple[int, int, list[int]]] = []
    generate = model.generate

    def recording(*args, **kwargs):
        mask = kwargs["attention_mask"]
        seen.append((*mask.shape, mask.sum(dim=1).tolist()))
        return generate(*args, **kwargs)

    model.generate = recording
    try:
        for compiled in (True, False):
            cand = Candidate(dtype="fp32", batch_size=8, max_length=64, new_tokens=8, compile=compiled)
            generate_runner(model, cand, "cpu", model.config.vocab_size)([Request(5, 2), Request(9, 3), Request(7, 4)])
    finally:
        del model.generate
    assert seen == [(4, 9, [5, 9, 7, 1]), (3, 9, [5, 9, 7])]
    with pytest.raises(ValueError, match="fewer than the batch's 3 requests"):
        batch_inputs(WorkloadBatch((Request(5, 2), Request(9, 3), Request(7, 4)), 0), 100, 0, 1, rows=2)


def test_the_model_runner_times_a_real_padded_batch_with_its_first_token(tiny_model) -> None:
    model = tiny_model
    cand = Candidate(dtype="fp32", batch_size=4, max_length=64, new_tokens=8)
    run = generate_runner(model, cand, "cpu", model.config.vocab_size)
    one = run([Request(5, 2), Request(20, 12)])
    assert 0 < one.first_token_s < one.total_s
    # Twelve tokens take longer than one: the first token is not the end of the batch.
    short = min(run([Request(20, 1), Request(20, 1)]).total_s for _ in range(3))
    long = min(run([Request(20, 24), Request(20, 24)]).total_s for _ in range(3))
    assert long > 3 * short


def test_the_capacity_check_runs_end_to_end_on_cpu(tiny_model) -> None:
    """Service times measured on the workload at 1, 2 and 4, the capacity under an e2e limit, and
    the simulation next to a real replay at half of it."""
    model = tiny_model
    cand = Candidate(dtype="fp32", batch_size=4, max_length=64, new_tokens=8)
    sampler = WorkloadSampler(parse_workload_flag("prompt=8-40,output=2-16"), new_tokens=8)
    notes: list[str] = []
    saved: list[tuple] = []
    found, rows = capacity_check(model, cand, "cpu", model.config.vocab_size, sampler, parse_slo("e2e_p95=400ms"),
                                 fractions=[0.5], requests=replay_requests(sampler, cand.max_length, 120, 0), note=notes.append,
                                 checkpoint=lambda *args: saved.append((args[0], list(args[1]), list(args[2]))))
    assert found.rate_rps > 0 and len(rows) == 1
    # Kept twice: once the capacity is known (nothing replayed yet), then after the rate.
    assert [(f, len(r)) for f, _, r in saved] == [(found, 0), (found, 1)]
    assert [p.batch_size for p in saved[0][1]] == [1, 2, 4] and all(p.requests == 3 * p.batch_size and p.e2e_p50_s > 0 for p in saved[0][1])
    assert any("arrivals over about" in n for n in notes)
    row = rows[0]
    assert row.replayed.requests == row.simulated.requests == 108  # the same arrivals, the same warm-up
    assert row.rate_rps == pytest.approx(0.5 * found.rate_rps)
    figures = {name for name, *_ in row.rows()}
    assert figures == {"ttft_p95", "tpot_p95", "e2e_p95"}
    assert any("batch 4" in n for n in notes) and any("50% of capacity" in n for n in notes)
    # Python's collections counted per service point and per replayed batch (CPU: no allocator counts).
    assert all(p.gc is not None and p.allocator is None for p in saved[-1][1])
    assert all(b.gc is not None and b.allocator is None for b in row.replayed.batch_log)
    assert row.replayed.gc.collections > 0  # generate() makes garbage: the young generations are collected


def test_a_compiled_candidates_check_fixes_the_cache_length_and_makes_room_to_compile(tiny_model) -> None:
    """A compiled candidate (eager on CPU: generate() compiles on accelerators only): the static KV
    cache is fixed first at the longest prompt plus the longest output of every batch it will run
    (here longer than max_length, which the check says), batches run as bucket rows, and dynamo's
    recompile limit is raised (and hitting it fails) only while the check runs."""
    import gc

    import torch._dynamo

    from autotune.loading import forget_static_cache

    model = tiny_model
    forget_static_cache(model)  # the module's model may carry another test's static cache length
    cand = Candidate(dtype="fp32", batch_size=4, max_length=48, new_tokens=8, compile=True)
    sampler = WorkloadSampler(parse_workload_flag("prompt=8-40,output=2-16"), new_tokens=8)
    requests = replay_requests(sampler, cand.max_length, 112, 0)
    notes: list[str] = []
    servers: list = []
    seen: list[tuple[int, int, bool]] = []
    generate = model.generate

    frozen: list[bool] = []
    padded: list[bool] = []
    caches: list = []  # the first layer's keys of the cache each generate() was handed (None: its own)
    from autotune.kv_arena import cache_kwarg

    def recording(*args, **kwargs):
        config = torch._dynamo.config
        cache = kwargs.get(cache_kwarg(model))
        caches.append(cache.layers[0].keys.data_ptr() if cache is not None else None)
        seen.append((kwargs["input_ids"].shape[0], config.recompile_limit, config.fail_on_recompile_limit_hit))
        frozen.append(gc.get_freeze_count() > 0)
        padded.append(bool((kwargs["attention_mask"] == 0).any()))
        return generate(*args, **kwargs)

    import autotune.measure.traffic as traffic

    rewarms: list = []
    measure = traffic.measure_workload

    def recording_measure(*args, **kwargs):
        rewarms.append(kwargs["rewarm_each_batch"])
        return measure(*args, **kwargs)

    model.generate = recording
    traffic.measure_workload = recording_measure
    try:
        found, rows = capacity_check(model, cand, "cpu", model.config.vocab_size, sampler, parse_slo("e2e_p95=5s"),
                                     fractions=[1.0], requests=requests, note=notes.append,
                                     checkpoint=lambda *args: servers.append((args[1], args[3])))
    finally:
        del model.generate
        traffic.measure_workload = measure
    assert rewarms == [False, False, False]  # the cache length fixed: each service batch timed on its first run
    points, server = servers[-1]
    assert server.pads_to_buckets and server.buckets == (1, 2, 4)
    assert all(p.graphs_compiled_while_timed == 0 for p in points)  # nothing compiles on CPU: counted, not skipped
    # transformers' own figure: the cache every later generate() allocates, after one of the longest
    # prompt (40 at most) and the longest output (16 at most) of everything served.
    assert server.static_cache_tokens == model.__dict__["_previous_max_cache_length"]
    assert 48 < server.static_cache_tokens <= 40 + 16
    assert any(f"fixed at {server.static_cache_tokens} tokens" in n and "longer than max_length 48" in n for n in notes)
    assert {n for n, _, _ in seen} <= {1, 2, 4}  # a partial batch runs as its bucket's rows
    assert {(limit, fail) for _, limit, fail in seen} == {(64, True)}
    assert torch._dynamo.config.recompile_limit == 8 and not torch._dynamo.config.fail_on_recompile_limit_hit
    assert found.rate_rps > 0 and len(rows) == 1
    # Start-up (the cache fixed with one request, then each bucket without and with a padded row,
    # as a compiled server captures its graphs for both mask forms) runs before the heap is frozen;
    # everything timed after, and it is unfrozen once the check is done.
    assert [n for n, _, _ in seen[:6]] == [1, 1, 2, 2, 4, 4] and padded[:6] == [False, False, False, True, False, True]
    assert frozen[:6] == [False] * 6 and all(frozen[6:]) and len(frozen) > 6
    assert server.gc_frozen and gc.get_freeze_count() == 0
    # The cache length fixed by generate()'s own cache; from then on every generate() runs on one kept
    # allocation (kv_arena.py), whatever its rows, until the check ends.
    assert server.kv_arena and caches[0] is None and len(set(caches[1:])) == 1 and None not in caches[1:]


@pytest.mark.gpu
def test_a_compiled_replay_on_gpu_compiles_nothing_while_timed() -> None:
    """On CUDA (CUDA graphs): after the cache length is fixed and each bucket measured, the replay's
    batches (partial ones padded) meet only compiled shapes."""
    from autotune.loading import load_model
    from autotune.models import resolve_model

    ref = resolve_model("tiny-qwen2", random_weights=True)
    cand = Candidate(dtype="bf16", batch_size=4, max_length=96, new_tokens=8, compile=True, compile_mode="reduce-overhead")
    model, _ = load_model(ref, cand, "cuda:0")
    sampler = WorkloadSampler(parse_workload_flag("prompt=8-60,output=2-24"), new_tokens=8)
    saved: list = []
    found, rows = capacity_check(model, cand, "cuda:0", model.config.vocab_size, sampler, [], fractions=[0.5, 1.0],
                                 requests=replay_requests(sampler, cand.max_length, 112, 0),
                                 checkpoint=lambda found, points, rows, server: saved.append((points, server)))
    assert found.rate_rps > 0 and len(rows) == 2
    points, server = saved[-1]
    assert server.static_cache_tokens is not None  # transformers held the fixed length
    # Each service batch timed on its first run (the cache length fixed): nothing compiled while timed.
    assert [p.graphs_compiled_while_timed for p in points] == [0, 0, 0]
    assert [row.compiled_graphs for row in rows] == [0, 0]
    assert rows[1].replayed.mean_batch_size > 1  # partial and full batches both ran
    # CUDA: the allocator's counters are read around every service point and replayed batch.
    assert all(p.allocator is not None for p in points)
    assert points[0].allocator.device_allocs > 0  # its memory tracker emptied the cache: the batches allocate again
    assert all(b.allocator is not None and b.gc is not None for row in rows for b in row.replayed.batch_log)
    assert server.gc_frozen and server.kv_arena
    # CUDA graphs recorded are counted per replayed batch; the KV cache kept in one place, a replayed
    # batch replays the graphs start-up recorded for its bucket and records none.
    assert all(b.graphs is not None for row in rows for b in row.replayed.batch_log)
    assert sum(row.replayed.graphs.recordings for row in rows) == 0
    print("CUDA graphs recorded while replaying:", [row.replayed.graphs for row in rows],
          "per service point:", [p.graphs for p in points])


@pytest.mark.parametrize("args, message", [
    (["--at", "0"], "fractions must be above 0"),
    (["--at", "half"], "cannot read it"),
    (["--at", "50"], "at most 2"),  # 50 meant as percent
    (["--requests", "10"], "between 112"),
    ([], "cannot read"),  # no best.yaml there
    (["--slo", "ttft_p95=2"], "no unit"),
    (["--repeats", "2"], "3 to 100 batches"),
    (["--kv-cache", "reuse"], "give keep or per-call"),
])
def test_replay_refuses_bad_flags_in_one_line(tmp_path, args: list[str], message: str) -> None:
    from tests.conftest import run_cli

    result = run_cli("replay", str(tmp_path / "best.yaml"), *args)
    assert result.returncode == 2 and message in result.stderr and result.stderr.count("\n") == 1, result.stderr


def test_the_simulated_band_is_a_point_without_randomness_and_widens_with_it() -> None:
    """The replay's requests and arrivals, other service draws: a deterministic service model has
    nothing to redraw (the band is the simulated value, whatever the requests' lengths); measured spread does."""
    from autotune.replay_comparison import simulate_comparison, simulated_band

    requests = [Request(10 + 7 * i % 50, (8, 16, 32, 64)[i % 4]) for i in range(400)]
    fixed = simulated_band(SERVICE, 30.0, requests, seed=2, draws=5)
    sim = simulate_comparison(SERVICE, 30.0, requests, seed=2)
    assert fixed["e2e_p95"] == pytest.approx((sim.e2e_s.p95, sim.e2e_s.p95))
    spread = ServiceModel.from_samples({1: ([0.04, 0.05, 0.09], [0.008, 0.010, 0.016]), 8: ([0.1, 0.12, 0.2], [0.012, 0.015, 0.03])})
    low, high = simulated_band(spread, 20.0, requests, seed=2, draws=10)["e2e_p95"]
    assert high > low * 1.02


def test_the_comparison_simulates_the_replays_own_requests_in_order() -> None:
    """Request i of the simulation is the replay's request i. At a load so light that every batch is
    one request, with fixed service times, the counted requests (all but the first 10%) are exactly
    the trace's: only short ones when the 40 long ones come first, only long ones when they come
    last (drawn at random instead, both sets would be mixed)."""
    from autotune.replay_comparison import simulate_comparison

    fixed = ServiceModel.from_samples({1: ([0.05], [0.01])})
    short_s, long_s = 0.05 + 3 * 0.01, 0.05 + 63 * 0.01
    long_first = [Request(20, 64)] * 40 + [Request(20, 4)] * 360
    short_first = [Request(20, 4)] * 40 + [Request(20, 64)] * 360
    only_short = simulate_comparison(fixed, 0.01, long_first, seed=1).e2e_s
    only_long = simulate_comparison(fixed, 0.01, short_first, seed=1).e2e_s
    assert only_short.p99 == pytest.approx(short_s) and only_short.mean == pytest.approx(short_s)
    assert only_long.mean == pytest.approx(long_s, rel=1e-3)  # (a rare arrival waits a little: 0.68 s of service at 0.01 req/s)


@pytest.mark.slow
def test_the_replay_command_writes_its_report_after_the_capacity_and_each_rate(tmp_path) -> None:
    """`autotune replay` on a best.yaml of a CPU study with a workload and an SLO: replay.json holds
    the service points, the capacity and every rate, marked complete."""
    import json

    from tests.conftest import assert_ok, run_cli, write_space

    space = write_space(tmp_path / "space.yaml", dtype=["fp32"], batch_size=[4], max_length=[64], new_tokens=8)
    out = tmp_path / "out"
    assert_ok(run_cli("tune", "--model", "tiny-qwen2", "--random-weights", "--space", str(space), "--trials", "1",
                      "--workload", "prompt=8-40,output=2-16", "--slo", "e2e_p95=2s", "--out", str(out), "--device", "cpu",
                      "--confirm-top", "0"))
    result = run_cli("replay", str(out / "best.yaml"), "--at", "0.5", "--requests", "112", "--repeats", "3",
                     "--json", str(tmp_path / "r.json"))
    assert_ok(result)
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["complete"] is True and report["fractions"] == [0.5]
    assert [p["batch_size"] for p in report["service_points"]] == [1, 2, 4]
    assert report["memory_budget_gib"] is None and report["server"]["gc_frozen"] is True  # CPU: no GPU cap
    assert all({"idle_before_s", "gc", "allocator", "graphs"} <= set(b) for b in report["batch_logs"]["0.5"])
    # an eager config records no CUDA graph (and CPU has none): counted as 0, not left unknown
    assert all(row["cuda_graphs_recorded_while_replaying"] == {"recordings": 0, "recording_s": 0.0} for row in report["rows"])
    # the service model's own samples and the simulated output lengths: the report can be simulated again
    from autotune.prompt_scaling import prompted_service
    from autotune.replay_comparison import simulate_comparison

    points = report["service_points"]
    service, fit = prompted_service({p["batch_size"]: (p["prefill_samples_s"], p["tpot_samples_s"]) for p in points},
                                    {p["batch_size"]: [(p["batch_size"], n) for n in p["batch_prompt_tokens"]] for p in points},
                                    rounds_up=report["server"]["pads_to_buckets"])
    assert fit is not None and report["server"]["prompt_fit"]["slope_s_per_token"] == fit.slope_s_per_token
    assert len(report["output_tokens"]) == 112 and all(2 <= n <= 16 for n in report["output_tokens"])
    assert len(report["prompt_tokens"]) == 112 and all(8 <= n <= 40 for n in report["prompt_tokens"])
    row = report["rows"][0]
    requests = [Request(p, o) for p, o in zip(report["prompt_tokens"], report["output_tokens"])]
    again = simulate_comparison(service, row["rate_rps"], requests, seed=report["seed"])
    assert getattr(again, row["figure"].removesuffix("_p95") + "_s").p95 == pytest.approx(row["simulated_s"])
    assert report["capacity_rps"] > 0 and {r["fraction"] for r in report["rows"]} == {0.5}
    assert "arrivals over about" in result.stdout
    missing = run_cli("replay", str(out / "best.yaml"), "--json", str(tmp_path / "nowhere" / "r.json"))
    assert missing.returncode == 2 and "folder does not exist" in missing.stderr
