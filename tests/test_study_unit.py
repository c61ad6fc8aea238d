"""The study's pure helpers, without Optuna storage or workers: trial ordering by load-key, the
choice of the best record and the speedup over the baseline."""

from __future__ import annotations

from typing import Any

import pytest

from autotune.spec import Candidate, Measurement, Stat, TrialOutcome, TrialRecord
from autotune.study import (
    baseline_record,
    best_record,
    counted_trials,
    dominating_infeasible,
    expected_trial_s,
    failed_load,
    fitted_before,
    speedup,
)
from autotune.study.loop import _order_for_loaded_model
from autotune.study.results import _key
from autotune.study.shortcuts import _inferred_outcome

# ------------------------------------------------------------------------------ helpers


def _cand(dtype: str = "fp32", attn: str = "sdpa", batch: int = 1, length: int = 32) -> Candidate:
    return Candidate(dtype=dtype, attn_implementation=attn, batch_size=batch, max_length=length, new_tokens=4)


def _measurement(tok_s: float, latency_s: float, peak_gib: float) -> Measurement:
    def stat(v: float) -> Stat:
        return Stat.of([v, v, v])

    return Measurement(
        output_tokens_per_s=stat(tok_s), prefill_tokens_per_s=stat(tok_s * 10), decode_tokens_per_s=stat(tok_s),
        requests_per_s=stat(1.0), ttft_s=stat(latency_s / 10), tpot_s=stat(latency_s / 10),
        request_latency_s=stat(latency_s), peak_memory_gib=peak_gib, warmup_s=0.1, measure_s=1.0,
    )


def _record(number: int, state: str = "measured", *, tok_s: float | None = None, latency_s: float | None = None,
            peak_gib: float = 1.0, objective: str = "throughput", is_baseline: bool = False, **cand: Any) -> TrialRecord:
    """A record as the study stores it; objective_value follows `objective` like study.objective_value."""
    if tok_s is None and latency_s is None:
        outcome = TrialOutcome(status="oom" if state == "infeasible" else "unsupported", reason="x")
        value = None
    else:
        tok_s = tok_s if tok_s is not None else 1.0
        latency_s = latency_s if latency_s is not None else 1.0
        outcome = TrialOutcome(status="ok", measurement=_measurement(tok_s, latency_s, peak_gib))
        value = tok_s if objective == "throughput" else latency_s
    return TrialRecord(number=number, state=state, candidate=_cand(**cand), outcome=outcome, objective_value=value,
                       feasible=state == "measured", is_baseline=is_baseline)


# ------------------------------------------------------------------------------ _order_for_loaded_model


def test_order_puts_loaded_key_first_then_groups_by_first_appearance() -> None:
    a1, b1, a2, c1, b2, l1, c2, l2 = (
        _cand("bf16", batch=1), _cand("fp32", "eager", batch=1), _cand("bf16", batch=2), _cand("fp16", batch=1),
        _cand("fp32", "eager", batch=2), _cand("fp32", batch=1), _cand("fp16", batch=4), _cand("fp32", batch=8),
    )
    batch = list(enumerate([a1, b1, a2, c1, b2, l1, c2, l2]))
    ordered = _order_for_loaded_model(batch, l1.load_key)
    assert [n for n, _ in ordered] == [5, 7, 0, 2, 1, 4, 3, 6]
    assert [c for _, c in ordered] == [l1, l2, a1, a2, b1, b2, c1, c2]


def test_order_without_loaded_model_groups_only() -> None:
    a1, b1, a2 = _cand("bf16", batch=1), _cand("fp32", batch=1), _cand("bf16", batch=4)
    ordered = _order_for_loaded_model([(10, a1), (11, b1), (12, a2)], None)
    assert [n for n, _ in ordered] == [10, 12, 11]


def test_order_keeps_sampler_order_when_all_share_the_key() -> None:
    cands = [_cand(batch=b) for b in (8, 1, 4, 2)]
    batch = list(enumerate(cands))
    assert _order_for_loaded_model(batch, cands[0].load_key) == batch
    assert _order_for_loaded_model(batch, ("bf16", "none", "sdpa", False)) == batch
    assert _order_for_loaded_model([], None) == []


def test_order_does_not_mutate_input() -> None:
    batch = [(0, _cand("bf16")), (1, _cand("fp32"))]
    copy = list(batch)
    ordered = _order_for_loaded_model(batch, _cand("fp32").load_key)
    assert batch == copy and [n for n, _ in ordered] == [1, 0]


