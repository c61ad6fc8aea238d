"""Answering a candidate without running it: a candidate finished before (or failed
MAX_ATTEMPTS times), one dominated by an infeasible shape of the same load, a load that failed
before, the memory model's verdict, and the batch-size boundary the bisection found. Also the
evidence that a candidate fits (fitted_before), which makes an OOM suspect.
"""

from __future__ import annotations

from autotune.knobs import MONOTONE_SHAPE_KNOBS, boundary_shape, no_larger, same_load_and_request  # noqa: F401 (MONOTONE_SHAPE_KNOBS re-exported)
from autotune.memory_model import calibrate, predicted_infeasible_reason
from autotune.spec import BatchBoundary, Candidate, TrialOutcome, TrialRecord
from autotune.study.context import BOUNDARY_PREFIX, StudyContext
from autotune.study.reference import _load_key_name
from autotune.study.results import _key

# A candidate that failed this many times is not run again: a later proposal is answered from its
# last failure. Once is worth repeating (a crash can be a fluke); endlessly is not: a grid sampler
# proposes a failed point until it completes (H200, 2026-11-30: 98 failed trials of 19 points).
MAX_ATTEMPTS = 2


def _finished_by_params(recs: list[TrialRecord]) -> dict[tuple, TrialRecord]:
    done, failures = {}, {}
    for r in recs:
        if r.state in ("measured", "infeasible", "slo_violated", "low_quality", "unsupported"):
            done.setdefault(_key(r.candidate), r)
        elif r.state == "failed":
            failures.setdefault(_key(r.candidate), []).append(r)
    for key, failed in failures.items():
        if key not in done and len(failed) >= MAX_ATTEMPTS:
            done[key] = failed[-1]
    return done


def dominating_infeasible(cand: Candidate, done: dict[tuple, TrialRecord]) -> TrialRecord | None:
    """A measured infeasible trial with the same load-key, new tokens and request sizes whose
    batch size, max length, pixel bound, images and frames are all no larger than this
    candidate's. Memory grows with each, so this candidate cannot fit either: it is answered
    without loading or running anything."""
    for r in done.values():
        if (r.state == "infeasible" and not _answered_without_measuring(r.outcome) and _same_load_and_request(r.candidate, cand)
                and _no_larger(r.candidate, cand)):
            return r
    return None


def _same_load_and_request(a: Candidate, b: Candidate) -> bool:
    """Same model load and request sizes: their memory differs only by the monotone shape knobs."""
    return same_load_and_request(a, b)


def _no_larger(a: Candidate, b: Candidate) -> bool:
    """Every shape knob of `a` that memory grows with is at most `b`'s."""
    return no_larger(a, b)


def failed_load(cand: Candidate, done: dict[tuple, TrialRecord]) -> TrialRecord | None:
    """A trial whose model load itself failed as unsupported, with this candidate's load-key: the
    load does not depend on the batch or length, so this candidate cannot load either (e.g. a
    compiled bnb model). Only a load that really ran is evidence; answers inferred from it are
    not. An out-of-memory load is not used: it may be memory the worker's earlier model left."""
    for r in done.values():
        if (r.candidate.load_key == cand.load_key and r.outcome.phase == "load" and r.outcome.status == "unsupported"
                and not _answered_without_measuring(r.outcome)):
            return r
    return None


def _failed_load_outcome(source: TrialRecord) -> TrialOutcome:
    return TrialOutcome(status=source.outcome.status, phase="load", inferred_from=source.number,
                        reason=f"inferred: trial #{source.number} could not load the same configuration: {source.outcome.reason}"[:1500])


