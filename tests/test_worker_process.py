"""The worker's handling of compiled loads across request shapes: before another shape runs it
drops transformers' remembered static cache, so each shape's cache has its own length, and, as
AUTOTUNE_COMPILED_SHAPES says, the CUDA-graph trees (`regraph`) or all of dynamo (`reset`).
On CPU transformers runs the static cache uncompiled, which is enough to check when the worker
resets; what a reset frees on a GPU is measured by `bench/compile_memory.py`."""

from __future__ import annotations

import pytest
import torch

from autotune.errors import SettingError
from autotune.models import resolve_model
from autotune.spec import Candidate
from autotune.worker.process import _Worker
from autotune.worker.protocol import WorkRequest
from tests.conftest import cli_env, run_cli


def _request(number: int, batch_size: int, compile: bool = True, boundary: list[int] | None = None) -> WorkRequest:
    cand = Candidate(dtype="fp32", compile=compile, batch_size=batch_size, max_length=24, new_tokens=4)
    return WorkRequest(trial_number=number, candidate=cand, repeats=1, boundary_batch_sizes=boundary)


def _worker(monkeypatch, tmp_path, policy: str | None) -> _Worker:
    monkeypatch.setenv("AUTOTUNE_CACHE_DIR", str(tmp_path / "cache"))
    if policy is None:
        monkeypatch.delenv("AUTOTUNE_COMPILED_SHAPES", raising=False)
    else:
        monkeypatch.setenv("AUTOTUNE_COMPILED_SHAPES", policy)
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
    worker = _worker(monkeypatch, tmp_path, None)
    lengths = _record_static_caches(monkeypatch)
    assert worker.handle(WorkRequest(trial_number=0, candidate=_compiled(2, 48), repeats=1)).status == "ok"
    longer = max(lengths)  # the prompt and all but the last new token: 47 in transformers 5.24
    assert longer >= 40
    lengths.clear()
    assert worker.handle(WorkRequest(trial_number=1, candidate=_compiled(2, 24), repeats=1)).status == "ok"
    assert lengths and max(lengths) == longer - 24  # its own length, not the one of the shape before
    assert worker.compiled_shapes_resets == 1

    # What the worker undoes: transformers on its own keeps the longer cache for the later shape.
    from autotune.loading import generate_kwargs

    model = worker.model
    for max_length in (48, 24):
        lengths.clear()
        ids = torch.ones(1, max_length - 4, dtype=torch.long)
        model.generate(ids, attention_mask=torch.ones_like(ids), min_new_tokens=4,
                       **generate_kwargs(_compiled(1, max_length)))
    assert max(lengths) == longer


@pytest.mark.parametrize("policy", ["keep", "regraph", "reset"])
def test_a_compiled_load_drops_earlier_shapes_once_per_change(monkeypatch, tmp_path, policy):
    import torch._inductor.cudagraph_trees as cudagraph_trees

    worker = _worker(monkeypatch, tmp_path, policy if policy != "keep" else None)
    calls = []
    real_dynamo_reset, real_graph_reset = torch._dynamo.reset, cudagraph_trees.reset_cudagraph_trees
    monkeypatch.setattr(torch._dynamo, "reset", lambda: (calls.append("dynamo"), real_dynamo_reset())[1])
    monkeypatch.setattr(cudagraph_trees, "reset_cudagraph_trees", lambda: (calls.append("graphs"), real_graph_reset())[1])

    assert worker.handle(_request(0, 2)).status == "ok"
    assert worker.handle(_request(1, 2)).status == "ok"
    assert worker.compiled_shapes_resets == 0  # nothing ran before, then the same shape
    assert worker.handle(_request(2, 3)).status == "ok"
    assert worker.compiled_shapes_resets == 1
    # The bisection's probes are shapes too: 1 then 4 (1 differs from 3, 4 from 1).
    assert worker.handle(_request(3, 1, boundary=[1, 4])).status == "ok"
    assert worker.compiled_shapes_resets == 3
    assert calls == {"keep": [], "regraph": ["graphs"] * 3, "reset": ["dynamo"] * 3}[policy]


def test_the_remembered_cache_is_dropped_before_every_measurement(monkeypatch, tmp_path):
    """Also at the same shape: a quality run (or anything else) may have left a longer one."""
    worker = _worker(monkeypatch, tmp_path, None)
    lengths = _record_static_caches(monkeypatch)
    assert worker.handle(WorkRequest(trial_number=0, candidate=_compiled(2, 24), repeats=1)).status == "ok"
    own = max(lengths)
    worker.model._previous_max_cache_length = 200  # what a longer generate() call leaves behind
    lengths.clear()
    assert worker.handle(WorkRequest(trial_number=1, candidate=_compiled(2, 24), repeats=1)).status == "ok"
    assert max(lengths) == own


def test_unloading_a_compiled_model_resets_its_graphs(monkeypatch, tmp_path):
    worker = _worker(monkeypatch, tmp_path, "reset")
    calls = []
    real_reset = torch._dynamo.reset
    monkeypatch.setattr(torch._dynamo, "reset", lambda: (calls.append("dynamo"), real_reset())[1])
    assert worker.handle(_request(0, 2)).status == "ok"
    other_load = Candidate(dtype="bf16", compile=True, batch_size=2, max_length=24, new_tokens=4)
    assert worker.handle(WorkRequest(trial_number=1, candidate=other_load, repeats=1)).status == "ok"
    assert calls == ["dynamo"] and worker.compiled_shapes_resets == 1  # at the unload, not as a shape change
    assert worker.handle(_request(2, 2, compile=False)).status == "ok"  # unloading the bf16 compiled load
    assert calls == ["dynamo", "dynamo"]


def test_uncompiled_loads_never_reset(monkeypatch, tmp_path):
    worker = _worker(monkeypatch, tmp_path, "reset")
    for number, batch in enumerate([2, 3, 1]):
        assert worker.handle(_request(number, batch, compile=False)).status == "ok"
    assert worker.compiled_shapes_resets == 0


def test_an_unknown_policy_is_a_one_line_error_before_any_study_file(monkeypatch, tmp_path):
    monkeypatch.setenv("AUTOTUNE_COMPILED_SHAPES", "sometimes")
    with pytest.raises(SettingError, match="keep, regraph, reset"):
        _Worker(resolve_model("tiny-qwen2", random_weights=True), "cpu", None).setup()
    out = tmp_path / "out"
    env = {**cli_env(), "AUTOTUNE_COMPILED_SHAPES": "sometimes"}
    result = run_cli("tune", "--trials", "1", "--device", "cpu", "--out", str(out), env=env)
    assert result.returncode == 2
    assert "AUTOTUNE_COMPILED_SHAPES='sometimes'" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not out.exists()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("policy", ["keep", "regraph", "reset"])
def test_compiled_shapes_on_a_gpu_measure_after_each_policy(monkeypatch, tmp_path, policy):
    """Really compiled (CUDA graphs): every policy still measures the next shapes, each with its own
    static cache length."""
    monkeypatch.setenv("AUTOTUNE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("AUTOTUNE_COMPILED_SHAPES", policy)
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
    assert worker.compiled_shapes_resets == 2
