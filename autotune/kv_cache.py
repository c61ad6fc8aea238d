"""Generate-time settings (issue 19): the KV cache implementations, torch.compile modes and chunked
prefill a candidate may ask generate() for, and how they become generate() arguments.

Facts (transformers 5.17 and 5.24, /work/notes/issue19-apis.md §2, §3, §5):
- `generate(cache_implementation=...)`: "static"/"offloaded_static" are the compileable caches
  (generate() compiles only with one of them), "dynamic"/"offloaded"/"quantized" never compile.
  Offloaded caches prefetch layers on a CUDA stream: they need an accelerator.
- "quantized" takes `cache_config={"backend": ...}`: "quanto" (optimum-quanto), "hqq" (hqq) or,
  from transformers 5.24 only, "fp8" (per tensor, no package). 5.17 pops that dict in place, so
  it is never passed as a generate() argument here: it is set on model.generation_config, which
  generate() deep-copies on every call.
- `generate(prefill_chunk_size=N)` splits the prompt into N-token chunks run on the same cache
  (the answers are the unchunked ones); it cannot split raw multimodal inputs.
- `CompileConfig(mode=...)`: transformers' default mode is "reduce-overhead" (CUDA graphs); a
  CompileConfig is not JSON, so best.yaml carries the mode and the load builds the object.
- The stop check (5.17-5.25, generation/utils.py): after every decode step generate() reads
  `unfinished_sequences.max() == 0` on the host (`StopCheck`), which waits for the GPU to finish
  that step before the host prepares and queues the next one: the host's per-step Python is added
  to the GPU's time instead of hidden behind it. transformers' own `DeferredStopCheck` reads the
  flag one step late (a pinned copy and an event) and undoes the one extra forward an EOS stop
  costs; its `is_supported` allows it on mps only ("we should enable it for cuda if we observe
  perf gains"). `stop_check: deferred` allows it on CUDA for the model it was loaded into, and
  `stop_check: sync` keeps it off there whatever a later transformers decides.
"""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from autotune.spec import Candidate


@dataclass(frozen=True)
class CacheKind:
    name: str  # the knob's value
    implementation: str  # transformers' cache_implementation
    static: bool = False  # compileable (a static cache is what makes generate() compile)
    offloaded: bool = False  # the KV cache lives in host memory (prefetched layer by layer)
    backend: str | None = None  # the quantized cache's backend
    kv_bits: int | None = None  # bits per stored KV element (quantized), None: the dtype's
    package: str | None = None  # the module the backend imports (None: in transformers)
    pip: str | None = None

    def unavailable_reason(self, device_type: str) -> str | None:
        if self.offloaded and device_type != "cuda":
            return (f"cache_implementation {self.name}: an offloaded KV cache needs an accelerator (transformers prefetches "
                    "its layers on a CUDA stream)")
        if self.backend == "fp8":
            import transformers.cache_utils as cache_utils
            import transformers

            if not hasattr(cache_utils, "Fp8QuantizedLayer"):
                return (f"cache_implementation {self.name}: transformers {transformers.__version__} has no fp8 KV-cache backend "
                        "(added in 5.24); upgrade transformers or use quantized-hqq / quantized-quanto")
        if self.package is not None and not module_installed(self.package):
            return f"cache_implementation {self.name}: the {self.pip} package is not installed (pip install {self.pip})"
        return None

    def cache_config(self) -> dict[str, Any] | None:
        """A fresh dict every call (transformers 5.17 pops it in place)."""
        return None if self.backend is None else {"backend": self.backend}


