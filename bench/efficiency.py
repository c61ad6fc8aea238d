"""How much measuring does it take to find the best config? The full grid against this tuner (TPE
with the memory model, batch-size bisection and load-aware follow-ups) and plain random search,
on the same space, each through `autotune tune` (same worker, same measurement protocol).

    python bench/efficiency.py --out outputs/efficiency --stage grid   -- --model qwen2.5-7b-instruct \\
        --random-weights --space search_spaces/efficiency-7b-24gib.yaml --memory-budget 24GiB --device cuda:0
    python bench/efficiency.py --out outputs/efficiency --stage search -- (same arguments)
    python bench/efficiency.py --out outputs/efficiency --stage side-by-side -- (same arguments)
    python bench/efficiency.py --out outputs/efficiency --stage report

- grid: every candidate measured, as a grid sweep does (no memory model, no bisection, no
  confirmation). Its best measured throughput is the bar; its wall time is the grid's cost.
- search: the tuner, then random search (no memory model, no bisection), each given
  FRACTION (default 10%) of the grid's measuring wall time as `--timeout`.
- side-by-side: the three chosen configs re-measured interleaved (ROUNDS rounds), each measurement in a fresh worker,
  so machine drift hits all alike; the medians decide the final comparison.
- report: GPU-seconds each run needed to first measure a config within 5% of the grid's best,
  and the side-by-side figures, as JSON (OUT/efficiency.json) and a markdown table.

GPU-seconds are wall seconds of the study with the GPU held, one-time preparation (building the
random checkpoint, the int8 copy) left out so the order of the runs does not matter.

A grid too big for one sitting can be measured in parts, each a grid study of its own over a
slice of the space (e.g. the compiled half), kept in OUT/grid-PART and counted with OUT/grid as
one grid (GPU-seconds added, parts in name order); the searches still get the whole space:

    python bench/efficiency.py --out OUT --stage grid --grid-part compiled \
        --part-space bench/spaces/efficiency-7b-24gib-fine-compiled.yaml -- (arguments, whole --space)
    python bench/efficiency.py --out OUT --stage report -- --space (the whole space)   # says if the parts cover it
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

from common import run_tune, tune_target

from autotune.report import read_trials
from autotune.spec import TrialRecord

WITHIN = 0.95


def _parse() -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--stage", choices=["grid", "search", "side-by-side", "report"], required=True)
    parser.add_argument("--fraction", type=float, default=0.10, help="share of the grid's time the searches get")
    parser.add_argument("--rounds", type=int, default=3, help="side-by-side rounds")
    parser.add_argument("--grid-part", help="grid stage: measure this part of the grid into OUT/grid-PART")
    parser.add_argument("--part-space", type=Path, help="grid stage with --grid-part: the slice of the space it covers")
    parser.add_argument("--runs", nargs="+", choices=["tuner", "random"], default=["tuner", "random"],
                        help="search stage: which searches to run (two processes with different --device can run one each at once)")
    parser.add_argument("tune_args", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    return args, [a for a in args.tune_args if a != "--"]


def _timeline(out: Path, skip_failed: bool = False) -> list[tuple[float, TrialRecord]]:
    """(GPU-seconds since the study began, preparation excluded, record) per counted trial, in
    order. A study resumed over several commands counts each run from its own start, after the
    wall time of the runs before it: the gap between commands is not GPU time. `skip_failed`
    leaves failed trials out, their seconds too (see `_summary`)."""
    import datetime as dt

    runs = [json.loads(line) for line in (out / "runs.jsonl").read_text().splitlines() if line.strip()]
    run_of = {t["number"]: i for i, run in enumerate(runs) for t in run["trials"]}
    before = [sum(run["wall_s"] for run in runs[:i]) for i in range(len(runs))]
    recs = [r for r in read_trials(out) if r.state != "duplicate"]
    recs.sort(key=lambda r: r.finished_at)
    timeline, prepared = [], 0.0
    for r in recs:
        if skip_failed and r.state == "failed":
            prepared += r.total_s  # its preparation included
            continue
        prepared += r.outcome.prepare_s
        i = run_of.get(r.number, 0)
        since_start = (dt.datetime.fromisoformat(r.finished_at) - dt.datetime.fromisoformat(runs[i]["started_at"])).total_seconds()
        timeline.append((max(0.0, before[i] + since_start - prepared), r))
    return timeline


def _failed_s(out: Path) -> float:
    return sum(r.total_s for r in read_trials(out) if r.state == "failed")


def _best(recs: list[TrialRecord]) -> TrialRecord | None:
    feasible = [r for r in recs if r.state == "measured" and r.objective_value is not None]
    return max(feasible, key=lambda r: r.objective_value, default=None)


def grid_dirs(out: Path) -> list[Path]:
    """The grid's studies: OUT/grid, then its parts OUT/grid-* in name order."""
    parts = sorted(p for p in out.glob("grid-*") if p.is_dir())
    return [d for d in [out / "grid", *parts] if (d / "runs.jsonl").is_file()]


