"""Predicted peak memory of a candidate, from the model config alone (no torch, no load).

    peak ≈ weights + KV cache + α · activation workspace + β

- weights: decoder (and vision-tower) linear layers at the quantization's bytes per weight,
  embeddings / norms / lm_head at the dtype's bytes (bitsandbytes leaves those unquantized);
- KV cache: 2 × layers × kv_heads × head_dim × dtype bytes per token, × batch × max_length (the
  claimed worst case keeps every token); none on the device for an offloaded cache (it lives in
  host memory), the quantized bits for a quantized one;
- activation workspace: the prefill's largest transient tensors for one layer (MLP intermediate,
  and the batch × heads × prompt² score matrix of eager attention, which sdpa/flash avoid), for
  a chunk of prefill_chunk_size tokens per sequence where the prefill is chunked.

weights + KV cache is a *lower bound*: whatever else the run allocates comes on top. A candidate
whose lower bound exceeds the budget by a clear margin cannot fit, and is recorded as infeasible
(predicted) without loading anything. The bound errs low on purpose (4-bit weights counted without
their quantization constants, vision layers at quantized size), so it never rejects a candidate
that would have fit.

α and β are calibrated online by least squares over the trials measured so far (β absorbs what the
config does not show: the CUDA workspace, allocator rounding, on CPU the runtime's own memory).
Each trial stores the prediction made *before* it ran, so the study's prediction error is honest.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from autotune.dtypes import DTYPES
from autotune.kv_cache import kv_bytes_factor
from autotune.quant import QUANTIZATION_METHODS

if TYPE_CHECKING:  # annotations only: spec imports models, whose random_checkpoint_bytes imports this module
    from autotune.spec import Candidate

GIB = 2**30
# Bytes per element of each dtype, and per weight of quantized linear layers (lower bounds, see
# each method's `bytes_per_weight`): the registries own them.
# "Cannot fit" needs the lower bound this far over the budget: the bound is exact for the weights
# and the KV cache only up to small tensors (norms, biases, rounding).
CLEAR_MARGIN = 0.05
DEFAULT_OVERHEAD_GIB = {"cuda": 0.25, "cpu": 0.6}  # β before any trial is measured


@dataclass(frozen=True)
class ModelShape:
    """What memory depends on, read from a config.json (text config for vision-language models)."""

    linear_params: int  # weights of the decoder's (and vision tower's) linear layers: quantizable
    other_params: int  # embeddings, an untied lm_head, norms: kept at the dtype
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    hidden: int
    intermediate: int
    vocab: int

    @property
    def params(self) -> int:
        return self.linear_params + self.other_params

    @classmethod
    def from_config(cls, config: dict) -> ModelShape | None:
        """None for architectures the formula does not describe (e.g. mixture-of-experts)."""
        text = config.get("text_config") or config
        try:
            hidden, layers, heads = int(text["hidden_size"]), int(text["num_hidden_layers"]), int(text["num_attention_heads"])
            intermediate, vocab = int(text["intermediate_size"]), int(text["vocab_size"])
        except (KeyError, TypeError, ValueError):
            return None
        if any(key in text for key in ("num_experts", "num_local_experts", "n_routed_experts")):
            return None
        kv_heads = int(text.get("num_key_value_heads") or heads)
        head_dim = int(text.get("head_dim") or hidden // heads)
        attention = hidden * heads * head_dim + 2 * hidden * kv_heads * head_dim + heads * head_dim * hidden
        mlp = 3 * hidden * intermediate  # gated MLP: gate, up, down
        linear = layers * (attention + mlp) + _vision_linear_params(config.get("vision_config") or {})
        tied = bool(text.get("tie_word_embeddings", config.get("tie_word_embeddings", False)))
        other = vocab * hidden * (1 if tied else 2) + layers * 2 * hidden + hidden
        return cls(linear, other, layers, heads, kv_heads, head_dim, hidden, intermediate, vocab)


def _vision_linear_params(vision: dict) -> int:
    """The vision tower's transformer blocks (qkv, proj, a two-layer MLP), a lower bound: Qwen2.5-VL's
    gated MLP has a third matrix and the patch merger is left out."""
    if not vision:
        return 0
    depth = int(vision.get("depth") or vision.get("num_hidden_layers") or 0)
    width = int(vision.get("embed_dim") or vision.get("hidden_size") or 0)
    mlp = int(vision.get("intermediate_size") or width * float(vision.get("mlp_ratio") or 4))
    return depth * (4 * width * width + 2 * width * mlp)


def weight_bytes(shape: ModelShape, cand: Candidate) -> float:
    dtype = DTYPES[cand.dtype].bytes_per_element
    linear = QUANTIZATION_METHODS[cand.quantization].bytes_per_weight or dtype
    return shape.linear_params * linear + shape.other_params * dtype


def largest_layer_bytes(shape: ModelShape, cand: Candidate) -> float:
    """One decoder layer or the embedding, whichever is larger, at the dtype (no quantization with offload)."""
    layer = (2 * shape.hidden * shape.heads * shape.head_dim + 2 * shape.hidden * shape.kv_heads * shape.head_dim
             + 3 * shape.hidden * shape.intermediate)
    return max(layer, shape.vocab * shape.hidden) * DTYPES[cand.dtype].bytes_per_element


def gpu_weight_bytes(shape: ModelShape, cand: Candidate) -> float:
    """The weights on the GPU. With cpu_offload_gib = N, the loader keeps at least N GiB and less
    than N GiB plus one layer on the host (loading.OffloadPlan); N plus two of the largest layers
    off keeps this a lower bound."""
    weights = weight_bytes(shape, cand)
    if not cand.cpu_offload_gib:
        return weights
    return max(0.0, weights - cand.cpu_offload_gib * GIB - 2 * largest_layer_bytes(shape, cand))


def kv_cache_bytes(shape: ModelShape, cand: Candidate) -> float:
    """On the device: none of an offloaded cache (host memory), a quantized one at its bits."""
    per_token = 2 * shape.layers * shape.kv_heads * shape.head_dim * kv_bytes_factor(cand, DTYPES[cand.dtype].bytes_per_element)
    return per_token * cand.batch_size * cand.max_length


def activation_bytes(shape: ModelShape, cand: Candidate) -> float:
    """The prefill's largest transient tensors for one layer (they are freed layer by layer)."""
    dtype = DTYPES[cand.dtype].bytes_per_element
    # Chunked prefill runs at most prefill_chunk_size tokens of each sequence per forward pass,
    # each chunk's queries against the keys so far (at most the whole prompt).
    chunk = min(cand.prompt_tokens, cand.prefill_chunk_size or cand.prompt_tokens)
    tokens = cand.batch_size * chunk
    mlp = tokens * (2 * shape.intermediate + 2 * shape.hidden) * dtype  # gate and up outputs, residual
    scores = cand.batch_size * shape.heads * chunk * cand.prompt_tokens * dtype * 2 if cand.attn_implementation == "eager" else 0
    logits = cand.batch_size * shape.vocab * 4  # the last position's logits, in fp32
    return mlp + scores + logits


