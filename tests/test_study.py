"""End-to-end studies on the real embedded SmolLM2-135M, through the real CLI and a real SQLite
storage: a full tiny study, resume after the whole process tree is SIGKILLed, a worker SIGKILLed
mid-trial, an OOM, a hung trial, a budget nobody fits, unsupported candidates."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml

from autotune.spec import DeploymentConfig
from autotune.study import RECORD_ATTR
from tests.conftest import assert_ok, cli_env, read_records, run_cli, write_space

pytestmark = pytest.mark.slow  # every test here runs a whole study (CLI subprocesses or run_study)


@pytest.fixture(scope="module")
def tiny_study(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("study")
    space = write_space(out.parent / "space.yaml")
    result = run_cli("tune", "--space", str(space), "--trials", "4", "--out", str(out), "--device", "cpu")
    assert_ok(result)
    (out / "stdout.txt").write_text(result.stdout)
    return out


def test_full_study_writes_valid_best_config(tiny_study: Path) -> None:
    config = DeploymentConfig.model_validate(yaml.safe_load((tiny_study / "best.yaml").read_text()))
    recs = read_records(tiny_study)
    counted = [r for r in recs if r.state != "duplicate"]
    assert len(counted) == 4
    baseline = recs[0]
    assert baseline.is_baseline and baseline.number == 0
    assert (baseline.candidate.dtype, baseline.candidate.attn_implementation, baseline.candidate.batch_size) == ("fp32", "sdpa", 1)
    measured = [r for r in counted if r.state == "measured"]
    assert measured, "no candidate measured"
    for r in measured:
        m = r.outcome.measurement
        assert len(m.output_tokens_per_s.samples) >= 3
        assert m.prefill_tokens_per_s.median > 0 and m.decode_tokens_per_s.median > 0
        assert len(m.ttft_s.samples) == len(m.request_latency_s.samples) == 3
        assert m.peak_memory_gib > 0.1  # a 135M model in a Python process is well above 100 MiB RSS
    best = max(measured, key=lambda r: r.objective_value)
    # --confirm-top 3 (the default) re-measured the top 3: best.yaml holds the winner by its pooled median.
    confirmation = config.confirmation
    assert confirmation is not None and confirmation.search_winner == best.number
    winner = next(c for c in confirmation.candidates if c.trial_number == confirmation.winner)
    assert config.trial_number == winner.trial_number
    assert config.objective_value == pytest.approx(winner.confirmed.median)
    assert config.measured.throughput.samples == winner.confirmed.samples
    assert config.speedup_vs_baseline == pytest.approx(winner.confirmed.median / baseline.objective_value)
    assert config.fingerprint.torch.startswith(__import__("torch").__version__.split("+")[0])
    assert config.model.kind == "embedded"
    assert "best.yaml" in (tiny_study / "stdout.txt").read_text()


def test_rerun_measures_nothing_again(tiny_study: Path) -> None:
    before = (tiny_study / "trials.jsonl").read_text()
    space = tiny_study.parent / "space.yaml"
    result = run_cli("tune", "--space", str(space), "--trials", "4", "--out", str(tiny_study), "--device", "cpu")
    assert_ok(result)
    assert "nothing new to measure" in result.stdout
    assert (tiny_study / "trials.jsonl").read_text() == before


def test_show_prints_trials_and_best(tiny_study: Path) -> None:
    result = run_cli("show", str(tiny_study))
    assert_ok(result)
    assert "Trials" in result.stdout and "Best deployment config" in result.stdout
    markdown = run_cli("show", str(tiny_study), "--markdown")
    assert_ok(markdown)
    rows = [line for line in markdown.stdout.splitlines() if line.startswith("| ")]
    assert len(rows) == 1 + len([r for r in read_records(tiny_study) if r.state != "duplicate"])  # header + trials


def _start_study_and_wait(space: Path, out: Path, *, trials: int, min_records: int, start_new_session: bool = False) -> subprocess.Popen:
    """Start `autotune tune` in the background and return once it has recorded `min_records` trials."""
    args = [sys.executable, "-m", "autotune.cli", "tune", "--space", str(space), "--trials", str(trials), "--out", str(out), "--device", "cpu"]
    proc = subprocess.Popen(args, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=start_new_session)
    deadline = time.monotonic() + 300
    while len(read_records(out)) < min_records and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
    return proc


def test_resume_after_killing_the_whole_study(tmp_path: Path) -> None:
    space = write_space(tmp_path / "space.yaml", batch_size=[1, 2, 4], max_length=[32, 48])
    out = tmp_path / "out"
    proc = _start_study_and_wait(space, out, trials=6, min_records=2, start_new_session=True)
    assert proc.poll() is None, "study finished before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)  # parent and worker, mid-study, no chance to clean up
    proc.wait()
    survived = {r.number: r for r in read_records(out)}
    assert len(survived) >= 2

    result = run_cli("tune", "--space", str(space), "--trials", "6", "--out", str(out), "--device", "cpu")
    assert_ok(result)
    recs = read_records(out)
    by_number = {r.number: r for r in recs}
    for number, old in survived.items():  # nothing completed is lost or re-measured
        assert by_number[number] == old
    counted = [r for r in recs if r.state != "duplicate"]
    assert len(counted) == 6
    keys = [r.candidate for r in counted if r.state in ("measured", "infeasible", "unsupported")]
    assert len(keys) == len(set(keys)), "a candidate was measured twice"
    study = optuna.load_study(study_name="SmolLM2-135M-Instruct-cpu", storage=f"sqlite:///{out / 'study.db'}")
    assert not study.get_trials(states=(optuna.trial.TrialState.RUNNING,)), "a killed trial was left RUNNING"


def test_worker_sigkill_fails_one_trial_and_study_completes(tmp_path: Path) -> None:
    # One shape point: no load-key follow-ups, so trials 0, 1 and 2 are the ones that run.
    space = write_space(tmp_path / "space.yaml", batch_size=[1])
    out = tmp_path / "out"
    env = cli_env(AUTOTUNE_FAULTS=json.dumps({"sigkill_on_trial": 1}))
    result = run_cli("tune", "--space", str(space), "--trials", "3", "--out", str(out), "--device", "cpu", env=env)
    assert_ok(result)
    recs = {r.number: r for r in read_records(out)}
    assert recs[1].state == "failed" and recs[1].outcome.status == "crashed"
    assert "SIGKILL" in recs[1].outcome.reason
    assert Path(recs[1].outcome.worker_log).is_file()
    others = [r for n, r in recs.items() if n != 1 and r.state != "duplicate"]
    assert len(others) == 2 and all(r.state == "measured" for r in others)  # the study went on and completed
    assert len(list((out / "workers").glob("worker-*.log"))) == 2  # a fresh worker took over
    study = optuna.load_study(study_name="SmolLM2-135M-Instruct-cpu", storage=f"sqlite:///{out / 'study.db'}")
    assert study.trials[1].state == optuna.trial.TrialState.FAIL


def test_oom_is_an_infeasible_answer_not_a_failure(tmp_path: Path) -> None:
    space = write_space(tmp_path / "space.yaml", dtype=["fp32"], attn_implementation=["sdpa"], batch_size=[1, 2, 4])
    out = tmp_path / "out"
    env = cli_env(AUTOTUNE_FAULTS=json.dumps({"oom_at_batch_size": 2}))
    result = run_cli("tune", "--space", str(space), "--trials", "3", "--out", str(out), "--device", "cpu", env=env)
    assert_ok(result)
    recs = [r for r in read_records(out) if r.state != "duplicate"]
    assert {r.candidate.batch_size for r in recs} == {1, 2, 4}
    by_number = {r.number: r for r in recs}
    for r in recs:
        if r.candidate.batch_size >= 2:
            assert r.state == "infeasible" and r.outcome.status == "oom"
            assert r.constraints["oom"] > 0
            if r.outcome.inferred_from is None:
                assert "allocate" in r.outcome.reason  # the allocator's own message, from a real failed allocation
            else:  # answered from a real OOM at a smaller batch with the same load, never from thin air
                source = by_number[r.outcome.inferred_from]
                assert source.outcome.inferred_from is None and "allocate" in source.outcome.reason
                assert source.candidate.batch_size < r.candidate.batch_size and source.number < r.number
                assert r.outcome.measurement is None and r.spawn_s == 0.0
    assert any(r.outcome.inferred_from is None and r.outcome.status == "oom" for r in recs)
    study = optuna.load_study(study_name="SmolLM2-135M-Instruct-cpu", storage=f"sqlite:///{out / 'study.db'}")
    ran = [t for t in study.trials if RECORD_ATTR in t.user_attrs]  # not the queued or never-run ones
    oom_trials = [t for t in ran if t.params["batch_size"] >= 2]
    assert oom_trials
    assert all(t.state == optuna.trial.TrialState.COMPLETE and t.constraints["oom"] > 0 for t in oom_trials)
    best = DeploymentConfig.model_validate(yaml.safe_load((out / "best.yaml").read_text()))
    assert best.settings.batch_size == 1


def test_hung_trial_times_out_and_study_continues(tmp_path: Path) -> None:
    space = write_space(tmp_path / "space.yaml", dtype=["fp32"], attn_implementation=["sdpa"])
    out = tmp_path / "out"
    env = cli_env(AUTOTUNE_FAULTS=json.dumps({"hang_on_trial": 1}))
    result = run_cli("tune", "--space", str(space), "--trials", "2", "--trial-timeout", "20", "--out", str(out),
                     "--device", "cpu", env=env)
    assert_ok(result)
    recs = {r.number: r for r in read_records(out)}
    assert recs[1].outcome.status == "timeout" and recs[1].state == "failed"


def test_budget_nobody_fits_is_reported_not_crashed(tmp_path: Path) -> None:
    space = write_space(tmp_path / "space.yaml", dtype=["fp32"], attn_implementation=["sdpa"])
    out = tmp_path / "out"
    result = run_cli("tune", "--space", str(space), "--trials", "2", "--memory-budget", "64MiB", "--out", str(out), "--device", "cpu")
    assert result.returncode == 1
    assert "no feasible config" in result.stdout
    recs = read_records(out)
    assert recs and all(r.state == "infeasible" and r.constraints["over_budget_gib"] > 0 for r in recs)
    assert not (out / "best.yaml").exists()


def test_unsupported_candidates_are_recorded_with_reason(tmp_path: Path) -> None:
    space = write_space(tmp_path / "space.yaml", dtype=["fp16", "fp32"], attn_implementation=["flash_attention_2", "sdpa"],
                        batch_size=[1])
    out = tmp_path / "out"
    result = run_cli("tune", "--space", str(space), "--trials", "4", "--out", str(out), "--device", "cpu")
    assert_ok(result)
    recs = [r for r in read_records(out) if r.state != "duplicate"]
    assert len(recs) == 4
    reasons = {(r.candidate.dtype, r.candidate.attn_implementation): (r.state, r.outcome.reason) for r in recs}
    assert reasons[("fp32", "sdpa")][0] == "measured"
    assert reasons[("fp16", "sdpa")] == ("unsupported", reasons[("fp16", "sdpa")][1]) and "fp16 on CPU" in reasons[("fp16", "sdpa")][1]
    assert "flash_attention_2" in reasons[("fp32", "flash_attention_2")][1]


def test_ctrl_c_saves_and_resume_completes(tmp_path: Path) -> None:
    space = write_space(tmp_path / "space.yaml", batch_size=[1, 2, 4])
    out = tmp_path / "out"
    proc = _start_study_and_wait(space, out, trials=5, min_records=1)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "re-run the same command to resume" in stderr
    saved = {r.number: r for r in read_records(out)}
    assert saved
    result = run_cli("tune", "--space", str(space), "--trials", "5", "--out", str(out), "--device", "cpu")
    assert_ok(result)
    recs = {r.number: r for r in read_records(out)}
    assert all(recs[n] == r for n, r in saved.items())
    assert len([r for r in recs.values() if r.state != "duplicate"]) == 5


def test_latency_objective_minimises_and_ranks_oom_last(tmp_path: Path) -> None:
    space = write_space(tmp_path / "space.yaml", dtype=["fp32"], attn_implementation=["sdpa"], batch_size=[1, 2])
    out = tmp_path / "out"
    env = cli_env(AUTOTUNE_FAULTS=json.dumps({"oom_at_batch_size": 2}))
    result = run_cli("tune", "--space", str(space), "--trials", "2", "--objective", "latency", "--out", str(out),
                     "--device", "cpu", env=env)
    assert_ok(result)
    study = optuna.load_study(study_name="SmolLM2-135M-Instruct-cpu", storage=f"sqlite:///{out / 'study.db'}")
    assert study.direction == optuna.study.StudyDirection.MINIMIZE
    ran = {t.params["batch_size"]: t for t in study.trials if RECORD_ATTR in t.user_attrs}
    assert ran[2].value == float("inf") and ran[2].constraints["oom"] > 0  # placeholder, never a winner
    best = DeploymentConfig.model_validate(yaml.safe_load((out / "best.yaml").read_text()))
    assert best.objective == "latency" and best.settings.batch_size == 1
    assert best.objective_value == pytest.approx(best.measured.request_latency_s.median)


def test_real_cpu_memory_exhaustion_under_budget_is_infeasible(tmp_path: Path) -> None:
    """--memory-budget on CPU caps the worker (RLIMIT_DATA): 64 sequences of 512 tokens need ~3 GiB
    in fp32, more than a 1.5 GiB budget, and the allocator's refusal becomes an OOM answer."""
    space = write_space(tmp_path / "space.yaml", dtype=["fp32"], attn_implementation=["sdpa"], batch_size=[1, 64],
                        max_length=[512], new_tokens=4)
    out = tmp_path / "out"
    # --no-memory-model: the point is the worker meeting the allocator's refusal, not the prediction of it
    result = run_cli("tune", "--space", str(space), "--trials", "2", "--memory-budget", "1.5GiB", "--no-memory-model", "--out",
                     str(out), "--device", "cpu")
    assert_ok(result)
    recs = {r.candidate.batch_size: r for r in read_records(out) if r.state != "duplicate"}
    assert recs[64].state == "infeasible" and recs[64].outcome.status == "oom", recs[64].outcome.reason
    assert "allocate memory" in recs[64].outcome.reason
    assert recs[1].state == "measured" and recs[1].outcome.measurement.peak_memory_gib < 1.5


