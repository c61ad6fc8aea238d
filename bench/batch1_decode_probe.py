"""Why is batch-1 decode on a workload slower than on the fixed shape? (issue 20's TPOT outliers)
One process, the 7B random model in bf16 on the GPU, batch 1, one prompt length: the same
generate() timed with and without each thing the workload path adds (a streamer, a left-padded
attention mask, min_new_tokens), interleaved, 3 rounds. Prints ms per generated token."""

from __future__ import annotations

import contextlib
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM
from transformers.generation.streamers import BaseStreamer

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from autotune.measure.memory import MemoryTracker  # noqa: E402
from autotune.models import BUNDLED_CONFIG_DIR  # noqa: E402


class Null(BaseStreamer):
    def put(self, value) -> None:
        pass

    def end(self) -> None:
        pass


def main() -> None:
    out, name, device = Path(sys.argv[1]), *(sys.argv[2:] or ["qwen2.5-7b-instruct", "cuda:0"])
    config = AutoConfig.from_pretrained(BUNDLED_CONFIG_DIR / f"{name}.json")
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16).eval()
    pad = 0
    prompt, new = 600, 48
    ids = torch.randint(0, min(32000, config.vocab_size), (1, prompt), device=device)
    ones = torch.ones_like(ids)
    padded_ids = torch.cat([torch.full((1, 40), pad, device=device), ids], dim=1)
    padded_mask = torch.cat([torch.zeros((1, 40), device=device, dtype=torch.long), ones], dim=1)
    variants = {
        "plain (fixed-shape kwargs)": lambda: dict(input_ids=ids, attention_mask=ones, min_new_tokens=new),
        "+ streamer": lambda: dict(input_ids=ids, attention_mask=ones, min_new_tokens=new, streamer=Null()),
        "no min_new_tokens": lambda: dict(input_ids=ids, attention_mask=ones),
        "left-padded mask": lambda: dict(input_ids=padded_ids, attention_mask=padded_mask, min_new_tokens=new),
        "left-padded + streamer": lambda: dict(input_ids=padded_ids, attention_mask=padded_mask, min_new_tokens=new, streamer=Null()),
        "plain inside MemoryTracker": lambda: dict(input_ids=ids, attention_mask=ones, min_new_tokens=new),
    }
    def sync() -> None:
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    results: dict[str, list[float]] = {k: [] for k in variants}
    with torch.inference_mode():
        for k, make in variants.items():  # warm each path once
            model.generate(**make(), max_new_tokens=new, do_sample=False, pad_token_id=pad)
        for r in range(3):
            for k in (variants if r % 2 == 0 else reversed(list(variants))):
                with MemoryTracker(device) if "MemoryTracker" in k else contextlib.nullcontext():
                    sync()
                    t = time.perf_counter()
                    model.generate(**variants[k](), max_new_tokens=new, do_sample=False, pad_token_id=pad)
                    sync()
                    results[k].append((time.perf_counter() - t) / new * 1000)
    summary = {k: {"ms_per_token_median": statistics.median(v), "samples": v} for k, v in results.items()}
    out.write_text(json.dumps(summary, indent=2))
    for k, v in summary.items():
        print(f"{k:32s} {v['ms_per_token_median']:6.1f} ms/token  {['%.1f' % s for s in v['samples']]}")


if __name__ == "__main__":
    main()
