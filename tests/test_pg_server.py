"""The real PostgreSQL server the distributed-study tests run on (tests/pg_server.py, fixtures in conftest.py).

Checks what those tests rely on: an Optuna study in RDBStorage is shared between processes through
one postgresql:// URL, concurrent workers get distinct trials, password auth is enforced, a missing
database is refused, and a stopped server leaves nothing behind.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import optuna
import psycopg2
import pytest
import sqlalchemy

from tests.pg_server import PostgresServer, database_name, find_pg_bin

optuna.logging.set_verbosity(optuna.logging.WARNING)


def run_python(code: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args], capture_output=True, text=True,
                            timeout=timeout)
    assert result.returncode == 0, f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    return result


def test_study_written_in_one_process_is_read_and_extended_in_another(pg_database):
    storage = optuna.storages.RDBStorage(pg_database)
    study = optuna.create_study(study_name="shared", storage=storage, direction="maximize")
    trial = study.ask()
    x = trial.suggest_int("batch_size", 1, 64)
    trial.set_user_attr("dtype", "bf16")
    study.tell(trial, 123.5)

    # A second Python process reads the trial through the same URL, and adds one of its own.
    out = run_python(
        """
        import json, sys
        import optuna
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        storage = optuna.storages.RDBStorage(sys.argv[1])
        study = optuna.load_study(study_name="shared", storage=storage)
        seen = [dict(number=t.number, state=t.state.name, value=t.value, params=t.params, attrs=t.user_attrs)
                for t in study.trials]
        t = study.ask()
        t.suggest_int("batch_size", 1, 64)
        study.tell(t, 7.0)
        print(json.dumps(seen))
        """,
        pg_database,
    )
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert seen == [{"number": 0, "state": "COMPLETE", "value": 123.5, "params": {"batch_size": x},
                     "attrs": {"dtype": "bf16"}}]

    trials = optuna.load_study(study_name="shared", storage=storage).trials
    assert [(t.number, t.value) for t in trials] == [(0, 123.5), (1, 7.0)]
    assert study.best_value == 123.5
    storage.engine.dispose()


def test_concurrent_workers_share_one_study(pg_database):
    optuna.create_study(study_name="race", storage=pg_database, direction="minimize")
    code = """
        import sys
        import optuna
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study = optuna.load_study(study_name="race", storage=sys.argv[1], sampler=optuna.samplers.RandomSampler())
        study.optimize(lambda t: (t.suggest_float("x", -1, 1) - 0.5) ** 2, n_trials=4)
        """
    procs = [subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), pg_database],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(3)]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    trials = optuna.load_study(study_name="race", storage=pg_database).trials
    assert sorted(t.number for t in trials) == list(range(12))
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)


def test_server_settings(postgres, pg_database):
    assert postgres.host == "127.0.0.1" and postgres.user == "autotune" and postgres.port > 0
    assert pg_database.startswith(f"postgresql://autotune:{postgres.password}@127.0.0.1:{postgres.port}/t_test_server_settings_")
    database = pg_database.rsplit("/", 1)[1]
    with postgres.connect(database) as conn, conn.cursor() as cur:
        cur.execute("SELECT current_setting('max_connections')::int, current_setting('fsync'),"
                    " current_setting('listen_addresses'), current_database(),"
                    " (SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public')")
        max_connections, fsync, listen, current, tables = cur.fetchone()
        cur.execute("SELECT DISTINCT auth_method FROM pg_hba_file_rules WHERE type = 'host'")
        host_auth = {row[0] for row in cur.fetchall()}
    conn.close()
    assert max_connections >= 200 and fsync == "off" and listen == "127.0.0.1"
    assert current == database and tables == 0  # a fresh, empty database per test
    assert host_auth == {"scram-sha-256"}


@pytest.mark.parametrize("scheme", ["postgresql", "postgresql+psycopg", "postgresql+psycopg2"])
def test_url_works_with_either_driver(pg_database, scheme):
    # Plain postgresql:// is psycopg (3) under SQLAlchemy >= 2.1, psycopg2 before: both are dependencies.
    engine = sqlalchemy.create_engine(pg_database.replace("postgresql://", f"{scheme}://", 1))
    try:
        with engine.connect() as conn:
            assert conn.execute(sqlalchemy.text("SELECT current_user")).scalar() == "autotune"
    finally:
        engine.dispose()


def test_wrong_password_is_refused(postgres, pg_database):
    database = pg_database.rsplit("/", 1)[1]
    with pytest.raises(psycopg2.OperationalError, match="password authentication failed"):
        psycopg2.connect(host=postgres.host, port=postgres.port, user=postgres.user, password="wrong",
                         dbname=database, connect_timeout=10)
    bad_url = postgres.url(database, password="wrong")
    assert bad_url == f"postgresql://autotune:wrong@127.0.0.1:{postgres.port}/{database}"
    with pytest.raises(sqlalchemy.exc.OperationalError, match="password authentication failed"):
        optuna.storages.RDBStorage(bad_url)


def test_missing_database_is_refused(postgres):
    url = postgres.url("no_such_database")
    with pytest.raises(sqlalchemy.exc.OperationalError, match='database "no_such_database" does not exist'):
        optuna.storages.RDBStorage(url)


def test_database_names_are_valid_and_unique():
    a, b = database_name("test_x[param-1/Ä]"), database_name("test_x[param-1/Ä]")
    assert a != b and a.startswith("t_test_x_param_1_") and len(a.encode()) <= 63
    assert len(database_name("t" * 500)) <= 63


def test_stop_removes_the_server_and_its_directory(postgres):
    # A second, short-lived server: the session's one must stay up for the other tests.
    with PostgresServer(find_pg_bin()) as server:
        root, port = server.root, server.port
        assert server.create_database("scratch") == server.url("scratch")
        server.drop_database("scratch")
        if os.geteuid() == 0:  # PostgreSQL refuses root: it must run as another user
            assert root.stat().st_uid != 0
    assert server.root is None and not root.exists()
    with pytest.raises(psycopg2.OperationalError):
        psycopg2.connect(host="127.0.0.1", port=port, user="autotune", password="autotune-test", dbname="postgres",
                         connect_timeout=5)
    server.stop()  # idempotent