def fitted_before(cand: Candidate, boundary: BatchBoundary | None, done: dict[tuple, TrialRecord]) -> str | None:
    """Evidence that this candidate fits, if any: a bisection probe at its load and length that
    fitted a batch no smaller, or a measured trial with the same load-key and request sizes and a
    shape no smaller. Returns it in words."""
    fitted = [p.batch_size for p in boundary.probes if p.fits and p.batch_size >= cand.batch_size] if boundary else []
    if fitted:
        return f"the bisection fitted batch {min(fitted)} × {cand.max_length} tokens with the same load"
    for r in done.values():
        if r.state == "measured" and _same_load_and_request(r.candidate, cand) and _no_larger(cand, r.candidate):
            return f"trial #{r.number} measured batch {r.candidate.batch_size} × {r.candidate.max_length} tokens with the same load"
    return None


def _answered_without_measuring(outcome: TrialOutcome) -> bool:
    return outcome.inferred_from is not None or outcome.predicted or (outcome.boundary is not None and outcome.status == "oom")


def _predicted_over_budget(ctx: StudyContext, cand: Candidate) -> str | None:
    """The memory model's verdict before anything is loaded: a reason if the candidate's weights
    and KV cache alone exceed the budget by a clear margin."""
    if ctx.shape is None or ctx.spec.memory_budget_gib is None or not ctx.spec.memory_model:
        return None
    return predicted_infeasible_reason(ctx.shape, cand, ctx.spec.memory_budget_gib)


def _predicted_peak(ctx: StudyContext, cand: Candidate, done: dict[tuple, TrialRecord]) -> float | None:
    """The peak the memory model expects, calibrated on every trial measured so far (made before
    the trial runs, so comparing it with the measurement afterwards is an honest error)."""
    if ctx.shape is None:
        return None
    measured = [(r.candidate, r.outcome.measurement.peak_memory_gib) for r in done.values()
                if r.outcome.status == "ok" and r.outcome.measurement is not None]
    return round(calibrate(ctx.shape, measured, ctx.device.type).predict_gib(ctx.shape, cand), 4)


def _boundary_key(cand: Candidate) -> str:
    """Everything but the batch size: the boundary found for one holds for all batch sizes of it."""
    return BOUNDARY_PREFIX + "|".join(str(part) for part in (_load_key_name(cand), *boundary_shape(cand)))


def _bisection_applies(ctx: StudyContext) -> bool:
    """Probing for the largest batch needs a limit that fails cleanly: the budget (or the GPU's own
    memory); on CPU without a budget a too-large batch would meet the kernel's OOM killer."""
    return (ctx.spec.bisect and len(ctx.space.batch_size) >= 3
            and (ctx.spec.memory_budget_gib is not None or ctx.device.type == "cuda"))


def _known_boundary(ctx: StudyContext, cand: Candidate) -> BatchBoundary | None:
    raw = ctx.study.user_attrs.get(_boundary_key(cand))
    return BatchBoundary.model_validate(raw) if raw else None


def _above_boundary(cand: Candidate, boundary: BatchBoundary) -> TrialOutcome | None:
    """An infeasible answer for a batch larger than the largest that fits; None if it may fit."""
    largest = boundary.largest_feasible
    if largest is not None and cand.batch_size <= largest:
        return None
    failed = boundary.smallest_failure_up_to(cand.batch_size)
    if failed is None:  # above the largest probed size that fits, but no failure at or below it
        return None
    found = f"batch {largest} is the largest that fits" if largest is not None else "not even the smallest batch fits"
    return TrialOutcome(status="oom", boundary=boundary,
                        reason=f"bisection: batch {failed.batch_size} does not fit ({failed.reason}); {found} at "
                               f"{cand.max_length} tokens with this load")


def _inferred_outcome(cand: Candidate, source: TrialRecord) -> TrialOutcome:
    other = source.candidate
    why = "ran out of memory" if source.outcome.status == "oom" else "went over the memory budget"
    return TrialOutcome(status="oom", inferred_from=source.number,
                        reason=f"inferred: trial #{source.number} {why} at batch {other.batch_size} × {other.max_length} tokens "
                               f"with the same load{' and no larger images/frames' if other.has_images else ''}; "
                               f"batch {cand.batch_size} × {cand.max_length} needs at least as much")