def _wall_s(out: Path) -> float:
    return sum(json.loads(line)["wall_s"] for line in (out / "runs.jsonl").read_text().splitlines() if line.strip())


def _summary(out: Path | list[Path], bar: float | None) -> dict:
    """One run's figures; a list of folders is one grid measured in parts, one after the other.
    The grid's failed trials and their seconds are left out: a grid sweep that works pays for no
    failures, and counting them would make the searches' share of the grid look smaller
    (Session 7: a fault since fixed failed 98 trials of the part grid-compiled2)."""
    dirs = out if isinstance(out, list) else [out]
    grid = isinstance(out, list)
    timeline: list[tuple[float, TrialRecord]] = []
    wall = offset = excluded = 0.0
    for d in dirs:
        part = _timeline(d, skip_failed=grid)
        timeline += [(offset + t, r) for t, r in part]
        part_excluded = _failed_s(d) if grid else 0.0
        part_wall = _wall_s(d) - part_excluded
        excluded += part_excluded
        wall += part_wall
        offset += part_wall - sum(r.outcome.prepare_s for _, r in part)
    prepare = sum(r.outcome.prepare_s for _, r in timeline)
    reached = next((t for t, r in timeline if bar is not None and r.state == "measured" and r.objective_value >= WITHIN * bar), None)
    best = _best([r for _, r in timeline])
    return {
        "trials": len(timeline), "measured": sum(r.state == "measured" for _, r in timeline),
        "gpu_s": wall - prepare, "prepare_s": prepare, "failed_s_left_out": excluded,
        "gpu_s_to_within_5pct": reached,
        "chosen": best.candidate.label() if best else None, "chosen_trial": best.number if best else None,
        "chosen_tok_s_in_run": best.objective_value if best else None,
        # When the run measured what it finally chose: a noisy in-run figure can miss the 5% bar
        # although the config is the grid's best one (the side-by-side decides).
        "gpu_s_to_final_choice": next((t for t, r in timeline if best is not None and r.number == best.number), None),
    }


def _uniform_draw_hit_chance(grid: list[TrialRecord], draws: int, share: float = 0.97) -> dict:
    """Exact chance that `draws` distinct candidates drawn uniformly from the grid include one within
    `share` of the grid's best measured throughput (hypergeometric: 1 - C(N-m, k) / C(N, k)). A single
    seeded random-search run is one draw of this; the chance says how lucky it was."""
    # One record per candidate: parts of a grid can overlap (candidates answered in two parts). A
    # candidate that only failed stays in as a miss: random search draws from the whole space.
    by_candidate: dict = {}
    for r in grid:
        if r.state != "duplicate":
            kept = by_candidate.setdefault(r.candidate, r)  # Candidate is frozen: hashable
            if r.state == "measured" and kept.state != "measured":
                by_candidate[r.candidate] = r
    counted = list(by_candidate.values())
    best = _best(counted)
    if best is None or draws <= 0:
        return {"candidates": len(counted), "good": 0, "draws": draws, "chance": None}
    good = sum(r.state == "measured" and r.objective_value >= share * best.objective_value for r in counted)
    total = len(counted)
    miss = math.comb(total - good, draws) / math.comb(total, draws) if draws <= total else 0.0
    return {"candidates": total, "good": good, "draws": draws, "chance": 1.0 - miss}


