"""Candidate -> from_pretrained kwargs and generate kwargs. The worker and load_deployment both
load through `load_model`, so a deployment loads exactly the way it was measured."""

from __future__ import annotations

from typing import Any

from autotune.errors import DeploymentFileError
from autotune.models import ModelRef, materialize
from autotune.quant import get_method
from autotune.spec import Candidate

TORCH_DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


def torch_dtype(name: str):
    import torch

    return getattr(torch, TORCH_DTYPES[name])


def from_pretrained_kwargs(candidate: Candidate, device: str) -> dict[str, Any]:
    dtype = torch_dtype(candidate.dtype)
    kwargs: dict[str, Any] = {
        "dtype": dtype,
        "attn_implementation": candidate.attn_implementation,
        # Load straight onto the device: bitsandbytes quantizes while loading, and a 7B model
        # must never be materialised in host memory first.
        "device_map": {"": device},
    }
    quant_config = get_method(candidate.quantization).build_config(dtype)
    if quant_config is not None:
        kwargs["quantization_config"] = quant_config
    return kwargs


def generate_kwargs(candidate: Candidate) -> dict[str, Any]:
    """What a deployment passes to generate(); the measurement uses the same plus exact lengths."""
    kwargs: dict[str, Any] = {"do_sample": False, "max_new_tokens": candidate.new_tokens}
    if candidate.compile:
        # A static cache is what makes transformers compile the forward pass inside generate().
        kwargs["cache_implementation"] = "static"
    return kwargs


def load_model(ref: ModelRef, candidate: Candidate, device: str):
    """Load the model (and tokenizer where the checkpoint has one) as the candidate says."""
    from transformers import AutoModelForCausalLM

    source = materialize(ref, device)
    model = AutoModelForCausalLM.from_pretrained(source, **from_pretrained_kwargs(candidate, device))
    model.eval()
    if device == "cpu":
        _copy_out_of_checkpoint_mmap(model)
    if candidate.compile:
        quantizer = getattr(model, "hf_quantizer", None)
        if quantizer is not None and not quantizer.is_compileable:
            raise NotImplementedError(
                f"{candidate.quantization} is not compileable in transformers; generate() would silently run eagerly"
            )
    return model, load_tokenizer(ref, source)


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
