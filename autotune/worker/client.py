"""Parent side of the worker: spawn, send a request, wait with a deadline, survive the child's death."""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import time
from pathlib import Path

from autotune.models import ModelRef
from autotune.spec import Candidate, TrialOutcome
from autotune.worker.protocol import WorkRequest

_STARTUP_TIMEOUT_S = 300.0


def _exit_reason(process) -> str:
    """Why a worker whose pipe closed is gone. The pipe closes before the exit code is reaped, so
    wait for it; a process still running after that stopped answering."""
    process.join(timeout=5)
    return _describe_exit(process.exitcode)


def _describe_exit(exitcode: int | None) -> str:
    if exitcode is None:
        return "worker stopped answering"
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        hint = " (killed: out of host memory, or by hand)" if -exitcode == signal.SIGKILL else ""
        return f"worker died with {name}{hint}"
    return f"worker exited with code {exitcode}"


def log_tail(path: str | Path, lines: int = 5) -> str:
    try:
        text = Path(path).read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(line.strip()[:200] for line in text[-lines:])


@contextlib.contextmanager
def _visible_gpus(gpus: tuple[int, ...] | None):
    """The spawned child inherits the environment at start: set CUDA_VISIBLE_DEVICES around it."""
    if gpus is None:
        yield
        return
    before = os.environ.get("CUDA_VISIBLE_DEVICES")
    # --gpus counts the GPUs this process sees: under an outer CUDA_VISIBLE_DEVICES=2,3, GPU 0 is 2.
    outer = [v.strip() for v in (before or "").split(",") if v.strip()]
    os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(outer[g] if g < len(outer) else str(g) for g in gpus)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("CUDA_VISIBLE_DEVICES", None)
        else:
            os.environ["CUDA_VISIBLE_DEVICES"] = before


class WorkerClient:
    """One worker process at a time; a fresh one is started after a crash or timeout."""

    def __init__(self, model_ref: ModelRef, device: str, memory_budget_gib: float | None, log_dir: Path) -> None:
        self.model_ref = model_ref
        self.device = device
        self.budget = memory_budget_gib
        self.log_dir = log_dir
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._ctx = multiprocessing.get_context("spawn")  # never fork a process that may hold CUDA
        self._process = None
        self._conn = None
        self.log_path: Path | None = None
        self.pid: int | None = None
        self.gpus: tuple[int, ...] | None = None  # physical GPUs the child sees (placement), None: all

    def use_gpus(self, gpus: list[int] | None) -> None:
        """Run the next requests in a child that sees exactly these physical GPUs (as cuda:0..N-1);
        a child that sees others is stopped first (its memory is freed with it)."""
        wanted = tuple(gpus) if gpus is not None else None
        if wanted != self.gpus:
            self.close()
            self.gpus = wanted

    def _next_log_path(self) -> Path:
        n = len(list(self.log_dir.glob("worker-*.log"))) + 1
        return self.log_dir / f"worker-{n:03d}.log"

    def _start(self) -> float:
        from autotune.worker.process import worker_main

        start = time.perf_counter()
        self.log_path = self._next_log_path()
        parent_conn, child_conn = self._ctx.Pipe()
        device = self.device if self.gpus is None else "cuda:0"
        process = self._ctx.Process(
            target=worker_main,
            args=(child_conn, self.model_ref.model_dump_json(), device, self.budget, str(self.log_path)),
            name="autotune-worker",
        )
        with _visible_gpus(self.gpus):
            process.start()
        child_conn.close()
        self._process, self._conn = process, parent_conn
        if not parent_conn.poll(_STARTUP_TIMEOUT_S):
            self._discard()
            raise RuntimeError(f"worker did not start within {_STARTUP_TIMEOUT_S:.0f}s; see {self.log_path}")
        try:
            hello = parent_conn.recv()
        except EOFError:
            reason = _exit_reason(process)
            self._discard()
            raise RuntimeError(f"{reason} while starting; see {self.log_path}: {log_tail(self.log_path)}") from None
        self.pid = hello["pid"]
        return time.perf_counter() - start

    def _discard(self) -> None:
        if self._process is not None and self._process.is_alive():
            self._process.kill()
        if self._process is not None:
            self._process.join(timeout=10)
        if self._conn is not None:
            self._conn.close()
        self._process, self._conn, self.pid = None, None, None

    def run(self, request: WorkRequest, timeout_s: float) -> tuple[TrialOutcome, float]:
        """Returns the outcome and the seconds spent spawning a worker for it (0 if reused)."""
        spawn_s = 0.0
        if self._process is None or not self._process.is_alive():
            self._discard()
            started = time.perf_counter()
            try:
                spawn_s = self._start()
            except RuntimeError as e:  # a worker that cannot start fails this trial, not the study
                return TrialOutcome(status="crashed", reason=str(e)[:1500], worker_log=str(self.log_path)), time.perf_counter() - started
        log = str(self.log_path)
        self._conn.send(request.model_dump(mode="json"))
        deadline = time.monotonic() + timeout_s
        while True:
            if self._conn.poll(0.1):
                try:
                    outcome = TrialOutcome.model_validate(self._conn.recv())
                    return outcome.model_copy(update={"worker_log": log}), spawn_s
                except (EOFError, OSError):
                    pass  # the pipe closed: the child died; fall through to the exit check
            if not self._process.is_alive() or self._conn.closed:
                reason = f"{_exit_reason(self._process)} during trial {request.trial_number}"
                tail = log_tail(log)
                self._discard()
                return TrialOutcome(status="crashed", reason=f"{reason}; log {log}: {tail}"[:1500], worker_log=log), spawn_s
            if time.monotonic() > deadline:
                self._discard()
                return TrialOutcome(
                    status="timeout", reason=f"no answer within {timeout_s:.0f}s (per-trial timeout); worker killed", worker_log=log
                ), spawn_s

    def close(self) -> None:
        if self._conn is not None and self._process is not None and self._process.is_alive():
            try:
                self._conn.send(None)
                self._process.join(timeout=10)
            except (OSError, BrokenPipeError):
                pass
        self._discard()


def worker_state_suspect(cand: Candidate, outcome: TrialOutcome) -> bool:
    """After this outcome, is the worker process's state suspect? After an unexpected error, and
    after a compiled run out of memory: an exception inside a compiled run can leave dynamo's and
    the CUDA-graph trees' state half-built (H200, Session 7: after a compiled OOM every later
    compiled run in that process raised). An uncompiled OOM is routine: the allocator recovers."""
    return outcome.phase != "load" and (outcome.status == "error" or (cand.compile and outcome.status == "oom"))
