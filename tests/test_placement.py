"""GpuPlacement: GPU choice and turn-taking between worker processes, with real processes and real
flock on a temporary lock directory, fake GPU indices 0..3 (no GPU, no torch)."""

from __future__ import annotations

import fcntl
import json
import multiprocessing
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from autotune.worker.placement import GpuPlacement

POOL = [0, 1, 2, 3]
POLL_S = 0.01
_CTX = multiprocessing.get_context("spawn")


# -- child processes (module level: spawn imports this module in the child) ------------------------


def _log(path: str, **record) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()


def _worker_rounds(lock_dir: str, owner: str, home: int, rounds: int, trial_s: float, log: str, start) -> None:
    """A worker following the caller's rule: keep locks between trials, change sets only after
    release_all(), let go after a trial when someone else waits. Logs every interval of holding."""
    p = GpuPlacement(home, POOL, Path(lock_dir), owner=owner)
    since = None
    start.wait(15)  # all workers at once: contention from the first round
    for r in range(rounds):
        needed = p.gpus_for(1 + (r + home) % 3)
        if set(needed) != p.held:
            if p.held:
                _log(log, owner=owner, gpus=sorted(p.held), start=since, end=time.time())
                p.release_all()
            p.acquire(needed, poll_s=POLL_S)
            since = time.time()
        time.sleep(trial_s)  # the trial
        if p.wanted_by_others():
            _log(log, owner=owner, gpus=sorted(p.held), start=since, end=time.time())
            p.release_all()
    if p.held:
        _log(log, owner=owner, gpus=sorted(p.held), start=since, end=time.time())
    p.release_all()
    _log(log, owner=owner, done=rounds)


def _idle_holder(lock_dir: str, owner: str, gpu: int, ready, stop, log: str) -> None:
    """Holds one GPU across trials; releases when another worker wants it, then re-acquires it."""
    p = GpuPlacement(gpu, POOL, Path(lock_dir), owner=owner)
    p.acquire([gpu], poll_s=POLL_S)
    ready.set()
    while not stop.is_set():
        time.sleep(0.02)  # a trial
        if p.wanted_by_others():
            _log(log, event="released", t=time.time())
            p.release_all()
            p.acquire([gpu], poll_s=POLL_S)
            _log(log, event="reacquired", t=time.time())
    p.release_all()


def _greedy(lock_dir: str, owner: str, gpu: int, ready, stop, log: str) -> None:
    """The worst re-grabber: releases after every trial and asks again at once. Logs when it got
    the GPU each time."""
    p = GpuPlacement(gpu, POOL, Path(lock_dir), owner=owner)
    got = []
    while not stop.is_set():
        p.acquire([gpu], poll_s=POLL_S)
        got.append(time.time())
        time.sleep(0.005)
        p.release_all()
        if len(got) == 5:
            ready.set()
    _log(log, got=got)


def _hold_forever(lock_dir: str, owner: str, gpus: list[int], ready) -> None:
    p = GpuPlacement(gpus[0], POOL, Path(lock_dir), owner=owner)
    p.acquire(gpus, poll_s=POLL_S)
    ready.set()
    time.sleep(600)


def _wait_for(lock_dir: str, owner: str, gpus: list[int]) -> None:
    p = GpuPlacement(gpus[0], POOL, Path(lock_dir), owner=owner)
    p.acquire(gpus, poll_s=POLL_S)
    time.sleep(600)


# -- helpers ---------------------------------------------------------------------------------------


@pytest.fixture
def spawn():
    started = []

    def start(target, *args):
        process = _CTX.Process(target=target, args=args, daemon=True)
        process.start()
        started.append(process)
        return process

    yield start
    for process in started:
        if process.is_alive():
            process.kill()
        process.join(timeout=5)