def _side_by_side(args, tune_args: list[str]) -> None:
    """Re-measure the three choices interleaved, ROUNDS rounds, each measurement in a fresh worker."""
    from autotune.spec import Measurement
    from autotune.worker import WorkerClient, WorkRequest

    ref, budget, info = tune_target(tune_args)
    device = info.device
    chosen = {}
    for name in ("grid", "tuner", "random"):
        best = _best(_grid_records(args.out) if name == "grid" else read_trials(args.out / name))
        if best is not None:
            chosen[name] = best.candidate
    samples: dict[str, list[float]] = {name: [] for name in chosen}
    failures: dict[str, list[str]] = {name: [] for name in chosen}
    runs = {name: 0 for name in chosen}
    for round_index in range(args.rounds):
        order = list(chosen) if round_index % 2 == 0 else list(reversed(chosen))
        for name in order:
            # A fresh worker for every measurement: the choices sit within 0.1 GiB of the budget, and on
            # the H200 (2026-11-30) one worker reloading between them ran out of memory where a fresh
            # load of the same config fits; each config is measured from the state a deployment starts in.
            worker = WorkerClient(ref, device, budget, args.out / "side-by-side-workers")
            try:
                outcome, _ = worker.run(WorkRequest(trial_number=1000 + round_index, candidate=chosen[name], repeats=3), 600)
            finally:
                worker.close()
            runs[name] += 1
            if outcome.status == "ok":
                m: Measurement = outcome.measurement
                samples[name] += m.output_tokens_per_s.samples
            else:
                failures[name].append(f"{outcome.status}: {outcome.reason}")
            print(f"round {round_index + 1} {name}: {outcome.status} "
                  f"{outcome.measurement.output_tokens_per_s.median if outcome.measurement else outcome.reason}", flush=True)
            # Written after every measurement: a run cut short (Session 7 lost its last one to the
            # device-time limit) keeps what it measured; `measurements` says how far it got.
            result = {name: {"candidate": chosen[name].label(), "samples": s, "failures": failures[name],
                             "measurements": runs[name],
                             "median": statistics.median(s) if s else None} for name, s in samples.items()}
            (args.out / "side-by-side.json").write_text(json.dumps(result, indent=2))


def _grid_records(out: Path) -> list[TrialRecord]:
    return [r for d in grid_dirs(out) for r in read_trials(d)]


def grid_coverage(records: list[TrialRecord], space_path: Path) -> tuple[int, int]:
    """(candidates of the space the grid's parts measured, candidates in the space)."""
    import itertools

    from autotune.space import load_space

    space = load_space(space_path)
    knobs = space.knobs
    wanted = set(itertools.product(*(getattr(space, k) for k in knobs)))
    seen = {tuple(getattr(r.candidate, k) for k in knobs) for r in records
            if r.state not in ("duplicate", "failed") and r.candidate.new_tokens == space.new_tokens}
    return len(wanted & seen), len(wanted)


