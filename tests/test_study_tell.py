"""The outcome -> trial state decision (autotune/study/tell.py: classify), every branch, directly:
no Optuna, no study, no worker. Each case checks the exact state and constraint values."""

from __future__ import annotations

import pytest

from autotune.spec import BatchBoundary, Candidate, Measurement, Probe, QualityReport, Stat, TrialOutcome, TrialRecord
from autotune.study.tell import Verdict, classify

ZERO = {"oom": 0.0, "unsupported": 0.0, "over_budget_gib": 0.0, "quality_below_floor": 0.0, "slo_excess": 0.0}


def _cand(batch: int = 4, length: int = 64) -> Candidate:
    return Candidate(dtype="fp32", attn_implementation="sdpa", batch_size=batch, max_length=length, new_tokens=4)


def _measured(peak_gib: float, tok_s: float = 100.0, latency_s: float = 2.0, quality: float | None = None) -> TrialOutcome:
    def stat(v: float) -> Stat:
        return Stat.of([v, v, v])

    m = Measurement(output_tokens_per_s=stat(tok_s), prefill_tokens_per_s=stat(tok_s * 10), decode_tokens_per_s=stat(tok_s),
                    requests_per_s=stat(1.0), ttft_s=stat(0.1), tpot_s=stat(0.1), request_latency_s=stat(latency_s),
                    peak_memory_gib=peak_gib, warmup_s=0.1, measure_s=1.0)
    return TrialOutcome(status="ok", measurement=m, quality=_quality(quality) if quality is not None else None)


def _quality(score: float) -> QualityReport:
    return QualityReport(metric="contains", score=score, ci_low=score, ci_high=score, n=4, per_example=[score] * 4)


def _record(state: str, outcome: TrialOutcome, constraints: dict[str, float] | None = None, number: int = 3) -> TrialRecord:
    return TrialRecord(number=number, state=state, candidate=_cand(), outcome=outcome, constraints=constraints or dict(ZERO),
                       feasible=state == "measured")


def _classify(outcome: TrialOutcome, cand: Candidate | None = None, **kw) -> Verdict:
    args = {"objective": "throughput", "budget_gib": 10.0, "floor": None} | kw
    return classify(outcome, cand or _cand(), **args)


def test_a_measurement_within_the_budget_is_measured_with_its_value() -> None:
    v = _classify(_measured(peak_gib=8.5, tok_s=123.0))
    assert v == Verdict("measured", {**ZERO, "over_budget_gib": -1.5}, 123.0, True)
    assert _classify(_measured(peak_gib=8.5, latency_s=2.5), objective="latency").value == 2.5


def test_a_measurement_without_a_budget_has_no_budget_constraint() -> None:
    v = _classify(_measured(peak_gib=80.0), budget_gib=None)
    assert (v.state, v.constraints, v.feasible) == ("measured", ZERO, True)


def test_a_measurement_over_the_budget_is_infeasible_by_its_excess() -> None:
    v = _classify(_measured(peak_gib=12.34567, tok_s=500.0))
    assert v == Verdict("infeasible", {**ZERO, "over_budget_gib": 2.3457}, 500.0, False)


def test_a_measurement_below_the_quality_floor_is_low_quality() -> None:
    v = _classify(_measured(peak_gib=8.0, quality=0.7), floor=0.75)
    assert v.state == "low_quality" and not v.feasible
    assert v.constraints == {**ZERO, "over_budget_gib": -2.0, "quality_below_floor": 0.05}
    above = _classify(_measured(peak_gib=8.0, quality=0.8), floor=0.75)
    assert above.state == "measured" and above.constraints["quality_below_floor"] == -0.05
    # Over the budget and below the floor: the budget decides, both constraints are kept.
    both = _classify(_measured(peak_gib=11.0, quality=0.7), floor=0.75)
    assert both.state == "infeasible" and both.constraints == {**ZERO, "over_budget_gib": 1.0, "quality_below_floor": 0.05}


def test_without_a_floor_or_a_quality_report_quality_is_unconstrained() -> None:
    assert _classify(_measured(peak_gib=8.0, quality=0.1)).constraints["quality_below_floor"] == 0.0
    assert _classify(_measured(peak_gib=8.0), floor=0.9).constraints["quality_below_floor"] == 0.0


