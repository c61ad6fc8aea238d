"""Task-quality metrics, a registry keyed by name (with "did you mean" for typos).

Generation metrics compare a generated text with the accepted answers; ranking metrics compare a
candidate's scores for the documents of a query with graded relevance labels. Every metric
returns a per-example value in [0, 1]; the study averages them (and, later, bootstraps them).
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from autotune.errors import AutotuneError, unknown_name_message

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = str.maketrans("", "", string.punctuation)


def normalize(text: str) -> str:
    """SQuAD-style: lower case, no punctuation, no English articles, single spaces."""
    return " ".join(_ARTICLES.sub(" ", text.lower().translate(_PUNCTUATION)).split())


def exact_match(prediction: str, answers: Sequence[str]) -> float:
    return float(any(normalize(prediction) == normalize(a) for a in answers))


def contains(prediction: str, answers: Sequence[str]) -> float:
    """1 if any normalised answer appears as whole words in the normalised prediction."""
    padded = f" {normalize(prediction)} "
    return float(any(f" {normalize(a)} " in padded for a in answers if normalize(a)))


def token_f1(prediction: str, answers: Sequence[str]) -> float:
    """Best token-overlap F1 against the accepted answers."""
    pred = normalize(prediction).split()
    best = 0.0
    for answer in answers:
        gold = normalize(answer).split()
        common = sum((Counter(pred) & Counter(gold)).values())
        if not pred or not gold or common == 0:
            best = max(best, float(pred == gold))
            continue
        precision, recall = common / len(pred), common / len(gold)
        best = max(best, 2 * precision * recall / (precision + recall))
    return best


def _ranking(scores: Sequence[float]) -> list[int]:
    # Stable: equal scores keep document order, so a constant scorer is not rewarded by luck.
    return sorted(range(len(scores)), key=lambda i: -scores[i])


def ndcg_at_k(scores: Sequence[float], relevance: Sequence[float], k: int = 10) -> float:
    """Normalised DCG with gains 2^rel - 1 and discount log2(rank + 1)."""
    if len(scores) != len(relevance):
        raise ValueError(f"{len(scores)} scores for {len(relevance)} relevance labels")

    def dcg(order: list[int]) -> float:
        return sum((2 ** relevance[i] - 1) / math.log2(rank + 2) for rank, i in enumerate(order[:k]))

    ideal = dcg(sorted(range(len(relevance)), key=lambda i: -relevance[i]))
    return dcg(_ranking(scores)) / ideal if ideal > 0 else 0.0


def mrr(scores: Sequence[float], relevance: Sequence[float]) -> float:
    """Reciprocal rank of the first relevant (label > 0) document; 0 if none is relevant."""
    for rank, i in enumerate(_ranking(scores), start=1):
        if relevance[i] > 0:
            return 1.0 / rank
    return 0.0


@dataclass(frozen=True)
class Metric:
    name: str
    task: str  # "generate" | "choice" | "rerank": which examples it scores
    needs_labels: bool
    compute: Callable[..., float]
    description: str


METRICS: dict[str, Metric] = {}


def register(metric: Metric) -> Metric:
    METRICS[metric.name] = metric
    return metric


def get_metric(name: str) -> Metric:
    try:
        return METRICS[name]
    except KeyError:
        raise AutotuneError(unknown_name_message("quality metric", name, METRICS)) from None


register(Metric("exact_match", "generate", True, exact_match, "normalised generated text equals an accepted answer"))
register(Metric("contains", "generate", True, contains, "an accepted answer appears in the normalised generated text"))
register(Metric("token_f1", "generate", True, token_f1, "best token-overlap F1 with an accepted answer"))
register(Metric("choice_accuracy", "choice", True, lambda predicted, answer: float(predicted == answer),
                "the highest log-likelihood choice is the labelled answer"))
register(Metric("ndcg@10", "rerank", True, lambda scores, relevance: ndcg_at_k(scores, relevance, 10),
                "NDCG@10 of the candidate's document scores against graded labels"))
register(Metric("mrr", "rerank", True, mrr, "reciprocal rank of the first relevant document"))
register(Metric("top1_agreement", "fidelity", False, lambda share: share,
                "label-free: share of positions where the greedy next token equals the reference's"))
