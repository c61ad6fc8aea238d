"""report.html: one self-contained page per output directory, readable offline and shareable as a
single file. It holds a header (model, device, best config, × baseline), the Pareto front of the
feasible measured trials (objective × peak memory, coloured by quality), the optimisation history,
the parameter importances and the trial table. The figures are plotly; plotly.js (~4.7 MB) is
inlined once, with the first figure, so the page needs no network.

The Pareto front and the importances come from autotune.analysis, the same functions the terminal
view (`autotune show`) prints, so the two never disagree.
"""

from __future__ import annotations

import datetime as dt
import html
import logging
from collections import Counter
from pathlib import Path

import optuna

from autotune.analysis import Importances, front_candidates, importances, objective_stat, pareto_front, quality_on_front
from autotune.atomic import atomic_write_text
from autotune.measure.compile_stats import compile_problems
from autotune.spec import DeploymentConfig, TrialRecord
from autotune.objectives import objective as objective_def
from autotune.report import objectives_front_rows, study_objectives

REPORT_FILE = "report.html"
PARETO_DIV_ID = "pareto-front"
PARETO_TITLE = "Pareto front"
OBJECTIVES_DIV_ID = "objectives-front-figure"
FIGURE_HEIGHT_PX = 520
# Trials that could not run or went over a constraint are drawn in this grey, whatever their settings.
INFEASIBLE_GREY = "#b0b0b0"
PLOTLY_CONFIG = {"displaylogo": False, "responsive": True}

_log = logging.getLogger(__name__)


def _objective_axis(records: list[TrialRecord], objective: str) -> tuple[str, float]:
    """The objective's label with its unit, and the factor from the stored figure (tok/s or s) to
    the shown one (latency is shown in ms)."""
    ranked = objective_def(objective)
    m = next((r.outcome.measurement for r in records if r.outcome.measurement is not None), None)
    return f"{ranked.title} ({ranked.unit(m)})", ranked.scale


def _axis_title(records: list[TrialRecord], objective: str) -> str:
    label = _objective_axis(records, objective)[0]
    return label[:-1] + (", higher is better)" if objective_def(objective).maximize else ", lower is better)")


def _hover(r: TrialRecord, objective: str) -> str:
    m, q = r.outcome.measurement, r.outcome.quality
    figure = objective_def(objective).format(m)
    lines = [f"#{r.number} {r.candidate.label()}", f"{r.state}: {figure}, peak {m.peak_memory_gib:.2f} GiB"]
    if q is not None:
        lines.append(f"{q.metric} {q.score:.3f}" + (f", KL {q.kl_mean:.4f}" if q.kl_mean is not None else ""))
    if r.state == "infeasible" and r.constraints.get("over_budget_gib", 0) > 0:
        lines.append(f"over budget by {r.constraints['over_budget_gib']:.2f} GiB")
    if r.slo_violations:
        lines.append("SLO: " + "; ".join(r.slo_violations))
    if problems := compile_problems(m):
        lines.append("compile: " + "; ".join(problems))
    return "<br>".join(html.escape(line) for line in lines)


def _error_bars(recs: list[TrialRecord], objective: str, scale: float) -> dict:
    """Min..max of the repeats around the median: a gap smaller than these bars is not evidence."""
    stats = [objective_stat(r, objective) for r in recs]
    return {"type": "data", "symmetric": False, "thickness": 1, "width": 3,
            "array": [(s.max - s.median) * scale for s in stats], "arrayminus": [(s.median - s.min) * scale for s in stats]}


def _category(r: TrialRecord) -> str:
    return r.candidate.dtype + ("" if r.candidate.quantization == "none" else f" {r.candidate.quantization}")


