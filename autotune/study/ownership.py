"""One `autotune tune` process owns a study kept in a file (SQLite, or a journal file): two runs
on one study would fail each other's trials in flight and measure candidates twice.

The owner holds `fcntl.flock` on `<study file>.owner.lock` for its whole life (not `.lock`:
Optuna's journal file storage takes `<journal>.lock` as its own write lock, created exclusively
and force-removed after a 30 s grace period when it finds one it did not make — it waited 30 s at
its first write, then deleted autotune's owner lock). The kernel releases the
lock when the process dies, however it dies, so a killed run never leaves a stale lock behind;
the file itself only says who holds it (pid, host, start time as JSON), for the refusal message.
The lock file is never removed: removing it would let two processes lock two different files.
Workers of the same study (`autotune worker`, and those `--gpus` spawns) take no lock: they share
the study by design. A PostgreSQL study is shared by design too: no lock.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import json
import os
import socket
from pathlib import Path

from autotune.errors import AutotuneError
from autotune.storage import JOURNAL_PREFIX, journal_path


class StudyBusyError(AutotuneError):
    """Another `autotune tune` process is running this study."""


OWNER_LOCK_SUFFIX = ".owner.lock"
# Held for the life of the process: path -> open file descriptor holding the lock.
_HELD: dict[str, int] = {}


def lock_path(storage_url: str) -> Path | None:
    """The owner lock's path for a study in a file (SQLite or journal), None for a server."""
    if storage_url.startswith(JOURNAL_PREFIX):
        path = journal_path(storage_url)
    elif storage_url.startswith("sqlite:"):
        from sqlalchemy.engine import make_url

        database = make_url(storage_url).database
        if not database or database == ":memory:":
            return None
        path = Path(database)
    else:
        return None
    # One name per file (the key of _HELD): symlinks resolved, and `journal:////abs` (a path
    # written after journal:///) is /abs, not POSIX's implementation-defined //abs.
    path = Path("/" + os.path.realpath(path.expanduser()).lstrip("/"))
    return path.with_name(path.name + OWNER_LOCK_SUFFIX)


def holder(path: Path) -> dict:
    """Who the lock file says holds it ({} when it says nothing readable)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def acquire(path: Path, where: str) -> bool:
    """Take the owner lock at `path` (non-blocking) and keep it until this process ends. Returns
    False when this process already holds it. Raises StudyBusyError naming the holder when another
    process holds it; `where` is the study's directory or file, for that message."""
    key = str(path)
    if key in _HELD:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | getattr(os, "O_NOFOLLOW", 0), 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        who = holder(path)
        pid, host, since = who.get("pid", "?"), who.get("host", "?"), who.get("started_at", "?")
        raise StudyBusyError(f"the study in {where} is being run by pid {pid} on {host} since {since}; "
                             f"wait for it or stop it (kill {pid}), or pass another --out") from None
    except BaseException:
        os.close(fd)
        raise
    record = {"pid": os.getpid(), "host": socket.gethostname(),
              "started_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
    except OSError:
        pass  # the lock holds without its note (a full disk): the refusal then names no pid
    _HELD[key] = fd
    return True


def release(path: Path) -> None:
    """Give the lock back before the process ends (a run that created nothing, tests)."""
    fd = _HELD.pop(str(path), None)
    if fd is not None:
        os.close(fd)  # closing the only descriptor releases the flock


def held(path: Path) -> bool:
    return str(path) in _HELD
