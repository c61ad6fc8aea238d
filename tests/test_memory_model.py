"""The memory model: its lower bound against real parameter counts, its calibration, and a study
in which candidates predicted not to fit cost no load at all."""

from __future__ import annotations

from pathlib import Path

import pytest

from autotune.memory_model import (
    GIB,
    ModelShape,
    activation_bytes,
    calibrate,
    kv_cache_bytes,
    lower_bound_gib,
    predicted_infeasible_reason,
    prediction_error,
    weight_bytes,
)
from autotune.models import bundled_configs, resolve_model
from autotune.spec import Candidate
from tests.conftest import assert_ok, cli_env, read_records, run_cli, write_space


def _cand(**kw) -> Candidate:
    return Candidate(**{"dtype": "bf16", "batch_size": 4, "max_length": 1024, "new_tokens": 64, **kw})


@pytest.mark.parametrize("name", ["qwen2.5-7b-instruct", "qwen3-8b", "qwen2.5-vl-7b-instruct", "qwen3-vl-8b-instruct"])
def test_parameter_counts_are_a_tight_lower_bound(name: str) -> None:
    """Counted from the config without torch, against the real module tree (meta device)."""
    import torch
    from transformers import AutoConfig

    ref = resolve_model(name, random_weights=True)
    shape = ModelShape.from_config(ref.config())
    with torch.device("meta"):
        model = ref.auto_class().from_config(AutoConfig.from_pretrained(ref.source))
    linear = sum(m.weight.numel() for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and "lm_head" not in n)
    total = sum(p.numel() for p in model.parameters())
    assert 0.97 * linear <= shape.linear_params <= linear
    assert 0.97 * total <= shape.params <= total


def test_weights_and_kv_cache_by_hand() -> None:
    shape = ModelShape.from_config({"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
                                    "num_key_value_heads": 2, "intermediate_size": 128, "vocab_size": 1000,
                                    "tie_word_embeddings": True})
    # attention 64·64 + 2·64·32 + 64·64 = 12288, MLP 3·64·128 = 24576, per layer 36864
    assert shape.linear_params == 2 * 36864
    assert shape.other_params == 1000 * 64 + 2 * 2 * 64 + 64
    cand = _cand(dtype="fp32", batch_size=3, max_length=100, new_tokens=10)
    assert weight_bytes(shape, cand) == 4 * shape.params
    assert weight_bytes(shape, cand.model_copy(update={"quantization": "bnb-nf4"})) == 0.5 * 73728 + 4 * shape.other_params
    assert kv_cache_bytes(shape, cand) == 2 * 2 * 2 * 16 * 4 * 3 * 100  # K and V, layers, kv heads, head dim, fp32, batch, len
    eager, sdpa = (activation_bytes(shape, cand.model_copy(update={"attn_implementation": a})) for a in ("eager", "sdpa"))
    assert eager - sdpa == 3 * 4 * 90**2 * 4 * 2  # the score matrix eager materialises


def test_budget_verdict_only_past_a_clear_margin() -> None:
    shape = ModelShape.from_config(__import__("json").loads(bundled_configs()["qwen2.5-7b-instruct"].read_text()))
    bf16 = _cand(batch_size=1, max_length=1024)
    assert 14.0 < lower_bound_gib(shape, bf16) < 15.0  # 7.6B parameters in bf16
    reason = predicted_infeasible_reason(shape, bf16, 12.0)
    assert reason and reason.startswith("predicted:") and "over the 12.00 GiB budget" in reason
    assert predicted_infeasible_reason(shape, bf16, 24.0) is None
    assert predicted_infeasible_reason(shape, bf16.model_copy(update={"quantization": "bnb-nf4"}), 12.0) is None
    # at the budget (within the margin) the model does not decide: the measurement does
    assert predicted_infeasible_reason(shape, bf16, lower_bound_gib(shape, bf16) / 1.04) is None
    long = bf16.model_copy(update={"batch_size": 64, "max_length": 8192})  # 64 × 8192 tokens of KV cache
    assert predicted_infeasible_reason(shape, long.model_copy(update={"quantization": "bnb-nf4"}), 24.0) is not None


def test_calibration_recovers_the_overheads() -> None:
    shape = ModelShape.from_config(__import__("json").loads(bundled_configs()["qwen2.5-7b-instruct"].read_text()))
    cands = [_cand(batch_size=b, max_length=n) for b in (1, 8, 32) for n in (512, 2048)]
    truth = [(c, lower_bound_gib(shape, c) + 2.0 * activation_bytes(shape, c) / GIB + 0.4) for c in cands]
    cal = calibrate(shape, truth, "cuda")
    assert cal.alpha == pytest.approx(2.0, rel=1e-6) and cal.beta_gib == pytest.approx(0.4, abs=1e-6)
    assert calibrate(shape, [], "cuda").n == 0  # before any measurement: α = 1 and a default β
    error = prediction_error([(11.0, 10.0), (9.0, 10.0), (10.5, 10.0)])
    assert error.median_abs_pct == pytest.approx(10.0) and error.worst_abs_pct == pytest.approx(10.0) and error.n == 3


@pytest.mark.slow
def test_predicted_infeasible_candidates_cost_no_load(tmp_path: Path) -> None:
    """Qwen2.5-7B shapes under a 4 GiB budget on CPU: every candidate's weights alone exceed it, so
    the study answers all of them from the config — no worker loads anything, and the 15 GiB random
    checkpoint is never built (it would take minutes here)."""
    space = write_space(tmp_path / "space.yaml", dtype=["bf16"], quantization=["none", "bnb-nf4"], attn_implementation=["sdpa"],
                        batch_size=[1, 4], max_length=[256], new_tokens=4)
    out, cache = tmp_path / "out", tmp_path / "cache"
    result = run_cli("tune", "--model", "qwen2.5-7b-instruct", "--random-weights", "--space", str(space), "--trials", "4",
                     "--memory-budget", "3GiB", "--out", str(out), "--device", "cpu", env=cli_env(AUTOTUNE_CACHE_DIR=str(cache)))
    assert result.returncode == 1 and "no feasible config" in result.stdout, result.stdout + result.stderr  # nothing fits
    recs = [r for r in read_records(out) if r.state != "duplicate"]
    assert len(recs) == 4 and all(r.state == "infeasible" and r.outcome.predicted for r in recs)
    assert all(r.outcome.load_s == 0 and r.constraints["over_budget_gib"] > 0 for r in recs)
    assert not (cache / "models").exists() or not any((cache / "models").iterdir())
    assert "infeasible (predicted)" in result.stdout


@pytest.mark.slow
def test_every_run_trial_carries_its_prediction(tmp_path: Path) -> None:
    space = write_space(tmp_path / "space.yaml", dtype=["fp32"], attn_implementation=["sdpa", "eager"], batch_size=[1, 4],
                        max_length=[64], new_tokens=4)
    out = tmp_path / "out"
    result = run_cli("tune", "--model", "tiny-qwen2", "--random-weights", "--space", str(space), "--trials", "4", "--out", str(out),
                     "--device", "cpu")
    assert_ok(result)
    measured = [r for r in read_records(out) if r.state == "measured"]
    assert measured and all(r.outcome.predicted_peak_gib is not None for r in measured)
    assert "memory model: predicted peak within" in result.stdout
