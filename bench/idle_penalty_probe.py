"""Does a batch run slower after the server idled? (BENCHMARKS §16: at 50% of capacity the replay's
small batches ran 1.35x slower than the back-to-back service measurement.) One process, the embedded
model, one batch-1 request timed as the replay times it (traffic.timed_batch_generate): each round,
for every idle time (0: back to back), one untimed run, that many seconds of sleep, one timed run;
the idle times in alternating order round by round. Prints the first token's and the whole
request's median per idle time.

    python bench/idle_penalty_probe.py [--idle-s 0,0.3] [--pairs 8] [--device cpu]
    python bench/idle_penalty_probe.py --idle-s 0,0.01,0.05,0.2,1 --pairs 10 --dtype bf16 --attn eager \\
        --prompt 40 --new 3 --max-length 64       # the CPU replay config of BENCHMARKS §18
"""

from __future__ import annotations

import argparse
import statistics
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--idle-s", default="0,0.3", help="comma-separated idle times in seconds (0: back to back)")
    parser.add_argument("--pairs", type=int, default=8, help="rounds (timed requests per idle time)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default=None, help="default: fp32 on CPU, bf16 on a GPU")
    parser.add_argument("--attn", default="sdpa")
    parser.add_argument("--prompt", type=int, default=200, help="prompt tokens")
    parser.add_argument("--new", type=int, default=16, help="new tokens")
    parser.add_argument("--max-length", type=int, default=512)
    args = parser.parse_args()
    idles = [float(v) for v in args.idle_s.split(",")]

    from autotune.loading import generate_kwargs, load_model
    from autotune.measure.traffic import WorkloadBatch, _pad_token, batch_inputs, timed_batch_generate
    from autotune.models import resolve_model
    from autotune.spec import Candidate
    from autotune.workload import Request

    dtype = args.dtype or ("fp32" if args.device == "cpu" else "bf16")
    cand = Candidate(dtype=dtype, attn_implementation=args.attn, batch_size=1, max_length=args.max_length, new_tokens=args.new)
    model, _ = load_model(resolve_model(None), cand, args.device)
    pad, base = _pad_token(model), generate_kwargs(cand)
    ids, mask = batch_inputs(WorkloadBatch((Request(args.prompt, args.new),), 0), model.config.vocab_size, pad, 1, args.device)

    def run() -> tuple[float, float]:
        return timed_batch_generate(model, ids, mask, base, pad, args.new, args.device)

    for _ in range(3):  # warm-up
        run()
    times: dict[float, list[tuple[float, float]]] = {idle: [] for idle in idles}
    for round_no in range(args.pairs):
        for idle in idles if round_no % 2 == 0 else idles[::-1]:
            run()  # the server was busy right up to the idle time
            time.sleep(idle)
            times[idle].append(run())
    for idle, samples in times.items():
        name = "back to back" if idle == 0 else f"after {idle:g} s idle"
        print(f"{name}: first token median {statistics.median(s[0] for s in samples) * 1000:.1f} ms, whole request median "
              f"{statistics.median(s[1] for s in samples) * 1000:.1f} ms, {[round(s[1] * 1000) for s in samples]}")


if __name__ == "__main__":
    main()
