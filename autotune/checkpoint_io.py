"""Saving the checkpoints autotune builds itself (random-weight models, pre-quantized copies) fast
when their weights sit on a GPU.

`model.save_pretrained` hands each shard to safetensors' `save_file`, which copies every GPU
tensor into freshly allocated host memory one at a time. On the H200 host that path ran at about
1 GiB/s: 14.7 s of copies for a 7B model's 14 GiB plus 3.3 s of serialising, and 6.5 + 3.5 s for
its int8 copy (`bench/prepare_profile.py`, BENCHMARKS §1). Fresh pageable host memory is what is
slow there (every page is faulted in first). `streaming_save_file` writes the same safetensors
file through two reusable pinned buffers instead: the copy of one chunk overlaps the write of the
previous one, and no host memory is allocated per tensor.

Only the byte writer is replaced: `save_checkpoint` still runs transformers' `save_pretrained`
(tied weights, weight-name conversions, config, generation config, shard index) and swaps the
`safe_save_file` it calls for the streaming one while it runs.
"""

from __future__ import annotations

import contextlib
import json
import struct
from pathlib import Path
from typing import Any

# safetensors' dtype names (https://github.com/huggingface/safetensors, format spec).
_SAFETENSORS_DTYPES: dict[str, str] = {
    "float64": "F64", "float32": "F32", "float16": "F16", "bfloat16": "BF16",
    "int64": "I64", "int32": "I32", "int16": "I16", "int8": "I8",
    "uint64": "U64", "uint32": "U32", "uint16": "U16", "uint8": "U8",
    "bool": "BOOL", "float8_e4m3fn": "F8_E4M3", "float8_e5m2": "F8_E5M2",
}

STAGING_CHUNK_BYTES = 256 * 2**20  # two of these are pinned while a checkpoint is written


def _dtype_name(tensor: Any) -> str | None:
    return _SAFETENSORS_DTYPES.get(str(tensor.dtype).removeprefix("torch."))


def _byte_view(tensor: Any) -> Any:
    """The tensor's bytes as a flat uint8 tensor on its own device (no copy)."""
    import torch

    return tensor.contiguous().reshape(-1).view(torch.uint8)


def streaming_save_file(tensors: dict[str, Any], filename: str | Path, metadata: dict[str, str] | None = None,
                        chunk_bytes: int = STAGING_CHUNK_BYTES) -> None:
    """Write `tensors` as one safetensors file, the same format as `safetensors.torch.save_file`
    (which it defers to for a dtype it has no name for). GPU tensors travel through pinned
    staging buffers; CPU tensors are written from their own memory."""
    import safetensors.torch

    if any(_dtype_name(t) is None for t in tensors.values()):
        safetensors.torch.save_file(tensors, str(filename), metadata=metadata)
        return
    header: dict[str, Any] = {}
    offset = 0
    # Wider elements first, as safetensors orders them: every tensor's offset is then a multiple of
    # its element size, so a zero-copy load gets aligned data.
    ordered = sorted(tensors.items(), key=lambda item: (-item[1].element_size(), item[0]))
    for name, tensor in ordered:
        size = tensor.numel() * tensor.element_size()
        header[name] = {"dtype": _dtype_name(tensor), "shape": list(tensor.shape), "data_offsets": [offset, offset + size]}
        offset += size
    if metadata:
        header["__metadata__"] = dict(metadata)
    header_bytes = json.dumps(header, separators=(",", ":")).encode()
    header_bytes += b" " * (-len(header_bytes) % 8)  # safetensors pads the header to 8 bytes with spaces
    with open(filename, "wb") as f:
        f.write(struct.pack("<Q", len(header_bytes)))
        f.write(header_bytes)
        _write_bytes(f, [t for _, t in ordered], chunk_bytes)


def _write_bytes(f, tensors: list[Any], chunk_bytes: int) -> None:
    import torch

    staging: list[torch.Tensor] = []  # pinned on the first GPU tensor (pinning needs CUDA)
    streams: dict[torch.device, torch.cuda.Stream] = {}
    pending: tuple[torch.cuda.Event, torch.Tensor, int] | None = None
    used = 0

    def flush() -> None:
        nonlocal pending
        if pending is not None:
            event, buffer, size = pending
            event.synchronize()
            f.write(memoryview(buffer[:size].numpy()))
            pending = None

    for tensor in tensors:
        flat = _byte_view(tensor)
        if not tensor.is_cuda:
            flush()
            f.write(memoryview(flat.numpy()))
            continue
        if not staging:
            staging = [torch.empty(chunk_bytes, dtype=torch.uint8, pin_memory=True) for _ in range(2)]
        stream = streams.get(tensor.device)
        if stream is None:
            stream = streams[tensor.device] = torch.cuda.Stream(tensor.device)
        # The weights (and the contiguous copy `_byte_view` may have just made) come from the
        # current stream: the copies must see them finished, and the allocator must not hand the
        # copy's memory to anyone else while the side stream still reads it.
        stream.wait_stream(torch.cuda.current_stream(tensor.device))
        flat.record_stream(stream)
        for start in range(0, flat.numel(), chunk_bytes):
            piece = flat[start:start + chunk_bytes]
            # Buffer i was last written to the file two chunks ago (flush below is synchronous).
            buffer = staging[used % 2]
            used += 1
            with torch.cuda.stream(stream):
                buffer[:piece.numel()].copy_(piece, non_blocking=True)
                event = torch.cuda.Event()
                event.record(stream)
            flush()  # the previous chunk is written while this one copies
            pending = (event, buffer, piece.numel())
    flush()


@contextlib.contextmanager
def _streaming_writes():
    import transformers.modeling_utils as modeling_utils

    original = getattr(modeling_utils, "safe_save_file", None)
    if original is None:  # a transformers that renamed it: save_pretrained writes as it always did
        yield
        return
    modeling_utils.safe_save_file = streaming_save_file
    try:
        yield
    finally:
        modeling_utils.safe_save_file = original


def save_checkpoint(model: Any, directory: str | Path) -> None:
    """`model.save_pretrained(directory)`, with the weights written by `streaming_save_file`."""
    with _streaming_writes():
        model.save_pretrained(directory)