def lower_bound_gib(shape: ModelShape, cand: Candidate) -> float:
    """Per GPU: the budget and the measured peak are per GPU, and of a model spread over N GPUs
    the fullest one holds at least 1/N of the weights and KV cache. Offloaded weights do not count."""
    return (gpu_weight_bytes(shape, cand) + kv_cache_bytes(shape, cand)) / GIB / cand.num_gpus


@dataclass(frozen=True)
class Calibration:
    """measured peak ≈ lower bound + alpha · activations + beta (GiB), fitted on measured trials."""

    alpha: float
    beta_gib: float
    n: int

    def predict_gib(self, shape: ModelShape, cand: Candidate) -> float:
        return lower_bound_gib(shape, cand) + self.alpha * activation_bytes(shape, cand) / GIB + self.beta_gib


def calibrate(shape: ModelShape, measured: list[tuple[Candidate, float]], device_type: str) -> Calibration:
    """Least squares of the residual (measured − lower bound) on the activation estimate, with
    α, β ≥ 0. Before two distinct activation sizes are measured, α = 1 and β is the mean residual
    (or a default)."""
    residuals = [(activation_bytes(shape, c) / GIB, peak - lower_bound_gib(shape, c)) for c, peak in measured]
    if not residuals:
        return Calibration(1.0, DEFAULT_OVERHEAD_GIB["cuda" if device_type == "cuda" else "cpu"], 0)
    n = len(residuals)
    mean_x = sum(x for x, _ in residuals) / n
    mean_y = sum(y for _, y in residuals) / n
    var_x = sum((x - mean_x) ** 2 for x, _ in residuals)
    if var_x <= 1e-12:
        return Calibration(1.0, max(0.0, mean_y - mean_x), n)
    alpha = max(0.0, sum((x - mean_x) * (y - mean_y) for x, y in residuals) / var_x)
    return Calibration(alpha, max(0.0, mean_y - alpha * mean_x), n)


def predicted_infeasible_reason(shape: ModelShape, cand: Candidate, budget_gib: float) -> str | None:
    """Why the candidate cannot fit the budget, by the lower bound alone; None if it might."""
    bound = lower_bound_gib(shape, cand)
    if bound <= budget_gib * (1 + CLEAR_MARGIN):
        return None
    weights, kv = gpu_weight_bytes(shape, cand) / GIB, kv_cache_bytes(shape, cand) / GIB
    spread = f" over {cand.num_gpus} GPUs = {bound:.2f} GiB per GPU" if cand.num_gpus > 1 else f" = {bound:.2f} GiB"
    where = f" on the GPU (at most {weight_bytes(shape, cand) / GIB - weights:.2f} GiB offloaded)" if cand.cpu_offload_gib else ""
    return (f"predicted: weights {weights:.2f} GiB{where} + KV cache {kv:.2f} GiB (batch {cand.batch_size} × {cand.max_length} "
            f"tokens){spread}, over the {budget_gib:.2f} GiB budget before any activation")


@dataclass(frozen=True)
class PredictionError:
    n: int
    median_abs_pct: float
    worst_abs_pct: float


def prediction_error(pairs: list[tuple[float, float]]) -> PredictionError | None:
    """(predicted, measured) GiB pairs -> median and worst absolute relative error, in percent."""
    errors = sorted(abs(p - m) / m * 100 for p, m in pairs if m > 0)
    if not errors:
        return None
    mid = len(errors) // 2
    median = errors[mid] if len(errors) % 2 else (errors[mid - 1] + errors[mid]) / 2
    return PredictionError(len(errors), median, errors[-1])
