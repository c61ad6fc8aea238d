"""`autotune verify`: does a best.yaml still hold on this machine?

It re-measures the recorded candidate through the study's own worker (same protocol, same
repeats, the memory budget applied as in the study), compares the new figures and this machine's
fingerprint with the recorded ones, and checks that the claimed worst case (the candidate itself:
batch_size sequences of max_length, images at max_pixels) still runs and fits the budget.

Verdict, from worst to best:
- FAIL: the worst case does not run here (out of memory, over the memory budget, unsupported,
  crashed, timed out): deploying this config here would break.
- DRIFT: it runs, but the environment is not the one that was measured (any fingerprint field
  changed: GPU, memory, driver, CUDA, library versions, Python, CPU) or a figure moved beyond both
  the tolerance and what the two measurements' spreads explain. The figures no longer describe
  this machine: re-tune, or accept the new ones.
- PASS: same environment, every figure within the noise.
"""

from __future__ import annotations

import math
import os
import shutil
import statistics
import tempfile
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from autotune.errors import AutotuneError
from autotune.spec import Candidate, Fingerprint, Measurement, OutcomeStatus, Stat, TrialOutcome, TuneSpec

Verdict = Literal["PASS", "DRIFT", "FAIL"]
# 1 is what Python gives an uncaught exception and 2 a user error: a verdict must look like neither.
EXIT_CODES: dict[str, int] = {"PASS": 0, "DRIFT": 3, "FAIL": 4}
# Re-measuring the same config on the same H100 in fresh processes moved decode-bound throughput
# (7B bf16, batch 16) by 1-19% with within-run spreads of 10-30%, while TTFT moved 1-2% and
# reserved memory not at all; and the study's winner is the candidate that measured highest, so
# its recorded figure leans high. 25% flags a lost kernel, a slower driver or a halved clock, not that.
DEFAULT_TOLERANCE_PCT = 25.0
DEFAULT_TRIAL_TIMEOUT_S: float = TuneSpec.model_fields["trial_timeout_s"].default
MIN_REPEATS = 3  # as in a study: one timing is not a measurement


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FingerprintChange(_Strict):
    field: str
    recorded: str | float | int | None
    current: str | float | int | None


class FigureCheck(_Strict):
    """One figure, recorded against re-measured."""

    name: str
    unit: str
    recorded_median: float
    new_median: float
    change_pct: float = Field(description="(new - recorded) / recorded, in percent")
    recorded_spread_pct: float | None = Field(description="None for a single value (peak memory)")
    new_spread_pct: float | None
    noise_pct: float = Field(description="the change the spreads explain: half their sum (each median ± half its range)")
    tolerance_pct: float
    within: bool = Field(description="the two medians are within a factor 1 + max(tolerance, noise) of each other")
    note: str = Field(default="", description="why the recorded figure cannot be trusted, e.g. a median that is not its samples'")


class WorstCaseCheck(_Strict):
    """The claimed worst case, run here: does it load, run and stay inside the memory budget?"""

    candidate: Candidate
    status: OutcomeStatus
    fits: bool
    peak_memory_gib: float | None = None
    memory_budget_gib: float | None = None
    reason: str = ""
    worker_log: str | None = None

    @property
    def problem(self) -> str:
        """What went wrong, in words: the worker's status, or over budget for a run that went over it."""
        return "" if self.fits else "over budget" if self.status == "ok" else self.status

    @property
    def failure(self) -> str:
        """'does not fit' (out of memory, over budget) or 'does not run' (unsupported, crashed, timed out)."""
        return "does not fit" if self.problem in ("oom", "over budget") else "does not run"


class VerifyReport(_Strict):
    config_path: str
    model: str
    device: str
    device_name: str
    verdict: Verdict
    tolerance_pct: float
    repeats: int
    fingerprint_changes: list[FingerprintChange]
    figures: list[FigureCheck]
    worst_case: WorstCaseCheck
    quality: str = Field(description="what happened to the recorded quality figures")
    load_average_1min: float = Field(description="host load before measuring: other work competing for the CPU")
    cpu_cores: int
    measurement: Measurement | None = Field(description="the new measurement, as the worker returned it")

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.verdict]

    @property
    def drifted_figures(self) -> list[FigureCheck]:
        return [f for f in self.figures if not f.within]


