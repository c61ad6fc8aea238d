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
    if candidate.compile:
        quantizer = getattr(model, "hf_quantizer", None)
        if quantizer is not None and not quantizer.is_compileable:
            raise NotImplementedError(
                f"{candidate.quantization} is not compileable in transformers; generate() would silently run eagerly"
            )
    return model, load_tokenizer(ref, source)


def load_tokenizer(ref: ModelRef, source: str):
    if ref.kind == "random":
        return None  # shape-only models have no vocabulary files; measurement uses token ids
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError) as e:
        raise DeploymentFileError(f"cannot load the tokenizer of {source}: {e}") from e
