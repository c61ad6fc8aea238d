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
from autotune.measure.prompting import Prompt, Prompter

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


# ------------------------------------------------------------------------------ task quality


def _pad_id(tokenizer) -> int | None:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def generate_answers(model, prompter: Prompter, examples: Sequence[Example], device: str) -> list[str]:
    """Greedy answers, one example at a time (batching would pad, and quality must not depend on
    batch size: it is measured once per load-key and input resolution)."""
    import torch

    tokenizer = prompter.tokenizer
    answers = []
    for example in examples:
        prompt = prompter.example(example)
        with torch.inference_mode():
            out = model.generate(**prompt.model_inputs(device), max_new_tokens=MAX_ANSWER_TOKENS, do_sample=False,
                                 pad_token_id=_pad_id(tokenizer))
        answers.append(tokenizer.decode(out[0, len(prompt.ids):], skip_special_tokens=True))
    return answers


def choice_loglik(model, prompter: Prompter, example: Example, device: str) -> list[float]:
    """Sum of log-probabilities of each choice's tokens after the prompt."""
    import torch

    prompt = prompter.example(example)
    scores = []
    for choice in example.choices:
        cont = prompter.text_ids(" " + choice)
        with torch.inference_mode():
            logits = model(**prompt.extended(cont).model_inputs(device)).logits[0, :-1]
        logprobs = torch.log_softmax(logits.float(), dim=-1)
        positions = range(len(prompt.ids) - 1, len(prompt.ids) - 1 + len(cont))
        scores.append(float(sum(logprobs[p, t] for p, t in zip(positions, cont))))
    return scores


def rerank_scores(model, prompter: Prompter, example: Example, device: str) -> list[float]:
    """P(yes) / (P(yes) + P(no)) for each document of the query, one document at a time (no
    padding: quality must not depend on the batch size). Image documents are shown as images."""
    import torch

    from autotune.vision import yes_no_ids

    yes, no = yes_no_ids(prompter.tokenizer, 1 << 30)
    scores = []
    for document in example.documents:
        prompt = prompter.rerank(example.query, document, example.document_type, example.line)
        with torch.inference_mode():
            logits = model(**prompt.model_inputs(device), logits_to_keep=1).logits[0, -1]
        scores.append(float(torch.softmax(logits[[yes, no]].float(), dim=-1)[0]))
    return scores


def ranking_text(scores: Sequence[float]) -> str:
    """A ranking as text ("2>0>1"): two loads agree on a query when they rank its documents alike."""
    return ">".join(str(i) for i in sorted(range(len(scores)), key=lambda i: -scores[i]))


def task_scores(model, prompter: Prompter, examples: Sequence[Example], metric_name: str, device: str) -> tuple[list[float], list[str]]:
    """Per-example scores in [0, 1] and the generated answers (empty strings for choice examples)."""
    metric = get_metric(metric_name)
    generated_examples = [e for e in examples if e.kind == "generate"]
    generated = iter(generate_answers(model, prompter, generated_examples, device)) if metric.task == "generate" else iter(())
    scores, texts = [], []
    for example in examples:
        if example.kind == "choice":
            ll = choice_loglik(model, prompter, example, device)
            picked = example.choices[max(range(len(ll)), key=ll.__getitem__)]
            scores.append(float(picked == example.answer))
            texts.append("")
        elif example.kind == "generate" and metric.task == "generate":
            text = next(generated)
            scores.append(metric.compute(text, example.accepted_answers))
            texts.append(text)
        elif example.kind == "rerank":
            doc_scores = rerank_scores(model, prompter, example, device)
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


@dataclass(frozen=True)
class FidelityItem:
    """One teacher-forced sequence, rebuilt by every load from the validation set: example
    `example` (document `document` of a reranking example) followed by `continuation`, the
    reference's own answer tokens. `tail`: compare only the last `tail` positions (those that
    predict the answer and what follows it), for prompts with visual input, whose prompt length
    changes with the input resolution; None compares every position of a text prompt."""

    example: int
    continuation: tuple[int, ...] = ()
    document: int | None = None
    tail: int | None = None


