"""Vision-language models and rerankers on CPU with tiny random-weight Qwen2-VL, Qwen2.5-VL and
Qwen3-VL models built from the bundled tiny configs: request building, visual-token counts,
video patches, and whole studies through the CLI."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from autotune.models import resolve_model
from autotune.spec import Candidate
from autotune.vision import (
    CandidateShapeError,
    build_batch,
    build_image_processor,
    preprocess,
    preprocess_video,
    synthetic_images,
    visual_tokens,
)
from tests.conftest import assert_ok, read_records, run_cli, write_space

VL_MODELS = ["tiny-qwen2-vl", "tiny-qwen2.5-vl", "tiny-qwen3-vl"]


def _cand(**kw) -> Candidate:
    base = dict(dtype="fp32", batch_size=2, max_length=512, new_tokens=4, max_pixels=200704, images_per_prompt=2,
                image_size="640x480")
    return Candidate(**{**base, **kw})


@pytest.mark.parametrize("name", VL_MODELS)
def test_visual_tokens_in_the_prompt_match_the_processor(name: str) -> None:
    ref = resolve_model(name, random_weights=True)
    config = ref.config()
    processor = build_image_processor(ref, "", 200704)
    cand = _cand()
    batch = build_batch(processor, config, cand, 151936, "cpu")
    # What the processor itself makes of one image, independently of build_batch.
    alone = preprocess(processor, synthetic_images(1, 640, 480))
    per_image = visual_tokens(alone["image_grid_thw"], processor.merge_size)[0]
    t, h, w = alone["image_grid_thw"][0].tolist()
    assert per_image == t * h * w // processor.merge_size**2 > 0
    image_tokens = (batch.input_ids == config["image_token_id"]).sum(dim=1)
    assert image_tokens.tolist() == [2 * per_image] * cand.batch_size
    assert batch.visual_tokens_per_request == 2 * per_image
    assert batch.input_ids.shape == (cand.batch_size, cand.prompt_tokens)  # the claimed length, exactly
    assert batch.model_inputs["pixel_values"].shape[0] == cand.batch_size * 2 * t * h * w


def test_resolution_bound_decides_the_token_count() -> None:
    ref = resolve_model("tiny-qwen2-vl", random_weights=True)
    counts = []
    for max_pixels in (50176, 200704, 802816):
        batch = build_batch(build_image_processor(ref, "", max_pixels), ref.config(),
                            _cand(max_pixels=max_pixels, images_per_prompt=1, image_size="1280x720", max_length=2048), 151936, "cpu")
        counts.append(batch.visual_tokens_per_request)
    assert counts == sorted(counts) and counts[0] < counts[-1]
    assert counts[0] * 28 * 28 <= 50176 and counts[-1] * 28 * 28 <= 802816  # a token is 28×28 px after merging


def test_images_that_do_not_fit_max_length_are_refused() -> None:
    ref = resolve_model("tiny-qwen2-vl", random_weights=True)
    with pytest.raises(CandidateShapeError, match="more than the"):
        build_batch(build_image_processor(ref, "", 1003520), ref.config(),
                    _cand(max_pixels=1003520, image_size="1280x720", max_length=256), 151936, "cpu")


def test_video_patches_follow_the_image_layout() -> None:
    """Two identical frames are one temporal patch, exactly what the image processor makes of one
    image (it repeats the image over the temporal patch): same grid, same numbers."""
    ref = resolve_model("tiny-qwen2.5-vl", random_weights=True)
    processor = build_image_processor(ref, "", 200704)
    frame = synthetic_images(1, 640, 480)[0]
    video = preprocess_video(processor, [frame, frame], 200704)
    image = preprocess(processor, [frame])
    assert video["video_grid_thw"].tolist() == image["image_grid_thw"].tolist()
    assert torch.equal(video["pixel_values_videos"], image["pixel_values"])
    # 5 frames are padded to 6 (temporal patch 2): 3 temporal steps.
    assert preprocess_video(processor, [frame] * 5, 200704)["video_grid_thw"][0, 0].item() == 3


@pytest.mark.parametrize("name", ["tiny-qwen2.5-vl", "tiny-qwen3-vl"])
def test_video_request_runs_through_the_model(name: str) -> None:
    """Qwen2.5-VL: one <start> video×n <end> block. Qwen3-VL: one timestamped block per temporal
    group of frames (4 frames, temporal patch 2: 2 groups); both run through generate()."""
    from transformers import AutoModelForImageTextToText

    from autotune.models import materialize

    ref = resolve_model(name, random_weights=True)
    config = ref.config()
    model = AutoModelForImageTextToText.from_pretrained(materialize(ref, "cpu"))
    cand = _cand(images_per_prompt=1, video_frames=4, video_size="320x240", batch_size=1)
    processor = build_image_processor(ref, "", 200704)
    batch = build_batch(processor, config, cand, 151936, "cpu")
    video_tokens = (batch.input_ids == config["video_token_id"]).sum().item()
    assert video_tokens > 0 and batch.visual_tokens_per_request > video_tokens
    blocks = (batch.input_ids == config["vision_start_token_id"]).sum().item()
    assert blocks == 1 + (2 if config["model_type"] == "qwen3_vl" else 1)  # the image's, then the video's
    t, h, w = batch.model_inputs["video_grid_thw"][0].tolist()
    assert t == 2 and video_tokens == t * h * w // processor.merge_size**2
    with torch.inference_mode():
        out = model.generate(input_ids=batch.input_ids, attention_mask=batch.attention_mask, **batch.model_inputs,
                             max_new_tokens=2, min_new_tokens=2, do_sample=False)
    assert out.shape == (1, cand.prompt_tokens + 2)


def test_qwen3_video_timestamps_match_the_processor() -> None:
    """The seconds autotune writes before each group of frames are what transformers' Qwen3-VL
    processor computes for the same frame indices and rate."""
    from transformers.models.qwen3_vl.processing_qwen3_vl import Qwen3VLProcessor

    from autotune.measure.prompting import qwen3_video_timestamps

    for indices, fps in (([0, 1, 2, 3], 2.0), ([0, 4, 8], 24.0), ([3, 9, 15, 21, 27], 1.5)):
        expected = Qwen3VLProcessor._calculate_timestamps(None, list(indices), fps, 2)
        assert qwen3_video_timestamps(indices, fps, 2) == pytest.approx(expected)


@pytest.mark.slow
@pytest.mark.parametrize("name", VL_MODELS)
def test_vision_study_over_resolution_batch_and_dtype(tmp_path: Path, name: str) -> None:
    space = write_space(tmp_path / "space.yaml", dtype=["fp32", "bf16"], attn_implementation=["sdpa"], batch_size=[1, 2],
                        max_length=[1024], new_tokens=4, max_pixels=[12544, 401408], images_per_prompt=[1], image_size="1280x720")
    out = tmp_path / "out"
    assert_ok(run_cli("tune", "--model", name, "--random-weights", "--space", str(space), "--trials", "8", "--out", str(out),
                      "--device", "cpu"))
    recs = [r for r in read_records(out) if r.state == "measured"]
    assert {r.candidate.max_pixels for r in recs} == {12544, 401408}
    tokens = {r.candidate.max_pixels: r.outcome.measurement.visual_tokens_per_request for r in recs}
    assert tokens[12544] < tokens[401408]
    for r in recs:
        m = r.outcome.measurement
        assert m.preprocess_s is not None and m.preprocess_s.median > 0
        assert m.requests_per_s_with_preprocessing.median < m.requests_per_s.median  # preprocessing costs time


@pytest.mark.slow
def test_higher_resolution_costs_memory_and_speed(tmp_path: Path) -> None:
    """Same model, batch and length; only the pixel bound changes (16 vs ~1,100 visual tokens)."""
    space = write_space(tmp_path / "space.yaml", dtype=["fp32"], attn_implementation=["sdpa"], batch_size=[2],
                        max_length=[1536], new_tokens=4, max_pixels=[12544, 1003520], images_per_prompt=[1], image_size="1280x720")
    out = tmp_path / "out"
    assert_ok(run_cli("tune", "--model", "tiny-qwen2-vl", "--random-weights", "--space", str(space), "--trials", "2",
                      "--out", str(out), "--device", "cpu"))
    by_px = {r.candidate.max_pixels: r.outcome.measurement for r in read_records(out) if r.state == "measured"}
    low, high = by_px[12544], by_px[1003520]
    assert high.visual_tokens_per_request > 50 * low.visual_tokens_per_request
    assert high.ttft_s.median > low.ttft_s.median
    assert high.preprocess_s.median > low.preprocess_s.median
    assert high.peak_memory_gib > low.peak_memory_gib


@pytest.mark.slow
def test_image_reranker_study_completes(tmp_path: Path) -> None:
    space = write_space(tmp_path / "space.yaml", dtype=["fp32", "bf16"], attn_implementation=["sdpa"], batch_size=[2, 4],
                        max_length=[512], new_tokens=2, max_pixels=[50176], images_per_prompt=[1], image_size="448x448")
    out = tmp_path / "out"
    result = run_cli("tune", "--model", "tiny-qwen2-vl", "--random-weights", "--kind", "reranker", "--space", str(space),
                     "--trials", "4", "--out", str(out), "--device", "cpu")
    assert_ok(result)
    recs = [r for r in read_records(out) if r.state == "measured"]
    assert recs
    for r in recs:
        m = r.outcome.measurement
        assert m.output_tokens_per_s is None and m.tpot_s is None  # nothing generated
        assert m.throughput_unit == "pairs/s" and m.requests_per_s.median > 0
        assert m.visual_tokens_per_request > 0
    assert "pairs/s" in result.stdout


@pytest.mark.slow
def test_text_reranker_on_the_embedded_model(tmp_path: Path) -> None:
    space = write_space(tmp_path / "space.yaml", dtype=["fp32"], attn_implementation=["sdpa"], batch_size=[4], max_length=[64])
    out = tmp_path / "out"
    assert_ok(run_cli("tune", "--kind", "reranker", "--space", str(space), "--trials", "1", "--out", str(out), "--device", "cpu"))
    (rec,) = [r for r in read_records(out) if r.state == "measured"]
    assert rec.outcome.measurement.requests_per_s.median > 0 and rec.outcome.measurement.decode_tokens_per_s is None


def test_vision_tower_attention_is_its_own_knob() -> None:
    from autotune.loading import load_model

    ref = resolve_model("tiny-qwen2.5-vl", random_weights=True)
    model, _ = load_model(ref, _cand(attn_implementation="sdpa", vision_attn_implementation="eager"), "cpu")
    assert model.config.vision_config._attn_implementation == "eager"
    assert model.config.text_config._attn_implementation == "sdpa"
    model, _ = load_model(ref, _cand(attn_implementation="eager", vision_attn_implementation="sdpa"), "cpu")
    assert model.config.vision_config._attn_implementation == "sdpa"
    assert model.config.text_config._attn_implementation == "eager"


def test_random_text_never_draws_a_vision_token() -> None:
    """With a small vocabulary the vision tokens sit among the ids random text is drawn from; a
    stray image placeholder would break the image-token count (M-RoPE then fails in generate)."""
    ref = resolve_model("tiny-qwen2-vl", random_weights=True)
    config = {**ref.config(), "vision_start_token_id": 60, "vision_end_token_id": 61, "image_token_id": 62, "video_token_id": 63}
    processor = build_image_processor(ref, "", 50176)
    batch = build_batch(processor, config, _cand(images_per_prompt=1, image_size="448x448", max_length=1024), 64, "cpu")
    assert (batch.input_ids == 62).sum(dim=1).tolist() == [batch.visual_tokens_per_request] * 2
    assert ((batch.input_ids == 60).sum(dim=1) == 1).all() and not (batch.input_ids == 63).any()