# ------------------------------------------------------------------------------ best_record


def test_best_record_highest_throughput() -> None:
    recs = [_record(0, tok_s=10.0), _record(1, tok_s=30.0, batch=2), _record(2, tok_s=20.0, batch=4)]
    assert best_record(recs, "throughput").number == 1


def test_best_record_ignores_infeasible_and_others() -> None:
    recs = [
        _record(0, tok_s=10.0),
        _record(1, "infeasible", tok_s=99.0, batch=2),  # over budget: measured but not allowed
        _record(2, "infeasible", batch=4),  # OOM: no measurement
        _record(3, "unsupported", dtype="fp16"),
        _record(4, "duplicate", tok_s=50.0, batch=8),
        _record(5, "failed", tok_s=60.0, batch=16),
    ]
    assert best_record(recs, "throughput").number == 0


def test_best_record_tie_goes_to_lower_peak_memory() -> None:
    recs = [_record(0, tok_s=20.0, peak_gib=3.0), _record(1, tok_s=20.0, peak_gib=1.5, batch=2),
            _record(2, tok_s=20.0, peak_gib=2.0, batch=4), _record(3, tok_s=19.99, peak_gib=0.5, batch=8)]
    assert best_record(recs, "throughput").number == 1


def test_best_record_latency_is_lowest() -> None:
    recs = [_record(0, latency_s=0.5, objective="latency"), _record(1, latency_s=0.2, objective="latency", batch=2),
            _record(2, latency_s=0.2, peak_gib=0.5, objective="latency", batch=4),
            _record(3, latency_s=0.9, objective="latency", batch=8)]
    assert best_record(recs, "latency").number == 2


def test_best_record_none_without_feasible() -> None:
    assert best_record([], "throughput") is None
    assert best_record([_record(0, "infeasible", tok_s=5.0), _record(1, "unsupported")], "throughput") is None


# ------------------------------------------------------------------------------ speedup and baseline


def test_speedup_throughput() -> None:
    base, best = _record(0, tok_s=10.0, is_baseline=True), _record(1, tok_s=25.0, batch=4)
    assert speedup("throughput", best, base) == pytest.approx(2.5)


def test_speedup_latency() -> None:
    base = _record(0, latency_s=0.8, objective="latency", is_baseline=True)
    best = _record(1, latency_s=0.2, objective="latency", batch=4)
    assert speedup("latency", best, base) == pytest.approx(4.0)


def test_speedup_without_baseline() -> None:
    best = _record(1, tok_s=25.0)
    assert speedup("throughput", best, None) is None
    assert speedup("throughput", best, _record(0, "infeasible", is_baseline=True)) is None


def test_baseline_record_and_counting() -> None:
    recs = [_record(0, "infeasible", is_baseline=True), _record(1, tok_s=5.0), _record(2, "duplicate", tok_s=5.0)]
    assert baseline_record(recs) is None
    recs[0] = _record(0, tok_s=3.0, is_baseline=True)
    assert baseline_record(recs).number == 0
    assert counted_trials(recs) == 2


# ------------------------------------------------------------------------------ dominating_infeasible


def _done(*recs: TrialRecord) -> dict:
    return {_key(r.candidate): r for r in recs}


def test_an_oom_at_a_smaller_shape_with_the_same_load_answers_larger_shapes() -> None:
    oom = _record(3, "infeasible", batch=4, length=64)
    done = _done(oom, _record(1, tok_s=10.0, batch=1, length=32))
    assert dominating_infeasible(_cand(batch=8, length=64), done) is oom
    assert dominating_infeasible(_cand(batch=4, length=128), done) is oom
    assert dominating_infeasible(_cand(batch=4, length=64), done) is oom
    outcome = _inferred_outcome(_cand(batch=8, length=128), oom)
    assert outcome.status == "oom" and outcome.inferred_from == 3 and "#3" in outcome.reason


