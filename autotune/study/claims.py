"""Shared storage: claiming a candidate before measuring it (so no two workers measure the same
one), the trials other workers measure now, failing the trials of workers that died, waiting for
the others at the end, and failing a trial that was asked but never run.
"""

from __future__ import annotations

import json
import time

import optuna
from optuna.trial import TrialState as OptunaState

from autotune.spec import Candidate
from autotune.storage import OWNER_ATTR, fail_stale
from autotune.study.context import CLAIM_ATTR, DEFERRED_ATTR, INTERRUPTED_ATTR, RECORD_ATTR, StudyContext
from autotune.study.results import _key

def _claim_key(cand: Candidate) -> str:
    return json.dumps(_key(cand))


def _rival(ctx: StudyContext, trial: optuna.Trial, cand: Candidate) -> int | None:
    """Another worker's RUNNING trial that measures this candidate now, or None. Each worker first
    writes its claim, then reads the others': of two that claim the same candidate at once at
    least one sees the other and steps back, so no candidate is ever measured twice."""
    key = _claim_key(cand)
    trial.set_user_attr(CLAIM_ATTR, key)
    for other in ctx.study.get_trials(deepcopy=False, states=(OptunaState.RUNNING,)):
        if other.number != trial.number and other.user_attrs.get(CLAIM_ATTR) == key:
            return other.number
    return None


def _in_flight_elsewhere(ctx: StudyContext) -> int:
    """Trials other workers are measuring now: they count towards --trials like finished ones."""
    return sum(1 for t in ctx.study.get_trials(deepcopy=False, states=(OptunaState.RUNNING,))
               if t.user_attrs.get(CLAIM_ATTR) and t.user_attrs.get(OWNER_ATTR) != ctx.owner)


def _fail_stale(ctx: StudyContext, note) -> None:
    """Fail (and queue again) the trials whose worker is gone, and say which."""
    for number in fail_stale(ctx.study, ctx.storage_info):
        trial = ctx.study.get_trials(deepcopy=False)[number]
        # fail_stale reports trials that stopped running meanwhile; those another worker told are not lost.
        if trial.state == OptunaState.FAIL and not (trial.user_attrs.keys() & {RECORD_ATTR, INTERRUPTED_ATTR, DEFERRED_ATTR}):
            note(f"trial #{number} lost its worker: failed, and queued again")


def _wait_for_others(ctx: StudyContext, note) -> None:
    """The confirmation and the final best.yaml need every trial: wait for the ones other
    workers still measure (a dead worker's trial turns stale and is failed meanwhile)."""
    deadline = time.monotonic() + ctx.spec.trial_timeout_s + 3 * ctx.spec.heartbeat_s
    noted = False
    while time.monotonic() < deadline:
        _fail_stale(ctx, note)
        busy = _in_flight_elsewhere(ctx)
        if not busy:
            return
        if not noted:
            note(f"waiting for {busy} trial(s) other workers are measuring")
            noted = True
        time.sleep(1.0)


def _fail_unrun(ctx: StudyContext, trial: optuna.Trial, attr: str = INTERRUPTED_ATTR, value=True) -> None:
    """A trial asked but never measured: failed without a record, so it is neither a result nor a
    measured-twice candidate, and the sampler may propose it again."""
    try:
        trial.set_user_attr(attr, value)
        ctx.study.tell(trial, state=OptunaState.FAIL)
    except optuna.exceptions.UpdateFinishedTrialError:
        pass  # already failed as lost by another worker (and queued again)
    if ctx.heartbeat is not None:
        ctx.heartbeat.discard(trial._trial_id)
