"""The generate-time knobs (issue 19) in exports: which of them a best.yaml's settings carry (each
exporter checks its rule for every one), and the server exporters' shared wording. The serving
engines manage their own paged KV cache, compile their own graphs, run their own decode loop and
schedule prefill chunks over the whole running batch: transformers' per-call settings map onto
them approximately at best."""

from __future__ import annotations

PAGED_KV_NOTE = ("transformers' {what} KV cache has no {server} counterpart: {server} keeps its own paged KV cache on the "
                 "GPU, sized by its memory fraction")
OFFLOADED_KV_NOTE = ("the measured KV cache lived in host memory (transformers' {what} cache), so the measured GPU peak "
                     "leaves it out: {server} keeps its paged KV cache on the GPU")
OFFLOADED_KV_ALTERNATIVE = "the KV cache on the GPU (re-measure with cache_implementation dynamic for a memory figure that holds)"
QUANTIZED_4BIT_NOTE = "{server} has no 4-bit KV cache like transformers' {backend} (4-bit, per group)"
COMPILE_MODE_NOTE = ("the torch.compile mode {mode} was measured in transformers' generate(); {server} compiles and "
                     "captures CUDA graphs with its own settings")
STOP_CHECK_NOTE = ("autotune measured transformers' generate() reading its stop flag {how}; {server} runs its own decode loop "
                   "and scheduler, so there is nothing to set")
CHUNK_NOTE = ("transformers chunked each sequence's prefill into {chunk}-token pieces; {server} chunks the prefills of its "
              "running batch in one token budget, written as {chunk} x the measured batch size {batch} = {budget}")


def generate_knobs(s) -> list[tuple[str, str]]:
    """(rule key, setting) of each generate-time knob the settings carry (none: as before them)."""
    keys = []
    if s.cache_implementation is not None:
        keys.append((f"cache_implementation={s.cache_implementation}", f"cache_implementation {s.cache_implementation}"))
    if s.compile_mode is not None:
        keys.append((f"compile_mode={s.compile_mode}", f"compile_mode {s.compile_mode}"))
    if s.prefill_chunk_size is not None:
        keys.append(("prefill_chunk_size>0" if s.prefill_chunk_size else "prefill_chunk_size=0",
                     f"prefill_chunk_size {s.prefill_chunk_size}"))
    if s.stop_check is not None:
        keys.append((f"stop_check={s.stop_check}", f"stop_check {s.stop_check}"))
    return keys
