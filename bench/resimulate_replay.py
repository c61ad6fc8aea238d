"""Simulate a capacity check's rates again from its replay.json, with the plain and the smoothed
service model (autotune/capacity.py), against the same replayed p95s: which model predicts the
real server better, on one replay (the replay is the reality both are checked against; the
simulations differ only in the model). Needs a replay.json written since the service samples and
the output lengths were kept in it (fifth session of 2026-12-06).

    python bench/resimulate_replay.py OUT/replay.json [more replay.json ...]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from autotune.capacity import ServiceModel, simulate  # noqa: E402


def rows(report: dict) -> list[tuple[str, float, str, float, float, float]]:
    """(load, rate, figure, replayed, plain error, smoothed error) per replayed p95."""
    points = {p["batch_size"]: (p["prefill_samples_s"], p["tpot_samples_s"]) for p in report["service_points"]}
    models = {smooth: ServiceModel.from_samples(points, smooth=smooth) for smooth in (False, True)}
    out = []
    sims: dict[tuple[float, bool], object] = {}
    for row in report["rows"]:
        for smooth, model in models.items():
            key = (row["rate_rps"], smooth)
            if key not in sims:
                sims[key] = simulate(model, row["rate_rps"], output_tokens=report["output_tokens"],
                                     n_requests=report["requests_per_rate"], seed=report["seed"])
        name = row["figure"].removesuffix("_p95")
        replayed = row["replayed_s"]
        plain, smoothed = (getattr(getattr(sims[(row["rate_rps"], s)], f"{name}_s"), "p95") for s in (False, True))
        out.append((f"{row['fraction']:.0%}", row["rate_rps"], row["figure"], replayed, plain / replayed - 1, smoothed / replayed - 1))
    return out


def main() -> None:
    for path in sys.argv[1:]:
        report = json.loads(Path(path).read_text())
        print(f"\n{path}: {report['settings']}, repeats {report['repeats']}, capacity {report['capacity_rps']:.4g} req/s")
        print("| load | rate (req/s) | figure | replayed | error, plain model | error, smoothed model |")
        print("|---|--:|---|--:|--:|--:|")
        for load, rate, figure, replayed, plain, smoothed in rows(report):
            print(f"| {load} | {rate:.3g} | {figure} | {replayed * 1000:,.1f} ms | {plain:+.1%} | {smoothed:+.1%} |")


if __name__ == "__main__":
    main()
