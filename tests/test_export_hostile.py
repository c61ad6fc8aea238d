"""Issue 17, item 1: strings from a best.yaml (or --model) never become code, keys or lines of an
exported file. Each hostile string is either refused with a one-line error naming the field, or
reads back from every written file (YAML, .env, .sh, Python, the kwargs file) as exactly itself,
with no extra key, variable, flag or statement. No model is loaded.
"""

from __future__ import annotations

import ast
import shlex
from pathlib import Path

import pytest
import yaml

from autotune.deploy import read_deployment
from autotune.errors import ExportError
from autotune.export import EXPORTERS, export, write_export
from tests import conftest
from tests.test_cli_errors import assert_one_line_error

INPUTS = Path(__file__).parent / "golden" / "export" / "inputs"

HOSTILE = {
    "newline": "Qwen/x\nLD_PRELOAD=/tmp/evil.so",
    "carriage-return": "Qwen/x\rLD_PRELOAD=/tmp/evil.so",
    "nul": "Qwen/x\x00y",
    "escape": "Qwen/x\x1b[2J",
    "line-separator": "Qwen/x\u2028model: evil",
    "next-line": "Qwen/x\x85model: evil",
    "subshell": "$(rm -rf /)",
    "backticks": "`touch /tmp/pwned`",
    "quotes": "it's \"quoted\"",
    "semicolon": "x; LD_PRELOAD=x",
    "triple-quote": '"""\nimport os; os.system("id")\n"""',
    "triple-quote-one-line": 'x"""; import os; os.system("id"); """',
    "backslash": "C:\\Nope\\N{x}\\u12",
    "non-bmp": "model-\U0001f600",
}
CONTROL = {"newline", "carriage-return", "nul", "escape", "line-separator", "next-line", "triple-quote"}


def hostile_config(tmp_path: Path, where: str, value: str, base: str = "text-h100.yaml") -> Path:
    raw = yaml.safe_load((INPUTS / base).read_text())
    if where == "model.source":
        raw["model"] = {"kind": "pretrained", "name": "m", "source": value, "model_kind": "causal-lm"}
    elif where == "study_name":
        raw["study_name"] = value
    elif where == "fingerprint.device_name":
        raw["fingerprint"]["device_name"] = value
    elif where == "settings.image_size":
        raw["settings"]["image_size"] = value
    else:
        raise AssertionError(where)
    path = tmp_path / "best.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def written(target: str, config: Path, tmp_path: Path, **options) -> dict[str, str]:
    result = export(config, target, allow_approximate=True, **options)
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    return {p.name: p.read_text() for p in write_export(result, out)}


def env_vars(text: str) -> dict[str, str]:
    """An env file as `set -a; source FILE` reads it (shlex) -- and as docker reads it (literally):
    the two must agree."""
    out = {}
    for line in text.split("\n"):
        if not line.strip() or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        assert sep and key.isidentifier(), f"not a KEY=VALUE line: {line!r}"
        parsed = shlex.split(value, comments=True)
        assert parsed == ([value] if value else []), f"{key}: docker reads {value!r}, a shell {parsed!r}"
        out[key] = value
    return out


def script_words(text: str) -> list[str]:
    lines = text.split("\n")
    assert lines[0] == "#!/usr/bin/env bash"
    body = "\n".join(line for line in lines[1:] if not line.startswith("#"))
    return shlex.split(body, comments=True)


def python_names(text: str) -> dict[str, object]:
    """Top-level constants of the snippet (literal values) and the names it defines; the docstring
    is the module's first statement and nothing else is hiding in it."""
    tree = ast.parse(text)
    names: dict[str, object] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign):
            names[node.targets[0].id] = ast.literal_eval(node.value)
        elif isinstance(node, ast.FunctionDef):
            names[node.name] = "def"
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names["import " + ",".join(a.name for a in node.names)] = "import"
        elif isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and node is tree.body[0]:
            names["__doc__"] = "doc"
        elif isinstance(node, ast.If):
            names["__main__"] = "main"
        else:
            raise AssertionError(f"unexpected statement at line {node.lineno}: {ast.dump(node)[:200]}")
    return names