# ------------------------------------------------------------------------------ comparisons


def compare_fingerprints(recorded: Fingerprint, current: Fingerprint) -> list[FingerprintChange]:
    """Every field that differs, in the Fingerprint's order."""
    return [
        FingerprintChange(field=name, recorded=getattr(recorded, name), current=getattr(current, name))
        for name in Fingerprint.model_fields
        if getattr(recorded, name) != getattr(current, name)
    ]


def _within(recorded: float, new: float, allowed_pct: float) -> bool:
    """Within a factor 1 + allowed of each other, either way: timing noise is multiplicative, so
    half the speed is as far off as twice the speed (a plain percentage could never flag a
    slowdown past -100%)."""
    if recorded <= 0 or new <= 0:
        return recorded == new
    return max(new / recorded, recorded / new) <= 1 + allowed_pct / 100


def _change_pct(recorded: float, new: float) -> float:
    return (new - recorded) / recorded * 100 if recorded else float("inf")


def recorded_inconsistency(stat: Stat) -> str:
    """A recorded Stat whose median, min or max is not that of its own samples was edited by hand
    (or corrupted): the evidence itself does not hold, whatever the new measurement says."""
    for name, expected in (("median", statistics.median(stat.samples)), ("min", min(stat.samples)), ("max", max(stat.samples))):
        if not math.isclose(getattr(stat, name), expected, rel_tol=1e-9):
            return f"recorded {name} {getattr(stat, name):.6g} is not the {name} of its samples ({expected:.6g}): the file was edited"
    return ""


def compare_stat(name: str, unit: str, recorded: Stat, new: Stat, tolerance_pct: float) -> FigureCheck:
    """A change is drift only if it exceeds the tolerance AND what the two spreads explain. The
    tolerance covers what repeats inside one run cannot show (a fresh process, another memory
    layout, clocks, neighbours); the spreads cover how far each median itself can be trusted."""
    noise = (recorded.spread_pct + new.spread_pct) / 2
    note = recorded_inconsistency(recorded)
    return FigureCheck(name=name, unit=unit, recorded_median=recorded.median, new_median=new.median,
                       change_pct=_change_pct(recorded.median, new.median), recorded_spread_pct=recorded.spread_pct,
                       new_spread_pct=new.spread_pct, noise_pct=noise, tolerance_pct=tolerance_pct,
                       within=not note and _within(recorded.median, new.median, max(tolerance_pct, noise)), note=note)


def compare_value(name: str, unit: str, recorded: float, new: float, tolerance_pct: float) -> FigureCheck:
    """A single value (peak memory): no spread, so only the tolerance absorbs the difference."""
    return FigureCheck(name=name, unit=unit, recorded_median=recorded, new_median=new, change_pct=_change_pct(recorded, new),
                       recorded_spread_pct=None, new_spread_pct=None, noise_pct=0.0, tolerance_pct=tolerance_pct,
                       within=_within(recorded, new, tolerance_pct))


def compare_measurements(recorded: Measurement, new: Measurement, tolerance_pct: float) -> list[FigureCheck]:
    return [
        compare_stat("throughput", recorded.throughput_unit, recorded.throughput, new.throughput, tolerance_pct),
        compare_stat("TTFT", "s", recorded.ttft_s, new.ttft_s, tolerance_pct),
        compare_stat("request latency", "s", recorded.request_latency_s, new.request_latency_s, tolerance_pct),
        compare_value("peak memory", "GiB", recorded.peak_memory_gib, new.peak_memory_gib, tolerance_pct),
    ]