def pareto_figure(records: list[TrialRecord], objective: str, best: DeploymentConfig | None):
    """Objective against peak memory for every trial with a measurement. Feasible trials are
    coloured by quality score when quality was measured (else by dtype/quantization); those on the
    Pareto front are larger and ringed; measured but infeasible trials (over budget, low quality)
    are grey crosses at their measured position."""
    import plotly.graph_objects as go

    feasible = front_candidates(records)
    front_numbers = {r.number for r in pareto_front(records, objective)}
    with_quality = quality_on_front(records)
    _, scale = _objective_axis(records, objective)

    def marker_shape(recs: list[TrialRecord]) -> dict:
        on_front = [r.number in front_numbers for r in recs]
        return {"size": [15 if f else 9 for f in on_front], "line": {"color": "#202020", "width": [2.5 if f else 0 for f in on_front]},
                "opacity": 0.95}

    fig = go.Figure()
    if with_quality:
        metric = feasible[0].outcome.quality.metric
        fig.add_trace(go.Scatter(
            x=[r.outcome.measurement.peak_memory_gib for r in feasible], y=[objective_stat(r, objective).median * scale for r in feasible],
            error_y=_error_bars(feasible, objective, scale), mode="markers", name=f"feasible (colour: {metric})",
            marker={**marker_shape(feasible), "color": [r.outcome.quality.score for r in feasible], "coloraxis": "coloraxis"},
            hovertext=[_hover(r, objective) for r in feasible], hoverinfo="text",
        ))
        fig.update_layout(coloraxis={"colorscale": "Viridis", "colorbar": {"title": {"text": metric}}})
    else:
        for category in sorted({_category(r) for r in feasible}):
            recs = [r for r in feasible if _category(r) == category]
            fig.add_trace(go.Scatter(
                x=[r.outcome.measurement.peak_memory_gib for r in recs], y=[objective_stat(r, objective).median * scale for r in recs],
                error_y=_error_bars(recs, objective, scale), mode="markers", name=category, marker=marker_shape(recs),
                hovertext=[_hover(r, objective) for r in recs], hoverinfo="text",
            ))
        front = sorted((r for r in feasible if r.number in front_numbers), key=lambda r: r.outcome.measurement.peak_memory_gib)
        if len(front) > 1:
            # In two dimensions the front is a staircase: more memory buys a better objective.
            fig.add_trace(go.Scatter(
                x=[r.outcome.measurement.peak_memory_gib for r in front], y=[objective_stat(r, objective).median * scale for r in front],
                mode="lines", line={"shape": "hv", "color": "#202020", "width": 1, "dash": "dot"}, name="Pareto front", hoverinfo="skip",
            ))
    measured_infeasible = [r for r in records if r.state in ("infeasible", "slo_violated", "low_quality") and r.outcome.measurement is not None]
    if measured_infeasible:
        fig.add_trace(go.Scatter(
            x=[r.outcome.measurement.peak_memory_gib for r in measured_infeasible],
            y=[objective_stat(r, objective).median * scale for r in measured_infeasible],
            mode="markers", name="infeasible (over budget, over an SLO or low quality)",
            marker={"symbol": "x", "size": 9, "color": INFEASIBLE_GREY}, hovertext=[_hover(r, objective) for r in measured_infeasible],
            hoverinfo="text",
        ))
    if best is not None:
        fig.add_trace(go.Scatter(
            x=[best.measured.peak_memory_gib], y=[(best.objective_value) * scale], mode="markers", name=f"best.yaml (#{best.trial_number})",
            marker={"symbol": "star", "size": 22, "color": "rgba(0,0,0,0)", "line": {"color": "#d62728", "width": 2.5}}, hoverinfo="skip",
        ))
        if best.memory_budget_gib is not None:
            fig.add_vline(x=best.memory_budget_gib, line={"dash": "dash", "color": "#d62728", "width": 1},
                          annotation_text=f"memory budget {best.memory_budget_gib:.1f} GiB", annotation_position="top left")
    dims = objective_def(objective).title
    title = f"{PARETO_TITLE}: {dims} × peak memory" + (" × quality" if with_quality else "")
    fig.update_layout(
        title={"text": title + "<br><sup>ringed: on the Pareto front (no other feasible trial is at least as good on every "
                               "axis); bars: min..max of the repeats</sup>"},
        xaxis_title="peak memory (GiB, lower is better)", yaxis_title=_axis_title(records, objective),
        template="plotly_white", height=FIGURE_HEIGHT_PX, legend={"orientation": "h", "y": -0.18}, margin={"t": 80},
    )
    return fig


