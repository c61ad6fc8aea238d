"""Does a batch run slower after the server idled? (BENCHMARKS §16: at 50% of capacity the replay's
small batches ran 1.35x slower than the back-to-back service measurement.) One process, the embedded
model, one batch-1 request (200-token prompt, 16 new tokens) timed as the replay times it
(traffic.timed_batch_generate), alternately right after the previous one and after IDLE_S of sleep.

    python bench/idle_penalty_probe.py [--idle-s 0.3] [--pairs 8] [--device cpu]
"""

from __future__ import annotations

import argparse
import statistics
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--idle-s", type=float, default=0.3)
    parser.add_argument("--pairs", type=int, default=8)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    from autotune.loading import generate_kwargs, load_model
    from autotune.measure.traffic import WorkloadBatch, _pad_token, batch_inputs, timed_batch_generate
    from autotune.models import resolve_model
    from autotune.spec import Candidate
    from autotune.workload import Request

    cand = Candidate(dtype="fp32" if args.device == "cpu" else "bf16", batch_size=1, max_length=512, new_tokens=16)
    model, _ = load_model(resolve_model(None), cand, args.device)
    pad, base = _pad_token(model), generate_kwargs(cand)
    ids, mask = batch_inputs(WorkloadBatch((Request(200, 16),), 0), model.config.vocab_size, pad, 1, args.device)

    def run() -> float:
        return timed_batch_generate(model, ids, mask, base, pad, 16, args.device)[1]

    for _ in range(3):  # warm-up
        run()
    times: dict[str, list[float]] = {"back to back": [], f"after {args.idle_s:g} s idle": []}
    for _ in range(args.pairs):
        times["back to back"].append(run())
        time.sleep(args.idle_s)
        times[f"after {args.idle_s:g} s idle"].append(run())
    for name, seconds in times.items():
        print(f"{name}: median {statistics.median(seconds) * 1000:.1f} ms, {[round(s * 1000) for s in seconds]}")


if __name__ == "__main__":
    main()
