"""The study's files: trials.jsonl and best.yaml, rewritten atomically after every trial (an
interruption loses at most the trial in flight), and report.html at the end. They are views of
the study: each trial is told to the study first, so a write that fails (a full disk) loses
nothing, and the next run writes them again.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import yaml

from autotune import atomic
from autotune.confirm import confirmed_best, unconfirmed_reason
from autotune.loading import generate_kwargs
from autotune.spec import BaselineSummary, Confirmation, DeploymentConfig, Fingerprint, TrialRecord
from autotune.serving import ServingCapacity, serving_capacity
from autotune.study.pareto import chosen_point, objective_front
from autotune.storage import OWNER_ATTR
from autotune.study.context import FINGERPRINT_ATTR, StudyContext
from autotune.study.health import out_of_space_error
from autotune.study.results import baseline_record, best_record, records, speedup


def _atomic_write(path: Path, text: str) -> None:
    atomic.atomic_write_text(path, text)


def write_trials_jsonl(out: Path, recs: list[TrialRecord]) -> Path:
    path = out / "trials.jsonl"
    _atomic_write(path, "".join(r.model_dump_json() + "\n" for r in recs))
    return path


def build_deployment(ctx: StudyContext, best: TrialRecord, base: TrialRecord | None,
                     confirmation: Confirmation | None = None, unconfirmed: str | None = None,
                     capacity: ServingCapacity | None = None) -> DeploymentConfig:
    """best.yaml's content. `unconfirmed`: why the winner is not confirmed ("" when it is;
    confirm.unconfirmed_reason); None leaves `confirmed` unsaid. `capacity`: the simulated one."""
    return DeploymentConfig(
        model=ctx.model,
        device=ctx.device.device,
        settings=best.candidate,
        generate_kwargs=generate_kwargs(best.candidate),
        measured=best.outcome.measurement,
        objective=ctx.spec.objective,
        objective_value=best.objective_value,
        speedup_vs_baseline=speedup(ctx.spec.objective, best, base),
        baseline=BaselineSummary(trial_number=base.number, candidate=base.candidate, objective_value=base.objective_value) if base else None,
        memory_budget_gib=ctx.spec.memory_budget_gib,
        slo=ctx.spec.slo,
        objectives=ctx.spec.objectives,
        objective_values=best.objective_values,
        chosen_by=("the Pareto front's knee" if ctx.spec.knee_choice else "the best by the first objective within the SLO, as the confirmation re-measured the top k "
                   "(its figures, not the search's, decide; a tie within the noise goes to lower memory)")
        if ctx.spec.objectives else "",
        capacity=capacity,
        quality=best.outcome.quality,
        min_quality=ctx.spec.min_quality,
        confirmation=confirmation,
        confirmed=None if unconfirmed is None else not unconfirmed,
        confirmation_note=unconfirmed or "",
        fingerprint=_measured_on(ctx, best.number),
        study_name=ctx.study_name,
        storage=ctx.storage_url,
        trial_number=best.number,
        created_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    )


def _measured_on(ctx: StudyContext, number: int) -> Fingerprint:
    """The fingerprint of the host whose worker measured trial `number` (shared storage), else ours."""
    if not ctx.shared:
        return ctx.fingerprint
    who = ctx.study.get_trials(deepcopy=False)[number].user_attrs.get(OWNER_ATTR) or {}
    raw = ctx.study.user_attrs.get(FINGERPRINT_ATTR + ":" + str(who.get("host")))
    return Fingerprint.model_validate(raw) if raw else ctx.fingerprint


def write_outputs(ctx: StudyContext, report: bool = True) -> tuple[list[TrialRecord], DeploymentConfig | None]:
    """trials.jsonl and best.yaml (after every trial: an interruption loses nothing), and
    report.html when `report` (at the end: it costs 0.1-0.2 s, which per trial is study time)."""
    recs = records(ctx.study)
    names = ctx.spec.all_objectives
    if len(names) > 1:  # the chosen point of the front; the front marked in trials.jsonl
        best = chosen_point(recs, names, with_slo=bool(ctx.spec.slo))
        front = {r.number for r in objective_front(recs, names)}
        recs = [r.model_copy(update={"on_pareto_front": r.number in front}) if r.objective_values else r for r in recs]
    else:
        best = best_record(recs, ctx.spec.objective)
    config = None
    try:
        write_trials_jsonl(ctx.out, recs)
        if best is not None:
            best, confirmation = confirmed_best(ctx, recs, best)  # the confirmation's winner, if it covers today's top k
            # The capacity simulation takes about a second: at the end only, not after every trial.
            capacity = serving_capacity(recs, best, ctx.spec.slo_limits) if report else None
            config = build_deployment(ctx, best, baseline_record(recs), confirmation, unconfirmed_reason(ctx, recs, confirmation),
                                      capacity)
            _atomic_write(ctx.out / "best.yaml", yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
    except OSError as e:  # a full disk: one line that says the study holds every trial
        disk = out_of_space_error(e, str(ctx.out), len(recs))
        if disk is None:
            raise
        raise disk from e
    if report:
        from autotune.report_html import write_report_or_warn  # lazy: plotly loads only when a report is written

        write_report_or_warn(ctx.out, recs, ctx.study, ctx.spec.objective, config)  # a failure warns, never loses the files above
    return recs, config
