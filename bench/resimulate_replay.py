"""Simulate a capacity check's replay again with the prompt-aware service model (autotune/prompt_scaling.py).

A replay.json keeps the service measurement's samples and the replayed p95 latencies. This script
rebuilds the check's service batches and replayed requests from the report and its best.yaml (as
the check draws them: replay.service_batches, replay.replay_requests), fits the prompt slope to the
service batches, and simulates each replayed rate again with the replay's own requests in their
order, as the capacity check now does (replay_comparison.simulate_comparison). The replayed figures are the
GPU's; only the simulation is recomputed, from that run's service samples, never from the replay.
It prints, per rate and figure, the replayed p95, the simulation the report recorded, and the
simulation again, with their errors; and the capacity the prompt-aware model computes.

    python bench/resimulate_replay.py bench/results/h200-kv-arena-replay/replay.json bench/results/h100-compiled-replay/best.yaml [--prompt-blind] [--draws 200]

--prompt-blind simulates the replay's requests in order with the model of before (no prompt slope):
what the order alone does. --draws N also simulates each rate with N other draws of the service
times (the same requests and arrivals) and prints where the simulated figure sits among them and
the error of their median: is the one draw the check reports a typical one?
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from autotune.capacity import ServiceModel, capacity  # noqa: E402
from autotune.prompt_scaling import prompted_service  # noqa: E402
from autotune.replay import replay_requests, service_batches  # noqa: E402
from autotune.replay_comparison import simulate_comparison  # noqa: E402
from autotune.slo import parse_slo  # noqa: E402
from autotune.workload import WorkloadSampler, parse_workload  # noqa: E402


def main() -> None:
    report = json.loads(Path(sys.argv[1]).read_text())
    best = yaml.safe_load(Path(sys.argv[2]).read_text())
    settings = best["settings"]
    workload = best["measured"].get("workload")
    if not workload or workload.get("kind") != "distribution":
        raise SystemExit("error: this best.yaml was not measured on a distribution workload; the batches cannot be rebuilt")
    sampler = WorkloadSampler(parse_workload(workload, "/"), new_tokens=settings["new_tokens"])
    max_length, batch_size, seed, n = settings["max_length"], settings["batch_size"], report["seed"], report["requests_per_rate"]
    padded = report.get("server", {}).get("pads_to_buckets", bool(settings.get("compile")))
    samples = {p["batch_size"]: (p["prefill_samples_s"], p["tpot_samples_s"]) for p in report["service_points"]}
    if all(p.get("batch_prompt_tokens") for p in report["service_points"]):  # reports since 2026-12-07 keep them
        shapes = {p["batch_size"]: [(p["batch_size"], n) for n in p["batch_prompt_tokens"]] for p in report["service_points"]}
    else:  # rebuilt as the check drew them
        timed = service_batches(sampler, batch_size, max_length, report["repeats"], seed)
        shapes = {k: [(len(b.requests), b.prompt_length) for b in batches] for k, batches in timed.items()}
    service, fit = prompted_service(samples, shapes, rounds_up=padded)
    if fit is None:
        raise SystemExit("error: the report's prefill samples do not line up one batch after another; no prompt slope to fit")
    blind = "--prompt-blind" in sys.argv[3:]
    if blind:
        service = ServiceModel.from_samples(samples, rounds_up=padded)
        print("prompt-blind: the model of before, the replay's requests in order")
    print(f"prompt slope{' (not used)' if blind else ''} {fit.slope_s_per_token * 1e6:.2f} µs per padded prompt token (reference {fit.reference_prompt_tokens:,.0f} "
          f"tokens), fitted over {fit.batches} service batches, median error {fit.median_error:.1%}")
    requests = replay_requests(sampler, max_length, n, seed)
    if report.get("prompt_tokens"):  # the report's own (reports since 2026-12-07): they must be the ones rebuilt
        assert [r.prompt_tokens for r in requests] == report["prompt_tokens"], "the rebuilt requests differ from the report's"
    limits = parse_slo(report["slo"]) if report.get("slo") else []
    found = capacity(service, limits, output_tokens=[r.output_tokens for r in requests],
                     prompt_tokens=[r.prompt_tokens for r in requests])
    print(f"capacity, {'prompt-blind' if blind else 'prompt-aware'}: {found.rate_rps:.4g} req/s ({found.reason}); the report's: {report['capacity_rps']:.4g} req/s")
    print("| load (of the report's capacity) | rate (req/s) | figure | replayed | simulated then | error | simulated now | error |")
    print("|---|---|---|---|---|---|---|---|")
    errors = []
    simulated_at = {rate: simulate_comparison(service, rate, requests, seed) for rate in {row["rate_rps"] for row in report["rows"]}}
    for row in report["rows"]:
        if row["figure"] == "tpot_p95":
            continue
        simulated = simulated_at[row["rate_rps"]]
        now = (simulated.ttft_s if row["figure"] == "ttft_p95" else simulated.e2e_s).p95
        errors.append(now / row["replayed_s"] - 1)
        print(f"| {row['fraction']:.0%} | {row['rate_rps']:.3g} | {row['figure']} | {row['replayed_s'] * 1000:,.0f} ms | "
              f"{row['simulated_s'] * 1000:,.0f} ms | {row['error']:+.1%} | {now * 1000:,.0f} ms | {errors[-1]:+.1%} |")
    print(f"largest |error| now: {max(abs(e) for e in errors):.1%}")
    if "--draws" in sys.argv:
        draws = int(sys.argv[sys.argv.index("--draws") + 1])
        print(f"| load | figure | simulated now | its percentile among {draws} other service draws | their median | error of the median |")
        print("|---|---|---|---|---|---|")
        for row in report["rows"]:
            if row["figure"] == "tpot_p95":
                continue
            name = row["figure"].split("_")[0]
            now = getattr(simulated_at[row["rate_rps"]], f"{name}_s").p95
            others = sorted(getattr(simulate_comparison(service, row["rate_rps"], requests, seed, draw_seed=20_000 + i), f"{name}_s").p95
                            for i in range(draws))
            median = others[len(others) // 2]
            print(f"| {row['fraction']:.0%} | {row['figure']} | {now * 1000:,.0f} ms | {sum(o < now for o in others) / draws:.0%} | "
                  f"{median * 1000:,.0f} ms | {median / row['replayed_s'] - 1:+.1%} |")


if __name__ == "__main__":
    main()
