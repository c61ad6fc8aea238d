"""The fingerprint stamped into every result: a config tuned on one GPU says so, and `verify` can tell
when it moved. It describes the machine, not a stage, so it lives apart from spec.py (which re-exports it)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Fingerprint(BaseModel):
    """The machine and software a result was measured on (autotune/system.py fills it in)."""

    model_config = ConfigDict(extra="forbid")

    device: str
    device_name: str
    device_memory_gib: float
    driver: str | None = None
    cuda: str | None = None
    cpu: str
    cpu_cores: int
    host_memory_gib: float
    python: str
    torch: str
    transformers: str
    bitsandbytes: str | None = None
    optuna: str
    autotune: str
