"""Create, resume, join or open a study: validate everything the user gave (device, budget,
space, model, validation set, metric, output directory) before any study file is touched, check
that a stored study has the same identity, and enqueue the baseline in a new one.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import optuna
from optuna.trial import TrialState as OptunaState

from autotune.dtypes import dtype_from_torch_name
from autotune.errors import AutotuneError, OutputDirError, SpaceError, StudyMismatchError
from autotune.memory_model import ModelShape
from autotune.models import ModelRef, check_available, resolve_model
from autotune.objectives import objective
from autotune.samplers import create_sampler
from autotune.space import baseline_params, default_space_path, load_space, space_digest
from autotune.spec import Fingerprint, SearchSpace, TuneSpec, parse_min_quality
from autotune.storage import check_url, describe, open_storage, redact
from autotune.study.context import (
    BASELINE_ATTR,
    FINGERPRINT_ATTR,
    IDENTITY_ATTRS,
    INTERRUPTED_ATTR,
    SPACE_ATTR,
    SPEC_ATTR,
    QualitySetup,
    StudyContext,
)
from autotune.study import ownership
from autotune.system import DeviceInfo, check_budget, detect_device, fingerprint

BUNDLED_TEXT_SET = Path(__file__).parent.parent / "data" / "bundled" / "text.jsonl"
BUNDLED_RERANK_SET = Path(__file__).parent.parent / "data" / "bundled" / "rerank.jsonl"


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
        "objective": ",".join(spec.all_objectives),  # one name for a single objective, as before
        "device_name": device.name,
        # Changing the data, metric or floor changes every trial's constraint: a new study.
        "quality": json.dumps([str(quality.data_path.resolve()), quality.metric, spec.min_quality, quality.max_examples])
        if quality else "",
        # Limits are constraints of every trial like the floor: other limits, another study.
        "slo": spec.slo or "",
        # Other traffic, other figures; the fixed default is "" (and a study stored before
        # workloads existed, without the key, counts as "": it measured the fixed shape).
        "workload": json.dumps(space.workload, sort_keys=True) if space.workload else "",
    }


def apply_workload(spec: TuneSpec, space: SearchSpace, model: ModelRef) -> SearchSpace:
    """The --workload flag replaces the space's workload: section; a workload the measurement cannot
    use for this model is refused here, before any study file is touched."""
    from autotune.space import workload_section
    from autotune.workload import WorkloadError, parse_workload, parse_workload_flag

    if spec.workload is not None:
        space = space.model_copy(update={"workload": workload_section(parse_workload_flag(spec.workload))})
    if space.workload is None:
        return space
    where = "--workload" if spec.workload is not None else "the space's workload"
    if model.model_kind == "reranker":
        raise WorkloadError(f"{where}: a reranker scores query-document pairs in one pass and generates nothing; "
                            "workloads measure text generation (drop the workload)")
    if any(space.images_per_prompt or []) or any(space.video_frames or []):
        raise WorkloadError(f"{where}: workloads measure text requests, and this space's requests carry images or video; "
                            "drop the workload or the images_per_prompt/video_frames knobs")
    if space.workload.get("kind") == "file":
        workload = parse_workload(space.workload, "/", where)
        if model.kind == "random":
            raise WorkloadError(f"{where}: a file workload's prompts are counted with the model's tokenizer, which "
                                "--random-weights models lack; use prompt=/output= lengths or a real checkpoint")
        if any(e.images or e.video or e.documents is not None for e in workload._examples or []):
            raise WorkloadError(f"{where}: {workload.file} holds image, video or reranking examples; a workload file "
                                "gives text prompts (drop those lines)")
    return space


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
    from autotune.data.schema import check_images_per_request, check_prompt_lengths, check_video_frames
    from autotune.measure.metrics import get_metric

    if not spec.quality_enabled:
        return None
    reranker = model.model_kind == "reranker"
    data_path = spec.data or default_validation_set(model, space)
    # The data's own errors come first (file and line; paths outside its folder; prompts no max_length fits).
    examples = load_validation_set(data_path, allow_outside=spec.allow_data_outside)[: spec.quality_examples]
    if space is not None:
        check_prompt_lengths(Path(data_path), examples, max(space.max_length))
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
    from autotune.measure.quality import REFERENCE_FILE

    mode, value = parse_min_quality(spec.min_quality) if spec.min_quality else (None, None)
    # A generating kind leaves new_tokens of max_length for the answer; a reranker scores the pair in one pass.
    max_prompt_tokens = max(space.max_length) - (0 if reranker else space.new_tokens) if space is not None else None
    return QualitySetup(Path(data_path), metric.name, mode, value, out / REFERENCE_FILE, spec.quality_examples,
                        spec.allow_data_outside, max_prompt_tokens)


def _check_reranker_vocabulary(model: ModelRef) -> None:
    """A yes/no reranker needs both words as single tokens: checked on the tokenizer before the study."""
    from autotune.loading import load_tokenizer
    from autotune.models import materialize
    from autotune.vision import yes_no_ids

    tokenizer = load_tokenizer(model, materialize(model)) if model.kind != "random" else None
    text_config = model.config().get("text_config") or model.config()
    yes_no_ids(tokenizer, int(text_config.get("vocab_size") or 0) if model.kind == "random" else 1 << 30)


def _remove_if_empty(directory: Path) -> None:
    try:
        directory.rmdir()
    except OSError:
        pass


def open_study(spec: TuneSpec, space: SearchSpace | None = None, join: bool = False) -> StudyContext:
    """Validate everything the user gave before touching any study file, then create or resume.
    `join`: an `autotune worker` joining a study that exists, with the space it was created with."""
    device = detect_device(spec.device)
    check_budget(device, spec.memory_budget_gib)
    space = space or load_space(spec.space or default_space_path(device))
    model = resolve_model(spec.model, spec.random_weights, spec.kind)
    if not join:  # a joining worker takes the workload the study stored in its space
        space = apply_workload(spec, space, model)
    if space.vision_knobs_set and not model.is_vision:
        raise SpaceError(
            f"search space sets vision knobs ({', '.join(space.vision_knobs_set)}) but {model.name} is a text-only model "
            "(no vision_config); remove them or pass a vision model"
        )
    check_available(model)  # a package every candidate needs (the embedded model's): refused now, not in every trial
    if model.model_kind == "reranker":
        _check_reranker_vocabulary(model)
    quality = setup_quality(spec, model, spec.out, space)
    check_url(spec.storage)  # a bad scheme or a missing driver creates no output directory
    out_existed = spec.out.exists()
    prepare_out_dir(spec.out)
    storage_url = spec.storage or f"sqlite:///{(spec.out / 'study.db').resolve()}"
    info = describe(storage_url, spec.heartbeat_s)
    study_name = spec.study or default_study_name(model, device)
    directions = [objective(name).direction for name in spec.all_objectives]
    identity = _identity(model, space, spec, device, quality)
    # The `tune` process owns a study kept in a file, before it reads or changes anything in it
    # (a second run would fail this one's trials in flight as interrupted); workers share it.
    lock = None if join else ownership.lock_path(storage_url)
    if lock is not None:
        try:
            ownership.acquire(lock, str(spec.out) if spec.storage is None else str(lock.with_name(lock.name.removesuffix(ownership.OWNER_LOCK_SUFFIX))))
        except BaseException:
            if not out_existed:
                _remove_if_empty(spec.out)
            raise
    if not join:
        from autotune.atomic import remove_stale_temp_files

        remove_stale_temp_files(spec.out)  # left by a run killed while it wrote a file (a live process's stay)

    try:
        storage = open_storage(storage_url, spec.heartbeat_s)
        existing = {s.study_name: s for s in optuna.get_all_study_summaries(storage, include_best_trial=False)}
    except BaseException:
        # No server, a wrong password: the directory this run made for the study stays behind only
        # if something was written into it.
        if not out_existed:
            if lock is not None and lock.parent == spec.out.resolve():
                ownership.release(lock)
                lock.unlink(missing_ok=True)  # made by this run a moment ago, in a directory it made
            _remove_if_empty(spec.out)
        raise
    if join and study_name not in existing:
        raise StudyMismatchError(f"study {study_name!r} does not exist in {redact(storage_url)}; start it with "
                                 f"autotune tune --storage URL --study {study_name}")
    if study_name in existing:
        attrs = existing[study_name].user_attrs
        for key in IDENTITY_ATTRS:
            stored = attrs.get(key, "" if key == "workload" else None)
            if stored is not None and not _same_identity(key, stored, identity[key]):
                # The device name is the hardware: trials of two GPU models never meet in one best config.
                what = f"GPU model ({stored}; this machine: {identity[key]})" if key == "device_name" else key.replace("_", " ")
                raise StudyMismatchError(
                    f"study {study_name!r} in {redact(storage_url)} exists with a different {what}; "
                    f"pass a new --study name or --out directory (nothing was changed)"
                )
    sampler = create_sampler(spec.sampler, spec.seed, space)  # not stored: a resumed study may use another
    study = optuna.create_study(storage=storage, study_name=study_name, directions=directions, sampler=sampler, load_if_exists=True)
    if study_name not in existing:
        for key, value in identity.items():
            study.set_user_attr(key, value)
        # Everything a worker on another host needs to join: the spec with absolute paths, the space itself.
        # Never the storage password: every worker and anyone with the database reads this (workers
        # take the URL from their own command line or $AUTOTUNE_STORAGE).
        stored = spec.model_copy(update={"data": spec.data.resolve() if spec.data else None, "space": None,
                                         "storage": redact(spec.storage) if spec.storage else None})
        study.set_user_attr(SPEC_ATTR, stored.model_dump(mode="json"))
        study.set_user_attr(SPACE_ATTR, space.model_dump(mode="json"))
        study.set_user_attr(FINGERPRINT_ATTR, fingerprint(device).model_dump(mode="json"))
        study.enqueue_trial(baseline_params(space, device, model_default_dtype(model)), user_attrs={BASELINE_ATTR: True})
    elif (old := existing[study_name].user_attrs.get(SPEC_ATTR)) and old.get("storage") and redact(old["storage"]) != old["storage"]:
        study.set_user_attr(SPEC_ATTR, {**old, "storage": redact(old["storage"])})  # stored by an autotune before issue 17
    # Taken once per run: best.yaml is rewritten after every trial and the machine does not change.
    ctx = StudyContext(spec, device, space, model, study, redact(storage_url), study_name, spec.out, fingerprint(device), quality,
                       shape=ModelShape.from_config(model.config()), storage_info=info)
    if info.shared:  # best.yaml names the machine that measured the best trial, whichever it was
        study.set_user_attr(FINGERPRINT_ATTR + ":" + ctx.owner["host"], ctx.fingerprint.model_dump(mode="json"))
    if not info.shared and lock is not None and ownership.held(lock):
        _fail_interrupted_trials(ctx)  # only the owner: a RUNNING trial is then surely a killed run's
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
    """A RUNNING trial in a SQLite file whose owner lock we hold belongs to a run that was killed:
    nothing else can be measuring it (a live run would hold the lock). Mark it failed so resuming measures it again (it was never recorded)."""
    storage = ctx.study._storage
    for trial in ctx.study.get_trials(deepcopy=False, states=(OptunaState.RUNNING,)):
        storage.set_trial_user_attr(trial._trial_id, INTERRUPTED_ATTR, True)
        storage.set_trial_state_values(trial._trial_id, OptunaState.FAIL)


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