def fidelity_items(examples: Sequence[Example], answers: dict[int, list[int]], docs_per_query: int = 2) -> list[FidelityItem]:
    """Prompt plus the reference's answer for generated examples (the text a deployment would
    actually produce); the first documents of each query for reranking examples."""
    items = []
    for index, example in enumerate(examples):
        visual = bool(example.images or example.video)
        if example.kind == "generate" and index in answers:
            cont = tuple(answers[index])
            items.append(FidelityItem(index, cont, tail=len(cont) + 1 if visual else None))
        elif example.kind == "rerank":
            image_docs = example.document_type == "image"
            items += [FidelityItem(index, document=d, tail=1 if image_docs else None) for d in range(min(docs_per_query, len(example.documents)))]
    return items


def fidelity_prompts(prompter: Prompter, examples: Sequence[Example], items: Sequence[FidelityItem]) -> list[Prompt]:
    prompts = []
    for item in items:
        example = examples[item.example]
        if item.document is not None:
            prompt = prompter.rerank(example.query, example.documents[item.document], example.document_type, example.line)
        else:
            prompt = prompter.example(example)
        prompts.append(prompt.extended(list(item.continuation)))
    return prompts


@dataclass
class ReferenceTopK:
    """What the reference load predicted on the fixed sequences: per compared position, top-k ids
    and log-probs; `tails` says which positions (see FidelityItem.tail)."""

    tails: list[int | None]
    top_ids: list  # per sequence: LongTensor [positions, k]
    top_logprobs: list  # per sequence: FloatTensor [positions, k]


def _as_prompt(sequence: Prompt | list[int]) -> Prompt:
    return sequence if isinstance(sequence, Prompt) else Prompt(list(sequence))


def _logprobs(model, prompt: Prompt, tail: int | None, device: str):
    """Log-probabilities at the compared positions: every next-token prediction inside a text
    sequence, or the last `tail` predictions (the final one is what follows the sequence)."""
    import torch

    with torch.inference_mode():
        logits = model(**prompt.model_inputs(device)).logits[0]
    rows = logits[:-1] if tail is None else logits[-tail:]
    return torch.log_softmax(rows.float(), dim=-1).cpu()


def capture_reference(model, sequences: Sequence[Prompt | list[int]], device: str, k: int = TOP_K,
                      tails: Sequence[int | None] | None = None) -> ReferenceTopK:
    tails = list(tails) if tails is not None else [None] * len(sequences)
    top_ids, top_logprobs = [], []
    for sequence, tail in zip(sequences, tails):
        values, indices = _logprobs(model, _as_prompt(sequence), tail, device).topk(k, dim=-1)
        top_ids.append(indices)
        top_logprobs.append(values)
    return ReferenceTopK(tails, top_ids, top_logprobs)


@dataclass(frozen=True)
class Fidelity:
    kl_mean: float
    kl_p95: float
    top1_agreement: float
    per_sequence_top1: list[float]


def fidelity(model, reference: ReferenceTopK, sequences: Sequence[Prompt | list[int]], device: str) -> Fidelity:
    """KL(reference || candidate) over top-k + rest buckets, and top-1 agreement, per position.
    `sequences` are this load's own prompts for the reference's items (same text, visual part at
    this candidate's resolution)."""
    import torch

    kls, agree, per_sequence = [], [], []
    for sequence, tail, ref_ids, ref_lp in zip(sequences, reference.tails, reference.top_ids, reference.top_logprobs):
        cand_lp = _logprobs(model, _as_prompt(sequence), tail, device)
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


# ------------------------------------------------------------------------------ the reference file

REFERENCE_FILE = "reference.safetensors"  # in the output directory
_REFERENCE_FORMAT = "autotune.quality-reference/1"
_META_KEY = "autotune"


@dataclass(frozen=True)
class SavedReference:
    """What the reference load leaves for the others: its top-k predictions on the fixed sequences,
    the sequences (items), and its per-example scores and answers."""

    reference: ReferenceTopK
    items: list[FidelityItem]
    scores: list[float]
    texts: list[str]


