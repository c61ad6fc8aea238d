"""Candidate -> from_pretrained kwargs and generate kwargs. The worker and load_deployment both
load through `load_model`, so a deployment loads exactly the way it was measured."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autotune import kv_cache
from autotune.attention import register_custom_attention
from autotune.checkpoint_io import save_checkpoint
from autotune.dtypes import DTYPES
from autotune.errors import DeploymentFileError
from autotune.models import ModelRef, atomic_build, materialize, rebuildable_dir
from autotune.quant import get_method
from autotune.spec import Candidate


class QuantizationLoadError(NotImplementedError):
    """A quantizing load whose weights the quantizer could not convert (torchao on a device or
    dtype its kernels refuse, a missing kernel package). transformers logs the quantizer's error in
    its load report and raises a generic RuntimeError; this carries the real cause. A
    NotImplementedError, so the worker records the candidate as unsupported."""


def torch_dtype(name: str):
    import torch

    return getattr(torch, DTYPES[name].torch_name)


def from_pretrained_kwargs(candidate: Candidate, device: str) -> dict[str, Any]:
    dtype = torch_dtype(candidate.dtype)
    kwargs: dict[str, Any] = {
        "dtype": dtype,
        # A dict sets the vision tower's kernel apart from the language model's (transformers 5).
        "attn_implementation": candidate.attn_implementation if candidate.vision_attn_implementation is None else {
            "": candidate.attn_implementation, "text_config": candidate.attn_implementation,
            "vision_config": candidate.vision_attn_implementation,
        },
        # Load straight onto the device: bitsandbytes quantizes while loading, and a 7B model
        # must never be materialised in host memory first. Spread over N GPUs: accelerate's
        # balanced split of the layers over the visible GPUs (the worker sees exactly N).
        "device_map": {"": device} if candidate.num_gpus == 1 else "auto",
    }
    if candidate.num_gpus > 1:
        kwargs["max_memory"] = _spread_max_memory(candidate.num_gpus)
    quant_config = get_method(candidate.quantization).build_config(dtype)
    if quant_config is not None:
        kwargs["quantization_config"] = quant_config
    return kwargs


GIB = 2**30


@dataclass(frozen=True)
class OffloadPlan:
    """How a candidate with cpu_offload_gib = N is spread over one GPU and host memory.

    The GPU's share is chosen from the candidate alone, never from the request shape (the worker
    keeps the loaded model for every batch size and length of the load-key):
        max_memory[gpu] = weights - N GiB + largest layer,   max_memory["cpu"] = the host's memory
    accelerate keeps the largest layer free on the GPU (to bring an offloaded layer in) and fills
    the rest with whole layers in order, so at least N GiB (N plus less than one layer) stay on
    the host. What is left of the budget holds the KV cache and activations; the measured GPU peak
    decides feasibility. `offloaded_gib` (measured from hf_device_map) is what best.yaml records."""

    weights_gib: float  # the whole model at the candidate's dtype (accelerate's module sizes)
    largest_layer_gib: float
    offload_gib: int
    gpu_index: int = 0

    @property
    def gpu_max_memory_gib(self) -> float:
        return self.weights_gib - self.offload_gib + self.largest_layer_gib

    def max_memory(self, host_bytes: int) -> dict:
        return {self.gpu_index: int(self.gpu_max_memory_gib * GIB), "cpu": int(host_bytes)}


def offload_plan(auto_class, source: str, candidate: Candidate, device: str) -> OffloadPlan:
    """Size the model on the meta device (no memory) and check that the offload leaves weights on the GPU."""
    import torch
    from accelerate import init_empty_weights
    from accelerate.utils import compute_module_sizes, get_max_layer_size
    from transformers import AutoConfig

    if not device.startswith("cuda"):
        raise ValueError(f"cpu_offload_gib={candidate.cpu_offload_gib}: offloading weights to host memory needs a CUDA GPU")
    if candidate.compile or candidate.num_gpus > 1 or candidate.quantization != "none":
        from autotune.space import offload_unsupported_reason

        raise NotImplementedError(offload_unsupported_reason(candidate, "cuda"))
    dtype = torch_dtype(candidate.dtype)
    with init_empty_weights():
        meta = auto_class.from_config(AutoConfig.from_pretrained(source), dtype=dtype)
    sizes = compute_module_sizes(meta, dtype=dtype)
    top = list(meta.named_parameters(recurse=False)) + list(meta.named_children()) + list(meta.named_buffers(recurse=False))
    largest, _ = get_max_layer_size(top, sizes, list(getattr(meta, "_no_split_modules", None) or []))
    plan = OffloadPlan(sizes[""] / GIB, largest / GIB, candidate.cpu_offload_gib, torch.device(device).index or 0)
    if plan.offload_gib >= plan.weights_gib:
        raise ValueError(f"cpu_offload_gib={plan.offload_gib} is at least the model's {plan.weights_gib:.2f} GiB of "
                         f"{candidate.dtype} weights: nothing would stay on the GPU; offload less")
    return plan


def offloaded_gib(model) -> float:
    """GiB of parameters and buffers in modules the loaded model's hf_device_map puts on the host (or disk)."""
    device_map = getattr(model, "hf_device_map", None) or {}
    seen, total = set(), 0
    for name, where in device_map.items():
        if where not in ("cpu", "disk"):
            continue
        module = model.get_submodule(name)
        for t in [*module.parameters(), *module.buffers()]:
            if id(t) not in seen:
                seen.add(id(t))
                total += t.numel() * t.element_size()
    return total / GIB