def test_worker_that_cannot_start_fails_trials_not_the_study(tmp_path: Path) -> None:
    space = write_space(tmp_path / "space.yaml", dtype=["fp32"], attn_implementation=["sdpa"])
    out = tmp_path / "out"
    env = cli_env(AUTOTUNE_FAULTS=json.dumps({"exit_on_startup": True}))
    result = run_cli("tune", "--space", str(space), "--trials", "2", "--out", str(out), "--device", "cpu", env=env)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert "no feasible config" in result.stdout
    recs = read_records(out)
    assert len(recs) == 2 and all(r.state == "failed" and r.outcome.status == "crashed" for r in recs)
    assert "exited with code 3 while starting" in recs[0].outcome.reason


def test_each_load_serves_several_trials(tmp_path: Path) -> None:
    """After a reload the sampler is asked for follow-ups with the load-key fixed: every load but
    the last runs TRIALS_PER_LOAD trials, or every shape of that load that is left."""
    from autotune.study import TRIALS_PER_LOAD

    space = write_space(tmp_path / "space.yaml", dtype=["fp32"], attn_implementation=["sdpa", "eager"],
                        batch_size=[1, 2, 4], max_length=[16, 32], new_tokens=2, repeats=3)
    out = tmp_path / "out"
    assert_ok(run_cli("tune", "--space", str(space), "--trials", "12", "--out", str(out), "--device", "cpu"))
    recs = {r.number: r for r in read_records(out)}
    order = [t["number"] for t in json.loads((out / "runs.jsonl").read_text().splitlines()[-1])["trials"]]
    ran = [recs[n] for n in order if recs[n].state in ("measured", "infeasible", "low_quality")]
    assert len(ran) == 12  # the whole space, each candidate once
    runs: list[list] = []
    for r in ran:
        if r.outcome.reloaded:
            runs.append([])
        runs[-1].append(r)
    shapes_left = {key: 6 for key in {r.candidate.load_key for r in ran}}
    for i, run in enumerate(runs):
        key = run[0].candidate.load_key
        assert all(r.candidate.load_key == key for r in run)
        if i < len(runs) - 1:
            assert len(run) >= min(TRIALS_PER_LOAD, shapes_left[key]), [(r.number, r.candidate.label()) for r in run]
        shapes_left[key] -= len(run)
    assert len(runs) <= 12 // TRIALS_PER_LOAD + 2


