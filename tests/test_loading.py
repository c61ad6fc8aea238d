"""The worker's loading path: the pre-quantized copy it keeps for bnb int8 holds exactly the
weights that quantizing while loading produces, and is only built once."""

from __future__ import annotations

import pytest
import torch

from autotune.loading import ensure_prequantized, load_model, load_model_for_trial, prequantized_dir
from autotune.models import materialize, resolve_model
from autotune.spec import Candidate

pytest.importorskip("bitsandbytes")


def _cand(quantization: str) -> Candidate:
    return Candidate(dtype="bf16", quantization=quantization, attn_implementation="sdpa", compile=False,
                     batch_size=1, max_length=16, new_tokens=2)


def test_int8_prequantized_copy_is_identical_and_built_once(tmp_path, monkeypatch):
    monkeypatch.setenv("AUTOTUNE_CACHE_DIR", str(tmp_path))
    ref = resolve_model("tiny-qwen2", random_weights=True)
    cand = _cand("bnb-int8")
    cached = prequantized_dir(materialize(ref, "cpu"), cand)
    assert cached is not None and not cached.exists()

    first, _ = load_model_for_trial(ref, cand, "cpu")  # no copy yet: quantizes while loading
    assert first.name_or_path != str(cached) and not cached.exists()
    assert ensure_prequantized(ref, cand, "cpu") > 0
    assert (cached / "config.json").is_file()
    assert ensure_prequantized(ref, cand, "cpu") == 0.0  # built once
    second, _ = load_model_for_trial(ref, cand, "cpu")
    assert second.name_or_path == str(cached)  # read from the copy, not quantized again
    plain, _ = load_model(ref, cand, "cpu")  # what load_deployment does: quantize while loading

    reference = plain.state_dict()
    for name, tensor in second.state_dict().items():
        assert torch.equal(tensor, reference[name]), name
    assert any(t.dtype == torch.int8 for t in second.state_dict().values())  # really quantized
    ids = torch.tensor([[1, 5, 9, 3, 7]])
    with torch.no_grad():
        assert torch.equal(second(ids).logits, plain(ids).logits)
        assert torch.equal(first(ids).logits, plain(ids).logits)


def test_methods_without_a_cache_and_non_directory_sources_keep_none(tmp_path):
    assert prequantized_dir(str(tmp_path), _cand("none")) is None
    assert prequantized_dir(str(tmp_path), _cand("bnb-nf4")) is None
    assert prequantized_dir("Qwen/Qwen2.5-7B-Instruct", _cand("bnb-int8")) is None
    assert prequantized_dir(str(tmp_path), _cand("bnb-int8")) is not None


def test_quantized_copy_for_a_gpu_goes_to_ram(tmp_path, monkeypatch):
    """On a GPU host the int8 copy is written to RAM (tmpfs) when it has room: it can be rebuilt."""
    monkeypatch.setenv("AUTOTUNE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("AUTOTUNE_SCRATCH_DIR", str(tmp_path / "ram"))
    source = tmp_path / "ckpt"
    source.mkdir()
    (source / "model.safetensors").write_bytes(b"\0" * 4096)
    assert prequantized_dir(str(source), _cand("bnb-int8"), "cuda:0").parent == tmp_path / "ram" / "prequantized"
    assert prequantized_dir(str(source), _cand("bnb-int8"), "cpu").parent == tmp_path / "cache" / "prequantized"
