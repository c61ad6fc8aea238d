"""How many garbage collections does an uncompiled generate() run? (Whether freezing the heap
during a study's timed runs would matter: autotune/measure/gc_pauses.py counts them.)

    python bench/gc_during_generate.py [--batch 8] [--prompt 128] [--new 64] [--repeats 3]

Loads the embedded SmolLM2-135M on CPU, warms generate() up once, then prints per timed generate()
its seconds and the collections it ran (count, full collections, seconds collecting).
"""

from __future__ import annotations

import argparse
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--prompt", type=int, default=128)
    parser.add_argument("--new", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import torch
    from transformers import AutoModelForCausalLM

    from autotune.measure.gc_pauses import pauses
    from autotune.models import materialize, resolve_model

    model = AutoModelForCausalLM.from_pretrained(materialize(resolve_model(None)))
    ids = torch.randint(0, 30000, (args.batch, args.prompt), generator=torch.Generator().manual_seed(0))
    kwargs = dict(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False)
    with torch.inference_mode():
        model.generate(**kwargs, max_new_tokens=4, min_new_tokens=4)
        for _ in range(args.repeats):
            before, start = pauses(), time.perf_counter()
            model.generate(**kwargs, max_new_tokens=args.new, min_new_tokens=args.new)
            seconds, counted = time.perf_counter() - start, pauses() - before
            print(f"generate {seconds:.3f} s: {counted.collections} collection(s), {counted.full_collections} full, "
                  f"{counted.collecting_s * 1000:.2f} ms collecting")


if __name__ == "__main__":
    main()
