"""best.yaml's capacity: the simulation fed from the study's records (the best config and the same
settings at smaller batch sizes), every limit simulated at its percentile, a workload's output lengths."""

from __future__ import annotations

import pytest

from autotune.slo import parse_slo
from autotune.serving import serving_capacity
from autotune.spec import Candidate, Measurement, Stat, TrialOutcome, TrialRecord


def _record(number: int, batch: int, ttft_s: float, tpot_s: float, state: str = "measured", dtype: str = "bf16",
            compiled: bool = False) -> TrialRecord:
    def stat(v: float) -> Stat:
        return Stat.of([v, v, v])

    m = Measurement(output_tokens_per_s=stat(1.0), prefill_tokens_per_s=stat(1.0), decode_tokens_per_s=stat(1.0),
                    requests_per_s=stat(1.0), ttft_s=stat(ttft_s), tpot_s=stat(tpot_s), request_latency_s=stat(ttft_s + 9 * tpot_s),
                    peak_memory_gib=1.0, warmup_s=0.1, measure_s=1.0)
    cand = Candidate(dtype=dtype, batch_size=batch, max_length=64, new_tokens=10, compile=compiled)
    return TrialRecord(number=number, state=state, candidate=cand, outcome=TrialOutcome(status="ok", measurement=m))


def test_without_an_slo_capacity_is_saturation_of_the_full_batch() -> None:
    best = _record(1, batch=8, ttft_s=0.2, tpot_s=0.02)  # a full batch takes 0.2 + 9 * 0.02 = 0.38 s
    cap = serving_capacity([best], best, [])
    assert cap.limited_by == "saturation" and cap.rate_rps == pytest.approx(8 / 0.38) and cap.batch_sizes == [8]
    assert cap.slo == "" and "requests/s" in cap.summary()


def test_smaller_batches_of_the_same_settings_feed_the_simulation_and_others_do_not() -> None:
    best = _record(1, batch=8, ttft_s=0.2, tpot_s=0.02)
    recs = [best, _record(2, batch=1, ttft_s=0.05, tpot_s=0.01), _record(3, batch=4, ttft_s=0.1, tpot_s=0.015),
            _record(4, batch=2, ttft_s=0.01, tpot_s=0.001, dtype="fp32"),  # other settings
            _record(5, batch=2, ttft_s=0.01, tpot_s=0.001, state="infeasible"),  # over budget: not a config that runs
            _record(6, batch=16, ttft_s=0.3, tpot_s=0.03)]  # larger than the best's batch
    cap = serving_capacity(recs, best, parse_slo("e2e_p95=2s"))
    assert cap.batch_sizes == [1, 4, 8]
    assert 0 < cap.rate_rps < cap.saturation_rps and cap.simulated_p95_s["e2e"] <= 2.0


def test_a_compiled_config_is_fed_its_bucket_sizes_only_and_pads_up_to_them() -> None:
    """A compiled server pads a batch to a bucket (1, 2, 4, 8, 12 for batch 12): a trial at batch 6
    is no time of anything it runs, and a partial batch takes the next measured bucket's time."""
    def recs(compiled: bool) -> list[TrialRecord]:
        return [_record(1, batch=12, ttft_s=0.2, tpot_s=0.02, compiled=compiled),
                *(_record(n, batch=k, ttft_s=0.05 + 0.01 * k, tpot_s=0.01, compiled=compiled) for n, k in ((2, 1), (3, 4), (4, 6)))]

    compiled, eager = recs(True), recs(False)
    padded = serving_capacity(compiled, compiled[0], parse_slo("e2e_p95=500ms"))
    interpolated = serving_capacity(eager, eager[0], parse_slo("e2e_p95=500ms"))
    assert padded.batch_sizes == [1, 4, 12] and interpolated.batch_sizes == [1, 4, 6, 12]
    # Batches of 5 to 11 take batch 12's 0.38 s when padded, 0.19-0.37 s interpolated: fewer requests/s.
    assert 0 < padded.rate_rps < interpolated.rate_rps