def test_oom_contradicted_by_the_bisection_is_run_again_in_a_fresh_worker(tmp_path: Path) -> None:
    """Memory that earlier shapes leave in a worker (compiled graphs' pools on a GPU) can make a
    candidate run out although the bisection saw a larger batch fit: such an OOM is not an answer,
    the trial runs again in a fresh worker. Without that evidence an OOM stays an answer."""
    space = write_space(tmp_path / "space.yaml", dtype=["fp32"], attn_implementation=["sdpa"], batch_size=[1, 2, 4])
    faults = cli_env(AUTOTUNE_FAULTS=json.dumps({"oom_after_measurements": 1}))
    out = tmp_path / "out"
    result = run_cli("tune", "--space", str(space), "--trials", "3", "--memory-budget", "16GiB", "--out", str(out),
                     "--device", "cpu", "--confirm-top", "0", env=faults)
    assert_ok(result)
    recs = [r for r in read_records(out) if r.state != "duplicate"]
    assert {r.candidate.batch_size for r in recs} == {1, 2, 4}
    assert recs[0].outcome.boundary is not None and recs[0].outcome.boundary.largest_feasible == 4
    assert all(r.state == "measured" for r in recs), [(r.number, r.state, r.outcome.reason) for r in recs]
    retried = [r for r in recs if r.outcome.first_attempt]
    assert len(retried) == 2  # every measurement after a worker's first ran out, and was re-run fresh
    for r in retried:
        assert f"the bisection fitted batch {r.candidate.batch_size} × 32 tokens" in r.outcome.first_attempt
        assert "allocate" in r.outcome.first_attempt  # the allocator's own message: a real failed allocation
        assert r.outcome.reloaded and r.outcome.load_s > 0
    assert len(list((out / "workers").glob("worker-*.log"))) == 3

    # No bisection (no budget on CPU) and nothing larger measured: the OOM is the answer, not retried.
    out2 = tmp_path / "out2"
    result = run_cli("tune", "--space", str(write_space(tmp_path / "s2.yaml", dtype=["fp32"], attn_implementation=["sdpa"])),
                     "--trials", "2", "--out", str(out2), "--device", "cpu", "--confirm-top", "0", env=faults)
    assert_ok(result)
    recs = {r.candidate.batch_size: r for r in read_records(out2) if r.state != "duplicate"}
    assert recs[1].state == "measured" and recs[2].state == "infeasible" and not recs[2].outcome.first_attempt
    assert len(list((out2 / "workers").glob("worker-*.log"))) == 1


