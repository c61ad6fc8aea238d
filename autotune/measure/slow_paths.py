"""What can stall a batch besides the GPU's own work, counted over a span: the CUDA caching
allocator's slow paths (measure/memory.py) and Python's garbage collections (measure/gc_pauses.py).
Read the counts before a span; `counted_since` gives what happened in it."""

from __future__ import annotations

from autotune.measure.gc_pauses import GcPauses, pauses
from autotune.measure.memory import AllocatorEvents, allocator_events

Counts = tuple[AllocatorEvents | None, GcPauses]


def slow_path_counts(device: str) -> Counts:
    """The allocator's counters (None off CUDA) and the collector's, so far."""
    return allocator_events(device), pauses()


def counted_since(before: Counts, device: str) -> Counts:
    """What happened since `before` (slow_path_counts of the same device)."""
    (allocator_before, gc_before), (allocator_now, gc_now) = before, slow_path_counts(device)
    known = allocator_before is not None and allocator_now is not None
    return (allocator_now - allocator_before if known else None), gc_now - gc_before