def _report(args, tune_args: list[str]) -> None:
    dirs = grid_dirs(args.out)
    if not dirs:
        sys.exit(f"no grid in {args.out} (run --stage grid first)")
    grid = _summary(dirs, None)
    bar = grid["chosen_tok_s_in_run"]
    summary = {"grid": _summary(dirs, bar)}
    if "--space" in tune_args:
        covered, total = grid_coverage(_grid_records(args.out), Path(tune_args[tune_args.index("--space") + 1]))
        summary["grid"]["covers"] = f"{covered} of {total}"
        print(f"the grid ({', '.join(d.name for d in dirs)}) measured {covered} of the space's {total} candidates"
              + ("" if covered == total else ": INCOMPLETE, its best is not the space's optimum"))
    if summary["grid"]["failed_s_left_out"]:
        print(f"left out of the grid's GPU-seconds: {summary['grid']['failed_s_left_out']:.0f} s of failed trials")
    for name in ("tuner", "random"):
        if (args.out / name / "runs.jsonl").is_file():
            summary[name] = _summary(args.out / name, bar)
    side = json.loads((args.out / "side-by-side.json").read_text()) if (args.out / "side-by-side.json").is_file() else {}
    grid_side = (side.get("grid") or {}).get("median")
    for name, row in summary.items():
        row["side_by_side_tok_s"] = (side.get(name) or {}).get("median")
        row["side_by_side_vs_grid"] = row["side_by_side_tok_s"] / grid_side if grid_side and row["side_by_side_tok_s"] else None
        row["gpu_s_share_of_grid"] = row["gpu_s"] / summary["grid"]["gpu_s"]
    if "random" in summary:
        summary["random"]["uniform_draw_hit_chance"] = _uniform_draw_hit_chance(_grid_records(args.out), summary["random"]["trials"])
    (args.out / "efficiency.json").write_text(json.dumps(summary, indent=2))
    print("| run | trials (measured) | GPU-s total | share of grid | GPU-s to within 5% of grid best (in-run figure) "
          "| GPU-s to its final choice | chosen | tok/s in run | side by side | vs grid |")
    print("|---|--:|--:|--:|--:|--:|---|--:|--:|--:|")
    for name, r in summary.items():
        reach = f"{r['gpu_s_to_within_5pct']:.0f}" if r["gpu_s_to_within_5pct"] is not None else "not reached"
        side_s = f"{r['side_by_side_tok_s']:.1f}" if r["side_by_side_tok_s"] else "–"
        vs = f"{r['side_by_side_vs_grid'] * 100:.1f}%" if r["side_by_side_vs_grid"] else "–"
        final = f"{r['gpu_s_to_final_choice']:.0f}" if r["gpu_s_to_final_choice"] is not None else "–"
        print(f"| {name} | {r['trials']} ({r['measured']}) | {r['gpu_s']:.0f} | {r['gpu_s_share_of_grid'] * 100:.1f}% | {reach} | "
              f"{final} | {r['chosen']} | {r['chosen_tok_s_in_run']:.1f} | {side_s} | {vs} |")
    chance = summary.get("random", {}).get("uniform_draw_hit_chance")
    if chance and chance["chance"] is not None:
        print(f"\n{chance['draws']} candidates drawn uniformly from the grid's {chance['candidates']} include one within 3% of "
              f"its best ({chance['good']} such) with probability {chance['chance'] * 100:.1f}%")


def main() -> None:
    args, tune_args = _parse()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.stage == "grid":
        from autotune.space import load_space

        if (args.grid_part is None) != (args.part_space is None):
            sys.exit("--grid-part and --part-space go together")
        at = tune_args.index("--space") + 1
        if args.part_space is not None:
            tune_args = [*tune_args[:at], str(args.part_space), *tune_args[at + 1:]]
        size = load_space(Path(tune_args[at])).size
        folder = args.out / ("grid" if args.grid_part is None else f"grid-{args.grid_part}")
        wall, code = run_tune(folder, [*tune_args, "--sampler", "grid", "--trials", str(size), "--no-bisect",
                                       "--no-memory-model", "--confirm-top", "0"])
        print(f"{folder.name}: {size} candidates, exit {code}, {wall:.0f} s")
    elif args.stage == "search":
        if not grid_dirs(args.out):
            sys.exit(f"no grid in {args.out} (run --stage grid first): the searches get a share of its time")
        grid = _summary(grid_dirs(args.out), None)
        seconds = max(30.0, args.fraction * grid["gpu_s"])
        searches = {"tuner": ["--sampler", "tpe"],
                    "random": ["--sampler", "random", "--no-bisect", "--no-memory-model", "--confirm-top", "0"]}
        for name, extra in ((name, searches[name]) for name in args.runs):
            started = time.perf_counter()
            _, code = run_tune(args.out / name, [*tune_args, *extra, "--trials", "1000", "--timeout", f"{seconds:.0f}"])
            print(f"{name}: exit {code}, {time.perf_counter() - started:.0f} s (timeout {seconds:.0f} s)")
    elif args.stage == "side-by-side":
        _side_by_side(args, tune_args)
    else:
        _report(args, tune_args)


if __name__ == "__main__":
    sys.exit(main())
