"""The exported vLLM and SGLang files, parsed by vLLM's and SGLang's own argument parsers.

The servers are not autotune dependencies (each brings CUDA torch and several GB), so the parse
runs through a separate virtual environment's python, named by an environment variable:

    AUTOTUNE_VLLM_PYTHON=/path/to/vllm-venv/bin/python
    AUTOTUNE_SGLANG_PYTHON=/path/to/sglang-venv/bin/python

Without them the tests skip. `bash bench/check_export_parsers.sh` builds both venvs (pinned
versions) and runs this file. Every golden export (tests/golden/export/*/vllm.yaml, sglang.yaml)
is parsed twice: through `--config FILE` and as the command line in the .sh next to it; every key
of the YAML must come out with the value the file states (JSON strings as the parsed mapping).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml

GOLDEN = Path(__file__).parent / "golden" / "export"
HELPER = Path(__file__).parent / "export_parsers_check.py"
PYTHON_ENV = {"vllm": "AUTOTUNE_VLLM_PYTHON", "sglang": "AUTOTUNE_SGLANG_PYTHON"}


def expected_values(config: Path) -> dict:
    """The YAML's keys as argparse destinations, JSON strings decoded (the servers parse them)."""
    out = {}
    for key, value in yaml.safe_load(config.read_text()).items():
        if isinstance(value, str) and value.startswith("{"):
            value = json.loads(value)
        out[key.replace("-", "_")] = value
    return out


@pytest.mark.parametrize("target", sorted(PYTHON_ENV))
def test_server_parser_accepts_every_golden_export(target: str, tmp_path: Path) -> None:
    python = os.environ.get(PYTHON_ENV[target])
    if not python:
        pytest.skip(f"{PYTHON_ENV[target]} is not set: point it at a python with {target} installed "
                    "(bash bench/check_export_parsers.sh builds one and runs this test)")
    configs = sorted(GOLDEN.glob(f"*/{target}.yaml"))
    assert len(configs) >= 6, f"expected golden {target} exports, found {configs}"
    manifest = [{"case": c.parent.name, "config": str(c), "script": str(c.with_suffix(".sh"))} for c in configs]
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    # vLLM picks its platform at import; on a machine without a GPU it must be told it is the CPU one.
    env = {**os.environ, "VLLM_TARGET_DEVICE": "cpu", "PYTHONWARNINGS": "ignore"}
    env.pop("PYTHONPATH", None)  # the server's venv, not autotune's environment
    proc = subprocess.run([python, str(HELPER), target, str(tmp_path / "manifest.json")], capture_output=True,
                          text=True, env=env, timeout=900, cwd=tmp_path)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, f"exit {proc.returncode}\nstdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-5000:]}"
    results = json.loads(lines[-1].removeprefix("RESULT "))
    for config in configs:
        case = config.parent.name
        got = results[case]
        assert "error" not in got, f"{target} refused {case}: {got.get('error')}\n{got.get('traceback')}"
        want = expected_values(config)
        for how in ("config", "command"):
            for key, value in want.items():
                assert got[how][key] == value, f"{case} via {how}: {key} parsed as {got[how][key]!r}, the file says {value!r}"
