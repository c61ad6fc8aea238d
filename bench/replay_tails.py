"""How the replayed batches' timings compare with the service model's samples, per rate and batch
size (a capacity check's replay.json, written since the service samples were kept in it): medians
and p95s of the replayed prefill (first token) and tpot against the measured ones, and the share of
replayed batches slower than the slowest measured sample. A simulation built on the samples cannot
put a batch above the slowest one, so that share says how much of the replay's tail it cannot see.

    python bench/replay_tails.py OUT/replay.json
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from autotune.slo import percentile  # noqa: E402  (replay.json's own p95s interpolate the same way)


def _p95(values: list[float]) -> float:
    return percentile(sorted(values), 95)


def main() -> None:
    report = json.loads(Path(sys.argv[1]).read_text())
    points = {p["batch_size"]: p for p in report["service_points"]}
    if not all(p.get("prefill_samples_s") for p in points.values()):
        sys.exit(f"error: {sys.argv[1]} has no service samples (written before replay.json kept them); run the replay again")
    print("| load | batch | batches | prefill p50 / p95 ms (measured p50 / max) | above measured max | "
          "tpot p50 / p95 ms (measured p50 / max) | above measured max |")
    print("|---|--:|--:|---|--:|---|--:|")
    for fraction, log in report["batch_logs"].items():
        for k, point in sorted(points.items()):
            batches = [b for b in log if b["requests"] == k]
            decoded = [b for b in batches if b["longest_output"] > 1]
            if not batches or not decoded or not point["tpot_samples_s"]:
                continue
            prefill = [b["first_token_s"] for b in batches]
            tpot = [(b["total_s"] - b["first_token_s"]) / (b["longest_output"] - 1) for b in decoded]
            max_prefill, max_tpot = max(point["prefill_samples_s"]), max(point["tpot_samples_s"])
            print(f"| {float(fraction):.0%} | {k} | {len(batches)} | {statistics.median(prefill) * 1000:.0f} / {_p95(prefill) * 1000:.0f} "
                  f"({point['ttft_p50_s'] * 1000:.0f} / {max_prefill * 1000:.0f}) | "
                  f"{sum(v > max_prefill for v in prefill) / len(prefill):.0%} | "
                  f"{statistics.median(tpot) * 1000:.1f} / {_p95(tpot) * 1000:.1f} ({point['tpot_p50_s'] * 1000:.1f} / {max_tpot * 1000:.1f}) | "
                  f"{sum(v > max_tpot for v in tpot) / len(tpot):.0%} |")


if __name__ == "__main__":
    main()