def _spread_max_memory(num_gpus: int) -> dict:
    """GPUs 0..N-1 of the visible ones, each at its full memory (a process's budget caps it
    further): a deployment on a bigger machine uses the N GPUs it was measured on, not all."""
    import torch

    if torch.cuda.device_count() < num_gpus:
        raise DeploymentFileError(f"the deployment spreads the model over {num_gpus} GPUs, but {torch.cuda.device_count()} "
                                  "are visible; run it on a machine with that many (or set CUDA_VISIBLE_DEVICES)")
    return {i: torch.cuda.get_device_properties(i).total_memory for i in range(num_gpus)}


def generate_kwargs(candidate: Candidate) -> dict[str, Any]:
    """What a deployment passes to generate(); the measurement uses the same plus exact lengths."""
    kwargs: dict[str, Any] = {"do_sample": False, "max_new_tokens": candidate.new_tokens}
    # A static cache is what makes transformers compile the forward pass inside generate(): with
    # compile and no cache_implementation, "static" as before issue 19. The KV cache, chunked
    # prefill and (for a static cache without compile) disable_compile: autotune/kv_cache.py. The
    # quantized cache's backend and the compile mode are not generate() arguments but set on the
    # model's generation_config by the load (`apply_generation_config`), as in load_deployment.
    kwargs.update(kv_cache.generate_settings(candidate))
    return kwargs


# transformers' generate() remembers the static KV cache of earlier calls (5.2x allocates every
# later static cache at the longest length seen, `_previous_max_cache_length`; older versions
# reuse a larger `_cache`), to avoid recompiling. A 1024-token candidate measured after a
# 4096-token one would carry a 4096-token cache in its memory and its speed, so the worker drops
# that memory before every measurement and probe (`forget_static_cache`).
_STATIC_CACHE_MEMORY = ("_cache", "_previous_max_cache_length")

def forget_static_cache(model) -> None:
    """Drop the static cache transformers remembers on the model (see above)."""
    for name in _STATIC_CACHE_MEMORY:
        if name in model.__dict__:
            delattr(model, name)


def scope_inductor_settings(model, settings: Mapping[str, Any]) -> None:
    """Run `model.generate` inside torch._inductor.config.patch(settings), so that a quantization
    method's inductor settings (QuantizationMethod.inductor_settings) hold for every compile
    generate() does and for nothing else in the process. Nothing is wrapped without settings."""
    if not settings:
        return
    import torch._inductor.config as inductor_config

    kv_cache.generate_within(model, lambda: inductor_config.patch(dict(settings)))


