"""Several workers, one study: real PostgreSQL (tests/pg_server.py) and journal-file storages, real
worker processes, a real SIGKILL. Mirrors autotune/storage.py, autotune/scaleout.py and the
shared-storage parts of the study (autotune/study/claims.py, setup.py, loop.py)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from autotune.spec import Candidate, TuneSpec
from autotune.storage import OWNER_ATTR, describe, open_storage, reap_dead_owners
from autotune.study import CLAIM_ATTR, RECORD_ATTR, open_study
from autotune.study.claims import _rival
from autotune.study.results import _key
from autotune.spec import TrialRecord
from tests.conftest import assert_ok, cli_env, run_cli, write_space


def start_cli(log: Path, *args: str, env: dict | None = None) -> subprocess.Popen:
    with open(log, "w") as f:
        return subprocess.Popen([sys.executable, "-m", "autotune.cli", *args], stdout=f, stderr=subprocess.STDOUT,
                                env=env or cli_env())


def wait_for(condition, timeout_s: float, what: str, poll_s: float = 0.5):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(poll_s)
    raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}")


def load(url: str, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=open_storage(url))


def study_exists(url: str, name: str) -> bool:
    try:
        return name in [s.study_name for s in optuna.get_all_study_summaries(open_storage(url), include_best_trial=False)]
    except Exception:
        return False


def recorded(study: optuna.Study) -> dict[int, TrialRecord]:
    return {t.number: TrialRecord.model_validate(t.user_attrs[RECORD_ATTR]) for t in study.get_trials(deepcopy=False)
            if RECORD_ATTR in t.user_attrs}


def assert_no_candidate_measured_twice(recs: dict[int, TrialRecord]) -> None:
    """Every candidate run by a worker is run once; repeats are answered from the record ('duplicate')."""
    ran = [_key(r.candidate) for r in recs.values() if r.state != "duplicate"]
    assert len(ran) == len(set(ran)), [r.candidate.label() for r in recs.values() if r.state != "duplicate"]


# ------------------------------------------------------------------------------ PostgreSQL


@pytest.mark.slow
def test_two_workers_complete_one_study_without_duplicates(pg_database: str, tmp_path: Path) -> None:
    space = write_space(tmp_path / "space.yaml")  # 8 candidates: the study measures all of them
    env = cli_env(AUTOTUNE_STORAGE=pg_database)
    tune = start_cli(tmp_path / "tune.log", "tune", "--space", str(space), "--trials", "8", "--device", "cpu",
                     "--storage", pg_database, "--study", "shared", "--out", str(tmp_path / "a"), "--confirm-top", "0", env=env)
    wait_for(lambda: study_exists(pg_database, "shared"), 120, "the study to be created")
    worker = start_cli(tmp_path / "worker.log", "worker", "--study", "shared", "--device", "cpu", "--out",
                       str(tmp_path / "b"), env=env)  # the URL from $AUTOTUNE_STORAGE
    assert tune.wait(timeout=600) == 0, (tmp_path / "tune.log").read_text()[-3000:]
    assert worker.wait(timeout=600) == 0, (tmp_path / "worker.log").read_text()[-3000:]

    study = load(pg_database, "shared")
    recs = recorded(study)
    assert_no_candidate_measured_twice(recs)
    measured = [r for r in recs.values() if r.state != "duplicate"]
    assert len({_key(r.candidate) for r in measured}) == 8  # the whole space, between the two
    owners = {json.dumps(t.user_attrs[OWNER_ATTR], sort_keys=True) for t in study.get_trials(deepcopy=False)
              if RECORD_ATTR in t.user_attrs and t.user_attrs[RECORD_ATTR]["state"] != "duplicate"}
    assert len(owners) == 2, "both workers measured trials"
    # One Pareto front, one best.yaml: written from the storage by `show` on any machine.
    shown = run_cli("show", str(tmp_path / "c"), "--storage", pg_database, "--study", "shared")
    assert_ok(shown)
    best = yaml.safe_load((tmp_path / "c" / "best.yaml").read_text())
    assert best["storage"].startswith("postgresql://") and "autotune-test" not in best["storage"]  # password redacted
    lines = (tmp_path / "c" / "trials.jsonl").read_text().splitlines()
    assert len(lines) == len(recs)
    assert best["trial_number"] in recs and recs[best["trial_number"]].state == "measured"


@pytest.mark.slow
def test_killed_worker_trial_is_retried_and_nothing_is_lost(pg_database: str, tmp_path: Path) -> None:
    space = write_space(tmp_path / "space.yaml")
    env = cli_env(AUTOTUNE_STORAGE=pg_database)
    # The first worker's second measurement hangs, so the kill below surely lands mid-trial (polling
    # for a trial in flight raced with trials finishing on a loaded CI machine); the joining worker
    # runs without the fault.
    tune = start_cli(tmp_path / "tune.log", "tune", "--space", str(space), "--trials", "5", "--device", "cpu",
                     "--storage", pg_database, "--study", "killed", "--out", str(tmp_path / "a"), "--confirm-top", "0",
                     "--heartbeat", "1", env={**env, "AUTOTUNE_FAULTS": json.dumps({"hang_on_measurement": 2})})

    def claimed_unrecorded(study: optuna.Study) -> list[int]:
        """Trials a worker has claimed and is measuring: RUNNING, claimed, no record yet (a record is
        written just before the trial is told, so a RUNNING trial may already hold one)."""
        recs = recorded(study)
        return [t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
                if t.user_attrs.get(CLAIM_ATTR) and t.number not in recs]

    first_seen: dict[int, float] = {}

    def measuring_after_one_record():
        """The hung measurement: a trial in flight after the first record, still in flight 2 s
        later (a duplicate or an unsupported candidate is also claimed, but answered in moments)."""
        if not study_exists(pg_database, "killed"):
            return None
        study = load(pg_database, "killed")
        in_flight = claimed_unrecorded(study) if recorded(study) else []
        now = time.monotonic()
        for number in list(first_seen):
            if number not in in_flight:
                del first_seen[number]
        for number in in_flight:
            first_seen.setdefault(number, now)
        return study if any(now - since >= 2.0 for since in first_seen.values()) else None

    wait_for(measuring_after_one_record, 300, "a trial in flight after the first record", poll_s=0.2)
    tune.send_signal(signal.SIGKILL)
    tune.wait(timeout=30)
    killed = load(pg_database, "killed")
    before = recorded(killed)
    lost = claimed_unrecorded(killed)
    assert len(lost) == 1, lost  # the hung measurement
    in_flight = lost[0]

    # A worker joins later (another host, say): it finds the dead worker's trial stale after the grace
    # period (3 heartbeats), fails it, and measures the queued retry.
    result = run_cli("worker", "--study", "killed", "--device", "cpu", "--out", str(tmp_path / "b"), env=env, timeout=600)
    assert_ok(result)
    study = load(pg_database, "killed")
    trials = study.get_trials(deepcopy=False)
    assert trials[in_flight].state == TrialState.FAIL
    retries = [t for t in trials if t.system_attrs.get("failed_trial") == in_flight]
    assert retries and any(RECORD_ATTR in t.user_attrs for t in retries), "the killed trial was measured again"
    after = recorded(study)
    for number, rec in before.items():  # nothing measured before the kill is lost or changed
        assert after[number] == rec
    assert sum(1 for r in after.values() if r.state != "duplicate") >= 5
    assert_no_candidate_measured_twice(after)


def test_bad_database_url_is_one_line_error(postgres, pg_database: str, tmp_path: Path) -> None:
    space = write_space(tmp_path / "space.yaml")
    cases = {
        postgres.url(pg_database.rsplit("/", 1)[1], password="wrong"): "password authentication failed",
        postgres.url("no_such_db"): "does not exist",
    }
    for url, expected in cases.items():
        for args in (("worker", "--storage", url, "--study", "x", "--out", str(tmp_path / "w")),
                     ("tune", "--space", str(space), "--device", "cpu", "--storage", url, "--out", str(tmp_path / "t"))):
            result = run_cli(*args)
            assert result.returncode == 2, result.stderr
            lines = result.stderr.strip().splitlines()
            assert len(lines) == 1 and expected in lines[0] and "error:" in lines[0], result.stderr
            assert "wrong" not in lines[0]  # the password never reaches the terminal
    missing = run_cli("worker", "--storage", pg_database, "--study", "nobody-made-this", "--out", str(tmp_path / "w"))
    assert missing.returncode == 2 and "does not exist" in missing.stderr and "autotune tune" in missing.stderr


# ------------------------------------------------------------------------------ journal file, one host


def test_gpus_refuses_sqlite_and_needs_gpus(tmp_path: Path) -> None:
    space = write_space(tmp_path / "space.yaml")
    result = run_cli("tune", "--space", str(space), "--gpus", "0,1", "--out", str(tmp_path / "o"))
    assert result.returncode == 2 and "SQLite" in result.stderr and "journal:///" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    result = run_cli("tune", "--space", str(space), "--gpus", "0,1", "--storage", f"journal:///{tmp_path}/s.journal",
                     "--out", str(tmp_path / "o"))
    assert result.returncode == 2 and "needs CUDA GPUs" in result.stderr
    result = run_cli("tune", "--space", str(space), "--gpus", "0,x", "--out", str(tmp_path / "o"))
    assert result.returncode == 2 and "--gpus" in result.stderr
    result = run_cli("worker", "--storage", f"sqlite:///{tmp_path}/s.db", "--study", "s", "--out", str(tmp_path / "o"))
    assert result.returncode == 2 and "SQLite" in result.stderr


def _spec(tmp_path: Path, url: str) -> TuneSpec:
    return TuneSpec(space=write_space(tmp_path / "space.yaml"), device="cpu", storage=url, study="s", out=tmp_path / "out")


def test_dead_owner_trial_is_failed_and_queued_again(tmp_path: Path) -> None:
    url = f"journal:///{tmp_path}/study.journal"
    ctx = open_study(_spec(tmp_path, url))
    trial = ctx.study.ask()
    trial.suggest_categorical("dtype", ["fp32", "bf16"])
    gone = subprocess.Popen(["true"])
    gone.wait()
    trial.set_user_attr(OWNER_ATTR, {"host": socket.gethostname(), "pid": gone.pid})
    alive = ctx.study.ask()
    alive.set_user_attr(OWNER_ATTR, {"host": socket.gethostname(), "pid": os.getpid()})
    elsewhere = ctx.study.ask()
    elsewhere.set_user_attr(OWNER_ATTR, {"host": "another-host", "pid": gone.pid})  # not ours to judge

    assert reap_dead_owners(ctx.study) == [trial.number]
    trials = ctx.study.get_trials(deepcopy=False)
    assert trials[trial.number].state == TrialState.FAIL
    assert trials[alive.number].state == trials[elsewhere.number].state == TrialState.RUNNING
    waiting = [t for t in trials if t.state == TrialState.WAITING and t.system_attrs.get("failed_trial") == trial.number]
    assert len(waiting) == 1 and waiting[0].params == trials[trial.number].params


def test_claims_let_only_one_worker_measure_a_candidate(tmp_path: Path) -> None:
    url = f"journal:///{tmp_path}/study.journal"
    storage = open_storage(url)
    study = optuna.create_study(storage=storage, study_name="claims")
    ctx = SimpleNamespace(study=study)
    cand = Candidate(dtype="fp32", batch_size=2, max_length=32, new_tokens=4)
    other = cand.model_copy(update={"batch_size": 1})
    first, second, third = study.ask(), study.ask(), study.ask()
    assert _rival(ctx, first, cand) is None  # claimed first: measures
    assert _rival(ctx, second, cand) == first.number  # sees the claim: steps back
    assert _rival(ctx, third, other) is None  # another candidate is free
    study.tell(first, 1.0)
    study.tell(second, state=TrialState.FAIL)  # a worker that steps back fails its trial unmeasured
    fourth = study.ask()
    assert _rival(ctx, fourth, cand) is None  # a finished trial is answered from its record instead


def test_joining_from_another_gpu_model_is_refused(tmp_path: Path) -> None:
    url = f"journal:///{tmp_path}/study.journal"
    ctx = open_study(_spec(tmp_path, url))
    ctx.study.set_user_attr("device_name", "NVIDIA H100 80GB HBM3")  # as if created on an H100
    result = run_cli("worker", "--storage", url, "--study", "s", "--device", "cpu", "--out", str(tmp_path / "w"))
    assert result.returncode == 2
    assert "different GPU model (NVIDIA H100 80GB HBM3" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_storage_kinds() -> None:
    assert not describe("sqlite:///x.db").shared
    assert describe("journal:///x.journal").shared and describe("journal:///x.journal").heartbeat_s is None
    assert describe("postgresql://u:p@h/db").heartbeat_s


@pytest.mark.slow
def test_multi_gpu_candidate_without_gpus_is_unsupported_with_the_fix(tmp_path: Path) -> None:
    space = write_space(tmp_path / "space.yaml", dtype=["fp32"], attn_implementation=["sdpa"], batch_size=[1],
                        num_gpus=[1, 2])
    result = run_cli("tune", "--space", str(space), "--trials", "2", "--device", "cpu", "--out", str(tmp_path / "o"),
                     "--confirm-top", "0")
    assert_ok(result)
    recs = [json.loads(line) for line in (tmp_path / "o" / "trials.jsonl").read_text().splitlines()]
    spread = [r for r in recs if r["candidate"]["num_gpus"] == 2]
    assert spread and all(r["state"] == "unsupported" and "--gpus" in r["outcome"]["reason"] for r in spread)
    assert any(r["candidate"]["num_gpus"] == 1 and r["state"] == "measured" for r in recs)


@pytest.mark.gpu
def test_gpus_two_workers_and_a_spread_candidate(tmp_path: Path) -> None:
    import torch

    if torch.cuda.device_count() < 2:
        pytest.skip("needs 2 GPUs")
    space = write_space(tmp_path / "space.yaml", dtype=["bf16"], attn_implementation=["sdpa"], batch_size=[1, 4],
                        max_length=[64, 128], num_gpus=[1, 2])
    url = f"journal:///{tmp_path}/study.journal"
    result = run_cli("tune", "--model", "tiny-qwen2", "--random-weights", "--space", str(space), "--trials", "8",
                     "--gpus", "0,1", "--storage", url, "--study", "g", "--out", str(tmp_path / "o"), timeout=900)
    assert_ok(result)
    study = load(url, "g")
    recs = recorded(study)
    assert_no_candidate_measured_twice(recs)
    assert any(r.candidate.num_gpus == 2 and r.state == "measured" for r in recs.values()), result.stdout
    pids = {t.user_attrs[OWNER_ATTR]["pid"] for t in study.get_trials(deepcopy=False)
            if RECORD_ATTR in t.user_attrs and t.user_attrs[RECORD_ATTR]["state"] != "duplicate"}
    assert len(pids) == 2, "both GPUs' workers measured"
