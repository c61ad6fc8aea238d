"""The Optuna study: create or resume, enqueue the baseline, run trials through the worker, turn
outcomes into trial states and constraints (in exactly one place: `_tell`), and keep trials.jsonl
and best.yaml up to date after every trial so an interrupted study loses at most the trial in
flight.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import optuna
import yaml
from optuna.trial import TrialState as OptunaState

from autotune.confirm import confirm_study, confirmed_best, stored_confirmation
from autotune.dtypes import dtype_from_torch_name
from autotune.errors import AutotuneError, OutputDirError, SpaceError, StudyMismatchError
# MONOTONE_SHAPE_KNOBS stays importable from here (the shortcut's knobs, a view of the knob table).
from autotune.knobs import MONOTONE_SHAPE_KNOBS, boundary_shape, load_key_name, no_larger, same_load_and_request  # noqa: F401
from autotune.loading import generate_kwargs
from autotune.memory_model import ModelShape, calibrate, lower_bound_gib, predicted_infeasible_reason
from autotune.models import ModelRef, resolve_model
from autotune.samplers import create_sampler
from autotune.space import (
    baseline_params,
    default_space_path,
    load_space,
    space_digest,
    suggest,
    unsupported_reason,
)
from autotune.space import reference_candidates as space_reference_candidates
from autotune.storage import OWNER_ATTR, Heartbeat, StorageInfo, describe, fail_stale, open_storage, owner, redact
from autotune.spec import (
    LOAD_KEY_KNOBS,
    BaselineSummary,
    BatchBoundary,
    Candidate,
    Confirmation,
    DeploymentConfig,
    Fingerprint,
    QualityReport,
    SearchSpace,
    TrialOutcome,
    TrialRecord,
    TuneSpec,
    parse_min_quality,
)
from autotune.system import DeviceInfo, check_budget, detect_device, fingerprint
from autotune.worker import WorkerClient, WorkRequest
from autotune.worker.client import worker_state_suspect
from autotune.worker.protocol import QualityRequest

RECORD_ATTR = "autotune.record"
BASELINE_ATTR = "autotune.baseline"
INTERRUPTED_ATTR = "autotune.interrupted"
REFERENCE_QUALITY_ATTR = "autotune.reference_quality"
QUALITY_CACHE_PREFIX = "autotune.quality:"
BOUNDARY_PREFIX = "autotune.boundary:"
SPEC_ATTR = "autotune.spec"  # what `autotune worker` joins with: the spec and the space, not files
SPACE_ATTR = "autotune.space"
FINGERPRINT_ATTR = "autotune.fingerprint"
CLAIM_ATTR = "autotune.claim"  # the candidate a RUNNING trial measures now (shared storage)
DEFERRED_ATTR = "autotune.deferred"
IDENTITY_ATTRS = ("model", "space_digest", "objective", "device_name", "quality")
CONSTRAINT_KEYS = ("oom", "unsupported", "over_budget_gib", "quality_below_floor")
BUNDLED_TEXT_SET = Path(__file__).parent / "data" / "bundled" / "text.jsonl"
BUNDLED_RERANK_SET = Path(__file__).parent / "data" / "bundled" / "rerank.jsonl"
MAX_CONSECUTIVE_DUPLICATES = 200
# A model load costs seconds to minutes (bnb int8 of a 7B: ~15 s), a trial at a new batch/length
# only seconds. After each load the sampler is asked for this many more trials that keep the
# load-key fixed (Optuna samples the remaining knobs), so every load serves several trials.
TRIALS_PER_LOAD = 3

optuna.logging.set_verbosity(optuna.logging.WARNING)


class ProgressSink(Protocol):
    def trial_started(self, done: int, total: int, candidate: Candidate) -> None: ...
    def trial_finished(self, record: TrialRecord, done: int, total: int) -> None: ...
    def note(self, text: str) -> None: ...


class _Silent:
    def trial_started(self, done: int, total: int, candidate: Candidate) -> None:
        pass

    def trial_finished(self, record: TrialRecord, done: int, total: int) -> None:
        pass

    def note(self, text: str) -> None:
        pass


@dataclass(frozen=True)
class QualitySetup:
    data_path: Path
    metric: str
    floor_mode: str | None  # "relative" | "absolute" | None (measured, not constrained)
    floor_value: float | None
    reference_path: Path
    max_examples: int | None

    def request(self, candidate: Candidate, is_reference: bool = False) -> QualityRequest:
        """Quality at the candidate's load and input resolution (the batch size does not change it)."""
        return QualityRequest(data_path=str(self.data_path), metric=self.metric, reference_path=str(self.reference_path),
                              is_reference=is_reference, max_examples=self.max_examples,
                              max_pixels=candidate.max_pixels, video_frames=candidate.video_frames)


@dataclass
class StudyContext:
    spec: TuneSpec
    device: DeviceInfo
    space: SearchSpace
    model: ModelRef
    study: optuna.Study
    storage_url: str
    study_name: str
    out: Path
    fingerprint: Fingerprint
    quality: QualitySetup | None = None
    stopped_reason: str = ""
    new_trials: list[int] = field(default_factory=list)
    shape: ModelShape | None = None  # for the memory model; None where its formula does not apply
    storage_info: StorageInfo | None = None
    role: str = "tune"  # "tune" confirms and waits for the others at the end; "worker" only measures
    placement: object | None = None  # autotune.worker.placement.GpuPlacement under --gpus
    worker_tag: str = ""  # sub-directory of <out>/workers for this process's worker logs
    heartbeat: Heartbeat | None = None
    owner: dict = field(default_factory=owner)

    @property
    def shared(self) -> bool:
        return self.storage_info is not None and self.storage_info.shared


