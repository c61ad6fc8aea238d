"""The streaming safetensors writer writes the same file contents as safetensors' own writer, and
a checkpoint saved through it loads back bit for bit."""

from __future__ import annotations

import json
import struct

import pytest
import safetensors.torch
import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM

from autotune.checkpoint_io import save_checkpoint, streaming_save_file
from autotune.models import materialize, resolve_model


def _tensors() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "bf16": torch.randn(3, 5, generator=g).to(torch.bfloat16),
        "fp16": torch.randn(7, generator=g).half(),
        "fp32": torch.randn(2, 3, 4, generator=g),
        "int8": torch.randint(-128, 127, (9, 4), dtype=torch.int8, generator=g),
        "uint8": torch.randint(0, 255, (5,), dtype=torch.uint8, generator=g),
        "int64": torch.arange(6).reshape(2, 3),
        "bool": torch.tensor([True, False, True]),
        "scalar": torch.tensor(3.5),
        "empty": torch.zeros(0, 4),
        "transposed": torch.randn(4, 6, generator=g).t(),  # not contiguous
    }


def test_streaming_file_reads_back_like_safetensors_own(tmp_path):
    tensors = _tensors()
    ours, theirs = tmp_path / "ours.safetensors", tmp_path / "theirs.safetensors"
    streaming_save_file(tensors, ours, metadata={"format": "pt"})
    safetensors.torch.save_file({k: v.contiguous() for k, v in tensors.items()}, str(theirs), metadata={"format": "pt"})

    loaded, reference = safetensors.torch.load_file(str(ours)), safetensors.torch.load_file(str(theirs))
    assert loaded.keys() == tensors.keys()
    for name, tensor in tensors.items():
        assert loaded[name].dtype == tensor.dtype and loaded[name].shape == tensor.shape, name
        assert torch.equal(loaded[name], tensor), name
        assert torch.equal(loaded[name], reference[name]), name
    with safe_open(str(ours), "pt") as f:
        assert f.metadata() == {"format": "pt"}
    # Same payload size as safetensors' file; the header is 8-byte aligned as the format asks, and
    # every tensor starts at a multiple of its element size (wider dtypes first, as safetensors does).
    header_len = struct.unpack("<Q", ours.read_bytes()[:8])[0]
    assert header_len % 8 == 0
    assert ours.stat().st_size - 8 - header_len == theirs.stat().st_size - 8 - struct.unpack("<Q", theirs.read_bytes()[:8])[0]
    header = json.loads(ours.read_bytes()[8:8 + header_len])
    for name, tensor in tensors.items():
        assert header[name]["data_offsets"][0] % tensor.element_size() == 0, name


def test_transformers_writer_is_restored_when_saving_fails(tmp_path):
    import transformers.modeling_utils as modeling_utils

    original_writer = modeling_utils.safe_save_file

    class Broken:
        def save_pretrained(self, directory):
            assert modeling_utils.safe_save_file is streaming_save_file  # swapped while saving
            raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(Broken(), tmp_path)
    assert modeling_utils.safe_save_file is original_writer


def test_save_checkpoint_matches_save_pretrained_and_restores_the_writer(tmp_path, monkeypatch):
    import transformers.modeling_utils as modeling_utils

    monkeypatch.setenv("AUTOTUNE_CACHE_DIR", str(tmp_path / "cache"))
    source = materialize(resolve_model("tiny-qwen2", random_weights=True), "cpu")
    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.bfloat16)
    original_writer = modeling_utils.safe_save_file
    assert original_writer is not streaming_save_file  # the writer this module swaps exists in this transformers

    calls = []

    def counting(*args, **kwargs):
        calls.append(args[1])
        return streaming_save_file(*args, **kwargs)

    monkeypatch.setattr("autotune.checkpoint_io.streaming_save_file", counting)
    save_checkpoint(model, tmp_path / "ours")
    assert calls, "save_pretrained did not write through the streaming writer"
    assert modeling_utils.safe_save_file is original_writer
    model.save_pretrained(tmp_path / "theirs")

    ours = AutoModelForCausalLM.from_pretrained(tmp_path / "ours", dtype=torch.bfloat16).state_dict()
    theirs = AutoModelForCausalLM.from_pretrained(tmp_path / "theirs", dtype=torch.bfloat16).state_dict()
    assert ours.keys() == theirs.keys() == model.state_dict().keys()
    for name, tensor in model.state_dict().items():
        assert torch.equal(ours[name], tensor) and torch.equal(theirs[name], tensor), name
    assert sorted(p.name for p in (tmp_path / "ours").iterdir()) == sorted(p.name for p in (tmp_path / "theirs").iterdir())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_tensors_stream_through_small_chunks(tmp_path):
    tensors = {name: t.cuda() for name, t in _tensors().items()}
    tensors["cpu_in_between"] = torch.arange(10, dtype=torch.int32)
    tensors["large"] = torch.randn(1000, 37, device="cuda").to(torch.bfloat16)
    # Written last on the default stream behind a 1 s busy kernel, and not contiguous: the writer's
    # stream must wait for the fill and for its own contiguous copy, or it saves stale bytes.
    late = torch.zeros(2048, 512, device="cuda")
    torch.cuda._sleep(2 * 10**9)
    late.fill_(3.0)
    tensors["zz_late_transposed"] = late.t()
    path = tmp_path / "gpu.safetensors"
    streaming_save_file(tensors, path, metadata={"format": "pt"}, chunk_bytes=1000)  # chunks split elements
    loaded = safetensors.torch.load_file(str(path))
    for name, tensor in tensors.items():
        assert torch.equal(loaded[name], tensor.cpu()), name
    assert bool((loaded["zz_late_transposed"] == 3.0).all())
