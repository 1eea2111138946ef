"""One consumed batch → decoded transactions → features → scores (and rules) → encoded verdicts."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from fraudkit.detect.codec import decode_batch, encode_verdicts, too_large
from fraudkit.detect.holder import ModelHolder
from fraudkit.detect.hooks import DetectExtension
from fraudkit.detect.settings import DetectSettings
from fraudkit.schema import Transaction
from fraudkit.stream.clock import StreamClock

if TYPE_CHECKING:
    from fraudkit.stream.kafka import KafkaError, Message

# Fraud rows are explained (a backward pass); cap the cost of a pathological all-fraud batch.
MAX_EXPLAINED_PER_BATCH = 500


def now_ms() -> int:
    """Wall-clock epoch milliseconds (verdict and delivery times)."""
    return time.time_ns() // 1_000_000


@dataclass
class ScoredBatch:
    """One consumed batch, scored and encoded, ready to be produced."""

    messages: list[Message]
    offsets: dict[int, int]
    transactions: list[Transaction]
    good: list[int]
    bad: list[tuple[int, str]]
    scores: list[float]
    frauds: list[bool]
    verdicts: list[bytes]
    model_version: str
    verdict_ms: int
    produced_ms: list[int]  # of the transactions that carry one: end-to-end latency starts there
    # Messages (by index) whose outputs the broker refused as too large: dead-lettered instead.
    refused: dict[int, str] = field(default_factory=dict)


def score_batch(
    messages: list[Message],
    holder: ModelHolder,
    settings: DetectSettings,
    clock: StreamClock,
    extensions: Sequence[DetectExtension],
    on_consumer_error: Callable[[KafkaError], None],
) -> ScoredBatch | None:
    """Decode, featurise and score a batch; None when it held only consumer errors."""
    consumed_ms = now_ms()
    usable: list[Message] = []
    values: list[bytes | None] = []
    offsets: dict[int, int] = {}
    oversized: list[tuple[Message, str]] = []
    max_bytes = settings.max_message_bytes
    message: Any
    for message in messages:
        error = message.error()
        if error is None:
            offsets[message.partition()] = message.offset() + 1
            value = message.value()
            key = message.key()
            # The key travels with every copy: it counts towards the limit too.
            size = 0 if value is None else len(value)
            if key is not None:
                size += len(key)
            if size > max_bytes:
                oversized.append((message, too_large(size, max_bytes)))
                continue
            usable.append(message)
            values.append(value)
        else:
            on_consumer_error(error)
    if not usable and not oversized:
        return None
    transactions, good, bad = decode_batch(values, max_bytes)
    for message, reason in oversized:
        bad.append((len(usable), reason))
        usable.append(message)
    model = holder.model
    rule_outcome = None
    if transactions:
        features = holder.features.transform(transactions)
        scores_array = np.asarray(model.score(features), dtype=np.float64)
        fraud_array = scores_array >= model.threshold
        if holder.rules is not None:
            rule_outcome = holder.rules.apply(transactions, features, holder.spec.names, fraud_array)
            if rule_outcome is not None:
                fraud_array = rule_outcome.fraud
        reasons: dict[int, list[dict[str, Any]]] = {}
        flagged = np.flatnonzero(fraud_array)
        if flagged.size and settings.reasons > 0:
            explained = flagged[:MAX_EXPLAINED_PER_BATCH]
            codes = model.explain(features[explained], settings.reasons)
            reasons = dict(zip(explained.tolist(), codes, strict=True))
        for extension in extensions:
            extension.on_batch_scored(features, transactions, scores_array, model.version)
        scores = scores_array.tolist()
        frauds = fraud_array.tolist()
        clock.observe([tx.event_time_ms for tx in transactions])
    else:
        scores, frauds, reasons = [], [], {}
    verdict_ms = now_ms()
    verdicts = encode_verdicts(
        transactions,
        scores,
        frauds,
        reasons,
        model.threshold,
        model.version,
        consumed_ms,
        verdict_ms,
        settings.instance_id,
        rule_outcome,
    )
    produced_ms = [produced for produced in (tx.produced_ms for tx in transactions) if produced is not None]
    return ScoredBatch(
        usable,
        offsets,
        transactions,
        good,
        bad,
        scores,
        frauds,
        verdicts,
        model.version,
        verdict_ms,
        produced_ms,
    )
