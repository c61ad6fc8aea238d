"""The memory model's prediction error, replayed over recorded studies: for every measured trial,
the peak predicted with the calibration fitted on the trials measured *before* it (what the study
knew at the time) against the peak it measured. Also checks that the lower bound never exceeded a
measured peak, and counts the OOM trials whose lower bound alone was over the budget (those a
study with the memory model answers without loading).

    python bench/memory_model.py bench/results/h100-qwen25-7b-24gib-v3 bench/results/h100-qwen3-vl-8b-24gib ...

A study measured in parts (a grid in several folders) is replayed as one: join the folders with
`+` (`DIR/grid+DIR/grid-compiled2+...`), parts in that order, one calibration over all of them.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from autotune.deploy import read_deployment  # noqa: E402
from autotune.memory_model import ModelShape, calibrate, lower_bound_gib, predicted_infeasible_reason, prediction_error  # noqa: E402
from autotune.models import relocate  # noqa: E402
from autotune.report import read_trials  # noqa: E402


def replay(outs: list[Path]) -> dict:
    config = read_deployment(outs[0] / "best.yaml")
    shape = ModelShape.from_config(relocate(config.model).config())
    if shape is None:
        raise SystemExit(f"{outs[0]}: the memory model has no formula for {config.model.name}'s config")
    device_type = "cuda" if config.device.startswith("cuda") else "cpu"
    recs = [r for out in outs for r in sorted((r for r in read_trials(out) if r.state != "duplicate"), key=lambda r: r.number)]
    measured = [(r.candidate, r.outcome.measurement.peak_memory_gib) for r in recs if r.outcome.status == "ok" and r.outcome.measurement]
    pairs = [(calibrate(shape, measured[:i], device_type).predict_gib(shape, c), peak) for i, (c, peak) in enumerate(measured)]
    error = prediction_error(pairs)
    over_bound = [r.number for r in recs if r.outcome.measurement and lower_bound_gib(shape, r.candidate) > r.outcome.measurement.peak_memory_gib]
    budget = config.memory_budget_gib
    ooms = [r for r in recs if r.state == "infeasible" and r.outcome.inferred_from is None and r.outcome.measurement is None]
    answerable = [r.number for r in ooms if budget is not None and predicted_infeasible_reason(shape, r.candidate, budget)]
    return {"study": "+".join(out.name for out in outs), "measured": len(measured), "median_error_pct": error.median_abs_pct if error else None,
            "worst_error_pct": error.worst_abs_pct if error else None, "lower_bound_violations": over_bound,
            "oom_trials": len(ooms), "answerable_by_lower_bound": len(answerable)}


def main() -> None:
    print("| study | measured trials | median error | worst error | lower bound > measured | OOM trials | of them over budget by the lower bound |")
    print("|---|--:|--:|--:|--:|--:|--:|")
    for path in sys.argv[1:]:
        r = replay([Path(part) for part in path.split("+")])
        print(f"| {r['study']} | {r['measured']} | {r['median_error_pct']:.1f}% | {r['worst_error_pct']:.1f}% | "
              f"{len(r['lower_bound_violations'])} | {r['oom_trials']} | {r['answerable_by_lower_bound']} |")


if __name__ == "__main__":
    main()
