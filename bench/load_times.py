"""How long does loading take per quantization, on the fly versus from a pre-quantized copy?
Decides whether caching pre-quantized checkpoints is worth it (engine issue, overhead target).

    python bench/load_times.py --model qwen2.5-7b-instruct --device cuda:0
"""

from __future__ import annotations

import argparse
import gc
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from autotune.loading import from_pretrained_kwargs  # noqa: E402
from autotune.models import materialize, resolve_model  # noqa: E402
from autotune.spec import Candidate  # noqa: E402


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main() -> None:
    import torch
    from transformers import AutoModelForCausalLM

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="qwen2.5-7b-instruct")
    parser.add_argument("--device", default="cuda:0")
    parser.add_argument("--quantization", nargs="+", default=["none", "bnb-nf4", "bnb-int8"])
    args = parser.parse_args()
    ref = resolve_model(args.model, random_weights=True)
    t = time.perf_counter()
    source = materialize(ref, args.device)
    print(json.dumps({"prepare_s": round(time.perf_counter() - t, 2)}), flush=True)
    for quant in args.quantization:
        cand = Candidate(dtype="bf16", quantization=quant, attn_implementation="sdpa", compile=False,
                         batch_size=1, max_length=1024, new_tokens=8)
        row = {"quantization": quant}
        for attempt in ("first", "second"):
            t = time.perf_counter()
            model = AutoModelForCausalLM.from_pretrained(source, **from_pretrained_kwargs(cand, args.device))
            _sync(args.device)
            row[f"on_the_fly_{attempt}_s"] = round(time.perf_counter() - t, 2)
            if attempt == "first" and quant != "none":
                saved = Path(tempfile.mkdtemp(prefix="prequant-"))
                t = time.perf_counter()
                model.save_pretrained(saved)
                row["save_s"] = round(time.perf_counter() - t, 2)
            del model
            gc.collect()
            torch.cuda.empty_cache() if args.device.startswith("cuda") else None
        if quant != "none":
            for attempt in ("first", "second"):
                t = time.perf_counter()
                model = AutoModelForCausalLM.from_pretrained(saved, device_map={"": args.device}, dtype=torch.bfloat16)
                _sync(args.device)
                row[f"prequantized_{attempt}_s"] = round(time.perf_counter() - t, 2)
                del model
                gc.collect()
            shutil.rmtree(saved)
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