def test_an_error_after_other_candidates_is_run_again_in_a_fresh_worker(tmp_path: Path) -> None:
    """A run that fails in a worker that ran other candidates may have failed on state they left
    (H200: after a compiled OOM, every later compiled run in the process raised): it runs once
    more in a fresh worker, and the first answer is kept. An error in a fresh worker stays."""
    space = write_space(tmp_path / "space.yaml", dtype=["fp32"], attn_implementation=["sdpa"], batch_size=[1, 2, 3])
    faults = cli_env(AUTOTUNE_FAULTS=json.dumps({"error_after_measurements": 1}))
    out = tmp_path / "out"
    result = run_cli("tune", "--model", "tiny-qwen2", "--random-weights", "--space", str(space), "--trials", "3",
                     "--out", str(out), "--device", "cpu", "--confirm-top", "0", env=faults)
    assert_ok(result)
    recs = sorted((r for r in read_records(out) if r.state != "duplicate"), key=lambda r: r.number)
    assert [r.state for r in recs] == ["measured"] * 3, [(r.number, r.state, r.outcome.reason) for r in recs]
    retried = [r for r in recs if r.outcome.first_attempt]
    assert len(retried) == 2
    for r in retried:
        assert r.outcome.first_attempt.startswith("failed although the worker had run before")
        assert "planted by the error fault" in r.outcome.first_attempt and r.outcome.reloaded
    assert len(list((out / "workers").glob("worker-*.log"))) == 3


