"""Label-free drift: quantile bins of the training distribution (stored in the manifest) and the
population stability index of a sliding window of live rows against them.

A column's reference is its interior quantile edges (duplicates merged, so discrete features get
fewer bins) and the share of training rows in each bin. Bin i holds values v with
edges[i-1] < v <= edges[i]; the same `bin_counts` function bins training and live rows, so both
sides treat ties and NaN alike. PSI = sum((live - train) * ln(live / train)) over the bins, with
empty bins floored at PSI_FLOOR; 0.1 is commonly read as a shift worth watching, 0.25 as drift.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

REFERENCE_FORMAT = 1
PSI_FLOOR = 1e-4
# Live rows binned per batch at most (evenly spaced): a sample is as good for a distribution over
# thousands of rows, and keeps the cost per batch flat however large the batch.
SAMPLE_PER_BATCH = 256
SCORE = "score"
MAX_REFERENCE_ROWS = 200_000


def _edges(values: np.ndarray, bins: int) -> np.ndarray:
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return np.zeros(0, dtype=np.float64)
    quantiles = np.quantile(finite.astype(np.float64), np.linspace(0, 1, bins + 1)[1:-1])
    edges = np.unique(quantiles)
    # A top edge equal to the maximum would leave the last bin empty in training: drop it.
    return edges[edges < finite.max()] if edges.size > 1 else edges


def bin_counts(columns: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Row counts per bin for each column: columns (n, m), edges (m, k) padded with +inf -> (m, k+1)."""
    m = columns.shape[1]
    width = edges.shape[1] + 1
    by_column = np.ascontiguousarray(np.asarray(columns, dtype=np.float64).T)
    counts = np.empty((m, width), dtype=np.int64)
    for j in range(m):
        # side="left": v lands in bin i when edges[i-1] < v <= edges[i]; NaN sorts past every edge.
        counts[j] = np.bincount(np.searchsorted(edges[j], by_column[j], side="left"), minlength=width)
    return counts


def _padded(edge_lists: Sequence[np.ndarray]) -> np.ndarray:
    width = max((len(e) for e in edge_lists), default=0)
    padded = np.full((len(edge_lists), width), np.inf, dtype=np.float64)
    for row, edges in enumerate(edge_lists):
        padded[row, : len(edges)] = edges
    return padded


def build_reference(
    features: np.ndarray, feature_names: Sequence[str], scores: np.ndarray | None, bins: int
) -> dict[str, Any]:
    """The manifest's `drift_reference`: per feature (and the score) quantile edges and bin shares."""
    columns = np.asarray(features, dtype=np.float64)
    names = list(feature_names)
    if scores is not None:
        columns = np.column_stack([columns, np.asarray(scores, dtype=np.float64)])
        names.append(SCORE)
    edge_lists = [_edges(columns[:, j], bins) for j in range(columns.shape[1])]
    counts = bin_counts(columns, _padded(edge_lists))
    rows = max(1, columns.shape[0])
    entries = {
        name: {
            "edges": [float(e) for e in edges],
            "proportions": [float(c) / rows for c in counts[j, : len(edges) + 1]],
        }
        for j, (name, edges) in enumerate(zip(names, edge_lists, strict=True))
    }
    score = entries.pop(SCORE, None)
    reference: dict[str, Any] = {
        "format": REFERENCE_FORMAT,
        "rows": int(columns.shape[0]),
        "bins": bins,
        "features": entries,
    }
    if score is not None:
        reference["score"] = score
    return reference


def training_reference(
    features: np.ndarray,
    feature_names: Sequence[str],
    score: Callable[[np.ndarray], np.ndarray] | None,
    bins: int,
    max_rows: int = MAX_REFERENCE_ROWS,
) -> dict[str, Any]:
    """`build_reference` over at most `max_rows` evenly spaced training rows, scored by `score`."""
    X = np.asarray(features)
    if X.shape[0] > max_rows:
        X = X[np.linspace(0, X.shape[0] - 1, max_rows).astype(np.int64)]
    scores = None if score is None or X.shape[0] == 0 else np.asarray(score(X), dtype=np.float64)
    return build_reference(X, feature_names, scores, bins)


def psi(expected: np.ndarray, actual: np.ndarray, floor: float = PSI_FLOOR) -> float:
    """Population stability index of two bin-share vectors."""
    e = np.maximum(np.asarray(expected, dtype=np.float64), floor)
    a = np.maximum(np.asarray(actual, dtype=np.float64), floor)
    return float(np.sum((a - e) * np.log(a / e)))


@dataclass
class DriftReport:
    """PSI per feature and of the score over the live window (empty until `min_rows`)."""

    rows: int = 0
    threshold: float = 0.25
    features: dict[str, float] = field(default_factory=dict)
    score: float | None = None
    model_version: str | None = None

    @property
    def drifted(self) -> list[str]:
        """Columns over the threshold, worst first (the score as "score")."""
        values = dict(self.features)
        if self.score is not None:
            values[SCORE] = self.score
        return sorted((k for k, v in values.items() if v > self.threshold), key=lambda k: -values[k])

    def to_dict(self) -> dict[str, Any]:
        """Plain data for status and JSON logs."""
        return {
            "rows": self.rows,
            "threshold": self.threshold,
            "model_version": self.model_version,
            "features": {k: round(v, 4) for k, v in self.features.items()},
            "score": None if self.score is None else round(self.score, 4),
            "drifted": self.drifted,
        }


