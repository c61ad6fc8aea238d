"""Is compiled int8 weight-only slow because of its kernels' inductor settings? (issue 19)

BENCHMARKS §18: torchao int8 weight-only, compiled with CUDA graphs, decoded 12.1 tokens/s at
batch 1 on the H100 where bf16 decoded 136, with clean compile statistics. autotune builds every
torchao config with set_inductor_config=False, because torchao's recommended inductor settings
(coordinate descent tuning, ...) are process-wide and never restored. This probe measures the same
random 7B at batch 1 (512-token prompt, 64 new tokens, static cache, reduce-overhead, sdpa_gqa,
deferred stop check) in three variants, each in a fresh process, interleaved over ROUNDS rounds:

  bf16                      the reference
  int8wo                    torchao Int8WeightOnlyConfig, inductor as autotune leaves it
  int8wo + torchao inductor the same inside torch._inductor.config.patch(<torchao's recommended
                            settings>): scoped, so a worker could measure it without leaking them

    python bench/int8wo_inductor_probe.py OUT/int8wo.json [--rounds 2] [--device cuda:0] [--config NAME]

Each process prints and returns ms per decoded token ((T(65 tokens) - T(1 token)) / 64, median of
5 after 2 warm-ups); the parent writes OUT (samples per variant, the median, the spread).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

VARIANTS = ("bf16", "int8wo", "int8wo + torchao inductor")
# torchao.quantization.utils.recommended_inductor_config_setter's settings (torchao 0.18), as a
# patch that is undone when the block ends.
TORCHAO_INDUCTOR = {"coordinate_descent_tuning": True, "coordinate_descent_check_all_directions": True,
                    "force_fuse_int_mm_with_mul": True, "fx_graph_cache": True, "triton.unique_kernel_names": True}


def measure(variant: str, name: str, device: str) -> dict:
    import contextlib

    import torch
    from transformers import CompileConfig

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from autotune.kv_cache import stop_check_mode
    from common import random_bf16_model

    cuda = device.startswith("cuda")
    prompt, new = (512, 64) if cuda else (24, 8)
    model, config = random_bf16_model(name, device)
    if variant != "bf16":
        from torchao.quantization import Int8WeightOnlyConfig, quantize_

        quantize_(model, Int8WeightOnlyConfig(set_inductor_config=False))
    model.generation_config.compile_config = CompileConfig(mode="reduce-overhead")
    scope = torch._inductor.config.patch(TORCHAO_INDUCTOR) if variant.endswith("inductor") else contextlib.nullcontext()
    ids = torch.randint(0, min(32000, config.vocab_size), (1, prompt), device=device)

    def generate(n: int) -> float:
        torch.cuda.synchronize() if cuda else None
        t = time.perf_counter()
        model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n,
                       do_sample=False, pad_token_id=0, cache_implementation="static")
        torch.cuda.synchronize() if cuda else None
        return time.perf_counter() - t

    started = time.perf_counter()
    samples = []
    # Deferred where it runs (CUDA): the batch-1 config §18 measured at 64.7% of the limit.
    with scope, torch.inference_mode(), stop_check_mode("deferred" if cuda else "sync"):
        for _ in range(2):
            generate(1), generate(new)
        warm_s = time.perf_counter() - started
        for _ in range(5):
            t1 = generate(1)
            samples.append((generate(new) - t1) / (new - 1) * 1000)
    return {"variant": variant, "ms_per_token": samples, "warmup_s": warm_s,
            "peak_allocated_gib": torch.cuda.max_memory_allocated(device) / 2**30 if cuda else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--device", default="cuda:0")
    parser.add_argument("--config", default="qwen2.5-7b-instruct")
    parser.add_argument("--variant", help=argparse.SUPPRESS)  # the child's job
    parser.add_argument("--timeout-s", type=float, default=300)
    args = parser.parse_args()
    if args.variant:
        print("RESULT " + json.dumps(measure(args.variant, args.config, args.device)))
        return
    results: dict[str, dict] = {v: {"ms_per_token": [], "warmup_s": [], "errors": []} for v in VARIANTS}
    for r in range(args.rounds):
        for variant in (VARIANTS if r % 2 == 0 else VARIANTS[::-1]):
            command = [sys.executable, __file__, str(args.out), "--variant", variant, "--device", args.device,
                       "--config", args.config]
            try:
                done = subprocess.run(command, capture_output=True, text=True, timeout=args.timeout_s)
                lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
                if not lines:
                    raise RuntimeError(done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}")
                child = json.loads(lines[-1][len("RESULT "):])
                results[variant]["ms_per_token"] += child["ms_per_token"]
                results[variant]["warmup_s"].append(child["warmup_s"])
                results[variant]["peak_allocated_gib"] = child["peak_allocated_gib"]
            except (subprocess.TimeoutExpired, RuntimeError) as error:
                results[variant]["errors"].append(f"round {r}: {error}"[:400])
            print(f"round {r} {variant}: {results[variant]}", flush=True)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(results, indent=2))
    for variant, result in results.items():
        samples = result["ms_per_token"]
        if samples:
            median = statistics.median(samples)
            result["ms_per_token_median"] = median
            result["tokens_per_s"] = 1000 / median
            result["spread_pct"] = (max(samples) - min(samples)) / median * 100
        print(f"{variant:28s} " + (f"{1000 / result['ms_per_token_median']:.1f} tok/s ({result['ms_per_token_median']:.2f} ms, "
                                  f"spread {result['spread_pct']:.0f}%, n={len(samples)}) warm-up {result['warmup_s']}"
                                  if samples else f"no samples: {result['errors']}"))
    args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
