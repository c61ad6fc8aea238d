"""The objectives a study can rank by: one registry, each entry owning its facts (the measured
figure it ranks, which way is better, its unit, the value an unmeasured trial stores). Every view
(tell, confirmation, best config, show, report) asks the entry instead of testing names.

- throughput: generated tokens/s (pairs/s for a reranker), higher is better.
- latency: a request's end-to-end latency, lower is better.
- goodput: requests/s whose own latencies meet every --slo limit (autotune/slo.py: the measured
  requests/s times the share of requests within every limit), higher is better; needs --slo.

`--objective throughput,latency` (any two or more, distinct) makes a multi-objective study
(autotune/study/pareto.py chooses its point).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from autotune.spec import Measurement, Stat


@dataclass(frozen=True)
class ObjectiveDef:
    name: str
    maximize: bool
    help: str
    figure: Callable[[Measurement], Stat | None]
    title: str  # how views name it ("request latency")
    fixed_unit: str | None = None  # None: the measurement's throughput unit (tok/s, or pairs/s for a reranker)
    needs_slo: bool = False
    latency: bool = False  # seconds, shown in ms

    @property
    def direction(self) -> str:
        return "maximize" if self.maximize else "minimize"

    @property
    def placeholder(self) -> float:
        """What an infeasible or failed trial stores (it must complete for TPE to see its
        constraints): the worst possible value, so no ranking ever prefers it. Never reported."""
        return 0.0 if self.maximize else math.inf

    def stat(self, m: Measurement | None) -> Stat | None:
        return None if m is None else self.figure(m)

    def key(self, value: float) -> float:
        """Sort key: smaller is better."""
        return -value if self.maximize else value

    def better(self, a: float, b: float) -> bool:
        return a > b if self.maximize else a < b

    def ratio(self, value: float, base: float) -> float:
        """How many times better value is than base (> 1 is better)."""
        return value / base if self.maximize else base / value

    def unit(self, m: Measurement | None) -> str:
        if self.fixed_unit is not None:
            return self.fixed_unit
        return m.throughput_unit if m is not None else "tok/s"

    @property
    def scale(self) -> float:
        """From the stored figure to the shown one (latency: s to ms)."""
        return 1000.0 if self.latency else 1.0

    def format(self, m: Measurement, spread: bool = True) -> str:
        stat = self.figure(m)
        if stat is None:
            return "–"
        text = f"{stat.median * self.scale:,.{0 if self.latency else 1}f} {self.unit(m)}"
        return text + (f" ±{stat.spread_pct:.0f}%" if spread else "")


OBJECTIVES: dict[str, ObjectiveDef] = {
    o.name: o for o in (
        ObjectiveDef("throughput", True, "max generated tokens/s (pairs/s for a reranker)", lambda m: m.throughput,
                     title="throughput"),
        ObjectiveDef("latency", False, "min request latency", lambda m: m.request_latency_s, title="request latency",
                     fixed_unit="ms", latency=True),
        ObjectiveDef("goodput", True, "max requests/s within every --slo limit", lambda m: m.goodput_rps, title="goodput",
                     fixed_unit="req/s", needs_slo=True),
    )
}


def objective(name: str) -> ObjectiveDef:
    try:
        return OBJECTIVES[name]
    except KeyError:
        raise ValueError(f"unknown objective {name!r}; use one of {', '.join(OBJECTIVES)} "
                         "(or several, comma-separated, for a multi-objective study)") from None


def parse_objectives(text: str) -> list[str]:
    """'throughput,latency' -> ['throughput', 'latency']; one line naming the problem otherwise."""
    names = [p.strip() for p in text.split(",") if p.strip()]
    if not names:
        raise ValueError(f"--objective {text!r} is empty; use one of {', '.join(OBJECTIVES)}")
    for name in names:
        objective(name)
    if len(set(names)) != len(names):
        raise ValueError(f"--objective {text} names an objective twice; give each once")
    return names


def split_objective_field(data):
    """TuneSpec's input: objective 'throughput,latency' -> objective 'throughput', objectives
    ['throughput', 'latency'] (a single name stays as it is)."""
    if isinstance(data, dict) and isinstance(data.get("objective"), str) and "," in data["objective"]:
        names = parse_objectives(data["objective"])
        data = {**data, "objective": names[0], "objectives": names if len(names) > 1 else []}
    return data


def check_inputs(names: list[str], has_slo: bool) -> None:
    for name in names:
        if objective(name).needs_slo and not has_slo:
            raise ValueError(f"--objective {name} counts the requests within --slo's limits; give --slo too, "
                             "e.g. --slo ttft_p95=500ms,tpot_p95=50ms")
