"""Under --gpus: which GPUs of this host's pool a candidate runs on (taken with the placement's
host-wide locks), and giving GPUs back to a worker that waits for them.
"""

from __future__ import annotations

from autotune.spec import Candidate
from autotune.study.context import StudyContext
from autotune.worker import WorkerClient

def _place(ctx: StudyContext, worker: WorkerClient, cand: Candidate, note) -> str | None:
    """Under --gpus: take the GPUs this candidate needs (its home GPU, plus the next ones of the
    pool for a multi-GPU candidate), waiting for the workers that hold them; None when placed,
    else why the candidate cannot run on this host."""
    placement = ctx.placement
    if placement is None:
        if cand.num_gpus > 1:
            return (f"needs {cand.num_gpus} GPUs; this worker has one device ({ctx.device.device}): run with --gpus "
                    f"listing at least {cand.num_gpus} GPUs")
        return None
    gpus = placement.gpus_for(cand.num_gpus)
    if gpus is None:
        return f"needs {cand.num_gpus} GPUs; --gpus lists {len(placement.pool)}"
    if set(gpus) != set(placement.held):
        worker.close()  # frees its GPUs before it lets go of them
        placement.release_all()
        placement.acquire(gpus, on_wait=note)
    worker.use_gpus(gpus)
    return None


def _yield_wanted_gpus(ctx: StudyContext, worker: WorkerClient) -> bool:
    """After a trial: if another worker waits for a GPU this one holds, free it (the model goes)."""
    if ctx.placement is None or not ctx.placement.wanted_by_others():
        return False
    worker.close()
    ctx.placement.release_all()
    return True
