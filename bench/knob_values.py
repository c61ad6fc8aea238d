"""Every value of the issue-19 knobs, one at a time from the seed recipe, each in a fresh worker.

    python bench/knob_values.py --out outputs/knob-values --deadline-s 420 -- --model qwen2.5-7b-instruct \\
        --random-weights --memory-budget 24GiB --device cuda:0

The seed recipe is the 24 GB-tier one of the seeds: bf16, sdpa, batch 8, 512-token prompts
(max_length 576) and 64 new tokens. Each row changes one knob (a few "combined" rows change
several, to show what they reach together); each is measured once, 3 repeats, in a worker of
its own, so that one load's left-overs (compiled graphs, cached blocks) cannot help or hurt the
next. A value the machine cannot run is answered `unsupported` with the worker's reason, like in
a study. The copy bandwidth of the GPU is measured first: the decode limit of the bf16 weights at
batch 1 (bf16 weight bytes per token / bandwidth), the bar of the latency target.

Results are written after every row (OUT/knob-values.json) and printed as a markdown table at
the end; `--deadline-s` stops starting rows after that many seconds (a device call has a time
limit), and the rows not reached are listed as such, never left out silently.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import worker_bench_target  # noqa: E402

SEED = {"dtype": "bf16", "attn_implementation": "sdpa", "batch_size": 8, "max_length": 576, "new_tokens": 64}

# (row name, the knobs it changes from the seed). Order: the cheap loads first, compiled rows last
# (each compiles for a minute or more), so that a deadline cuts the expensive ones.
ROWS: list[tuple[str, dict]] = [
    ("seed (bf16 sdpa b=8)", {}),
    ("quantization torchao-int8wo", {"quantization": "torchao-int8wo"}),
    ("quantization torchao-int4wo", {"quantization": "torchao-int4wo"}),
    ("quantization torchao-fp8", {"quantization": "torchao-fp8"}),
    ("cache static", {"cache_implementation": "static"}),
    ("cache offloaded", {"cache_implementation": "offloaded"}),
    ("cache offloaded_static", {"cache_implementation": "offloaded_static"}),
    ("cache quantized-fp8", {"cache_implementation": "quantized-fp8"}),
    ("cache quantized-hqq", {"cache_implementation": "quantized-hqq"}),
    ("cache quantized-quanto", {"cache_implementation": "quantized-quanto"}),
    ("prefill_chunk_size 128", {"prefill_chunk_size": 128}),
    ("cpu_offload_gib 8", {"cpu_offload_gib": 8}),
    ("seed at batch 1", {"batch_size": 1}),
    ("combined: bf16 b=64", {"batch_size": 64}),
    ("combined: torchao-int4wo b=128", {"quantization": "torchao-int4wo", "batch_size": 128}),
    ("compile reduce-overhead", {"compile": True, "compile_mode": "reduce-overhead"}),
    ("compile default", {"compile": True, "compile_mode": "default"}),
    ("compile max-autotune-no-cudagraphs", {"compile": True, "compile_mode": "max-autotune-no-cudagraphs"}),
    ("combined: torchao-int4wo compile reduce-overhead b=1", {"quantization": "torchao-int4wo", "compile": True,
                                                              "compile_mode": "reduce-overhead", "batch_size": 1}),
    ("combined: torchao-int8wo compile reduce-overhead b=64", {"quantization": "torchao-int8wo", "compile": True,
                                                               "compile_mode": "reduce-overhead", "batch_size": 64}),
]


def copy_bandwidth_gb_s(device: str) -> float | None:
    """Device-to-device copy bandwidth (bytes read + written per second), median of 20 copies of 1 GiB."""
    import torch

    if not device.startswith("cuda"):
        return None
    src = torch.empty(1 << 30, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    times = []
    for _ in range(20):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        dst.copy_(src)
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1000)
    times.sort()
    del src, dst
    torch.cuda.empty_cache()
    return 2 * (1 << 30) / times[len(times) // 2] / 1e9


def bf16_bytes_per_token(shape) -> float:
    """The bf16 weight bytes one decode step reads: every weight but the input embedding table, of
    which it reads one row (a tied lm_head reads the table, so it counts then)."""
    untied_embedding = shape.vocab * shape.hidden if shape.other_params >= 2 * shape.vocab * shape.hidden else 0
    return 2.0 * (shape.params - untied_embedding)


def _row(name: str, changes: dict, outcome) -> dict:
    m = outcome.measurement
    row = {"row": name, "changes": changes, "status": outcome.status, "reason": outcome.reason}
    if m is not None:
        row.update(output_tok_s=m.output_tokens_per_s.median, output_spread_pct=m.output_tokens_per_s.spread_pct,
                   decode_tok_s=m.decode_tokens_per_s.median if m.decode_tokens_per_s else None,
                   ttft_ms=m.ttft_s.median * 1000, tpot_ms=m.tpot_s.median * 1000 if m.tpot_s else None,
                   peak_gib=m.peak_memory_gib, warmup_s=m.warmup_s)
    return row


def markdown(result: dict) -> str:
    seed = next((r for r in result["rows"] if r["row"].startswith("seed (") and r.get("output_tok_s")), None)
    lines = ["| row | state | out tok/s | spread | decode tok/s | TTFT ms | TPOT ms | peak GiB | × seed | reason |",
             "|---|---|--:|--:|--:|--:|--:|--:|--:|---|"]
    for r in result["rows"]:
        if r.get("output_tok_s") is None:
            lines.append(f"| {r['row']} | {r['status']} | – | – | – | – | – | – | – | {r.get('reason') or ''} |")
            continue
        ratio = f"{r['output_tok_s'] / seed['output_tok_s']:.2f}" if seed else "–"
        decode = f"{r['decode_tok_s']:,.1f}" if r.get("decode_tok_s") else "–"
        tpot = f"{r['tpot_ms']:.1f}" if r.get("tpot_ms") else "–"
        lines.append(f"| {r['row']} | {r['status']} | {r['output_tok_s']:,.1f} | {r['output_spread_pct']:.0f}% | {decode} | "
                     f"{r['ttft_ms']:,.0f} | {tpot} | {r['peak_gib']:.2f} | {ratio} | |")
    for name in result.get("not_reached", []):
        lines.append(f"| {name} | not reached (deadline) | – | – | – | – | – | – | – | |")
    if result.get("copy_bandwidth_gb_s"):
        lines.append(f"\nGPU copy bandwidth {result['copy_bandwidth_gb_s']:,.0f} GB/s; bf16 weights {result['bf16_weight_gb']:.2f} GB "
                     f"-> batch-1 decode limit {result['decode_limit_tok_s']:,.1f} tokens/s")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--deadline-s", type=float, default=None, help="start no row after this many seconds")
    parser.add_argument("--rows", nargs="*", help="only the rows whose names start with one of these")
    parser.add_argument("--trial-timeout", type=float, default=240)
    parser.add_argument("--workers-dir", type=Path, help="the workers' logs (default OUT/workers)")
    parser.add_argument("tune_args", nargs=argparse.REMAINDER)
    args = parser.parse_args()

    from autotune.memory_model import ModelShape
    from autotune.space import unsupported_reason
    from autotune.spec import Candidate, TrialOutcome
    from autotune.worker import WorkerClient, WorkRequest

    _, ref, budget, info = worker_bench_target(args)
    device = info.device
    started = time.monotonic()
    bandwidth = copy_bandwidth_gb_s(device)
    bf16_gb = bf16_bytes_per_token(ModelShape.from_config(ref.config())) / 1e9
    result: dict = {"model": ref.name, "device": device, "memory_budget_gib": budget, "seed": SEED, "rows": [],
                    "not_reached": [], "copy_bandwidth_gb_s": bandwidth, "bf16_weight_gb": bf16_gb,
                    "decode_limit_tok_s": bandwidth / bf16_gb if bandwidth else None}
    rows = [r for r in ROWS if not args.rows or any(r[0].startswith(p) for p in args.rows)]
    for i, (name, changes) in enumerate(rows):
        if args.deadline_s is not None and time.monotonic() - started > args.deadline_s:
            result["not_reached"] = [n for n, _ in rows[i:]]
            break
        candidate = Candidate(**{**SEED, **changes})
        reason = unsupported_reason(candidate, info)  # what a study answers before loading anything
        if reason is not None:
            outcome = TrialOutcome(status="unsupported", reason=reason)
        else:
            # A fresh worker per row: each value is measured from the state a deployment starts in.
            worker = WorkerClient(ref, device, budget, args.workers_dir or args.out / "workers")
            try:
                outcome, _ = worker.run(WorkRequest(trial_number=i, candidate=candidate, repeats=3), args.trial_timeout)
            finally:
                worker.close()
        row = _row(name, changes, outcome)
        result["rows"].append(row)
        print(f"[{i + 1}/{len(rows)} {time.monotonic() - started:.0f}s] {name}: {outcome.status} "
              f"{row.get('output_tok_s') or outcome.reason}", flush=True)
        (args.out / "knob-values.json").write_text(json.dumps(result, indent=2))
    (args.out / "knob-values.json").write_text(json.dumps(result, indent=2))
    table = markdown(result)
    (args.out / "knob-values.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
