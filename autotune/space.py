"""Search space: YAML -> SearchSpace -> Optuna suggestions -> Candidate, plus the rules that say
which candidates cannot run on this machine (recorded as unsupported, never a crash)."""

from __future__ import annotations

import hashlib
import importlib.resources
import itertools
import json
from pathlib import Path

import optuna
import yaml
from pydantic import ValidationError

from autotune import kv_cache
from autotune.attention import ATTENTION_KINDS
from autotune.errors import SpaceError, pydantic_message
from autotune.knobs import KNOB_TABLE, knob, ordered, pick
from autotune.quant import get_method
from autotune.spec import Candidate, SearchSpace
from autotune.system import DeviceInfo
from autotune.workload import Workload, parse_workload


def builtin_space_path(name: str) -> Path:
    try:
        root = Path(str(importlib.resources.files("autotune.search_spaces")))
    except ModuleNotFoundError:  # running from a checkout that was never pip-installed
        root = Path(__file__).resolve().parent.parent / "search_spaces"
    return root / f"{name}.yaml"


def default_space_path(device: DeviceInfo) -> Path:
    return builtin_space_path("cuda" if device.type == "cuda" else "cpu")


def load_space(path: Path) -> SearchSpace:
    if not path.is_file():
        builtin = builtin_space_path(str(path))
        if builtin.is_file():  # `--space llm-7b-24gib` names a bundled space
            path = builtin
        else:
            raise SpaceError(f"search space {path} does not exist; pass a YAML file or a bundled name")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise SpaceError(f"search space {path}{where} is not valid YAML ({getattr(e, 'problem', e)}); fix the syntax") from e
    except OSError as e:
        raise SpaceError(f"cannot read search space {path}: {e.strerror}") from e
    if not isinstance(raw, dict):
        raise SpaceError(f"search space {path} must be a mapping of knob: [choices]; see search_spaces/cpu.yaml")
    if raw.get("workload") is not None:  # relative file paths are read from the space file's folder
        raw = {**raw, "workload": workload_section(parse_workload(raw["workload"], path.parent, f"search space {path}: workload"))}
    try:
        return SearchSpace.model_validate(raw)
    except ValidationError as e:
        err = e.errors()[0]
        key = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = pydantic_message(err)
        if err["type"] == "extra_forbidden":
            msg = f"unknown key; allowed keys: {', '.join(SearchSpace.model_fields)}"
        raise SpaceError(f"search space {path}: key {key!r}: {msg}") from e


def workload_section(workload: Workload) -> dict | None:
    """What SearchSpace.workload keeps: None for the fixed default (so a study without a workload
    is stored as before), else the validated section with an absolute file path."""
    return None if workload.is_default else workload.model_dump(mode="json", exclude_none=True)


def space_digest(space: SearchSpace) -> str:
    """Identity of a space: a study resumed with a different space is refused, not mixed."""
    # Knobs added after a study was created are left out while unset, so existing studies resume.
    # The workload is its own part of the identity (study/setup.py), so the digest never holds it.
    unset_new = {k.name for k in KNOB_TABLE if k.added_later and getattr(space, k.name) is None} | {"workload"}
    return hashlib.sha256(json.dumps(space.model_dump(mode="json", exclude=unset_new), sort_keys=True).encode()).hexdigest()[:16]


def _carried(space: SearchSpace) -> dict:
    """The space's one-value settings every candidate carries (new_tokens), or carries while the
    knob they belong to is set (image_size with images_per_prompt)."""
    return {k.name: (getattr(space, k.name) if k.carried_with is None or getattr(space, k.carried_with) is not None else None)
            for k in KNOB_TABLE if not k.sampled}


def suggest(trial: optuna.Trial, space: SearchSpace) -> Candidate:
    values = {name: trial.suggest_categorical(name, getattr(space, name)) for name in space.knobs}
    return Candidate(**values, **_carried(space))


def baseline_params(space: SearchSpace, device: DeviceInfo, model_dtype: str | None) -> dict:
    """The untuned default load: the checkpoint's own dtype where it runs here (fp32 on CPU, as
    from_pretrained gives), no quantization, transformers' default attention (sdpa), no compile,
    batch 1, at the smallest max_length of the space. Each knob is picked as its row in
    autotune/knobs.py says (the `baseline` pick): a knob whose default the space lacks takes the
    space's plainest value, so in a corner of a space (e.g. compiled only) the baseline is no
    untuned load, and the report names it beside the ratio."""
    dtype = "fp32" if device.type == "cpu" else (model_dtype or "bf16")
    if dtype == "bf16" and not device.bf16_supported:  # pre-Ampere GPUs load half precision as fp16
        dtype = "fp16"
    return {name: pick(knob(name), knob(name).baseline, getattr(space, name), dtype if name == "dtype" else None)
            for name in space.knobs}


