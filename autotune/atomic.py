"""Atomic file writes, in one place: trials.jsonl, best.yaml, report.html and the quality reference.

The data goes to `.NAME.tmp-PID` next to the file, which is then renamed over it, so a reader (or
a crash) sees the whole old file or the whole new one. The temporary file is created exclusively
and without following a symlink (`O_EXCL | O_NOFOLLOW`): a link planted at that name is removed,
never written through, and an existing file is never clobbered by the open. A failed write (a
full disk) removes its temporary file and raises an OSError naming the file it was writing.
A process killed between the two steps leaves its temporary file behind: `remove_stale_temp_files`
removes those whose process is gone, at the start of the next run.
"""

from __future__ import annotations

import errno
import os
import re
from pathlib import Path

_TEMP_RE = re.compile(r"^\.(?P<name>.+)\.tmp-(?P<pid>\d+)\Z")


def temp_path(path: Path, pid: int | None = None) -> Path:
    """Where the atomic write of `path` by process `pid` (default: this one) puts its data first."""
    return path.with_name(f".{path.name}.tmp-{os.getpid() if pid is None else pid}")


def _open_exclusive(tmp: Path) -> int:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        return os.open(tmp, flags, 0o644)
    except FileExistsError:
        # Left by a killed process of the same pid, or planted (a symlink): unlink removes the
        # name itself, never what a link points to; then create it afresh, exclusively again.
        os.unlink(tmp)
        return os.open(tmp, flags, 0o644)


def atomic_write_bytes(path: Path | str, data: bytes) -> Path:
    path = Path(path)
    tmp = temp_path(path)
    try:
        fd = _open_exclusive(tmp)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if e.errno is not None and (e.filename is None or str(e.filename) != str(path)):
            # Name the file being written, not its temporary name: that is what the user knows.
            raise OSError(e.errno, e.strerror or os.strerror(e.errno), str(path)) from e
        raise
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return path


def atomic_write_text(path: Path | str, text: str, encoding: str = "utf-8") -> Path:
    return atomic_write_bytes(path, text.encode(encoding))


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def remove_stale_temp_files(directory: Path | str) -> list[Path]:
    """Remove the `.NAME.tmp-PID` files in `directory` whose process is not alive (a run killed
    mid-write). Those of live processes (workers of this study writing now) stay. Returns what
    was removed."""
    removed = []
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return removed
    for entry in entries:
        match = _TEMP_RE.match(entry.name)
        if match is None or _alive(int(match["pid"])):
            continue
        try:
            if entry.is_dir(follow_symlinks=False):
                continue
            os.unlink(entry.path)
            removed.append(Path(entry.path))
        except OSError as e:
            if e.errno != errno.ENOENT:
                continue
    return removed