def _boundary(peak_of_failure: float | None) -> BatchBoundary:
    return BatchBoundary(batch_sizes=[1, 2, 4, 8], largest_feasible=2,
                         probes=[Probe(batch_size=2, fits=True, peak_memory_gib=6.0),
                                 Probe(batch_size=4, fits=False, peak_memory_gib=peak_of_failure, reason="over budget"),
                                 Probe(batch_size=8, fits=False, peak_memory_gib=30.0)])


def test_an_oom_answered_by_the_bisection_uses_the_failing_probe_peak() -> None:
    outcome = TrialOutcome(status="oom", boundary=_boundary(peak_of_failure=13.5), reason="bisection: ...")
    v = _classify(outcome, _cand(batch=8))  # the smallest failure at or below batch 8 is batch 4's
    assert v == Verdict("infeasible", {**ZERO, "over_budget_gib": 3.5}, None, False)


def test_an_oom_answered_by_the_bisection_without_a_peak_is_an_oom() -> None:
    outcome = TrialOutcome(status="oom", boundary=_boundary(peak_of_failure=None))
    assert _classify(outcome, _cand(batch=4)) == Verdict("infeasible", {**ZERO, "oom": 1.0}, None, False)
    # With a peak but no budget (a real OOM on the GPU's own memory): an OOM as well.
    with_peak = TrialOutcome(status="oom", boundary=_boundary(peak_of_failure=13.5))
    assert _classify(with_peak, _cand(batch=4), budget_gib=None).constraints == {**ZERO, "oom": 1.0}


def test_a_predicted_oom_is_over_budget_by_the_lower_bound() -> None:
    outcome = TrialOutcome(status="oom", predicted=True, reason="predicted")
    v = _classify(outcome, lower_bound=14.123456)
    assert v == Verdict("infeasible", {**ZERO, "over_budget_gib": 4.1235}, None, False)


def test_an_answer_inferred_from_a_smaller_shape_copies_its_violation() -> None:
    source = _record("infeasible", TrialOutcome(status="oom"), {**ZERO, "oom": 1.0, "over_budget_gib": 0.0})
    outcome = TrialOutcome(status="oom", inferred_from=source.number, reason="inferred")
    assert _classify(outcome, inferred_from=source) == Verdict("infeasible", {**ZERO, "oom": 1.0}, None, False)
    over = _record("infeasible", _measured(peak_gib=11.0), {**ZERO, "over_budget_gib": 1.0})
    assert _classify(outcome, inferred_from=over).constraints == {**ZERO, "over_budget_gib": 1.0}


def test_an_oom_is_infeasible() -> None:
    assert _classify(TrialOutcome(status="oom", phase="measure")) == Verdict("infeasible", {**ZERO, "oom": 1.0}, None, False)


def test_unsupported_is_its_own_state_and_constraint() -> None:
    v = _classify(TrialOutcome(status="unsupported", phase="load"))
    assert v == Verdict("unsupported", {**ZERO, "unsupported": 1.0}, None, False)


@pytest.mark.parametrize("status", ["error", "crashed", "timeout"])
def test_a_worker_failure_fails_the_trial(status: str) -> None:
    assert _classify(TrialOutcome(status=status, reason="x")) == Verdict("failed", ZERO, None, False)


def test_a_duplicate_of_a_feasible_record_is_a_feasible_duplicate() -> None:
    previous = _record("measured", _measured(peak_gib=8.0, tok_s=77.0))
    v = _classify(previous.outcome, duplicate_of=previous)
    assert v == Verdict("duplicate", {**ZERO, "over_budget_gib": -2.0}, 77.0, True)


def test_a_duplicate_of_an_infeasible_record_keeps_its_constraint() -> None:
    previous = _record("infeasible", TrialOutcome(status="oom"), {**ZERO, "oom": 1.0})
    assert _classify(previous.outcome, duplicate_of=previous) == Verdict("duplicate", {**ZERO, "oom": 1.0}, None, False)


def test_a_duplicate_of_a_failed_record_is_unsupported() -> None:
    """A candidate that failed MAX_ATTEMPTS times: Optuna must see it as infeasible, not as a result."""
    previous = _record("failed", TrialOutcome(status="error", reason="x"))
    v = _classify(previous.outcome, duplicate_of=previous)
    assert v == Verdict("duplicate", {**ZERO, "unsupported": 1.0}, None, False)


def test_the_value_is_the_objective_median_or_none() -> None:
    assert _classify(_measured(peak_gib=1.0, tok_s=50.0), objective="throughput").value == 50.0
    assert _classify(_measured(peak_gib=1.0, latency_s=0.5), objective="latency").value == 0.5
    assert _classify(TrialOutcome(status="oom")).value is None
