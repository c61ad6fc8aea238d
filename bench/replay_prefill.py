"""Is a replay's prefill slower than the service measurement's, once each batch's prompt length is
accounted for? (issue 20's GPU capacity check, BENCHMARKS §19)

The service model draws a batch's prefill (its time to the first token) from the samples measured
at its batch size, whatever its prompts. This script rebuilds the batches of a capacity check from
its replay.json and best.yaml — the service batches (replay.service_batches, as
the capacity check draws them) and the replayed ones (the replay's requests in arrival order,
served first come first served: the batch log's sizes say which) — and fits

    first-token time = a + b × rows × longest prompt

to the service batches (rows: the batch's rows as generate() ran them, a compiled config's padded
to its bucket). It prints the fit's error on the service batches and, per replayed rate, the
replayed batches' first-token time over the fit's prediction: near 1 when the prompt lengths
explain the replay's prefill, above 1 when the replay ran its prefills slower than the
back-to-back service measurement did (a replayed batch's time also holds the few milliseconds of
building its inputs, which the service batches' does not). Where the batch log records them, the
ratios are split by the candidate causes: the idle time before the batch, and Python's full
garbage collections and the CUDA caching allocator's cache flushes during it. Distribution workloads only (a file's would need the tokenizer).

    python bench/replay_prefill.py bench/results/h100-compiled-replay/replay.json bench/results/h100-compiled-replay/best.yaml [--per-batch]

--per-batch also lists every replayed batch: requests, rows, longest prompt, first token replayed
and predicted (ms), their ratio and the excess in ms, and its measured decode step against the
service point's median.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from autotune.capacity import bucket_of  # noqa: E402
from autotune.replay import replay_requests, service_batches  # noqa: E402
from autotune.workload import WorkloadSampler, parse_workload  # noqa: E402


def main() -> None:
    report = json.loads(Path(sys.argv[1]).read_text())
    best = yaml.safe_load(Path(sys.argv[2]).read_text())
    per_batch = "--per-batch" in sys.argv[3:]
    settings = best["settings"]
    max_length, batch_size, seed, repeats = settings["max_length"], settings["batch_size"], report["seed"], report["repeats"]
    padded = report.get("server", {}).get("pads_to_buckets", bool(settings.get("compile")))
    workload = best["measured"].get("workload")
    if not workload or workload.get("kind") != "distribution":
        raise SystemExit("error: this best.yaml was not measured on a distribution workload; the batches cannot be rebuilt")
    sampler = WorkloadSampler(parse_workload(workload, "/"), new_tokens=settings["new_tokens"])

    def rows(k: int) -> int:
        return bucket_of(k, batch_size) if padded else k

    # The service batches: one ttft sample per request, the k requests of a batch sharing it.
    x, y = [], []
    timed = service_batches(sampler, batch_size, max_length, repeats, seed)
    for point in report["service_points"]:
        k, samples = point["batch_size"], point["prefill_samples_s"]
        for i, batch in enumerate(timed[k]):
            x.append(rows(k) * batch.prompt_length)
            y.append(samples[i * k])
    design = np.column_stack([np.ones(len(x)), np.array(x, dtype=float)])
    (a, b), *_ = np.linalg.lstsq(design, np.array(y), rcond=None)
    fit_error = [abs(a + b * xi - yi) / yi for xi, yi in zip(x, y)]
    print(f"fit over {len(x)} service batches: first token = {a * 1000:.1f} ms + {b * 1e6:.2f} µs × rows × longest prompt; "
          f"median |error| {statistics.median(fit_error):.1%}, largest {max(fit_error):.1%}")

    requests = replay_requests(sampler, max_length, report["requests_per_rate"], seed)
    tpot_p50_s = {point["batch_size"]: point["tpot_p50_s"] for point in report["service_points"]}
    for fraction, log in report["batch_logs"].items():
        ratios, served = [], 0
        for entry in log:
            members = requests[served:served + entry["requests"]]
            served += entry["requests"]
            longest_prompt = max(r.prompt_tokens for r in members)
            predicted = a + b * rows(entry["requests"]) * longest_prompt
            ratios.append(entry["first_token_s"] / predicted)
            if per_batch:
                step_s = (entry["total_s"] - entry["first_token_s"]) / max(entry["longest_output"] - 1, 1)
                service_step = tpot_p50_s.get(rows(entry["requests"]))
                print(f"  {float(fraction):.0%} k={entry['requests']:3d} rows={rows(entry['requests']):3d} prompt={longest_prompt:5d} "
                      f"first token {entry['first_token_s'] * 1000:8.1f} ms, predicted {predicted * 1000:8.1f} "
                      f"({ratios[-1]:.2f}x, {(entry['first_token_s'] - predicted) * 1000:+7.1f} ms); decode step "
                      f"{step_s * 1000:.2f} ms" + (f" (service {service_step * 1000:.2f})" if service_step else ""))
        if len(ratios) < 2:
            print(f"{float(fraction):.0%} of capacity: {len(ratios)} batch, replayed / predicted {ratios[0]:.2f}")
            continue
        quartiles = statistics.quantiles(ratios, n=4)
        print(f"{float(fraction):.0%} of capacity: {len(ratios)} batches, replayed / predicted first token: median "
              f"{statistics.median(ratios):.2f} (quartiles {quartiles[0]:.2f}-{quartiles[2]:.2f}, range "
              f"{min(ratios):.2f}-{max(ratios):.2f})")
        causes(log, ratios)


def causes(log: list[dict], ratios: list[float]) -> None:
    """The candidate causes of a slow replayed prefill, where the batch log records them (replay.json
    since 2026-12-06, seventh session): the server idle before the batch, Python's full garbage
    collections during it, the CUDA caching allocator flushing its cache (a new shape near the
    memory budget), and CUDA graphs recorded during it (the KV cache at a new address; replay.json
    since 2026-12-06, eighth session)."""
    def median_of(selected: list[float]) -> str:
        return f"{statistics.median(selected):.2f} over {len(selected)}" if selected else "none"

    if all("idle_before_s" in entry for entry in log):
        idle = [entry["idle_before_s"] for entry in log]
        cut = statistics.median(idle)
        print(f"    after idle > {cut * 1000:,.0f} ms (the median): {median_of([r for r, i in zip(ratios, idle) if i > cut])}; "
              f"after less: {median_of([r for r, i in zip(ratios, idle) if i <= cut])}")
    if all(entry.get("gc") for entry in log):
        full = [entry["gc"]["full_collections"] > 0 for entry in log]
        print(f"    with a full garbage collection: {median_of([r for r, f in zip(ratios, full) if f])}; "
              f"without: {median_of([r for r, f in zip(ratios, full) if not f])}; "
              f"collecting {sum(entry['gc']['collecting_s'] for entry in log) * 1000:,.0f} ms in all")
    if all(entry.get("allocator") for entry in log):
        flushed = [entry["allocator"]["alloc_retries"] > 0 for entry in log]
        malloced = [entry["allocator"]["device_allocs"] > 0 for entry in log]
        print(f"    with an allocator cache flush: {median_of([r for r, f in zip(ratios, flushed) if f])}; "
              f"with a cudaMalloc but no flush: {median_of([r for r, f, m in zip(ratios, flushed, malloced) if m and not f])}; "
              f"with neither: {median_of([r for r, f, m in zip(ratios, flushed, malloced) if not m and not f])}")
    if all(entry.get("graphs") for entry in log):
        recorded = [entry["graphs"]["recordings"] > 0 for entry in log]
        print(f"    with a CUDA graph recorded: {median_of([r for r, g in zip(ratios, recorded) if g])}; "
              f"without: {median_of([r for r, g in zip(ratios, recorded) if not g])}; "
              f"recording {sum(entry['graphs']['recording_s'] for entry in log) * 1000:,.0f} ms in all")


if __name__ == "__main__":
    main()
