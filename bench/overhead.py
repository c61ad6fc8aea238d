"""Where does a study's wall time go? Runs `autotune tune ARGS` (timing the whole command, start-up
included) and splits the time of the trials it ran into measuring (warm-up + timed repeats, and
the probing that ended in an OOM answer), loading models, spawning workers, and the rest
(bookkeeping: sampler, storage, files, process start-up). Building a shape-only checkpoint on a
fresh machine (random weights saved once, ~1 minute for a 7B) is reported apart, as preparing.

    python bench/overhead.py --out outputs/overhead-cpu -- --trials 12 --device cpu
    python bench/overhead.py --out outputs/h100 -- --model qwen2.5-7b-instruct --random-weights \\
        --space llm-7b-24gib --memory-budget 24GiB --trials 60 --device cuda:0

Each invocation appends its wall time to OUT/overhead.jsonl, so a study resumed over several
commands (the GPU machine allows 10 minutes a command) is accounted as a whole.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from common import parse_args, run_tune

from autotune.report import read_trials


def account(out: Path) -> dict[str, float]:
    calls = [json.loads(line) for line in (out / "overhead.jsonl").read_text().splitlines() if line.strip()]
    numbers = {n for call in calls for n in call["new_trials"]}
    recs = [r for r in read_trials(out) if r.number in numbers and r.state != "duplicate"]
    wall = sum(call["wall_s"] for call in calls)
    timed = warmup = probing = load = spawn = prepare = 0.0
    for r in recs:
        m = r.outcome.measurement
        spawn += r.spawn_s
        load += r.outcome.load_s
        prepare += r.outcome.prepare_s
        probing += r.outcome.probe_s  # the batch-size bisection this trial ran
        if m is not None:
            timed += m.measure_s
            warmup += m.warmup_s
        elif r.outcome.status == "oom" and r.outcome.phase == "measure" and r.outcome.probe_s == 0:
            probing += max(0.0, r.total_s - r.spawn_s - r.outcome.load_s - r.outcome.prepare_s)
    # The confirmation stage after the search re-measures the top few: measuring and loading too.
    confirm_measuring = sum(call.get("confirmation_measuring_s", 0.0) for call in calls)
    confirm_loading = sum(call.get("confirmation_loading_s", 0.0) for call in calls)
    measuring = timed + warmup + probing + confirm_measuring
    load += confirm_loading
    return {
        "commands": len(calls), "trials": len(recs), "wall_s": wall, "measuring_s": measuring, "timed_repeats_s": timed,
        "warmup_s": warmup, "oom_probing_s": probing, "confirmation_measuring_s": confirm_measuring, "loading_s": load, "spawning_s": spawn,
        "preparing_checkpoint_s": prepare, "bookkeeping_s": wall - measuring - load - spawn - prepare, "measuring_fraction": measuring / wall if wall else 0.0,
        "timed_fraction": timed / wall if wall else 0.0,
    }


def _run_logs(out: Path) -> list[dict]:
    """One line per `autotune tune` run of the study (autotune/study/loop.py writes runs.jsonl)."""
    path = out / "runs.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def main() -> None:
    args, tune_args = parse_args(__doc__, "only account an existing OUT")
    if not args.no_run:
        before = {r.number for r in read_trials(args.out)}
        runs_before = len(_run_logs(args.out))
        wall, returncode = run_tune(args.out, tune_args)
        new = sorted({r.number for r in read_trials(args.out)} - before)
        runs = _run_logs(args.out)[runs_before:]
        if returncode not in (0, 1) and not new:
            sys.exit(f"autotune tune failed (exit {returncode}) and measured nothing; not accounted")
        with open(args.out / "overhead.jsonl", "a") as f:
            f.write(json.dumps({"wall_s": wall, "new_trials": new, "returncode": returncode, "args": tune_args,
                                **{key: sum(run.get(key, 0.0) for run in runs) for key in
                                   ("confirmation_s", "confirmation_measuring_s", "confirmation_loading_s")}}) + "\n")
    acc = account(args.out)
    print(f"\nstudy time accounting for {args.out} ({acc['commands']} command(s), {acc['trials']} trials)")
    for key in ("wall_s", "measuring_s", "timed_repeats_s", "warmup_s", "oom_probing_s", "confirmation_measuring_s",
                "loading_s", "spawning_s",
                "preparing_checkpoint_s", "bookkeeping_s"):
        print(f"  {key:<24} {acc[key]:9.1f} s  {acc[key] / acc['wall_s'] * 100 if acc['wall_s'] else 0:5.1f}%")
    print(f"  measuring fraction (warm-up + timed + OOM probing + confirmation) = {acc['measuring_fraction'] * 100:.1f}%"
          f"; timed repeats alone = {acc['timed_fraction'] * 100:.1f}%")
    (args.out / "overhead-summary.json").write_text(json.dumps(acc, indent=2))


if __name__ == "__main__":
    main()