def module_installed(module: str) -> bool:
    """Whether `module` (dotted names included) can be imported here, without importing it."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a missing parent package of a dotted name
        return False


CACHE_IMPLEMENTATIONS: dict[str, CacheKind] = {k.name: k for k in (
    CacheKind("dynamic", "dynamic"),
    CacheKind("static", "static", static=True),
    CacheKind("offloaded", "offloaded", offloaded=True),
    CacheKind("offloaded_static", "offloaded_static", static=True, offloaded=True),
    # Quantized caches keep the newest residual_length (128) tokens unquantized, then quantize them.
    CacheKind("quantized-fp8", "quantized", backend="fp8", kv_bits=8),
    CacheKind("quantized-hqq", "quantized", backend="hqq", kv_bits=4, package="hqq", pip="hqq"),
    CacheKind("quantized-quanto", "quantized", backend="quanto", kv_bits=4, package="optimum.quanto", pip="optimum-quanto"),
)}

# torch.compile modes offered (torch._inductor.list_mode_options()); "lite" is left out until it is
# checked on the GPU box's torch. max-autotune is CUDA graphs plus inductor's kernel autotuning
# (longer compiles): a lever for batch-1 decode, where reduce-overhead reached 56% of the bandwidth
# limit (BENCHMARKS §17).
COMPILE_MODES = ("reduce-overhead", "default", "max-autotune-no-cudagraphs", "max-autotune")
DEFAULT_COMPILE_MODE = "reduce-overhead"  # transformers' CompileConfig default


# When generate() reads its stop flag: "sync" (transformers' default on CUDA: every step waits for
# the GPU) or "deferred" (transformers' DeferredStopCheck: one step late). Same tokens either way.
STOP_CHECKS = ("sync", "deferred")


def cache_kind(candidate: Candidate) -> CacheKind:
    """The KV cache the candidate generates with (absent: a static one with compile, else dynamic)."""
    if candidate.cache_implementation is not None:
        return CACHE_IMPLEMENTATIONS[candidate.cache_implementation]
    return CACHE_IMPLEMENTATIONS["static" if candidate.compile else "dynamic"]


def unsupported_reason(candidate: Candidate, device_type: str) -> str | None:
    """Generate-time combinations that cannot run (or would measure nothing new), before loading."""
    kind = cache_kind(candidate)
    if candidate.compile and not kind.static:
        return (f"compile with cache_implementation {kind.name}: transformers compiles generate() only with a static KV "
                "cache (static or offloaded_static); this candidate would run eagerly")
    reason = kind.unavailable_reason(device_type)
    if reason:
        return reason
    if not candidate.compile and candidate.compile_mode not in (None, DEFAULT_COMPILE_MODE):
        return (f"compile_mode {candidate.compile_mode} applies only with compile: true; the uncompiled candidate is "
                f"measured once, as compile_mode {DEFAULT_COMPILE_MODE}")
    if candidate.stop_check == "deferred":
        reason = deferred_stop_check_unavailable(device_type)
        if reason:
            return reason
    if candidate.prefill_chunk_size and candidate.has_images:
        return ("prefill_chunk_size with images or video: transformers cannot split the raw multimodal inputs into "
                "prefill chunks; use prefill_chunk_size 0 for visual requests")
    return None


def generate_settings(candidate: Candidate) -> dict[str, Any]:
    """The generate() arguments of the knobs (JSON, written into best.yaml's generate_kwargs)."""
    kwargs: dict[str, Any] = {}
    kind = cache_kind(candidate)
    if candidate.compile or candidate.cache_implementation is not None:
        kwargs["cache_implementation"] = kind.implementation
    if kind.static and not candidate.compile:
        # generate() compiles a static cache on its own on an accelerator: an uncompiled candidate says no.
        kwargs["disable_compile"] = True
    if candidate.prefill_chunk_size:
        kwargs["prefill_chunk_size"] = candidate.prefill_chunk_size
    return kwargs


def generation_config_settings(candidate: Candidate) -> dict[str, Any]:
    """What the load sets on model.generation_config (JSON form): the quantized cache's backend and
    the compile mode. generate() deep-copies the generation config on every call, so the dict
    is never consumed (transformers 5.17 pops cache_config in place), and quality generation,
    which passes no generate kwargs, uses the same KV cache quantization."""
    settings: dict[str, Any] = {}
    kind = cache_kind(candidate)
    if kind.backend is not None:
        settings["cache_implementation"] = kind.implementation
        settings["cache_config"] = kind.cache_config()
    if candidate.compile and candidate.compile_mode is not None:
        settings["compile_config"] = {"mode": candidate.compile_mode}
    return settings


def apply_generation_config(model, candidate: Candidate) -> None:
    """Set generation_config_settings on the loaded model (CompileConfig built from its mode)."""
    settings = generation_config_settings(candidate)
    if not settings:
        return
    config = model.generation_config
    if "cache_config" in settings:
        config.cache_implementation = settings["cache_implementation"]
        config.cache_config = dict(settings["cache_config"])
    if "compile_config" in settings:
        from transformers import CompileConfig

        config.compile_config = CompileConfig(**settings["compile_config"])


def kv_bytes_factor(candidate: Candidate, dtype_bytes: float) -> float:
    """The KV cache's device bytes per element, as a lower bound: 0 where it lives in host memory
    (offloaded keeps a layer or two on the device), the quantized bits where it is quantized
    (the newest residual tokens and the scales are left out: a lower bound)."""
    kind = cache_kind(candidate)
    if kind.offloaded:
        return 0.0
    if kind.kv_bits is not None:
        return min(dtype_bytes, kind.kv_bits / 8)
    return dtype_bytes


def deferred_stop_check_unavailable(device_type: str) -> str | None:
    if device_type != "cuda":
        return ("stop_check deferred: CUDA only (transformers' DeferredStopCheck records a device event, which torch has "
                "no CPU form of; on CPU the host does the work itself, so there is no wait to hide)")
    from transformers.generation import utils as generation_utils

    if not hasattr(generation_utils, "DeferredStopCheck"):
        import transformers

        return (f"stop_check deferred: transformers {transformers.__version__} has no DeferredStopCheck (5.17 has it); "
                "upgrade transformers or use stop_check sync")
    return None


# Set while a model loaded with a stop_check runs generate(): under "deferred" the patched
# is_supported below answers for CUDA as transformers answers for mps; under "sync" it answers no,
# so that sync stays sync should transformers one day defer on CUDA by itself; unset (a model
# loaded without the knob) it is transformers' own answer. A context variable, not a global
# switch: another model in the same process keeps its own, and a streamer's generate() thread
# sets its own.
_STOP_CHECK: ContextVar[str | None] = ContextVar("autotune_stop_check", default=None)


def _patch_is_supported() -> None:
    """Patch DeferredStopCheck.is_supported once per process (idempotent). Its arguments pass
    through as given, so a transformers that adds one keeps working."""
    import torch
    from transformers.generation import utils as generation_utils

    check = generation_utils.DeferredStopCheck
    stock = check.is_supported
    if getattr(stock, "autotune_patched", False):
        return

    def is_supported(device, *args, **kwargs) -> bool:
        mode = _STOP_CHECK.get()
        if mode == "sync":
            return False
        if mode == "deferred" and torch.device(device).type == "cuda":
            # transformers' own conditions (the assistant, the cache it must be able to crop), as on mps
            return stock(torch.device("mps"), *args, **kwargs)
        return stock(device, *args, **kwargs)

    is_supported.autotune_patched = True  # type: ignore[attr-defined]
    check.is_supported = staticmethod(is_supported)


@contextmanager
def stop_check_mode(mode: str) -> Iterator[None]:
    """generate() calls inside read their stop flag as `mode` says ("sync" or "deferred")."""
    if mode not in STOP_CHECKS:
        raise ValueError(f"stop_check {mode!r}: use one of {', '.join(STOP_CHECKS)}")
    _patch_is_supported()
    token = _STOP_CHECK.set(mode)
    try:
        yield
    finally:
        _STOP_CHECK.reset(token)


def set_stop_check(model, mode: str) -> None:
    """Make `model.generate` read its stop flag as `mode` says, for this model only: "deferred"
    one step late on CUDA (transformers' DeferredStopCheck), "sync" after every step. The
    transformers export's script calls this too."""
    generate_within(model, lambda: stop_check_mode(mode))


def generate_within(model, scope: Callable[[], AbstractContextManager]) -> None:
    """Make every `model.generate` call of this model run inside a fresh `scope()`. The wrapper is
    this object's attribute: a deepcopy of the model still generates through the original, and
    pickling the model fails."""
    generate = model.generate

    @functools.wraps(generate)
    def generate_in_scope(*args, **kwargs):
        with scope():
            return generate(*args, **kwargs)

    model.generate = generate_in_scope


def apply_stop_check(model, candidate: Candidate) -> None:
    if candidate.stop_check is not None:
        set_stop_check(model, candidate.stop_check)