def history_figure(records: list[TrialRecord], objective: str):
    """The objective per trial in the order they ran, and the best feasible value so far. Drawn
    from the records rather than optuna.visualization.plot_optimization_history: the study stores
    a placeholder value for infeasible trials (0 tok/s, or infinite latency) that the plot would
    draw as a point, and it repeats duplicates; the records hold what was actually measured."""
    import plotly.graph_objects as go

    _, scale = _objective_axis(records, objective)
    runs = sorted((r for r in records if r.state != "duplicate" and r.outcome.measurement is not None), key=lambda r: r.number)
    fig = go.Figure()
    feasible = [r for r in runs if r.state == "measured"]
    other = [r for r in runs if r.state != "measured"]
    fig.add_trace(go.Scatter(x=[r.number for r in feasible], y=[objective_stat(r, objective).median * scale for r in feasible],
                             mode="markers", name="feasible", marker={"size": 9, "color": "#1f77b4"},
                             hovertext=[_hover(r, objective) for r in feasible], hoverinfo="text"))
    if other:
        fig.add_trace(go.Scatter(x=[r.number for r in other], y=[objective_stat(r, objective).median * scale for r in other],
                                 mode="markers", name="infeasible (measured)", marker={"symbol": "x", "size": 9, "color": INFEASIBLE_GREY},
                                 hovertext=[_hover(r, objective) for r in other], hoverinfo="text"))
    best_x, best_y, best_so_far = [], [], None
    for r in feasible:
        value = objective_stat(r, objective).median
        if best_so_far is None or objective_def(objective).better(value, best_so_far):
            best_so_far = value
        best_x.append(r.number)
        best_y.append(best_so_far * scale)
    if best_x:
        fig.add_trace(go.Scatter(x=best_x, y=best_y, mode="lines", line={"shape": "hv", "color": "#d62728"}, name="best so far"))
    unmeasured = sorted((r for r in records if r.state != "duplicate" and r.outcome.measurement is None), key=lambda r: r.number)
    if unmeasured:
        # No figure to draw them at, but where the search spent trials on candidates that did not
        # run matters: a row of ticks along the bottom, on an invisible 0..1 axis.
        fig.add_trace(go.Scatter(
            x=[r.number for r in unmeasured], y=[0.03] * len(unmeasured), yaxis="y2", mode="markers",
            name="not measured (OOM, unsupported, failed)", marker={"symbol": "line-ns-open", "size": 14, "color": INFEASIBLE_GREY},
            hovertext=[html.escape(f"#{r.number} {r.candidate.label()}: {r.state}" + (f" ({r.outcome.reason[:100]})" if r.outcome.reason else ""))
                       for r in unmeasured],
            hoverinfo="text",
        ))
        fig.update_layout(yaxis2={"overlaying": "y", "range": [0, 1], "visible": False})
    fig.update_layout(title={"text": "Optimisation history"}, xaxis_title="trial number", yaxis_title=_axis_title(records, objective),
                      template="plotly_white", height=420, legend={"orientation": "h", "y": -0.22})
    return fig


def importance_figure(result: Importances):
    import plotly.graph_objects as go

    names = list(result.by_param)[::-1]  # plotly draws the first bar at the bottom: largest on top
    fig = go.Figure(go.Bar(x=[result.by_param[n] for n in names], y=names, orientation="h", marker={"color": "#1f77b4"},
                           text=[f"{result.by_param[n]:.0%}" for n in names], textposition="outside"))
    fig.update_layout(title={"text": f"Parameter importances ({result.n_trials} feasible measured trials, PED-ANOVA)"},
                      xaxis={"title": "share of the objective's variation explained", "tickformat": ".0%", "range": [0, 1.1]},
                      template="plotly_white", height=120 + 40 * len(names), margin={"l": 160})
    return fig


# ------------------------------------------------------------------------------ page


