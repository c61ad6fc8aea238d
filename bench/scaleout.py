"""Trials per hour with 1 and with N workers on one study (issue: scale-out).

For each worker count it runs a fresh study of the same space to the same trial count: `autotune
tune` plus N-1 `autotune worker` processes on the CPU, or `autotune tune --gpus 0,..,N-1` on GPUs.
It reports the all-inclusive rate (trials / wall time of the whole run: spawning, loading,
confirmation off) and the steady rate (trials finished between the first and the last trial, which
leaves out the start-up that every run pays once).

    python bench/scaleout.py --out outputs/scaleout-cpu --workers 1 2 --trials 8 -- --device cpu
    python bench/scaleout.py --out outputs/scaleout-gpu --gpus --workers 1 2 --trials 16 -- \\
        --model qwen2.5-7b-instruct --random-weights --space search_spaces/scaleout-7b.yaml --memory-budget 24GiB

Storage: a journal file in OUT (one host), or --storage postgresql://... (the password may also come
from $AUTOTUNE_STORAGE). Results: OUT/scaleout.json and one study directory per run.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import time
from pathlib import Path



def run(out: Path, workers: int, trials: int, storage: str | None, gpus: bool, tune_args: list[str]) -> dict:
    name = f"scaleout-w{workers}-{int(time.time())}"
    run_dir = out / name
    run_dir.mkdir(parents=True)
    url = storage or f"journal:///{(run_dir / 'study.journal').resolve()}"
    env = {**os.environ, "AUTOTUNE_STORAGE": url, "PYTHONUNBUFFERED": "1"}
    cli = [sys.executable, "-m", "autotune.cli"]
    tune = [*cli, "tune", "--storage", url, "--study", name, "--trials", str(trials), "--out", str(run_dir),
            "--confirm-top", "0", *tune_args]
    if gpus:
        tune += ["--gpus", ",".join(str(i) for i in range(workers))]
    started = time.monotonic()
    procs = [subprocess.Popen(tune, env=env, stdout=open(run_dir / "tune.log", "w"), stderr=subprocess.STDOUT)]
    if not gpus:
        _wait_for_study(url, name, procs[0])
        device = [a for i, a in enumerate(tune_args) if i > 0 and tune_args[i - 1] == "--device"] or ["cpu"]
        for w in range(1, workers):
            procs.append(subprocess.Popen([*cli, "worker", "--study", name, "--device", device[0], "--out", str(run_dir / f"w{w}")],
                                          env=env, stdout=open(run_dir / f"worker{w}.log", "w"), stderr=subprocess.STDOUT))
    codes = [p.wait() for p in procs]
    wall_s = time.monotonic() - started
    recs = [r for r in _records(url, name) if r.state != "duplicate"]  # all workers' trials, from the storage
    finished = sorted(dt.datetime.fromisoformat(r.finished_at).timestamp() for r in recs)
    steady_s = finished[-1] - finished[0] if len(finished) > 1 else None
    return {
        "workers": workers, "study": name, "exit_codes": codes, "trials": len(recs), "wall_s": round(wall_s, 1),
        "trials_per_hour": round(len(recs) / wall_s * 3600, 1),
        # n trials finish in n-1 gaps after the first one
        "steady_trials_per_hour": round((len(recs) - 1) / steady_s * 3600, 1) if steady_s else None,
        "measured": sum(1 for r in recs if r.state == "measured"),
    }


def _records(url: str, name: str):
    import optuna

    from autotune.storage import open_storage
    from autotune.study import records

    return records(optuna.load_study(study_name=name, storage=open_storage(url)))


def _wait_for_study(url: str, name: str, tune: subprocess.Popen) -> None:
    import optuna

    from autotune.storage import open_storage

    while tune.poll() is None:
        try:
            if name in [s.study_name for s in optuna.get_all_study_summaries(open_storage(url), include_best_trial=False)]:
                return
        except Exception:
            pass
        time.sleep(0.5)


def main() -> None:
    argv = sys.argv[1:]
    tune_args = argv[argv.index("--") + 1:] if "--" in argv else []
    own = argv[: argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--storage", default=os.environ.get("AUTOTUNE_STORAGE"))
    parser.add_argument("--gpus", action="store_true", help="N workers = tune --gpus 0..N-1 (else tune + N-1 `autotune worker`)")
    args = parser.parse_args(own)
    args.out.mkdir(parents=True, exist_ok=True)
    results = []
    for n in args.workers:
        result = run(args.out, n, args.trials, args.storage, args.gpus, tune_args)
        results.append(result)
        print(json.dumps(result), flush=True)
    base = results[0]["trials_per_hour"]
    for r in results:
        r["speedup_vs_first"] = round(r["trials_per_hour"] / base, 2) if base else None
    (args.out / "scaleout.json").write_text(json.dumps({"args": own, "tune_args": tune_args, "results": results}, indent=2) + "\n")
    print(f"{'workers':>7} {'trials':>6} {'wall s':>8} {'trials/h':>9} {'steady trials/h':>16} {'speed-up':>8}")
    for r in results:
        print(f"{r['workers']:>7} {r['trials']:>6} {r['wall_s']:>8} {r['trials_per_hour']:>9} "
              f"{str(r['steady_trials_per_hour']):>16} {r['speedup_vs_first']:>8}")


if __name__ == "__main__":
    main()
