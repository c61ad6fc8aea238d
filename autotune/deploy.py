"""load_deployment: load a model exactly as best.yaml says."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from autotune.errors import DeploymentFileError
from autotune.spec import DeploymentConfig


# The largest settings a best.yaml may claim. The same bounds as the search space's (a candidate
# can only be what a space proposed); kept here as named constants until they can point at the
# knob table.
MAX_BATCH_SIZE = 65_536
MAX_LENGTH = 1_048_576  # prompt + new tokens per request
# What `device` may be: the devices autotune measures on (and Apple's, which a load may ask for).
DEVICE_PATTERN = re.compile(r"cpu|mps|cuda(:[0-9]+)?")
EDITED = "pass the best.yaml an `autotune tune` run wrote, unedited"


def check_deployment(config: DeploymentConfig, source: str | Path) -> None:
    """What the pydantic model alone lets through but no tuning run writes: an absurd batch size or
    length, a NaN, infinite or negative figure, a device that is not cpu, cuda, cuda:N or mps.
    Raises DeploymentFileError naming `source` (the file) and the field. export, verify and
    load_deployment all read best.yaml through here (read_deployment)."""

    def fail(field: str, problem: str, fix: str = EDITED) -> None:
        raise DeploymentFileError(f"{source}: {field} {problem}; {fix}")

    if not DEVICE_PATTERN.fullmatch(config.device):
        fail("device", f"is {config.device!r}, not cpu, cuda, cuda:N or mps")
    s = config.settings
    if s.batch_size > MAX_BATCH_SIZE:
        fail("settings.batch_size", f"is {s.batch_size}, more than {MAX_BATCH_SIZE}, the largest batch size autotune measures")
    if s.max_length > MAX_LENGTH:
        fail("settings.max_length", f"is {s.max_length}, more than {MAX_LENGTH}, the longest max_length autotune measures")
    if s.new_tokens >= s.max_length:
        fail("settings.new_tokens", f"is {s.new_tokens}, which leaves no prompt token in max_length {s.max_length}")

    def figure(value: object, field: str, positive: bool = False) -> None:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return
        if not math.isfinite(value):
            fail(field, f"is {value}, not a finite number")
        if value < 0 or (positive and value == 0):
            fail(field, f"is {value}, not a {'positive' if positive else 'non-negative'} number")

    def figures(data: object, field: str) -> None:
        if isinstance(data, dict):
            for key, item in data.items():
                # Stat.of writes spread_pct inf for a zero median (no relative spread): allowed there only.
                if key == "spread_pct" and item == math.inf and data.get("median") == 0:
                    continue
                figures(item, f"{field}.{key}")
        elif isinstance(data, list):
            if any(isinstance(item, float) and not math.isfinite(item) for item in data):
                fail(field, f"holds {next(i for i in data if isinstance(i, float) and not math.isfinite(i))}, not a finite number")
            for i, item in enumerate(data):
                figures(item, f"{field}[{i}]")
        else:
            figure(data, field)

    figures(config.measured.model_dump(mode="python"), "measured")
    figure(config.objective_value, "objective_value")
    figure(config.speedup_vs_baseline, "speedup_vs_baseline")
    if config.baseline is not None:
        figure(config.baseline.objective_value, "baseline.objective_value")
    figure(config.memory_budget_gib, "memory_budget_gib", positive=True)
    figure(config.fingerprint.device_memory_gib, "fingerprint.device_memory_gib", positive=True)
    figure(config.fingerprint.host_memory_gib, "fingerprint.host_memory_gib")


def read_deployment(path: str | Path) -> DeploymentConfig:
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as e:
        raise DeploymentFileError(f"cannot read {path}: {e.strerror}; pass the best.yaml an `autotune tune` run wrote") from e
    except yaml.YAMLError as e:
        raise DeploymentFileError(f"{path} is not valid YAML; pass the best.yaml an `autotune tune` run wrote") from e
    if not isinstance(raw, dict) or "settings" not in raw or "model" not in raw:
        raise DeploymentFileError(f"{path} is not an autotune DeploymentConfig (no 'model'/'settings'); pass a best.yaml")
    try:
        config = DeploymentConfig.model_validate(raw)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        raise DeploymentFileError(f"{path}: {where}: {err['msg'].removeprefix('Value error, ')}") from e
    check_deployment(config, path)
    return config


def load_deployment(path: str | Path, device: str | None = None) -> tuple[Any, Any, dict[str, Any]]:
    """Return (model, tokenizer or None for random-weight models, generate kwargs).

    The model is loaded through the same code the worker measured it with: dtype, quantization
    config, attention implementation and, via the generate kwargs, the static cache that makes
    transformers compile generate(). `device` overrides the device it was tuned on.
    """
    from autotune.loading import load_model
    from autotune.models import relocate

    config = read_deployment(path)
    # Paths in best.yaml are the tuning machine's; relocate finds a bundled config here by name.
    model, tokenizer = load_model(relocate(config.model), config.settings, device or config.device)
    return model, tokenizer, dict(config.generate_kwargs)
