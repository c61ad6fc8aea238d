"""Where a study lives, and how several workers share it.

- SQLite (the default, `<out>/study.db`): one process. SQLite's file locking is not safe for
  several processes writing trials at once, so `--gpus` and `autotune worker` refuse it.
- PostgreSQL (`postgresql://USER:PASSWORD@HOST/DB`): any number of workers on any number of hosts.
  Optuna's heartbeat marks a trial whose worker stopped beating (killed, host lost) as failed, and
  RetryHeartbeatStaleTrialCallback queues a copy of it, which the next free worker runs.
- Journal file (`journal:///PATH`): several workers on ONE host without a database server. Optuna's
  JournalStorage has no heartbeat, so a trial whose worker process is gone is found by its
  recorded owner (host and pid) and retried the same way (`reap_dead_owners`).
"""

from __future__ import annotations

import os
import re
import socket
import threading
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

import warnings

import optuna
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

from autotune.errors import StorageError

OWNER_ATTR = "autotune.owner"
# A stale trial is retried at most this often: a candidate that kills its worker every time (a
# driver fault, a segfaulting kernel) must not take the study down with it.
MAX_RETRY = 2
DEFAULT_HEARTBEAT_S = 10
# Optuna marks the heartbeat and its retry callback experimental (since 2.8, in 5.0 still), and
# warns that heartbeats are meant for study.optimize(): autotune asks and tells itself and beats
# for its trials itself (Heartbeat below). Neither warning says anything to our users.
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning,
                        message=r"(?s).*(heartbeat|RetryHeartbeatStaleTrialCallback)")
warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")
JOURNAL_PREFIX = "journal://"


@dataclass(frozen=True)
class StorageInfo:
    url: str
    shared: bool  # safe for several worker processes at once
    heartbeat_s: int | None  # None: no heartbeat (SQLite: one process; journal: owner pids instead)


def describe(url: str, heartbeat_s: int = DEFAULT_HEARTBEAT_S) -> StorageInfo:
    if url.startswith("sqlite:"):
        return StorageInfo(url, shared=False, heartbeat_s=None)
    if url.startswith(JOURNAL_PREFIX):
        return StorageInfo(url, shared=True, heartbeat_s=None)
    return StorageInfo(url, shared=True, heartbeat_s=heartbeat_s)


def journal_path(url: str) -> Path:
    # journal:///abs/path -> /abs/path; journal://rel/path -> rel/path
    return Path(url[len(JOURNAL_PREFIX):])


def owner() -> dict:
    """Who runs a trial: enough to tell, on the same host, whether it is still alive."""
    return {"host": socket.gethostname(), "pid": os.getpid()}


def open_storage(url: str, heartbeat_s: int | None = DEFAULT_HEARTBEAT_S) -> optuna.storages.BaseStorage:
    """Open (creating tables where needed) or raise a one-line StorageError naming the fix."""
    check_url(url)
    try:
        if url.startswith(JOURNAL_PREFIX):
            from optuna.storages.journal import JournalFileBackend, JournalStorage

            path = journal_path(url)
            path.parent.mkdir(parents=True, exist_ok=True)
            return JournalStorage(JournalFileBackend(str(path)))
        if url.startswith("sqlite:"):
            return optuna.storages.get_storage(url)
        return optuna.storages.RDBStorage(
            connect_url(url),
            # A worker whose heartbeat is older than the grace period is gone: its trial fails and is retried.
            heartbeat_interval=heartbeat_s,
            grace_period=3 * heartbeat_s if heartbeat_s else None,
            heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY),
            # A connection the server closed while a long trial ran is replaced, not an error.
            engine_kwargs={"pool_pre_ping": True},
        )
    except Exception as e:  # SQLAlchemy, the driver and the file backend raise many types
        raise StorageError(f"cannot open --storage {redact(url)}: {scrub(explain(e), url)}") from e


URL_FORMS = "write postgresql://USER:PASSWORD@HOST[:PORT]/DB, journal:///PATH or sqlite:///PATH"


