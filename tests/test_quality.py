"""Quality on the real embedded SmolLM2-135M: fp32 reference vs bf16, bnb nf4, bnb int8 and a
deliberately damaged model. The metrics must tell them apart, and the damaged one must fail."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from autotune.data import load_validation_set
from autotune.loading import load_model
from autotune.measure.quality import (
    bootstrap_ci,
    capture_reference,
    fidelity,
    fidelity_items,
    fidelity_prompts,
    paired_difference,
    task_scores,
)
from autotune.measure.prompting import Prompter
from autotune.models import resolve_model
from autotune.spec import Candidate
from autotune.worker.faults import perturb_weights

BUNDLED = Path(__file__).resolve().parent.parent / "autotune" / "data" / "bundled"


def test_bootstrap_interval_holds_the_mean_and_shrinks_to_a_point() -> None:
    values = [0.0, 1.0] * 50
    low, high = bootstrap_ci(values)
    assert low < 0.5 < high and high - low < 0.3
    assert bootstrap_ci([0.7] * 20) == (pytest.approx(0.7), pytest.approx(0.7))


def test_paired_difference_calls_noise_and_real_drops() -> None:
    reference = [1.0, 0.0] * 30
    assert paired_difference(reference, reference).within_noise
    one_flip = list(reference)
    one_flip[0] = 0.0
    assert paired_difference(one_flip, reference).within_noise  # one example of sixty is noise
    drop = paired_difference([0.0] * 60, reference)
    assert not drop.within_noise and drop.mean == pytest.approx(-0.5)


def test_bundled_sets_load() -> None:
    text = load_validation_set(BUNDLED / "text.jsonl")
    rerank = load_validation_set(BUNDLED / "rerank.jsonl")
    assert len(text) >= 150 and {e.kind for e in text} == {"generate", "choice"}
    assert len(rerank) >= 50 and all(e.kind == "rerank" and e.relevance for e in rerank)


def _subset(per_kind: int = 10):
    examples = load_validation_set(BUNDLED / "text.jsonl")
    generate = [e for e in examples if e.kind == "generate"][:per_kind]
    choice = [e for e in examples if e.kind == "choice"][: per_kind // 2]
    return generate + choice


@pytest.fixture(scope="module")
def measured() -> dict[str, dict]:
    ref = resolve_model(None)
    examples = _subset()
    candidates = {
        "fp32": Candidate(dtype="fp32", batch_size=1, max_length=32, new_tokens=4),
        "bf16": Candidate(dtype="bf16", batch_size=1, max_length=32, new_tokens=4),
        "bnb-nf4": Candidate(dtype="fp32", quantization="bnb-nf4", batch_size=1, max_length=32, new_tokens=4),
        "bnb-int8": Candidate(dtype="fp32", quantization="bnb-int8", batch_size=1, max_length=32, new_tokens=4),
        "damaged": Candidate(dtype="fp32", batch_size=1, max_length=32, new_tokens=4),
    }
    results: dict[str, dict] = {}
    reference = None
    for name, cand in candidates.items():
        model, tokenizer = load_model(ref, cand, "cpu")
        if name == "damaged":
            perturb_weights(model, 0.5)  # Gaussian noise at half each weight matrix's scale
        prompter = Prompter(tokenizer)
        scores, texts = task_scores(model, prompter, examples, "contains", "cpu")
        if reference is None:
            answers = {i: prompter.text_ids(t) for i, (t, e) in enumerate(zip(texts, examples)) if e.kind == "generate"}
            items = fidelity_items(examples, answers)
            reference = capture_reference(model, fidelity_prompts(prompter, examples, items), "cpu")
        results[name] = {"scores": scores, "fidelity": fidelity(model, reference, fidelity_prompts(prompter, examples, items), "cpu")}
        del model
    return results


@pytest.mark.slow  # the module fixture loads the embedded model 5 times and generates (66 s idle)
def test_reference_scores_well_above_zero(measured: dict[str, dict]) -> None:
    scores = measured["fp32"]["scores"]
    assert sum(scores) / len(scores) >= 0.4
    assert measured["fp32"]["fidelity"].kl_mean == pytest.approx(0.0, abs=1e-4)
    assert measured["fp32"]["fidelity"].top1_agreement == 1.0


@pytest.mark.slow  # the module fixture loads the embedded model 5 times and generates (66 s idle)
def test_fidelity_orders_precisions(measured: dict[str, dict]) -> None:
    kl = {name: r["fidelity"].kl_mean for name, r in measured.items()}
    top1 = {name: r["fidelity"].top1_agreement for name, r in measured.items()}
    assert kl["bf16"] < kl["bnb-int8"] < kl["bnb-nf4"] < kl["damaged"]
    assert top1["bf16"] > 0.9 and top1["bnb-int8"] > 0.8
    for name in ("bf16", "bnb-int8", "bnb-nf4"):
        fid = measured[name]["fidelity"]
        assert fid.kl_p95 >= fid.kl_mean > 0


@pytest.mark.slow  # the module fixture loads the embedded model 5 times and generates (66 s idle)
def test_damaged_model_fails_task_and_fidelity(measured: dict[str, dict]) -> None:
    damaged, reference = measured["damaged"], measured["fp32"]
    assert damaged["fidelity"].kl_mean > 2.0 and damaged["fidelity"].top1_agreement < 0.3
    drop = paired_difference(damaged["scores"], reference["scores"])
    assert drop.mean < -0.3 and not drop.within_noise
    # bf16 answers like the reference: its difference is inside the noise
    assert paired_difference(measured["bf16"]["scores"], reference["scores"]).within_noise


class _FixedLogits(torch.nn.Module):
    """A 'model' whose next-token logits are given: makes KL computable by hand."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.table = logits  # [positions + 1, vocab]

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None):
        return type("Out", (), {"logits": self.table[: input_ids.shape[1]].unsqueeze(0)})()


