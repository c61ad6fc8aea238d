"""GPU placement: which GPUs a candidate uses, and turn-taking on GPUs between workers of one host.

`autotune tune --gpus 0,1,2,3` runs one worker process per GPU (its "home"), all sharing one study.
A candidate spread over N GPUs needs its home plus N-1 GPUs that other workers may be using. This
module decides which GPUs (`GpuPlacement.gpus_for`) and makes workers take turns on them.

Protocol, all in one lock directory that every worker of the host shares (it must be local to the
host: GPU indices mean nothing elsewhere):

* `gpu{i}.lock`: held with `flock(LOCK_EX)` by the worker whose child occupies GPU i. The kernel
  drops it when the holder dies, SIGKILL included. The holder writes its owner name in it (only
  for messages: "held by ...").
* `gpu{i}.want.{owner}`: a waiting worker's request, JSON with owner, host, pid and the time the
  request was made. Its writer holds `flock(LOCK_EX)` on it for as long as the request stands, so
  a request is live only while that lock is held (and, on this host, its pid is alive); a dead
  worker's request is ignored and deleted by whoever reads it. The lock, not the pid, is what
  decides: a pid can be reused, a lock is dropped with its holder.

The caller's rule (the scheduler, not this module, follows it):

1. A worker holds the locks of exactly the GPUs its child process occupies (a loaded model's
   memory), trial or not: locks persist between trials while the model stays loaded.
2. To run a trial on `gpus`: if `set(gpus) != held`, first close the child (free its GPU memory),
   call `release_all()`, then `acquire(gpus)`; `acquire` of the set already held returns at once.
3. After each trial, call `wanted_by_others()`; if it is non-empty, close the child and call
   `release_all()` (the next trial re-acquires, behind the request that was waiting).
4. When the worker is done (study over, error, shutdown), close the child and `release_all()`.

Why it neither deadlocks nor starves:

* A waiting worker holds no lock while it waits: `acquire` takes all the requested locks in one
  non-blocking pass (ascending order) or none, and retries every `poll_s`. Only workers running or
  between trials hold locks, and rule 3 makes them let go after at most one trial once someone
  waits. So no cycle of waiting is possible (holding some locks while waiting for others, with
  the yield rule below, could deadlock: A holds 0 and yields 1 to an older request of B, B waits
  for 0).
* Requests are served oldest first: a waiting worker does not take a free GPU that an older live
  request also wants (ties broken by owner name). A worker that releases and at once re-acquires
  makes a new, younger request, so it goes behind the one waiting (flock alone is not fair: a
  re-grabbing holder would win every time against a poller). The oldest request is blocked only by
  holders, each for at most one trial, and every new request is younger: each request is served.
  The price is no backfilling: a free GPU can stay idle while the oldest request waits for its
  other GPUs.

Pure stdlib (no torch): testable with fake GPU indices on a CPU machine. Every file descriptor is
opened close-on-exec, so a spawned child does not inherit (and keep) a lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

_WANT_NAME = re.compile(r"^gpu(\d+)\.want\.(.+)$")


@dataclass(frozen=True)
class _Want:
    gpu: int
    owner: str
    stamp: float

    @property
    def key(self) -> tuple[float, str]:
        return (self.stamp, self.owner)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: it exists, under another user
        return True
    return True


def _same_file(fd: int, path: Path) -> bool:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    own = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (own.st_dev, own.st_ino)


def _unlock_close(fd: int) -> None:
    with contextlib.suppress(OSError):
        fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)


class GpuPlacement:
    """One worker's view of the host's GPUs: its home GPU, the pool, and the locks it holds.

    `owner` must be unique among the workers sharing `lock_dir` (default: "{hostname}-{pid}", so
    one GpuPlacement per process). Not thread-safe: one thread of a worker uses it.
    """

    def __init__(self, home: int, pool: Iterable[int], lock_dir: Path | str, owner: str | None = None) -> None:
        self.pool: tuple[int, ...] = tuple(sorted(set(int(g) for g in pool)))
        if home not in self.pool:
            raise ValueError(f"home GPU {home} is not in the pool {list(self.pool)}")
        self.home = int(home)
        self.lock_dir = Path(lock_dir)
        self.lock_dir.mkdir(parents=True, exist_ok=True)
        self.host = socket.gethostname()
        self.owner = owner if owner is not None else f"{self.host}-{os.getpid()}"
        if not self.owner or any(c in self.owner for c in "/\0\n") or self.owner.startswith("."):
            raise ValueError(f"owner {self.owner!r} cannot be part of a file name")
        self._lock_fds: dict[int, int] = {}  # gpu -> fd holding gpu{i}.lock
        self._want_fds: dict[int, int] = {}  # gpu -> fd holding our gpu{i}.want.{owner}

    # -- which GPUs -------------------------------------------------------------------------------

    def gpus_for(self, num_gpus: int) -> list[int] | None:
        """Home plus the next num_gpus-1 GPUs of the pool in cyclic order after home, sorted; None
        when the pool has fewer than num_gpus GPUs."""
        if num_gpus < 1:
            raise ValueError(f"num_gpus must be at least 1, got {num_gpus}")
        if num_gpus > len(self.pool):
            return None
        start = self.pool.index(self.home)
        return sorted(self.pool[(start + k) % len(self.pool)] for k in range(num_gpus))

    # -- locks ------------------------------------------------------------------------------------

    @property
    def held(self) -> frozenset[int]:
        """GPUs whose locks this worker holds."""
        return frozenset(self._lock_fds)

    def acquire(self, gpus: Iterable[int], on_wait: Callable[[str], None] | None = None, poll_s: float = 0.05,
                timeout_s: float | None = None) -> None:
        """Hold the locks of exactly `gpus`, waiting for other workers as long as needed.

        Returns at once if `set(gpus) == held`. Otherwise `held` must be empty: the caller has
        already closed its child (freed the GPUs' memory) and called `release_all()`; holding a
        different set raises RuntimeError (holding locks while waiting could deadlock).

        While waiting, `on_wait(message)` is called once for each distinct reason, e.g. "waiting for
        GPU 1 (held by host-123)" or "waiting for GPU 1 (an earlier request by host-456 goes
        first)". With `timeout_s`, raises TimeoutError after that long (holding nothing). On any
        exception the request is withdrawn and nothing is held.
        """
        wanted = frozenset(int(g) for g in gpus)
        if wanted == self.held:
            return
        if self._lock_fds:
            raise RuntimeError(f"acquire({sorted(wanted)}) while holding {sorted(self.held)}: close the child and "
                               "release_all() first")
        outside = wanted - set(self.pool)
        if outside:
            raise ValueError(f"GPUs {sorted(outside)} are not in the pool {list(self.pool)}")
        order = sorted(wanted)
        stamp = time.time()
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        told: set[str] = set()
        try:
            for gpu in order:
                self._write_want(gpu, stamp)
            while True:
                reason = self._attempt(order, (stamp, self.owner))
                if reason is None:
                    return
                if on_wait is not None and reason not in told:
                    told.add(reason)
                    on_wait(reason)
                if deadline is not None and time.monotonic() >= deadline:
                    raise TimeoutError(f"GPUs {order} not acquired within {timeout_s:g}s: {reason}")
                time.sleep(poll_s)
                self._restore_wants(stamp)
        finally:
            self._remove_wants()

    def wanted_by_others(self) -> list[int]:
        """GPUs held here that another live worker is waiting for (sorted). The caller checks this
        after each trial and, if non-empty, closes its child and calls `release_all()`."""
        if not self._lock_fds:
            return []
        others = self._other_wants()
        return sorted(g for g in self._lock_fds if others.get(g))

    def release_all(self) -> None:
        """Unlock every GPU held and withdraw any request of ours. The caller has already freed the
        GPUs (closed its child)."""
        for gpu in sorted(self._lock_fds):
            fd = self._lock_fds.pop(gpu)
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
            _unlock_close(fd)
        self._remove_wants()

    def close(self) -> None:
        self.release_all()

    def __enter__(self) -> GpuPlacement:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- internals --------------------------------------------------------------------------------

    def _lock_path(self, gpu: int) -> Path:
        return self.lock_dir / f"gpu{gpu}.lock"

    def _want_path(self, gpu: int) -> Path:
        return self.lock_dir / f"gpu{gpu}.want.{self.owner}"

    def _attempt(self, order: list[int], key: tuple[float, str]) -> str | None:
        """One pass: take every lock of `order` (ascending) or none. None when all are taken, else
        why not."""
        others = self._other_wants()
        for gpu in order:
            older = [w for w in others.get(gpu, []) if w.key < key]
            if older:
                first = min(older, key=lambda w: w.key)
                return f"waiting for GPU {gpu} (an earlier request by {first.owner} goes first)"
        taken: dict[int, int] = {}
        try:
            for gpu in order:
                fd = os.open(self._lock_path(gpu), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    os.close(fd)
                    return f"waiting for GPU {gpu} (held by {self._holder(gpu)})"
                taken[gpu] = fd
            note = f"{self.owner}\n".encode()
            for fd in taken.values():
                os.ftruncate(fd, 0)
                os.pwrite(fd, note, 0)
            self._lock_fds, taken = taken, {}
            return None
        finally:
            for fd in taken.values():  # a partial pass (or an exception): hold nothing
                _unlock_close(fd)

    def _holder(self, gpu: int) -> str:
        try:
            name = self._lock_path(gpu).read_text(errors="replace").strip()
        except OSError:
            name = ""
        return name or "another worker"

    def _write_want(self, gpu: int, stamp: float) -> None:
        """Write our request under a temporary name, lock it, then rename it into place: a reader
        never sees it unlocked (which would read as a dead worker's)."""
        final = self._want_path(gpu)
        tmp = self.lock_dir / f".{final.name}.{os.getpid()}.tmp"
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            body = {"owner": self.owner, "host": self.host, "pid": os.getpid(), "stamp": stamp}
            os.write(fd, json.dumps(body).encode())
            os.replace(tmp, final)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        old = self._want_fds.pop(gpu, None)
        if old is not None:
            _unlock_close(old)
        self._want_fds[gpu] = fd

    def _restore_wants(self, stamp: float) -> None:
        """Put back a request file someone deleted (a stale-file sweep racing with us): same stamp,
        so the request keeps its place."""
        for gpu, fd in list(self._want_fds.items()):
            if not _same_file(fd, self._want_path(gpu)):
                self._write_want(gpu, stamp)

    def _remove_wants(self) -> None:
        for gpu in sorted(self._want_fds):
            fd = self._want_fds.pop(gpu)
            path = self._want_path(gpu)
            if _same_file(fd, path):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
            _unlock_close(fd)

    def _other_wants(self) -> dict[int, list[_Want]]:
        """Live requests of other owners, by GPU. Dead ones are deleted on the way."""
        wants: dict[int, list[_Want]] = {}
        try:
            names = os.listdir(self.lock_dir)
        except FileNotFoundError:
            return wants
        for name in names:
            match = _WANT_NAME.match(name)
            if match is None or match.group(2) == self.owner:
                continue
            want = self._read_live_want(self.lock_dir / name, int(match.group(1)), match.group(2))
            if want is not None:
                wants.setdefault(want.gpu, []).append(want)
        return wants

    def _read_live_want(self, path: Path, gpu: int, owner: str) -> _Want | None:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                locked = False  # nobody holds it: its writer is gone
            except BlockingIOError:
                locked = True
            try:
                body = json.loads(os.pread(fd, 4096, 0).decode())
                stamp, pid, host = float(body["stamp"]), int(body["pid"]), str(body["host"])
            except (ValueError, KeyError, TypeError, UnicodeDecodeError):
                body = None
            if body is None:
                # unreadable: a locked one is someone's request (last in line), an unlocked one is junk
                alive, stamp = locked, float("inf")
            else:
                # the lock decides; the pid check catches a lock kept by a forked child of a dead writer
                alive = locked and (host != self.host or _pid_alive(pid))
            if not alive:
                if _same_file(fd, path):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(path)
                return None
            return _Want(gpu=gpu, owner=owner, stamp=stamp)
        finally:
            os.close(fd)
