"""Messages between the study (parent) and the worker (child), sent as plain dicts over a pipe."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from autotune.spec import Candidate


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
    # A non-default workload (SearchSpace.workload, normalised): measured on batches drawn from it
    # with this seed (autotune/measure/traffic.py); None: the fixed worst-case shape.
    workload: dict | None = None
    workload_seed: int = 0
