"""Messages between the study (parent) and the worker (child), sent as plain dicts over a pipe."""

from __future__ import annotations

import json
import os

from pydantic import BaseModel, ConfigDict

from autotune.spec import Candidate

FAULTS_ENV = "AUTOTUNE_FAULTS"


class WorkRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    trial_number: int
    candidate: Candidate
    repeats: int


class Faults(BaseModel):
    """Fault injection for tests, read from $AUTOTUNE_FAULTS (JSON). Each fault is real: an
    impossible allocation, a real SIGKILL of the worker, a real hang; only the trigger is planted."""

    model_config = ConfigDict(extra="forbid")

    oom_at_batch_size: int | None = None  # allocate an impossible buffer when batch >= this
    sigkill_on_trial: int | None = None
    hang_on_trial: int | None = None
    exit_on_startup: bool = False  # the worker dies before it can answer (broken install, driver)

    @classmethod
    def from_env(cls) -> "Faults":
        raw = os.environ.get(FAULTS_ENV)
        return cls.model_validate(json.loads(raw)) if raw else cls()
