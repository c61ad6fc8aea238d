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
    space = write_space(tmp_path / "space.yaml", dtype=["bf16"], attn_implementation=["eager"], batch_size=[1, 4096],
                        max_length=[2048], new_tokens=4)
    out = tmp_path / "out"
    result = run_cli("tune", "--model", "tiny-qwen2", "--random-weights", "--space", str(space), "--trials", "2",
                     "--memory-budget", "1GiB", "--out", str(out), "--device", "cuda:0")
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
