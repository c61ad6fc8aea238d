"""How long does writing a rebuildable build take on disk versus in RAM (tmpfs)? Decides where
autotune keeps random-weight checkpoints and quantized copies on a GPU host (engine issue,
overhead target): the same build (`models._build_random`, then a bnb int8 copy of it) is timed
into a folder of the disk cache and into /dev/shm, in alternating order.

    python bench/cache_write.py --model qwen2.5-7b-instruct --device cuda:0 --rounds 2
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

from autotune.checkpoint_io import save_checkpoint  # noqa: E402
from autotune.loading import from_pretrained_kwargs  # noqa: E402
from autotune.models import _build_random, cache_dir, folder_bytes, resolve_model  # noqa: E402
from autotune.spec import Candidate  # noqa: E402


def _timed_build(ref, device: str, root: Path) -> tuple[Path, float, float]:
    """Build the random checkpoint under `root`, then its int8 copy; returns (folder, seconds, seconds)."""
    from transformers import AutoModelForCausalLM

    root.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix="bench-", dir=root))
    start = time.perf_counter()
    _build_random(ref, device, folder / "random")
    random_s = time.perf_counter() - start
    _free(device)
    cand = Candidate(dtype="bf16", quantization="bnb-int8", batch_size=1, max_length=1024, new_tokens=8)
    start = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(folder / "random", **from_pretrained_kwargs(cand, device))
    save_checkpoint(model, folder / "int8")
    int8_s = time.perf_counter() - start
    del model
    _free(device)
    return folder, random_s, int8_s


def _free(device: str) -> None:
    """Release the last build's memory, so the next one starts from the same state."""
    import torch

    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="qwen2.5-7b-instruct")
    parser.add_argument("--device", default="cuda:0")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    ref = resolve_model(args.model, random_weights=True)
    places = {"disk": cache_dir() / "bench-write", "ram": Path("/dev/shm") / "autotune-bench-write"}
    for round_index in range(args.rounds):
        for name in (list(places) if round_index % 2 == 0 else list(reversed(places))):
            folder, random_s, int8_s = _timed_build(ref, args.device, places[name])
            size_gib = folder_bytes(folder / "random") / 1024**3
            shutil.rmtree(folder)
            print(json.dumps({"round": round_index + 1, "place": name, "random_checkpoint_s": round(random_s, 2),
                              "random_checkpoint_gib": round(size_gib, 2), "int8_copy_s": round(int8_s, 2)}), flush=True)
    for root in places.values():
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
