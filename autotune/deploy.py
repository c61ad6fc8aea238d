"""load_deployment: load a model exactly as best.yaml says."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from autotune.errors import DeploymentFileError
from autotune.spec import DeploymentConfig


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
        return DeploymentConfig.model_validate(raw)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        raise DeploymentFileError(f"{path}: {where}: {err['msg'].removeprefix('Value error, ')}") from e


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
