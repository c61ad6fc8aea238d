"""Several workers, one study: `autotune tune --gpus 0,1,2,3` starts one `autotune worker` per extra
GPU on this host (the tune process itself is the first GPU's worker), and `autotune worker` joins
a study from any host. The study's storage is the only coordination (autotune/storage.py); the
GPUs of one host are shared between its workers by file locks (autotune/worker/placement.py).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from autotune.errors import AutotuneError, DeviceError
from autotune.models import cache_dir
from autotune.storage import describe, redact

STORAGE_ENV = "AUTOTUNE_STORAGE"  # the URL reaches spawned workers here, not in `ps` (it holds the password)


def require_shared_storage(url: str | None, flag: str) -> str:
    if url is None or not describe(url).shared:
        given = f" (got {redact(url)})" if url else ""
        raise AutotuneError(
            f"{flag} runs several worker processes on one study, which SQLite cannot serve safely{given}; pass "
            "--storage postgresql://USER:PASSWORD@HOST/DB (any number of hosts) or --storage journal:///PATH/study.journal "
            "(one host)"
        )
    return url


def check_gpus(gpus: list[int]) -> None:
    import torch

    if not torch.cuda.is_available():
        raise DeviceError(f"--gpus {','.join(map(str, gpus))} needs CUDA GPUs, but none is visible; leave --gpus out "
                          "to tune on this machine's device")
    count = torch.cuda.device_count()
    if max(gpus) >= count:
        raise DeviceError(f"--gpus {','.join(map(str, gpus))}: only {count} GPU(s) are visible (0..{count - 1}); list those")


def lock_dir() -> Path:
    """Host-wide: every autotune process on this host takes turns on a GPU through the same locks."""
    path = cache_dir() / "gpu-locks"
    path.mkdir(parents=True, exist_ok=True)
    return path


def make_placement(home: int, gpus: list[int]):
    from autotune.worker.placement import GpuPlacement

    if home not in gpus:
        raise DeviceError(f"--device cuda:{home} is not one of --gpus {','.join(map(str, gpus))}; add it or pick one of them")
    return GpuPlacement(home=home, pool=sorted(gpus), lock_dir=lock_dir())


def spawn_workers(storage_url: str, study_name: str, homes: list[int], pool: list[int], out: Path,
                  trial_timeout_s: float) -> list[tuple[int, subprocess.Popen]]:
    """One `autotune worker` process for each GPU of `homes`, all sharing the GPUs of `pool` (a
    multi-GPU candidate takes the ones after its worker's own); their output goes to log files."""
    log_dir = out / "workers"
    log_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, STORAGE_ENV: storage_url}
    procs = []
    for gpu in homes:
        log = open(log_dir / f"worker-cuda{gpu}.log", "ab")
        cmd = [sys.executable, "-m", "autotune.cli", "worker", "--study", study_name, "--device", f"cuda:{gpu}",
               "--gpus", ",".join(map(str, pool)), "--out", str(out), "--trial-timeout", str(trial_timeout_s)]
        procs.append((gpu, subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)))
        log.close()
    return procs


def wait_workers(procs: list[tuple[int, subprocess.Popen]], timeout_s: float, note=lambda text: None) -> list[str]:
    """Wait for the spawned workers to finish (they stop once the study holds its trials); returns
    a line for each that did not end cleanly."""
    deadline = time.monotonic() + timeout_s
    problems = []
    for gpu, proc in procs:
        try:
            code = proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            stop_workers([(gpu, proc)])
            code = proc.returncode
            problems.append(f"worker on cuda:{gpu} did not stop within {timeout_s:.0f}s: interrupted")
            continue
        if code != 0:
            problems.append(f"worker on cuda:{gpu} exited with code {code}")
    for line in problems:
        note(line)
    return problems


def stop_workers(procs: list[tuple[int, subprocess.Popen]], grace_s: float = 30.0) -> None:
    """Ctrl-C for the workers too: each marks its trial in flight failed and exits."""
    for _, proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
    deadline = time.monotonic() + grace_s
    for _, proc in procs:
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