def test_no_inference_across_loads_or_to_smaller_shapes() -> None:
    done = _done(_record(3, "infeasible", batch=4, length=64))
    assert dominating_infeasible(_cand(batch=2, length=64), done) is None  # smaller batch may fit
    assert dominating_infeasible(_cand(batch=8, length=32), done) is None  # shorter may fit
    assert dominating_infeasible(_cand(batch=8, length=64, attn="eager"), done) is None  # another load-key
    assert dominating_infeasible(_cand(batch=8, length=64, dtype="bf16"), done) is None
    # Measured, unsupported or low-quality trials say nothing about memory.
    assert dominating_infeasible(_cand(batch=8, length=64), _done(_record(3, tok_s=5.0, batch=4, length=64))) is None
    assert dominating_infeasible(_cand(batch=8, length=64), _done(_record(3, "unsupported", batch=4, length=64))) is None


def test_no_inference_to_fewer_pixels_or_frames() -> None:
    """At the same batch and length, fewer pixels or frames cost less vision-encoder memory (the
    Qwen3-VL-8B H100 study once inferred a 200k-pixel candidate from an 800k-pixel OOM)."""
    def vision(rec_or_cand, **shape):
        if isinstance(rec_or_cand, TrialRecord):
            return rec_or_cand.model_copy(update={"candidate": rec_or_cand.candidate.model_copy(update=shape)})
        return rec_or_cand.model_copy(update=shape)

    big = {"max_pixels": 802816, "images_per_prompt": 1, "video_frames": 16, "image_size": "1280x720", "video_size": "640x360"}
    oom = vision(_record(3, "infeasible", batch=4, length=64), **big)
    done = _done(oom)
    assert dominating_infeasible(vision(_cand(batch=8, length=64), **big), done) is oom
    assert dominating_infeasible(vision(_cand(batch=8, length=64), **{**big, "max_pixels": 200704}), done) is None
    assert dominating_infeasible(vision(_cand(batch=8, length=64), **{**big, "video_frames": 0}), done) is None
    assert dominating_infeasible(vision(_cand(batch=8, length=64), **{**big, "image_size": "640x480"}), done) is None


def test_inferred_answers_are_not_chained() -> None:
    """Only measured infeasibility is evidence; an inference is not a source of further ones."""
    inferred = _record(5, "infeasible", batch=8, length=64)
    inferred = inferred.model_copy(update={"outcome": inferred.outcome.model_copy(update={"inferred_from": 3})})
    assert dominating_infeasible(_cand(batch=16, length=64), _done(inferred)) is None


def _load_failure(number: int, status: str, **cand: Any) -> TrialRecord:
    rec = _record(number, "unsupported" if status == "unsupported" else "infeasible", **cand)
    return rec.model_copy(update={"outcome": TrialOutcome(status=status, phase="load", reason="cannot load")})


def test_a_failed_load_answers_every_shape_of_the_same_load() -> None:
    """The load does not depend on batch or length: a load that failed as unsupported answers the
    same load-key at any shape, smaller ones too, and nothing else."""
    unsupported = _load_failure(3, "unsupported", batch=8, length=64)
    assert failed_load(_cand(batch=1, length=32), _done(unsupported)) is unsupported
    # An OOM while loading may be what the worker's previous model left behind: not evidence.
    assert failed_load(_cand(dtype="bf16", batch=1), _done(_load_failure(4, "oom", dtype="bf16", batch=4))) is None
    assert failed_load(_cand(attn="eager"), _done(unsupported)) is None  # another load
    # A failure while measuring says nothing about loading; an inferred answer is not evidence.
    measured_oom = _record(5, "infeasible", batch=8)
    measured_oom = measured_oom.model_copy(update={"outcome": TrialOutcome(status="oom", phase="measure", reason="x")})
    assert failed_load(_cand(batch=1), _done(measured_oom)) is None
    inferred = unsupported.model_copy(update={"outcome": unsupported.outcome.model_copy(update={"inferred_from": 1})})
    assert failed_load(_cand(batch=1), _done(inferred)) is None
    crashed = _load_failure(6, "unsupported").model_copy(update={"outcome": TrialOutcome(status="error", phase="load")})
    assert failed_load(_cand(batch=1), _done(crashed)) is None  # an error may be passing: loaded again


# ------------------------------------------------------------------------------ evidence that a candidate fits


