"""Terminal output: the live progress bar and the results tables (rich)."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from autotune.analysis import Importances, objective_stat, pareto_front, quality_on_front
from autotune.knobs import cells as knob_cells
from autotune.measure.compile_stats import compile_problems
from autotune.knobs import column_groups
from autotune.spec import Candidate, DeploymentConfig, TrialRecord
from autotune.study.results import baseline_record, best_record
from autotune.objectives import objective as objective_def

_STATE_STYLE = {"measured": "green", "infeasible": "yellow", "low_quality": "magenta", "slo_violated": "magenta", "unsupported": "dim", "failed": "red",
                "duplicate": "dim"}


class RichProgress:
    """Progress bar with trial count, the candidate being measured and an ETA; one log line per trial."""

    def __init__(self, console: Console, objective: str) -> None:
        self.console = console
        self.objective = objective
        self.progress = Progress(
            TextColumn("[bold]trial"), MofNCompleteColumn(), BarColumn(), TimeElapsedColumn(),
            TextColumn("ETA"), TimeRemainingColumn(), TextColumn("{task.description}"), console=console, transient=True,
        )
        self.task = None

    def __enter__(self) -> RichProgress:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.__exit__(*exc)

    def trial_started(self, done: int, total: int, candidate: Candidate) -> None:
        if self.task is None:
            self.task = self.progress.add_task(candidate.label(), total=total, completed=done)
        self.progress.update(self.task, description=candidate.label(), total=total, completed=done)

    def trial_finished(self, record: TrialRecord, done: int, total: int) -> None:
        self.progress.update(self.task, completed=done)
        self.console.print(f"  #{record.number:<3} {record.candidate.label():<45} {_result_text(record, self.objective)}")

    def note(self, text: str) -> None:
        self.console.print(f"  {text}", markup=False, highlight=False, soft_wrap=True)


def _result_text(r: TrialRecord, objective: str) -> str:
    style = _STATE_STYLE.get(r.state, "")
    m, q = r.outcome.measurement, r.outcome.quality
    if m is not None:
        figure = objective_def(objective).format(m, spread=not objective_def(objective).latency)
        text = f"{figure}, peak {m.peak_memory_gib:.2f} GiB" + (f", {q.metric} {q.score:.3f}" if q else "")
        if r.state == "infeasible":
            text += f" (over budget by {r.constraints['over_budget_gib']:.2f} GiB)"
        if r.slo_violations:
            text += f" (SLO: {'; '.join(r.slo_violations)})"
        if problems := compile_problems(m):  # why a compiled candidate may be slow
            text += escape(f" (compile: {'; '.join(problems)})")
        return f"[{style}]{r.state}[/]: {text}{_retry_text(r)}"
    return f"[{style}]{r.state}[/]: {r.outcome.reason[:140]}{_retry_text(r)}"


def _retry_text(r: TrialRecord) -> str:
    first = r.outcome.first_attempt
    if not first:
        return ""
    why = "ran out of memory where a larger shape had fit" if first.startswith("out of memory") else "failed in a worker that had run before"
    return f" (2nd attempt, fresh worker: the 1st {why})"


def _fmt(value: float | None, spec: str = ",.1f") -> str:
    return "–" if value is None else format(value, spec)


# The knobs' columns come from their rows in autotune/knobs.py (title, order, how a value reads).
_KNOB_COLUMNS = column_groups()
TRIAL_COLUMNS = ("#", *(k.column.title for k in _KNOB_COLUMNS["text"]), "state", "throughput", "spread",
                 "decode tok/s", "TTFT ms", "TPOT ms", "peak GiB", "× base", "quality", "KL")
_LEFT_ALIGNED = {"state", *(k.column.title for group in _KNOB_COLUMNS.values() for k in group if k.column.left)}
_STATE_INDEX = TRIAL_COLUMNS.index("state")


VISION_COLUMNS = (*(k.column.title for k in _KNOB_COLUMNS["vision"]), "vis tok", "prep ms", "req/s +prep")
PLACEMENT_COLUMNS = tuple(k.column.title for k in _KNOB_COLUMNS["placement"])


def trial_columns(recs: list[TrialRecord]) -> tuple[str, ...]:
    """The trial table's columns; the vision ones only where some candidate sends images or video,
    the GPU count only where some candidate spreads the model over several."""
    return (TRIAL_COLUMNS + (VISION_COLUMNS if any(r.candidate.has_images for r in recs) else ())
            + (PLACEMENT_COLUMNS if _spread(recs) else ()))


def _spread(recs: list[TrialRecord]) -> bool:
    """Some candidate is placed other than by default (num_gpus != 1)."""
    return any(getattr(r.candidate, k.name) != k.default for r in recs for k in _KNOB_COLUMNS["placement"])


def trial_rows(recs: list[TrialRecord], objective: str, baseline_value: float | None) -> list[tuple[str, list[str]]]:
    """(state, cells) per non-duplicate trial, in trial order; shared by the terminal and markdown views."""
    vision = any(r.candidate.has_images for r in recs)
    spread = _spread(recs)
    rows = []
    for r in sorted(recs, key=lambda r: r.number):
        if r.state == "duplicate":
            continue
        c, m, q = r.candidate, r.outcome.measurement, r.outcome.quality
        ratio = None
        if m is not None and baseline_value and r.objective_value:
            ratio = objective_def(objective).ratio(r.objective_value, baseline_value)
        rows.append((r.state, [
            f"{r.number}{'*' if r.is_baseline else ''}", *knob_cells(c, _KNOB_COLUMNS["text"]),
            r.state + (f" (from #{r.outcome.inferred_from})" if r.outcome.inferred_from is not None
                       else " (predicted)" if r.outcome.predicted else ""),
            _fmt(m and m.throughput.median), _fmt(m and m.throughput.spread_pct, ".0f") + ("%" if m else ""),
            _fmt(m and m.decode_tokens_per_s and m.decode_tokens_per_s.median), _fmt(m and m.ttft_s.median * 1000, ",.0f"),
            _fmt(m and m.tpot_s and m.tpot_s.median * 1000, ",.1f"), _fmt(m and m.peak_memory_gib, ".2f"), _fmt(ratio, ".2f"),
            _fmt(q and q.score, ".3f") + ("~" if q and q.within_noise else ""), _fmt(q and q.kl_mean, ".3f"),
        ] + ([
            *knob_cells(c, _KNOB_COLUMNS["vision"]),
            _fmt(m and m.visual_tokens_per_request, ",d"), _fmt(m and m.preprocess_s and m.preprocess_s.median * 1000, ",.1f"),
            _fmt(m and m.requests_per_s_with_preprocessing and m.requests_per_s_with_preprocessing.median, ",.2f"),
        ] if vision else []) + (knob_cells(c, _KNOB_COLUMNS["placement"]) if spread else [])))
    return rows


def trials_table(recs: list[TrialRecord], objective: str, baseline_value: float | None) -> Table:
    table = Table(title="Trials", show_lines=False, header_style="bold")
    for name in trial_columns(recs):
        table.add_column(name, justify="left" if name in _LEFT_ALIGNED else "right")
    for state, cells in trial_rows(recs, objective, baseline_value):
        style = _STATE_STYLE.get(state, "")
        table.add_row(*cells[:_STATE_INDEX], f"[{style}]{cells[_STATE_INDEX]}[/]", *cells[_STATE_INDEX + 1:])
    table.caption = ("* = baseline: the space's plainest candidate (a plain default load at batch 1 where the space holds "
                     "one; otherwise the closest the space allows); quality~ = difference to the reference is within "
                     "its bootstrap noise; infeasible (from #N) = not run: trial N ran out of memory with the same load at a shape "
                     "no larger; infeasible (predicted) = not run: its weights and KV cache alone exceed the budget. Unsupported/failed "
                     "reasons: see trials.jsonl")
    return table


def trials_markdown(recs: list[TrialRecord], objective: str) -> str:
    base = baseline_record(recs)
    columns = trial_columns(recs)
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" if c in _LEFT_ALIGNED else "--:" for c in columns) + "|"]
    for _, cells in trial_rows(recs, objective, base.objective_value if base else None):
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _versus_baseline(config: DeploymentConfig) -> str:
    """The speed-up with the baseline it is over named: in a space without a plain default load
    the baseline is the space's plainest candidate (e.g. a compiled batch 128), not an untuned load."""
    if not config.speedup_vs_baseline:
        return "baseline not measured"
    base = config.baseline
    named = f" (#{base.trial_number}: {base.candidate.label()})" if base is not None else ""
    return f"{config.speedup_vs_baseline:.2f}× the baseline{named}"