def test_an_e2e_limit_the_batch_cannot_meet_gives_zero_and_says_why() -> None:
    best = _record(1, batch=4, ttft_s=0.5, tpot_s=0.1)  # 1.4 s per batch even with nobody waiting
    cap = serving_capacity([best], best, parse_slo("e2e_p95=1s,ttft_p50=200ms"))
    assert cap.rate_rps == 0 and cap.limited_by == "e2e_p95" and "misses" in cap.reason
    assert "ttft_p50" in cap.reason  # the p50 limit is simulated too (0.5 s > 200 ms)
    assert cap.slo == "e2e_p95 <= 1.00 s,ttft_p50 <= 200 ms" and cap.not_simulated == []


def test_a_tighter_ttft_limit_holds_fewer_requests() -> None:
    best = _record(1, batch=8, ttft_s=0.2, tpot_s=0.02)
    loose = serving_capacity([best], best, parse_slo("ttft_p95=2s"))
    tight = serving_capacity([best], best, parse_slo("ttft_p95=500ms"))
    assert 0 < tight.rate_rps < loose.rate_rps <= loose.saturation_rps


def test_a_workloads_output_lengths_feed_the_simulation() -> None:
    """Under a workload the simulation draws from the timed requests' output lengths: longer
    outputs hold fewer requests than the fixed new_tokens would."""
    fixed = _record(1, batch=8, ttft_s=0.2, tpot_s=0.02)
    long = _record(1, batch=8, ttft_s=0.2, tpot_s=0.02)
    long.outcome.measurement.request_output_tokens = [10, 40, 40, 80]
    a, b = serving_capacity([fixed], fixed, []), serving_capacity([long], long, [])
    assert a.output_tokens == [10] and b.output_tokens == [10, 40, 40, 80]
    assert b.saturation_rps < a.saturation_rps / 3  # a full batch of 8 almost surely runs to 80 tokens, not 10


def test_a_workloads_prompt_lengths_give_the_capacity_a_prompt_slope() -> None:
    """Under a workload the timed batches' padded prompts fit a prefill slope; the simulated
    requests draw prompts with their outputs. Batches whose first token grows with the prompt get a
    slope; the fixed shape (no prompts) stays prompt-blind."""
    best = _record(1, batch=2, ttft_s=0.2, tpot_s=0.02)
    m = best.outcome.measurement
    padded = [100, 100, 900, 900, 500, 500]
    m.ttft_s = Stat.of([0.05 + 2 * 100e-6 * p for p in padded])  # 100 µs per padded prompt token, 2 rows
    m.request_output_tokens, m.request_prompt_tokens, m.request_padded_prompt_tokens = [10] * 6, [100, 60, 900, 20, 500, 400], padded
    cap = serving_capacity([best], best, parse_slo("ttft_p95=500ms"))
    assert cap.prompt_slope_s_per_token == pytest.approx(100e-6)
    blind = _record(1, batch=2, ttft_s=0.2, tpot_s=0.02)
    blind.outcome.measurement.ttft_s = m.ttft_s
    assert serving_capacity([blind], blind, parse_slo("ttft_p95=500ms")).prompt_slope_s_per_token == 0.0


def test_a_heavier_load_that_meets_the_slo_again_is_recorded_and_said() -> None:
    """A batch of 1 slower per request than a full batch (per-step overhead): light loads queue
    behind single requests and miss ttft_p95, heavier ones meet it again; best.yaml keeps the
    conservative capacity and records the band, and the summary says it."""
    best = _record(1, batch=32, ttft_s=0.8, tpot_s=0.03)  # 0.8 + 9 x 0.03 = 1.07 s for 32 requests
    recs = [best, _record(2, batch=1, ttft_s=0.1, tpot_s=0.3)]  # 2.8 s for one
    cap = serving_capacity(recs, best, parse_slo("ttft_p95=2.5s"))
    assert cap.limited_by == "ttft_p95" and 0 < cap.rate_rps < 1
    assert len(cap.meets_again_rps) == 2 and cap.rate_rps < cap.meets_again_rps[0] <= cap.meets_again_rps[1] < cap.saturation_rps
    assert "meets the SLO again at" in cap.summary() and "not at the lighter loads between" in cap.summary()
    plain = serving_capacity([best], best, parse_slo("ttft_p95=2.5s"))
    assert plain.meets_again_rps == [] and "again" not in plain.summary()
