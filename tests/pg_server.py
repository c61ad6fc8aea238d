"""A real, throw-away PostgreSQL server for the tests (Optuna's RDBStorage over postgresql://).

`PostgresServer` runs `initdb` into a fresh temporary data directory and starts the server with
`pg_ctl -w`, listening on 127.0.0.1 on a free port (and on a unix socket inside the temporary
directory, never the system one), with scram-sha-256 password auth for TCP connections and
durability off (fsync, synchronous_commit, full_page_writes) since nothing here must survive.
`stop()` kills it (`pg_ctl -m immediate stop`) and removes the directory.

PostgreSQL refuses to run as root: as root, every server binary runs through
`runuser -u postgres --` (or `nobody` where no `postgres` user exists), in a temporary directory
chowned to that user under a parent that it can traverse.

Used through the `postgres` (session) and `pg_database` (per test) fixtures in tests/conftest.py.
"""

from __future__ import annotations

import atexit
import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
import uuid
from pathlib import Path
from urllib.parse import quote

USER = "autotune"
PASSWORD = "autotune-test"
HOST = "127.0.0.1"
MAX_CONNECTIONS = 200  # ~10 processes, each with an SQLAlchemy pool (5 + 10 overflow), and headroom
_BIN_CANDIDATES = ("/usr/lib/postgresql/*/bin",)  # Debian/Ubuntu: one folder per major version


def find_pg_bin() -> Path | None:
    """The folder holding initdb, pg_ctl and postgres: newest /usr/lib/postgresql/N/bin, else PATH; None if absent."""
    found: list[tuple[int, Path]] = []
    for pattern in _BIN_CANDIDATES:
        for d in Path("/").glob(pattern.lstrip("/")):
            if all((d / exe).is_file() for exe in ("initdb", "pg_ctl", "postgres")):
                version = d.parent.name
                found.append((int(version) if version.isdigit() else 0, d))
    if found:
        return max(found)[1]
    initdb, pg_ctl = shutil.which("initdb"), shutil.which("pg_ctl")
    if initdb and pg_ctl and Path(initdb).parent == Path(pg_ctl).parent and (Path(initdb).parent / "postgres").is_file():
        return Path(initdb).parent
    return None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def _run_as_user() -> str | None:
    """The unprivileged user to run the server as when we are root; None when we are not root."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    raise RuntimeError("running as root, and neither a 'postgres' nor a 'nobody' user exists to run PostgreSQL as")


def _traversable_by_others(path: Path) -> bool:
    """Every folder from / down to `path` has the execute bit for others (an unprivileged user can pass)."""
    for p in [path, *path.parents]:
        try:
            if not p.stat().st_mode & 0o001:
                return False
        except OSError:
            return False
    return True


def _make_temp_root(owner: str | None) -> Path:
    """A fresh temp dir for data, socket and log. Kept short: a unix socket path must fit in 107 bytes."""
    base = Path(tempfile.gettempdir())
    if owner is not None and not _traversable_by_others(base.resolve()):
        base = Path("/tmp")  # e.g. TMPDIR under a 0700 home: the postgres user could not reach the socket or data
    root = Path(tempfile.mkdtemp(prefix="autotune-pg-", dir=base))
    if owner is not None:
        pw = pwd.getpwnam(owner)
        os.chown(root, pw.pw_uid, pw.pw_gid)
        root.chmod(0o700)
    return root


def _sanitize_env() -> dict[str, str]:
    """The environment for server binaries: no PG* variables from outside, C locale (predictable initdb)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(LC_ALL="C", LANG="C")
    return env


