"""Outcomes become trial states in exactly one place. `classify` is the decision, a pure
function of the outcome and the study's limits (no Optuna, no context), tested directly;
`tell` applies its verdict to Optuna: the record, the constraints, the state and the value.
The same split as Optuna's own `_run_trial` / `_tell_with_warning`.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import optuna
from optuna.trial import TrialState as OptunaState

from autotune.memory_model import lower_bound_gib
from autotune.slo import SloLimit
from autotune.slo import excess as slo_excess
from autotune.slo import goodput
from autotune.slo import violations as slo_violations
from autotune.spec import Candidate, TrialOutcome, TrialRecord
from autotune.study.context import BASELINE_ATTR, CONSTRAINT_KEYS, RECORD_ATTR, StudyContext
from autotune.study.reference import quality_floor
from autotune.study.results import _placeholder, objective_value, objective_values


@dataclass(frozen=True)
class Verdict:
    """What an outcome means for the study: the record's state, the constraint values Optuna gets
    (> 0 is violated), the objective's measured value (None: nothing was measured) and whether the
    candidate is deployable."""

    state: str  # measured | infeasible | slo_violated | low_quality | unsupported | failed | duplicate
    constraints: dict[str, float]
    value: float | None
    feasible: bool
    slo_violations: tuple[str, ...] = ()


def classify(outcome: TrialOutcome, cand: Candidate, *, objective: str, budget_gib: float | None, floor: float | None,
             lower_bound: float | None = None, inferred_from: TrialRecord | None = None,
             duplicate_of: TrialRecord | None = None, slo: list[SloLimit] | None = None) -> Verdict:
    """The state, constraints and value of `outcome` for `cand`. `floor`: the quality floor's score
    (None: no floor); `slo`: the --slo limits (a measurement over one is slo_violated; over the
    budget is infeasible first, since the config cannot run at all); `lower_bound`: the memory model's lower bound for `cand` in GiB (read only
    for a predicted outcome); `inferred_from`: the infeasible record a dominated candidate was
    answered from; `duplicate_of`: the record of the same candidate this trial repeats."""
    value = objective_value(objective, outcome)
    constraints = {key: 0.0 for key in CONSTRAINT_KEYS}
    if floor is not None and outcome.quality is not None:
        constraints["quality_below_floor"] = round(floor - outcome.quality.score, 6)
    broken: list[str] = []
    if outcome.status == "ok":
        peak = outcome.measurement.peak_memory_gib
        constraints["over_budget_gib"] = round(peak - budget_gib, 4) if budget_gib is not None else 0.0
        if slo:
            constraints["slo_excess"] = max(slo_excess(outcome.measurement, slo), 0.0)
            broken = slo_violations(outcome.measurement, slo)
        if constraints["over_budget_gib"] > 0:
            state = "infeasible"
        elif constraints["slo_excess"] > 0:
            state = "slo_violated"
        else:
            state = "low_quality" if constraints["quality_below_floor"] > 0 else "measured"
    elif outcome.boundary is not None and outcome.status == "oom":
        # Answered by the batch-size bisection: the smallest failing probe at or below this batch.
        failed = outcome.boundary.smallest_failure_up_to(cand.batch_size)
        if failed.peak_memory_gib is not None and budget_gib is not None:
            constraints["over_budget_gib"] = round(failed.peak_memory_gib - budget_gib, 4)
        else:
            constraints["oom"] = 1.0
        state = "infeasible"
    elif outcome.predicted:
        # Answered by the memory model: the lower bound's excess is the violation.
        constraints["over_budget_gib"] = round(lower_bound - budget_gib, 4)
        state = "infeasible"
    elif inferred_from is not None:
        # Answered from a smaller shape's failure: the same constraint, at least as violated.
        constraints["oom"] = inferred_from.constraints["oom"]
        constraints["over_budget_gib"] = inferred_from.constraints["over_budget_gib"]
        state = "infeasible"
    elif outcome.status == "oom":
        constraints["oom"] = 1.0
        state = "infeasible"
    elif outcome.status == "unsupported":
        constraints["unsupported"] = 1.0
        state = "unsupported"
    else:
        state = "failed"
    if duplicate_of is not None:
        state = "duplicate"
        if duplicate_of.state == "failed":  # failed MAX_ATTEMPTS times: not deployable as far as we know
            constraints["unsupported"] = 1.0
    feasible = state in ("measured",) or (state == "duplicate" and duplicate_of.feasible)
    return Verdict(state, constraints, value, feasible, tuple(broken))


def tell(ctx: StudyContext, trial: optuna.Trial, cand: Candidate, outcome: TrialOutcome, *, spawn_s: float,
         total_s: float, duplicate_of: TrialRecord | None = None, inferred_from: TrialRecord | None = None) -> TrialRecord:
    """Apply `classify`'s verdict to Optuna: the trial's record, its constraints and value (an
    infeasible trial is COMPLETE with the worst value), or FAIL. Returns the record."""
    limits = ctx.spec.slo_limits
    if limits and outcome.measurement is not None and outcome.measurement.goodput_rps is None:
        outcome.measurement.goodput_rps = goodput(outcome.measurement, limits)  # what --objective goodput ranks, shown with --slo
    verdict = classify(outcome, cand, objective=ctx.spec.objective, budget_gib=ctx.spec.memory_budget_gib,
                       floor=quality_floor(ctx),
                       lower_bound=lower_bound_gib(ctx.shape, cand) if outcome.predicted and ctx.shape is not None else None,
                       inferred_from=inferred_from, duplicate_of=duplicate_of, slo=limits)
    state, constraints, value = verdict.state, verdict.constraints, verdict.value
    record = TrialRecord(
        number=trial.number,
        state=state,
        candidate=cand,
        outcome=outcome,
        objective_value=value,
        constraints=constraints,
        feasible=verdict.feasible,
        is_baseline=bool(trial.user_attrs.get(BASELINE_ATTR)),
        duplicate_of=duplicate_of.number if duplicate_of else None,
        spawn_s=spawn_s,
        total_s=total_s,
        finished_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        slo_violations=list(verdict.slo_violations),
        objective_values=objective_values(ctx.spec.objectives, outcome),
    )
    names = ctx.spec.all_objectives
    if len(names) == 1:
        final = value if value is not None else _placeholder(ctx.spec.objective)
    else:  # one value per objective, in the study's directions' order
        final = [record.objective_values.get(name, _placeholder(name)) if value is not None else _placeholder(name) for name in names]
    try:
        trial.set_user_attr(RECORD_ATTR, record.model_dump(mode="json"))
        if state == "failed":
            ctx.study.tell(trial, state=OptunaState.FAIL)
        else:
            for key, v in constraints.items():
                trial.set_constraint(key, v)
            ctx.study.tell(trial, final)
    except optuna.exceptions.UpdateFinishedTrialError:
        _keep_late_record(ctx, trial, record, None if state == "failed" else final)
    if ctx.heartbeat is not None:
        ctx.heartbeat.discard(trial._trial_id)
    return record


def _keep_late_record(ctx: StudyContext, trial: optuna.Trial, record: TrialRecord, value: float | list[float] | None) -> None:
    """Our trial was declared lost while we measured it (no heartbeat reached the database for
    the grace period: a network outage, a suspended process). The measurement is real: keep it
    as a trial of its own. The queued retry then finds it in the records and is not measured."""
    frozen = ctx.study._storage.get_trial(trial._trial_id)
    ctx.study.add_trial(optuna.trial.create_trial(
        state=OptunaState.FAIL if value is None else OptunaState.COMPLETE, params=frozen.params,
        **({"values": value} if isinstance(value, list) else {"value": value}),
        distributions=frozen.distributions, user_attrs={**frozen.user_attrs, RECORD_ATTR: record.model_dump(mode="json")},
        constraints=None if value is None else record.constraints))