def best_summary(config: DeploymentConfig) -> Table:
    s, m = config.settings, config.measured
    table = Table(title="Best deployment config", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    rows = [
        ("model", f"{config.model.name} ({config.model.kind})"),
        ("device", f"{config.fingerprint.device_name} ({config.device})"),
        ("settings", s.label() + f", {s.new_tokens} new tokens"),
        (f"throughput ({m.throughput_unit})", f"{m.throughput.median:,.1f} (spread {m.throughput.spread_pct:.1f}%, n={len(m.throughput.samples)})"),
        ("requests/s", f"{m.requests_per_s.median:,.2f}"),
        ("TTFT / TPOT", f"{m.ttft_s.median * 1000:,.0f} ms / " + (f"{m.tpot_s.median * 1000:,.1f} ms" if m.tpot_s else "–")),
        ("peak memory", f"{m.peak_memory_gib:.2f} GiB" + (f" of {config.memory_budget_gib:.1f} GiB budget" if config.memory_budget_gib else "")),
        *([("quality", f"{config.quality.metric} {config.quality.score:.3f} [{config.quality.ci_low:.3f}, {config.quality.ci_high:.3f}]"
            + (f", Δ vs reference {config.quality.delta_vs_reference:+.3f}" if config.quality.delta_vs_reference is not None else "")
            + (f", KL {config.quality.kl_mean:.4f}" if config.quality.kl_mean is not None else "")
            + (f" (floor {config.min_quality})" if config.min_quality else ""))] if config.quality else []),
        ("vs baseline", _versus_baseline(config)),
        *([("capacity", config.capacity.summary().removeprefix("capacity: "))] if config.capacity else []),
        *([("confirmation", f"top {len(config.confirmation.candidates)} re-measured in {config.confirmation.rounds} interleaved "
            f"rounds: {config.confirmation.reason}")] if config.confirmation else []),
        *([("unconfirmed", f"[yellow]{escape(config.confirmation_note)}[/]")] if config.confirmed is False else []),
    ]
    for k, v in rows:
        table.add_row(k, v)
    return table


def offload_line(recs: list[TrialRecord], config: DeploymentConfig | None, objective: str) -> str | None:
    """cpu_offload_gib: what offloading costs, against the best config that fits without it (None
    where no candidate offloads)."""
    offloaded = [r for r in recs if r.candidate.cpu_offload_gib]
    if not offloaded or config is None:
        return None
    on_gpu = best_record([r for r in recs if not r.candidate.cpu_offload_gib], objective)
    best_off = best_record(offloaded, objective)

    def slower(a: float, b: float) -> str:  # how much slower a is than b
        factor = objective_def(objective).ratio(b, a)
        return f"{factor:.2f}× slower" if factor >= 1 else f"{1 / factor:.2f}× faster"

    if config.settings.cpu_offload_gib:
        if on_gpu is None:
            return "offloaded: no config fits without offload"
        return (f"offloaded: {slower(config.objective_value, on_gpu.objective_value)} than the best config without "
                f"offload (trial #{on_gpu.number})")
    if best_off is None:
        return "offload: no offloaded candidate was measured (see the trial table for why)"
    return (f"offload: the best offloaded config (trial #{best_off.number}, {best_off.candidate.cpu_offload_gib} GiB) is "
            f"{slower(best_off.objective_value, config.objective_value)} than this one")


def best_per_max_length(recs: list[TrialRecord], objective: str) -> Table | None:
    """Capacity planning view: the best feasible candidate for each claimed max length."""
    lengths = sorted({r.candidate.max_length for r in recs if r.state == "measured"})
    if len(lengths) < 2:
        return None
    table = Table(title="Best per max length", header_style="bold")
    for name in ("max len", "#", "settings", "throughput", "peak GiB"):
        table.add_column(name)
    for length in lengths:
        best = best_record([r for r in recs if r.candidate.max_length == length], objective)
        m = best.outcome.measurement
        table.add_row(str(length), str(best.number), best.candidate.label(), f"{m.throughput.median:,.1f}", f"{m.peak_memory_gib:.2f}")
    return table


def workload_line(config: DeploymentConfig | None) -> str | None:
    """A non-default workload in one line: what it is, the share of its requests the best config's
    max_length would reject or truncate, the padding waste and the per-request latency percentiles
    (None under the fixed shape)."""
    from autotune.slo import percentile
    from autotune.workload import WorkloadError, parse_workload

    m = config.measured if config is not None else None
    if m is None or m.workload is None:
        return None
    try:
        text = parse_workload(m.workload, "/").describe()
    except WorkloadError:  # a file workload shown on a machine without its file
        text = f"file {m.workload.get('file')}"

    def pcts(stat) -> str:
        values = [percentile(stat.samples, q) for q in (50, 95, 99)]
        return "/".join(f"{v * 1000:,.1f}" for v in values) + " ms" if values[-1] < 1 else "/".join(f"{v:,.2f}" for v in values) + " s"

    line = (f"workload: {text}; best config (max_length {config.settings.max_length}): "
            f"{(m.workload_over_limit_share or 0) * 100:.1f}% of requests over max_length (rejected or truncated; "
            f"{m.workload_truncated} of {len(m.ttft_s.samples)} timed requests truncated), padding "
            f"{(m.padding_share or 0) * 100:.1f}% of processed tokens; per request p50/p95/p99 TTFT {pcts(m.ttft_s)}")
    if m.tpot_s is not None:
        line += f", TPOT {pcts(m.tpot_s)}"
    return line + f", e2e {pcts(m.request_latency_s)}"


def study_objectives(recs: list[TrialRecord]) -> list[str]:
    """A multi-objective study's objectives, from its records (empty for a single objective)."""
    return next((list(r.objective_values) for r in recs if len(r.objective_values) > 1), [])


def objectives_front_rows(recs: list[TrialRecord], names: list[str],
                          chosen: int | None) -> tuple[str, list[str], list[list[str]]] | None:
    """A multi-objective study's Pareto front over its objectives (autotune/study/pareto.py), best
    first by the first objective, the chosen point starred: (caption, header, rows), the cells
    `show` and report.html print; None when nothing is on it yet."""
    from autotune.study.pareto import objective_front

    front = objective_front(recs, names)
    if not front:
        return None
    defs = [objective_def(n) for n in names]
    header = ["#", "settings", *(f"{d.title} ({d.unit(front[0].outcome.measurement)})" for d in defs), "peak GiB"]
    rows = [[f"{r.number}{'*' if r.number == chosen else ''}", r.candidate.label(),
             *(f"{r.objective_values[n] * d.scale:,.{0 if d.latency else 2}f}" for n, d in zip(names, defs)),
             f"{r.outcome.measurement.peak_memory_gib:.2f}"] for r in front]
    caption = (f"Pareto front of {' × '.join(names)} ({len(front)} of "
               f"{sum(1 for r in recs if r.state == 'measured')} feasible measured trials; * = best.yaml's point)")
    if chosen is not None and chosen not in {r.number for r in front}:
        caption += f"; best.yaml's #{chosen} is off this front of the search's figures: the confirmation chose it on its own"
    return caption, header, rows


def objectives_front_markdown(recs: list[TrialRecord], names: list[str], chosen: int | None) -> str | None:
    """objectives_front_rows as the caption and a markdown table."""
    table = objectives_front_rows(recs, names, chosen)
    if table is None:
        return None
    caption, header, rows = table
    lines = [caption, "| " + " | ".join(header) + " |", "|--:|---|" + "--:|" * (len(header) - 2)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def print_results(console: Console, recs: list[TrialRecord], config: DeploymentConfig | None, objective: str, out: Path) -> None:
    base = baseline_record(recs)
    console.print(trials_table(recs, objective, base.objective_value if base else None))
    names = study_objectives(recs)
    front = objectives_front_markdown(recs, names, config.trial_number if config else None) if names else None
    if front is not None:
        console.print(front, markup=False, highlight=False, soft_wrap=True)
        if config is not None and config.chosen_by:
            console.print(f"best.yaml holds #{config.trial_number}: {config.chosen_by}", markup=False, highlight=False)
    per_length = best_per_max_length(recs, objective)
    if per_length is not None:
        console.print(per_length)
    violated = [r for r in recs if r.state == "slo_violated"]
    if violated:
        console.print(f"SLO violations ({len(violated)} measured candidate{'s' if len(violated) != 1 else ''}, never the best):")
        for r in violated:
            console.print(f"  #{r.number} {r.candidate.label()}: {'; '.join(r.slo_violations)}", markup=False, highlight=False)
    unclean = [(r, problems) for r in recs if r.state != "duplicate" and (problems := compile_problems(r.outcome.measurement))]
    if unclean:  # a compiled candidate that broke into graphs or ran without CUDA graphs is slower than it could be
        console.print(f"compile problems ({len(unclean)} compiled candidate{'s' if len(unclean) != 1 else ''}):")
        for r, problems in unclean:
            console.print(f"  #{r.number} {r.candidate.label()}: {'; '.join(problems)}", markup=False, highlight=False)
    error = memory_model_error(recs)
    if error is not None:
        console.print(f"memory model: predicted peak within {error.median_abs_pct:.1f}% of the measured one (median; worst "
                      f"{error.worst_abs_pct:.1f}%) over {error.n} measured trials; "
                      f"{sum(1 for r in recs if r.outcome.predicted and r.state != 'duplicate')} candidates answered by its lower bound")
    if config is not None:
        console.print(best_summary(config))
        workload = workload_line(config)
        if workload is not None:
            console.print(workload, markup=False, highlight=False, soft_wrap=True)
        offload = offload_line(recs, config, objective)
        if offload is not None:
            console.print(offload)
        console.print(f"best config: [bold]{out / 'best.yaml'}[/]")
    else:
        console.print("[yellow]no feasible config yet: every measured candidate ran out of memory, went over budget, "
                      "broke an SLO or the quality floor, was unsupported or failed[/]")
    if (out / "report.html").is_file():
        console.print(f"report: [bold]{out / 'report.html'}[/] (Pareto front, history, importances; opens offline)")


def pareto_table(recs: list[TrialRecord], objective: str) -> Table | None:
    """The non-dominated feasible trials (the same front report.html draws), by ascending peak memory."""
    front = pareto_front(recs, objective)
    if not front:
        return None
    with_quality = quality_on_front(recs)
    base = baseline_record(recs)
    ranked = objective_def(objective)
    figure, unit, scale = ranked.title, ranked.unit(front[0].outcome.measurement), ranked.scale
    dims = f"{figure}, peak memory and quality" if with_quality else f"{figure} and peak memory"
    table = Table(title=f"Pareto front ({figure} × peak memory{' × quality' if with_quality else ''})", header_style="bold")
    for name in ("#", "settings", f"{figure} ({unit})", "spread", "peak GiB", *(("quality",) if with_quality else ()), "× base"):
        table.add_column(name, justify="left" if name == "settings" else "right")
    for r in front:
        stat, q = objective_stat(r, objective), r.outcome.quality
        ratio = None
        if base is not None and base.objective_value and r.objective_value:
            ratio = ranked.ratio(r.objective_value, base.objective_value)
        table.add_row(f"{r.number}{'*' if r.is_baseline else ''}", r.candidate.label(), f"{stat.median * scale:,.1f}",
                      f"{stat.spread_pct:.0f}%", f"{r.outcome.measurement.peak_memory_gib:.2f}",
                      *((f"{q.metric} {q.score:.3f}",) if with_quality else ()), _fmt(ratio, ".2f"))
    table.caption = (f"no other feasible trial is at least as good on {dims} and better on one of them; "
                     "differences inside the spreads are noise")
    return table


IMPORTANCE_BAR_WIDTH = 30


def importance_table(result: Importances) -> Table:
    """A bar per knob: its share of the objective's variation over the feasible measured trials."""
    table = Table(show_header=False, box=None, padding=(0, 1, 0, 2))
    table.add_column(style="bold")
    table.add_column()
    table.add_column(justify="right")
    for name, share in result.by_param.items():
        table.add_row(name, "█" * round(share * IMPORTANCE_BAR_WIDTH), f"{share:.0%}")
    return table


def print_analysis(console: Console, recs: list[TrialRecord], result: Importances, objective: str) -> None:
    """`autotune show`'s view of what report.html draws: the Pareto front and the importances."""
    front = pareto_table(recs, objective)
    console.print(front if front is not None else "[yellow]Pareto front: no feasible measured trial yet[/]")
    if result.by_param:
        console.print(f"[bold]Parameter importances[/] (share of the objective's variation over {result.n_trials} feasible measured "
                      "trials, PED-ANOVA; rough with few trials)")
        console.print(importance_table(result))
    else:
        console.print(f"parameter importances not computed: {result.note}")


def memory_model_error(recs: list[TrialRecord]):
    """How far the memory model's pre-run predictions were from the measured peaks."""
    from autotune.memory_model import prediction_error

    pairs = [(r.outcome.predicted_peak_gib, r.outcome.measurement.peak_memory_gib) for r in recs
             if r.state != "duplicate" and r.outcome.predicted_peak_gib is not None and r.outcome.measurement is not None]
    return prediction_error(pairs)


REWRITE_HINT = ("restore the file, or rewrite it from the study it is derived from: `autotune show {out} --storage "
                "sqlite:///{out}/study.db --study NAME` (or the run's own --storage)")


def _reason(e: Exception) -> str:
    """A pydantic error in a few words, without the input (which may be long or hold control characters)."""
    from pydantic import ValidationError

    if isinstance(e, ValidationError):
        err = e.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        more = f" and {e.error_count() - 1} more" if e.error_count() > 1 else ""
        return f"{where + ': ' if where else ''}{err['msg'].removeprefix('Value error, ')}{more}"
    return type(e).__name__


def read_trials(out: Path) -> list[TrialRecord]:
    """The records of trials.jsonl in an output directory; none if the study has not started. A
    line that is not a trial record (a truncated write, an edit) is one error naming the line."""
    from pydantic import ValidationError

    from autotune.errors import OutputDirError

    path = out / "trials.jsonl"
    if not path.is_file():
        return []
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        why = e.strerror if isinstance(e, OSError) else "not UTF-8 text"
        raise OutputDirError(f"cannot read {path} ({why}); {REWRITE_HINT.format(out=out)}") from e
    records = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(TrialRecord.model_validate_json(line))
        except ValidationError as e:
            raise OutputDirError(f"{path} line {number} is not a valid trial record ({_reason(e)}); "
                                 f"{REWRITE_HINT.format(out=out)}") from e
    return records


def load_results(out: Path) -> tuple[list[TrialRecord], DeploymentConfig | None]:
    """trials.jsonl and best.yaml (read as export and verify read it) of an output directory; a
    damaged file is one error naming it (and the line)."""
    from autotune.deploy import read_deployment
    from autotune.errors import DeploymentFileError

    trials_path = out / "trials.jsonl"
    if not trials_path.is_file():
        raise DeploymentFileError(f"{out} holds no trials.jsonl; pass the --out directory of an `autotune tune` run")
    recs = read_trials(out)
    best_path = out / "best.yaml"
    config = read_deployment(best_path) if best_path.is_file() else None
    return recs, config
