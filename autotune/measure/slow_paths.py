"""What can stall a batch besides the GPU's own work, counted over a span: the CUDA caching
allocator's slow paths (measure/memory.py), Python's garbage collections (measure/gc_pauses.py)
and CUDA graphs recorded again (measure/graph_recordings.py). Read the counts before a span;
`counted_since` gives what happened in it."""

from __future__ import annotations

from dataclasses import dataclass

from autotune.measure.counts import difference
from autotune.measure.gc_pauses import GcPauses, pauses
from autotune.measure.graph_recordings import GraphRecordings, recordings
from autotune.measure.memory import AllocatorEvents, allocator_events


@dataclass(frozen=True)
class SlowPaths:
    allocator: AllocatorEvents | None  # None off CUDA, or where torch lacks a counter
    gc: GcPauses
    graphs: GraphRecordings | None  # None where torch has no recording callback


def slow_path_counts(device: str) -> SlowPaths:
    """The allocator's, the collector's and the graph recorder's counters, so far."""
    return SlowPaths(allocator_events(device), pauses(), recordings())


def counted_since(before: SlowPaths, device: str) -> SlowPaths:
    """What happened since `before` (slow_path_counts of the same device)."""
    now = slow_path_counts(device)
    return SlowPaths(difference(now.allocator, before.allocator), now.gc - before.gc, difference(now.graphs, before.graphs))
