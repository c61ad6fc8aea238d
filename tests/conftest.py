"""Shared helpers: write a small search space, run the real CLI in a subprocess, read results."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from autotune.report import read_trials as read_records  # noqa: F401  (re-exported for the tests)

TINY_SPACE = {
    "dtype": ["fp32", "bf16"],
    "quantization": ["none"],
    "attn_implementation": ["sdpa", "eager"],
    "compile": [False],
    "batch_size": [1, 2],
    "max_length": [32],
    "new_tokens": 4,
    "repeats": 3,
}


def write_space(path: Path, **overrides) -> Path:
    path.write_text(yaml.safe_dump({**TINY_SPACE, **overrides}))
    return path


def cli_env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "200"}
    env.pop("AUTOTUNE_FAULTS", None)
    env.pop("AUTOTUNE_STORAGE", None)  # `tune` reads it too: a developer's shell must not move the tests' studies
    env.update(extra)
    return env


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 600, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run `python -m autotune.cli ARGS`, without injected worker faults unless `env` sets them."""
    return subprocess.run(
        [sys.executable, "-m", "autotune.cli", *args], capture_output=True, text=True, env=env or cli_env(),
        timeout=timeout, cwd=cwd,
    )


def assert_ok(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (run on the GPU machine: pytest -m gpu)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def postgres():
    """A real PostgreSQL server for the whole test session (tests/pg_server.py), stopped and removed at the end.

    Skips when no server binaries are installed, unless AUTOTUNE_REQUIRE_POSTGRES=1 (set by .ci/run),
    where a missing server fails instead.
    """
    from tests.pg_server import PostgresServer, find_pg_bin

    bin_dir = find_pg_bin()
    if bin_dir is None:
        message = "PostgreSQL server not installed: apt-get install postgresql"
        if os.environ.get("AUTOTUNE_REQUIRE_POSTGRES") == "1":
            pytest.fail(f"{message} (AUTOTUNE_REQUIRE_POSTGRES=1)", pytrace=False)
        pytest.skip(message)
    server = PostgresServer(bin_dir).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def pg_database(postgres, request):
    """A fresh database on the session's server, named after the test; its postgresql:// URL. Dropped afterwards."""
    from tests.pg_server import database_name

    name = database_name(request.node.name)
    url = postgres.create_database(name)
    try:
        yield url
    finally:
        postgres.drop_database(name)