# ------------------------------------------------------------------------------ setup


def prepare_out_dir(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=out, prefix=".write-test-", delete=True)
        probe.close()
    except OSError as e:
        raise OutputDirError(f"output directory {out} is not writable ({e.strerror}); pass --out to a writable directory") from e


def default_study_name(model: ModelRef, device: DeviceInfo) -> str:
    # The same checkpoint as a reranker is another workload: another study, not an identity clash.
    kind = "-reranker" if model.model_kind == "reranker" and "reranker" not in model.name.lower() else ""
    return f"{model.name}{kind}-{device.type}"


def model_default_dtype(model: ModelRef) -> str | None:
    """The dtype a plain from_pretrained would give: the checkpoint's own."""
    path = Path(model.source)
    config = path if path.suffix == ".json" else path / "config.json"
    try:
        data = json.loads(config.read_text())
    except (OSError, ValueError):
        return None
    text = data.get("text_config") or {}  # Qwen3-VL keeps its dtype only there
    name = str(data.get("dtype") or data.get("torch_dtype") or text.get("dtype") or text.get("torch_dtype") or "")
    return dtype_from_torch_name(name)


def _identity(model: ModelRef, space: SearchSpace, spec: TuneSpec, device: DeviceInfo, quality: QualitySetup | None) -> dict[str, str]:
    return {
        "model": model.model_dump_json(),
        "space_digest": space_digest(space),
        "objective": spec.objective,
        "device_name": device.name,
        # Changing the data, metric or floor changes every trial's constraint: a new study.
        "quality": json.dumps([str(quality.data_path.resolve()), quality.metric, spec.min_quality, quality.max_examples])
        if quality else "",
    }


def default_validation_set(model: ModelRef, space: SearchSpace | None) -> Path:
    """The bundled set that fits the model: text prompts, text reranking, image questions (video
    clips when the space's requests carry video and no images), or image reranking."""
    from autotune.data.synthetic_images import bundled_image_rerank_set, bundled_video_set, bundled_vision_set

    reranker = model.model_kind == "reranker"
    if not model.is_vision:
        return BUNDLED_RERANK_SET if reranker else BUNDLED_TEXT_SET
    if reranker:
        return bundled_image_rerank_set()
    video_only = space is not None and any(space.video_frames or []) and not any(space.images_per_prompt or [])
    return bundled_video_set() if video_only else bundled_vision_set()


def setup_quality(spec: TuneSpec, model: ModelRef, out: Path, space: SearchSpace | None = None) -> QualitySetup | None:
    """Validate the validation set and the metric before any study file is touched."""
    from autotune.data import load_validation_set
    from autotune.data.schema import check_images_per_request, check_video_frames
    from autotune.measure.metrics import get_metric

    if not spec.quality_enabled:
        return None
    reranker = model.model_kind == "reranker"
    data_path = spec.data or default_validation_set(model, space)
    examples = load_validation_set(data_path)[: spec.quality_examples]  # the data's own errors come first
    if not model.is_vision and any(e.images or e.video or e.document_type == "image" for e in examples):
        raise AutotuneError(f"{data_path} has images or video, which {model.name} (a text-only model) cannot read; "
                            "use a text validation set or a vision-language model")
    if space is not None and any(e.images for e in examples):
        check_images_per_request(Path(data_path), examples, space.images_per_prompt)
    if space is not None and any(e.video for e in examples):
        check_video_frames(Path(data_path), examples, space.video_frames)
    if model.kind == "random":
        raise AutotuneError("quality needs real weights and a tokenizer, which --random-weights models lack; "
                            "drop --data/--min-quality/--quality-metric or use a real checkpoint")
    labelled = all(e.labelled for e in examples)
    if reranker:
        if any(e.kind != "rerank" for e in examples):
            raise AutotuneError(f"{data_path} holds prompt examples; a reranker is scored on query/documents/relevance lines "
                                "(e.g. the bundled rerank set: drop --data)")
        metric = get_metric(spec.quality_metric or ("ndcg@10" if labelled else "top1_agreement"))
        if metric.task not in ("rerank", "fidelity"):
            raise AutotuneError(f"--quality-metric {metric.name} scores generated text; a reranker needs ndcg@10, mrr "
                                "or top1_agreement")
    elif any(e.kind == "rerank" for e in examples):
        raise AutotuneError(f"{data_path} holds reranking examples, which need a reranker model (--kind reranker); "
                            "use a prompt/answer set")
    else:
        metric = get_metric(spec.quality_metric or ("contains" if labelled else "top1_agreement"))
    if not reranker and metric.task == "rerank":
        raise AutotuneError(f"--quality-metric {metric.name} scores reranking; a causal LM needs contains, exact_match, "
                            "token_f1, choice_accuracy or top1_agreement")
    if metric.needs_labels and not labelled:
        missing = sum(1 for e in examples if not e.labelled)
        raise AutotuneError(f"--quality-metric {metric.name} needs labels, but {missing} of {len(examples)} examples in "
                            f"{data_path} have no 'answer'/'answers'; add them or use --quality-metric top1_agreement")
    mode, value = parse_min_quality(spec.min_quality) if spec.min_quality else (None, None)
    return QualitySetup(Path(data_path), metric.name, mode, value, out / "reference.pt", spec.quality_examples)


