"""GPU tests (marked `gpu`, skipped without CUDA): run on the GPU machine with `pytest -m gpu`.

They use a small random-weight Qwen2 built from the bundled tiny config, so they need no download.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from autotune import load_deployment
from autotune.spec import DeploymentConfig
from tests.conftest import assert_ok, read_records, run_cli, write_space

pytestmark = pytest.mark.gpu


def test_gpu_study_with_budget_quantization_and_unsupported(tmp_path: Path) -> None:
    space = write_space(tmp_path / "space.yaml", dtype=["bf16", "fp16"], quantization=["none", "bnb-nf4", "bnb-int8"],
                        attn_implementation=["sdpa", "eager", "flash_attention_2"], batch_size=[1, 8], max_length=[64])
    out = tmp_path / "out"
    result = run_cli("tune", "--model", "tiny-qwen2", "--random-weights", "--space", str(space), "--trials", "10",
                     "--memory-budget", "8GiB", "--out", str(out), "--device", "cuda:0")
    assert_ok(result)
    recs = [r for r in read_records(out) if r.state != "duplicate"]
    measured = [r for r in recs if r.state == "measured"]
    assert measured
    for r in measured:
        m = r.outcome.measurement
        assert m.peak_reserved_gib is not None and m.peak_allocated_gib <= m.peak_reserved_gib
        assert m.nvml_peak_used_gib is not None and m.nvml_peak_used_gib >= m.peak_reserved_gib
    config = DeploymentConfig.model_validate(yaml.safe_load((out / "best.yaml").read_text()))
    assert config.fingerprint.driver and config.fingerprint.cuda
    model, tokenizer, kwargs = load_deployment(out / "best.yaml")
    assert tokenizer is None  # random weights carry no vocabulary
    assert str(model.device).startswith("cuda")


def test_real_cuda_oom_under_budget_is_infeasible(tmp_path: Path) -> None:
    # Qwen3-8B shapes in bf16 need ~16 GiB of weights: under a 4 GiB budget the load itself OOMs.
    # The tiny model at batch 4096 x 2048 tokens needs far more than 1 GiB of activations.
    # --no-memory-model: its lower bound would answer batch 4096 without running it (no real OOM).
    space = write_space(tmp_path / "space.yaml", dtype=["bf16"], attn_implementation=["eager"], batch_size=[1, 4096],
                        max_length=[2048], new_tokens=4)
    out = tmp_path / "out"
    result = run_cli("tune", "--model", "tiny-qwen2", "--random-weights", "--space", str(space), "--trials", "2",
                     "--memory-budget", "1GiB", "--no-memory-model", "--out", str(out), "--device", "cuda:0")
    assert_ok(result)
    recs = {r.candidate.batch_size: r for r in read_records(out) if r.state != "duplicate"}
    assert recs[4096].state == "infeasible" and recs[4096].outcome.status == "oom"
    assert "OutOfMemoryError" in recs[4096].outcome.reason
    assert recs[1].state == "measured"


def test_reserved_peak_is_this_windows_own() -> None:
    """A small candidate measured after a big one must not inherit the allocator's cached blocks."""
    import torch

    from autotune.measure.memory import MemoryTracker

    with MemoryTracker("cuda:0") as big:
        block = torch.empty(2 * 2**30, dtype=torch.uint8, device="cuda:0")
        del block  # freed to torch's cache, still reserved
    with MemoryTracker("cuda:0") as small:
        torch.empty(16 * 2**20, dtype=torch.uint8, device="cuda:0")
    assert big.result().peak_reserved_gib >= 2.0
    assert small.result().peak_reserved_gib < 0.5


def test_gpu_vision_study_with_quality_video_and_vision_attention(tmp_path: Path) -> None:
    """A small complete VL checkpoint on the GPU: image + video requests, the vision tower's own
    attention kernel as a knob, and quality (teacher-forced with the images on the GPU) per
    resolution against the highest-resolution bf16 load."""
    from tests.vl_checkpoint import build_tiny_vl_checkpoint

    checkpoint = build_tiny_vl_checkpoint(tmp_path / "tiny-vl")
    space = write_space(tmp_path / "space.yaml", dtype=["bf16"], quantization=["none", "bnb-nf4"], attn_implementation=["sdpa"],
                        vision_attn_implementation=["sdpa", "eager"], batch_size=[2], max_length=[1024], new_tokens=4,
                        max_pixels=[12544, 50176], images_per_prompt=[1], video_frames=[4], image_size="448x448")
    out = tmp_path / "out"
    assert_ok(run_cli("tune", "--model", str(checkpoint), "--space", str(space), "--trials", "8", "--quality-metric",
                      "top1_agreement", "--quality-examples", "4", "--out", str(out), "--device", "cuda:0"))
    recs = [r for r in read_records(out) if r.state == "measured"]
    assert {r.candidate.vision_attn_implementation for r in recs} == {"sdpa", "eager"}
    for r in recs:
        assert r.outcome.measurement.visual_tokens_per_request > 0 and r.outcome.quality is not None
        assert r.outcome.measurement.peak_reserved_gib is not None
    reference = [r.outcome.quality for r in recs if r.candidate.quantization == "none" and r.candidate.max_pixels == 50176
                 and r.candidate.vision_attn_implementation == "sdpa"]
    assert not reference or reference[0].top1_agreement == 1.0


def test_random_checkpoint_and_int8_copy_built_in_ram_on_a_gpu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """On a GPU host the rebuildable builds go to the RAM folder, and a load reads them from there."""
    from autotune.loading import ensure_prequantized, load_model_for_trial, prequantized_dir
    from autotune.models import materialize, resolve_model
    from autotune.spec import Candidate

    monkeypatch.setenv("AUTOTUNE_CACHE_DIR", str(tmp_path / "disk"))
    monkeypatch.setenv("AUTOTUNE_SCRATCH_DIR", str(tmp_path / "ram"))
    ref = resolve_model("tiny-qwen2", random_weights=True)
    source = Path(materialize(ref, "cuda:0"))
    assert source.parent == tmp_path / "ram" / "random"
    cand = Candidate(dtype="fp16", quantization="bnb-int8", attn_implementation="sdpa", batch_size=1, max_length=32,
                     new_tokens=4)
    assert ensure_prequantized(ref, cand, "cuda:0") > 0
    copy = prequantized_dir(str(source), cand, "cuda:0")
    assert copy is not None and copy.parent == tmp_path / "ram" / "prequantized" and (copy / "config.json").is_file()
    model, _ = load_model_for_trial(ref, cand, "cuda:0")
    assert model.device.type == "cuda"
    assert not (tmp_path / "disk" / "random").exists() and not (tmp_path / "disk" / "prequantized").exists()
