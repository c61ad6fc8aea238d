"""autotune/measure/compile_stats.py: dynamo's and inductor's counters around a measurement, on
real torch.compile runs (the eager backend: dynamo traces, graph-breaks and recompiles as it does
on the GPU, without a C++ toolchain), and the note a trial line prints for them."""

from __future__ import annotations

import torch

from autotune.measure.compile_stats import CompileStats, compile_stats, snapshot
from autotune.report import _result_text
from autotune.spec import Candidate, Measurement, Stat, TrialOutcome, TrialRecord


def _with_break(x):
    y = x * 2
    print("a print dynamo cannot trace")  # a graph break
    return y + 1


def _clean(x):
    return torch.relu(x * 2) + 1


def test_counts_graphs_breaks_and_recompiles_while_timed() -> None:
    torch._dynamo.reset()
    f = torch.compile(_with_break, backend="eager", dynamic=False)
    before = snapshot()
    f(torch.ones(3))  # the warm-up
    warmed = snapshot()
    f(torch.ones(3))
    f(torch.ones(5))  # a new shape during the timed runs: a recompile the timing pays for
    after = snapshot()
    stats = compile_stats(before, after, graphs_while_timed=after.graphs - warmed.graphs)
    assert stats.graph_breaks >= 1 and "print" in (stats.first_break or "")
    assert stats.graphs >= 2 and stats.graphs_while_timed >= 1
    assert stats.cudagraph_skips == 0
    problems = stats.problems()
    assert any("graph break" in p for p in problems) and any("during the timed runs" in p for p in problems)


def test_a_clean_compile_has_no_problems() -> None:
    torch._dynamo.reset()
    f = torch.compile(_clean, backend="eager", dynamic=False)
    before = snapshot()
    f(torch.ones(4))
    warmed = snapshot()
    f(torch.ones(4))
    after = snapshot()
    stats = compile_stats(before, after, graphs_while_timed=after.graphs - warmed.graphs)
    assert stats == CompileStats(graphs=1, graph_breaks=0, cudagraph_skips=0, graphs_while_timed=0)
    assert stats.problems() == []


def test_the_trial_line_says_what_went_wrong_with_the_compile() -> None:
    one = Stat.of([1.0])
    m = Measurement(output_tokens_per_s=Stat.of([100.0]), prefill_tokens_per_s=one, decode_tokens_per_s=one,
                    requests_per_s=one, ttft_s=one, tpot_s=one, request_latency_s=one, peak_memory_gib=1.0,
                    warmup_s=1.0, measure_s=1.0,
                    compile_stats=CompileStats(graphs=9, graph_breaks=3, cudagraph_skips=2, graphs_while_timed=0,
                                               first_break="Failed to trace [builtin] operator"))
    record = TrialRecord(number=1, state="measured", candidate=Candidate(dtype="bf16", compile=True, batch_size=1,
                                                                        max_length=64, new_tokens=8),
                         outcome=TrialOutcome(status="ok", measurement=m), objective_value=100.0)
    text = _result_text(record, "throughput")
    assert "3 graph break(s)" in text and "CUDA graphs skipped for 2 graph(s)" in text
    assert r"\[builtin]" in text  # escaped for rich's markup
    clean = m.model_copy(update={"compile_stats": CompileStats(graphs=1, graph_breaks=0, cudagraph_skips=0, graphs_while_timed=0)})
    assert "compile:" not in _result_text(record.model_copy(update={"outcome": TrialOutcome(status="ok", measurement=clean)}),
                                          "throughput")


def test_show_lists_the_compiled_candidates_with_compile_problems(tmp_path) -> None:
    from rich.console import Console

    from autotune.report import print_results

    one = Stat.of([1.0])

    def record(number: int, stats: CompileStats | None) -> TrialRecord:
        m = Measurement(output_tokens_per_s=Stat.of([100.0 + number]), prefill_tokens_per_s=one, decode_tokens_per_s=one,
                        requests_per_s=one, ttft_s=one, tpot_s=one, request_latency_s=one, peak_memory_gib=1.0,
                        warmup_s=1.0, measure_s=1.0, compile_stats=stats)
        return TrialRecord(number=number, state="measured",
                           candidate=Candidate(dtype="bf16", compile=stats is not None, batch_size=number, max_length=64, new_tokens=8),
                           outcome=TrialOutcome(status="ok", measurement=m), objective_value=100.0 + number)

    recs = [record(1, None), record(2, CompileStats(graphs=1, graph_breaks=0, cudagraph_skips=0, graphs_while_timed=0)),
            record(3, CompileStats(graphs=3, graph_breaks=0, cudagraph_skips=3, graphs_while_timed=0))]
    console = Console(record=True, width=200)
    print_results(console, recs, None, "throughput", tmp_path)
    text = console.export_text()
    assert "compile problems (1 compiled candidate):" in text
    assert "#3 bf16 sdpa compile b=3" in text and "CUDA graphs skipped for 3 graph(s)" in text
    assert "#2 bf16" not in text.split("compile problems")[1]


def test_cuda_graphs_recorded_while_timed_are_a_problem_and_unknown_counts_stay_unknown() -> None:
    from autotune.measure.compile_stats import Snapshot

    known, later = Snapshot(1, {}, 0, 4), Snapshot(1, {}, 0, 6)
    assert later.recorded_since(known) == 2
    assert later.recorded_since(Snapshot(1, {}, 0, None)) is None  # a torch without the recording trigger
    stats = compile_stats(known, later, graphs_while_timed=0, recorded_while_timed=later.recorded_since(known))
    assert stats.cudagraphs_recorded_while_timed == 2
    assert stats.problems() == ["2 CUDA graph(s) recorded during the timed runs"]
    assert compile_stats(known, known, 0, 0).problems() == []
    # A trial stored before the field existed reads back as not counted.
    old = CompileStats.model_validate({"graphs": 1, "graph_breaks": 0, "cudagraph_skips": 0, "graphs_while_timed": 0})
    assert old.cudagraphs_recorded_while_timed is None and old.problems() == []