_STATE_CLASS = {"measured": "ok", "infeasible": "bad", "low_quality": "bad", "slo_violated": "bad", "unsupported": "dim", "failed": "err", "duplicate": "dim"}

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 16px 28px; color: #202020; }
h1 { font-size: 22px; margin: 0 0 4px 0; } h2 { font-size: 18px; margin: 22px 0 6px 0; }
.meta, .note { color: #555; font-size: 13px; margin: 2px 0; }
.best { font-size: 14px; margin: 6px 0 0 0; }
table { border-collapse: collapse; font-size: 12px; margin-top: 6px; }
th, td { padding: 3px 7px; border-bottom: 1px solid #e2e2e2; text-align: right; white-space: nowrap; }
th { background: #f4f4f4; } td.l, th.l { text-align: left; }
tr.bad td { color: #8a6d00; } tr.err td { color: #b00020; } tr.dim td { color: #888; }
"""


def _study_model_name(study: optuna.Study) -> str:
    """The model's name from the study's identity attributes (there is no best.yaml to read it from)."""
    from autotune.models import ModelRef

    try:
        return ModelRef.model_validate_json(study.user_attrs["model"]).name
    except Exception:  # a study from another tool or an older autotune: the name is cosmetic
        return "–"


def _header(records: list[TrialRecord], objective: str, best: DeploymentConfig | None, study: optuna.Study | None) -> str:
    counts = Counter(r.state for r in records)
    states = ", ".join(f"{n} {state}" for state, n in sorted(counts.items(), key=lambda kv: -kv[1]))
    if best is not None:
        model = f"{best.model.name} ({best.model.kind})"
        device = f"{best.fingerprint.device_name} [{best.device}]"
        m = best.measured
        figure = f"{objective_def(objective).format(m)} {objective_def(objective).title}"
        quality = f", {best.quality.metric} {best.quality.score:.3f}" if best.quality else ""
        speedup = f"<b>{best.speedup_vs_baseline:.2f}× baseline</b>" if best.speedup_vs_baseline else "baseline not measured"
        budget = f" of {best.memory_budget_gib:.1f} GiB budget" if best.memory_budget_gib else ""
        best_line = (f"Best (trial #{best.trial_number}): <b>{html.escape(best.settings.label())}</b> — {figure}, "
                     f"peak {m.peak_memory_gib:.2f} GiB{budget}{html.escape(quality)}; {speedup}")
        study_name = best.study_name
    else:
        model = device = "–"
        best_line = "No feasible config yet: every measured candidate ran out of memory, went over budget, was unsupported or failed."
        study_name = study.study_name if study is not None else "–"
    if best is None and study is not None:
        model = _study_model_name(study)
        device = str(study.user_attrs.get("device_name", "–"))
    generated = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    return (f"<header><h1>autotune report: {html.escape(model)}</h1>"
            f"<p class='meta'>device {html.escape(device)} · objective {objective} · study {html.escape(study_name)} · "
            f"{len(records)} trials ({html.escape(states)}) · generated {generated}</p>"
            f"<p class='best'>{best_line}</p></header>")


def _front_table(records: list[TrialRecord], objective: str) -> str:
    front = pareto_front(records, objective)
    if not front:
        return ""
    with_quality = quality_on_front(records)
    label, scale = _objective_axis(records, objective)
    rows = []
    for r in front:
        m, q, stat = r.outcome.measurement, r.outcome.quality, objective_stat(r, objective)
        quality = f"<td>{html.escape(f'{q.metric} {q.score:.3f}')}</td>" if with_quality else ""
        rows.append(f"<tr><td>{r.number}</td><td class='l'>{html.escape(r.candidate.label())}</td>"
                    f"<td>{stat.median * scale:,.1f}</td><td>{stat.spread_pct:.0f}%</td><td>{m.peak_memory_gib:.2f}</td>{quality}</tr>")
    return (f"<table id='pareto-table'><tr><th>#</th><th class='l'>settings</th><th>{html.escape(label)}</th>"
            f"<th>spread</th><th>peak GiB</th>{'<th>quality</th>' if with_quality else ''}</tr>{''.join(rows)}</table>")


def _objectives_table(records: list[TrialRecord], names: list[str], best: DeploymentConfig | None) -> str:
    """The front of a multi-objective study as a table (the rows `autotune show` prints)."""
    table = objectives_front_rows(records, names, best.trial_number if best else None)
    if table is None:
        return "<p class='note'>Nothing on the front yet.</p>"
    caption, header, rows = table
    head = "".join(f"<th{' class=l' if i == 1 else ''}>{html.escape(c)}</th>" for i, c in enumerate(header))
    body = "".join("<tr>" + "".join(f"<td{' class=l' if i == 1 else ''}>{html.escape(c)}</td>" for i, c in enumerate(row))
                   + "</tr>" for row in rows)
    return f"<p class='note'>{html.escape(caption)}</p><table id='objectives-table'><tr>{head}</tr>{body}</table>"


def _trial_table(records: list[TrialRecord], objective: str) -> str:
    from autotune.report import _LEFT_ALIGNED, trial_columns, trial_rows
    from autotune.study.results import baseline_record

    base = baseline_record(records)
    columns = trial_columns(records)
    head = "".join(f"<th class='l'>{html.escape(c)}</th>" if c in _LEFT_ALIGNED else f"<th>{html.escape(c)}</th>" for c in columns)
    body = []
    for state, cells in trial_rows(records, objective, base.objective_value if base else None):
        tds = "".join(f"<td class='l'>{html.escape(v)}</td>" if c in _LEFT_ALIGNED else f"<td>{html.escape(v)}</td>"
                      for c, v in zip(columns, cells))
        body.append(f"<tr class='{_STATE_CLASS.get(state, '')}'>{tds}</tr>")
    return f"<table id='trials-table'><tr>{head}</tr>{''.join(body)}</table>"


def objectives_figure(records: list[TrialRecord], names: list[str], best: DeploymentConfig | None):
    """A multi-objective study: its first two objectives against each other, every feasible measured
    trial a dot, the front's points ringed and joined, best.yaml's point a star."""
    import plotly.graph_objects as go

    from autotune.study.pareto import objective_front

    x_def, y_def = objective_def(names[0]), objective_def(names[1])
    pool = [r for r in records if r.state == "measured" and names[0] in r.objective_values and names[1] in r.objective_values]
    front = objective_front(records, names)
    unit = lambda d: d.unit(pool[0].outcome.measurement if pool else None)  # noqa: E731
    point = lambda r: (r.objective_values[names[0]] * x_def.scale, r.objective_values[names[1]] * y_def.scale)  # noqa: E731
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=[point(r)[0] for r in pool], y=[point(r)[1] for r in pool], mode="markers", name="measured",
                             marker={"size": 8, "color": "#1f77b4"}, hovertext=[f"#{r.number} {r.candidate.label()}" for r in pool],
                             hoverinfo="text"))
    ordered = sorted(front, key=lambda r: point(r)[0])
    fig.add_trace(go.Scatter(x=[point(r)[0] for r in ordered], y=[point(r)[1] for r in ordered], mode="lines+markers",
                             name="Pareto front", line={"dash": "dot", "color": "#202020", "width": 1},
                             marker={"size": 13, "color": "rgba(0,0,0,0)", "line": {"width": 2, "color": "#202020"}},
                             hovertext=[f"#{r.number} {r.candidate.label()} (front)" for r in ordered], hoverinfo="text"))
    chosen = [r for r in pool if best is not None and r.number == best.trial_number]
    if chosen:
        fig.add_trace(go.Scatter(x=[point(chosen[0])[0]], y=[point(chosen[0])[1]], mode="markers", name="best.yaml",
                                 marker={"symbol": "star", "size": 18, "color": "#d62728"}, hoverinfo="skip"))
    direction = lambda d: "higher is better" if d.maximize else "lower is better"  # noqa: E731
    fig.update_layout(title={"text": f"{x_def.title} × {y_def.title}"}, height=460, template="plotly_white",
                      legend={"orientation": "h", "y": -0.2},
                      xaxis_title=f"{x_def.title} ({unit(x_def)}, {direction(x_def)})",
                      yaxis_title=f"{y_def.title} ({unit(y_def)}, {direction(y_def)})")
    return fig


def render_report(records: list[TrialRecord], study: optuna.Study | None, objective: str, best: DeploymentConfig | None) -> str:
    """The whole page as one string (plotly.js inlined with the first figure)."""
    import plotly.io as pio

    plotlyjs_included = False

    def figure_html(fig, div_id: str) -> str:
        nonlocal plotlyjs_included
        text = pio.to_html(fig, include_plotlyjs=not plotlyjs_included, full_html=False, div_id=div_id, config=PLOTLY_CONFIG,
                           default_height=f"{fig.layout.height}px")
        plotlyjs_included = True
        return text

    unmeasured = Counter(r.state for r in records if r.outcome.measurement is None and r.state != "duplicate")
    not_plotted = ("; not plotted (no measurement): " + ", ".join(f"{n} {state}" for state, n in unmeasured.items())
                   if unmeasured else "")
    sections = [_header(records, objective, best, study)]

    sections.append("<section id='pareto'><h2>Pareto front</h2>")
    if any(r.outcome.measurement is not None for r in records):
        sections.append(figure_html(pareto_figure(records, objective, best), PARETO_DIV_ID))
        dims = objective_def(objective).title + (", peak memory and quality" if quality_on_front(records)
                                                                            else " and peak memory")
        sections.append(f"<p class='note'>A feasible measured trial is on the front when no other is at least as good on {dims} "
                        f"and better on one of them{html.escape(not_plotted)}.</p>")
        sections.append(_front_table(records, objective))
    else:
        sections.append(f"<p class='note'>No trial has a measurement yet{html.escape(not_plotted)}.</p>")
    sections.append("</section>")

    names = study_objectives(records)
    if names:
        sections.append("<section id='objectives-front'><h2>Pareto front of the objectives</h2>")
        sections.append(figure_html(objectives_figure(records, names, best), OBJECTIVES_DIV_ID))
        sections.append(_objectives_table(records, names, best))
        if best is not None and best.chosen_by:
            sections.append(f"<p class='note'>best.yaml holds #{best.trial_number}: {html.escape(best.chosen_by)}.</p>")
        sections.append("</section>")

    sections.append("<section id='history'><h2>Optimisation history</h2>")
    if any(r.outcome.measurement is not None for r in records):
        sections.append(figure_html(history_figure(records, objective), "optimisation-history"))
    else:
        sections.append("<p class='note'>Nothing measured yet.</p>")
    sections.append("</section>")

    sections.append("<section id='importances'><h2>Parameter importances</h2>")
    result = importances(study, objective)
    if result.by_param:
        sections.append(figure_html(importance_figure(result), "param-importances"))
        sections.append("<p class='note'>How much each knob explains the objective across the feasible measured trials "
                        "(Optuna's PED-ANOVA evaluator); infeasible trials are left out, their value is a placeholder. "
                        "With few trials this is a rough guide, not a finding.</p>")
    else:
        sections.append(f"<p class='note'>Not computed: {html.escape(result.note)}.</p>")
    sections.append("</section>")

    sections.append(f"<section id='trials'><h2>Trials</h2>{_trial_table(records, objective)}"
                    "<p class='note'>* = baseline (the space's plainest candidate); quality~ = difference to the reference within its bootstrap noise; "
                    "unsupported/failed reasons: see trials.jsonl.</p></section>")
    model = best.model.name if best is not None else "study"
    return (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>autotune report: {html.escape(model)}</title>"
            f"<style>{_CSS}</style></head><body>{''.join(sections)}</body></html>\n")


def write_report(out_dir: Path, records: list[TrialRecord], study: optuna.Study | None, objective: str,
                 best: DeploymentConfig | None) -> Path:
    """Write out_dir/report.html atomically (a browser reloading it mid-study sees a whole page)."""
    path = out_dir / REPORT_FILE
    return atomic_write_text(path, render_report(records, study, objective, best))


def write_report_or_warn(out_dir: Path, records: list[TrialRecord], study: optuna.Study | None, objective: str,
                         best: DeploymentConfig | None) -> Path | None:
    """write_report for the study loop: the report is a view of results already saved in
    trials.jsonl and best.yaml, so its failure (plotly missing, a plotting bug) is one warning
    line, never a lost study."""
    try:
        return write_report(out_dir, records, study, objective, best)
    except Exception as e:
        _log.warning("report.html not written (%s: %s); trials.jsonl and best.yaml are saved, "
                     "`autotune show %s` retries", type(e).__name__, str(e).splitlines()[0] if str(e) else "", out_dir)
        return None
