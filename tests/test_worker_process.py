"""The worker's handling of compiled loads across request shapes: before every measurement and
bisection probe it drops transformers' remembered static cache, so each shape's cache has its
own length. On CPU transformers runs the static cache uncompiled, which is enough to check the
cache lengths; the GPU test runs really compiled (CUDA graphs)."""

from __future__ import annotations

import pytest
import torch

from autotune.models import resolve_model
from autotune.spec import Candidate
from autotune.worker.process import _Worker
from autotune.worker.protocol import WorkRequest


def _request(number: int, batch_size: int, compile: bool = True, boundary: list[int] | None = None) -> WorkRequest:
    cand = Candidate(dtype="fp32", compile=compile, batch_size=batch_size, max_length=24, new_tokens=4)
    return WorkRequest(trial_number=number, candidate=cand, repeats=1, boundary_batch_sizes=boundary)


def _worker(monkeypatch, tmp_path) -> _Worker:
    monkeypatch.setenv("AUTOTUNE_CACHE_DIR", str(tmp_path / "cache"))
    worker = _Worker(resolve_model("tiny-qwen2", random_weights=True), "cpu", None)
    worker.setup()
    return worker


def _record_static_caches(monkeypatch) -> list[int]:
    """The max_cache_len of every StaticCache transformers creates from now on (the real class runs)."""
    from transformers.cache_utils import StaticCache

    lengths: list[int] = []
    real_init = StaticCache.__init__

    def init(self, *args, **kwargs):
        lengths.append(kwargs["max_cache_len"] if "max_cache_len" in kwargs else args[1])
        real_init(self, *args, **kwargs)

    monkeypatch.setattr(StaticCache, "__init__", init)
    return lengths


def _compiled(batch_size: int, max_length: int) -> Candidate:
    return Candidate(dtype="fp32", compile=True, batch_size=batch_size, max_length=max_length, new_tokens=4)


def test_each_compiled_shape_gets_a_static_cache_of_its_own_length(monkeypatch, tmp_path):
    worker = _worker(monkeypatch, tmp_path)
    lengths = _record_static_caches(monkeypatch)
    assert worker.handle(WorkRequest(trial_number=0, candidate=_compiled(2, 48), repeats=1)).status == "ok"
    longer = max(lengths)  # the prompt and all but the last new token: 47 in transformers 5.24
    assert longer >= 40
    lengths.clear()
    assert worker.handle(WorkRequest(trial_number=1, candidate=_compiled(2, 24), repeats=1)).status == "ok"
    assert lengths and max(lengths) == longer - 24  # its own length, not the one of the shape before

    # What the worker undoes: transformers on its own keeps the longer cache for the later shape.
    from autotune.loading import generate_kwargs

    model = worker.model
    for max_length in (48, 24):
        lengths.clear()
        ids = torch.ones(1, max_length - 4, dtype=torch.long)
        model.generate(ids, attention_mask=torch.ones_like(ids), min_new_tokens=4,
                       **generate_kwargs(_compiled(1, max_length)))
    assert max(lengths) == longer


def test_bisection_probes_after_a_longer_shape_get_their_own_cache_length(monkeypatch, tmp_path):
    worker = _worker(monkeypatch, tmp_path)
    lengths = _record_static_caches(monkeypatch)
    assert worker.handle(WorkRequest(trial_number=0, candidate=_compiled(2, 48), repeats=1)).status == "ok"
    longer = max(lengths)
    lengths.clear()
    cand = _compiled(1, 24)
    outcome = worker.handle(WorkRequest(trial_number=1, candidate=cand, repeats=1, boundary_batch_sizes=[1, 2]))
    assert outcome.status == "ok" and outcome.boundary is not None
    assert lengths and max(lengths) == longer - 24  # every probe and the measurement at 24 tokens


def test_the_remembered_cache_is_dropped_before_every_measurement(monkeypatch, tmp_path):
    """Also at the same shape: a quality run (or anything else) may have left a longer one."""
    worker = _worker(monkeypatch, tmp_path)
    lengths = _record_static_caches(monkeypatch)
    assert worker.handle(WorkRequest(trial_number=0, candidate=_compiled(2, 24), repeats=1)).status == "ok"
    own = max(lengths)
    worker.model._previous_max_cache_length = 200  # what a longer generate() call leaves behind
    lengths.clear()
    assert worker.handle(WorkRequest(trial_number=1, candidate=_compiled(2, 24), repeats=1)).status == "ok"
    assert max(lengths) == own


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_compiled_shapes_on_a_gpu_each_get_their_own_cache_and_a_shape_can_come_back(monkeypatch, tmp_path):
    """Really compiled (CUDA graphs): the next shapes are measured, each with its own static cache
    length, and so is a shape that ran before (resetting the CUDA-graph trees between shapes broke
    exactly that: "Running CUDAGraph after shutdown", H200, Session 7)."""
    monkeypatch.setenv("AUTOTUNE_CACHE_DIR", str(tmp_path / "cache"))
    worker = _Worker(resolve_model("tiny-qwen2", random_weights=True), "cuda:0", None)
    worker.setup()
    lengths = _record_static_caches(monkeypatch)
    shapes = [(2, 128), (4, 64), (2, 128)]
    maxima = []
    for number, (batch, length) in enumerate(shapes):
        lengths.clear()
        cand = Candidate(dtype="bf16", compile=True, batch_size=batch, max_length=length, new_tokens=4)
        outcome = worker.handle(WorkRequest(trial_number=number, candidate=cand, repeats=2))
        assert outcome.status == "ok", outcome.reason
        maxima.append(max(lengths))
    assert maxima[1] == maxima[0] - 64 and maxima[2] == maxima[0]