def _records(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _until(predicate, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


def _wants(lock_dir: Path) -> list[str]:
    return sorted(p.name for p in lock_dir.iterdir() if ".want." in p.name)


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


# -- (1) which GPUs ----------------------------------------------------------------------------------


def test_gpus_for_is_home_plus_next_in_cyclic_order(tmp_path):
    p = GpuPlacement(2, POOL, tmp_path)
    assert p.gpus_for(1) == [2]
    assert p.gpus_for(2) == [2, 3]
    assert p.gpus_for(3) == [0, 2, 3]
    assert p.gpus_for(4) == [0, 1, 2, 3]
    assert p.gpus_for(5) is None
    q = GpuPlacement(5, [5, 1, 3], tmp_path)  # unsorted, sparse pool
    assert q.gpus_for(2) == [1, 5]
    assert q.gpus_for(3) == [1, 3, 5]
    assert q.gpus_for(4) is None
    with pytest.raises(ValueError):
        p.gpus_for(0)
    with pytest.raises(ValueError):
        GpuPlacement(4, POOL, tmp_path)
    assert p.owner == f"{p.host}-{os.getpid()}"


# -- (2) mutual exclusion, progress, turn-taking -------------------------------------------------------


def test_overlapping_workers_never_share_a_gpu_and_all_finish(tmp_path, spawn):
    lock_dir, log = tmp_path / "locks", tmp_path / "log.jsonl"
    rounds = 12
    start = _CTX.Barrier(3)
    workers = [spawn(_worker_rounds, str(lock_dir), f"w{home}", home, rounds, 0.01, str(log), start) for home in (0, 1, 2)]
    for w in workers:
        w.join(timeout=25)
    assert all(w.exitcode == 0 for w in workers), [w.exitcode for w in workers]
    records = _records(log)
    assert sorted(r["owner"] for r in records if "done" in r) == ["w0", "w1", "w2"]
    holds = [r for r in records if "gpus" in r]
    assert len({r["owner"] for r in holds}) == 3
    for i, a in enumerate(holds):
        for b in holds[i + 1:]:
            if a["owner"] != b["owner"] and set(a["gpus"]) & set(b["gpus"]):
                assert a["end"] <= b["start"] or b["end"] <= a["start"], (a, b)
    assert _wants(lock_dir) == []


def test_idle_holder_lets_a_multi_gpu_candidate_in_and_gets_its_gpu_back(tmp_path, spawn):
    lock_dir, log = tmp_path / "locks", tmp_path / "holder.jsonl"
    ready, stop = _CTX.Event(), _CTX.Event()
    spawn(_idle_holder, str(lock_dir), "holder", 1, ready, stop, str(log))
    assert ready.wait(15)
    p = GpuPlacement(0, POOL, lock_dir, owner="needs-both")
    messages = []
    p.acquire(p.gpus_for(2), on_wait=messages.append, poll_s=POLL_S, timeout_s=10)
    got = time.time()
    assert p.held == {0, 1}
    assert "waiting for GPU 1 (held by holder)" in messages
    assert len(messages) == len(set(messages))  # once per reason, not once per poll
    time.sleep(0.3)  # our trial: the holder waits behind us
    assert [r["event"] for r in _records(log)] == ["released"]
    assert _records(log)[0]["t"] <= got
    released = time.time()
    p.release_all()
    assert _until(lambda: len(_records(log)) == 2)
    assert _records(log)[1]["event"] == "reacquired" and _records(log)[1]["t"] >= released
    stop.set()


def test_a_waiting_worker_is_not_starved_by_a_regrabbing_holder(tmp_path, spawn):
    lock_dir, log = tmp_path / "locks", tmp_path / "greedy.jsonl"
    ready, stop = _CTX.Event(), _CTX.Event()
    greedy = spawn(_greedy, str(lock_dir), "greedy", 1, ready, stop, str(log))
    assert ready.wait(15)
    p = GpuPlacement(1, POOL, lock_dir, owner="patient")
    asked = time.time()
    p.acquire([1], poll_s=POLL_S, timeout_s=5)
    got = time.time()
    time.sleep(0.1)
    p.release_all()
    time.sleep(0.2)  # the greedy worker goes on once we are done
    stop.set()
    greedy.join(timeout=10)
    assert greedy.exitcode == 0
    greedy_got = _records(log)[0]["got"]
    # flock alone is not fair: the re-grab would win most rounds against a poller. Oldest first,
    # the greedy worker gets the GPU at most once more (a request it made before ours) and then
    # waits for us.
    assert sum(asked <= t <= got for t in greedy_got) <= 1
    assert sum(t > got for t in greedy_got) >= 5


def test_two_workers_needing_the_same_pair_take_turns(tmp_path, spawn):
    lock_dir = tmp_path / "locks"
    ready = _CTX.Event()
    spawn(_hold_forever, str(lock_dir), "first", [0, 1], ready)
    assert ready.wait(15)
    waiter = spawn(_wait_for, str(lock_dir), "second", [1, 0])
    assert _until(lambda: _wants(lock_dir) == ["gpu0.want.second", "gpu1.want.second"])
    # a third worker asking later goes behind the second even once the pair is free
    p = GpuPlacement(0, POOL, lock_dir, owner="third")
    messages = []
    with pytest.raises(TimeoutError):
        p.acquire([0, 1], on_wait=messages.append, poll_s=POLL_S, timeout_s=0.2)
    assert messages == ["waiting for GPU 0 (an earlier request by second goes first)"]
    assert p.held == set() and "gpu0.want.third" not in _wants(lock_dir)
    waiter.kill()


def test_a_waiting_worker_holds_no_lock(tmp_path, spawn):
    """Waiting while holding part of a set could deadlock with the oldest-first rule (A holds 0 and
    yields 1 to an older request of B, B waits for 0): a waiter holds all of its set or nothing."""
    lock_dir = tmp_path / "locks"
    ready = _CTX.Event()
    spawn(_hold_forever, str(lock_dir), "busy", [1], ready)
    assert ready.wait(15)
    spawn(_wait_for, str(lock_dir), "waiter", [0, 1])
    assert _until(lambda: _wants(lock_dir) == ["gpu0.want.waiter", "gpu1.want.waiter"])
    free = 0
    for _ in range(20):
        fd = os.open(lock_dir / "gpu0.lock", os.O_RDWR | os.O_CREAT)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            free += 1
        except BlockingIOError:
            pass  # the waiter's one-pass try holds GPU 0 for microseconds before it finds GPU 1 busy
        finally:
            os.close(fd)
        time.sleep(POLL_S)
    assert free >= 15  # not kept between tries


# -- (3) dead workers' requests ---------------------------------------------------------------------


def _write_unlocked_want(lock_dir: Path, gpu: int, owner: str, pid: int, stamp: float = 0.0) -> Path:
    path = lock_dir / f"gpu{gpu}.want.{owner}"
    path.write_text(json.dumps({"owner": owner, "host": os.uname().nodename, "pid": pid, "stamp": stamp}))
    return path


def test_a_dead_workers_request_is_ignored_and_cleaned(tmp_path):
    p = GpuPlacement(1, POOL, tmp_path, owner="me")
    ghost = _write_unlocked_want(tmp_path, 1, "ghost", _dead_pid())  # older than any request of ours
    start = time.monotonic()
    p.acquire([1], poll_s=POLL_S, timeout_s=2)
    assert time.monotonic() - start < 0.5
    assert not ghost.exists()
    # a holder is not asked to let go for it either; an unlocked file of a live (reused) pid is stale too
    for owner, pid in (("ghost", _dead_pid()), ("reused-pid", os.getpid())):
        ghost = _write_unlocked_want(tmp_path, 1, owner, pid)
        assert p.wanted_by_others() == []
        assert not ghost.exists()
    p.release_all()


def test_a_sigkilled_waiters_request_goes_with_it(tmp_path, spawn):
    p = GpuPlacement(1, POOL, tmp_path, owner="holder")
    p.acquire([1])
    waiter = spawn(_wait_for, str(tmp_path), "waiter", [1])
    assert _until(lambda: p.wanted_by_others() == [1])
    waiter.kill()
    waiter.join(timeout=5)
    assert p.wanted_by_others() == []
    assert _wants(tmp_path) == []
    p.release_all()


def test_equal_stamps_are_ordered_by_owner(tmp_path):
    a = GpuPlacement(1, POOL, tmp_path, owner="a")
    b = GpuPlacement(1, POOL, tmp_path, owner="b")
    a._write_want(1, 100.0)
    b._write_want(1, 100.0)
    assert b._attempt([1], (100.0, "b")) == "waiting for GPU 1 (an earlier request by a goes first)"
    assert a._attempt([1], (100.0, "a")) is None
    a.release_all()
    b.release_all()
    assert _wants(tmp_path) == []


# -- (4) the set already held ------------------------------------------------------------------------


def test_acquire_of_the_held_set_returns_at_once_and_other_sets_need_release(tmp_path, spawn):
    p = GpuPlacement(0, POOL, tmp_path, owner="me")
    p.acquire([0, 1])
    assert p.held == {0, 1}
    spawn(_wait_for, str(tmp_path), "other", [1])
    assert _until(lambda: p.wanted_by_others() == [1])
    start = time.monotonic()
    p.acquire([1, 0])  # even with someone waiting: the caller lets go after the trial
    assert time.monotonic() - start < 0.05
    with pytest.raises(RuntimeError, match="release_all"):
        p.acquire([0])
    assert p.held == {0, 1}
    with pytest.raises(ValueError):
        GpuPlacement(0, [0, 1], tmp_path / "x").acquire([0, 2])
    p.release_all()
    assert p.held == set()
    with GpuPlacement(2, POOL, tmp_path, owner="ctx") as q:
        q.acquire([2, 3])
        assert q.held == {2, 3}
    assert q.held == set()


# -- (5) a SIGKILLed holder ---------------------------------------------------------------------------


def test_a_sigkilled_holders_gpus_become_available(tmp_path, spawn):
    ready = _CTX.Event()
    holder = spawn(_hold_forever, str(tmp_path), "doomed", [0, 1], ready)
    assert ready.wait(15)
    p = GpuPlacement(1, POOL, tmp_path, owner="next")
    messages = []
    with pytest.raises(TimeoutError, match="held by doomed"):
        p.acquire([1, 2], on_wait=messages.append, poll_s=POLL_S, timeout_s=0.2)
    assert messages == ["waiting for GPU 1 (held by doomed)"]
    assert p.held == set() and _wants(tmp_path) == []
    holder.kill()  # SIGKILL: no cleanup runs; the kernel drops the flocks
    holder.join(timeout=5)
    p.acquire([1, 2], poll_s=POLL_S, timeout_s=5)
    assert p.held == {1, 2}
    p.release_all()
