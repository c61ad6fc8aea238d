"""Where does one-time preparation go inside a worker? Profiles, in one fresh process set up like
the study's worker (CUDA memory cap at the budget), the two builds a fresh GPU machine pays for:
the random-weight checkpoint and the pre-quantized int8 copy (its on-the-fly load, then its save).
Each step is timed and profiled with cProfile; the top functions by own time go to --out. Both
saves are then repeated with transformers' own writer (`save_pretrained`), so the streaming writer
(`autotune.checkpoint_io`) is compared with it in the same process.

    python bench/prepare_profile.py --model qwen2.5-7b-instruct --device cuda:0 --memory-budget 24GiB --out DIR
"""

from __future__ import annotations

import argparse
import cProfile
import functools
import io
import json
import pstats
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from autotune.checkpoint_io import save_checkpoint  # noqa: E402
from autotune.loading import from_pretrained_kwargs  # noqa: E402
from autotune.models import _build_random, resolve_model  # noqa: E402
from autotune.spec import Candidate, parse_memory  # noqa: E402
from autotune.system import cap_gpu_memory  # noqa: E402


def _profiled(name: str, fn, out: Path, rows: dict) -> object:
    profiler = cProfile.Profile()
    start = time.perf_counter()
    result = profiler.runcall(fn)
    rows[f"{name}_s"] = round(time.perf_counter() - start, 2)
    text = io.StringIO()
    stats = pstats.Stats(profiler, stream=text)
    stats.sort_stats("tottime").print_stats(25)
    stats.sort_stats("cumulative").print_stats(40)
    (out / f"{name}.prof.txt").write_text(text.getvalue())
    print(json.dumps({name: rows[f"{name}_s"]}), flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="qwen2.5-7b-instruct")
    parser.add_argument("--device", default="cuda:0")
    parser.add_argument("--memory-budget", default="24GiB")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    rows: dict = {}

    start = time.perf_counter()
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    rows["import_s"] = round(time.perf_counter() - start, 2)
    start = time.perf_counter()
    if args.device.startswith("cuda"):
        cap_gpu_memory(args.device, parse_memory(args.memory_budget))
    torch.zeros(1, device=args.device)
    rows["cuda_init_s"] = round(time.perf_counter() - start, 2)

    ref = resolve_model(args.model, random_weights=True)
    scratch = Path(tempfile.mkdtemp(prefix="prepare-profile-"))
    try:
        source = scratch / "random"
        source.mkdir()
        _profiled("random_checkpoint", lambda: _build_random(ref, args.device, source), args.out, rows)
        cand = Candidate(dtype="bf16", quantization="bnb-int8", attn_implementation="sdpa", compile=False,
                         batch_size=1, max_length=1024, new_tokens=8)

        def load():
            model = AutoModelForCausalLM.from_pretrained(source, **from_pretrained_kwargs(cand, args.device))
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            return model

        model = _profiled("int8_first_load", load, args.out, rows)
        _profiled("int8_save", functools.partial(save_checkpoint, model, scratch / "int8"), args.out, rows)
        _profiled("int8_save_pretrained", functools.partial(model.save_pretrained, scratch / "int8-plain"), args.out, rows)
        del model
        if args.device.startswith("cuda"):
            torch.cuda.empty_cache()
        model = _profiled("int8_second_load", load, args.out, rows)
        del model
        shutil.rmtree(scratch / "int8-plain")
        if args.device.startswith("cuda"):
            torch.cuda.empty_cache()
        torch.manual_seed(0)
        with torch.device(args.device):
            model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(ref.source), dtype=torch.bfloat16)
        _profiled("random_save_pretrained", functools.partial(model.save_pretrained, scratch / "random-plain"), args.out, rows)
        del model
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    (args.out / "prepare-profile.json").write_text(json.dumps(rows, indent=2))
    print(json.dumps(rows), flush=True)


if __name__ == "__main__":
    main()
