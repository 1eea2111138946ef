"""Fraud-detection metrics: ROC AUC, average precision, card precision@k per day, thresholds."""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

DAY_MS = 86_400_000


def _arrays(labels: Any, scores: Any) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(labels).astype(np.int64, copy=False).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"labels and scores differ in length ({y.size} != {s.size})")
    return y, s


def _descending_thresholds(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cumulative true/false positives at each distinct score, highest score first (ties grouped)."""
    order = np.argsort(-s, kind="mergesort")
    s_sorted = s[order]
    y_sorted = y[order]
    # The last index of each run of equal scores: everything up to it is predicted positive.
    distinct = np.flatnonzero(np.diff(s_sorted)) if s_sorted.size else np.array([], dtype=np.int64)
    ends = np.r_[distinct, s_sorted.size - 1] if s_sorted.size else distinct
    true_pos = np.cumsum(y_sorted)[ends]
    false_pos = (ends + 1) - true_pos
    return true_pos.astype(np.float64), false_pos.astype(np.float64), s_sorted[ends]


def roc_auc(labels: Any, scores: Any) -> float:
    """Area under the ROC curve (ties count one half); NaN when only one class is present."""
    y, s = _arrays(labels, scores)
    positives = int(y.sum())
    negatives = y.size - positives
    if positives == 0 or negatives == 0:
        return math.nan
    # Mann-Whitney U with average ranks for ties.
    order = np.argsort(s, kind="mergesort")
    s_sorted = s[order]
    ranks = np.empty(s.size, dtype=np.float64)
    boundaries = np.r_[0, np.flatnonzero(np.diff(s_sorted)) + 1, s.size]
    for start, stop in itertools.pairwise(boundaries):
        ranks[order[start:stop]] = (start + stop + 1) / 2.0
    rank_sum = ranks[y == 1].sum()
    return float((rank_sum - positives * (positives + 1) / 2.0) / (positives * negatives))


def average_precision(labels: Any, scores: Any) -> float:
    """Step-wise average precision, sum over thresholds of (R_n - R_{n-1}) * P_n; NaN without fraud."""
    y, s = _arrays(labels, scores)
    positives = int(y.sum())
    if positives == 0:
        return math.nan
    true_pos, false_pos, _ = _descending_thresholds(y, s)
    precision = true_pos / (true_pos + false_pos)
    recall = true_pos / positives
    recall_steps = np.diff(np.r_[0.0, recall])
    return float(np.sum(recall_steps * precision))


def precision_recall_curve(labels: Any, scores: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision, recall and the threshold (score >= threshold) at each distinct score, high to low."""
    y, s = _arrays(labels, scores)
    true_pos, false_pos, thresholds = _descending_thresholds(y, s)
    positives = max(int(y.sum()), 1)
    precision = true_pos / np.maximum(true_pos + false_pos, 1.0)
    return precision, true_pos / positives, thresholds


def roc_curve(labels: Any, scores: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """False positive rate, true positive rate and thresholds, starting at (0, 0)."""
    y, s = _arrays(labels, scores)
    true_pos, false_pos, thresholds = _descending_thresholds(y, s)
    positives = max(int(y.sum()), 1)
    negatives = max(int(y.size - y.sum()), 1)
    return (
        np.r_[0.0, false_pos / negatives],
        np.r_[0.0, true_pos / positives],
        np.r_[np.inf, thresholds],
    )


@dataclass(frozen=True)
class ThresholdMetrics:
    """Confusion-matrix figures of the decision `score >= threshold`."""

    threshold: float
    precision: float
    recall: float
    f1: float
    true_positives: int
    false_positives: int
    false_negatives: int


def precision_recall_f1(labels: Any, scores: Any, threshold: float) -> ThresholdMetrics:
    """Precision, recall and F1 of flagging every score >= threshold (0 where undefined)."""
    y, s = _arrays(labels, scores)
    flagged = s >= threshold
    true_pos = int(np.sum(flagged & (y == 1)))
    false_pos = int(np.sum(flagged & (y == 0)))
    false_neg = int(np.sum(~flagged & (y == 1)))
    precision = true_pos / (true_pos + false_pos) if true_pos + false_pos else 0.0
    recall = true_pos / (true_pos + false_neg) if true_pos + false_neg else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return ThresholdMetrics(float(threshold), precision, recall, f1, true_pos, false_pos, false_neg)


@dataclass
class CardPrecision:
    """Card precision@k: the mean over days and each day's figure."""

    k: int
    mean: float
    days: list[int] = field(default_factory=list)
    per_day: list[float] = field(default_factory=list)
    compromised_per_day: list[int] = field(default_factory=list)


def card_precision_at_k(
    card_ids: Any, event_time_ms: Any, labels: Any, scores: Any, k: int = 100
) -> CardPrecision:
    """Daily card precision@k (Fraud Detection Handbook): cards caught on earlier days are removed.

    Each day a card's score is the maximum over its transactions and it counts as fraudulent if
    any of them is; the k highest-scoring cards are checked, precision is divided by k, and the
    fraudulent cards among them are excluded from later days (already blocked).
    """
    if k <= 0:
        raise ValueError("k must be > 0")
    y, s = _arrays(labels, scores)
    cards = np.asarray(card_ids, dtype=object).ravel()
    days = np.asarray(event_time_ms, dtype=np.int64).ravel() // DAY_MS
    if cards.size != y.size or days.size != y.size:
        raise ValueError("card ids, event times, labels and scores differ in length")
    result = CardPrecision(k=k, mean=math.nan)
    if y.size == 0:
        return result
    card_codes, _ = _factorize(cards)
    caught = np.zeros(int(card_codes.max()) + 1, dtype=bool)
    day_order = np.argsort(days, kind="mergesort")
    day_values, day_starts = np.unique(days[day_order], return_index=True)
    day_stops = np.r_[day_starts[1:], y.size]
    for day, start, stop in zip(day_values, day_starts, day_stops, strict=True):
        rows = day_order[start:stop]
        rows = rows[~caught[card_codes[rows]]]
        day_cards = card_codes[rows]
        uniques, inverse = np.unique(day_cards, return_inverse=True)
        card_score = np.full(uniques.size, -np.inf)
        np.maximum.at(card_score, inverse, s[rows])
        card_fraud = np.zeros(uniques.size, dtype=np.int64)
        np.maximum.at(card_fraud, inverse, y[rows])
        # Highest score first, ties broken by card for a reproducible ranking.
        top = np.lexsort((uniques, -card_score))[:k]
        detected = uniques[top][card_fraud[top] == 1]
        result.days.append(int(day))
        result.per_day.append(detected.size / k)
        result.compromised_per_day.append(int(card_fraud.sum()))
        caught[detected] = True
    result.mean = float(np.mean(result.per_day))
    return result


def _factorize(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    as_text = np.array([str(v) for v in values], dtype=object)
    uniques, codes = np.unique(as_text, return_inverse=True)
    return codes.astype(np.int64), uniques


def threshold_for_precision(labels: Any, scores: Any, target_precision: float) -> float:
    """The lowest threshold whose precision reaches the target (most recall); else the best-F1 one."""
    y, s = _arrays(labels, scores)
    if y.size == 0:
        return 0.5
    precision, recall, thresholds = precision_recall_curve(y, s)
    reaching = np.flatnonzero(precision >= target_precision)
    if reaching.size:
        return float(thresholds[reaching[-1]])
    f1 = np.where(precision + recall > 0, 2 * precision * recall / np.maximum(precision + recall, 1e-12), 0)
    return float(thresholds[int(np.argmax(f1))])


def threshold_for_budget(card_ids: Any, event_time_ms: Any, scores: Any, cards_per_day: int) -> float:
    """The threshold that alerts on about `cards_per_day` cards per day on average."""
    s = np.asarray(scores, dtype=np.float64).ravel()
    if s.size == 0:
        return 0.5
    cards = np.asarray(card_ids, dtype=object).ravel()
    days = np.asarray(event_time_ms, dtype=np.int64).ravel() // DAY_MS
    card_codes, _ = _factorize(cards)
    # One score per (day, card): the card's highest score that day, as an alert is per card.
    keys = days * (int(card_codes.max()) + 1) + card_codes
    unique_keys, inverse = np.unique(keys, return_inverse=True)
    card_day_score = np.full(unique_keys.size, -np.inf)
    np.maximum.at(card_day_score, inverse, s)
    budget = cards_per_day * np.unique(days).size
    if budget >= card_day_score.size:
        return float(card_day_score.min())
    return float(np.sort(card_day_score)[::-1][budget - 1])
