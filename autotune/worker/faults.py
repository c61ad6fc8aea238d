"""Fault injection, for tests only: read from $AUTOTUNE_FAULTS (JSON) when a worker starts.

The worker (autotune/worker/process.py) calls one method of `Faults` at each hook point; with the
variable unset (production) every hook does nothing. All fault logic lives here.
"""

from __future__ import annotations

import json
import os
import signal
import time

from pydantic import BaseModel, ConfigDict, PrivateAttr

from autotune.spec import Candidate

FAULTS_ENV = "AUTOTUNE_FAULTS"


class Faults(BaseModel):
    """The faults planted in this worker (none by default). Each fault is real: an impossible
    allocation, a real SIGKILL of the worker, a real hang; only the trigger is planted."""

    model_config = ConfigDict(extra="forbid")

    oom_at_batch_size: int | None = None  # allocate an impossible buffer when batch >= this
    sigkill_on_trial: int | None = None
    hang_on_trial: int | None = None
    hang_on_measurement: int | None = None  # the Nth measurement this worker starts hangs (a trial surely in flight)
    sleep_before_measurement_s: float | None = None  # every measurement starts this much later (a slow study)
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
    _measurements_started: int = PrivateAttr(default=0)  # in this worker process, for the *_measurement(s) faults

    @classmethod
    def from_env(cls) -> Faults:
        raw = os.environ.get(FAULTS_ENV)
        return cls.model_validate(json.loads(raw)) if raw else cls()

    def on_startup(self) -> None:
        """Hook: the worker process started, before it says it is ready."""
        if self.exit_on_startup:
            print("injected fault: exiting before the worker is ready", flush=True)
            os._exit(3)

    def after_load(self, model, cand: Candidate) -> None:
        """Hook: the candidate's model just loaded (a raise here is a load failure)."""
        if self.refuse_load_attn == cand.attn_implementation:
            raise NotImplementedError(f"{cand.attn_implementation} refused by the refuse_load_attn fault, after loading")
        if self.perturb_dtype == cand.dtype or self.perturb_attn == cand.attn_implementation:
            perturb_weights(model, self.perturb_scale)

    def measurement_starting(self, trial_number: int) -> None:
        """Hook: a measurement (not a bisection, not a quality-only run) is about to start."""
        if self.sigkill_on_trial == trial_number:
            os.kill(os.getpid(), signal.SIGKILL)
        self._measurements_started += 1
        if self.sleep_before_measurement_s:
            time.sleep(self.sleep_before_measurement_s)
        if self.hang_on_trial == trial_number or self.hang_on_measurement == self._measurements_started:
            time.sleep(10**6)

    def before_each_run(self, cand: Candidate, device: str) -> None:
        """Hook: before every generate() run of a measurement (its warm-up included)."""
        if (self.error_after_measurements is not None and self._measurements_started > self.error_after_measurements) \
                or (self.error_at_batch_size is not None and cand.batch_size >= self.error_at_batch_size):
            raise AssertionError("planted by the error fault")
        after = self.oom_after_measurements
        if (self.oom_at_batch_size is not None and cand.batch_size >= self.oom_at_batch_size) \
                or (after is not None and self._measurements_started > after):
            import torch

            torch.empty(2**50, dtype=torch.uint8, device=device)  # 1 PiB: a real allocation failure


def perturb_weights(model, scale: float) -> None:
    """Real Gaussian noise on every weight matrix (embeddings spared)."""
    import torch

    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.dim() == 2 and "embed" not in name and param.is_floating_point():
                noise = torch.randn(param.shape, generator=generator).to(param.device, param.dtype)
                param.add_(noise * param.float().std().to(param.dtype) * scale)