def test_fitted_before_needs_a_fit_at_a_shape_no_smaller_with_the_same_load() -> None:
    from autotune.spec import BatchBoundary, Probe

    boundary = BatchBoundary(batch_sizes=[1, 8, 24, 32, 40], largest_feasible=32, probes=[
        Probe(batch_size=24, fits=True, peak_memory_gib=19.9), Probe(batch_size=32, fits=True, peak_memory_gib=22.7),
        Probe(batch_size=40, fits=False, reason="OutOfMemoryError")])
    assert "fitted batch 24" in fitted_before(_cand(batch=24), boundary, {})  # the H200 compile case
    assert "fitted batch 32" in fitted_before(_cand(batch=32), boundary, {})
    assert fitted_before(_cand(batch=40), boundary, {}) is None  # a genuine OOM stays an answer
    measured = _done(_record(7, tok_s=5.0, batch=8, length=64))
    assert "#7" in fitted_before(_cand(batch=4, length=64), None, measured)
    assert "#7" in fitted_before(_cand(batch=8, length=32), None, measured)
    assert fitted_before(_cand(batch=16, length=64), None, measured) is None  # larger batch: no evidence
    assert fitted_before(_cand(batch=4, length=128), None, measured) is None  # longer: no evidence
    assert fitted_before(_cand(batch=4, length=64, attn="eager"), None, measured) is None  # another load
    assert fitted_before(_cand(batch=4, length=64), None, _done(_record(7, "infeasible", batch=8, length=64))) is None


# ------------------------------------------------------------------------------ --timeout


def test_expected_trial_time_is_the_median_of_comparable_trials() -> None:
    durations = [(True, False, 40.0), (False, False, 5.0), (False, False, 7.0), (False, False, 30.0), (True, False, 60.0)]
    assert expected_trial_s(durations, reload=True) == 50.0
    assert expected_trial_s(durations, reload=False) == 7.0
    assert expected_trial_s([(False, False, 5.0)], reload=True) is None  # no load seen yet: nothing to judge by
    assert expected_trial_s([], reload=False) is None


def test_a_compiled_trial_is_judged_by_compiled_ones_once_there_are_some() -> None:
    """The H100 study of 2026-12-06: uncompiled loads of 20-40 s, then a compiled load that ran 150 s."""
    uncompiled = [(True, False, 25.0), (True, False, 35.0)]
    assert expected_trial_s(uncompiled, reload=True, compiled=True) == 30.0  # none compiled yet: the loads' median
    timed = uncompiled + [(True, True, 150.0)]
    assert expected_trial_s(timed, reload=True, compiled=True) == 150.0
    assert expected_trial_s(timed, reload=True, compiled=False) == 30.0


def test_a_trial_that_would_overrun_the_timeout_is_not_started() -> None:
    import time
    from types import SimpleNamespace

    from autotune.study.budget import _too_late_for

    ctx = SimpleNamespace(spec=SimpleNamespace(timeout_s=78.0))
    loaded = _cand().load_key
    started = time.monotonic() - 60.0  # 18 s left
    durations = [(True, False, 46.0), (False, False, 6.0)]
    assert _too_late_for(ctx, _cand(batch=2), loaded, started, durations) == ""  # ~6 s on the loaded model
    reason = _too_late_for(ctx, _cand(attn="eager"), loaded, started, durations)  # a load: ~46 s
    assert "--timeout 78s" in reason and "a model load" in reason and "about 46s" in reason
    assert _too_late_for(ctx, _cand(attn="eager"), loaded, started, [(False, False, 6.0)]) == ""  # no load timed yet
    assert _too_late_for(SimpleNamespace(spec=SimpleNamespace(timeout_s=None)), _cand(attn="eager"), loaded, started,
                         durations) == ""


def _timed(number: int, batch: int, load_s: float, *, attn: str = "sdpa", tok_s: float = 10.0) -> TrialRecord:
    """A measured trial whose times are known: warm-up 0.5 s, 3 timed repeats of 0.5 s, 0.25 s of
    other work in the worker, and `load_s` of model load (0: it ran on the loaded model)."""
    rec = _record(number, tok_s=tok_s, batch=batch, attn=attn)
    m = rec.outcome.measurement.model_copy(update={"warmup_s": 0.5, "measure_s": 1.5})
    outcome = rec.outcome.model_copy(update={"measurement": m, "load_s": load_s, "reloaded": load_s > 0})
    return rec.model_copy(update={"outcome": outcome, "total_s": load_s + 0.5 + 1.5 + 0.25})