def check_round_trip(target: str, files: dict[str, str], benign: dict[str, str], value: str, where: str) -> None:
    """Every file parses, holds exactly the keys/variables/flags/statements of the benign export,
    and the hostile value, where it is written as a value, reads back exactly."""
    for name, text in files.items():
        if name.endswith(".sh"):
            words, benign_words = script_words(text), script_words(benign[name])
            assert len(words) == len(benign_words), (words, benign_words)
            assert [w for w in words if w.startswith("--")] == [w for w in benign_words if w.startswith("--")]
            if where == "model.source":
                assert value in words
        elif name.endswith(".env"):
            got, expected = env_vars(text), env_vars(benign[name])
            assert got.keys() == expected.keys()
            if where == "model.source":
                assert got["MODEL_ID"] == value
        elif name.endswith(".best.yaml"):
            config = yaml.safe_load(text)
            assert config.keys() == yaml.safe_load(benign[name]).keys()
            if where == "model.source":
                assert config["model"]["source"] == value
            elif where == "study_name":
                assert config["study_name"] == value
        elif name.endswith(".yaml"):
            got, expected = yaml.safe_load(text), yaml.safe_load(benign[name])
            assert got.keys() == expected.keys()
            key = "model" if target == "vllm" else "model-path"
            if where == "model.source":
                assert got[key] == value
        elif name.endswith(".py"):
            got, expected = python_names(text), python_names(benign[name])
            assert got.keys() == expected.keys()
            if where == "model.source":
                assert got["MODEL"] == value
        else:
            raise AssertionError(name)


@pytest.mark.parametrize("target", sorted(EXPORTERS))
@pytest.mark.parametrize("where", ["model.source", "study_name", "fingerprint.device_name"])
@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_strings_are_refused_or_read_back_exactly(target: str, where: str, case: str, tmp_path: Path) -> None:
    value = HOSTILE[case]
    (tmp_path / "benign").mkdir()
    benign = written(target, hostile_config(tmp_path / "benign", where, "Qwen/plain-model"), tmp_path / "benign")
    config = hostile_config(tmp_path, where, value)
    try:
        files = written(target, config, tmp_path)
    except ExportError as e:
        message = str(e)
        assert "\n" not in message and where in message, message
        # Refused only where the string cannot be written exactly: a control character, or a
        # character an env file reads differently in docker and in a shell.
        assert case in CONTROL or (target == "tgi" and where == "model.source"), message
        return
    assert case not in CONTROL, f"{case} was written: {files}"
    check_round_trip(target, files, benign, value, where)


@pytest.mark.parametrize("target", sorted(EXPORTERS))
@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_model_option_is_refused_or_read_back_exactly(target: str, case: str, tmp_path: Path) -> None:
    value = HOSTILE[case]
    (tmp_path / "benign").mkdir()
    benign = written(target, INPUTS / "text-h100.yaml", tmp_path / "benign", model="Qwen/plain-model")
    try:
        files = written(target, INPUTS / "text-h100.yaml", tmp_path, model=value)
    except ExportError as e:
        assert "\n" not in str(e) and "--model" in str(e), str(e)
        assert case in CONTROL or target == "tgi", str(e)
        return
    assert case not in CONTROL
    check_round_trip(target, files, benign, value, "model.source")


@pytest.mark.parametrize("target", sorted(EXPORTERS))
def test_control_character_in_a_vision_setting_is_refused(target: str, tmp_path: Path) -> None:
    config = hostile_config(tmp_path, "settings.image_size", "1x1\nimport os", base="vision-nf4-h100.yaml")
    with pytest.raises(ExportError, match=r"settings\.image_size"):
        export(config, target, allow_approximate=True)


def test_cli_refuses_a_newline_in_model_source_with_one_line_and_writes_nothing(tmp_path: Path) -> None:
    config = hostile_config(tmp_path, "model.source", HOSTILE["newline"])
    out = tmp_path / "serve"
    result = conftest.run_cli("export", str(config), "--to", "tgi", "--out", str(out / "tgi.env"), cwd=tmp_path, timeout=60)
    assert_one_line_error(result, "model.source", "control character")
    assert result.returncode == 2
    assert not out.exists()


def test_kwargs_file_of_a_hostile_source_loads_back(tmp_path: Path) -> None:
    config = hostile_config(tmp_path, "model.source", HOSTILE["subshell"])
    (tmp_path / "out").mkdir()
    paths = write_export(export(config, "transformers"), tmp_path / "out")
    kwargs = next(p for p in paths if p.name.endswith(".best.yaml"))
    assert read_deployment(kwargs).model.source == HOSTILE["subshell"]
