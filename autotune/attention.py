"""The registry of attention kernels a candidate may load with (`attn_implementation`,
`vision_attn_implementation`), each entry owning its facts: what it needs to run, and, for
autotune's own kernels, the function transformers calls.

`sdpa_gqa` is autotune's own: PyTorch's scaled_dot_product_attention, with grouped-query
attention (GQA: fewer key/value heads than query heads, as in Qwen2.5 and Qwen3) packed for the
one-token decode step. transformers' "sdpa" lets the kernel share the key/value heads only
without an attention mask; with one (always, for a static KV cache, which is what compile
needs) it copies every key/value head to each of its query heads (`repeat_kv`) before the
kernel, in every layer and every decode step. transformers 5.25 packs eager decode steps itself
but not compiled ones (`pack_gqa`, skipped under dynamo); 5.17 never does. At batch 128 with
576-token sequences that copy is about 1 GB per layer per step for Qwen2.5-7B (7 query heads per
key/value head). Packing puts a key/value head's query heads where the query positions go:
query (batch, heads, 1, dim) -> (batch, kv_heads, heads_per_kv, dim); the mask of one query
position (batch, 1, 1, kv_len) broadcasts over them, the kernel reads each key/value head once,
and the answer is the same attention (tests/test_attention.py compares the logits with sdpa's).
Prefill (more than one query position) is sdpa's, unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from autotune.kv_cache import module_installed


@dataclass(frozen=True)
class AttentionKind:
    name: str  # the knob's value = the attn_implementation transformers loads with
    needs_cuda: bool = False
    package: str | None = None  # the module it imports (None: torch/transformers only)
    pip: str | None = None
    half_only: bool = False  # runs only in fp16/bf16
    vision: bool = True  # offered for a vision tower's attention as well
    forward: Callable[..., Any] | None = None  # autotune's own: the attention function to register

    def unsupported_reason(self, dtype: str, device_type: str) -> str | None:
        if self.needs_cuda and device_type != "cuda":
            return f"{self.name} needs a CUDA GPU"
        if self.package is not None and not module_installed(self.package):
            return f"{self.name}: the {self.pip} package is not installed (pip install {self.pip})"
        if self.half_only and dtype not in ("fp16", "bf16"):
            return f"{self.name} runs only in fp16/bf16"
        return None


def sdpa_gqa_attention_forward(module, query, key, value, attention_mask, dropout: float = 0.0,
                               scaling: float | None = None, **kwargs):
    """transformers' attention-function contract (see transformers' sdpa_attention_forward): query
    (batch, heads, q_len, dim), key/value (batch, kv_heads, kv_len, dim); returns the output as
    (batch, q_len, heads, dim) and no attention weights."""
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    groups = getattr(module, "num_key_value_groups", 1)
    batch, heads, q_len, dim = query.shape
    packable = (groups > 1 and q_len == 1 and kwargs.get("position_bias") is None and kwargs.get("softcap") is None
                and (attention_mask is None or attention_mask.shape[1] == 1))
    if not packable:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)
    packed = query.reshape(batch, heads // groups, groups, dim)
    out = torch.nn.functional.scaled_dot_product_attention(
        packed, key, value, attn_mask=attention_mask, dropout_p=dropout, scale=scaling, is_causal=False)
    return out.reshape(batch, heads, 1, value.shape[-1]).transpose(1, 2).contiguous(), None


ATTENTION_KINDS: dict[str, AttentionKind] = {k.name: k for k in (
    AttentionKind("sdpa"),
    AttentionKind("eager"),
    AttentionKind("flash_attention_2", needs_cuda=True, package="flash_attn", pip="flash-attn", half_only=True),
    # Only the language model's heads are grouped; a vision tower has none to pack.
    AttentionKind("sdpa_gqa", vision=False, forward=sdpa_gqa_attention_forward),
)}


def register_custom_attention() -> None:
    """Make autotune's own kernels loadable by name (idempotent): the attention function, and
    sdpa's mask, since they take the same mask."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

    for kind in ATTENTION_KINDS.values():
        if kind.forward is not None:
            AttentionInterface.register(kind.name, kind.forward)
            AttentionMaskInterface.register(kind.name, ALL_MASK_ATTENTION_FUNCTIONS["sdpa"])