def test_kl_and_top1_by_hand() -> None:
    # Vocabulary of 3, one predicted position. Reference p = (0.5, 0.25, 0.25); candidate q = (0.25, 0.5, 0.25).
    p = torch.tensor([[0.5, 0.25, 0.25], [1 / 3, 1 / 3, 1 / 3]]).log()
    q = torch.tensor([[0.25, 0.5, 0.25], [1 / 3, 1 / 3, 1 / 3]]).log()
    sequence = [[0, 1]]  # two tokens: one next-token prediction (position 0)
    # k = 3 keeps the whole vocabulary: the bucketed KL is the exact KL
    reference = capture_reference(_FixedLogits(p), sequence, "cpu", k=3)
    exact = 0.5 * math.log(0.5 / 0.25) + 0.25 * math.log(0.25 / 0.5) + 0.25 * math.log(1.0)
    fid = fidelity(_FixedLogits(q), reference, sequence, "cpu")
    assert fid.kl_mean == pytest.approx(exact, abs=1e-6)  # = 0.25 ln 2
    assert fid.top1_agreement == 0.0  # argmax 0 vs 1
    # k = 1: buckets {token 0, rest}: p = (0.5, 0.5), q = (0.25, 0.75)
    coarse = fidelity(_FixedLogits(q), capture_reference(_FixedLogits(p), sequence, "cpu", k=1), sequence, "cpu")
    assert coarse.kl_mean == pytest.approx(0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75), abs=1e-6)
    assert coarse.kl_mean <= fid.kl_mean  # coarse-graining never increases KL
    assert fidelity(_FixedLogits(p), reference, sequence, "cpu").kl_mean == pytest.approx(0.0, abs=1e-7)


def test_answer_agreement() -> None:
    from autotune.measure.quality import answer_agreement

    assert answer_agreement(["Paris.", "4", ""], ["paris", "5", ""]) == 0.5
    assert answer_agreement(["", ""], ["", ""]) is None
