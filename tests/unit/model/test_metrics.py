"""Metric maths against hand-computed values."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from fraudkit.model.metrics import (
    DAY_MS,
    average_precision,
    card_precision_at_k,
    precision_recall_f1,
    roc_auc,
    threshold_for_budget,
    threshold_for_precision,
)

LABELS = [1, 0, 1, 0, 0]
SCORES = [0.9, 0.8, 0.7, 0.6, 0.5]


def test_roc_auc_hand_computed() -> None:
    # Positives rank 5 and 3 of 5: U = 8 - 3 = 5 of 2 * 3 pairs.
    assert roc_auc(LABELS, SCORES) == pytest.approx(5 / 6)
    assert roc_auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)


def test_roc_auc_counts_ties_as_half_and_matches_pairwise_definition() -> None:
    assert roc_auc([0, 1], [0.5, 0.5]) == pytest.approx(0.5)
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 2, 200)
    scores = rng.integers(0, 10, 200) / 10  # many ties
    pos, neg = scores[labels == 1], scores[labels == 0]
    pairwise = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg))
    assert roc_auc(labels, scores) == pytest.approx(pairwise / (pos.size * neg.size))


def test_roc_auc_is_nan_with_one_class() -> None:
    assert math.isnan(roc_auc([0, 0, 0], [0.1, 0.2, 0.3]))


def test_average_precision_is_step_wise() -> None:
    # Recall steps 1/2 at precision 1 and 1/2 at precision 2/3.
    assert average_precision(LABELS, SCORES) == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
    # The classic sklearn example.
    assert average_precision([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.8333333)


def test_average_precision_groups_tied_scores() -> None:
    # One threshold covering both rows: recall 1 at precision 1/2 (no interpolation).
    assert average_precision([0, 1], [0.5, 0.5]) == pytest.approx(0.5)
    assert math.isnan(average_precision([0, 0], [0.1, 0.9]))


def test_precision_recall_f1_at_threshold_is_inclusive() -> None:
    result = precision_recall_f1(LABELS, SCORES, 0.7)
    assert (result.true_positives, result.false_positives, result.false_negatives) == (2, 1, 0)
    assert result.precision == pytest.approx(2 / 3)
    assert result.recall == pytest.approx(1.0)
    assert result.f1 == pytest.approx(0.8)
    nothing = precision_recall_f1(LABELS, SCORES, 0.95)
    assert (nothing.precision, nothing.recall, nothing.f1) == (0.0, 0.0, 0.0)


def _day(day: int, hour: int = 0) -> int:
    return day * DAY_MS + hour * 3_600_000


def test_card_precision_at_k_removes_cards_caught_on_earlier_days() -> None:
    rows = [
        # day 0: A's max score 0.9 (fraud), B 0.8 legit, C 0.1 fraud -> top 2 = A, B -> 1/2; A caught
        ("A", _day(0), 1, 0.9),
        ("A", _day(0, 5), 0, 0.2),
        ("B", _day(0), 0, 0.8),
        ("C", _day(0), 1, 0.1),
        # day 1: A (caught) is removed; C 0.7 fraud, D 0.5 legit, B 0.3 legit -> top 2 = C, D -> 1/2
        ("A", _day(1), 1, 0.99),
        ("B", _day(1), 0, 0.3),
        ("C", _day(1), 1, 0.7),
        ("D", _day(1), 0, 0.5),
    ]
    cards, times, labels, scores = zip(*rows, strict=True)
    result = card_precision_at_k(cards, times, labels, scores, k=2)
    assert result.days == [0, 1]
    assert result.per_day == [0.5, 0.5]
    assert result.compromised_per_day == [2, 1]
    assert result.mean == pytest.approx(0.5)
    # Were A not removed, day 1 would score A and C: precision 1.
    day1 = [r for r in rows if r[1] >= DAY_MS]
    cards1, times1, labels1, scores1 = zip(*day1, strict=True)
    assert card_precision_at_k(cards1, times1, labels1, scores1, k=2).per_day == [1.0]


def test_card_precision_divides_by_k_even_with_fewer_cards() -> None:
    result = card_precision_at_k(["A", "B"], [0, 0], [1, 0], [0.9, 0.1], k=4)
    assert result.per_day == [0.25]


def test_threshold_for_precision_takes_lowest_threshold_reaching_target() -> None:
    # Precision by threshold: .9 -> 1, .8 -> 1/2, .7 -> 2/3, .6 -> 1/2, .5 -> 2/5.
    assert threshold_for_precision(LABELS, SCORES, 0.6) == pytest.approx(0.7)
    assert threshold_for_precision(LABELS, SCORES, 0.9) == pytest.approx(0.9)
    assert threshold_for_precision(LABELS, SCORES, 0.4) == pytest.approx(0.5)


def test_threshold_for_precision_falls_back_to_best_f1() -> None:
    # Never reaches precision 1 (a legit row scores highest); best F1 is at 0.5 (P=2/3, R=1).
    assert threshold_for_precision([0, 1, 1], [0.9, 0.6, 0.5], 1.0) == pytest.approx(0.5)


def test_threshold_for_budget_alerts_k_cards_per_day_on_average() -> None:
    cards = ["A", "A", "B", "C", "D"]
    times = [_day(0), _day(0, 2), _day(0), _day(1), _day(1)]
    scores = [0.9, 0.95, 0.8, 0.7, 0.2]
    # Card-day maxima .95, .8, .7, .2; budget 1 card x 2 days -> the 2nd highest.
    assert threshold_for_budget(cards, times, scores, 1) == pytest.approx(0.8)
    assert threshold_for_budget(cards, times, scores, 10) == pytest.approx(0.2)
