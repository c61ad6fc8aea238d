"""What torch.compile did while a compiled candidate was measured, from dynamo's and inductor's
own counters: graphs compiled, graph breaks, CUDA-graph skips, and graphs compiled during the
timed runs (a recompile the timing paid for).

Why: on the H100, compiled torchao int8 weight-only decoded at batch 1 eight times slower than
bf16 (BENCHMARKS §17), and nothing in the trial said whether the compile had broken into pieces
or run without CUDA graphs. A clean compiled decode is one or two graphs, no break, no skip; the
counters are process-wide (a worker measures many candidates), so a measurement keeps the
difference between snapshots taken around its own runs.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field

from autotune.measure.counts import difference


class CompileStats(BaseModel):
    model_config = ConfigDict(extra="forbid")

    graphs: int = Field(description="graphs dynamo compiled during the warm-up and the timed runs")
    graph_breaks: int = Field(description="graph breaks met (each splits the forward into more graphs)")
    cudagraph_skips: int = Field(description="compiled graphs inductor ran without CUDA graphs (reduce-overhead)")
    graphs_while_timed: int = Field(description="graphs compiled during the timed runs: their compile time is in the figures")
    cudagraphs_recorded_while_timed: int | None = Field(
        default=None, description="CUDA graphs recorded during the timed runs (a static input such as the KV cache at a "
        "new address): their capture time is in the figures; None where not counted")
    first_break: str | None = Field(default=None, description="the first graph break's reason, shortened")

    def problems(self) -> list[str]:
        """What a reader should know about this compile (empty for a clean one)."""
        out = []
        if self.graph_breaks:
            out.append(f"{self.graph_breaks} graph break(s)" + (f" ({self.first_break})" if self.first_break else ""))
        if self.cudagraph_skips:
            out.append(f"CUDA graphs skipped for {self.cudagraph_skips} graph(s)")
        if self.graphs_while_timed:
            out.append(f"{self.graphs_while_timed} graph(s) compiled during the timed runs")
        if self.cudagraphs_recorded_while_timed:
            out.append(f"{self.cudagraphs_recorded_while_timed} CUDA graph(s) recorded during the timed runs")
        return out


@dataclass(frozen=True)
class Snapshot:
    graphs: int
    breaks: dict[str, int]  # reason -> count
    cudagraph_skips: int
    cudagraphs_recorded: int | None  # measure/graph_recordings.py; None where this torch cannot count them

    def recorded_since(self, before: Snapshot) -> int | None:
        return difference(self.cudagraphs_recorded, before.cudagraphs_recorded)

    @property
    def break_count(self) -> int:
        return sum(self.breaks.values())


def snapshot() -> Snapshot:
    from torch._dynamo.utils import counters

    from autotune.measure.graph_recordings import recordings

    recorded = recordings()
    return Snapshot(counters["stats"]["unique_graphs"], dict(counters["graph_break"]), counters["inductor"]["cudagraph_skips"],
                    recorded.recordings if recorded is not None else None)


def compile_stats(before: Snapshot, after: Snapshot, graphs_while_timed: int,
                  recorded_while_timed: int | None = None) -> CompileStats:
    """Snapshots taken before the warm-up and after the timed runs; `graphs_while_timed` and
    `recorded_while_timed`: the graphs the caller saw compiled and the CUDA graphs it saw recorded
    inside its timed runs (snapshots around them)."""
    new_breaks = [reason for reason in after.breaks if reason not in before.breaks]
    return CompileStats(
        graphs=after.graphs - before.graphs,
        graph_breaks=after.break_count - before.break_count,
        cudagraph_skips=after.cudagraph_skips - before.cudagraph_skips,
        graphs_while_timed=graphs_while_timed,
        cudagraphs_recorded_while_timed=recorded_while_timed,
        first_break=_short(new_breaks[0]) if new_breaks else None,
    )


def compile_problems(measurement) -> list[str]:
    """The compile problems of a measurement (autotune.spec.Measurement or None): empty for an
    uncompiled candidate, a clean compile or no measurement."""
    stats = getattr(measurement, "compile_stats", None)
    return stats.problems() if stats is not None else []


def _short(reason: str) -> str:
    """Dynamo's reason is a page of text: its title and, where given, its one-line explanation."""
    lines = [line.strip() for line in reason.strip().splitlines() if line.strip()]
    explanation = next((line.removeprefix("Explanation:").strip() for line in lines[1:] if line.startswith("Explanation:")), "")
    return (lines[0] + (f": {explanation}" if explanation else ""))[:200]