def worst_case_check(candidate: Candidate, outcome: TrialOutcome, budget_gib: float | None) -> WorstCaseCheck:
    """Fits = ran without running out of memory and, with a budget, peaked inside it (as in the study)."""
    peak = outcome.measurement.peak_memory_gib if outcome.measurement is not None else None
    fits = outcome.status == "ok" and (budget_gib is None or peak <= budget_gib)
    reason = outcome.reason
    if outcome.status == "ok" and not fits:
        reason = f"peak memory {peak:.2f} GiB is over the memory budget of {budget_gib:.2f} GiB by {peak - budget_gib:.2f} GiB"
    return WorstCaseCheck(candidate=candidate, status=outcome.status, fits=fits, peak_memory_gib=peak,
                          memory_budget_gib=budget_gib, reason=reason, worker_log=outcome.worker_log)


def decide(fingerprint_changes: list[FingerprintChange], figures: list[FigureCheck], worst_case: WorstCaseCheck) -> Verdict:
    if not worst_case.fits:
        return "FAIL"
    if fingerprint_changes or any(not f.within for f in figures):
        return "DRIFT"
    return "PASS"


def _quality_note(quality) -> str:
    if quality is None:
        return "none recorded"
    # The validation set's path is not in best.yaml, and quality does not drift with speed: it is
    # a property of the weights and the load, which the fingerprint and the settings pin.
    return (f"not re-measured (recorded {quality.metric} {quality.score:.3f} on {quality.n} examples); "
            "verify re-measures speed and memory only")


# ------------------------------------------------------------------------------ the run


def verify(
    config_path: str | Path,
    device: str | None = None,
    tolerance_pct: float = DEFAULT_TOLERANCE_PCT,
    repeats: int | None = None,
    memory_budget_gib: float | None = None,
    trial_timeout_s: float = DEFAULT_TRIAL_TIMEOUT_S,
) -> VerifyReport:
    """Re-measure `config_path` here. `device` defaults to the recorded one, `repeats` to as many
    as were recorded, `memory_budget_gib` to the recorded budget. Bad input raises AutotuneError
    before anything is loaded; a config that does not run here is a FAIL report, not an error."""
    from autotune.deploy import read_deployment
    from autotune.models import relocate
    from autotune.space import unsupported_reason
    from autotune.system import check_budget, detect_device, fingerprint
    from autotune.worker import WorkerClient, WorkRequest

    config = read_deployment(config_path)
    if tolerance_pct < 0:
        raise AutotuneError(f"--tolerance {tolerance_pct:g} is negative; pass a percentage such as {DEFAULT_TOLERANCE_PCT:g}")
    repeats = repeats if repeats is not None else len(config.measured.throughput.samples)
    if repeats < MIN_REPEATS:
        raise AutotuneError(f"--repeats {repeats}: at least {MIN_REPEATS} are needed for a median and a spread")
    device_info = detect_device(device or config.device)
    budget = memory_budget_gib if memory_budget_gib is not None else config.memory_budget_gib
    check_budget(device_info, budget)
    model = relocate(config.model)
    changes = compare_fingerprints(config.fingerprint, fingerprint(device_info))

    load_1min, cores = os.getloadavg()[0], os.cpu_count() or 1
    candidate = config.settings
    reason = unsupported_reason(candidate, device_info)
    if reason is not None:
        outcome = TrialOutcome(status="unsupported", reason=reason)
    else:
        log_dir = Path(tempfile.mkdtemp(prefix="autotune-verify-"))
        worker = WorkerClient(model, device_info.device, budget, log_dir)
        try:
            request = WorkRequest(trial_number=config.trial_number, candidate=candidate, repeats=repeats,
                                  workload=config.measured.workload)  # the traffic it was measured under
            outcome, _ = worker.run(request, trial_timeout_s)
        finally:
            worker.close()
        if outcome.status == "ok":
            shutil.rmtree(log_dir, ignore_errors=True)  # kept when the worker failed: the reason points into it
    worst_case = worst_case_check(candidate, outcome, budget)
    figures = compare_measurements(config.measured, outcome.measurement, tolerance_pct) if outcome.measurement else []
    return VerifyReport(
        config_path=str(config_path), model=f"{config.model.name} ({config.model.kind})", device=device_info.device,
        device_name=device_info.name, verdict=decide(changes, figures, worst_case), tolerance_pct=tolerance_pct,
        repeats=repeats, fingerprint_changes=changes, figures=figures, worst_case=worst_case,
        quality=_quality_note(config.quality), measurement=outcome.measurement, load_average_1min=load_1min,
        cpu_cores=cores,
    )