def load_model(ref: ModelRef, candidate: Candidate, device: str):
    """Load the model (and tokenizer where the checkpoint has one) as the candidate says."""
    return _load(ref, candidate, device, use_prequantized_cache=False)


def load_model_for_trial(ref: ModelRef, candidate: Candidate, device: str):
    """What the worker calls: `load_model`, except that it reads the quantized copy that
    `ensure_prequantized` keeps where there is one. The weights are bit-identical to quantizing
    while loading (tests/test_loading.py)."""
    return _load(ref, candidate, device, use_prequantized_cache=True)


def ensure_prequantized(ref: ModelRef, candidate: Candidate, device: str) -> float:
    """For quantization methods that ask for it (`cache_prequantized`), quantize the checkpoint
    once per machine and save the result; returns the seconds spent (0 when there is nothing to
    do). The model is freed again: the caller loads the copy as the trial's own load."""
    import gc

    source = materialize(ref, device)
    cached = prequantized_dir(source, candidate, device)
    if cached is None or (cached / "config.json").is_file():
        return 0.0
    start = time.perf_counter()
    model, _ = _load(ref, candidate, device, use_prequantized_cache=False)
    try:
        atomic_build(cached, functools.partial(save_checkpoint, model))
    except OSError as e:  # a full disk costs later loads their speed-up, never the trial
        print(f"could not keep a quantized copy in {cached}: {e}", flush=True)
    del model
    gc.collect()
    return time.perf_counter() - start


def prequantized_dir(source: str, candidate: Candidate, device: str = "cpu") -> Path | None:
    """Where the quantized copy of `source` for this candidate lives, or None where there is none
    to keep (no quantization, a method that does not want it, or a source that is not a local
    directory). The name hashes everything that decides the saved bytes."""
    import transformers

    method = get_method(candidate.quantization)
    src = Path(source)
    if not method.cache_prequantized or not src.is_dir():
        return None
    files = sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in src.iterdir() if p.is_file())
    identity = json.dumps([str(src.resolve()), files, method.name, candidate.dtype, transformers.__version__,
                           method.cache_identity()])
    digest = hashlib.sha256(identity.encode()).hexdigest()[:16]
    # At most the source's size: a quantized copy is smaller than the checkpoint it comes from.
    size_bytes = sum(size for _, size, _ in files)
    return rebuildable_dir(f"prequantized/{src.name}-{method.name}-{candidate.dtype}-{digest}", device, size_bytes)


def _load(ref: ModelRef, candidate: Candidate, device: str, use_prequantized_cache: bool):
    auto_class = ref.auto_class()  # AutoModelForCausalLM or AutoModelForImageTextToText
    source = materialize(ref, device)
    cached = prequantized_dir(source, candidate, device) if use_prequantized_cache else None
    extra: dict[str, Any] = {}
    plan = offload_plan(auto_class, source, candidate, device) if candidate.cpu_offload_gib else None
    if plan is not None:
        import psutil

        extra = {"device_map": "auto", "max_memory": plan.max_memory(psutil.virtual_memory().total)}
    register_custom_attention()  # autotune's own kernels (sdpa_gqa) load by name
    with _conversion_failures(candidate):
        if cached is not None and (cached / "config.json").is_file():
            # The quantization config travels in the saved config.json.
            kwargs = {k: v for k, v in from_pretrained_kwargs(candidate, device).items() if k != "quantization_config"}
            model = auto_class.from_pretrained(cached, **{**kwargs, **extra})
        else:
            model = auto_class.from_pretrained(source, **{**from_pretrained_kwargs(candidate, device), **extra})
    model.eval()
    _check_quantized(model, candidate)
    kv_cache.apply_generation_config(model, candidate)
    kv_cache.apply_stop_check(model, candidate)
    scope_inductor_settings(model, get_method(candidate.quantization).inductor_settings)
    if plan is not None:
        model.autotune_offload = plan  # the worker records it with the measured offloaded_gib
    if device == "cpu":
        _copy_out_of_checkpoint_mmap(model)
    if candidate.compile:
        quantizer = getattr(model, "hf_quantizer", None)
        if quantizer is not None and not quantizer.is_compileable:
            raise NotImplementedError(
                f"{candidate.quantization} is not compileable in transformers; generate() would silently run eagerly"
            )
    return model, load_tokenizer(ref, source)