def reference_candidates(space: SearchSpace, device: DeviceInfo) -> list[Candidate]:
    """Loads of the space that run here, highest precision first (the quality reference is the
    first that fits the budget). Each knob is picked as its row's `reference` says: every
    most-faithful combination in precision order (dtype, then quantization), each with the first
    of the `first_supported` choices that runs here (one attention kernel per precision), the
    other knobs at one value (vision: the highest resolution and most frames of the space, the
    most faithful inputs, as the bar the lower resolutions are compared with)."""
    fixed, faithful, fallback = {}, [], []
    for k in KNOB_TABLE:
        choices = getattr(space, k.name)
        if k.reference == "most_faithful" or (k.reference == "ascending" and choices is not None):
            faithful.append((k.name, ordered(k, k.reference, choices)))
        elif k.reference == "first_supported":
            fallback.append((k.name, ordered(k, k.reference, choices)))
        elif k.reference == "space":
            fixed[k.name] = choices
        elif k.reference in ("min", "max", "prefer"):
            fixed[k.name] = pick(k, k.reference, choices) if choices is not None else None
    supported = []
    for combo in itertools.product(*(values for _, values in faithful)):
        for alternative in itertools.product(*(values for _, values in fallback)):
            cand = Candidate(**fixed, **dict(zip((n for n, _ in faithful), combo)),
                             **dict(zip((n for n, _ in fallback), alternative)))
            if unsupported_reason(cand, device) is None:
                supported.append(cand)
                break
    return supported


def unsupported_reason(candidate: Candidate, device: DeviceInfo) -> str | None:
    """Combinations that cannot run on this machine, known before loading anything."""
    if device.type == "cpu" and candidate.dtype == "fp16":
        return "fp16 on CPU: no fast half-precision kernels (use bf16 or fp32)"
    if device.type == "cuda" and candidate.dtype == "bf16" and not device.bf16_supported:
        return f"bf16 is not supported by {device.name}"
    for attn in {candidate.attn_implementation, candidate.vision_attn_implementation} - {None}:
        reason = ATTENTION_KINDS[attn].unsupported_reason(candidate.dtype, device.type)
        if reason:
            return reason
    if candidate.compile and device.type != "cuda":
        return "static cache + torch.compile: transformers compiles generate() only on accelerators"
    method = get_method(candidate.quantization)
    reason = method.unavailable_reason(device.type, device.capability, candidate.dtype)
    if reason:
        return f"{candidate.quantization}: {reason}"
    if candidate.compile:
        # Else the model loads (seconds to minutes) only to learn this; the loader checks again.
        reason = method.compile_unsupported_reason()
        if reason:
            return f"{candidate.quantization} with compile: {reason}"
    if candidate.cpu_offload_gib:
        reason = offload_unsupported_reason(candidate, device.type)
        if reason:
            return reason
    return kv_cache.unsupported_reason(candidate, device.type)


def offload_unsupported_reason(candidate: Candidate, device_type: str) -> str | None:
    """cpu_offload_gib > 0 runs only on one CUDA GPU, uncompiled and unquantized (the loader checks again)."""
    what = f"cpu_offload_gib={candidate.cpu_offload_gib}"
    if device_type != "cuda":
        return f"{what}: offloading weights to host memory needs a CUDA GPU (on {device_type} every weight is in host memory already)"
    if candidate.num_gpus > 1:
        return (f"{what} with num_gpus={candidate.num_gpus}: not supported (accelerate would fill every GPU before the "
                "host, and servers offload per GPU); offload on one GPU, or spread over GPUs without offload")
    if candidate.compile:
        return (f"{what} with compile: transformers does not compile generate() for a model with CPU-offloaded layers "
                "(it would silently run eagerly); offload without compile")
    if candidate.quantization.startswith("bnb-"):
        return (f"{what} with {candidate.quantization}: bitsandbytes loads offloaded layers only with "
                "llm_int8_enable_fp32_cpu_offload, which leaves them unquantized, so the candidate would not be the "
                "quantization it names; offload the unquantized model, or quantize without offload")
    if candidate.quantization != "none":
        return (f"{what} with {candidate.quantization}: autotune sizes the GPU share from the unquantized weights; "
                "offload the unquantized model, or quantize without offload")
    return None


