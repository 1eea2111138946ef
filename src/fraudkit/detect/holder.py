"""The serving model and its online feature state, swapped between batches (never during one)."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from fraudkit.errors import ModelError
from fraudkit.features import FeatureSpec, OnlineFeatures

if TYPE_CHECKING:
    from fraudkit.rules.language import ActiveRules


class Scorer(Protocol):
    """What the loop needs of a model: `LoadedModel` and `RuleModel` both fit."""

    version: str
    threshold: float
    feature_names: list[str]

    def score(self, X: np.ndarray) -> np.ndarray:
        """Fraud probabilities of feature rows."""
        ...

    def explain(self, X_rows: np.ndarray, k: int = 3) -> list[list[dict[str, Any]]]:
        """Top-k reason codes per row."""
        ...


class ModelHolder:
    """The serving model and its online feature state.

    Any thread may `offer()` a replacement (a retrainer, a control-topic listener); the loop calls
    `swap()` between batches, so a batch is always scored by one model. A model with the same
    feature spec keeps the feature state; a different spec starts fresh state.
    """

    def __init__(self, model: Scorer, spec: FeatureSpec, max_cards: int | None = None) -> None:
        if list(model.feature_names) != spec.names:
            raise ModelError(f"model {model.version}: its feature names do not match the feature spec")
        self.model = model
        self.spec = spec
        self.max_cards = max_cards
        self.features = OnlineFeatures(spec, max_cards=max_cards)
        self.versions: list[str] = [model.version]
        self.swaps = 0
        self.retrains = 0
        self.last_retrain: dict[str, Any] | None = None
        self.retrain_outcomes: dict[str, int] = {}  # published / rejected / failed / cancelled, for metrics
        self._pending: tuple[Scorer, FeatureSpec] | None = None
        self._lock = threading.Lock()
        # Rules applied after scoring; installed between batches by RulesExtension (fraudkit.rules.live).
        self.rules: ActiveRules | None = None
        # The drift alarm now (set by the telemetry, read by the retraining): since when (monotonic)
        # some column is over drift.psi_threshold, and which, worst first.
        self.drifting_since: float | None = None
        self.drifting: list[str] = []

    def note_drift(self, columns: list[str], now: float) -> None:
        """The columns over the drift threshold right now (empty: none): keeps when the alarm began."""
        if not columns:
            self.drifting_since = None
        elif self.drifting_since is None:
            self.drifting_since = now
        self.drifting = list(columns)

    def offer(self, model: Scorer, spec: FeatureSpec | None = None) -> None:
        """Queue a model to serve from the next batch on (thread-safe; the latest offer wins)."""
        spec = spec or self.spec
        if list(model.feature_names) != spec.names:
            raise ModelError(f"model {model.version}: its feature names do not match the feature spec")
        with self._lock:
            self._pending = (model, spec)

    def swap(self) -> str | None:
        """Install the offered model, if any; returns its version. Called by the loop between batches."""
        if self._pending is None:
            return None
        with self._lock:
            pending, self._pending = self._pending, None
        if pending is None:
            return None
        model, spec = pending
        if spec.to_dict() != self.spec.to_dict():
            self.features = OnlineFeatures(spec, max_cards=self.max_cards)
            self.spec = spec
        self.model = model
        self.swaps += 1
        if model.version not in self.versions:
            self.versions.append(model.version)
        return model.version

    def record_retrain(self, outcome: dict[str, Any] | None = None) -> None:
        """Count one retraining run (whatever its outcome) for status and summary; keep the last outcome."""
        with self._lock:
            self.retrains += 1
            if outcome is not None:
                self.last_retrain = dict(outcome)
                kind = str(outcome.get("type", "")).removeprefix("model_").removeprefix("retrain_")
                self.retrain_outcomes[kind] = self.retrain_outcomes.get(kind, 0) + 1