class DriftMonitor:
    """Bins live rows batch by batch (numpy) and keeps per-batch bin counts of the last `window_rows`."""

    def __init__(
        self,
        reference: Mapping[str, Any],
        feature_names: Sequence[str],
        window_rows: int,
        min_rows: int,
        threshold: float,
        model_version: str | None = None,
    ) -> None:
        stored = reference.get("features") or {}
        self.columns = [j for j, name in enumerate(feature_names) if name in stored]
        self.names = [feature_names[j] for j in self.columns]
        entries = [stored[name] for name in self.names]
        score = reference.get("score")
        self.has_score = isinstance(score, Mapping) and bool(score.get("proportions"))
        if self.has_score:
            assert isinstance(score, Mapping)
            entries.append(score)
        self.edges = _padded([np.asarray(e.get("edges") or [], dtype=np.float64) for e in entries])
        width = self.edges.shape[1] + 1
        self.expected = np.zeros((len(entries), width), dtype=np.float64)
        self.valid = np.zeros((len(entries), width), dtype=bool)
        for row, entry in enumerate(entries):
            shares = np.asarray(entry.get("proportions") or [], dtype=np.float64)[:width]
            self.expected[row, : shares.size] = shares
            self.valid[row, : shares.size] = True
        self.window_rows = window_rows
        self.min_rows = min_rows
        self.threshold = threshold
        self.model_version = model_version
        self._batches: deque[tuple[int, np.ndarray]] = deque()
        self._totals = np.zeros_like(self.expected, dtype=np.int64)
        self.rows = 0
        self._alarmed: set[str] = set()

    @property
    def empty(self) -> bool:
        """True when the reference shares no column with the model's features."""
        return not self.names and not self.has_score

    def add(self, features: np.ndarray, scores: np.ndarray | None) -> None:
        """Bin (a sample of) one batch and slide the window."""
        total = features.shape[0]
        if self.empty or total == 0:
            return
        rows: slice | np.ndarray = slice(None)
        if total > SAMPLE_PER_BATCH:
            rows = np.linspace(0, total - 1, SAMPLE_PER_BATCH).astype(np.intp)
        sample = features[rows]
        columns = sample[:, self.columns] if self.columns else np.zeros((sample.shape[0], 0))
        if self.has_score:
            score_column = np.zeros(sample.shape[0]) if scores is None else np.asarray(scores)[rows]
            columns = np.column_stack([columns, score_column])
        counts = bin_counts(columns, self.edges)
        n = sample.shape[0]
        self._batches.append((n, counts))
        self._totals += counts
        self.rows += n
        while self._batches and self.rows - self._batches[0][0] >= self.window_rows:
            old_n, old_counts = self._batches.popleft()
            self._totals -= old_counts
            self.rows -= old_n

    def report(self) -> DriftReport:
        """PSI of every column over the window (empty before `min_rows` rows)."""
        report = DriftReport(rows=self.rows, threshold=self.threshold, model_version=self.model_version)
        if self.rows < self.min_rows or self.empty:
            return report
        shares = self._totals / float(self.rows)
        values = [
            psi(self.expected[row][self.valid[row]], shares[row][self.valid[row]])
            for row in range(self.expected.shape[0])
        ]
        report.features = dict(zip(self.names, values[: len(self.names)], strict=True))
        if self.has_score:
            report.score = values[-1]
        return report

    def alarms(self, report: DriftReport) -> list[tuple[str, str, float]]:
        """(column, "drifted" | "recovered", psi) for each column that crossed the threshold since the last call."""
        values = dict(report.features)
        if report.score is not None:
            values[SCORE] = report.score
        changes: list[tuple[str, str, float]] = []
        for name, value in values.items():
            if value > self.threshold and name not in self._alarmed:
                self._alarmed.add(name)
                changes.append((name, "drifted", value))
            elif value <= self.threshold and name in self._alarmed:
                self._alarmed.discard(name)
                changes.append((name, "recovered", value))
        return changes


def monitor_for(model: Any, settings: Any) -> DriftMonitor | None:
    """A monitor for a model whose manifest carries a `drift_reference` (None otherwise, e.g. rules)."""
    if not settings.enabled:
        return None
    manifest = getattr(model, "manifest", None) or {}
    reference = manifest.get("drift_reference") if isinstance(manifest, Mapping) else None
    if not isinstance(reference, Mapping) or reference.get("format") != REFERENCE_FORMAT:
        return None
    monitor = DriftMonitor(
        reference,
        list(model.feature_names),
        settings.window_rows,
        settings.min_rows,
        settings.psi_threshold,
        model.version,
    )
    return None if monitor.empty else monitor
