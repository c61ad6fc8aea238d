"""Python's garbage collector as a source of latency spikes, counted and switched off for a server.

Why: a process that holds a compiled model holds a great many Python objects (dynamo's caches, FX
graphs, inductor's generated code), and a collection of the oldest generation walks all of them
while the serving thread waits. vLLM freezes the heap once its warm-up is done (gc.freeze());
SGLang offers freeze_gc and warns of GC latency jitter: what was alive then moves to the permanent
generation and is never walked again. The H100 compiled replay of BENCHMARKS §19 (read batch by
batch in §20) had one batch's first token 1.14 s late while its decode ran at the measured pace:
a stall of this kind (its cause not measured there; counting is how the next replay tells).

`pauses()` is the time the collector has spent since this module first counted (a gc callback,
installed once per process: it runs only at collections); `frozen_heap()` freezes on demand and
unfreezes on exit.
"""

from __future__ import annotations

import contextlib
import gc
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from autotune.measure.counts import Counts


@dataclass(frozen=True)
class GcPauses(Counts):
    collections: int  # any generation
    # Of the oldest generation: the ones that walk every tracked object. CPython 3.14's incremental
    # collector reports its automatic collections differently: there collecting_s is the measure.
    full_collections: int
    collecting_s: float


OLDEST_GENERATION = 2  # CPython's generations are 0, 1 and 2


class _Counter:
    def __init__(self) -> None:
        self.collections = self.full_collections = 0
        self.collecting_s = 0.0
        self._started: float | None = None

    def __call__(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        elif self._started is not None:
            self.collecting_s += time.perf_counter() - self._started
            self.collections += 1
            self.full_collections += info.get("generation") == OLDEST_GENERATION
            self._started = None


_counter: _Counter | None = None


def pauses() -> GcPauses:
    """The collections and the seconds they took since the first call in this process."""
    global _counter
    if _counter is None:
        _counter = _Counter()
        gc.callbacks.append(_counter)
    return GcPauses(_counter.collections, _counter.full_collections, _counter.collecting_s)


@contextlib.contextmanager
def frozen_heap() -> Iterator[Callable[[], None]]:
    """Yields freeze(): collect, then move every object alive to the permanent generation (call it
    once start-up is done: the model loaded, its graphs compiled and captured). On exit the heap
    is unfrozen again if it was frozen here, so a worker that goes on measuring collects as before;
    a heap someone froze before is left frozen (gc.unfreeze() cannot undo only part of it)."""
    frozen = False
    frozen_before = gc.get_freeze_count() > 0

    def freeze() -> None:
        nonlocal frozen
        gc.collect()
        gc.freeze()
        frozen = True

    try:
        yield freeze
    finally:
        if frozen and not frozen_before:
            gc.unfreeze()
