"""--slo: parsing (one-line errors), the percentile a limit is judged on, the constraint, the
slo_violated state (never the best), goodput's share, and a CPU study where an SLO excludes the
larger batch while `autotune show` lists the violation."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from autotune.slo import excess, goodput_share, observed, parse_slo, percentile, violations
from autotune.spec import Candidate, Measurement, Stat, TrialOutcome, TrialRecord, TuneSpec
from autotune.study.results import best_record
from autotune.study.tell import classify
from tests.conftest import assert_ok, cli_env, read_records, run_cli, write_space


def _measurement(ttft: list[float], tpot: list[float], e2e: list[float]) -> Measurement:
    return Measurement(output_tokens_per_s=Stat.of([100.0] * len(e2e)), prefill_tokens_per_s=Stat.of([1000.0] * len(e2e)),
                       decode_tokens_per_s=Stat.of([100.0] * len(e2e)), requests_per_s=Stat.of([1.0] * len(e2e)),
                       ttft_s=Stat.of(ttft), tpot_s=Stat.of(tpot), request_latency_s=Stat.of(e2e), peak_memory_gib=1.0,
                       warmup_s=0.1, measure_s=1.0)


def test_parse_reads_units_percentiles_and_any_subset() -> None:
    limits = {lim.key: lim.limit_s for lim in parse_slo("ttft_p95=500ms, tpot_p99=0.05s,e2e_p50=8s")}
    assert limits == {"ttft_p95": 0.5, "tpot_p99": 0.05, "e2e_p50": 8.0}
    assert [lim.key for lim in parse_slo("e2e_p90=1500us")] == ["e2e_p90"]


@pytest.mark.parametrize("text, needle", [
    ("ttft_p95=500", "no unit"),
    ("ttft_p97=500ms", "p97 is not offered"),
    ("latency_p95=1s", "unknown limit 'latency_p95'"),
    ("ttft_p95=fast", "cannot read the limit"),
    ("ttft_p95=0ms", "above zero"),
    ("e2e_p95=500000s", "more than a day; did you mean 500000ms?"),
    ("ttft_p95=1s,ttft_p95=2s", "twice"),
    (" , ", "empty"),
])
def test_bad_limits_are_one_line_errors(text: str, needle: str) -> None:
    with pytest.raises(ValueError) as err:
        parse_slo(text)
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_the_spec_refuses_a_bad_slo_and_keeps_a_good_one() -> None:
    assert [lim.key for lim in TuneSpec(slo="tpot_p95=50ms").slo_limits] == ["tpot_p95"]
    assert TuneSpec().slo_limits == []
    with pytest.raises(ValueError, match="no unit"):
        TuneSpec(slo="tpot_p95=50")


def test_percentile_interpolates_like_numpy() -> None:
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert percentile([0.1, 0.2, 0.9], 95) == pytest.approx(0.2 + 0.7 * 0.9)
    assert percentile([5.0], 99) == 5.0


def test_excess_is_the_worst_relative_overrun_and_violations_name_it() -> None:
    m = _measurement(ttft=[0.4, 0.45, 0.6], tpot=[0.02] * 3, e2e=[2.0] * 3)
    limits = parse_slo("ttft_p95=500ms,tpot_p95=50ms")
    assert observed(m, limits[0]) == pytest.approx(0.585)
    assert excess(m, limits) == pytest.approx(0.17)
    assert violations(m, limits) == ["ttft_p95 585 ms > 500 ms"]
    assert excess(m, parse_slo("ttft_p50=500ms")) < 0 and violations(m, parse_slo("ttft_p50=500ms")) == []


def test_goodput_share_counts_repeats_within_every_limit() -> None:
    m = _measurement(ttft=[0.1, 0.2, 0.6, 0.1], tpot=[0.01, 0.09, 0.01, 0.01], e2e=[1.0] * 4)
    assert goodput_share(m, parse_slo("ttft_p95=500ms")) == 0.75
    assert goodput_share(m, parse_slo("ttft_p95=500ms,tpot_p95=50ms")) == 0.5
    assert goodput_share(m, []) == 1.0


def _cand(batch: int) -> Candidate:
    return Candidate(dtype="fp32", batch_size=batch, max_length=64, new_tokens=4)


def test_classify_marks_an_slo_breach_as_its_own_state_and_never_the_best() -> None:
    slow = TrialOutcome(status="ok", measurement=_measurement([0.9] * 3, [0.01] * 3, [1.0] * 3))
    fast = TrialOutcome(status="ok", measurement=_measurement([0.1] * 3, [0.01] * 3, [1.0] * 3))
    limits = parse_slo("ttft_p95=500ms")
    v = classify(slow, _cand(8), objective="throughput", budget_gib=10.0, floor=None, slo=limits)
    assert (v.state, v.feasible, v.constraints["slo_excess"]) == ("slo_violated", False, pytest.approx(0.8))
    assert v.slo_violations == ("ttft_p95 900 ms > 500 ms",)
    ok = classify(fast, _cand(1), objective="throughput", budget_gib=10.0, floor=None, slo=limits)
    assert (ok.state, ok.constraints["slo_excess"]) == ("measured", 0.0)
    # Over the memory budget is infeasible first: such a config cannot run at all.
    over = classify(slow, _cand(8), objective="throughput", budget_gib=0.5, floor=None, slo=limits)
    assert over.state == "infeasible" and over.constraints["slo_excess"] > 0
    # Without --slo nothing is judged on latency.
    assert classify(slow, _cand(8), objective="throughput", budget_gib=10.0, floor=None).state == "measured"
    recs = [TrialRecord(number=n, state=verdict.state, candidate=c, outcome=o, objective_value=value, feasible=verdict.feasible)
            for n, (verdict, c, o, value) in enumerate([(v, _cand(8), slow, 999.0), (ok, _cand(1), fast, 10.0)])]
    assert best_record(recs, "throughput").number == 1  # the faster candidate broke the SLO


def test_cli_refuses_a_bad_slo_with_one_line_and_no_output(tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = run_cli("tune", "--slo", "ttft_p95=500", "--out", str(out), "--device", "cpu")
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: --slo ttft_p95=500: the limit has no unit"), result.stderr
    assert not out.exists()


@pytest.mark.slow
def test_an_slo_excludes_the_larger_batch_and_show_lists_it(tmp_path: Path) -> None:
    """Batch 1 and batch 16 of the embedded model on CPU: first measured without an SLO, then
    under an end-to-end limit between their slowest repeats (a fresh study: the SLO is part of its
    identity). Batch 16 is slo_violated with its figure, batch 1 is the best, show lists it."""
    space = write_space(tmp_path / "space.yaml", dtype=["fp32"], attn_implementation=["sdpa"], batch_size=[1, 16],
                        max_length=[32], new_tokens=4)
    common = ["--space", str(space), "--trials", "2", "--device", "cpu", "--confirm-top", "0"]
    assert_ok(run_cli("tune", *common, "--out", str(tmp_path / "free")))
    e2e = {r.candidate.batch_size: max(r.outcome.measurement.request_latency_s.samples) for r in read_records(tmp_path / "free")}
    assert e2e[16] > 1.5 * e2e[1], e2e  # far enough apart for a limit between them to survive noise
    limit_ms = round((e2e[1] * e2e[16]) ** 0.5 * 1000)
    out = tmp_path / "slo"
    result = run_cli("tune", *common, "--out", str(out), "--slo", f"e2e_p95={limit_ms}ms", env=cli_env())
    assert_ok(result)
    recs = {r.candidate.batch_size: r for r in read_records(out)}
    assert recs[16].state == "slo_violated" and recs[16].slo_violations[0].startswith("e2e_p95 ")
    assert recs[1].state == "measured"
    best = yaml.safe_load((out / "best.yaml").read_text())
    assert best["settings"]["batch_size"] == 1
    # best.yaml says how many requests/s batch 1 holds within the limit (simulated; batch 16's figures unused).
    assert best["slo"] == f"e2e_p95={limit_ms}ms" and best["capacity"]["slo"].startswith("e2e_p95 <= ")
    assert 0 < best["capacity"]["rate_rps"] <= best["capacity"]["saturation_rps"] and best["capacity"]["batch_sizes"] == [1]
    shown = run_cli("show", str(out))
    assert_ok(shown)
    assert "SLO violations (1 measured candidate, never the best):" in shown.stdout
    assert f"> {limit_ms:,} ms" in shown.stdout or f"> {limit_ms / 1000:,.2f} s" in shown.stdout
