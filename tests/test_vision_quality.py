"""Quality of vision-language models and image rerankers inside a study, on a small complete VL
checkpoint (tests/vl_checkpoint.py): image prompts built like the Qwen-VL processors build them,
quality measured per load and input resolution, fidelity by teacher forcing with the images in
the prompt, and a damaged load rejected by the floor."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from autotune.data import load_validation_set
from autotune.data.synthetic_images import bundled_image_rerank_set, bundled_vision_set
from autotune.measure.prompting import Prompter, sample_frames
from autotune.models import resolve_model
from tests.conftest import assert_ok, cli_env, read_records, run_cli, write_space
from tests.vl_checkpoint import build_tiny_vl_checkpoint

LOW, HIGH = 12544, 50176  # max_pixels: 16 and 64 visual tokens for the bundled 448x448 images


@pytest.fixture(scope="module")
def vl_checkpoint(tmp_path_factory) -> Path:
    return build_tiny_vl_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny-vl")


def _prompter(checkpoint: Path, max_pixels: int | None, data: Path) -> Prompter:
    from transformers import AutoTokenizer

    from autotune.vision import build_image_processor

    ref = resolve_model(str(checkpoint))
    processor = build_image_processor(ref, str(checkpoint), max_pixels)
    return Prompter(AutoTokenizer.from_pretrained(checkpoint), ref.config(), processor, max_pixels, None, data.parent)


def test_image_prompt_holds_as_many_image_tokens_as_the_processor_makes(vl_checkpoint: Path) -> None:
    example = load_validation_set(bundled_vision_set())[0]
    config = resolve_model(str(vl_checkpoint)).config()
    counts = []
    for max_pixels in (LOW, HIGH):
        prompt = _prompter(vl_checkpoint, max_pixels, bundled_vision_set()).example(example)
        t, h, w = prompt.visual["image_grid_thw"][0].tolist()
        image_tokens = prompt.ids.count(config["image_token_id"])
        assert image_tokens == t * h * w // 4 and prompt.ids.count(config["vision_start_token_id"]) == 1
        counts.append(image_tokens)
    assert counts == [LOW // 28**2, HIGH // 28**2]  # 448x448 images: exactly the bound, 28x28 px per token


def test_frames_are_sampled_evenly() -> None:
    frames = list("abcdefgh")
    assert sample_frames(frames, 4) == (["a", "c", "f", "h"], [0, 2, 5, 7])
    assert sample_frames(frames, None)[0] == frames and sample_frames(frames, 20)[0] == frames


@pytest.fixture(scope="module")
def vl_quality_study(vl_checkpoint: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("vl-quality")
    space = write_space(out.parent / "vl-space.yaml", dtype=["fp32", "bf16"], attn_implementation=["sdpa"], batch_size=[1],
                        max_length=[256], new_tokens=4, max_pixels=[LOW, HIGH], images_per_prompt=[1], image_size="448x448")
    env = cli_env(AUTOTUNE_FAULTS=json.dumps({"perturb_dtype": "bf16", "perturb_scale": 0.5}))
    assert_ok(run_cli("tune", "--model", str(vl_checkpoint), "--space", str(space), "--trials", "6", "--min-quality", "0.9",
                      "--quality-metric", "top1_agreement", "--quality-examples", "4", "--out", str(out), "--device", "cpu",
                      env=env))
    return out


@pytest.mark.slow
def test_vl_quality_is_measured_per_resolution_against_the_highest(vl_quality_study: Path) -> None:
    recs = [r for r in read_records(vl_quality_study) if r.state != "duplicate" and r.outcome.quality is not None]
    by_key = {(r.candidate.dtype, r.candidate.max_pixels): r.outcome.quality for r in recs}
    assert set(by_key) == {("fp32", LOW), ("fp32", HIGH), ("bf16", LOW), ("bf16", HIGH)}
    reference = by_key[("fp32", HIGH)]  # highest precision at the highest resolution
    assert reference.top1_agreement == 1.0 and reference.kl_mean == pytest.approx(0.0, abs=1e-5)
    low_res = by_key[("fp32", LOW)]
    assert low_res.kl_mean > 0.01  # a quarter of the visual tokens changes the answers' distributions
    assert low_res.n == reference.n >= 3  # the same answers, teacher-forced after each resolution's image tokens


@pytest.mark.slow
def test_damaged_vl_load_fails_the_floor(vl_quality_study: Path) -> None:
    recs = [r for r in read_records(vl_quality_study) if r.state != "duplicate"]
    damaged = [r for r in recs if r.candidate.dtype == "bf16"]
    assert damaged
    for r in damaged:
        assert r.state == "low_quality" and r.constraints["quality_below_floor"] > 0
        assert r.outcome.quality.top1_agreement < 0.5 and r.outcome.quality.kl_mean > 1.0
    best = [r for r in recs if r.state == "measured"]
    assert best and all(r.candidate.dtype == "fp32" for r in best)


@pytest.mark.slow
def test_image_reranker_quality_scores_image_documents(vl_checkpoint: Path, tmp_path: Path) -> None:
    """An image reranking study: NDCG@10 over image documents (the bundled image set is the default
    for a vision reranker), fidelity on the yes/no position, and a damaged load far from it."""
    space = write_space(tmp_path / "space.yaml", dtype=["fp32", "bf16"], attn_implementation=["sdpa"], batch_size=[2],
                        max_length=[256], new_tokens=2, max_pixels=[LOW], images_per_prompt=[1], image_size="448x448")
    env = cli_env(AUTOTUNE_FAULTS=json.dumps({"perturb_dtype": "bf16", "perturb_scale": 0.5}))
    out = tmp_path / "out"
    assert_ok(run_cli("tune", "--model", str(vl_checkpoint), "--kind", "reranker", "--space", str(space), "--trials", "2",
                      "--min-quality", "abs:0.01", "--quality-examples", "4", "--out", str(out), "--device", "cpu", env=env))
    recs = {r.candidate.dtype: r for r in read_records(out) if r.state != "duplicate"}
    fp32, bf16 = recs["fp32"].outcome.quality, recs["bf16"].outcome.quality
    assert fp32.metric == "ndcg@10" and fp32.n == 4 and 0 < fp32.score <= 1
    assert fp32.kl_mean == pytest.approx(0.0, abs=1e-5) and fp32.top1_agreement == 1.0
    # The damaged load judges the image documents differently (the healthy one: KL 0, top-1 1.0).
    assert bf16.kl_mean > 0.3 and bf16.top1_agreement < 1.0
    assert recs["fp32"].outcome.measurement.throughput_unit == "pairs/s"
    examples = load_validation_set(bundled_image_rerank_set())
    assert examples[0].document_type == "image"
