"""Issue 20 on a GPU: a study measured on a workload with a spread under --slo, the throughput-only
pick of the same trials against the SLO, and the capacity checked by replaying the workload.

    python bench/traffic_slo.py --out OUT --at 1.0,0.8,0.5 --requests 112 -- --model qwen2.5-7b-instruct \\
        --random-weights --space bench/spaces/traffic-7b-24gib.yaml --memory-budget 24GiB \\
        --workload prompt=mean:600/stdev:500/min:64/max:2048,output=mean:48/stdev:32/min:16/max:128 \\
        --slo ttft_p95=2500ms,tpot_p95=30ms --trials 14 --timeout 200 --trial-timeout 120 --device cuda:0

1. `autotune tune ARGS --out OUT/slo`: every candidate checked at its worst case and measured on
   batches drawn from the workload; a candidate over a limit is slo_violated, never the best.
2. The throughput-only pick: the highest-throughput candidate of the same study's measured and
   slo_violated trials, i.e. what the study would have chosen without --slo over the trials it
   measured (each measured once; the SLO's pick went through the confirmation), with its SLO figures.
3. `autotune replay OUT/slo/best.yaml --at FRACTIONS --requests N`: the chosen config's service
   times measured on the workload at batch 1, 2, 4, ... its batch, its capacity under the SLO, then
   the workload replayed at each fraction of it (Poisson arrivals, one server process batching as
   requests come) next to the simulation of the same arrivals (autotune/replay.py).

Everything lands in OUT (summary.md last); each step's output is kept if a later one fails.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import run_tune  # noqa: E402


def throughput_only_pick(out: Path, slo: str) -> dict | None:
    from autotune.report import read_trials
    from autotune.slo import observed, parse_slo, violations

    recs = [r for r in read_trials(out) if r.state in ("measured", "slo_violated") and r.outcome.measurement is not None]
    if not recs:
        return None
    pick = max(recs, key=lambda r: r.outcome.measurement.throughput.median)
    m, limits = pick.outcome.measurement, parse_slo(slo)
    return {"trial": pick.number, "candidate": pick.candidate.label(), "state": pick.state,
            "throughput": m.throughput.median, "figures": {lim.key: observed(m, lim) for lim in limits},
            "violations": violations(m, limits),
            "excess": {lim.key: observed(m, lim) / lim.limit_s - 1 for lim in limits if observed(m, lim) is not None}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--at", default="1.0,0.8,0.5", help="replay rates as fractions of the capacity (fastest first)")
    parser.add_argument("--requests", type=int, default=112)
    parser.add_argument("tune_args", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    tune_args = [a for a in args.tune_args if a != "--"]
    slo = tune_args[tune_args.index("--slo") + 1]
    args.out.mkdir(parents=True, exist_ok=True)
    summary: dict = {"tune_args": tune_args}
    study = args.out / "slo"
    wall_s, code = run_tune(study, tune_args)
    summary["study"] = {"wall_s": wall_s, "exit": code}
    print(subprocess.run([sys.executable, "-m", "autotune.cli", "show", str(study), "--markdown"],
                         capture_output=True, text=True).stdout, flush=True)
    summary["throughput_only_pick"] = throughput_only_pick(study, slo)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2))
    if (study / "best.yaml").is_file():
        start = time.perf_counter()
        replay = subprocess.run([sys.executable, "-m", "autotune.cli", "replay", str(study / "best.yaml"), "--at", args.at,
                                 "--requests", str(args.requests), "--json", str(args.out / "replay.json")])
        summary["replay"] = {"wall_s": time.perf_counter() - start, "exit": replay.returncode}
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