def check_url(url: str | None) -> None:
    """A storage URL's scheme, syntax and database driver, checked before anything is created (an
    output directory, a journal file) or connected to; a one-line StorageError otherwise."""
    if url is None or url.startswith(JOURNAL_PREFIX):
        return
    from sqlalchemy.engine import make_url

    try:
        parsed = make_url(connect_url(url))
    except Exception as e:  # ArgumentError, or ValueError for a port that is not a number
        raise StorageError(f"cannot open --storage {redact(url)}: not a storage URL; {URL_FORMS} "
                           "(percent-encode '/', '?' and '#' in the password)") from e
    try:
        dialect = parsed.get_dialect()
        (dialect.import_dbapi if hasattr(dialect, "import_dbapi") else dialect.dbapi)()
    except Exception as e:  # NoSuchModuleError (unknown scheme or driver), ImportError (driver not installed)
        raise StorageError(f"cannot open --storage {redact(url)}: {scrub(explain(e), url)}") from e


# What redaction keeps of a URL: scheme, user, host, port, database, query parameters but secret ones.
_SCHEME_RE = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*)://(.*)\Z", re.S)
_SCHEME_ONLY_RE = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*)[:/]")
# A secret query parameter (?password=..., &sslpassword=...): its value is hidden up to the end of
# the URL, since a password may hold '&' or '@' unescaped.
_SECRET_PARAM_RE = re.compile(r"([?&;][^=&;?#]*(?:pass|pwd|secret|token)[^=&;?#]*=)(.*)\Z", re.S | re.I)
_SAFE_USER_RE = re.compile(r"[A-Za-z0-9._~%+\-]*\Z")


def _split_userinfo(rest: str) -> tuple[str | None, str]:
    """(USER:PASSWORD, what follows the '@') of the part after '://', or (None, rest) without an '@'.

    The userinfo ends at the LAST '@' before the host, so `u:p@ss@host` is user u with password
    p@ss (people write passwords unescaped; SQLAlchemy alone would read host 'ss@host'). An '@'
    after the first '/', '?' or '#' is ambiguous (such a character in the password, or an '@' in
    the query): then everything up to the last '@' of the URL counts as userinfo, which hides too
    much rather than too little."""
    end = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
    authority, tail = rest[:end], rest[end:]
    if "@" in tail:
        userinfo, _, after = rest.rpartition("@")
        return userinfo, after
    if "@" in authority:
        userinfo, _, host = authority.rpartition("@")
        return userinfo, host + tail
    return None, rest


def redact(url: str) -> str:
    """The URL without its password, for logs, error messages and output files. Never returns a
    password, whatever the URL looks like: one that cannot be read becomes `SCHEME://***`.
    File storages (sqlite:, journal://) are paths and are returned as they are."""
    if url.startswith("sqlite:") or url.startswith(JOURNAL_PREFIX):
        return url
    match = _SCHEME_RE.match(url)
    if match is None:
        scheme = _SCHEME_ONLY_RE.match(url)
        return f"{scheme.group(1)}://***" if scheme else "***"
    scheme, rest = match.groups()
    rest = _SECRET_PARAM_RE.sub(lambda m: m.group(1) + "***", rest)
    userinfo, after = _split_userinfo(rest)
    if userinfo is None:
        return f"{scheme}://{rest}"
    user, colon, _ = userinfo.partition(":")
    if not _SAFE_USER_RE.match(user):  # not a plain user name: a password, or a part of one
        user = "***"
    return f"{scheme}://{user}{':***' if colon else ''}@{after}"


def _secrets(url: str) -> set[str]:
    """Every string of a URL that may be its password (or a part of one), under every reading."""
    if not url or url.startswith("sqlite:") or url.startswith(JOURNAL_PREFIX):
        return set()
    match = _SCHEME_RE.match(url)
    rest = match.group(2) if match else url
    found = set()
    readings = [_split_userinfo(rest)[0], rest.rpartition("@")[0], rest.partition("@")[0] if "@" in rest else None]
    for userinfo in readings:
        if userinfo and ":" in userinfo:
            found.add(userinfo.partition(":")[2])
    for m in _SECRET_PARAM_RE.finditer(rest):
        found |= {m.group(2), m.group(2).split("&")[0]}
    for secret in list(found):
        found |= {unquote(secret), *secret.split("@"), *unquote(secret).split("@")}
    return {s for s in found if len(s) >= 3}  # shorter pieces would garble the message, not hide anything


