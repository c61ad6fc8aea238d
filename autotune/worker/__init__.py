"""The worker: the only code that touches the model, in a child process of its own.

A worker that dies (segfault, CUDA fatal error, SIGKILL, the OOM killer) takes only its trial with
it; the parent records why, keeps the worker's log, and starts a fresh one.
"""

from autotune.worker.client import WorkerClient
from autotune.worker.protocol import WorkRequest

__all__ = ["WorkerClient", "WorkRequest"]
