"""`python -m autotune` runs the CLI (autotune/__main__.py), and its spawned measuring worker (a
multiprocessing child that re-imports the main module) does not run the CLI a second time."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import assert_ok, cli_env, read_records, write_space


def run_module(*args: str, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "autotune", *args], capture_output=True, text=True, env=cli_env(),
                          timeout=timeout, cwd=cwd)


def test_python_dash_m_autotune_help(tmp_path: Path) -> None:
    result = run_module("--help", cwd=tmp_path)
    assert_ok(result)
    for command in ("tune", "worker", "show", "verify", "export", "cache"):
        assert command in result.stdout


def test_python_dash_m_autotune_bad_input_is_one_line(tmp_path: Path) -> None:
    result = run_module("tune", "--min-quality", "98", "--out", str(tmp_path / "out"), cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines() == ["error: --min-quality 98 is a fraction of the reference's score; did you mean 0.98?"]


@pytest.mark.slow
def test_python_dash_m_autotune_tune_runs_a_study(tmp_path: Path) -> None:
    space = write_space(tmp_path / "space.yaml")
    out = tmp_path / "out"
    result = run_module("tune", "--model", "tiny-qwen2", "--random-weights", "--space", str(space), "--trials", "2",
                        "--device", "cpu", "--confirm-top", "0", "--out", str(out), cwd=tmp_path)
    assert_ok(result)
    recs = [r for r in read_records(out) if r.state != "duplicate"]
    assert len(recs) == 2 and all(r.state == "measured" for r in recs), [(r.state, r.outcome.reason) for r in recs]
    assert (out / "best.yaml").is_file()
    assert result.stdout.count("autotune tiny-qwen2") == 1, "the CLI ran more than once (the worker re-ran it?)"
