"""The bundled vision-language configs: the tiny ones build on CPU and run a real image end to end
(PIL image -> Qwen2-VL image processor -> forward and generate); the full-size ones load as the
right config class and have the public parameter counts (built on the meta device, no memory)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from autotune.models import BUNDLED_CONFIG_DIR, bundled_configs

# Image processor settings of each family's public preprocessor_config.json. transformers 5.x
# takes the pixel budget as size={"shortest_edge": MIN_PIXELS, "longest_edge": MAX_PIXELS}
# (min_pixels / max_pixels are still accepted by the constructor and folded into `size`).
QWEN2_PROCESSOR = dict(
    size={"shortest_edge": 3136, "longest_edge": 12845056},  # min_pixels, max_pixels
    patch_size=14,
    temporal_patch_size=2,
    merge_size=2,
)
QWEN3_PROCESSOR = dict(
    size={"shortest_edge": 65536, "longest_edge": 16777216},
    patch_size=16,
    temporal_patch_size=2,
    merge_size=2,
    image_mean=[0.5, 0.5, 0.5],
    image_std=[0.5, 0.5, 0.5],
)

TINY = {
    "tiny-qwen2-vl": ("Qwen2VLConfig", "Qwen2VLForConditionalGeneration", QWEN2_PROCESSOR),
    "tiny-qwen2.5-vl": ("Qwen2_5_VLConfig", "Qwen2_5_VLForConditionalGeneration", QWEN2_PROCESSOR),
    "tiny-qwen3-vl": ("Qwen3VLConfig", "Qwen3VLForConditionalGeneration", QWEN3_PROCESSOR),
}

# Public parameter counts (Hugging Face model cards / safetensors metadata).
FULL = {
    "qwen2.5-vl-3b-instruct": ("Qwen2_5_VLConfig", 3.75e9),
    "qwen2.5-vl-7b-instruct": ("Qwen2_5_VLConfig", 8.29e9),
    "qwen3-vl-8b-instruct": ("Qwen3VLConfig", 8.77e9),
    "qwen2-vl-72b-instruct": ("Qwen2VLConfig", 73.4e9),
}

PROMPT_BEFORE = [9707, 11, 1879]  # arbitrary text token ids
PROMPT_AFTER = [3838, 374, 419, 30]


def load_config(name: str):
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(BUNDLED_CONFIG_DIR / f"{name}.json")


def test_vl_configs_are_bundled() -> None:
    assert set(TINY) | set(FULL) <= set(bundled_configs())


@pytest.fixture(scope="module")
def image() -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (224, 224, 3), dtype=np.uint8), mode="RGB")


@pytest.mark.parametrize("name", sorted(TINY))
def test_tiny_vl_config_is_consistent(name: str) -> None:
    config_class, _, processor_kwargs = TINY[name]
    config = load_config(name)
    assert type(config).__name__ == config_class
    text, vision = config.text_config, config.vision_config
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    assert sum(text.rope_parameters["mrope_section"]) == head_dim // 2
    for token in ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id"):
        assert getattr(config, token) < text.vocab_size
    assert vision.patch_size == processor_kwargs["patch_size"]
    assert vision.spatial_merge_size == processor_kwargs["merge_size"]
    assert vision.temporal_patch_size == processor_kwargs["temporal_patch_size"]
    if config.model_type == "qwen3_vl":
        assert all(0 <= i < vision.depth for i in vision.deepstack_visual_indexes)
        assert vision.out_hidden_size == text.hidden_size
    elif config.model_type == "qwen2_5_vl":
        assert all(0 <= i < vision.depth for i in vision.fullatt_block_indexes)
        assert vision.out_hidden_size == text.hidden_size
    else:
        assert vision.hidden_size == text.hidden_size


@pytest.mark.parametrize("name", sorted(TINY))
def test_tiny_vl_forward_and_generate_with_a_real_image(name: str, image: Image.Image) -> None:
    from transformers import AutoModelForImageTextToText, Qwen2VLImageProcessorPil

    _, model_class, processor_kwargs = TINY[name]
    config = load_config(name)
    torch.manual_seed(0)
    model = AutoModelForImageTextToText.from_config(config).eval()
    assert type(model).__name__ == model_class
    assert sum(p.numel() for p in model.parameters()) < 20_000_000

    processor = Qwen2VLImageProcessorPil(**processor_kwargs)
    pixels = processor(images=[image], return_tensors="pt")
    grid = pixels["image_grid_thw"]
    assert grid.shape == (1, 3)
    n_image_tokens = int(grid.prod()) // processor.merge_size**2
    assert n_image_tokens == 64  # 224 px (256 px for Qwen3-VL's 65536-pixel minimum) -> 16x16 patches -> 8x8
    assert pixels["pixel_values"].shape == (
        int(grid.prod()),
        3 * processor.temporal_patch_size * processor.patch_size**2,
    )

    ids = (
        PROMPT_BEFORE
        + [config.vision_start_token_id]
        + [config.image_token_id] * n_image_tokens
        + [config.vision_end_token_id]
        + PROMPT_AFTER
    )
    input_ids = torch.tensor([ids])
    assert int((input_ids == config.image_token_id).sum()) == n_image_tokens
    inputs = dict(
        input_ids=input_ids,
        attention_mask=torch.ones_like(input_ids),
        pixel_values=pixels["pixel_values"],
        image_grid_thw=grid,
        # transformers 5 needs the modality of every token (0 text, 1 image, 2 video) for M-RoPE;
        # the Qwen processors return it, built by hand here.
        mm_token_type_ids=(input_ids == config.image_token_id).long(),
    )
    with torch.no_grad():
        out = model(**inputs)
    assert out.logits.shape == (1, len(ids), config.text_config.vocab_size)
    assert torch.isfinite(out.logits).all()

    generated = model.generate(**inputs, max_new_tokens=2, do_sample=False)
    assert generated.shape == (1, len(ids) + 2)
    assert torch.equal(generated[:, : len(ids)], input_ids)


@pytest.mark.parametrize("name", sorted(FULL))
def test_full_size_vl_config_parameter_count(name: str) -> None:
    from transformers import AutoModelForImageTextToText

    config_class, public = FULL[name]
    config = load_config(name)
    assert type(config).__name__ == config_class
    assert config.get_text_config().dtype == torch.bfloat16
    with torch.device("meta"):
        model = AutoModelForImageTextToText.from_config(config)
    count = sum(p.numel() for p in model.parameters())
    assert abs(count - public) <= 0.05 * public, f"{name}: {count / 1e9:.3f}B parameters, public figure {public / 1e9}B"
