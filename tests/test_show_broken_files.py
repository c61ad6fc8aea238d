"""Issue 17, item 3: `autotune show DIR` on a damaged trials.jsonl or best.yaml prints one line
naming the file (and line) and exits 2, instead of a traceback. No model is loaded."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from autotune.errors import AutotuneError
from autotune.report import load_results
from tests import conftest
from tests.test_cli_errors import assert_one_line_error

REAL = Path(__file__).parents[1] / "bench" / "results" / "cpu-default"


@pytest.fixture
def out(tmp_path: Path) -> Path:
    out = tmp_path / "run"
    out.mkdir()
    for name in ("trials.jsonl", "best.yaml"):
        shutil.copy(REAL / name, out / name)
    return out


def _break_line(out: Path, number: int, how: str) -> None:
    lines = (out / "trials.jsonl").read_text().splitlines()
    line = lines[number - 1]
    lines[number - 1] = {"truncated": line[: len(line) // 2], "not-a-record": '{"number": 3}', "garbage": "\x00\x01 not json",
                         "list": "[1, 2]"}[how]
    (out / "trials.jsonl").write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("how", ["truncated", "not-a-record", "garbage", "list"])
def test_a_broken_trials_line_is_named_by_number(out: Path, how: str) -> None:
    _break_line(out, 7, how)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    result = conftest.run_cli("show", str(out), cwd=out.parent, timeout=120)
    assert result.returncode == 2, result.stderr
    assert_one_line_error(result, f"{out / 'trials.jsonl'} line 7 is not a valid trial record")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # nothing written, nothing changed


@pytest.mark.parametrize("text, needle", [
    ("settings: [unclosed\n", "is not valid YAML"),
    ("- just\n- a list\n", "not an autotune DeploymentConfig"),
    (None, "settings.batch_size"),  # a valid-looking file with a wrong field
    ("", "not an autotune DeploymentConfig"),
])
def test_a_malformed_best_yaml_is_one_line(out: Path, text: str | None, needle: str) -> None:
    if text is None:
        raw = yaml.safe_load((out / "best.yaml").read_text())
        raw["settings"]["batch_size"] = "many"
        text = yaml.safe_dump(raw)
    (out / "best.yaml").write_text(text)
    result = conftest.run_cli("show", str(out), cwd=out.parent, timeout=120)
    assert result.returncode == 2, result.stderr
    assert_one_line_error(result, str(out / "best.yaml"), needle)


def test_load_results_raises_the_one_line_error(out: Path) -> None:
    _break_line(out, 3, "truncated")
    with pytest.raises(AutotuneError, match=r"trials\.jsonl line 3 is not a valid trial record \(.*\); "):
        load_results(out)


def test_an_intact_directory_still_shows(out: Path) -> None:
    recs, config = load_results(out)
    assert len(recs) == 20 and config is not None