class PostgresServer:
    """One PostgreSQL server in a throw-away data directory. `start()` / `stop()`, or use as a context manager."""

    def __init__(self, bin_dir: Path | None = None, *, user: str = USER, password: str = PASSWORD,
                 max_connections: int = MAX_CONNECTIONS):
        found = bin_dir or find_pg_bin()
        if found is None:
            raise FileNotFoundError("PostgreSQL server binaries not found (apt-get install postgresql)")
        self.bin_dir = Path(found)
        self.host = HOST
        self.port: int = 0
        self.user = user
        self.password = password
        self.max_connections = max_connections
        self.root: Path | None = None
        self._os_user = _run_as_user()

    # -- paths --------------------------------------------------------------------------------
    @property
    def data_dir(self) -> Path:
        assert self.root is not None, "server not started"
        return self.root / "data"

    @property
    def log_file(self) -> Path:
        assert self.root is not None, "server not started"
        return self.root / "server.log"

    @property
    def socket_dir(self) -> Path:
        assert self.root is not None, "server not started"
        return self.root

    # -- process control ------------------------------------------------------------------------
    def _cmd(self, exe: str, *args: str) -> list[str]:
        cmd = [str(self.bin_dir / exe), *args]
        if self._os_user is not None:
            cmd = ["runuser", "-u", self._os_user, "--", *cmd]
        return cmd

    def _run(self, exe: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        result = subprocess.run(self._cmd(exe, *args), capture_output=True, text=True, env=_sanitize_env(),
                                timeout=timeout, cwd=self.root)
        if result.returncode != 0:
            raise RuntimeError(
                f"{exe} {' '.join(args)} failed (exit {result.returncode}):\n{result.stdout}{result.stderr}{self._log_tail()}"
            )
        return result

    def _log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_file.read_text(errors="replace")
        except (OSError, AssertionError):
            return ""
        return "\nserver log (tail):\n" + "\n".join(text.splitlines()[-lines:])

    def start(self) -> "PostgresServer":
        if self.root is not None:
            raise RuntimeError("server already started")
        self.root = _make_temp_root(self._os_user)
        try:
            pwfile = self.root / "pwfile"
            pwfile.write_text(self.password + "\n")
            if self._os_user is not None:
                pw = pwd.getpwnam(self._os_user)
                os.chown(pwfile, pw.pw_uid, pw.pw_gid)
            pwfile.chmod(0o600)
            self._run("initdb", "-D", str(self.data_dir), "-U", self.user, f"--pwfile={pwfile}",
                      "--auth-host=scram-sha-256", "--auth-local=trust", "-E", "UTF8", "--locale=C",
                      "--no-sync", "--no-instructions", timeout=120)
            pwfile.unlink()
            # A free port can be taken between probing and binding: retry on another one.
            for attempt in range(5):
                self.port = free_port()
                self._write_conf()
                self.log_file.unlink(missing_ok=True)
                try:
                    self._run("pg_ctl", "-D", str(self.data_dir), "-l", str(self.log_file), "-w", "-t", "60",
                              "start", timeout=90)
                    break
                except RuntimeError:
                    if attempt == 4 or "could not bind" not in self._log_tail(200).lower():
                        raise
        except BaseException:
            self._remove_root()
            raise
        atexit.register(self.stop)  # a crashed or interrupted test session still leaves no server behind
        return self

    def _write_conf(self) -> None:
        settings = {
            "listen_addresses": f"'{self.host}'",
            "port": str(self.port),
            "unix_socket_directories": f"'{self.socket_dir}'",
            "max_connections": str(self.max_connections),
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "shared_buffers": "32MB",
            "logging_collector": "off",
            "log_min_messages": "warning",
        }
        # postgresql.auto.conf is read after postgresql.conf, so these win; rewritten on each port retry.
        auto = self.data_dir / "postgresql.auto.conf"
        auto.write_text("".join(f"{k} = {v}\n" for k, v in settings.items()))
        if self._os_user is not None:
            pw = pwd.getpwnam(self._os_user)
            os.chown(auto, pw.pw_uid, pw.pw_gid)

    def stop(self) -> None:
        """Kill the server (no clean shutdown: the data is thrown away) and remove its directory. Idempotent."""
        if self.root is None:
            return
        try:
            if (self.data_dir / "postmaster.pid").exists():
                subprocess.run(self._cmd("pg_ctl", "-D", str(self.data_dir), "-m", "immediate", "-w", "stop"),
                               capture_output=True, text=True, env=_sanitize_env(), timeout=60, cwd=self.root)
        finally:
            self._remove_root()
            try:
                atexit.unregister(self.stop)
            except Exception:
                pass

    def _remove_root(self) -> None:
        if self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = None

    def __enter__(self) -> "PostgresServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- clients --------------------------------------------------------------------------------
    def url(self, database: str, password: str | None = None) -> str:
        """postgresql://USER:PASSWORD@127.0.0.1:PORT/DATABASE (the server's password unless one is given)."""
        pw = self.password if password is None else password
        return f"postgresql://{quote(self.user, safe='')}:{quote(pw, safe='')}@{self.host}:{self.port}/{database}"

    def connect(self, database: str = "postgres"):
        """A psycopg2 connection over TCP with the password (autocommit on)."""
        import psycopg2

        conn = psycopg2.connect(host=self.host, port=self.port, user=self.user, password=self.password,
                                dbname=database, connect_timeout=10)
        conn.autocommit = True
        return conn

    def create_database(self, name: str) -> str:
        """CREATE DATABASE name; returns its URL."""
        from psycopg2 import sql

        conn = self.connect()
        try:
            with conn.cursor() as cur:
                cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        finally:
            conn.close()
        return self.url(name)

    def drop_database(self, name: str) -> None:
        """DROP DATABASE IF EXISTS name, closing whatever connections are still open to it."""
        from psycopg2 import sql

        conn = self.connect()
        try:
            with conn.cursor() as cur:
                cur.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        finally:
            conn.close()


def database_name(test_name: str) -> str:
    """A valid, unique database name from a test's name (lower case, [a-z0-9_], at most 63 bytes)."""
    stem = re.sub(r"[^a-z0-9_]+", "_", test_name.lower()).strip("_")[:40] or "test"
    return f"t_{stem}_{uuid.uuid4().hex[:8]}"
