"""Issue 17, item 2: export reads best.yaml through the same validation as verify and
load_deployment, and that validation refuses absurd batch sizes and lengths, NaN or infinite
figures and a device that is not cpu, cuda, cuda:N or mps -- one line naming the file and field."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from autotune import load_deployment
from autotune.deploy import MAX_BATCH_SIZE, MAX_LENGTH, read_deployment
from autotune.errors import AutotuneError, DeploymentFileError
from autotune.export import EXPORTERS, export
from autotune.spec import DeploymentConfig
from tests import conftest
from tests.test_cli_errors import assert_one_line_error

INPUTS = Path(__file__).parent / "golden" / "export" / "inputs"


def _set(*keys: str, value: object) -> Callable[[dict], None]:
    def edit(raw: dict) -> None:
        node = raw
        for key in keys[:-1]:
            node = node[key]
        node[keys[-1]] = value

    return edit


# name -> (edit, the field the error names)
BAD: dict[str, tuple[Callable[[dict], None], str]] = {
    "huge-batch": (_set("settings", "batch_size", value=10**12), "settings.batch_size"),
    "batch-over-bound": (_set("settings", "batch_size", value=MAX_BATCH_SIZE + 1), "settings.batch_size"),
    "huge-max-length": (_set("settings", "max_length", value=10**9), "settings.max_length"),
    "no-prompt-room": (_set("settings", "new_tokens", value=2048), "settings.new_tokens"),
    "nan-median": (_set("measured", "output_tokens_per_s", "median", value=float("nan")), "measured.output_tokens_per_s.median"),
    "inf-sample": (_set("measured", "ttft_s", "samples", value=[0.5, float("inf"), 0.6]), "measured.ttft_s.samples"),
    "inf-peak": (_set("measured", "peak_memory_gib", value=float("inf")), "measured.peak_memory_gib"),
    "nan-nvml": (_set("measured", "nvml_peak_used_gib", value=float("nan")), "measured.nvml_peak_used_gib"),
    "negative-peak": (_set("measured", "peak_memory_gib", value=-1.0), "measured.peak_memory_gib"),
    "nan-objective": (_set("objective_value", value=float("nan")), "objective_value"),
    "inf-budget": (_set("memory_budget_gib", value=float("inf")), "memory_budget_gib"),
    "zero-gpu-memory": (_set("fingerprint", "device_memory_gib", value=0.0), "fingerprint.device_memory_gib"),
    "device-shell": (_set("device", value="cuda:0; rm -rf /"), "device"),
    "device-subshell": (_set("device", value="$(reboot)"), "device"),
    "device-newline": (_set("device", value="cuda:0\nLD_PRELOAD=x"), "device"),
    "device-unknown": (_set("device", value="tpu"), "device"),
}


def edited(tmp_path: Path, edit: Callable[[dict], None], base: str = "text-h100.yaml") -> Path:
    raw = yaml.safe_load((INPUTS / base).read_text())
    edit(raw)
    path = tmp_path / "best.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


@pytest.mark.parametrize("case", sorted(BAD))
def test_read_deployment_refuses_with_file_and_field(case: str, tmp_path: Path) -> None:
    edit, field = BAD[case]
    path = edited(tmp_path, edit)
    with pytest.raises(DeploymentFileError) as info:
        read_deployment(path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message and field in message, message


@pytest.mark.parametrize("target", sorted(EXPORTERS))
@pytest.mark.parametrize("case", sorted(BAD))
def test_export_refuses_what_verify_refuses(case: str, target: str, tmp_path: Path) -> None:
    path = edited(tmp_path, BAD[case][0])
    with pytest.raises(AutotuneError, match=BAD[case][1].replace(".", r"\.")):
        export(path, target, allow_approximate=True)


@pytest.mark.parametrize("case", ["huge-batch", "nan-median", "device-shell"])
def test_export_of_a_config_object_is_validated_too(case: str, tmp_path: Path) -> None:
    raw = yaml.safe_load((INPUTS / "text-h100.yaml").read_text())
    BAD[case][0](raw)
    config = DeploymentConfig.model_validate(raw)  # the model alone lets these through
    with pytest.raises(AutotuneError, match=BAD[case][1].replace(".", r"\.")):
        export(config, "vllm")


@pytest.mark.parametrize("case", ["huge-batch", "inf-peak", "device-shell"])
def test_load_deployment_refuses_before_loading(case: str, tmp_path: Path) -> None:
    with pytest.raises(DeploymentFileError, match=BAD[case][1].replace(".", r"\.")):
        load_deployment(edited(tmp_path, BAD[case][0]))


def test_cli_export_and_verify_refuse_with_one_line_and_write_nothing(tmp_path: Path) -> None:
    path = edited(tmp_path, BAD["huge-batch"][0])
    out = tmp_path / "serve"
    for args in (("export", str(path), "--to", "tgi", "--out", str(out / "tgi.env")), ("verify", str(path), "--device", "cpu")):
        result = conftest.run_cli(*args, cwd=tmp_path, timeout=120)
        assert result.returncode == 2, result.stderr
        assert_one_line_error(result, str(path), "settings.batch_size", str(MAX_BATCH_SIZE))
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.yaml"]


@pytest.mark.parametrize("device", ["cpu", "cuda", "cuda:0", "cuda:7", "mps"])
def test_valid_devices_are_accepted(device: str, tmp_path: Path) -> None:
    assert read_deployment(edited(tmp_path, _set("device", value=device))).device == device


def test_bounds_are_inclusive_and_real_files_pass(tmp_path: Path) -> None:
    edit = _set("settings", "batch_size", value=MAX_BATCH_SIZE)
    assert read_deployment(edited(tmp_path, edit)).settings.batch_size == MAX_BATCH_SIZE
    for name in sorted(p.name for p in INPUTS.glob("*.yaml")):
        read_deployment(INPUTS / name)
    assert MAX_LENGTH == 1_048_576


def test_zero_median_with_infinite_spread_is_what_stat_of_writes(tmp_path: Path) -> None:
    """Stat.of gives spread_pct inf for a zero median: a file autotune wrote must stay readable."""
    def edit(raw: dict) -> None:
        raw["measured"]["preprocess_s"] = {"median": 0.0, "min": 0.0, "max": 0.0, "spread_pct": math.inf, "samples": [0.0, 0.0, 0.0]}

    assert read_deployment(edited(tmp_path, edit)).measured.preprocess_s.spread_pct == math.inf
