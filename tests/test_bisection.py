"""Batch-size bisection inside the loaded worker: the boundary it finds equals an exhaustive scan's,
and a study answers batch sizes above it without measuring them."""

from __future__ import annotations

from pathlib import Path

import pytest

from autotune.models import resolve_model
from autotune.spec import Candidate
from autotune.worker import WorkerClient, WorkRequest
from tests.conftest import assert_ok, read_records, run_cli, write_space

BATCH_SIZES = [1, 8, 64, 512, 2048, 8192]
BUDGET_GIB = 1.5


def _boundary(exhaustive: bool, log_dir: Path):
    worker = WorkerClient(resolve_model("tiny-qwen2", random_weights=True), "cpu", BUDGET_GIB, log_dir)
    try:
        cand = Candidate(dtype="fp32", attn_implementation="sdpa", batch_size=1, max_length=256, new_tokens=4)
        outcome, _ = worker.run(WorkRequest(trial_number=0, candidate=cand, repeats=3, boundary_batch_sizes=BATCH_SIZES,
                                            boundary_exhaustive=exhaustive), timeout_s=600)
    finally:
        worker.close()
    assert outcome.status == "ok", outcome.reason
    return outcome.boundary


@pytest.fixture(scope="module")
def boundaries(tmp_path_factory) -> dict:
    log_dir = tmp_path_factory.mktemp("workers")
    return {"bisection": _boundary(False, log_dir), "exhaustive": _boundary(True, log_dir)}


@pytest.mark.slow  # its fixture bisects in a worker and then scans every batch size (27 s idle)
def test_bisection_finds_the_exhaustive_boundary_with_fewer_probes(boundaries: dict) -> None:
    bisection, exhaustive = boundaries["bisection"], boundaries["exhaustive"]
    assert len(exhaustive.probes) == len(BATCH_SIZES)
    fits = [p.batch_size for p in exhaustive.probes if p.fits]
    # A real boundary inside the range: small batches fit the 1.5 GiB cap, the largest do not,
    # and memory is monotone in the batch size (nothing fits above a failure).
    assert fits == BATCH_SIZES[: len(fits)] and 0 < len(fits) < len(BATCH_SIZES)
    assert bisection.largest_feasible == exhaustive.largest_feasible == fits[-1]
    assert len(bisection.probes) <= 3 < len(exhaustive.probes)  # ceil(log2(6 + 1)) probes
    for probe in exhaustive.probes:
        if probe.fits:
            assert probe.peak_memory_gib is not None and probe.peak_memory_gib <= BUDGET_GIB
        else:
            assert probe.reason  # an allocation refused under the cap, or a peak over the budget


@pytest.mark.slow
def test_study_answers_batches_above_the_boundary_without_measuring(tmp_path: Path) -> None:
    space = write_space(tmp_path / "space.yaml", dtype=["fp32"], attn_implementation=["sdpa"], batch_size=BATCH_SIZES,
                        max_length=[256], new_tokens=4)
    out = tmp_path / "out"
    result = run_cli("tune", "--model", "tiny-qwen2", "--random-weights", "--space", str(space), "--trials", "6",
                     "--memory-budget", f"{BUDGET_GIB}GiB", "--sampler", "grid", "--confirm-top", "0", "--out", str(out),
                     "--device", "cpu")
    assert_ok(result)
    recs = [r for r in read_records(out) if r.state != "duplicate"]
    assert {r.candidate.batch_size for r in recs} == set(BATCH_SIZES)
    boundaries = {r.outcome.boundary.largest_feasible for r in recs if r.outcome.boundary is not None}
    assert len(boundaries) == 1  # one bisection for the one load and length
    largest = boundaries.pop()
    for r in recs:
        if r.candidate.batch_size > largest:
            assert r.state == "infeasible" and r.outcome.reason.startswith("bisection:") and r.outcome.measurement is None
        else:
            assert r.state == "measured" and r.outcome.measurement.peak_memory_gib <= BUDGET_GIB
