"""When a study must stop instead of running on: every trial failing the same way (a start-up
fault of every worker: on an H200 host 425 failed trials in 290 s), or no space left to save what
is measured. Pure decisions, tested directly; the loop acts on them.
"""

from __future__ import annotations

import errno
import re

from autotune.errors import AutotuneError
from autotune.spec import TrialRecord

# The first this many trials run in the worker failing the same way stop the study.
SYSTEMATIC_FAILURES = 3
_DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS}
_SQLITE_FULL, _SQLITE_READONLY = 13, 8


class SystematicFailureError(AutotuneError):
    """Every trial fails the same way: the environment, not a candidate, is broken."""

    exit_code = 5


class OutOfSpaceError(AutotuneError):
    """What was measured cannot be written (a full disk, a quota, a read-only file system)."""


def _first_line(text: str | None) -> str:
    return (text or "").strip().splitlines()[0].strip() if (text or "").strip() else ""


def _without_log(reason: str, log: str | None) -> str:
    """The reason without the worker log's path (each trial's worker has its own log)."""
    if log:
        for joint in (f"; see {log}", f"; log {log}", log):
            reason = reason.replace(joint, "")
    return reason


def _signature(record: TrialRecord) -> tuple[str, str]:
    """The error, not the trial: status and first line of the reason, without the log path and
    with numbers (trial numbers, pids, exit codes in a log tail) made alike."""
    return record.outcome.status, re.sub(r"\d+", "#", _without_log(_first_line(record.outcome.reason), record.outcome.worker_log))


def systematic_failure(ran: list[TrialRecord]) -> str | None:
    """`ran`: the trials this process ran in the worker, in order. When the first
    SYSTEMATIC_FAILURES of them all failed with the same error, the message to stop with (the
    error once, and the first worker log to read); else None. A success first, or different
    errors, never stop the study: a candidate can fail on its own."""
    first = ran[:SYSTEMATIC_FAILURES]
    if len(first) < SYSTEMATIC_FAILURES or any(r.state != "failed" for r in first):
        return None
    if len({_signature(r) for r in first}) != 1:
        return None
    log = first[0].outcome.worker_log
    reason = _without_log(_first_line(first[0].outcome.reason), log).rstrip(";: ") or first[0].outcome.status
    where = f"; see {log}" if log else ""
    return f"the first {SYSTEMATIC_FAILURES} trials all failed the same way: {reason}{where}"


def out_of_space(exc: BaseException) -> tuple[str | None, str] | None:
    """(the file, why) when `exc` (or what caused it: Optuna wraps the storage's errors) is a full
    disk, a quota or a read-only file system; None for anything else."""
    seen = set()
    todo = [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in _DISK_ERRNOS:
            return (str(e.filename) if e.filename is not None else None), (e.strerror or str(e))
        code = getattr(e, "sqlite_errorcode", None)
        text = str(e).lower()
        if type(e).__module__ == "sqlite3" or type(e).__name__ == "OperationalError":
            if (code is not None and code & 0xFF == _SQLITE_FULL) or "database or disk is full" in text:
                return None, "No space left on device (database or disk is full)"
            if (code is not None and code & 0xFF == _SQLITE_READONLY) or "readonly database" in text:
                return None, "Read-only file system (attempt to write a readonly database)"
        todo.extend([e.__cause__, e.__context__, getattr(e, "orig", None)])
    return None


def out_of_space_error(exc: BaseException, where: str, saved: int | None) -> OutOfSpaceError | None:
    """The one-line error for a disk error while saving, or None when `exc` is not one. `where`:
    the file written when the error does not name one (the study's storage)."""
    found = out_of_space(exc)
    if found is None:
        return None
    path, why = found
    fix = "make it writable" if "Read-only" in why else "free space"
    count = f" ({saved} trials are saved in the study)" if saved is not None else ""
    return OutOfSpaceError(f"cannot write {path or where}: {why}; {fix} and re-run to resume{count}")
