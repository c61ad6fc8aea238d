"""Quality of a loaded model on a validation set: task metrics and label-free fidelity.

- Task quality: greedy answers scored by a generation metric (contains, exact match, token F1),
  multiple choice by the log-likelihood of each choice.
- Fidelity to a reference load (the highest-precision config): the reference's top-k next-token
  log-probabilities on fixed token sequences are captured once; a candidate is compared on the
  same sequences by teacher forcing. KL is computed between the distributions coarse-grained to
  the reference's top-k tokens plus one "rest" bucket — a lower bound of the full KL (data
  processing inequality) that needs 32 numbers per position instead of a whole vocabulary.
- Uncertainty: percentile bootstrap of the mean, and a paired bootstrap of the difference to the
  reference over the same examples; a difference whose interval holds 0 is "within noise".
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

from autotune.data.schema import Example
from autotune.measure.metrics import get_metric

TOP_K = 32
MAX_ANSWER_TOKENS = 24


# ------------------------------------------------------------------------------ uncertainty


def bootstrap_ci(values: Sequence[float], resamples: int = 1000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean."""
    if not values:
        raise ValueError("no values to bootstrap")
    rng = random.Random(seed)
    n = len(values)
    means = sorted(sum(values[rng.randrange(n)] for _ in range(n)) / n for _ in range(resamples))
    tail = (1 - level) / 2
    return means[int(tail * (resamples - 1))], means[int(math.ceil((1 - tail) * (resamples - 1)))]


@dataclass(frozen=True)
class Difference:
    mean: float
    ci_low: float
    ci_high: float

    @property
    def within_noise(self) -> bool:
        return self.ci_low <= 0.0 <= self.ci_high


def paired_difference(candidate: Sequence[float], reference: Sequence[float], resamples: int = 1000, seed: int = 0) -> Difference:
    """Candidate minus reference on the same examples, with a paired bootstrap interval."""
    if len(candidate) != len(reference):
        raise ValueError(f"{len(candidate)} candidate scores for {len(reference)} reference scores")
    diffs = [c - r for c, r in zip(candidate, reference)]
    low, high = bootstrap_ci(diffs, resamples, seed)
    return Difference(sum(diffs) / len(diffs), low, high)


# ------------------------------------------------------------------------------ prompting


def _prompt_ids(tokenizer, example: Example) -> list[int]:
    messages = [m.model_dump() for m in example.messages] if example.messages else [{"role": "user", "content": example.prompt}]
    if getattr(tokenizer, "chat_template", None):
        out = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)
        return list(out["input_ids"])
    return tokenizer(example.prompt or messages[-1]["content"])["input_ids"]


# ------------------------------------------------------------------------------ task quality


def generate_answers(model, tokenizer, examples: Sequence[Example], device: str) -> list[str]:
    """Greedy answers, one example at a time (batching would pad, and quality must not depend on
    batch size: it is measured once per load-key)."""
    import torch

    answers = []
    for example in examples:
        ids = torch.tensor([_prompt_ids(tokenizer, example)], device=device)
        with torch.inference_mode():
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=MAX_ANSWER_TOKENS,
                                 do_sample=False, pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id)
        answers.append(tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True))
    return answers


def choice_loglik(model, tokenizer, example: Example, device: str) -> list[float]:
    """Sum of log-probabilities of each choice's tokens after the prompt."""
    import torch

    prompt = _prompt_ids(tokenizer, example)
    scores = []
    for choice in example.choices:
        cont = tokenizer(" " + choice, add_special_tokens=False)["input_ids"]
        ids = torch.tensor([prompt + cont], device=device)
        with torch.inference_mode():
            logprobs = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), dim=-1)
        positions = range(len(prompt) - 1, len(prompt) - 1 + len(cont))
        scores.append(float(sum(logprobs[p, t] for p, t in zip(positions, cont))))
    return scores


RERANK_SYSTEM = ('Judge whether the Document meets the requirements based on the Query and the Instruct provided. '
                 'Note that the answer can only be "yes" or "no".')
RERANK_INSTRUCT = "Given a query, retrieve relevant passages that answer the query"


def rerank_prompt_ids(tokenizer, query: str, document: str) -> list[int]:
    """The Qwen3-Reranker prompt: the model's next token after it is judged as "yes" against "no"."""
    user = f"<Instruct>: {RERANK_INSTRUCT}\n<Query>: {query}\n<Document>: {document}"
    if getattr(tokenizer, "chat_template", None):
        messages = [{"role": "system", "content": RERANK_SYSTEM}, {"role": "user", "content": user}]
        out = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)
        return list(out["input_ids"])
    return tokenizer(f"{RERANK_SYSTEM}\n{user}\nAnswer:")["input_ids"]


def rerank_scores(model, tokenizer, example: Example, device: str) -> list[float]:
    """P(yes) / (P(yes) + P(no)) for each document of the query, one document at a time (no
    padding: quality must not depend on the batch size)."""
    import torch

    from autotune.vision import yes_no_ids

    yes, no = yes_no_ids(tokenizer, 1 << 30)
    scores = []
    for document in example.documents:
        ids = torch.tensor([rerank_prompt_ids(tokenizer, example.query, document)], device=device)
        with torch.inference_mode():
            logits = model(input_ids=ids, logits_to_keep=1).logits[0, -1]
        scores.append(float(torch.softmax(logits[[yes, no]].float(), dim=-1)[0]))
    return scores


