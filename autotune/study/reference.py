"""The quality reference: which load of the space is the bar the others are compared with
(highest precision that runs here and fits), measuring it once per study, the quality floor it
sets, and the names quality and boundaries are cached under per load.
"""

from __future__ import annotations

from autotune.errors import AutotuneError
from autotune.knobs import load_key_name
from autotune.space import reference_candidates as space_reference_candidates
from autotune.spec import Candidate, QualityReport
from autotune.study.context import QUALITY_CACHE_PREFIX, REFERENCE_QUALITY_ATTR, StudyContext
from autotune.worker import WorkerClient, WorkRequest

def reference_quality(ctx: StudyContext) -> QualityReport | None:
    raw = ctx.study.user_attrs.get(REFERENCE_QUALITY_ATTR)
    return QualityReport.model_validate(raw) if raw else None


def quality_floor(ctx: StudyContext) -> float | None:
    if ctx.quality is None or ctx.quality.floor_mode is None:
        return None
    if ctx.quality.floor_mode == "absolute":
        return ctx.quality.floor_value
    reference = reference_quality(ctx)
    return ctx.quality.floor_value * reference.score if reference else None


def reference_candidates(ctx: StudyContext) -> list[Candidate]:
    """Loads of the space that run here, highest precision first: quality is relative to the
    first of them that fits the budget (the knob table's `reference` picks, autotune/space.py)."""
    supported = space_reference_candidates(ctx.space, ctx.device)
    if not supported:
        raise AutotuneError("no candidate of the space can run here to serve as the quality reference; widen the space")
    return supported


def ensure_reference(ctx: StudyContext, worker: WorkerClient) -> tuple | None:
    """Measure the reference's quality once per study (before any trial), keeping reference.safetensors.
    A reference that does not fit the budget gives way to the next-highest precision. A reference
    file that does not parse (tampered, truncated, an old pickled reference.pt) counts as missing."""
    from autotune.measure.quality import reference_readable

    if ctx.quality is None or (reference_quality(ctx) and reference_readable(ctx.quality.reference_path)):
        return None
    tried = []
    for cand in reference_candidates(ctx):
        request = WorkRequest(trial_number=-1, candidate=cand, repeats=ctx.space.repeats,
                              quality=ctx.quality.request(cand, is_reference=True), measure=False)
        outcome, _ = worker.run(request, ctx.spec.trial_timeout_s)
        if outcome.status == "oom":
            tried.append(cand.label())
            continue
        if outcome.status != "ok" or outcome.quality is None:
            raise AutotuneError(f"the quality reference ({cand.label()}) could not be evaluated: {outcome.status}: "
                                f"{outcome.reason[:300]}; see {outcome.worker_log}")
        ctx.study.set_user_attr(REFERENCE_QUALITY_ATTR, outcome.quality.model_dump(mode="json"))
        ctx.study.set_user_attr("autotune.reference_candidate", cand.model_dump(mode="json"))
        ctx.study.set_user_attr(QUALITY_CACHE_PREFIX + _quality_key_name(cand), outcome.quality.model_dump(mode="json"))
        return cand.load_key
    raise AutotuneError(f"no quality reference fits the memory budget (tried {', '.join(tried)}); raise --memory-budget")


def _load_key_name(cand: Candidate) -> str:
    return load_key_name(cand)


def _quality_key_name(cand: Candidate) -> str:
    """What quality depends on: the load, and for vision models the input resolution and frames
    (fewer visual tokens can change the answer); never the batch size or max length, nor a load
    knob whose values generate the same tokens (the knob table's same_answers: the stop check)."""
    load = load_key_name(cand, quality=True)
    vision = [str(v) for v in (cand.max_pixels, cand.video_frames) if v is not None]
    return "|".join([load, *vision]) if vision else load
