"""Python's garbage collections counted (autotune/measure/gc_pauses.py) and the heap frozen for a server."""

from __future__ import annotations

import gc

import pytest
from autotune.measure.gc_pauses import GcPauses, frozen_heap, pauses


def test_collections_are_counted_with_their_time_and_generation() -> None:
    before = pauses()
    garbage = [[i] for i in range(50_000)]  # something to walk
    gc.collect()  # a full collection
    gc.collect(0)
    done = pauses() - before
    del garbage
    assert done.collections >= 2 and done.full_collections >= 1 and done.collecting_s > 0
    gc.disable()  # building the first reading could itself trigger a collection
    try:
        assert pauses() - pauses() == GcPauses(0, 0, 0.0)  # nothing between two reads
    finally:
        gc.enable()
    assert GcPauses(1, 1, 0.5) + GcPauses(2, 0, 0.25) == GcPauses(3, 1, 0.75)


def test_the_heap_is_frozen_only_when_asked_and_unfrozen_after_even_on_error() -> None:
    assert gc.get_freeze_count() == 0
    with frozen_heap():
        assert gc.get_freeze_count() == 0  # start-up not done: nothing frozen yet
    with pytest.raises(RuntimeError, match="stop"):
        with frozen_heap() as freeze:
            freeze()
            assert gc.get_freeze_count() > 0  # everything alive moved to the permanent generation
            raise RuntimeError("stop")
    assert gc.get_freeze_count() == 0


def test_a_heap_frozen_before_stays_frozen() -> None:
    gc.freeze()
    try:
        with frozen_heap() as freeze:
            freeze()
        assert gc.get_freeze_count() > 0  # not ours to unfreeze
    finally:
        gc.unfreeze()