_CONVERSION_FAILED = "issues during automatic conversion of the weights"
# The exception line of a traceback in transformers' load report ("AssertionError: Torch not
# compiled with CUDA enabled"); the report's own "Error: <op> on tensors destined for ..." is not one.
_EXCEPTION_LINE = re.compile(r"^\s*((?:[A-Za-z_]\w*\.)*[A-Za-z_]\w*(?:Error|Exception)): (.+)$")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


class _Reports(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 — a record that cannot be formatted says nothing about the cause
            return
        if "CONVERSION" in message:
            self.messages.append(message)


def conversion_cause(reports: list[str]) -> str | None:
    """The first quantizer error in transformers' load reports, as 'Type: message', or None."""
    for report in reports:
        for line in _ANSI.sub("", report).splitlines():
            m = _EXCEPTION_LINE.match(line)
            if m and m.group(1) != "Error":
                return f"{m.group(1)}: {m.group(2).strip()}"
    return None


def _check_quantized(model, candidate: Candidate) -> None:
    """A quantizing load that left every linear layer a plain parameter measured the unquantized
    model under the quantization's name (torchao skips a layer whose input size is not a multiple
    of its group size, 128 for int4wo: every layer of a small model): unsupported, with why."""
    if candidate.quantization == "none":
        return
    import torch

    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    if linears and all(type(m.weight) is torch.nn.Parameter for m in linears):
        raise QuantizationLoadError(
            f"{candidate.quantization}: no linear layer of this model was quantized (e.g. input sizes not a "
            f"multiple of the method's group size); the candidate would measure the unquantized model")


@contextlib.contextmanager
def _conversion_failures(candidate: Candidate):
    """A quantizing load that fails to convert its weights raises QuantizationLoadError with the
    quantizer's own error (or torch.OutOfMemoryError, when that was the cause) instead of
    transformers' generic RuntimeError. Other loads and other errors pass through unchanged."""
    if candidate.quantization == "none":
        yield
        return
    handler = _Reports()
    logger = logging.getLogger("transformers")
    logger.addHandler(handler)
    try:
        yield
    except RuntimeError as e:
        if _CONVERSION_FAILED not in str(e):
            raise
        cause = conversion_cause(handler.messages)
        if cause is not None and ("OutOfMemoryError" in cause.split(":")[0] or "out of memory" in cause):
            import torch

            raise torch.OutOfMemoryError(f"{candidate.quantization} while converting the weights: {cause}") from e
        raise QuantizationLoadError(
            f"{candidate.quantization}: the weights could not be quantized here: "
            f"{cause or 'the cause is in the CONVERSION entries of the load report in the worker log'}") from e
    finally:
        logger.removeHandler(handler)


def _copy_out_of_checkpoint_mmap(model) -> None:
    """On CPU, safetensors leaves unquantized weights as views of the memory-mapped checkpoint,
    and a quantizing load keeps the whole file mapped. Process RSS then counts file pages by
    accident of how they were read (an nf4 model looked bigger than the fp32 one). Copying plain
    parameters into process memory, as a GPU load does, makes the peak memory of candidates
    comparable; the mapping is released once nothing refers to it."""
    import torch

    with torch.no_grad():
        for module in model.modules():
            for name, param in list(module.named_parameters(recurse=False)):
                if type(param) is torch.nn.Parameter:
                    param.data = param.data.clone()
            for name, buf in list(module.named_buffers(recurse=False)):
                if buf is not None:
                    module._buffers[name] = buf.clone()


def load_tokenizer(ref: ModelRef, source: str):
    if ref.kind == "random":
        return None  # shape-only models have no vocabulary files; measurement uses token ids
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError) as e:
        raise DeploymentFileError(f"cannot load the tokenizer of {source}: {e}") from e
