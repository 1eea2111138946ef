"""Extension hooks into the scoring loop (live retraining, rules, telemetry plug in here)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from fraudkit.config import FraudkitConfig
from fraudkit.detect.holder import ModelHolder
from fraudkit.schema import Label, Transaction

LogCallback = Callable[[str], None]


@dataclass
class DetectContext:
    """What an extension gets at start: the config, the model holder and the loop's identity."""

    config: FraudkitConfig
    holder: ModelHolder
    instance_id: str
    stop: threading.Event
    log: LogCallback


class DetectExtension:
    """Hooks into the scoring loop, all called on the loop's thread; keep them fast (hand heavy work off).

    Arrays passed to hooks belong to the loop: copy what you keep.
    """

    def on_start(self, context: DetectContext) -> None:
        """Before the first batch."""

    def between_batches(self) -> None:
        """Before each consume, just before `ModelHolder.swap()` (e.g. poll a control topic)."""

    def on_batch_scored(
        self,
        features: np.ndarray,
        transactions: Sequence[Transaction],
        scores: np.ndarray,
        model_version: str,
    ) -> None:
        """After a batch was scored (features row i belongs to transactions[i])."""

    def on_labels(self, labels: Sequence[Label]) -> None:
        """Labels just consumed from the labels topic (already applied to the feature state)."""

    def on_stop(self) -> None:
        """After the loop ended and the last batch was committed."""