def test_the_search_stops_early_to_keep_the_confirmations_time() -> None:
    """With --timeout, no trial starts that would leave less than the confirmation's estimate; the
    stop reason says how early and for what (issue 20: a confirmation skipped by --timeout had left
    a runner-up under-measured by 29%)."""
    import time
    from types import SimpleNamespace

    from autotune.confirm import confirmation_cost_s
    from autotune.spec import TuneSpec
    from autotune.study.budget import _stop_reason, _too_late_for, confirmation_reserve_s

    recs = [_timed(0, 1, 10.0, tok_s=20.0), _timed(1, 2, 0.0, tok_s=19.0), _timed(2, 4, 0.0, tok_s=5.0)]
    spec = TuneSpec(timeout_s=78.0, confirm_top=2, confirm_repeats=4)
    ctx = SimpleNamespace(spec=spec, space=SimpleNamespace(size=100))
    reserve = confirmation_reserve_s(ctx, recs)
    # Two rounds of the top two (one load-key: one load of 10 s), each 0.25 + 0.5 + 2 x 0.5 s.
    assert reserve == confirmation_cost_s(recs, "throughput", 2, 4) == pytest.approx(10.0 + 2 * 2 * 1.75)
    assert confirmation_reserve_s(SimpleNamespace(spec=spec.model_copy(update={"timeout_s": None})), recs) == 0.0
    assert confirmation_reserve_s(SimpleNamespace(spec=spec.model_copy(update={"confirm_top": 0})), recs) == 0.0

    loaded = _cand().load_key
    started = time.monotonic() - 60.0  # 18 s left
    durations = [(True, False, 46.0), (False, False, 6.0)]
    assert _too_late_for(ctx, _cand(batch=8), loaded, started, durations, reserve_s=10.0) == ""  # 6 + 10 <= 18
    reason = _too_late_for(ctx, _cand(batch=8), loaded, started, durations, reserve_s=reserve)  # 6 + 17 > 18
    assert "stopping the search 18s early to keep 17s for confirming the top 2" in reason and "about 6s" in reason
    assert _stop_reason(ctx, {}, started, 0, reserve_s=10.0) == ""
    reason = _stop_reason(ctx, {}, started, 0, reserve_s=20.0)  # less left than the reserve: no trial fits
    assert "stopping the search 18s early to keep 20s for confirming the top 2" in reason
    assert _stop_reason(ctx, {}, time.monotonic() - 80.0, 0, reserve_s=20.0) == "--timeout 78s reached"
    # Without a reserve (no --timeout, --confirm-top 0, fewer than two feasible): as before.
    assert _too_late_for(ctx, _cand(batch=8), loaded, started, durations) == ""
    assert _stop_reason(ctx, {}, started, 0) == ""


def test_default_study_name_keeps_a_reranker_apart_from_the_same_checkpoint() -> None:
    from autotune.models import ModelRef
    from autotune.study import default_study_name
    from autotune.system import DeviceInfo

    cpu = DeviceInfo(device="cpu", type="cpu", name="x", memory_gib=8.0, bf16_supported=True)
    lm = ModelRef(kind="embedded", name="SmolLM2-135M-Instruct")
    assert default_study_name(lm, cpu) == "SmolLM2-135M-Instruct-cpu"
    assert default_study_name(lm.model_copy(update={"model_kind": "reranker"}), cpu) == "SmolLM2-135M-Instruct-reranker-cpu"
    named = ModelRef(kind="pretrained", name="Qwen3-VL-Reranker-2B", source="/x", model_kind="reranker")
    assert default_study_name(named, cpu) == "Qwen3-VL-Reranker-2B-cpu"


def test_best_summary_names_the_baseline_it_compares_with() -> None:
    # In a space without a plain default load the baseline is the space's plainest candidate (e.g.
    # a compiled batch 128): "N× the baseline" must say which one, not call it untuned.
    from pathlib import Path

    from rich.console import Console

    from autotune.deploy import read_deployment
    from autotune.report import best_summary

    config = read_deployment(Path(__file__).parent / "golden/export/text/transformers_deploy.best.yaml")
    console = Console(width=400, record=True)
    console.print(best_summary(config))
    text = console.export_text()
    assert f"{config.speedup_vs_baseline:.2f}× the baseline (#0: {config.baseline.candidate.label()})" in text
    assert "untuned" not in text
    console = Console(width=400, record=True)
    console.print(best_summary(config.model_copy(update={"baseline": None})))
    text = console.export_text()
    assert f"{config.speedup_vs_baseline:.2f}× the baseline" in text and "× the baseline (" not in text