def test_a_candidate_that_failed_twice_is_not_run_again(tmp_path: Path) -> None:
    """The grid sampler proposes a failed point until it completes: without a limit one broken
    candidate filled a grid with failures (H200: 98 failed trials of 19 points)."""
    from autotune.spec import TuneSpec
    from autotune.study import open_study
    from autotune.study.results import _key
    from autotune.study.shortcuts import _finished_by_params
    from autotune.study.tell import tell

    space = write_space(tmp_path / "space.yaml", dtype=["fp32"], attn_implementation=["sdpa"], batch_size=[1, 2])
    faults = cli_env(AUTOTUNE_FAULTS=json.dumps({"error_at_batch_size": 2}))
    out = tmp_path / "out"
    result = run_cli("tune", "--model", "tiny-qwen2", "--random-weights", "--space", str(space), "--trials", "8",
                     "--sampler", "grid", "--out", str(out), "--device", "cpu", "--confirm-top", "0", env=faults)
    assert_ok(result)
    assert "all 2 candidates of the space are answered" in result.stdout
    recs = read_records(out)
    failed = [r for r in recs if r.state == "failed"]
    assert len(failed) == 2 and all(r.candidate.batch_size == 2 for r in failed)  # not 7: --trials 8 less batch 1
    assert all("planted by the error fault" in r.outcome.reason for r in failed)
    assert [r.state for r in recs if r.candidate.batch_size == 1] == ["measured"]

    # A later proposal of it is answered from its last failure, and Optuna sees that answer as
    # infeasible (the constraint), so no sampler takes it for a good result.
    done = _finished_by_params(recs)
    previous = done[_key(failed[-1].candidate)]
    assert previous.number == max(r.number for r in failed)
    ctx = open_study(TuneSpec(model="tiny-qwen2", random_weights=True, space=space, trials=8, out=out,
                              device="cpu", sampler="grid", confirm_top=0))
    trial = ctx.study.ask()
    record = tell(ctx, trial, previous.candidate, previous.outcome, spawn_s=0.0, total_s=0.0, duplicate_of=previous)
    assert record.state == "duplicate" and record.duplicate_of == previous.number and not record.feasible
    told = ctx.study.trials[trial.number]
    assert told.state == optuna.trial.TrialState.COMPLETE and told.constraints["unsupported"] > 0


