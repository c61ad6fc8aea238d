"""Where does a compiled batch-1 decode step's time go? (issue 19's latency target)

BENCHMARKS §17: bf16 + sdpa_gqa + CUDA graphs decodes at 8.46 ms a token on the H100, where the
weights take 4.7 ms to read (56% of the bandwidth limit; the target is 60%). One process, the 7B
random model in bf16 on the GPU, batch 1, 512-token prompt, 64 new tokens, each variant timed
3 times interleaved over 3 rounds:

  generate (the tool's measurement)  generate() with min_new_tokens, as the worker runs it
  generate, no min_new_tokens        the same without the min-length logits processor
  generate, deferred stop check      generate() with transformers' own DeferredStopCheck (the stop
                                     flag read one step late, no per-step synchronisation), which
                                     transformers 5.17-5.25 switch on for mps only
  decode loop                        the same compiled forward (generate's own compiled call) in
                                     a plain loop: argmax on the GPU, no per-step synchronisation
  one step, GPU time                 CUDA events around one compiled step: the GPU's share

generate minus the loop is generate()'s per-step Python and synchronisation; the loop minus the
GPU time is what CUDA-graph replay leaves unhidden; the GPU time against the weight bytes read
is the kernels' bandwidth efficiency. On CPU (a smoke test of the script: tiny config, no
compile) the GPU time is not measured.

    python bench/batch1_compiled_probe.py OUT/probe.json [model-config-name] [device]
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

import torch
from transformers import CompileConfig, StaticCache

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import random_bf16_model  # noqa: E402
from knob_values import bf16_bytes_per_token, copy_bandwidth_gb_s  # noqa: E402


def main() -> None:
    out, name, device = Path(sys.argv[1]), *(sys.argv[2:] or ["qwen2.5-7b-instruct", "cuda:0"])
    cuda = device.startswith("cuda")
    prompt, new = (512, 64) if cuda else (24, 8)
    model, config = random_bf16_model(name, device)
    compile_config = CompileConfig(mode="reduce-overhead")
    model.generation_config.compile_config = compile_config
    ids = torch.randint(0, min(32000, config.vocab_size), (1, prompt), device=device)
    pad = 0
    # On CPU generate() does not compile (accelerators only): the smoke test runs eagerly.
    step_fn = model.get_compiled_call(compile_config) if cuda else model.__call__

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    from autotune.kv_cache import stop_check_mode

    def generate(n: int, min_new: bool, deferred: bool = False) -> tuple[float, int]:
        kwargs = {"min_new_tokens": n} if min_new else {}
        # The tool's own switch (autotune/kv_cache.py): sync is transformers' default on CUDA.
        with stop_check_mode("deferred" if deferred else "sync"):
            sync()
            t = time.perf_counter()
            result = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False,
                                    pad_token_id=pad, cache_implementation="static", **kwargs)
            sync()
        return time.perf_counter() - t, result.shape[1] - prompt

    def per_token_generate(min_new: bool, deferred: bool = False) -> float:
        t1, _ = generate(1, min_new, deferred)
        tn, n = generate(new, min_new, deferred)
        if min_new:  # without min_new_tokens a random model may stop early at an EOS: n says how far it went
            assert n == new, f"generated {n} tokens, not {new}"
        return (tn - t1) / max(n - 1, 1) * 1000

    def decode_loop() -> tuple[float, float | None]:
        """ms per token of the compiled forward in a loop, and one step's GPU time in ms."""
        cache = StaticCache(config=config, max_cache_len=prompt + new)
        positions = torch.arange(prompt, device=device)
        logits = model(input_ids=ids, past_key_values=cache, cache_position=positions, use_cache=True).logits
        token = logits[:, -1:].argmax(-1)
        sync()
        t = time.perf_counter()
        for i in range(new - 1):
            position = torch.tensor([prompt + i], device=device)
            logits = step_fn(input_ids=token, past_key_values=cache, cache_position=position, use_cache=True).logits
            token = logits[:, -1:].argmax(-1)
        sync()
        loop_ms = (time.perf_counter() - t) / (new - 1) * 1000
        gpu_ms = None
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            position = torch.tensor([prompt + new - 1], device=device)
            start.record()
            step_fn(input_ids=token, past_key_values=cache, cache_position=position, use_cache=True)
            end.record()
            torch.cuda.synchronize()
            gpu_ms = start.elapsed_time(end)
        return loop_ms, gpu_ms

    variants = {
        "generate (the tool's measurement)": lambda: per_token_generate(True),
        "generate, no min_new_tokens": lambda: per_token_generate(False),
        # torch has no CPU events, which DeferredStopCheck records: CUDA only.
        "generate, deferred stop check": lambda: per_token_generate(True, deferred=True) if cuda else None,
        "decode loop (compiled forward, no per-step sync)": lambda: decode_loop()[0],
        "one step, GPU time (CUDA events)": lambda: decode_loop()[1],
    }
    results: dict[str, list[float]] = {k: [] for k in variants}
    with torch.inference_mode():
        for make in variants.values():  # compile and warm every path
            make()
            make()
        for r in range(3):
            for k in (variants if r % 2 == 0 else reversed(list(variants))):
                value = variants[k]()
                if value is not None:
                    results[k].append(value)
    bandwidth = copy_bandwidth_gb_s(device)
    from autotune.memory_model import ModelShape

    weight_gb = bf16_bytes_per_token(ModelShape.from_config(config.to_dict())) / 1e9
    limit_ms = weight_gb / bandwidth * 1000 if bandwidth else None
    summary = {"device": torch.cuda.get_device_name(device) if cuda else "cpu", "copy_bandwidth_gb_s": bandwidth,
               "bf16_weight_gb": weight_gb, "bandwidth_limit_ms_per_token": limit_ms,
               "variants": {k: {"ms_per_token_median": statistics.median(v) if v else None, "samples": v} for k, v in results.items()}}
    out.write_text(json.dumps(summary, indent=2))
    print(f"bandwidth limit: {limit_ms:.2f} ms/token" if limit_ms else "bandwidth limit: not measured (CPU)")
    for k, v in summary["variants"].items():
        median = v["ms_per_token_median"]
        share = f"  {limit_ms / median:.0%} of the limit" if median and limit_ms else ""
        print(f"{k:50s} {median if median is None else round(median, 2)} ms/token{share}  {['%.2f' % s for s in v['samples']]}")


if __name__ == "__main__":
    main()
