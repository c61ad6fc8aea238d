"""Messages between the study (parent) and the worker (child), sent as plain dicts over a pipe."""

from __future__ import annotations

import json
import os

from pydantic import BaseModel, ConfigDict

from autotune.spec import Candidate

FAULTS_ENV = "AUTOTUNE_FAULTS"


class QualityRequest(BaseModel):
    """Measure quality on this load (once per load-key). The reference load captures what the
    others are compared with into `reference_path`; every other load reads it."""

    model_config = ConfigDict(extra="forbid")

    data_path: str
    metric: str
    reference_path: str
    is_reference: bool = False
    max_examples: int | None = None
    # The input resolution quality is measured at (vision models): the candidate's own.
    max_pixels: int | None = None
    video_frames: int | None = None
    allow_data_outside: bool = False  # image/video paths may leave the data file's folder (--allow-data-outside)
    max_prompt_tokens: int | None = None  # text prompts are cut to their last this many tokens (the space's max_length)


class WorkRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    trial_number: int
    candidate: Candidate
    repeats: int
    quality: QualityRequest | None = None
    measure: bool = True  # False: quality only (the reference load)
    # Probe these batch sizes (the candidate's other settings) for the largest that fits, by
    # bisection, or every one of them when exhaustive; answered instead of a measurement.
    boundary_batch_sizes: list[int] | None = None
    boundary_exhaustive: bool = False


class Faults(BaseModel):
    """Fault injection for tests, read from $AUTOTUNE_FAULTS (JSON). Each fault is real: an
    impossible allocation, a real SIGKILL of the worker, a real hang; only the trigger is planted."""

    model_config = ConfigDict(extra="forbid")

    oom_at_batch_size: int | None = None  # allocate an impossible buffer when batch >= this
    sigkill_on_trial: int | None = None
    hang_on_trial: int | None = None
    hang_on_measurement: int | None = None  # the Nth measurement this worker starts hangs (a trial surely in flight)
    exit_on_startup: bool = False  # the worker dies before it can answer (broken install, driver)
    # Every measurement after the Nth in one worker process runs out of memory (a real impossible
    # allocation): memory that earlier shapes left behind, as compiled CUDA graphs' pools do.
    oom_after_measurements: int | None = None
    # Every measurement after the Nth in one worker process raises, as compiled runs did on an H200
    # once an earlier compiled run had failed in that process (a bare AssertionError, Session 7).
    error_after_measurements: int | None = None
    error_at_batch_size: int | None = None  # measurements at batch >= this raise, in every worker
    # Loads with this attention kernel fail as unsupported after loading, as a compiled bnb load does.
    refuse_load_attn: str | None = None
    perturb_dtype: str | None = None  # loads in this dtype get real Gaussian noise on their weights: a broken deployment
    # Same, for loads with this attention kernel: a damaged fp32 load, for CPUs where bf16 has no
    # native kernels and runs ~80x slower than fp32 (AVX2-only hosts).
    perturb_attn: str | None = None
    perturb_scale: float = 0.5  # noise std, in units of each weight matrix's own std

    @classmethod
    def from_env(cls) -> "Faults":
        raw = os.environ.get(FAULTS_ENV)
        return cls.model_validate(json.loads(raw)) if raw else cls()