def test_a_compiled_run_that_fails_leaves_the_next_trial_a_fresh_worker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """After a compiled candidate runs out of memory the worker is not reused (its compiled state
    may be broken); uncompiled loads keep their worker through an OOM. The study refuses compile
    on CPU, where transformers runs a static cache uncompiled: that refusal is lifted here so the
    worker runs the compiled candidates' static-cache path for real."""
    import autotune.study.loop as study_loop
    from autotune.spec import TuneSpec
    from autotune.study import open_study, records, run_study

    real_reason = study_loop.unsupported_reason  # looked up by the loop (the reference candidates run uncompiled)
    monkeypatch.setattr(study_loop, "unsupported_reason",
                        lambda cand, device: None if cand.compile else real_reason(cand, device))
    monkeypatch.setenv("AUTOTUNE_FAULTS", json.dumps({"oom_at_batch_size": 2}))
    logs = {}
    for compile in (True, False):
        space = write_space(tmp_path / f"space-{compile}.yaml", dtype=["fp32"], attn_implementation=["sdpa", "eager"],
                            compile=[compile], batch_size=[2])
        out = tmp_path / f"out-{compile}"
        ctx = open_study(TuneSpec(model="tiny-qwen2", random_weights=True, space=space, trials=2, out=out,
                                  device="cpu", confirm_top=0))
        run_study(ctx)
        recs = [r for r in records(ctx.study) if r.state != "duplicate"]
        assert [r.state for r in recs] == ["infeasible", "infeasible"], [(r.state, r.outcome.reason) for r in recs]
        assert all(r.outcome.inferred_from is None and r.candidate.compile is compile for r in recs)
        logs[compile] = len(list((out / "workers").glob("worker-*.log")))
    assert logs == {True: 2, False: 1}


def test_a_load_that_failed_answers_the_same_load_at_other_shapes_without_loading(tmp_path: Path) -> None:
    space = write_space(tmp_path / "space.yaml", dtype=["fp32"], attn_implementation=["sdpa", "eager"])  # batch 1, 2
    out = tmp_path / "out"
    env = cli_env(AUTOTUNE_FAULTS=json.dumps({"refuse_load_attn": "eager"}))
    result = run_cli("tune", "--model", "tiny-qwen2", "--random-weights", "--space", str(space), "--trials", "4",
                     "--out", str(out), "--device", "cpu", "--confirm-top", "0", env=env)
    assert_ok(result)
    eager = sorted((r for r in read_records(out) if r.candidate.attn_implementation == "eager" and r.state != "duplicate"),
                   key=lambda r: r.number)
    assert [r.state for r in eager] == ["unsupported", "unsupported"]
    first, second = eager
    assert "refused by the refuse_load_attn fault" in first.outcome.reason and first.outcome.inferred_from is None
    assert second.outcome.inferred_from == first.number and f"trial #{first.number} could not load" in second.outcome.reason
    assert second.outcome.load_s == 0.0 and second.spawn_s == 0.0  # answered without loading anything
