"""Trial records as the study stores them (one TrialRecord per told trial, in RECORD_ATTR), and
their reading: the records, the trials that count towards --trials, the objective value, the
best and the baseline record, the speedup. A leaf: report.py and report_html.py rank with it.
"""

from __future__ import annotations

import math

import optuna

from autotune.spec import Candidate, TrialOutcome, TrialRecord
from autotune.study.context import RECORD_ATTR

def records(study: optuna.Study) -> list[TrialRecord]:
    out = []
    for trial in study.get_trials(deepcopy=False):
        raw = trial.user_attrs.get(RECORD_ATTR)
        if raw is not None:
            out.append(TrialRecord.model_validate(raw))
    return out


def counted_trials(recs: list[TrialRecord]) -> int:
    """Trials that used a measurement slot: everything but duplicates answered from the record."""
    return sum(1 for r in recs if r.state != "duplicate")


def objective_value(spec_objective: str, outcome: TrialOutcome) -> float | None:
    if outcome.measurement is None:
        return None
    m = outcome.measurement
    return m.throughput.median if spec_objective == "throughput" else m.request_latency_s.median


def _placeholder(direction: str) -> float:
    # Infeasible trials need a value to be COMPLETE (so TPE sees them through their constraints);
    # the worst possible one, so no ranking ever prefers them. Never reported as a measurement.
    return 0.0 if direction == "throughput" else math.inf


def best_record(recs: list[TrialRecord], objective: str) -> TrialRecord | None:
    feasible = [r for r in recs if r.state == "measured" and r.objective_value is not None]
    if not feasible:
        return None
    # Ties on the objective go to lower peak memory: same speed, more headroom.
    sign = -1 if objective == "throughput" else 1
    return min(feasible, key=lambda r: (sign * r.objective_value, r.outcome.measurement.peak_memory_gib))


def baseline_record(recs: list[TrialRecord]) -> TrialRecord | None:
    return next((r for r in recs if r.is_baseline and r.state == "measured"), None)


def speedup(objective: str, best: TrialRecord, base: TrialRecord | None) -> float | None:
    if base is None or not base.objective_value or not best.objective_value:
        return None
    if objective == "throughput":
        return best.objective_value / base.objective_value
    return base.objective_value / best.objective_value


def _key(cand: Candidate) -> tuple:
    return tuple(sorted(cand.model_dump().items()))
