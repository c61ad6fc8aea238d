"""Does a compiled candidate's peak memory depend on the shapes measured before it in the same
worker, and does resetting the compiled state between shapes remove that? Decides how the
worker should measure compiled candidates (search-efficiency issue, BENCHMARKS §8: in the
compiled grid, bf16 sdpa compile ran out of memory at batch 24 × 1024 after smaller shapes,
while a worker with fewer earlier shapes measured batch 32).

For one compiled load, the same sequence of shapes is measured with the worker's protocol
(`measure_generation`) four ways, each mode in its own fresh process(es):
  keep   — one process, shapes one after another, only transformers' static-cache memory
           dropped between them (what the worker does);
  regraph — the same, and the CUDA-graph trees reset before each new shape (dynamo's compiled
           code is kept: graphs are captured again, nothing recompiles);
  reset  — the same, and `torch._dynamo.reset()` (which also resets the CUDA-graph trees) before
           each new shape: everything compiles again;
  fresh  — a new process per shape (what a deployment starts from; the reference).
Prints, per mode and shape, the peak reserved GiB (or OOM) and the warm-up seconds.

    python bench/compile_memory.py --model qwen2.5-7b-instruct --device cuda:0 --memory-budget 24GiB \\
        --batch-sizes 1 4 8 16 24 32 --max-lengths 1024 --out DIR
"""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from autotune.loading import forget_static_cache, load_model_for_trial  # noqa: E402
from autotune.models import materialize, resolve_model  # noqa: E402
from autotune.spec import Candidate, parse_memory  # noqa: E402
from autotune.system import cap_gpu_memory  # noqa: E402


def _reset(mode: str) -> None:
    """Between shapes: `regraph` resets the CUDA-graph trees, `reset` all of dynamo, `keep` nothing.
    Both resets crash when a shape measured before comes back ("Running CUDAGraph after shutdown",
    H200, Session 7), so the worker does neither; this bench keeps them to show what they free."""
    import torch

    if mode == "reset":
        torch._dynamo.reset()
    elif mode == "regraph":
        from torch._inductor.cudagraph_trees import reset_cudagraph_trees

        reset_cudagraph_trees()


def _run_shapes(args, shapes: list[tuple[int, int]], mode: str) -> list[dict]:
    """Measure `shapes` in this process, one after another; one row per shape."""
    import torch

    from autotune.measure.throughput import measure_generation

    ref = resolve_model(args.model, random_weights=True)
    materialize(ref, args.device)
    if args.device.startswith("cuda"):
        cap_gpu_memory(args.device, parse_memory(args.memory_budget))
    first = Candidate(dtype=args.dtype, attn_implementation=args.attn, compile=True, batch_size=shapes[0][0],
                      max_length=shapes[0][1], new_tokens=args.new_tokens)
    model, _ = load_model_for_trial(ref, first, args.device)
    vocab_size = int(model.config.get_text_config().vocab_size)
    rows = []
    for index, (batch, length) in enumerate(shapes):
        forget_static_cache(model)
        if index > 0:
            _reset(mode)
        cand = first.model_copy(update={"batch_size": batch, "max_length": length})
        start = time.perf_counter()
        try:
            m = measure_generation(model, cand, args.device, args.repeats, vocab_size)
            rows.append({"batch": batch, "max_length": length, "peak_reserved_gib": round(m.peak_memory_gib, 2),
                         "tok_s": round(m.output_tokens_per_s.median, 1), "warmup_s": round(m.warmup_s, 1)})
        except torch.OutOfMemoryError:
            rows.append({"batch": batch, "max_length": length, "oom": True, "seconds": round(time.perf_counter() - start, 1)})
        # After the except block: until then its traceback keeps the failed run's tensors alive.
        gc.collect()
        if args.device.startswith("cuda"):
            torch.cuda.empty_cache()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="qwen2.5-7b-instruct")
    parser.add_argument("--device", default="cuda:0")
    parser.add_argument("--memory-budget", default="24GiB")
    parser.add_argument("--dtype", default="bf16")
    parser.add_argument("--attn", default="sdpa")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4, 8, 16, 24, 32])
    parser.add_argument("--max-lengths", type=int, nargs="+", default=[1024])
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--modes", nargs="+", choices=["keep", "regraph", "reset", "fresh"],
                        default=["keep", "regraph", "reset", "fresh"])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--child", choices=["keep", "regraph", "reset"], help=argparse.SUPPRESS)
    parser.add_argument("--shape", type=int, nargs=2, action="append", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:  # one process of a mode: measure the shapes given, print the rows as JSON
        print("ROWS " + json.dumps(_run_shapes(args, [tuple(s) for s in args.shape], args.child)), flush=True)
        return

    args.out.mkdir(parents=True, exist_ok=True)
    shapes = [(b, n) for n in args.max_lengths for b in args.batch_sizes]
    common = [sys.executable, __file__, "--model", args.model, "--device", args.device, "--memory-budget", args.memory_budget,
              "--dtype", args.dtype, "--attn", args.attn, "--new-tokens", str(args.new_tokens), "--repeats", str(args.repeats),
              "--out", str(args.out)]

    def child(mode: str, some: list[tuple[int, int]]) -> list[dict]:
        cmd = [*common, "--child", mode, *[x for b, n in some for x in ("--shape", str(b), str(n))]]
        done = subprocess.run(cmd, capture_output=True, text=True)
        with (args.out / f"{mode}.log").open("a") as log:
            log.write(done.stdout[-4000:] + done.stderr[-4000:])
        lines = [line for line in done.stdout.splitlines() if line.startswith("ROWS ")]
        if not lines:
            return [{"batch": b, "max_length": n, "error": f"exit {done.returncode}"} for b, n in some]
        return json.loads(lines[-1][5:])

    results: dict[str, list[dict]] = {}
    for mode in args.modes:
        start = time.perf_counter()
        results[mode] = child(mode, shapes) if mode != "fresh" else [row for shape in shapes for row in child("keep", [shape])]
        print(json.dumps({"mode": mode, "seconds": round(time.perf_counter() - start, 1), "rows": results[mode]}), flush=True)
    (args.out / "compile-memory.json").write_text(json.dumps(results, indent=2))

    def cell(row: dict) -> str:
        if row.get("oom"):
            return "OOM"
        if "error" in row:
            return row["error"]
        return f"{row['peak_reserved_gib']:.2f} GiB, {row['tok_s']:.0f} tok/s, warm-up {row['warmup_s']:.1f} s"

    print("| shape | " + " | ".join(args.modes) + " |")
    print("|---|" + "---|" * len(args.modes))
    for i, (b, n) in enumerate(shapes):
        print(f"| b={b} len={n} | " + " | ".join(cell(results[m][i]) for m in args.modes) + " |")


if __name__ == "__main__":
    main()