def save_reference(path, reference: ReferenceTopK, items: Sequence[FidelityItem], scores: Sequence[float],
                   texts: Sequence[str]) -> None:
    """Safetensors: the top-k tensors as tensors, everything else as JSON in the header's metadata.
    Reading it back parses data and never unpickles, so a tampered file in an output directory
    cannot run code. Written to a temporary file and renamed: a reader sees a whole file or none."""
    import json
    from pathlib import Path

    from safetensors.torch import save

    from autotune.atomic import atomic_write_bytes

    path = Path(path)
    tensors = {}
    for i, (ids, logprobs) in enumerate(zip(reference.top_ids, reference.top_logprobs, strict=True)):
        tensors[f"top_ids.{i}"] = ids.detach().cpu().contiguous()
        tensors[f"top_logprobs.{i}"] = logprobs.detach().cpu().contiguous()
    meta = {
        "format": _REFERENCE_FORMAT,
        "sequences": len(reference.top_ids),
        "tails": list(reference.tails),
        "items": [{"example": it.example, "continuation": list(it.continuation), "document": it.document, "tail": it.tail}
                  for it in items],
        "scores": [float(s) for s in scores],
        "texts": list(texts),
    }
    atomic_write_bytes(path, save(tensors, metadata={_META_KEY: json.dumps(meta)}))


def _int_or_none(value, minimum: int = 0) -> bool:
    return value is None or (type(value) is int and value >= minimum)


def load_reference(path) -> SavedReference:
    """The reference file, checked whole; ValueError when it is not one that save_reference wrote
    (tampered, truncated, an old pickled reference.pt) or does not hang together."""
    import json

    import torch
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta_text = (f.metadata() or {}).get(_META_KEY)
            tensors = {name: f.get_tensor(name) for name in f.keys()}
        meta = json.loads(meta_text) if meta_text is not None else None
    except Exception as e:  # SafetensorError, OSError, JSONDecodeError: not a reference we wrote
        raise ValueError(f"{path} is not a quality reference ({type(e).__name__}: {str(e)[:200]})") from e

    def check(ok: bool, what: str) -> None:
        if not ok:
            raise ValueError(f"{path} is not a consistent quality reference: {what}")

    check(isinstance(meta, dict) and meta.get("format") == _REFERENCE_FORMAT, "no autotune reference metadata")
    n = meta.get("sequences")
    check(type(n) is int and n >= 0, "sequence count")
    check(set(tensors) == {f"{kind}.{i}" for kind in ("top_ids", "top_logprobs") for i in range(n)}, "tensor names")
    tails, raw_items, scores, texts = meta.get("tails"), meta.get("items"), meta.get("scores"), meta.get("texts")
    check(isinstance(tails, list) and len(tails) == n and all(_int_or_none(t, 1) for t in tails), "tails")
    check(isinstance(raw_items, list) and len(raw_items) == n, "items")
    items = []
    for raw, tail in zip(raw_items, tails):
        check(isinstance(raw, dict) and set(raw) == {"example", "continuation", "document", "tail"}, "item fields")
        check(type(raw["example"]) is int and raw["example"] >= 0 and _int_or_none(raw["document"])
              and raw["tail"] == tail and isinstance(raw["continuation"], list)
              and all(type(t) is int and t >= 0 for t in raw["continuation"]), "item values")
        items.append(FidelityItem(raw["example"], tuple(raw["continuation"]), raw["document"], raw["tail"]))
    check(isinstance(scores, list) and all(type(s) in (int, float) and math.isfinite(s) for s in scores), "scores")
    check(isinstance(texts, list) and len(texts) == len(scores) and all(isinstance(t, str) for t in texts), "texts")
    top_ids = [tensors[f"top_ids.{i}"] for i in range(n)]
    top_logprobs = [tensors[f"top_logprobs.{i}"] for i in range(n)]
    for ids, logprobs in zip(top_ids, top_logprobs):
        check(ids.dtype == torch.int64 and ids.dim() == 2 and logprobs.is_floating_point() and logprobs.shape == ids.shape,
              "tensor shapes or types")
    return SavedReference(ReferenceTopK(list(tails), top_ids, top_logprobs), items, [float(s) for s in scores], list(texts))


def reference_readable(path) -> bool:
    """Whether the reference file exists and is whole; one that is not is measured again."""
    try:
        load_reference(path)
    except (ValueError, OSError):
        return False
    return True
