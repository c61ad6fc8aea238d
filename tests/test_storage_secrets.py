"""The password of a storage URL never leaves the process that was given it: not in a redacted URL
(whatever the URL looks like), not in an error message, not in the study's attributes (every worker
and anyone with the database reads those), not in any output file. `tune`, `worker` and `show` take
the URL from $AUTOTUNE_STORAGE, which keeps it out of `ps`."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest

from autotune.storage import redact
from tests.conftest import assert_ok, cli_env, read_records, run_cli, write_space

SECRET = "s3cr3t"
TAIL = "t41l"  # the part of a password after an unescaped '@'


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        pytest.param(f"postgresql://u:{SECRET}@db.example:5432/autotune", "postgresql://u:***@db.example:5432/autotune",
                     id="plain"),
        pytest.param(f"postgresql+psycopg://u:{SECRET}@{TAIL}@db.example/autotune", "postgresql+psycopg://u:***@db.example/autotune",
                     id="unescaped-at"),
        pytest.param(f"postgresql://u:{SECRET}%40{TAIL}@db.example/autotune", "postgresql://u:***@db.example/autotune",
                     id="escaped-at"),
        pytest.param(f"postgresql://u@db.example/autotune?password={SECRET}", "postgresql://u@db.example/autotune?password=***",
                     id="query-password"),
        pytest.param(f"postgresql://u@db.example/autotune?sslmode=require&PassWord={SECRET}@{TAIL}&x=1",
                     "postgresql://u@db.example/autotune?sslmode=require&PassWord=***", id="query-password-with-at"),
        pytest.param(f"postgresql://u:{SECRET}@db.example:notaport/autotune", "postgresql://u:***@db.example:notaport/autotune",
                     id="bad-port"),
        pytest.param(f"postgresql://u:{SECRET}@[::1/autotune", "postgresql://u:***@[::1/autotune", id="bad-ipv6"),
        pytest.param("sqlite:////tmp/out/study.db", "sqlite:////tmp/out/study.db", id="sqlite"),
        pytest.param("journal:///tmp/me@host/study.journal", "journal:///tmp/me@host/study.journal", id="journal"),
        pytest.param("bogus://x", "bogus://x", id="unknown-scheme"),
    ],
)
def test_redact_keeps_what_helps_and_hides_the_password(url: str, expected: str) -> None:
    assert redact(url) == expected


@pytest.mark.parametrize(
    "url",
    [
        f"postgresql//u:{SECRET}@{TAIL}@host/db",  # no '://'
        f"postgresql:/u:{SECRET}@host/db",
        f"u:{SECRET}@host/db",
        f"postgresql://u:{SECRET}/{TAIL}@host/db",  # '/' in the password
        f"postgresql://u:{SECRET}?{TAIL}@host/db",  # '?' in the password
        f"postgresql://u:{SECRET}#{TAIL}@host/db",
        f"postgresql://u:{SECRET}@{TAIL}@host/db?application_name=a@b",
        f"postgresql://host/db?password={SECRET}@{TAIL}",
        f"postgresql://host/db?user=u&password={SECRET}&{TAIL}=1",
        f"postgresql://u:{SECRET}:{TAIL}@host/db",  # ":" in the password
        f"postgresql://u:{SECRET}@",
        f"postgresql://:{SECRET}@{TAIL}@",
        f"postgresql://u:{SECRET}\n{TAIL}@host/db",
    ],
)
def test_redact_never_returns_the_password_of_a_hostile_url(url: str) -> None:
    shown = redact(url)
    assert SECRET not in shown and TAIL not in shown, shown


def test_scrub_removes_the_password_from_a_driver_message() -> None:
    from autotune.storage import scrub

    url = f"postgresql://u:{SECRET}%40{TAIL}@host/db"
    message = (f"Could not parse SQLAlchemy URL from string '{url}'; password {SECRET}@{TAIL} rejected, "
               f"decoded {SECRET}@{TAIL}, raw {SECRET}%40{TAIL}")
    clean = scrub(message, url)
    assert SECRET not in clean and TAIL not in clean, clean


@pytest.mark.parametrize(
    "url",
    [f"postgresql//u:{SECRET}@host/db", f"postgresql://u:{SECRET}@host:notaport/db", f"postgresql://u:{SECRET}@{TAIL}@[::1/db"],
    ids=["no-separator", "bad-port", "bad-host"],
)
def test_cli_error_for_a_malformed_url_hides_the_password(tmp_path: Path, url: str) -> None:
    space = write_space(tmp_path / "space.yaml")
    for args in (["tune", "--space", str(space), "--device", "cpu", "--out", str(tmp_path / "out"), "--storage", url],
                 ["worker", "--study", "s", "--device", "cpu", "--out", str(tmp_path / "w"), "--storage", url],
                 ["show", str(tmp_path / "s"), "--study", "s", "--storage", url]):
        result = run_cli(*args, cwd=tmp_path, timeout=300)
        assert result.returncode == 2, (args[0], result.stdout, result.stderr)
        assert result.stderr.startswith("error: ") and len(result.stderr.splitlines()) == 1, result.stderr
        assert SECRET not in result.stderr + result.stdout, (args[0], result.stderr)
        assert TAIL not in result.stderr + result.stdout, (args[0], result.stderr)


# ------------------------------------------------------------------------------ real PostgreSQL


def _everything_stored(url: str, name: str) -> str:
    """Every attribute of the study and its trials (user and system), as one text."""
    from autotune.storage import open_storage

    storage = open_storage(url)
    study = optuna.load_study(study_name=name, storage=storage)
    dump = {"study_user": study.user_attrs, "study_system": storage.get_study_system_attrs(study._study_id),
            "trials": [{"user": t.user_attrs, "system": storage.get_trial_system_attrs(t._trial_id), "params": t.params}
                       for t in study.get_trials(deepcopy=False)]}
    return json.dumps(dump, default=str)


def test_stored_spec_has_no_password(postgres, pg_database: str, tmp_path: Path) -> None:
    from autotune.spec import TuneSpec
    from autotune.study import SPEC_ATTR, open_study

    space = write_space(tmp_path / "space.yaml")
    ctx = open_study(TuneSpec(space=space, device="cpu", storage=pg_database, study="secret", out=tmp_path / "out"))
    assert postgres.password in pg_database
    stored = _everything_stored(pg_database, "secret")
    assert postgres.password not in stored, "the storage password is stored in the study"
    spec = ctx.study.user_attrs[SPEC_ATTR]
    assert spec["storage"] == redact(pg_database) and spec["storage"].startswith("postgresql://")


def test_unescaped_at_in_the_password_connects(postgres, pg_database: str, tmp_path: Path) -> None:
    """`postgresql://u:p@ss@host/db`, the way people write it: the password is what precedes the LAST
    '@' before the host (SQLAlchemy alone would take 'ss@host' for the host and print 'ss')."""
    from psycopg2 import sql

    from autotune.storage import open_storage

    role, password = "hostile_pw", f"{SECRET}@{TAIL}"
    database = pg_database.rsplit("/", 1)[1]
    ident = sql.Identifier(role)
    conn, db = postgres.connect(), postgres.connect(database)
    try:
        with conn.cursor() as cur:
            cur.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(ident, sql.Literal(password)))
        with db.cursor() as cur:
            cur.execute(sql.SQL("GRANT ALL ON SCHEMA public TO {}").format(ident))
        url = f"postgresql://{role}:{password}@{postgres.host}:{postgres.port}/{database}"
        storage = open_storage(url, heartbeat_s=None)
        optuna.create_study(storage=storage, study_name="at-sign")
        assert "at-sign" in [s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)]
        storage.engine.dispose()
    finally:
        with db.cursor() as cur:
            cur.execute(sql.SQL("DROP OWNED BY {}").format(ident))  # the role's tables and grants in this database
        db.close()
        with conn.cursor() as cur:
            cur.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(ident))
        conn.close()


@pytest.mark.slow
def test_study_from_the_environment_leaves_the_password_nowhere(postgres, pg_database: str, tmp_path: Path) -> None:
    """`tune` with the URL only in $AUTOTUNE_STORAGE (not on its command line, so not in `ps`) runs on
    PostgreSQL; afterwards the password is in no study or trial attribute and in no output file
    (best.yaml, trials.jsonl, runs.jsonl, report.html, worker logs), nor in what `show` writes."""
    space = write_space(tmp_path / "space.yaml")
    out = tmp_path / "out"
    env = cli_env(AUTOTUNE_STORAGE=pg_database)
    result = run_cli("tune", "--space", str(space), "--trials", "2", "--device", "cpu", "--study", "env-study",
                     "--confirm-top", "0", "--out", str(out), env=env, cwd=tmp_path)
    assert_ok(result)
    assert not (out / "study.db").exists(), "tune ignored $AUTOTUNE_STORAGE and used SQLite"
    assert len([r for r in read_records(out) if r.state != "duplicate"]) == 2
    shown = run_cli("show", str(tmp_path / "shown"), "--study", "env-study", env=env, cwd=tmp_path)
    assert_ok(shown)

    password = postgres.password
    assert password not in _everything_stored(pg_database, "env-study")
    assert password not in result.stdout + result.stderr + shown.stdout + shown.stderr
    files = [p for p in [*out.rglob("*"), *(tmp_path / "shown").rglob("*")] if p.is_file()]
    names = {p.name for p in files}
    assert {"best.yaml", "trials.jsonl", "runs.jsonl", "report.html"} <= names, names
    assert any(p.parent.name == "workers" or "workers" in p.parts for p in files), names
    leaking = [str(p) for p in files if password.encode() in p.read_bytes()]
    assert not leaking, f"the storage password is in {leaking}"


def test_resuming_removes_a_password_an_older_autotune_stored(postgres, pg_database: str, tmp_path: Path) -> None:
    from autotune.spec import TuneSpec
    from autotune.study import SPEC_ATTR, open_study

    spec = TuneSpec(space=write_space(tmp_path / "space.yaml"), device="cpu", storage=pg_database, study="old",
                    out=tmp_path / "out")
    ctx = open_study(spec)
    ctx.study.set_user_attr(SPEC_ATTR, {**ctx.study.user_attrs[SPEC_ATTR], "storage": pg_database})  # as stored before
    assert postgres.password in _everything_stored(pg_database, "old")
    open_study(spec)  # resume
    assert postgres.password not in _everything_stored(pg_database, "old")
