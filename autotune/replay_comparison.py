"""The capacity check's verdict at one rate: the simulation's p95 latencies next to the replay's
(autotune/replay.py), with the band a simulation of the same arrivals moves in by chance."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from autotune.capacity import SimResult

if TYPE_CHECKING:  # annotations only: replay.py builds these from its results
    from autotune.replay import ReplayResult


@dataclass(frozen=True)
class Comparison:
    """The simulation's prediction and the replay's measurement at one rate."""

    fraction: float  # of the capacity
    rate_rps: float
    simulated: SimResult
    replayed: ReplayResult
    service_ratio: float | None = None  # median over the replay's batches: its time / the service model's mean for it
    # Per figure (e.g. "e2e_p95"): the 5th and 95th percentile of the simulated figure over
    # BAND_DRAWS simulations of the same requests and arrivals with other service draws: how far
    # the measured spread of the service times moves it. A replay inside it is as close as the
    # simulation can say.
    band: dict[str, tuple[float, float]] | None = None
    # Graphs torch.compile compiled during the replay (dynamo's count): 0 when every batch met a
    # shape compiled before, as a warmed-up compiled server does (past dynamo's recompile limit the
    # check fails rather than run eagerly, _room_to_compile); eager candidates compile none.
    compiled_graphs: int = 0

    @staticmethod
    def service_ratio_of(replayed: ReplayResult, service) -> float | None:
        """How far the service model (capacity.ServiceModel) is from the replay's own batches: the
        median of each batch's time over the model's mean time for its size, longest output and prompt
        (1.0: the model is right on average; above 1: real batches take longer)."""
        import statistics

        ratios = [b.total_s / service.mean_batch_s(b.requests, b.longest_output, b.longest_prompt) for b in replayed.batch_log]
        return statistics.median(ratios) if ratios else None

    def within_band(self, figure: str, replayed: float) -> bool | None:
        if not self.band or figure not in self.band:
            return None
        low, high = self.band[figure]
        return low <= replayed <= high

    def rows(self) -> list[tuple[str, float, float, float]]:
        """(figure, simulated, replayed, relative error of the simulation) per latency p95."""
        out = []
        for name in ("ttft", "tpot", "e2e"):
            sim, rep = getattr(self.simulated, f"{name}_s"), getattr(self.replayed, f"{name}_s")
            if sim is not None and rep is not None:
                out.append((f"{name}_p95", sim.p95, rep.p95, sim.p95 / rep.p95 - 1))
        return out


def comparison_markdown(rows: Sequence[Comparison]) -> str:
    lines = ["| load | rate (req/s) | figure | simulated | simulated 5-95% band | replayed | error | in band | "
             "mean batch sim / replay | batch time replayed / modelled | requests |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for c in rows:
        for figure, sim, rep, err in c.rows():
            ratio = f"{c.service_ratio:.2f}" if c.service_ratio is not None else "–"
            band = c.band.get(figure) if c.band else None
            band_text = f"{band[0] * 1000:,.1f}-{band[1] * 1000:,.1f} ms" if band else "–"
            inside = {True: "yes", False: "no", None: "–"}[c.within_band(figure, rep)]
            lines.append(f"| {c.fraction:.0%} | {c.rate_rps:.3g} | {figure} | {sim * 1000:,.1f} ms | {band_text} | {rep * 1000:,.1f} ms | "
                         f"{err:+.1%} | {inside} | {c.simulated.mean_batch_size:.2f} / {c.replayed.mean_batch_size:.2f} | {ratio} | "
                         f"{c.replayed.requests} |")
    return "\n".join(lines)


BAND_DRAWS = 40


def simulate_comparison(service, rate_rps: float, requests: Sequence, seed: int, draw_seed: int | None = None) -> SimResult:
    """The simulation a replay is compared with: the replay's own requests (prompt and output
    lengths) in its order, arriving at the replay's times (arrival_times(len(requests), rate, seed)),
    so that the two differ by the service times alone. draw_seed redraws the service times."""
    from autotune.capacity import simulate

    return simulate(service, rate_rps, output_tokens=[r.output_tokens for r in requests],
                    prompt_tokens=[r.prompt_tokens for r in requests], in_order=True, n_requests=len(requests), seed=seed,
                    draw_seed=draw_seed)


def simulated_band(service, rate_rps: float, requests: Sequence, seed: int, draws: int = BAND_DRAWS) -> dict[str, tuple[float, float]]:
    """The 5th-95th percentile range of each simulated p95 over `draws` simulations of the replay's
    requests and arrivals with other service draws (capacity.simulate's draw_seed): how far the
    service times' measured spread alone moves the figure."""
    from autotune.slo import percentile

    runs = [simulate_comparison(service, rate_rps, requests, seed, draw_seed=10_000 + i) for i in range(draws)]
    band = {}
    for name in ("ttft", "tpot", "e2e"):
        values = [getattr(r, f"{name}_s").p95 for r in runs if getattr(r, f"{name}_s") is not None]
        if values:
            band[f"{name}_p95"] = (percentile(values, 5), percentile(values, 95))
    return band
