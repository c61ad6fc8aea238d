"""The seed recipe against tuned configs, side by side in one run: each measurement in a fresh
worker, the configs interleaved (the order reversed every other round), ROUNDS rounds, so machine
drift hits all alike (DESIGN.md: only same-run comparisons count).

    python bench/seed_vs_best.py --out OUT --rounds 3 --best OUT/study/best.yaml \\
        [--config 'int4 b=1 compiled=quantization:torchao-int4wo,compile:true,compile_mode:reduce-overhead,batch_size:1'] \\
        -- --model qwen2.5-7b-instruct --random-weights --memory-budget 24GiB --device cuda:0

The seed is the seeds' 24 GB-tier recipe (bench/knob_values.py's SEED: bf16, sdpa, batch 8,
max_length 576, 64 new tokens). --best adds a best.yaml's settings; --config NAME=K:V,... adds the
seed with those knobs changed. The GPU's copy bandwidth is measured first, for the batch-1 decode
limit of the bf16 weights (the latency target's bar). Results: OUT/side-by-side.json after every
measurement, and a markdown table (medians, spread = (max - min) / median of the pooled samples,
ratio to the seed's median) at the end.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import worker_bench_target  # noqa: E402
from knob_values import SEED, bf16_bytes_per_token, copy_bandwidth_gb_s  # noqa: E402


def _value(text: str):
    return {"true": True, "false": False}.get(text, int(text) if text.isdigit() else text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--best", type=Path, action="append", default=[], help="a best.yaml to compare (repeatable)")
    parser.add_argument("--config", action="append", default=[], help="NAME=K:V,K:V: the seed with these knobs changed")
    parser.add_argument("--trial-timeout", type=float, default=300)
    parser.add_argument("--deadline-s", type=float, default=None, help="start no measurement after this many seconds")
    parser.add_argument("tune_args", nargs=argparse.REMAINDER)
    args = parser.parse_args()

    from autotune.deploy import read_deployment
    from autotune.memory_model import ModelShape
    from autotune.spec import Candidate
    from autotune.worker import WorkerClient, WorkRequest

    _, ref, budget, info = worker_bench_target(args)
    device = info.device
    started = time.monotonic()
    configs: dict[str, Candidate] = {"seed (bf16 sdpa b=8)": Candidate(**SEED)}
    for path in args.best:
        configs[f"best of {path.parent.name}"] = read_deployment(path).settings
    for spec in args.config:
        name, _, changes = spec.rpartition("=")  # the changes hold no "=": a name may (b=1)
        configs[name] = Candidate(**{**SEED, **{k: _value(v) for k, v in (c.split(":", 1) for c in changes.split(","))}})
    bandwidth = copy_bandwidth_gb_s(device)
    bf16_gb = bf16_bytes_per_token(ModelShape.from_config(ref.config())) / 1e9
    result: dict = {"device": device, "rounds_planned": args.rounds, "copy_bandwidth_gb_s": bandwidth, "bf16_weight_gb": bf16_gb,
                    "decode_limit_tok_s": bandwidth / bf16_gb if bandwidth else None,
                    "configs": {n: {"candidate": c.label(), "settings": c.model_dump(mode="json"), "output": [], "decode": [],
                                    "tpot_ms": [], "peak_gib": [], "failures": []} for n, c in configs.items()}}
    for round_index in range(args.rounds):
        order = list(configs) if round_index % 2 == 0 else list(reversed(configs))
        for name in order:
            if args.deadline_s is not None and time.monotonic() - started > args.deadline_s:
                result["stopped"] = f"deadline {args.deadline_s:.0f} s reached in round {round_index + 1}"
                break
            worker = WorkerClient(ref, device, budget, args.out / "workers")  # fresh: the state a deployment starts in
            try:
                outcome, _ = worker.run(WorkRequest(trial_number=round_index, candidate=configs[name], repeats=3), args.trial_timeout)
            finally:
                worker.close()
            entry = result["configs"][name]
            m = outcome.measurement
            if outcome.status == "ok" and m is not None:
                entry["output"] += m.output_tokens_per_s.samples
                entry["decode"] += m.decode_tokens_per_s.samples
                entry["tpot_ms"] += [s * 1000 for s in m.tpot_s.samples]
                entry["peak_gib"].append(m.peak_memory_gib)
            else:
                entry["failures"].append(f"{outcome.status}: {outcome.reason}")
            print(f"[round {round_index + 1} {time.monotonic() - started:.0f}s] {name}: {outcome.status} "
                  f"{m.output_tokens_per_s.median if m else outcome.reason}", flush=True)
            (args.out / "side-by-side.json").write_text(json.dumps(result, indent=2))
        if "stopped" in result:
            break
    (args.out / "side-by-side.json").write_text(json.dumps(result, indent=2))
    table = markdown(result)
    (args.out / "side-by-side.md").write_text(table + "\n")
    print(table)


def _stat(samples: list[float]) -> tuple[float, float] | None:
    if not samples:
        return None
    med = statistics.median(samples)
    return med, (max(samples) - min(samples)) / med * 100


def markdown(result: dict) -> str:
    seed = result["configs"]["seed (bf16 sdpa b=8)"]
    seed_out, seed_dec = _stat(seed["output"]), _stat(seed["decode"])
    limit = result.get("decode_limit_tok_s")
    lines = ["| config | settings | output tok/s (spread) | × seed | decode tok/s (spread) | × seed | TPOT ms | "
             "batch-1 decode / bf16 bandwidth limit | peak GiB | samples |", "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|"]
    for name, entry in result["configs"].items():
        out, dec = _stat(entry["output"]), _stat(entry["decode"])
        if out is None:
            lines.append(f"| {name} | {entry['candidate']} | – | – | – | – | – | – | – | {'; '.join(entry['failures'])} |")
            continue
        lines.append(f"| {name} | {entry['candidate']} | {out[0]:,.1f} ({out[1]:.0f}%) | "
                     f"{out[0] / seed_out[0]:.2f} | {dec[0]:,.1f} ({dec[1]:.0f}%) | {dec[0] / seed_dec[0]:.2f} | "
                     f"{statistics.median(entry['tpot_ms']):.1f} | "
                     # The limit is batch 1's: one step reads the weights once for the whole batch.
                     f"{f'{dec[0] / limit:.0%}' if entry['settings']['batch_size'] == 1 else '–'} | {max(entry['peak_gib']):.2f} | "
                     f"{len(entry['output'])} |" if seed_out and limit else
                     f"| {name} | {entry['candidate']} | {out[0]:,.1f} | – | {dec[0]:,.1f} | – | – | – | – | {len(entry['output'])} |")
    if limit:
        lines.append(f"\nCopy bandwidth {result['copy_bandwidth_gb_s']:,.0f} GB/s; bf16 weights read per decode step "
                     f"{result['bf16_weight_gb']:.2f} GB; batch-1 decode limit {limit:,.1f} tok/s.")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
