"""The study's time: why the loop stops (the space answered, --timeout passed, the sampler only
repeats itself), and whether the next trial would finish before --timeout, leaving the time the
confirmation after the search is expected to need (confirmation_reserve_s).
"""

from __future__ import annotations

import statistics
import time

from autotune.confirm import confirmation_cost_s
from autotune.spec import Candidate, TrialRecord
from autotune.study.context import StudyContext

MAX_CONSECUTIVE_DUPLICATES = 200


def confirmation_reserve_s(ctx: StudyContext, recs: list[TrialRecord]) -> float:
    """Seconds of --timeout the search leaves for the confirmation: what confirming the current top
    --confirm-top would take (confirmation_cost_s, from this run's measured trials). 0.0 without
    --timeout (nothing to keep time from), with --confirm-top 0 or before two feasible candidates
    are measured. Every role keeps it: the confirmation waits for every worker's trials."""
    spec = ctx.spec
    if spec.timeout_s is None or not spec.confirm_top or spec.knee_choice:
        return 0.0
    return confirmation_cost_s(recs, spec.objective, spec.confirm_top, spec.confirm_repeats)


def _reserve_words(ctx: StudyContext, left: float, reserve_s: float) -> str:
    return (f"--timeout {ctx.spec.timeout_s:.0f}s: stopping the search {max(left, 0.0):.0f}s early to keep "
            f"{reserve_s:.0f}s for confirming the top {ctx.spec.confirm_top}")


def _stop_reason(ctx: StudyContext, done: dict, started: float, duplicates_in_a_row: int, reserve_s: float = 0.0) -> str:
    """Why the loop stops before asking for more trials; "" to go on. `reserve_s`: the time kept for
    the confirmation (confirmation_reserve_s): with less than that left, no trial can start."""
    if len(done) >= ctx.space.size:
        return f"all {ctx.space.size} candidates of the space are answered"
    if ctx.spec.timeout_s is not None:
        left = ctx.spec.timeout_s - (time.monotonic() - started)
        if left < 0:
            return f"--timeout {ctx.spec.timeout_s:.0f}s reached"
        if left < reserve_s:
            return _reserve_words(ctx, left, reserve_s)
    if duplicates_in_a_row >= MAX_CONSECUTIVE_DUPLICATES:
        return "the sampler keeps proposing measured candidates; the space is effectively exhausted"
    return ""


TrialTime = tuple[bool, bool, float]  # (loaded a model, compiled, seconds) of a trial run in the worker


def expected_trial_s(durations: list[TrialTime], reload: bool, compiled: bool = False) -> float | None:
    """How long a trial is likely to take: the median of this run's trials that ran in the worker
    with the same need to load a model (a load and its bisection cost far more than a trial on the
    loaded model) and the same compile flag (a compiled load on the H100, 2026-12-06, took over
    150 s where the uncompiled ones had taken 20-40 s, and a study judged by those overran its
    --timeout); without a trial of the same compile flag yet, the median of those with the same need
    to load. None without such a trial yet."""
    same_load = [(was_compiled, seconds) for reloaded, was_compiled, seconds in durations if reloaded == reload]
    same = [seconds for was_compiled, seconds in same_load if was_compiled == compiled] or [seconds for _, seconds in same_load]
    return statistics.median(same) if same else None


def _too_late_for(ctx: StudyContext, cand: Candidate, loaded_key: tuple | None, started: float,
                  durations: list[TrialTime], reserve_s: float = 0.0) -> str:
    """Why the next trial should not start: it is likely to finish after --timeout less `reserve_s`,
    the time kept for the confirmation (confirmation_reserve_s). A trial is never cut once running,
    so without this a study overran --timeout by a whole trial (a model load, a compile) - 21% over
    a 78 s budget on the H200 (BENCHMARKS §8); and the confirmation, skipped by --timeout then, left a
    runner-up under-measured by 29% (issue 20)."""
    if ctx.spec.timeout_s is None:
        return ""
    left = ctx.spec.timeout_s - (time.monotonic() - started)
    expected = expected_trial_s(durations, reload=cand.load_key != loaded_key, compiled=cand.compile)
    if expected is None or expected + reserve_s <= left:
        return ""
    next_trial = (f"the next trial ({cand.label()}{', a model load' if cand.load_key != loaded_key else ''}) would take "
                  f"about {expected:.0f}s")
    if reserve_s > 0:
        return f"{_reserve_words(ctx, left, reserve_s)}: {next_trial}"
    return f"--timeout {ctx.spec.timeout_s:.0f}s: {max(left, 0.0):.0f}s left, and {next_trial}"
