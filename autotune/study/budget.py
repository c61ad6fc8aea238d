"""The study's time: why the loop stops (the space answered, --timeout passed, the sampler only
repeats itself), and whether the next trial would finish before --timeout.
"""

from __future__ import annotations

import statistics
import time

from autotune.spec import Candidate
from autotune.study.context import StudyContext

MAX_CONSECUTIVE_DUPLICATES = 200


def _stop_reason(ctx: StudyContext, done: dict, started: float, duplicates_in_a_row: int) -> str:
    if len(done) >= ctx.space.size:
        return f"all {ctx.space.size} candidates of the space are answered"
    if ctx.spec.timeout_s is not None and time.monotonic() - started > ctx.spec.timeout_s:
        return f"--timeout {ctx.spec.timeout_s:.0f}s reached"
    if duplicates_in_a_row >= MAX_CONSECUTIVE_DUPLICATES:
        return "the sampler keeps proposing measured candidates; the space is effectively exhausted"
    return ""


def expected_trial_s(durations: list[tuple[bool, float]], reload: bool) -> float | None:
    """How long a trial is likely to take: the median of this run's trials that ran in the worker
    with the same need to load a model (a load and its bisection cost far more than a trial on the
    loaded model). None without such a trial yet."""
    same = [seconds for reloaded, seconds in durations if reloaded == reload]
    return statistics.median(same) if same else None


def _too_late_for(ctx: StudyContext, cand: Candidate, loaded_key: tuple | None, started: float,
                  durations: list[tuple[bool, float]]) -> str:
    """Why the next trial should not start: --timeout would pass before it is likely to finish. A
    trial is never cut once running, so without this a study overran --timeout by a whole trial
    (a model load, a compile) - 21% over a 78 s budget on the H200 (BENCHMARKS §8)."""
    if ctx.spec.timeout_s is None:
        return ""
    left = ctx.spec.timeout_s - (time.monotonic() - started)
    expected = expected_trial_s(durations, reload=cand.load_key != loaded_key)
    if expected is None or expected <= left:
        return ""
    return (f"--timeout {ctx.spec.timeout_s:.0f}s: {max(left, 0.0):.0f}s left, and the next trial ({cand.label()}"
            f"{', a model load' if cand.load_key != loaded_key else ''}) would take about {expected:.0f}s")