def _check_reranker_vocabulary(model: ModelRef) -> None:
    """A yes/no reranker needs both words as single tokens: checked on the tokenizer before the study."""
    from autotune.loading import load_tokenizer
    from autotune.models import materialize
    from autotune.vision import yes_no_ids

    tokenizer = load_tokenizer(model, materialize(model)) if model.kind != "random" else None
    text_config = model.config().get("text_config") or model.config()
    yes_no_ids(tokenizer, int(text_config.get("vocab_size") or 0) if model.kind == "random" else 1 << 30)


def open_study(spec: TuneSpec, space: SearchSpace | None = None, join: bool = False) -> StudyContext:
    """Validate everything the user gave before touching any study file, then create or resume.
    `join`: an `autotune worker` joining a study that exists, with the space it was created with."""
    device = detect_device(spec.device)
    check_budget(device, spec.memory_budget_gib)
    space = space or load_space(spec.space or default_space_path(device))
    model = resolve_model(spec.model, spec.random_weights, spec.kind)
    if space.vision_knobs_set and not model.is_vision:
        raise SpaceError(
            f"search space sets vision knobs ({', '.join(space.vision_knobs_set)}) but {model.name} is a text-only model "
            "(no vision_config); remove them or pass a vision model"
        )
    if model.model_kind == "reranker":
        _check_reranker_vocabulary(model)
    quality = setup_quality(spec, model, spec.out, space)
    prepare_out_dir(spec.out)
    storage_url = spec.storage or f"sqlite:///{(spec.out / 'study.db').resolve()}"
    info = describe(storage_url, spec.heartbeat_s)
    study_name = spec.study or default_study_name(model, device)
    direction = "maximize" if spec.objective == "throughput" else "minimize"
    identity = _identity(model, space, spec, device, quality)

    storage = open_storage(storage_url, spec.heartbeat_s)
    existing = {s.study_name: s for s in optuna.get_all_study_summaries(storage, include_best_trial=False)}
    if join and study_name not in existing:
        raise StudyMismatchError(f"study {study_name!r} does not exist in {redact(storage_url)}; start it with "
                                 f"autotune tune --storage URL --study {study_name}")
    if study_name in existing:
        attrs = existing[study_name].user_attrs
        for key in IDENTITY_ATTRS:
            if key in attrs and not _same_identity(key, attrs[key], identity[key]):
                # The device name is the hardware: trials of two GPU models never meet in one best config.
                what = f"GPU model ({attrs[key]}; this machine: {identity[key]})" if key == "device_name" else key.replace("_", " ")
                raise StudyMismatchError(
                    f"study {study_name!r} in {redact(storage_url)} exists with a different {what}; "
                    f"pass a new --study name or --out directory (nothing was changed)"
                )
    sampler = create_sampler(spec.sampler, spec.seed, space)  # not stored: a resumed study may use another
    study = optuna.create_study(storage=storage, study_name=study_name, direction=direction, sampler=sampler, load_if_exists=True)
    if study_name not in existing:
        for key, value in identity.items():
            study.set_user_attr(key, value)
        # Everything a worker on another host needs to join: the spec with absolute paths, the space itself.
        stored = spec.model_copy(update={"data": spec.data.resolve() if spec.data else None, "space": None})
        study.set_user_attr(SPEC_ATTR, stored.model_dump(mode="json"))
        study.set_user_attr(SPACE_ATTR, space.model_dump(mode="json"))
        study.set_user_attr(FINGERPRINT_ATTR, fingerprint(device).model_dump(mode="json"))
        study.enqueue_trial(baseline_params(space, device, model_default_dtype(model)), user_attrs={BASELINE_ATTR: True})
    # Taken once per run: best.yaml is rewritten after every trial and the machine does not change.
    ctx = StudyContext(spec, device, space, model, study, redact(storage_url), study_name, spec.out, fingerprint(device), quality,
                       shape=ModelShape.from_config(model.config()), storage_info=info)
    if info.shared:  # best.yaml names the machine that measured the best trial, whichever it was
        study.set_user_attr(FINGERPRINT_ATTR + ":" + ctx.owner["host"], ctx.fingerprint.model_dump(mode="json"))
    if spec.storage is None:
        _fail_interrupted_trials(ctx)
    return ctx


def _same_identity(key: str, stored: str, ours: str) -> bool:
    if key != "model" or stored == ours:
        return stored == ours
    # The same model at another path (another host, another install): a random-weights model is
    # its config's sha256, the rest their name, kind and source.
    try:
        a, b = ModelRef.model_validate_json(stored), ModelRef.model_validate_json(ours)
    except ValueError:
        return False
    if a.kind == "random":
        return (a.kind, a.name, a.config_sha256, a.model_kind) == (b.kind, b.name, b.config_sha256, b.model_kind)
    return a == b


