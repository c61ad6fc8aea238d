"""load_deployment round trip on the real embedded model, including bitsandbytes nf4 and int8 on CPU."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from autotune import load_deployment, read_deployment
from autotune.errors import DeploymentFileError
from autotune.spec import DeploymentConfig
from tests.conftest import assert_ok, read_records, run_cli, write_space


@pytest.fixture(scope="module")
def quant_study(tmp_path_factory) -> Path:
    """A study over none / bnb-nf4 / bnb-int8 on CPU: real bitsandbytes quantization."""
    out = tmp_path_factory.mktemp("quant")
    space = write_space(out.parent / "quant-space.yaml", dtype=["fp32"], quantization=["none", "bnb-nf4", "bnb-int8"],
                        attn_implementation=["sdpa"], batch_size=[1])
    assert_ok(run_cli("tune", "--space", str(space), "--trials", "3", "--out", str(out), "--device", "cpu"))
    return out


@pytest.mark.slow
def test_bnb_nf4_and_int8_measure_on_cpu(quant_study: Path) -> None:
    recs = {r.candidate.quantization: r for r in read_records(quant_study) if r.state != "duplicate"}
    assert set(recs) == {"none", "bnb-nf4", "bnb-int8"}
    for r in recs.values():
        assert r.state == "measured", r.outcome.reason
        assert r.outcome.reloaded  # each quantization is its own load-key
    # 4-bit weights are smaller than fp32 ones: the process peak shows it.
    assert recs["bnb-nf4"].outcome.measurement.peak_memory_gib < recs["none"].outcome.measurement.peak_memory_gib


def _with_settings(src: Path, dst: Path, **settings) -> Path:
    raw = yaml.safe_load(src.read_text())
    raw["settings"].update(settings)
    dst.write_text(yaml.safe_dump(raw))
    return dst


@pytest.mark.slow
@pytest.mark.parametrize("quantization, layer", [("none", "Linear"), ("bnb-nf4", "Linear4bit"), ("bnb-int8", "Linear8bitLt")])
def test_load_deployment_round_trip(quant_study: Path, tmp_path: Path, quantization: str, layer: str) -> None:
    path = _with_settings(quant_study / "best.yaml", tmp_path / "best.yaml", quantization=quantization, attn_implementation="eager")
    model, tokenizer, generate_kwargs = load_deployment(path)
    config = read_deployment(path)
    assert model.dtype == torch.float32 or quantization != "none"
    assert model.config._attn_implementation == "eager"
    assert type(model.model.layers[0].self_attn.q_proj).__name__ == layer
    assert generate_kwargs == config.generate_kwargs
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**inputs, **{**generate_kwargs, "max_new_tokens": 8})
    answer = tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "Paris" in answer


@pytest.mark.slow
def test_deployment_file_from_the_future_is_refused(quant_study: Path, tmp_path: Path) -> None:
    raw = yaml.safe_load((quant_study / "best.yaml").read_text())
    raw["schema_version"] = 99
    path = tmp_path / "future.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(DeploymentFileError, match="newer than this autotune"):
        read_deployment(path)


def test_not_a_deployment_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "x.yaml"
    path.write_text("dtype: [fp32]\n")
    with pytest.raises(DeploymentFileError, match="not an autotune DeploymentConfig"):
        read_deployment(path)


@pytest.mark.slow
def test_best_yaml_is_a_valid_deployment_config(quant_study: Path) -> None:
    config = DeploymentConfig.model_validate(yaml.safe_load((quant_study / "best.yaml").read_text()))
    assert config.settings.quantization in {"none", "bnb-nf4", "bnb-int8"}
    assert config.fingerprint.bitsandbytes


def test_compile_with_a_non_compileable_quantizer_is_refused_at_load() -> None:
    """bnb-nf4 cannot be compiled by transformers: generate() would silently run eagerly, so the
    worker reports the candidate unsupported (NotImplementedError) instead of measuring a lie."""
    from autotune.loading import load_model
    from autotune.models import resolve_model
    from autotune.spec import Candidate

    cand = Candidate(dtype="fp32", quantization="bnb-nf4", compile=True, batch_size=1, max_length=32, new_tokens=4)
    with pytest.raises(NotImplementedError, match="not compileable"):
        load_model(resolve_model(None), cand, "cpu")
