"""Quality inside a study: runs `autotune tune ARGS` with a quality floor (timing the whole
command), then reports the quality of every load-key (score with its bootstrap interval,
difference to the reference, teacher-forced KL mean/p95, top-1 agreement) and the share of the
study's wall time spent measuring quality.

    python bench/quality.py --out outputs/quality-cpu -- --space cpu-quality --trials 18 --min-quality 0.95 --device cpu
"""

from __future__ import annotations

import json
import sys

import optuna
from common import parse_args, run_tune

from autotune.report import read_trials
from autotune.spec import QualityReport, TrialRecord
from autotune.study import REFERENCE_QUALITY_ATTR


def main() -> None:
    args, tune_args = parse_args(__doc__, "report an existing OUT (wall time from runs.jsonl)")
    if args.no_run:
        wall = sum(json.loads(line)["wall_s"] for line in (args.out / "runs.jsonl").read_text().splitlines() if line.strip())
    else:
        wall, returncode = run_tune(args.out, tune_args)
        if returncode not in (0, 1):
            sys.exit(f"autotune tune failed with exit {returncode}")
    recs = read_trials(args.out)
    summaries = optuna.get_all_study_summaries(f"sqlite:///{(args.out / 'study.db').resolve()}")
    reference = QualityReport.model_validate(summaries[0].user_attrs[REFERENCE_QUALITY_ATTR])
    quality_s = reference.elapsed_s + sum(r.outcome.quality.elapsed_s for r in recs if r.outcome.quality and r.state != "duplicate")
    print(f"\nquality per load-key ({reference.n} examples, metric {reference.metric}; reference first):")
    print("| load-key | score [95% CI] | Δ vs reference [95% CI] | within noise | KL mean | KL p95 | top-1 agreement | answer agreement | states |")
    print("|---|---|---|---|--:|--:|--:|--:|---|")
    print(f"| reference (fp32) | {reference.score:.3f} [{reference.ci_low:.3f}, {reference.ci_high:.3f}] | – | – | 0 | 0 | 1.000 | 1.000 | – |")
    seen: dict[tuple, list[TrialRecord]] = {}
    for r in recs:
        if r.outcome.quality is not None and r.state != "duplicate" and r.outcome.quality.delta_vs_reference is not None:
            seen.setdefault(r.candidate.load_key, []).append(r)
    for key, group in seen.items():
        q = group[0].outcome.quality
        states = ", ".join(sorted({r.state for r in group}))
        print(f"| {' '.join(str(k) for k in key[:2])} | {q.score:.3f} [{q.ci_low:.3f}, {q.ci_high:.3f}] | "
              f"{q.delta_vs_reference:+.3f} [{q.delta_ci_low:+.3f}, {q.delta_ci_high:+.3f}] | {'yes' if q.within_noise else 'no'} | "
              f"{q.kl_mean:.4f} | {q.kl_p95:.4f} | {q.top1_agreement:.3f} | {q.answer_agreement:.3f} | {states} |")
    print(f"\nwall {wall:.1f} s; quality {quality_s:.1f} s = {quality_s / wall * 100:.1f}% of the study "
          f"({len(seen) + 1} quality evaluations for {len([r for r in recs if r.state != 'duplicate'])} trials)")


if __name__ == "__main__":
    main()