def ranking_text(scores: Sequence[float]) -> str:
    """A ranking as text ("2>0>1"): two loads agree on a query when they rank its documents alike."""
    return ">".join(str(i) for i in sorted(range(len(scores)), key=lambda i: -scores[i]))


def rerank_fidelity_sequences(tokenizer, examples: Sequence[Example], docs_per_query: int = 2) -> list[list[int]]:
    """Query-document prompts on which a reranker's next-token distribution is compared to the reference's."""
    return [rerank_prompt_ids(tokenizer, e.query, d) for e in examples if e.kind == "rerank" for d in e.documents[:docs_per_query]]


def task_scores(model, tokenizer, examples: Sequence[Example], metric_name: str, device: str) -> tuple[list[float], list[str]]:
    """Per-example scores in [0, 1] and the generated answers (empty strings for choice examples)."""
    metric = get_metric(metric_name)
    generated_examples = [e for e in examples if e.kind == "generate"]
    generated = iter(generate_answers(model, tokenizer, generated_examples, device)) if metric.task == "generate" else iter(())
    scores, texts = [], []
    for example in examples:
        if example.kind == "choice":
            ll = choice_loglik(model, tokenizer, example, device)
            picked = example.choices[max(range(len(ll)), key=ll.__getitem__)]
            scores.append(float(picked == example.answer))
            texts.append("")
        elif example.kind == "generate" and metric.task == "generate":
            text = next(generated)
            scores.append(metric.compute(text, example.accepted_answers))
            texts.append(text)
        elif example.kind == "rerank":
            doc_scores = rerank_scores(model, tokenizer, example, device)
            scores.append(metric.compute(doc_scores, example.relevance) if metric.task == "rerank" else 0.0)
            texts.append(ranking_text(doc_scores))
    return scores, texts


# ------------------------------------------------------------------------------ fidelity


def answer_agreement(texts: Sequence[str], reference_texts: Sequence[str]) -> float | None:
    """Share of generated answers that equal the reference's after normalisation (label-free)."""
    from autotune.measure.metrics import normalize

    pairs = [(a, b) for a, b in zip(texts, reference_texts) if a or b]  # choice examples carry no text
    if not pairs:
        return None
    return sum(normalize(a) == normalize(b) for a, b in pairs) / len(pairs)


@dataclass
class ReferenceTopK:
    """What the reference load predicted on fixed sequences: per position, top-k ids and log-probs."""

    sequences: list[list[int]]
    top_ids: list  # per sequence: LongTensor [positions, k]
    top_logprobs: list  # per sequence: FloatTensor [positions, k]


def fidelity_sequences(tokenizer, examples: Sequence[Example], answers: Sequence[str]) -> list[list[int]]:
    """Prompt plus the reference's own answer: the text a deployment would actually produce."""
    sequences = []
    for example, answer in zip(examples, answers):
        prompt = _prompt_ids(tokenizer, example)
        sequences.append(prompt + tokenizer(answer, add_special_tokens=False)["input_ids"])
    return sequences


def _logprobs(model, sequence: list[int], device: str):
    import torch

    ids = torch.tensor([sequence], device=device)
    with torch.inference_mode():
        return torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), dim=-1).cpu()


def capture_reference(model, sequences: list[list[int]], device: str, k: int = TOP_K) -> ReferenceTopK:
    top_ids, top_logprobs = [], []
    for sequence in sequences:
        values, indices = _logprobs(model, sequence, device).topk(k, dim=-1)
        top_ids.append(indices)
        top_logprobs.append(values)
    return ReferenceTopK(sequences, top_ids, top_logprobs)


@dataclass(frozen=True)
class Fidelity:
    kl_mean: float
    kl_p95: float
    top1_agreement: float
    per_sequence_top1: list[float]


def fidelity(model, reference: ReferenceTopK, device: str) -> Fidelity:
    """KL(reference || candidate) over top-k + rest buckets, and top-1 agreement, per position."""
    import torch

    kls, agree, per_sequence = [], [], []
    for sequence, ref_ids, ref_lp in zip(reference.sequences, reference.top_ids, reference.top_logprobs):
        cand_lp = _logprobs(model, sequence, device)
        p_top = ref_lp.exp()
        q_top_lp = cand_lp.gather(-1, ref_ids)
        p_rest = (1 - p_top.sum(-1)).clamp_min(1e-12)
        q_rest = (1 - q_top_lp.exp().sum(-1)).clamp_min(1e-12)
        kl = (p_top * (ref_lp - q_top_lp)).sum(-1) + p_rest * (p_rest.log() - q_rest.log())
        kls.append(kl.clamp_min(0.0))
        same = (cand_lp.argmax(-1) == ref_ids[:, 0]).float()
        agree.append(same)
        per_sequence.append(float(same.mean()))
    all_kl = torch.cat(kls)
    return Fidelity(
        kl_mean=float(all_kl.mean()),
        kl_p95=float(torch.quantile(all_kl, 0.95)),
        top1_agreement=float(torch.cat(agree).mean()),
        per_sequence_top1=per_sequence,
    )