# ------------------------------------------------------------------------------ output


def _number(value: float) -> str:
    return f"{value:,.4g}" if abs(value) < 1000 else f"{value:,.0f}"


def report_lines(report: VerifyReport) -> list[str]:
    """The report as plain lines: environment, figures, worst case, quality, verdict."""
    wc = report.worst_case
    lines = [f"verify {report.config_path}: {report.model}, {wc.candidate.label()} on {report.device_name} [{report.device}]"]
    if report.fingerprint_changes:
        lines.append(f"environment: {len(report.fingerprint_changes)} change(s) since tuning")
        lines += [f"  {c.field}: {c.recorded} → {c.current}" for c in report.fingerprint_changes]
    else:
        lines.append("environment: same fingerprint as when tuned")
    if report.figures:
        factor = 1 + report.tolerance_pct / 100
        lines.append(f"figures ({report.repeats} repeats; drift = apart by more than a factor {factor:g} "
                     f"(--tolerance {report.tolerance_pct:g}%) and more than the spreads explain):")
        for f in report.figures:
            spreads = (f"spread {f.recorded_spread_pct:.0f}% → {f.new_spread_pct:.0f}%, noise ±{f.noise_pct:.0f}%"
                       if f.recorded_spread_pct is not None else "single value")
            label = f"{f.name} ({f.unit})"
            lines.append(f"  {label:<22} {_number(f.recorded_median):>10} → {_number(f.new_median):<10} "
                         f"{f.change_pct:+7.1f}%  ({spreads})  {'ok' if f.within else 'DRIFT'}")
            if f.note:
                lines.append(f"    {f.note}")
    budget = f" ≤ budget {wc.memory_budget_gib:.2f} GiB" if wc.memory_budget_gib is not None else " (no memory budget)"
    if wc.fits:
        lines.append(f"worst case (batch {wc.candidate.batch_size} × {wc.candidate.max_length} tokens): runs, "
                     f"peak {wc.peak_memory_gib:.2f} GiB{budget}")
    else:
        log = f"; worker log {wc.worker_log}" if wc.worker_log else ""
        lines.append(f"worst case (batch {wc.candidate.batch_size} × {wc.candidate.max_length} tokens): {wc.failure}: "
                     f"{wc.problem}: {wc.reason}{log}")
    lines.append(f"quality: {report.quality}")
    if report.figures and report.load_average_1min >= report.cpu_cores:
        # Timing drift on a busy host may be the neighbours, not the deployment (Python-bound decoding
        # needs a free core even on a GPU).
        lines.append(f"note: host load {report.load_average_1min:.1f} on {report.cpu_cores} cores in the minute before "
                     "measuring: other work competed for the CPU; re-run on a quiet machine before trusting a timing drift")
    lines.append(verdict_line(report))
    return lines


def verdict_line(report: VerifyReport) -> str:
    if report.verdict == "FAIL":
        return f"FAIL: the claimed worst case {report.worst_case.failure} here ({report.worst_case.problem})"
    if report.verdict == "PASS":
        return "PASS: same environment, every figure within the noise"
    what = []
    if report.fingerprint_changes:
        what.append("environment (" + ", ".join(c.field for c in report.fingerprint_changes) + ")")
    what += [f"{f.name} {f.change_pct:+.1f}%" for f in report.drifted_figures]
    return "DRIFT: " + "; ".join(what)