def join_study(storage_url: str, study_name: str, device: str | None, out: Path, trial_timeout_s: float | None = None,
               gpus: list[int] | None = None) -> StudyContext:
    """`autotune worker`: take the spec and the space from the study itself (a worker on another
    host has neither file), on this machine's device, writing its logs under `out`."""
    from autotune.models import relocate

    attrs = _stored_attrs(open_storage(storage_url), storage_url, study_name)
    stored_model = ModelRef.model_validate_json(attrs["model"])
    here = relocate(stored_model)  # the model on this machine, or a one-line error naming the fix
    update = {"device": device, "out": out, "storage": storage_url, "study": study_name, "gpus": gpus,
              "model": here.source or None}  # the embedded default has no source: None selects it
    if trial_timeout_s is not None:
        update["trial_timeout_s"] = trial_timeout_s
    spec = TuneSpec.model_validate({**attrs[SPEC_ATTR], **{k: v for k, v in update.items()}})
    return open_study(spec, SearchSpace.model_validate(attrs[SPACE_ATTR]), join=True)


def _stored_attrs(storage, storage_url: str, study_name: str) -> dict:
    """The user attributes of a study that `autotune tune` created on shared storage, or a one-line error."""
    summaries = {s.study_name: s for s in optuna.get_all_study_summaries(storage, include_best_trial=False)}
    if study_name not in summaries:
        names = ", ".join(sorted(summaries)) or "none"
        raise StudyMismatchError(f"study {study_name!r} does not exist in {redact(storage_url)} (studies there: {names}); "
                                 f"start it with autotune tune --storage URL --study {study_name}, or pass one of those")
    attrs = summaries[study_name].user_attrs
    if SPEC_ATTR not in attrs or SPACE_ATTR not in attrs:
        raise StudyMismatchError(f"study {study_name!r} was created by an older autotune that did not store its spec; "
                                 "resume it with autotune tune, and show it from its output directory")
    return attrs


def _fail_interrupted_trials(ctx: StudyContext) -> None:
    """A RUNNING trial in our own SQLite file belongs to a run that was killed: nothing else can
    be measuring it. Mark it failed so resuming measures it again (it was never recorded)."""
    storage = ctx.study._storage
    for trial in ctx.study.get_trials(deepcopy=False, states=(OptunaState.RUNNING,)):
        storage.set_trial_user_attr(trial._trial_id, INTERRUPTED_ATTR, True)
        storage.set_trial_state_values(trial._trial_id, OptunaState.FAIL)


