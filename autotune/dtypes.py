"""Registry of the weight/compute dtypes a candidate can load in. Each entry owns its facts, so
the loader, the memory model, the quality reference and the exporters read them here instead of
restating them: adding a dtype is one entry here (plus `DType` in spec.py, which a test keeps
equal to this registry, and a rule per exporter, which the coverage test asks for)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DTypeInfo:
    name: str  # the name in search spaces and best.yaml
    torch_name: str  # attribute of the torch module; also the name vLLM's and SGLang's --dtype take
    bytes_per_element: int
    precision_rank: int  # 0 = most faithful: the quality reference tries dtypes in this order


# Insertion order is the order names are listed in messages (as spec.DType lists them).
DTYPES: dict[str, DTypeInfo] = {
    d.name: d
    for d in (
        DTypeInfo("fp32", "float32", 4, 0),
        DTypeInfo("fp16", "float16", 2, 2),
        DTypeInfo("bf16", "bfloat16", 2, 1),
    )
}


def get_dtype(name: str) -> DTypeInfo:
    from autotune.errors import SpaceError, unknown_name_message

    try:
        return DTYPES[name]
    except KeyError:
        raise SpaceError(unknown_name_message("dtype", name, DTYPES)) from None


def dtype_from_torch_name(torch_name: str) -> str | None:
    """'bfloat16' -> 'bf16' (a checkpoint's config.json names its dtype the torch way); None if unknown."""
    return next((d.name for d in DTYPES.values() if d.torch_name == torch_name), None)
