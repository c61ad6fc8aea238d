"""What the bench scripts share: their command line and running `autotune tune` under a timer."""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def parse_args(doc: str, no_run_help: str) -> tuple[argparse.Namespace, list[str]]:
    """`--out DIR [--no-run] -- TUNE ARGS...`; returns the namespace and the tune arguments."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--no-run", action="store_true", help=no_run_help)
    parser.add_argument("tune_args", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    return args, [a for a in args.tune_args if a != "--"]


def run_tune(out: Path, tune_args: list[str]) -> tuple[float, int]:
    """Run `autotune tune --out OUT ARGS` and return (wall seconds, start-up included; exit code)."""
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "autotune.cli", "tune", "--out", str(out), *tune_args])
    return time.perf_counter() - start, result.returncode


def tune_target(tune_args: list[str]):
    """(model reference, memory budget in GiB or None, DeviceInfo) named by `autotune tune`
    arguments (--model, --random-weights, --memory-budget, --device): what a bench script that
    drives a worker itself needs."""
    from autotune.models import resolve_model
    from autotune.spec import parse_memory
    from autotune.system import detect_device

    def arg(name: str) -> str | None:
        return tune_args[tune_args.index(name) + 1] if name in tune_args else None

    ref = resolve_model(arg("--model"), random_weights="--random-weights" in tune_args)
    budget = parse_memory(arg("--memory-budget")) if arg("--memory-budget") else None
    return ref, budget, detect_device(arg("--device"))


def worker_bench_target(args: argparse.Namespace):
    """For a bench that drives workers itself (`--out OUT ... -- TUNE ARGS`): the tune arguments
    without the `--`, the model reference, budget and DeviceInfo they name, OUT created."""
    tune_args = [a for a in args.tune_args if a != "--"]
    ref, budget, info = tune_target(tune_args)
    args.out.mkdir(parents=True, exist_ok=True)
    return tune_args, ref, budget, info


def random_bf16_model(name: str, device: str):
    """(model, config): a bundled model config with random bf16 weights on `device`, sdpa_gqa
    attention, seeded: the batch-1 probes' model (torch imported here, not at module import)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from autotune.attention import register_custom_attention
    from autotune.models import BUNDLED_CONFIG_DIR

    register_custom_attention()
    config = AutoConfig.from_pretrained(BUNDLED_CONFIG_DIR / f"{name}.json")
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16, attn_implementation="sdpa_gqa").eval()
    return model, config
