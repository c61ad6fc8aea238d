"""The objectives registry (autotune/objectives.py), goodput (requests/s within every --slo limit),
the multi-objective study's front and chosen point (autotune/study/pareto.py), and a
multi-objective CPU study that resumes."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml

from autotune.objectives import OBJECTIVES, objective, parse_objectives
from autotune.slo import goodput, goodput_share, parse_slo
from autotune.spec import Candidate, Measurement, Stat, TrialOutcome, TrialRecord, TuneSpec
from autotune.study.pareto import chosen_point, knee, objective_front
from autotune.study.results import objective_value, objective_values
from tests.conftest import assert_ok, read_records, run_cli, write_space


def _measurement(ttft: list[float], e2e: list[float], tpot: list[float] | None = None, rps: float = 4.0,
                 outputs: list[int] | None = None) -> Measurement:
    n = len(e2e)
    return Measurement(output_tokens_per_s=Stat.of([100.0] * 3), prefill_tokens_per_s=Stat.of([1000.0] * 3),
                       decode_tokens_per_s=Stat.of([100.0] * 3), requests_per_s=Stat.of([rps] * 3), ttft_s=Stat.of(ttft),
                       tpot_s=Stat.of(tpot) if tpot else None, request_latency_s=Stat.of(e2e), peak_memory_gib=1.0,
                       warmup_s=0.1, measure_s=1.0, request_output_tokens=outputs if outputs is not None else None) if n else None


# ------------------------------------------------------------------------------ registry


def test_every_objective_owns_its_direction_placeholder_and_ratio() -> None:
    assert {name: o.direction for name, o in OBJECTIVES.items()} == {
        "throughput": "maximize", "latency": "minimize", "goodput": "maximize"}
    assert objective("throughput").placeholder == 0.0 and math.isinf(objective("latency").placeholder)
    assert objective("latency").ratio(0.5, 1.0) == 2.0 and objective("throughput").ratio(2.0, 1.0) == 2.0
    assert objective("latency").better(0.1, 0.2) and objective("goodput").better(3.0, 2.0)
    assert objective("goodput").needs_slo and not objective("throughput").needs_slo


@pytest.mark.parametrize("text, message", [("speed", "unknown objective 'speed'"), ("throughput,throughput", "twice"),
                                           (" , ", "empty")])
def test_bad_objectives_are_one_line_errors(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_objectives(text)


def test_the_spec_splits_objectives_and_goodput_needs_an_slo() -> None:
    spec = TuneSpec(objective="throughput,latency")
    assert (spec.objective, spec.objectives, spec.all_objectives, spec.knee_choice) == (
        "throughput", ["throughput", "latency"], ["throughput", "latency"], True)
    assert not TuneSpec(objective="throughput,latency", slo="e2e_p95=1s").knee_choice
    assert TuneSpec().all_objectives == ["throughput"] and TuneSpec().objectives == []
    with pytest.raises(ValueError, match="give --slo too"):
        TuneSpec(objective="goodput")
    with pytest.raises(ValueError, match="give --slo too"):
        TuneSpec(objective="latency,goodput")


def test_cli_refuses_goodput_without_an_slo_in_one_line_and_writes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = run_cli("tune", "--objective", "goodput", "--out", str(out), "--device", "cpu")
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and len(lines) == 1 and "give --slo too" in lines[0], result.stderr
    assert not out.exists()


# ------------------------------------------------------------------------------ goodput


def test_goodput_counts_only_requests_within_every_limit() -> None:
    m = _measurement(ttft=[0.1, 0.2, 0.6, 0.1], e2e=[1.0, 1.0, 1.0, 3.0], tpot=[0.01, 0.09, 0.01, 0.01], rps=4.0)
    assert goodput_share(m, parse_slo("ttft_p95=500ms")) == 0.75
    assert goodput_share(m, parse_slo("ttft_p95=500ms,tpot_p95=50ms")) == 0.5
    assert goodput_share(m, parse_slo("ttft_p95=500ms,tpot_p95=50ms,e2e_p95=2s")) == 0.25
    assert goodput(m, parse_slo("ttft_p95=500ms,tpot_p95=50ms")).median == 2.0  # 4 req/s, half of them within
    assert goodput_share(m, []) == 1.0
    # A limit nobody meets: goodput 0 with no spread (a Stat of equal samples), not a division by zero.
    none = goodput(m, parse_slo("ttft_p95=1ms"))
    assert (none.median, none.spread_pct) == (0.0, 0.0)


def test_goodput_matches_tpot_to_requests_by_their_output_lengths() -> None:
    """Under a workload a one-token request has no TPOT sample: the samples are matched to the
    requests of two or more tokens, and a request without one meets a TPOT limit."""
    m = _measurement(ttft=[0.1, 0.1, 0.1], e2e=[1.0, 1.0, 1.0], tpot=[0.09, 0.01], outputs=[5, 1, 7])
    assert goodput_share(m, parse_slo("tpot_p95=50ms")) == pytest.approx(2 / 3)  # request 0 breaks it
    broken = _measurement(ttft=[0.1, 0.1, 0.1], e2e=[1.0, 1.0, 1.0], tpot=[0.09, 0.01])
    with pytest.raises(ValueError, match="cannot be matched"):
        goodput_share(broken, parse_slo("tpot_p95=50ms"))


def test_objective_values_read_the_registry() -> None:
    m = _measurement(ttft=[0.1] * 3, e2e=[0.5, 0.6, 0.7], tpot=[0.01] * 3)
    m.goodput_rps = Stat.of([3.0, 3.0, 3.0])
    outcome = TrialOutcome(status="ok", measurement=m)
    assert objective_value("latency", outcome) == 0.6 and objective_value("goodput", outcome) == 3.0
    assert objective_values(["throughput", "latency"], outcome) == {"throughput": 100.0, "latency": 0.6}
    assert objective_values(["throughput"], outcome) == {}  # a single objective keeps objective_value alone


# ------------------------------------------------------------------------------ front and chosen point


def _rec(number: int, tok_s: float, latency_s: float, state: str = "measured", peak: float = 1.0) -> TrialRecord:
    m = _measurement(ttft=[0.1] * 3, e2e=[latency_s] * 3)
    m.peak_memory_gib = peak
    return TrialRecord(number=number, state=state, candidate=Candidate(dtype="fp32", batch_size=number + 1, max_length=64, new_tokens=4),
                       outcome=TrialOutcome(status="ok", measurement=m), objective_value=tok_s, feasible=state == "measured",
                       objective_values={"throughput": tok_s, "latency": latency_s})


NAMES = ["throughput", "latency"]
# Throughput up, latency up: a trade-off. #3 is dominated by #1 (slower and later); #5 broke the SLO.
RECS = [_rec(0, 100, 0.10), _rec(1, 400, 0.20), _rec(2, 800, 0.80), _rec(3, 300, 0.30), _rec(4, 500, 0.25),
        _rec(5, 2000, 0.05, state="slo_violated")]


def test_the_front_keeps_the_non_dominated_feasible_trials_best_first() -> None:
    assert [r.number for r in objective_front(RECS, NAMES)] == [2, 4, 1, 0]
    assert objective_front([], NAMES) == []


def test_without_an_slo_the_knee_gives_up_least_of_both() -> None:
    # Scaled over the front: #4 is (0.57, 0.79) of the way to the ideal in throughput and latency:
    # nearer the ideal point than the extremes #2 (1, 0) and #0 (0, 1).
    assert chosen_point(RECS, NAMES, with_slo=False).number == 4
    assert knee([RECS[0]], NAMES).number == 0  # a front of one is its own choice


def test_with_an_slo_the_best_first_objective_within_it_is_chosen() -> None:
    assert chosen_point(RECS, NAMES, with_slo=True).number == 2  # #5 is faster but broke the SLO
    assert chosen_point([RECS[5]], NAMES, with_slo=True) is None


# ------------------------------------------------------------------------------ a study


@pytest.mark.slow
def test_a_multi_objective_study_keeps_its_front_and_resumes(tmp_path: Path) -> None:
    """throughput,latency on the tiny model on CPU: every measured trial has both values, the
    front is marked in trials.jsonl, best.yaml holds a front point chosen by the knee and says so;
    re-running with more trials resumes the same study; another objective is another study."""
    space = write_space(tmp_path / "space.yaml", dtype=["fp32"], attn_implementation=["sdpa"], batch_size=[1, 4, 16],
                        max_length=[32], new_tokens=4)
    out = tmp_path / "mo"
    common = ["--model", "tiny-qwen2", "--random-weights", "--space", str(space), "--device", "cpu",
              "--objective", "throughput,latency", "--out", str(out)]
    assert_ok(run_cli("tune", *common, "--trials", "2"))
    first = read_records(out)
    assert_ok(run_cli("tune", *common, "--trials", "3"))
    recs = read_records(out)
    assert [r.number for r in recs][:len(first)] == [r.number for r in first] and len(recs) > len(first)
    measured = [r for r in recs if r.state == "measured"]
    assert measured and all(set(r.objective_values) == {"throughput", "latency"} for r in measured)
    on_front = {r.number for r in measured if r.on_pareto_front}
    assert on_front == {r.number for r in objective_front(recs, NAMES)}
    best = yaml.safe_load((out / "best.yaml").read_text())
    assert best["objectives"] == NAMES and best["chosen_by"] == "the Pareto front's knee"
    assert best["trial_number"] in on_front and best["confirmed"] is False and "knee" in best["confirmation_note"]
    shown = run_cli("show", str(out), "--markdown")
    assert_ok(shown)
    assert "Pareto front of throughput × latency" in shown.stdout and f"| {best['trial_number']}* |" in shown.stdout
    other = run_cli("tune", *common[:-4], "--objective", "latency", "--out", str(out), "--trials", "3")
    assert other.returncode == 2 and "objective" in other.stderr
