"""Trial records as the study stores them (one TrialRecord per told trial, in RECORD_ATTR), and
their reading: the records, the trials that count towards --trials, the objective value, the
best and the baseline record, the speedup. A leaf: report.py and report_html.py rank with it.
"""

from __future__ import annotations

import optuna

from autotune.objectives import objective as objective_def
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
    """The median of the figure the objective ranks (None: nothing measured)."""
    stat = objective_def(spec_objective).stat(outcome.measurement)
    return None if stat is None else stat.median


def objective_values(names: list[str], outcome: TrialOutcome) -> dict[str, float]:
    """Each objective's value, for a multi-objective study ({} with fewer than two names or
    nothing measured)."""
    if len(names) < 2 or outcome.measurement is None:
        return {}
    values = {name: objective_value(name, outcome) for name in names}
    return {name: v for name, v in values.items() if v is not None}


def _placeholder(name: str) -> float:
    # Infeasible trials need a value to be COMPLETE (so TPE sees them through their constraints);
    # the worst possible one, so no ranking ever prefers them. Never reported as a measurement.
    return objective_def(name).placeholder


def best_record(recs: list[TrialRecord], objective: str) -> TrialRecord | None:
    feasible = [r for r in recs if r.state == "measured" and r.objective_value is not None]
    if not feasible:
        return None
    # Ties on the objective go to lower peak memory: same speed, more headroom.
    ranked = objective_def(objective)
    return min(feasible, key=lambda r: (ranked.key(r.objective_value), r.outcome.measurement.peak_memory_gib))


def baseline_record(recs: list[TrialRecord]) -> TrialRecord | None:
    return next((r for r in recs if r.is_baseline and r.state == "measured"), None)


def speedup(objective: str, best: TrialRecord, base: TrialRecord | None) -> float | None:
    if base is None or not base.objective_value or not best.objective_value:
        return None
    return objective_def(objective).ratio(best.objective_value, base.objective_value)


def _key(cand: Candidate) -> tuple:
    return tuple(sorted(cand.model_dump().items()))
