"""The quality reference in the output directory is data, never code: it is stored as safetensors
(tensors) with its non-tensor parts as JSON in the safetensors header, and a file that does not
parse as that (tampered, truncated, an old pickle) is treated as missing and re-measured."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.conftest import assert_ok, read_records, run_cli, write_space


class _Evil:
    """Unpickling this creates `marker`: proof that loading ran code from the file."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def plant_malicious_reference(out: Path, marker: Path) -> list[Path]:
    """A reference.pt-style pickle with a payload, under the old and the new file name."""
    paths = [out / "reference.pt", out / "reference.safetensors"]
    for path in paths:
        torch.save({"reference": _Evil(marker), "items": [], "scores": [], "texts": []}, path)
    return paths


def _reference():
    from autotune.measure.quality import FidelityItem, ReferenceTopK

    ref = ReferenceTopK(tails=[None, 3], top_ids=[torch.randint(0, 100, (5, 4)), torch.randint(0, 100, (3, 4))],
                        top_logprobs=[torch.randn(5, 4), torch.randn(3, 4)])
    items = [FidelityItem(0, (1, 2, 3)), FidelityItem(1, (), document=1, tail=3)]
    return ref, items


def test_reference_round_trips(tmp_path: Path) -> None:
    from autotune.measure.quality import load_reference, reference_readable, save_reference

    ref, items = _reference()
    path = tmp_path / "reference.safetensors"
    save_reference(path, ref, items, scores=[1.0, 0.5], texts=["Paris", ""])
    assert reference_readable(path)
    saved = load_reference(path)
    assert saved.items == items and saved.scores == [1.0, 0.5] and saved.texts == ["Paris", ""]
    assert saved.reference.tails == ref.tails
    for a, b in zip(saved.reference.top_ids + saved.reference.top_logprobs, ref.top_ids + ref.top_logprobs):
        assert torch.equal(a, b) and a.dtype == b.dtype
    assert not list(tmp_path.glob("*.tmp*")), "the write leaves no temporary file"


def test_malicious_or_broken_reference_is_unreadable_and_runs_nothing(tmp_path: Path) -> None:
    from autotune.measure.quality import REFERENCE_FILE, load_reference, reference_readable, save_reference

    assert REFERENCE_FILE == "reference.safetensors"
    marker = tmp_path / "pwned"
    evil = plant_malicious_reference(tmp_path, marker)[1]
    assert not reference_readable(evil)
    with pytest.raises(ValueError):
        load_reference(evil)
    ref, items = _reference()
    good = tmp_path / "good.safetensors"
    save_reference(good, ref, items, scores=[1.0, 0.5], texts=["Paris", ""])
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(good.read_bytes()[:-7])
    inconsistent = tmp_path / "inconsistent.safetensors"
    save_reference(inconsistent, ref, items[:1], scores=[1.0, 0.5], texts=["Paris", ""])  # 2 sequences, 1 item
    for path in (truncated, inconsistent, tmp_path / "missing.safetensors"):
        assert not reference_readable(path), path.name
    assert not marker.exists(), "loading the reference ran code from the file"


class _ScriptedWorker:
    def __init__(self) -> None:
        self.asked: list = []

    def run(self, request, timeout_s):
        from autotune.spec import QualityReport, TrialOutcome

        self.asked.append(request)
        quality = QualityReport(metric="contains", score=0.5, ci_low=0.4, ci_high=0.6, n=2, per_example=[0.0, 1.0])
        return TrialOutcome(status="ok", quality=quality), 0.0


def test_tampered_reference_is_measured_again(tmp_path: Path) -> None:
    """The study holds the reference's score, but the file next to it is a pickle with a payload:
    ensure_reference treats it as missing (asks the worker for the reference again), and nothing runs."""
    from autotune.spec import TuneSpec
    from autotune.study import REFERENCE_QUALITY_ATTR, ensure_reference, open_study

    space = write_space(tmp_path / "space.yaml", dtype=["fp32"])
    out = tmp_path / "out"
    ctx = open_study(TuneSpec(space=space, out=out, device="cpu", min_quality="0.9", quality_examples=5))
    ctx.study.set_user_attr(REFERENCE_QUALITY_ATTR, {"metric": "contains", "score": 0.9, "ci_low": 0.8, "ci_high": 1.0,
                                                     "n": 2, "per_example": [1.0, 0.8]})
    marker = tmp_path / "pwned"
    plant_malicious_reference(out, marker)
    worker = _ScriptedWorker()
    key = ensure_reference(ctx, worker)
    assert len(worker.asked) == 1 and worker.asked[0].quality.is_reference, "a tampered reference was trusted"
    assert key == worker.asked[0].candidate.load_key
    assert Path(worker.asked[0].quality.reference_path).name == "reference.safetensors"
    assert not marker.exists()


@pytest.mark.slow
def test_tampered_reference_in_a_resumed_quality_study_runs_no_code(tmp_path: Path) -> None:
    """A real quality study (embedded model, CPU): resumed after its reference was replaced by a
    pickle with a payload, it re-measures the reference and measures the next load-key against it;
    the payload never runs and no trial fails."""
    space = write_space(tmp_path / "space.yaml", dtype=["fp32"], attn_implementation=["sdpa", "eager"], batch_size=[1],
                        max_length=[48], new_tokens=4)
    out = tmp_path / "out"
    args = ["tune", "--space", str(space), "--min-quality", "0.5", "--quality-examples", "4", "--device", "cpu",
            "--confirm-top", "0", "--out", str(out)]
    assert_ok(run_cli(*args, "--trials", "1", cwd=tmp_path))
    marker = tmp_path / "pwned"
    plant_malicious_reference(out, marker)
    result = run_cli(*args, "--trials", "2", cwd=tmp_path)
    assert not marker.exists(), "resuming the study ran code from the tampered reference file"
    assert_ok(result)
    recs = [r for r in read_records(out) if r.state != "duplicate"]
    assert [r.candidate.attn_implementation for r in recs] == ["sdpa", "eager"]
    assert all(r.state == "measured" and r.outcome.quality is not None for r in recs), [(r.state, r.outcome.reason) for r in recs]
    assert recs[1].outcome.quality.top1_agreement > 0.9  # eager vs the re-measured fp32 sdpa reference
    from autotune.measure.quality import REFERENCE_FILE, reference_readable

    assert reference_readable(out / REFERENCE_FILE)
