"""Running one candidate in the worker: the batch-size bisection for a new load and length, the
measurement (with quality once per load and resolution), one retry in a fresh worker when a
failure contradicts the evidence, and whether the worker may keep the model.
"""

from __future__ import annotations

from autotune.spec import Candidate, QualityReport, TrialOutcome, TrialRecord
from autotune.study.context import QUALITY_CACHE_PREFIX, StudyContext
from autotune.study.reference import _quality_key_name
from autotune.study.shortcuts import _above_boundary, _bisection_applies, _boundary_key, _known_boundary, _predicted_peak, fitted_before
from autotune.worker import WorkerClient, WorkRequest
from autotune.worker.client import worker_state_suspect

def _run_candidate(ctx: StudyContext, worker: WorkerClient, number: int, cand: Candidate,
                   done: dict[tuple, TrialRecord]) -> tuple[TrialOutcome, float, bool | None]:
    """Run one candidate in the worker: first, for a new load and length, the batch-size bisection
    (a candidate above the boundary is answered by it), then the measurement with quality where
    this load and resolution have none yet. Returns the outcome, the worker spawn seconds and
    whether the worker now holds this candidate's model (None: the worker was not asked)."""
    spec = ctx.spec
    predicted_gib = _predicted_peak(ctx, cand, done)
    spawn_s, prior = 0.0, None
    boundary = _known_boundary(ctx, cand)
    if boundary is None and _bisection_applies(ctx):
        request = WorkRequest(trial_number=number, candidate=cand, repeats=ctx.space.repeats,
                              boundary_batch_sizes=list(ctx.space.batch_size))
        prior, spawn_s = worker.run(request, spec.trial_timeout_s)
        if prior.status != "ok":  # the load failed or the worker died: that is this trial's answer
            return prior, spawn_s, _keep_worker(worker, cand, prior)
        boundary = prior.boundary
        ctx.study.set_user_attr(_boundary_key(cand), boundary.model_dump(mode="json"))
    answered = _above_boundary(cand, boundary) if boundary is not None else None
    if answered is not None:
        if prior is not None:  # this trial paid for the bisection: its load and probes are its cost
            answered = answered.model_copy(update={"reloaded": prior.reloaded, "load_s": prior.load_s, "prepare_s": prior.prepare_s,
                                                   "probe_s": boundary.elapsed_s, "phase": "measure"})
        return answered, spawn_s, True if prior is not None else None
    cached = ctx.study.user_attrs.get(QUALITY_CACHE_PREFIX + _quality_key_name(cand)) if ctx.quality else None
    wants_quality = ctx.quality is not None and cached is None  # once per load-key and resolution
    request = WorkRequest(trial_number=number, candidate=cand, repeats=ctx.space.repeats,
                          quality=ctx.quality.request(cand) if wants_quality else None, workload=ctx.space.workload)
    outcome, run_spawn_s = worker.run(request, spec.trial_timeout_s)
    spawn_s += run_spawn_s
    if wants_quality and outcome.quality is not None:
        ctx.study.set_user_attr(QUALITY_CACHE_PREFIX + _quality_key_name(cand), outcome.quality.model_dump(mode="json"))
    elif cached is not None and outcome.phase not in ("load", "quality"):
        outcome = outcome.model_copy(update={"quality": QualityReport.model_validate(cached).model_copy(update={"elapsed_s": 0.0})})
    evidence = fitted_before(cand, boundary, done) if outcome.status == "oom" and outcome.phase == "measure" else None
    if evidence is None and outcome.status == "error" and outcome.phase == "measure" and run_spawn_s == 0.0:
        evidence = "the worker had run before (other candidates, or this trial's bisection)"
    if evidence is not None:
        # Memory grows with the shape, so an OOM here contradicts the evidence that it fits: what
        # ran out is memory earlier shapes left in this process (with compile, each shape's CUDA
        # graphs keep a private pool). An error in a worker that ran other candidates may come from
        # state they left (H200, 2026-11-30: after a compiled load ran out of memory, every later
        # compiled run in that process failed with a bare AssertionError). A fresh worker starts
        # from what a deployment starts from.
        worker.close()
        first = outcome
        retry = request.model_copy(update={"quality": None}) if first.quality is not None else request
        outcome, retry_spawn_s = worker.run(retry, spec.trial_timeout_s)
        spawn_s += retry_spawn_s
        what = "out of memory" if first.status == "oom" else "failed"
        outcome = outcome.model_copy(update={
            "first_attempt": f"{what} although {evidence}: {first.reason}"[:1500],
            "quality": outcome.quality or first.quality,
            "load_s": first.load_s + outcome.load_s, "prepare_s": first.prepare_s + outcome.prepare_s, "reloaded": True,
        })
    update: dict = {"predicted_peak_gib": predicted_gib}
    if prior is not None:  # the bisection loaded the model for this trial
        update.update(boundary=boundary, reloaded=prior.reloaded or outcome.reloaded, load_s=prior.load_s + outcome.load_s,
                      prepare_s=prior.prepare_s + outcome.prepare_s, probe_s=boundary.elapsed_s)
    outcome = outcome.model_copy(update=update)
    return outcome, spawn_s, _keep_worker(worker, cand, outcome)


def _keep_worker(worker: WorkerClient, cand: Candidate, outcome: TrialOutcome) -> bool:
    """Whether the worker now holds this candidate's model. It keeps it unless the load itself
    failed or the worker died; a worker whose state is suspect is closed, so the next trial
    starts a fresh one."""
    if worker_state_suspect(cand, outcome):  # every error, and a compiled OOM
        worker.close()
        return False
    return outcome.phase != "load" and outcome.status in ("ok", "oom")