def scrub(text: str, url: str | None) -> str:
    """A driver's message with the URL redacted and any reading of its password replaced by ***
    (SQLAlchemy quotes an unparseable URL whole; a driver may echo a host that holds part of it)."""
    if not url:
        return text
    text = text.replace(url, redact(url))
    for secret in sorted(_secrets(url), key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


def connect_url(url: str) -> str:
    """The URL to connect with: an unescaped '@' in the user name or password (`u:p@ss@host`) is
    percent-encoded, as SQLAlchemy needs it. Only where that reading is unambiguous (no '@' after
    the host); everything else is passed on as given."""
    if url.startswith("sqlite:") or url.startswith(JOURNAL_PREFIX):
        return url
    match = _SCHEME_RE.match(url)
    if match is None:
        return url
    scheme, rest = match.groups()
    end = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
    authority, tail = rest[:end], rest[end:]
    if authority.count("@") < 2 or "@" in tail:
        return url
    userinfo, _, host = authority.rpartition("@")
    return f"{scheme}://{userinfo.replace('@', '%40')}@{host}{tail}"


def explain(e: BaseException) -> str:
    """The first line of a driver's error, with the fix for the common ones."""
    text = str(e).strip()
    lower = text.lower()
    if isinstance(e, ModuleNotFoundError) or "no module named" in lower:
        return f"a database driver is missing ({text.splitlines()[0] if text else e}); pip install psycopg2-binary (PostgreSQL)"
    if "password authentication failed" in lower:
        return "password authentication failed; fix the user or password in the URL"
    if "does not exist" in lower and "database" in lower:
        line = next((ln for ln in text.splitlines() if "does not exist" in ln), text.splitlines()[0])
        return f"{line.split(')')[-1].strip()}; create it (createdb NAME) or fix the database name in the URL"
    if "connection refused" in lower or "could not connect" in lower or "could not translate host" in lower:
        return "no database server answers at that host and port; start it or fix the URL"
    if "can't load plugin" in lower or "unknown dialect" in lower:
        return "unknown storage scheme; use sqlite:///PATH, postgresql://USER:PASSWORD@HOST/DB or journal:///PATH"
    first = text.splitlines()[0] if text else type(e).__name__
    return first[:300]


class Heartbeat:
    """Records a heartbeat for every trial this worker holds (asked and not yet told), every
    interval, from a daemon thread. Optuna beats only inside study.optimize(); autotune asks and
    tells itself (several trials ahead, to group them by load), so it beats for all of them."""

    def __init__(self, storage: optuna.storages.BaseStorage, interval_s: int | None) -> None:
        self.storage = storage
        self.interval_s = interval_s
        self._ids: set[int] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if interval_s:
            self._thread = threading.Thread(target=self._run, daemon=True, name="autotune-heartbeat")
            self._thread.start()

    def add(self, trial_id: int) -> None:
        if not self.interval_s:
            return
        with self._lock:
            self._ids.add(trial_id)
        self.storage.record_heartbeat(trial_id)  # at once: a trial with no beat is never found stale

    def discard(self, trial_id: int) -> None:
        with self._lock:
            self._ids.discard(trial_id)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            with self._lock:
                ids = list(self._ids)
            for trial_id in ids:
                try:
                    self.storage.record_heartbeat(trial_id)
                except Exception as e:  # a lost connection: the next beat retries; stale after the grace period
                    print(f"heartbeat for trial id {trial_id} failed: {explain(e)}", flush=True)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)


def fail_stale(study: optuna.Study, info: StorageInfo) -> list[int]:
    """Fail the trials whose worker is gone and queue their retries; returns the failed numbers.
    PostgreSQL: Optuna's heartbeat. Journal: trials owned by a dead process on this host."""
    if info.heartbeat_s:
        before = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
        optuna.storages.fail_stale_trials(study)
        after = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
        return sorted(before - after)
    if info.url.startswith(JOURNAL_PREFIX):
        return reap_dead_owners(study)
    return []


def reap_dead_owners(study: optuna.Study) -> list[int]:
    """RUNNING trials whose recorded owner is a process on this host that no longer exists."""
    host = socket.gethostname()
    failed = []
    retry = RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY)
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        who = trial.user_attrs.get(OWNER_ATTR)
        if not who or who.get("host") != host or _alive(int(who.get("pid", 0))):
            continue
        try:
            if study._storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL):
                failed.append(trial.number)
                retry(study, study._storage.get_trial(trial._trial_id))
        except optuna.exceptions.UpdateFinishedTrialError:
            pass  # another worker reaped it first
    return failed


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
