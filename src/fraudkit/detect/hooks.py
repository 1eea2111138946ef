"""Extension hooks into the scoring loop (live retraining, rules, telemetry plug in here)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from fraudkit.config import FraudkitConfig
from fraudkit.detect.holder import ModelHolder
from fraudkit.detect.settings import DetectSummary
from fraudkit.features import OnlineFeatures
from fraudkit.schema import Label, Transaction

if TYPE_CHECKING:
    from fraudkit.stream.kafka import Consumer, Message, Producer

LogCallback = Callable[[str], None]


@dataclass
class DetectContext:
    """What an extension gets at start: the config, the model holder and the loop's identity."""

    config: FraudkitConfig
    holder: ModelHolder
    instance_id: str
    stop: threading.Event
    log: LogCallback
    # The run's summary (extensions may fill `summary.state`) and the next offset of each labels
    # partition consumed so far (what a terminal-label snapshot covers).
    summary: DetectSummary | None = None
    label_positions: dict[int, int] = field(default_factory=dict)


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

    def restore_labels(self, features: OnlineFeatures, partitions: list[int]) -> dict[int, int] | None:
        """Before the labels consumer starts: load saved label state; return where to resume per partition."""
        return None

    def on_assign(self, consumer: Consumer, partitions: list[int]) -> None:
        """Partitions of the transactions topic just assigned, before any of their messages is processed."""

    def on_revoke(self, partitions: list[int], lost: bool) -> None:
        """Partitions taken away, after their last batch was settled (not settled when `lost`)."""

    def on_batch_produce(
        self,
        producer: Producer,
        transactions: Sequence[Transaction],
        sources: Sequence[Message],
        on_delivery: Callable[..., None],
    ) -> None:
        """While a batch's outputs are produced (inside its transaction in exactly-once mode), before
        its offsets are committed; `sources[i]` is the message transactions[i] came from."""

    def on_seal(self, producer: Producer, on_delivery: Callable[..., None]) -> None:
        """Before the offsets of every batch produced so far are committed, between batches: produce
        what must be durable with them (at-least-once: once per `state.commit_interval_ms`; exactly-once:
        inside each batch's transaction). Offsets are committed once these outputs are acknowledged."""

    def begin_seal(self) -> None:
        """At-least-once: a seal starts; `seal_step` produces what it covers, in slices between batches."""

    def seal_step(self, producer: Producer, on_delivery: Callable[..., None], budget_s: float) -> bool:
        """Produce part of what `begin_seal` marked, for about budget_s; True once all of it is produced.

        Between batches, so later batches may have changed the state since `begin_seal`: what is
        produced must be the state as of now (with what it has applied), which a restore can take
        ahead of the committed offsets. The default produces everything at once (`on_seal`).
        """
        self.on_seal(producer, on_delivery)
        return True

    def on_stop(self) -> None:
        """After the loop ended and the last batch was committed."""
