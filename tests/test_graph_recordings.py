"""CUDA graphs recorded, counted through dynamo's own callbacks (autotune/measure/graph_recordings.py),
and the slow paths of a span read together (autotune/measure/slow_paths.py)."""

from __future__ import annotations

import pytest
import torch
from torch._dynamo.callback import CallbackTrigger, callback_handler

from autotune.measure.graph_recordings import GraphRecordings, recordings
from autotune.measure.slow_paths import counted_since, slow_path_counts


def test_only_cuda_graph_recordings_are_counted_with_their_time() -> None:
    before = recordings()
    assert before is not None  # this torch has the recording trigger
    with callback_handler.install_callbacks(CallbackTrigger.CUDAGRAPH_RECORDING, "0/0"):
        pass  # what inductor's cudagraph trees wrap every recording in
    with callback_handler.install_callbacks(CallbackTrigger.DYNAMO, "0/1"):
        pass  # a compile: counted by compile_stats, not here
    done = recordings() - before
    assert done.recordings == 1 and done.recording_s >= 0
    assert recordings() - recordings() == GraphRecordings(0, 0.0)
    assert GraphRecordings(1, 0.5) + GraphRecordings(2, 0.25) == GraphRecordings(3, 0.75)


def test_counting_survives_a_dynamo_reset() -> None:
    recordings()
    torch._dynamo.reset()  # drops every registered callback, ours included
    before = recordings()  # registers them again
    with callback_handler.install_callbacks(CallbackTrigger.CUDAGRAPH_RECORDING, "0/0"):
        pass
    assert (recordings() - before).recordings == 1


def test_a_span_counts_collections_and_recordings_and_no_allocator_on_cpu() -> None:
    import gc

    before = slow_path_counts("cpu")
    gc.collect()
    with callback_handler.install_callbacks(CallbackTrigger.CUDAGRAPH_RECORDING, "0/0"):
        pass
    span = counted_since(before, "cpu")
    assert span.allocator is None  # no caching allocator on CPU: not known, rather than 0
    assert span.gc.full_collections >= 1 and span.graphs.recordings == 1


@pytest.mark.gpu
def test_a_static_input_at_a_new_address_records_the_cuda_graph_again() -> None:
    """The mechanism the counter exists for, on a real reduce-overhead compile: a buffer marked
    static (as transformers marks its static KV cache) replays the recorded graph while it stays
    where it was, and is recorded again when a new buffer of the same shape takes its place (as a
    new cache does in every generate())."""
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    torch._dynamo.reset()

    def step(cache: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        cache.add_(x)
        return cache.sum(dim=0) * 2

    compiled = torch.compile(step, mode="reduce-overhead")
    cache = torch.zeros(8, 64, device="cuda")
    torch._dynamo.mark_static_address(cache)
    x = torch.ones(8, 64, device="cuda")
    for _ in range(3):  # warm-up, then the recording
        compiled(cache, x)
    warmed = recordings()
    for _ in range(3):
        compiled(cache, x)
    assert (recordings() - warmed).recordings == 0  # the same cache: the graph replays
    moved = torch.zeros(8, 64, device="cuda")
    del cache
    torch._dynamo.mark_static_address(moved)
    compiled(moved, x)
    compiled(moved, x)
    assert (recordings() - warmed).recordings >= 1  # a new address: recorded again
