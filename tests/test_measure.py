"""Measurement on CPU with a tiny random model: the figures are consistent with their samples,
memory peaks see real allocations, and OOMs are recognised."""

from __future__ import annotations

import pytest
import torch

from autotune.measure import memory
from autotune.measure.memory import GIB, MemoryTracker
from autotune.measure.throughput import measure_generation
from autotune.models import BUNDLED_CONFIG_DIR
from autotune.spec import Candidate, Measurement, Stat
from autotune.worker.process import is_oom

BATCH, MAX_LENGTH, NEW, REPEATS = 2, 24, 4, 3
PROMPT = MAX_LENGTH - NEW


@pytest.fixture(scope="module")
def tiny_model() -> torch.nn.Module:
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(BUNDLED_CONFIG_DIR / "tiny-qwen2.json")
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.eval()
    return model


@pytest.fixture(scope="module")
def candidate() -> Candidate:
    return Candidate(dtype="fp32", batch_size=BATCH, max_length=MAX_LENGTH, new_tokens=NEW)


@pytest.fixture(scope="module")
def measurement(tiny_model: torch.nn.Module, candidate: Candidate) -> Measurement:
    return measure_generation(tiny_model, candidate, "cpu", repeats=REPEATS, vocab_size=1024)


def _stats(m: Measurement) -> dict[str, Stat]:
    return {name: getattr(m, name) for name in type(m).model_fields if isinstance(getattr(m, name), Stat)}


def test_every_stat_has_positive_samples(measurement: Measurement) -> None:
    stats = _stats(measurement)
    assert len(stats) == 7
    for name, stat in stats.items():
        assert len(stat.samples) == REPEATS, name
        assert all(v > 0 for v in stat.samples), name
        assert stat == Stat.of(stat.samples), name
    assert measurement.warmup_s > 0 and measurement.measure_s > 0


def test_figures_agree_with_latency_samples(measurement: Measurement) -> None:
    """Every throughput figure is recomputed from the TTFT and request-latency samples."""
    full = measurement.request_latency_s.samples
    prefill = measurement.ttft_s.samples
    decode = [max(f - p, 1e-6) for p, f in zip(prefill, full)]
    assert measurement.decode_tokens_per_s.samples == pytest.approx([BATCH * (NEW - 1) / t for t in decode])
    assert measurement.tpot_s.samples == pytest.approx([t / (NEW - 1) for t in decode])
    assert measurement.output_tokens_per_s.samples == pytest.approx([BATCH * NEW / t for t in full])
    assert measurement.requests_per_s.samples == pytest.approx([BATCH / t for t in full])
    assert measurement.prefill_tokens_per_s.samples == pytest.approx([BATCH * PROMPT / t for t in prefill])
    # The repeats fit in the measurement window.
    assert sum(full) + sum(prefill) <= measurement.measure_s


def test_memory_fields_on_cpu(measurement: Measurement) -> None:
    assert measurement.peak_memory_gib > 0
    assert measurement.peak_rss_gib == measurement.peak_memory_gib
    assert measurement.peak_allocated_gib is None and measurement.peak_reserved_gib is None
    assert measurement.nvml_peak_used_gib is None


def test_hook_runs_before_every_generate(tiny_model: torch.nn.Module, candidate: Candidate) -> None:
    """One warm-up plus two generate calls per repeat."""
    calls: list[int] = []
    measure_generation(tiny_model, candidate, "cpu", repeats=REPEATS, vocab_size=1024, before_each_run=lambda: calls.append(1))
    assert len(calls) == 1 + 2 * REPEATS


def test_hook_error_propagates(tiny_model: torch.nn.Module, candidate: Candidate) -> None:
    class Boom(RuntimeError):
        pass

    def explode() -> None:
        raise Boom("injected")

    with pytest.raises(Boom, match="injected"):
        measure_generation(tiny_model, candidate, "cpu", repeats=REPEATS, vocab_size=1024, before_each_run=explode)


# ------------------------------------------------------------------------------ MemoryTracker


@pytest.mark.parametrize("hwm_reset", [True, False], ids=["high-water-mark", "sampler-thread"])
def test_memory_tracker_sees_an_allocation(hwm_reset: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """Both CPU paths (VmHWM reset, or a sampling thread where that is refused) see 200 MiB."""
    if not hwm_reset:
        monkeypatch.setattr(memory, "_reset_hwm", lambda: False)
    elif not memory._reset_hwm():
        pytest.skip("this kernel refuses /proc/self/clear_refs")
    with MemoryTracker("cpu") as empty:
        pass
    baseline = empty.result()
    with MemoryTracker("cpu") as tracker:
        block = torch.ones(200 * 2**20, dtype=torch.uint8)  # written, so its pages are resident
        assert int(block[-1]) == 1
    del block  # freed before result(): the peak must still count it
    held = tracker.result()
    assert (tracker._thread is None) == hwm_reset
    assert baseline.peak_rss_gib is not None and held.peak_rss_gib is not None
    assert held.peak_memory_gib - baseline.peak_memory_gib >= 150 * 2**20 / GIB


# ------------------------------------------------------------------------------ is_oom


@pytest.mark.parametrize(
    "error",
    [
        torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
        MemoryError(),
        RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 1125899906842624 bytes."),
        RuntimeError("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: not enough memory"),
    ],
)
def test_is_oom_true(error: BaseException) -> None:
    assert is_oom(error)


@pytest.mark.parametrize(
    "error",
    [ValueError("can't allocate memory"), RuntimeError("shape mismatch"), NotImplementedError("sdpa"), KeyError("x")],
)
def test_is_oom_false(error: BaseException) -> None:
    assert not is_oom(error)


def test_real_failed_allocation_is_oom() -> None:
    """The 1 PiB allocation the fault injection uses fails in a way is_oom recognises."""
    with pytest.raises(BaseException) as info:
        torch.empty(2**50, dtype=torch.uint8)
    assert is_oom(info.value), f"{type(info.value).__name__}: {info.value}"


def test_static_cache_candidate_warms_both_shapes(tiny_model: torch.nn.Module) -> None:
    """compile=True means a static KV cache (transformers compiles generate() with it on GPUs; on
    CPU it runs uncompiled, which is enough to check the protocol): two warm-up runs, then pairs."""
    cand = Candidate(dtype="fp32", compile=True, batch_size=2, max_length=24, new_tokens=4)
    calls: list[int] = []
    m = measure_generation(tiny_model, cand, "cpu", repeats=3, vocab_size=1024, before_each_run=lambda: calls.append(1))
    assert len(calls) == 2 + 2 * 3
    assert len(m.output_tokens_per_s.samples) == 3
    # compiled candidates carry what torch.compile did: on CPU nothing is compiled
    assert m.compile_stats is not None and m.compile_stats.graphs == 0 and not m.compile_stats.problems()
    assert measure_generation(tiny_model, cand.model_copy(update={"compile": False}), "cpu", repeats=1,
                              vocab_size=1024).compile_stats is None
