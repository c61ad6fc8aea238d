"""Registry of model kinds: what a model does with its inputs, which decides how it is loaded,
fed and measured. Detected from the config (or given with --kind); add a kind by registering it.

- causal-lm: text in, generated text out (measured with generate()).
- image-text-to-text: Qwen2-VL / Qwen2.5-VL / Qwen3-VL through transformers' own classes; images
  (and video frames) in, generated text out.
- reranker: a query-document pair in, one score out: P("yes") against P("no") for the next token
  (Qwen3-VL-Reranker style); documents may be text or images.
"""

from __future__ import annotations

from dataclasses import dataclass

from autotune.errors import AutotuneError, unknown_name_message


@dataclass(frozen=True)
class ModelKind:
    name: str
    description: str
    generates: bool  # measured with generate() (else with one scoring forward pass)

    def auto_class_name(self, config: dict) -> str:
        """The transformers Auto class that loads this kind with this config."""
        return "AutoModelForImageTextToText" if "vision_config" in config else "AutoModelForCausalLM"


MODEL_KINDS: dict[str, ModelKind] = {}


def register(kind: ModelKind) -> ModelKind:
    MODEL_KINDS[kind.name] = kind
    return kind


register(ModelKind("causal-lm", "text generation", generates=True))
register(ModelKind("image-text-to-text", "image/video + text to text (Qwen2-VL, Qwen2.5-VL, Qwen3-VL)", generates=True))
register(ModelKind("reranker", "query-document relevance as P(yes) vs P(no) (Qwen3-VL-Reranker style)", generates=False))

# Vision-language architectures the vision knobs and the shape-only processor understand.
VISION_MODEL_TYPES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")


class KindError(AutotuneError):
    pass


def get_kind(name: str) -> ModelKind:
    try:
        return MODEL_KINDS[name]
    except KeyError:
        raise KindError(unknown_name_message("kind", name, MODEL_KINDS)) from None


def detect_kind(config: dict, name: str, explicit: str | None = None) -> str:
    """The kind given with --kind, else: 'reranker' when the model's name says so, 'image-text-to-text'
    for a config with a vision tower, 'causal-lm' otherwise."""
    if explicit is not None:
        kind = get_kind(explicit).name
        if kind == "image-text-to-text" and "vision_config" not in config:
            raise KindError(f"--kind image-text-to-text: {name} has no vision_config (a text-only model); drop --kind")
        return kind
    if "reranker" in name.lower():
        return "reranker"
    return "image-text-to-text" if "vision_config" in config else "causal-lm"
