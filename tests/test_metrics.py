"""Quality metrics against values computed by hand, and proof that each can score a wrong answer low."""

from __future__ import annotations

import math

import pytest

from autotune.errors import AutotuneError
from autotune.measure.metrics import METRICS, contains, exact_match, get_metric, mrr, ndcg_at_k, normalize, token_f1


def test_normalize() -> None:
    assert normalize("  The Eiffel-Tower, in PARIS! ") == "eiffeltower in paris"


def test_exact_match_and_contains() -> None:
    assert exact_match("The Paris.", ["paris"]) == 1.0
    assert exact_match("Paris, France", ["paris"]) == 0.0
    assert contains("The capital of France is Paris.", ["paris"]) == 1.0
    assert contains("Comparison", ["paris"]) == 0.0  # whole words only
    assert contains("London", ["Paris", "paris city"]) == 0.0


def test_token_f1_by_hand() -> None:
    # pred {cat, sat}, gold {cat, sat, down}: P = 1, R = 2/3, F1 = 0.8
    assert token_f1("the cat sat", ["a cat sat down"]) == pytest.approx(0.8)
    assert token_f1("the cat sat", ["dog", "cat sat"]) == pytest.approx(1.0)  # best answer counts
    assert token_f1("a dog ran", ["cat sat"]) == 0.0


def test_ndcg_by_hand() -> None:
    # order [0, 1, 2]: DCG = 0 + 1/log2(3) + 3/log2(4); ideal [2, 1, 0]: 3 + 1/log2(3)
    dcg = 1 / math.log2(3) + 3 / 2
    ideal = 3 + 1 / math.log2(3)
    assert ndcg_at_k([3, 2, 1], [0, 1, 2]) == pytest.approx(dcg / ideal)
    assert ndcg_at_k([1, 2, 3], [0, 1, 2]) == pytest.approx(1.0)
    assert ndcg_at_k([3, 2, 1], [0, 1, 2], k=1) == 0.0
    assert ndcg_at_k([1, 1], [0, 0]) == 0.0


def test_constant_scores_are_not_rewarded_by_luck() -> None:
    # A broken reranker that scores everything alike keeps document order: the relevant last one stays last.
    assert ndcg_at_k([0.5, 0.5, 0.5], [0, 0, 2]) == pytest.approx(3 / 2 / 3)
    assert mrr([0.5, 0.5, 0.5], [0, 0, 1]) == pytest.approx(1 / 3)


def test_mrr_by_hand() -> None:
    assert mrr([0.1, 0.9, 0.5], [0, 0, 1]) == 0.5
    assert mrr([0.1, 0.9, 0.5], [0, 1, 1]) == 1.0
    assert mrr([0.1, 0.9], [0, 0]) == 0.0


def test_registry_names_and_typos() -> None:
    assert {"exact_match", "contains", "token_f1", "choice_accuracy", "ndcg@10", "mrr"} <= set(METRICS)
    assert get_metric("choice_accuracy").compute("B", "B") == 1.0
    assert get_metric("choice_accuracy").compute("A", "B") == 0.0
    with pytest.raises(AutotuneError, match=r"did you mean 'ndcg@10'"):
        get_metric("ndcg")
