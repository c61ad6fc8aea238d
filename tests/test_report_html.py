"""report.html and the analysis behind it: the Pareto front and importances as pure functions
(synthetic records), the page for a real tiny study run through the real CLI (the Pareto plot and
its points are in the file), `autotune show` printing the same and regenerating a missing
report, and the page rendered in headless Chromium (the screenshot shows the plot)."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pytest
from PIL import Image

from autotune.analysis import importances, pareto_front
from autotune.report_html import (OBJECTIVES_DIV_ID, PARETO_DIV_ID, REPORT_FILE, _objectives_table, render_report, write_report,
                                  write_report_or_warn)
from autotune.spec import Candidate, Measurement, QualityReport, Stat, TrialOutcome, TrialRecord
from autotune.study import RECORD_ATTR
from tests.conftest import assert_ok, read_records, run_cli, write_space

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
WINDOW_PX = (1400, 1000)
# The Pareto figure is the first thing under the page header: in a 1400x1000 window its plot area
# lies inside this box (left, top, right, bottom), below the header text.
PARETO_BOX_PX = (60, 160, 1300, 640)


# ------------------------------------------------------------------------------ helpers


def _measurement(tok_s: float, peak_gib: float, latency_s: float = 1.0) -> Measurement:
    def stat(v: float) -> Stat:
        return Stat.of([v * 0.95, v, v * 1.05])

    return Measurement(
        output_tokens_per_s=stat(tok_s), prefill_tokens_per_s=stat(tok_s * 10), decode_tokens_per_s=stat(tok_s),
        requests_per_s=stat(1.0), ttft_s=stat(0.01), tpot_s=stat(0.001), request_latency_s=stat(latency_s),
        peak_memory_gib=peak_gib, warmup_s=0.1, measure_s=1.0,
    )


def _record(number: int, state: str = "measured", *, tok_s: float | None = None, peak_gib: float = 1.0, latency_s: float = 1.0,
            quality: float | None = None, objective: str = "throughput", **cand: Any) -> TrialRecord:
    candidate = Candidate(**{"dtype": "fp32", "batch_size": 1, "max_length": 32, "new_tokens": 4, **cand})
    report = (QualityReport(metric="contains", score=quality, ci_low=quality - 0.05, ci_high=quality + 0.05, n=20, per_example=[])
              if quality is not None else None)
    if tok_s is None:
        outcome = TrialOutcome(status="oom" if state == "infeasible" else "unsupported", reason="CUDA out of memory")
        value = None
    else:
        outcome = TrialOutcome(status="ok", measurement=_measurement(tok_s, peak_gib, latency_s), quality=report)
        value = tok_s if objective == "throughput" else latency_s
    constraints = {"over_budget_gib": 0.5} if state == "infeasible" and tok_s is not None else {}
    return TrialRecord(number=number, state=state, candidate=candidate, outcome=outcome, objective_value=value,
                       constraints=constraints, feasible=state == "measured", is_baseline=number == 0)


def _study_of(recs: list[TrialRecord], direction: str = "maximize") -> optuna.Study:
    """An in-memory study holding the records as the real study stores them (record in user attrs)."""
    study = optuna.create_study(direction=direction)
    distributions = {"dtype": optuna.distributions.CategoricalDistribution(["fp32", "bf16"]),
                     "batch_size": optuna.distributions.CategoricalDistribution([1, 2, 4, 8])}
    for r in recs:
        study.add_trial(optuna.trial.create_trial(
            params={"dtype": r.candidate.dtype, "batch_size": r.candidate.batch_size}, distributions=distributions,
            value=r.objective_value if r.objective_value is not None else 0.0,
            user_attrs={RECORD_ATTR: r.model_dump(mode="json")},
        ))
    return study


def _plotly_figure(page: str, div_id: str) -> tuple[list[dict], dict]:
    """The data and layout of the figure plotly draws into `div_id` (the Plotly.newPlot arguments)."""
    call = page.index("Plotly.newPlot(", page.index(f'id="{div_id}"'))
    start = page.index("[", page.index(f'"{div_id}",', call))
    decoder = json.JSONDecoder()
    data, end = decoder.raw_decode(page, start)
    layout, _ = decoder.raw_decode(page, page.index("{", end))
    return data, layout


# ------------------------------------------------------------------------------ pure functions


def test_pareto_front_keeps_only_non_dominated_feasible_trials() -> None:
    recs = [
        _record(0, tok_s=100, peak_gib=1.0),
        _record(1, tok_s=300, peak_gib=2.0),
        _record(2, tok_s=200, peak_gib=3.0),                 # dominated by #1: slower and larger
        _record(3, tok_s=900, peak_gib=9.0, state="infeasible"),  # over budget: never on the front
        _record(4, state="infeasible"),                      # OOM, nothing measured
        _record(5, tok_s=100, peak_gib=1.0),                 # an exact tie with #0: both stay
    ]
    assert [r.number for r in pareto_front(recs, "throughput")] == [0, 5, 1]


def test_pareto_front_for_latency_prefers_lower_latency() -> None:
    recs = [_record(0, tok_s=1, latency_s=2.0, peak_gib=1.0, objective="latency"),
            _record(1, tok_s=1, latency_s=1.0, peak_gib=1.0, objective="latency"),
            _record(2, tok_s=1, latency_s=0.5, peak_gib=4.0, objective="latency")]
    assert [r.number for r in pareto_front(recs, "latency")] == [1, 2]


def test_pareto_front_counts_quality_when_every_feasible_trial_has_it() -> None:
    recs = [_record(0, tok_s=300, peak_gib=1.0, quality=0.60), _record(1, tok_s=200, peak_gib=2.0, quality=0.70)]
    assert [r.number for r in pareto_front(recs, "throughput")] == [0, 1]  # #1 is slower and larger, but better
    recs[1] = _record(1, tok_s=200, peak_gib=2.0)  # no score: quality cannot be compared, so it is not a dimension
    assert [r.number for r in pareto_front(recs, "throughput")] == [0]


def test_importances_guard_too_few_trials_and_constant_knobs() -> None:
    assert importances(None, "throughput").note.startswith("no study storage")
    one = importances(_study_of([_record(0, tok_s=100)]), "throughput")
    assert one.by_param == {} and "at least 2" in one.note and one.n_trials == 1
    # Only measured trials count: infeasible ones carry a placeholder value.
    same = importances(_study_of([_record(0, tok_s=100), _record(1, tok_s=120), _record(2, state="infeasible", batch_size=8)]),
                       "throughput")
    assert same.by_param == {} and "same value" in same.note and same.n_trials == 2


def test_importances_rank_the_knob_that_moves_the_objective() -> None:
    recs = [_record(i, tok_s=100.0 * b + i, batch_size=b, dtype=d) for i, (b, d) in
            enumerate([(1, "fp32"), (2, "bf16"), (4, "fp32"), (8, "bf16"), (1, "bf16"), (8, "fp32"), (2, "fp32"), (4, "bf16")])]
    result = importances(_study_of(recs), "throughput")
    assert result.n_trials == 8 and set(result.by_param) == {"batch_size", "dtype"}
    assert list(result.by_param)[0] == "batch_size"
    assert sum(result.by_param.values()) == pytest.approx(1.0)


def test_report_colours_by_quality_and_explains_missing_importances(tmp_path: Path) -> None:
    recs = [_record(0, tok_s=100, peak_gib=1.0, quality=0.70), _record(1, tok_s=300, peak_gib=2.0, quality=0.65, dtype="bf16"),
            _record(2, tok_s=500, peak_gib=5.0, quality=0.66, state="infeasible"), _record(3, state="infeasible", batch_size=8)]
    page = write_report(tmp_path, recs, None, "throughput", None).read_text()
    data, layout = _plotly_figure(page, PARETO_DIV_ID)
    assert "quality" in layout["title"]["text"] and "coloraxis" in layout
    feasible = next(trace for trace in data if trace["name"].startswith("feasible"))
    assert feasible["marker"]["color"] == [0.70, 0.65]
    infeasible = next(trace for trace in data if trace["name"].startswith("infeasible"))
    assert infeasible["hovertext"][0].startswith("#2 ")
    assert "No feasible config yet" in page and "Not computed: no study storage" in page
    assert page.count("<tr class=") == 4  # the trial table: one row per trial
    assert "1 infeasible" in page and "not plotted" in page  # the OOM has no point and says so


def test_report_for_latency_and_for_a_study_with_nothing_measured(tmp_path: Path) -> None:
    recs = [_record(0, tok_s=10, latency_s=0.25, objective="latency"), _record(1, tok_s=20, latency_s=0.5, peak_gib=0.5,
                                                                           objective="latency", batch_size=2)]
    page = write_report(tmp_path, recs, _study_of(recs, "minimize"), "latency", None).read_text()
    data, layout = _plotly_figure(page, PARETO_DIV_ID)
    assert layout["yaxis"]["title"]["text"] == "request latency (ms, lower is better)"
    assert sorted(y for trace in data if trace.get("mode") == "markers" for y in trace["y"]) == [250.0, 500.0]
    empty = write_report(tmp_path, [_record(0, state="infeasible")], None, "throughput", None).read_text()
    assert "No trial has a measurement yet" in empty and "plotly" not in empty.lower()  # no figure, no 4.7 MB script


def test_report_failure_is_a_warning_not_an_exception(tmp_path: Path, monkeypatch, caplog) -> None:
    import autotune.report_html as report_html

    def broken(*args, **kwargs) -> str:
        raise RuntimeError("plotting bug")

    monkeypatch.setattr(report_html, "render_report", broken)
    with caplog.at_level(logging.WARNING, logger="autotune.report_html"):
        assert write_report_or_warn(tmp_path, [_record(0, tok_s=1)], None, "throughput", None) is None
    assert "report.html not written (RuntimeError: plotting bug)" in caplog.text
    assert not (tmp_path / REPORT_FILE).exists()


# ------------------------------------------------------------------------------ a real study


@pytest.fixture(scope="module")
def report_study(tmp_path_factory) -> Path:
    """A real tiny study (random-weight tiny Qwen2 on CPU, ~10-30 s) through the real CLI."""
    out = tmp_path_factory.mktemp("report-study")
    space = write_space(out.parent / "report-space.yaml", batch_size=[1, 2, 4], max_length=[32, 48])
    result = run_cli("tune", "--model", "tiny-qwen2", "--random-weights", "--space", str(space), "--trials", "6",
                     "--out", str(out), "--device", "cpu")
    assert_ok(result)
    assert "report.html not written" not in result.stderr
    return out


@pytest.mark.slow
def test_study_writes_report_with_the_pareto_plot(report_study: Path) -> None:
    page = (report_study / REPORT_FILE).read_text()
    data, layout = _plotly_figure(page, PARETO_DIV_ID)
    assert layout["title"]["text"].startswith("Pareto front: throughput × peak memory")
    measured = [r for r in read_records(report_study) if r.state == "measured"]
    assert len(measured) >= 2
    points = [text.split(" ", 1)[0] for trace in data if trace.get("mode") == "markers" and trace["name"] != "best.yaml"
              for text in trace.get("hovertext", [])]
    assert sorted(points) == sorted(f"#{r.number}" for r in measured)  # every measured trial is a point, nothing else
    # Offline: plotly.js is inlined once, nothing is fetched.
    assert page.count("plotly.js v") == 1 and "<script src=" not in page
    assert "Optimisation history" in page and "Parameter importances" in page and "id='trials-table'" in page


@pytest.mark.slow
def test_show_prints_front_and_importances_and_regenerates_the_report(report_study: Path) -> None:
    (report_study / REPORT_FILE).unlink()
    result = run_cli("show", str(report_study))
    assert_ok(result)
    assert "Pareto front (throughput × peak memory)" in result.stdout
    assert "Parameter importances" in result.stdout or "parameter importances not computed" in result.stdout
    assert (report_study / REPORT_FILE).is_file() and "report:" in result.stdout
    front = [r.number for r in pareto_front(read_records(report_study), "throughput")]
    page = (report_study / REPORT_FILE).read_text()
    assert all(f"<tr><td>{n}</td>" in page for n in front)  # the page's front table lists the same trials


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium is not installed (Debian: apt-get install -y "
                                             "--no-install-recommends chromium); .ci/run installs it")
def test_report_renders_the_pareto_plot_in_headless_chromium(report_study: Path, tmp_path: Path) -> None:
    screenshot = tmp_path / "report.png"
    result = subprocess.run(
        [CHROMIUM, "--headless", "--disable-gpu", "--no-sandbox", f"--user-data-dir={tmp_path / 'profile'}",
         "--virtual-time-budget=10000", f"--screenshot={screenshot}", f"--window-size={WINDOW_PX[0]},{WINDOW_PX[1]}",
         (report_study / REPORT_FILE).resolve().as_uri()],
        capture_output=True, text=True, timeout=120,
    )
    assert screenshot.is_file(), f"no screenshot (exit {result.returncode}): {result.stderr[-2000:]}"
    image = Image.open(screenshot).convert("RGB")
    assert image.size == WINDOW_PX
    region = np.asarray(image.crop(PARETO_BOX_PX), dtype=np.int16)
    non_white = int((region.min(axis=2) < 235).sum())
    # Markers are coloured; the header and the axes' text are black or grey. A page whose script did
    # not run has an empty (white) plot area here.
    coloured = int((region.max(axis=2) - region.min(axis=2) > 60).sum())
    assert non_white > 0.005 * region.shape[0] * region.shape[1], f"plot area is blank: {non_white} non-white pixels"
    assert coloured > 300, f"no markers drawn: {coloured} coloured pixels"


def test_a_multi_objective_report_draws_the_objectives_front_and_stars_the_chosen_point(tmp_path: Path) -> None:
    """The front of throughput × latency: dominated trial #2 is a dot but not on the front line,
    best.yaml's trial (#1) is the star and the starred row of the table."""
    recs = [_record(0, tok_s=10, latency_s=0.1), _record(1, tok_s=30, latency_s=0.3, batch_size=2),
            _record(2, tok_s=20, latency_s=0.5, batch_size=4), _record(3, tok_s=60, latency_s=0.9, batch_size=8)]
    for r in recs:
        r.objective_values = {"throughput": r.objective_value, "latency": r.outcome.measurement.request_latency_s.median}

    class Best:  # the two fields of a DeploymentConfig the section reads
        trial_number, chosen_by = 1, "the Pareto front's knee"

    page = render_report(recs, None, "throughput", None)
    data, layout = _plotly_figure(page, OBJECTIVES_DIV_ID)
    front = next(t for t in data if t["name"] == "Pareto front")
    assert sorted(front["x"]) == [10, 30, 60] and len(next(t for t in data if t["name"] == "measured")["x"]) == 4
    assert layout["yaxis"]["title"]["text"] == "request latency (ms, lower is better)"
    starred = _objectives_table(recs, ["throughput", "latency"], Best())
    assert "<td>1*</td>" in starred and "<td>2</td>" not in starred  # #2 is dominated by #1
