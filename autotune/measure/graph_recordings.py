"""CUDA graphs recorded by torch.compile's reduce-overhead mode (inductor's cudagraph trees),
counted with the time they took, through dynamo's own compilation callbacks.

Why: a compiled server replays one CUDA graph per decode shape, recorded once. But cudagraph trees
record again whenever a static input's address changes, and transformers (5.x) builds a new static
KV cache for every generate() call and marks its tensors static: whether the next call's cache
lands at the same address is up to the caching allocator. Batches of one size back to back (a
trial, a service measurement) tend to get the same blocks back; a server that alternates batch
sizes may not, and then pays a recording (a warm-up run, a capture, two device synchronisations)
inside a request's latency. dynamo's graph counters (measure/compile_stats.py) do not see it:
nothing is compiled. Counting it is how a trial or a replayed batch tells.

`recordings()` is the count since this module first counted; None where this torch has no
recording trigger (then not known, rather than 0). dynamo runs start callbacks only for the
outermost of nested callback blocks, so a recording inside a compile's block would go uncounted:
recordings happen when compiled code runs, after its compile's block has closed, so this errs
only towards too few.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from autotune.measure.counts import Counts


@dataclass(frozen=True)
class GraphRecordings(Counts):
    recordings: int  # CUDA graphs recorded (the first recording of a shape included)
    recording_s: float  # their wall time, warm-up run and capture


class _Counter:
    def __init__(self, trigger) -> None:
        self.trigger = trigger
        self.recordings = 0
        self.recording_s = 0.0
        self._started: float | None = None

    def start(self, args) -> None:
        if args.callback_trigger == self.trigger:
            self._started = time.perf_counter()

    def end(self, args) -> None:
        if args.callback_trigger == self.trigger and self._started is not None:
            self.recording_s += time.perf_counter() - self._started
            self.recordings += 1
            self._started = None


_counter: _Counter | None = None


def recordings() -> GraphRecordings | None:
    """The CUDA graphs recorded, and the seconds they took, since the first call in this process.
    torch._dynamo.reset() drops every registered callback (a worker resets between candidates):
    each call registers the counter's again where they are gone, so a span read after a reset
    counts; recordings between a reset and the next read are not counted."""
    global _counter
    try:
        from torch._dynamo.callback import CallbackTrigger, callback_handler
    except ImportError:
        return None
    if _counter is None:
        trigger = getattr(CallbackTrigger, "CUDAGRAPH_RECORDING", None)
        if trigger is None:
            return None
        _counter = _Counter(trigger)
    if _counter.start not in callback_handler.start_callbacks:
        callback_handler.register_start_callback(_counter.start)
        callback_handler.register_end_callback(_counter.end)
    return GraphRecordings(_counter.recordings, _counter.recording_s)
