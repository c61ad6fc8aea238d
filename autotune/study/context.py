"""What every part of the study shares, and nothing that runs it: the StudyContext (spec, device,
space, model, the Optuna study, storage), the quality setup, the progress sink, and the names of
the user attributes the study keeps on Optuna's studies and trials (RECORD_ATTR and the rest).
A leaf: confirm.py, analysis.py and report.py read these without importing the study's loop.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import optuna

from autotune.memory_model import ModelShape
from autotune.models import ModelRef
from autotune.spec import Candidate, Fingerprint, SearchSpace, TrialRecord, TuneSpec
from autotune.storage import Heartbeat, StorageInfo, owner
from autotune.system import DeviceInfo
from autotune.worker.protocol import QualityRequest

RECORD_ATTR = "autotune.record"
BASELINE_ATTR = "autotune.baseline"
INTERRUPTED_ATTR = "autotune.interrupted"
REFERENCE_QUALITY_ATTR = "autotune.reference_quality"
QUALITY_CACHE_PREFIX = "autotune.quality:"
BOUNDARY_PREFIX = "autotune.boundary:"
SPEC_ATTR = "autotune.spec"  # what `autotune worker` joins with: the spec and the space, not files
SPACE_ATTR = "autotune.space"
FINGERPRINT_ATTR = "autotune.fingerprint"
CLAIM_ATTR = "autotune.claim"  # the candidate a RUNNING trial measures now (shared storage)
DEFERRED_ATTR = "autotune.deferred"
IDENTITY_ATTRS = ("model", "space_digest", "objective", "device_name", "quality", "workload", "slo")
CONSTRAINT_KEYS = ("oom", "unsupported", "over_budget_gib", "quality_below_floor", "slo_excess")

optuna.logging.set_verbosity(optuna.logging.WARNING)


class ProgressSink(Protocol):
    def trial_started(self, done: int, total: int, candidate: Candidate) -> None: ...
    def trial_finished(self, record: TrialRecord, done: int, total: int) -> None: ...
    def note(self, text: str) -> None: ...


class _Silent:
    def trial_started(self, done: int, total: int, candidate: Candidate) -> None:
        pass

    def trial_finished(self, record: TrialRecord, done: int, total: int) -> None:
        pass

    def note(self, text: str) -> None:
        pass


@dataclass(frozen=True)
class QualitySetup:
    data_path: Path
    metric: str
    floor_mode: str | None  # "relative" | "absolute" | None (measured, not constrained)
    floor_value: float | None
    reference_path: Path
    max_examples: int | None
    allow_data_outside: bool = False
    max_prompt_tokens: int | None = None

    def request(self, candidate: Candidate, is_reference: bool = False) -> QualityRequest:
        """Quality at the candidate's load and input resolution (the batch size does not change it)."""
        return QualityRequest(data_path=str(self.data_path), metric=self.metric, reference_path=str(self.reference_path),
                              is_reference=is_reference, max_examples=self.max_examples,
                              max_pixels=candidate.max_pixels, video_frames=candidate.video_frames,
                              allow_data_outside=self.allow_data_outside, max_prompt_tokens=self.max_prompt_tokens)


@dataclass
class StudyContext:
    spec: TuneSpec
    device: DeviceInfo
    space: SearchSpace
    model: ModelRef
    study: optuna.Study
    storage_url: str
    study_name: str
    out: Path
    fingerprint: Fingerprint
    quality: QualitySetup | None = None
    stopped_reason: str = ""
    new_trials: list[int] = field(default_factory=list)
    shape: ModelShape | None = None  # for the memory model; None where its formula does not apply
    storage_info: StorageInfo | None = None
    role: str = "tune"  # "tune" confirms and waits for the others at the end; "worker" only measures
    placement: object | None = None  # autotune.worker.placement.GpuPlacement under --gpus
    worker_tag: str = ""  # sub-directory of <out>/workers for this process's worker logs
    heartbeat: Heartbeat | None = None
    owner: dict = field(default_factory=owner)

    @property
    def shared(self) -> bool:
        return self.storage_info is not None and self.storage_info.shared