# ------------------------------------------------------------------------------ records


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
    first of them that fits the budget (picked as the knob table says, space.reference_candidates)."""
    supported = space_reference_candidates(ctx.space, ctx.device)
    if not supported:
        raise AutotuneError("no candidate of the space can run here to serve as the quality reference; widen the space")
    return supported


def ensure_reference(ctx: StudyContext, worker: WorkerClient) -> tuple | None:
    """Measure the reference's quality once per study (before any trial), keeping reference.pt.
    A reference that does not fit the budget gives way to the next-highest precision."""
    if ctx.quality is None or (reference_quality(ctx) and ctx.quality.reference_path.is_file()):
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
    # One GPU leaves the name as it was before multi-GPU candidates existed: resumed studies keep
    # their cached quality and boundaries (knobs added later are left out at their default).
    return load_key_name(cand)


def _quality_key_name(cand: Candidate) -> str:
    """What quality depends on: the load, and for vision models the input resolution and frames
    (fewer visual tokens can change the answer); never the batch size or max length."""
    vision = [str(v) for v in (cand.max_pixels, cand.video_frames) if v is not None]
    return "|".join([_load_key_name(cand), *vision]) if vision else _load_key_name(cand)


def _tell(ctx: StudyContext, trial: optuna.Trial, cand: Candidate, outcome: TrialOutcome, *, spawn_s: float,
          total_s: float, duplicate_of: TrialRecord | None = None, inferred_from: TrialRecord | None = None) -> TrialRecord:
    """The single place where a worker outcome becomes an Optuna state, value and constraints."""
    budget = ctx.spec.memory_budget_gib
    value = objective_value(ctx.spec.objective, outcome)
    constraints = {key: 0.0 for key in CONSTRAINT_KEYS}
    floor = quality_floor(ctx)
    if floor is not None and outcome.quality is not None:
        constraints["quality_below_floor"] = round(floor - outcome.quality.score, 6)
    if outcome.status == "ok":
        peak = outcome.measurement.peak_memory_gib
        constraints["over_budget_gib"] = round(peak - budget, 4) if budget is not None else 0.0
        if constraints["over_budget_gib"] > 0:
            state = "infeasible"
        else:
            state = "low_quality" if constraints["quality_below_floor"] > 0 else "measured"
    elif outcome.boundary is not None and outcome.status == "oom":
        # Answered by the batch-size bisection: the smallest failing probe at or below this batch.
        failed = outcome.boundary.smallest_failure_up_to(cand.batch_size)
        if failed.peak_memory_gib is not None and budget is not None:
            constraints["over_budget_gib"] = round(failed.peak_memory_gib - budget, 4)
        else:
            constraints["oom"] = 1.0
        state = "infeasible"
    elif outcome.predicted:
        # Answered by the memory model: the lower bound's excess is the violation.
        constraints["over_budget_gib"] = round(lower_bound_gib(ctx.shape, cand) - budget, 4)
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
    record = TrialRecord(
        number=trial.number,
        state=state,
        candidate=cand,
        outcome=outcome,
        objective_value=value,
        constraints=constraints,
        feasible=state in ("measured",) or (state == "duplicate" and duplicate_of.feasible),
        is_baseline=bool(trial.user_attrs.get(BASELINE_ATTR)),
        duplicate_of=duplicate_of.number if duplicate_of else None,
        spawn_s=spawn_s,
        total_s=total_s,
        finished_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    )
    final = value if value is not None else _placeholder(ctx.spec.objective)
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


def _keep_late_record(ctx: StudyContext, trial: optuna.Trial, record: TrialRecord, value: float | None) -> None:
    """Our trial was declared lost while we measured it (no heartbeat reached the database for
    the grace period: a network outage, a suspended process). The measurement is real: keep it
    as a trial of its own. The queued retry then finds it in the records and is not measured."""
    frozen = ctx.study._storage.get_trial(trial._trial_id)
    ctx.study.add_trial(optuna.trial.create_trial(
        state=OptunaState.FAIL if value is None else OptunaState.COMPLETE, value=value, params=frozen.params,
        distributions=frozen.distributions, user_attrs={**frozen.user_attrs, RECORD_ATTR: record.model_dump(mode="json")},
        constraints=None if value is None else record.constraints))


# ------------------------------------------------------------------------------ outputs


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_trials_jsonl(out: Path, recs: list[TrialRecord]) -> Path:
    path = out / "trials.jsonl"
    _atomic_write(path, "".join(r.model_dump_json() + "\n" for r in recs))
    return path


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


def build_deployment(ctx: StudyContext, best: TrialRecord, base: TrialRecord | None,
                     confirmation: Confirmation | None = None) -> DeploymentConfig:
    return DeploymentConfig(
        model=ctx.model,
        device=ctx.device.device,
        settings=best.candidate,
        generate_kwargs=generate_kwargs(best.candidate),
        measured=best.outcome.measurement,
        objective=ctx.spec.objective,
        objective_value=best.objective_value,
        speedup_vs_baseline=speedup(ctx.spec.objective, best, base),
        baseline=BaselineSummary(trial_number=base.number, candidate=base.candidate, objective_value=base.objective_value) if base else None,
        memory_budget_gib=ctx.spec.memory_budget_gib,
        quality=best.outcome.quality,
        min_quality=ctx.spec.min_quality,
        confirmation=confirmation,
        fingerprint=_measured_on(ctx, best.number),
        study_name=ctx.study_name,
        storage=ctx.storage_url,
        trial_number=best.number,
        created_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    )


def _measured_on(ctx: StudyContext, number: int) -> Fingerprint:
    """The fingerprint of the host whose worker measured trial `number` (shared storage), else ours."""
    if not ctx.shared:
        return ctx.fingerprint
    who = ctx.study.get_trials(deepcopy=False)[number].user_attrs.get(OWNER_ATTR) or {}
    raw = ctx.study.user_attrs.get(FINGERPRINT_ATTR + ":" + str(who.get("host")))
    return Fingerprint.model_validate(raw) if raw else ctx.fingerprint


def open_stored(storage_url: str, study_name: str, out: Path) -> StudyContext:
    """A study as stored, for writing its outputs on any machine (`autotune show --storage`):
    no device, model or data is needed, only the storage."""
    storage = open_storage(storage_url)
    attrs = _stored_attrs(storage, storage_url, study_name)
    spec = TuneSpec.model_validate({**attrs[SPEC_ATTR], "out": out, "storage": storage_url, "study": study_name})
    fp = Fingerprint.model_validate(attrs[FINGERPRINT_ATTR])  # the machine that created the study
    device = DeviceInfo(fp.device, fp.device.split(":")[0], fp.device_name, fp.device_memory_gib, True)
    study = optuna.load_study(study_name=study_name, storage=storage)
    return StudyContext(spec, device, SearchSpace.model_validate(attrs[SPACE_ATTR]), ModelRef.model_validate_json(attrs["model"]),
                        study, redact(storage_url), study_name, out, fp, storage_info=describe(storage_url, spec.heartbeat_s))


def write_outputs(ctx: StudyContext, report: bool = True) -> tuple[list[TrialRecord], DeploymentConfig | None]:
    """trials.jsonl and best.yaml (after every trial: an interruption loses nothing), and
    report.html when `report` (at the end: it costs 0.1-0.2 s, which per trial is study time)."""
    recs = records(ctx.study)
    write_trials_jsonl(ctx.out, recs)
    best = best_record(recs, ctx.spec.objective)
    config = None
    if best is not None:
        best, confirmation = confirmed_best(ctx, recs, best)  # the confirmation's winner, if it covers today's top k
        config = build_deployment(ctx, best, baseline_record(recs), confirmation)
        _atomic_write(ctx.out / "best.yaml", yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
    if report:
        from autotune.report_html import write_report_or_warn  # lazy: plotly loads only when a report is written

        write_report_or_warn(ctx.out, recs, ctx.study, ctx.spec.objective, config)  # a failure warns, never loses the files above
    return recs, config


# ------------------------------------------------------------------------------ the loop


# A candidate that failed this many times is not run again: a later proposal is answered from its
# last failure. Once is worth repeating (a crash can be a fluke); endlessly is not: a grid sampler
# proposes a failed point until it completes (H200, 2026-11-30: 98 failed trials of 19 points).
MAX_ATTEMPTS = 2


def _finished_by_params(recs: list[TrialRecord]) -> dict[tuple, TrialRecord]:
    done, failures = {}, {}
    for r in recs:
        if r.state in ("measured", "infeasible", "low_quality", "unsupported"):
            done.setdefault(_key(r.candidate), r)
        elif r.state == "failed":
            failures.setdefault(_key(r.candidate), []).append(r)
    for key, failed in failures.items():
        if key not in done and len(failed) >= MAX_ATTEMPTS:
            done[key] = failed[-1]
    return done


def _key(cand: Candidate) -> tuple:
    return tuple(sorted(cand.model_dump().items()))


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
                          quality=ctx.quality.request(cand) if wants_quality else None)
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


def _inferred_outcome(cand: Candidate, source: TrialRecord) -> TrialOutcome:
    other = source.candidate
    why = "ran out of memory" if source.outcome.status == "oom" else "went over the memory budget"
    return TrialOutcome(status="oom", inferred_from=source.number,
                        reason=f"inferred: trial #{source.number} {why} at batch {other.batch_size} × {other.max_length} tokens "
                               f"with the same load{' and no larger images/frames' if other.has_images else ''}; "
                               f"batch {cand.batch_size} × {cand.max_length} needs at least as much")


def _order_for_loaded_model(batch: list[tuple[optuna.Trial, Candidate]], loaded_key: tuple | None):
    """Run the candidates that reuse the loaded model first, then the rest grouped by load-key
    (in the sampler's order): a reload costs seconds to minutes, a trial only seconds."""
    first_seen: dict[tuple, int] = {}
    for i, (_, cand) in enumerate(batch):
        first_seen.setdefault(cand.load_key, i)
    return sorted(batch, key=lambda tc: (tc[1].load_key != loaded_key, first_seen[tc[1].load_key]))


def _ask(ctx: StudyContext) -> optuna.Trial:
    """Ask the sampler; on shared storage, record who holds the trial and start beating for it
    (asked trials wait in `pending` before they run: they must not look dead meanwhile)."""
    trial = ctx.study.ask()
    if ctx.shared:
        trial.set_user_attr(OWNER_ATTR, ctx.owner)
        if trial.user_attrs.get(CLAIM_ATTR):  # a retried trial carries its dead worker's claim
            trial.set_user_attr(CLAIM_ATTR, None)
        if ctx.heartbeat is not None:
            ctx.heartbeat.add(trial._trial_id)
    return trial


def _ask_fixed(ctx: StudyContext, params: dict, follow_ups: set[int]) -> tuple[optuna.Trial, Candidate]:
    """Ask for a trial with these knobs fixed (the sampler chooses the rest). On shared storage
    another worker may take the enqueued trial first; then this one is an ordinary sampled trial."""
    ctx.study.enqueue_trial(params)
    trial = _ask(ctx)
    follow_ups.add(trial.number)
    return trial, suggest(trial, ctx.space)


def _ask_follow_up(ctx: StudyContext, load_key: tuple, follow_ups: set[int]) -> tuple[optuna.Trial, Candidate]:
    """A shape with the load-key fixed (the sampler still chooses batch and length)."""
    return _ask_fixed(ctx, {k: v for k, v in zip(LOAD_KEY_KNOBS, load_key) if k in ctx.space.knobs}, follow_ups)


def _ask_at_boundary(ctx: StudyContext, cand: Candidate, batch_size: int, follow_ups: set[int]) -> tuple[optuna.Trial, Candidate]:
    """This candidate at another batch size (every other knob fixed)."""
    return _ask_fixed(ctx, {**{k: getattr(cand, k) for k in ctx.space.knobs}, "batch_size": batch_size}, follow_ups)


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


def _stop_reason(ctx: StudyContext, done: dict, started: float, duplicates_in_a_row: int) -> str:
    if len(done) >= ctx.space.size:
        return f"all {ctx.space.size} candidates of the space are answered"
    if ctx.spec.timeout_s is not None and time.monotonic() - started > ctx.spec.timeout_s:
        return f"--timeout {ctx.spec.timeout_s:.0f}s reached"
    if duplicates_in_a_row >= MAX_CONSECUTIVE_DUPLICATES:
        return "the sampler keeps proposing measured candidates; the space is effectively exhausted"
    return ""


def expected_trial_s(durations: list[tuple[bool, float]], reload: bool) -> float | None:
    """How long a trial is likely to take: the median of this run's trials that ran in the worker
    with the same need to load a model (a load and its bisection cost far more than a trial on the
    loaded model). None without such a trial yet."""
    same = [seconds for reloaded, seconds in durations if reloaded == reload]
    return statistics.median(same) if same else None


def _too_late_for(ctx: StudyContext, cand: Candidate, loaded_key: tuple | None, started: float,
                  durations: list[tuple[bool, float]]) -> str:
    """Why the next trial should not start: --timeout would pass before it is likely to finish. A
    trial is never cut once running, so without this a study overran --timeout by a whole trial
    (a model load, a compile) - 21% over a 78 s budget on the H200 (BENCHMARKS §8)."""
    if ctx.spec.timeout_s is None:
        return ""
    left = ctx.spec.timeout_s - (time.monotonic() - started)
    expected = expected_trial_s(durations, reload=cand.load_key != loaded_key)
    if expected is None or expected <= left:
        return ""
    return (f"--timeout {ctx.spec.timeout_s:.0f}s: {max(left, 0.0):.0f}s left, and the next trial ({cand.label()}"
            f"{', a model load' if cand.load_key != loaded_key else ''}) would take about {expected:.0f}s")


def _place(ctx: StudyContext, worker: WorkerClient, cand: Candidate, note) -> str | None:
    """Under --gpus: take the GPUs this candidate needs (its home GPU, plus the next ones of the
    pool for a multi-GPU candidate), waiting for the workers that hold them; None when placed,
    else why the candidate cannot run on this host."""
    placement = ctx.placement
    if placement is None:
        if cand.num_gpus > 1:
            return (f"needs {cand.num_gpus} GPUs; this worker has one device ({ctx.device.device}): run with --gpus "
                    f"listing at least {cand.num_gpus} GPUs")
        return None
    gpus = placement.gpus_for(cand.num_gpus)
    if gpus is None:
        return f"needs {cand.num_gpus} GPUs; --gpus lists {len(placement.pool)}"
    if set(gpus) != set(placement.held):
        worker.close()  # frees its GPUs before it lets go of them
        placement.release_all()
        placement.acquire(gpus, on_wait=note)
    worker.use_gpus(gpus)
    return None


def _yield_wanted_gpus(ctx: StudyContext, worker: WorkerClient) -> bool:
    """After a trial: if another worker waits for a GPU this one holds, free it (the model goes)."""
    if ctx.placement is None or not ctx.placement.wanted_by_others():
        return False
    worker.close()
    ctx.placement.release_all()
    return True


def _refresh(ctx: StudyContext) -> tuple[list[TrialRecord], dict[tuple, TrialRecord], int]:
    recs = records(ctx.study)
    counted = counted_trials(recs) + (_in_flight_elsewhere(ctx) if ctx.shared else 0)
    return recs, _finished_by_params(recs), counted


def run_study(ctx: StudyContext, progress: ProgressSink | None = None, ask_batch: int = 8) -> None:
    """Run trials until the study holds `spec.trials` counted trials, the space is exhausted, or
    the timeout passes. Trials are asked `ask_batch` at a time (TPE's constant liar keeps them
    apart) and ordered to reuse the loaded model. Ctrl-C marks the trial in flight failed.
    On shared storage every worker runs this same loop; the study is the only coordination."""
    progress = progress or _Silent()
    spec = ctx.spec
    recs, done, counted = _refresh(ctx)
    started = time.monotonic()
    duplicates_in_a_row = 0
    loaded_key: tuple | None = None
    shape_points = math.prod(len(getattr(ctx.space, k)) for k in ctx.space.knobs if k not in LOAD_KEY_KNOBS)
    pending: list[tuple[optuna.Trial, Candidate]] = []
    follow_ups: set[int] = set()  # trial numbers asked with the loaded model's load-key fixed
    replacements_left = 0  # follow-ups answered without the model (duplicate, inferred) are re-asked
    durations: list[tuple[bool, float]] = []  # (loaded a model, seconds) of the trials run in the worker
    run_log = {"started_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "owner": ctx.owner, "trials": []}
    log_dir = ctx.out / "workers" / ctx.worker_tag if ctx.worker_tag else ctx.out / "workers"
    worker = WorkerClient(ctx.model, ctx.device.device, spec.memory_budget_gib, log_dir)
    ctx.heartbeat = Heartbeat(ctx.study._storage, ctx.storage_info.heartbeat_s if ctx.shared else None)
    if ctx.placement is not None:  # the home GPU, for the quality reference and the first trials
        ctx.placement.acquire(ctx.placement.gpus_for(1), on_wait=progress.note)
        worker.use_gpus(ctx.placement.gpus_for(1))
    try:
        loaded_key = ensure_reference(ctx, worker) or loaded_key
        while True:
            if ctx.shared:  # other workers add trials, and may have died holding some
                _fail_stale(ctx, progress.note)
                recs, done, counted = _refresh(ctx)
            if counted >= spec.trials:
                if ctx.role != "tune" or not ctx.shared:
                    break
                # Counted with other workers' trials in flight, some of which may yet turn out to
                # be duplicates (not counted): the tune process sees the study through.
                _wait_for_others(ctx, progress.note)
                recs, done, counted = _refresh(ctx)
                if counted >= spec.trials:
                    break
                continue
            ctx.stopped_reason = _stop_reason(ctx, done, started, duplicates_in_a_row)
            if ctx.stopped_reason:
                break
            if not pending:
                # Never more than the candidates left: the rest could only be duplicates.
                asked = [_ask(ctx) for _ in range(min(ask_batch, spec.trials - counted, ctx.space.size - len(done)))]
                pending = _order_for_loaded_model([(t, suggest(t, ctx.space)) for t in asked], loaded_key)
            trial, cand = pending.pop(0)
            trial_start = time.perf_counter()
            rival = None
            if ctx.shared:  # claim, then look: finished by another worker, or measured by one now
                try:
                    rival = _rival(ctx, trial, cand)
                except optuna.exceptions.UpdateFinishedTrialError:
                    ctx.heartbeat.discard(trial._trial_id)
                    progress.note(f"trial #{trial.number} was declared lost while it waited (no heartbeat for "
                                  f"{3 * spec.heartbeat_s}s) and is queued again; skipping it")
                    continue
                recs, done, counted = _refresh(ctx)
            previous = done.get(_key(cand))
            if previous is None and rival is not None:
                _fail_unrun(ctx, trial, DEFERRED_ATTR, rival)
                progress.note(f"{cand.label()} is being measured by another worker (trial #{rival}); asking for another")
                time.sleep(1.0)  # let it finish: the sampler may well propose it again
                continue
            if previous is not None:  # never measure the same candidate twice: answer from the record
                _tell(ctx, trial, cand, previous.outcome, spawn_s=0.0, total_s=0.0, duplicate_of=previous)
                duplicates_in_a_row += 1
                if trial.number in follow_ups and replacements_left > 0 and cand.load_key == loaded_key:
                    # A follow-up that used nothing of the loaded model: ask another while it is loaded.
                    replacements_left -= 1
                    pending.insert(0, _ask_follow_up(ctx, cand.load_key, follow_ups))
                continue
            duplicates_in_a_row = 0
            progress.trial_started(counted, spec.trials, cand)
            try:
                reason = unsupported_reason(cand, ctx.device)
                spawn_s = 0.0
                unloadable = failed_load(cand, done) if reason is None else None
                dominating = dominating_infeasible(cand, done) if reason is None and unloadable is None else None
                too_big = _predicted_over_budget(ctx, cand) if reason is None and dominating is None and unloadable is None else None
                if reason is None and unloadable is None and dominating is None and too_big is None:
                    ctx.stopped_reason = _too_late_for(ctx, cand, loaded_key, started, durations)
                    if ctx.stopped_reason:
                        _fail_unrun(ctx, trial)
                        break
                    reason = _place(ctx, worker, cand, progress.note)
                if reason is not None:
                    outcome = TrialOutcome(status="unsupported", reason=reason)
                elif unloadable is not None:
                    outcome = _failed_load_outcome(unloadable)
                elif dominating is not None:
                    outcome = _inferred_outcome(cand, dominating)
                elif too_big is not None:
                    outcome = TrialOutcome(status="oom", predicted=True, reason=too_big)
                else:
                    ran_at = time.perf_counter()
                    outcome, spawn_s, holds = _run_candidate(ctx, worker, trial.number, cand, done)
                    if holds is not None:  # the worker ran it (else a known boundary answered it for free)
                        durations.append((outcome.reloaded, time.perf_counter() - ran_at - outcome.prepare_s))
                        loaded_key = cand.load_key if holds else None
            except BaseException:
                # Ctrl-C or a crash of the parent's own code: the trial in flight is lost, nothing else.
                _fail_unrun(ctx, trial)
                raise
            record = _tell(ctx, trial, cand, outcome, spawn_s=spawn_s, total_s=time.perf_counter() - trial_start,
                           inferred_from=dominating if outcome.inferred_from is not None else None)
            if _yield_wanted_gpus(ctx, worker):
                loaded_key = None
            if outcome.reloaded and not outcome.first_attempt and outcome.phase != "load" and shape_points > 1 \
                    and loaded_key == cand.load_key:
                # Ask the follow-ups now and run them next, while this model is still loaded; never more
                # than the candidates neither measured nor pending (the rest could only be duplicates).
                for _ in range(min(TRIALS_PER_LOAD - 1, ctx.space.size - len(done) - len(pending) - 1)):
                    pending.append(_ask_follow_up(ctx, cand.load_key, follow_ups))
                pending = _order_for_loaded_model(pending, loaded_key)
                replacements_left = TRIALS_PER_LOAD - 1
            elif _answered_without_measuring(outcome) and trial.number in follow_ups \
                    and replacements_left > 0 and cand.load_key == loaded_key:
                replacements_left -= 1  # answered without the model, like a duplicate: ask another
                pending.insert(0, _ask_follow_up(ctx, cand.load_key, follow_ups))
            largest = outcome.boundary.largest_feasible if outcome.boundary is not None and outcome.probe_s > 0 else None
            if largest is not None and largest != cand.batch_size and loaded_key == cand.load_key:
                # Throughput rises with the batch until memory runs out: the largest batch that fits,
                # just found by the bisection, is the next candidate to measure on this model.
                pending.insert(0, _ask_at_boundary(ctx, cand, largest, follow_ups))
            counted += 1
            ctx.new_trials.append(record.number)
            recs.append(record)
            if record.state != "failed":
                done[_key(cand)] = record
            else:  # a candidate failed MAX_ATTEMPTS times joins `done`
                done = _finished_by_params(recs)
            run_log["trials"].append({"number": record.number, "total_s": record.total_s})
            write_outputs(ctx, report=False)
            progress.trial_finished(record, counted, spec.trials)
        if ctx.role == "tune":
            if ctx.shared:
                _wait_for_others(ctx, progress.note)
            # The noise-aware choice among the best few (autotune/confirm.py): same worker, same --timeout.
            confirm_started = time.monotonic()
            earlier = stored_confirmation(ctx.study)
            confirmation = confirm_study(ctx, worker, records(ctx.study), started, progress.note,
                                         place=lambda cand: _place(ctx, worker, cand, progress.note))
            run_log["confirmation_s"] = round(time.monotonic() - confirm_started, 3)
            if confirmation is not None and (earlier is None or earlier[0] != confirmation):  # measured now
                run_log["confirmation_measuring_s"] = confirmation.measuring_s
                run_log["confirmation_loading_s"] = confirmation.loading_s
    finally:
        for trial, _ in pending:  # asked but never run (stopped, or interrupted)
            _fail_unrun(ctx, trial)
        worker.close()
        ctx.heartbeat.stop()
        if ctx.placement is not None:
            ctx.placement.release_all()
        run_log["wall_s"] = time.monotonic() - started
        with open(ctx.out / "runs.jsonl", "a") as f:
            f.write(json.dumps(run_log) + "\n")


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
