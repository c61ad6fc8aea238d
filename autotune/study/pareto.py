"""The chosen point of a multi-objective study (`--objective throughput,latency`): the Pareto front
of its objectives over the feasible measured trials, and the one best.yaml holds.

- With --slo: the best trial by the first objective among those that meet every limit (a
  slo_violated trial is never feasible). It is on the front: nothing can beat it on the first
  objective, and among equals the order keeps a non-dominated one first.
- Without --slo: the front's knee, the point nearest the ideal one after scaling each objective to
  [0, 1] over the front (1 the front's best value, 0 its worst): the point that gives up least of
  every objective at once. Ties go to lower peak memory, then the earlier trial.
A front of one point is its own choice.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from autotune.objectives import objective as objective_def
from autotune.spec import TrialRecord


def dominates(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    """Coordinates oriented so that higher is better: a is at least as good everywhere and better once."""
    return all(x >= y for x, y in zip(a, b)) and any(x > y for x, y in zip(a, b))


def non_dominated(records: list[TrialRecord], coords: Callable[[TrialRecord], tuple[float, ...]]) -> list[TrialRecord]:
    """The records no other one dominates (exact ties all stay), in their given order; the front
    both the objectives' front here and analysis.pareto_front (objective × memory) take."""
    at = {r.number: coords(r) for r in records}
    return [r for r in records if not any(dominates(at[o.number], at[r.number]) for o in records)]


def _candidates(recs: list[TrialRecord], names: list[str]) -> list[TrialRecord]:
    return [r for r in recs if r.state == "measured" and all(n in r.objective_values for n in names)]


def _oriented(r: TrialRecord, names: list[str]) -> tuple[float, ...]:
    """The record's objective values, each turned so that higher is better."""
    return tuple(-objective_def(n).key(r.objective_values[n]) for n in names)


def objective_front(recs: list[TrialRecord], names: list[str]) -> list[TrialRecord]:
    """Feasible measured trials no other one is at least as good as on every objective and better
    on one (exact ties all stay), by the first objective, best first."""
    front = non_dominated(_candidates(recs, names), lambda r: _oriented(r, names))
    return sorted(front, key=lambda r: (objective_def(names[0]).key(r.objective_values[names[0]]), r.number))


def knee(front: list[TrialRecord], names: list[str]) -> TrialRecord | None:
    if not front:
        return None
    coords = [_oriented(r, names) for r in front]
    lows = [min(c[i] for c in coords) for i in range(len(names))]
    highs = [max(c[i] for c in coords) for i in range(len(names))]

    def gap(c: tuple[float, ...]) -> float:  # distance to the ideal point (1, ..., 1) in the scaled space
        return math.sqrt(sum((1 - ((v - lo) / (hi - lo) if hi > lo else 1.0)) ** 2 for v, lo, hi in zip(c, lows, highs)))

    return min(zip(front, coords), key=lambda rc: (round(gap(rc[1]), 12), rc[0].outcome.measurement.peak_memory_gib, rc[0].number))[0]


def chosen_point(recs: list[TrialRecord], names: list[str], with_slo: bool) -> TrialRecord | None:
    """best.yaml's trial of a multi-objective study (module docstring)."""
    front = objective_front(recs, names)
    return front[0] if with_slo and front else knee(front, names)
