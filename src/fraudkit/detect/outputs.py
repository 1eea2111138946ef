"""Output routing: each scored transaction to its fraud/legit branch and its verdict, each bad message to
the dead-letter topic (bounded), and the bookkeeping of what the producer or broker refused."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from orjson import loads as orjson_loads

from fraudkit.detect.codec import dead_letter
from fraudkit.detect.hooks import DetectExtension
from fraudkit.detect.scoring import ScoredBatch
from fraudkit.detect.settings import DetectSettings, DetectSummary
from fraudkit.errors import BrokerError

if TYPE_CHECKING:
    from fraudkit.stream.kafka import KafkaError, Message, Producer


def too_large_error(kafka: Any, error: KafkaError) -> bool:
    """Whether a produce error means "this message is too large" (the producer's or the broker's limit)."""
    return error.code() in (
        kafka.KafkaError.MSG_SIZE_TOO_LARGE,
        kafka.KafkaError.RECORD_LIST_TOO_LARGE,
        kafka.KafkaError.INVALID_MSG_SIZE,
    )


class OutputRouter:
    """Produces a batch's outputs; failures are counted (checked before offsets are committed)."""

    def __init__(
        self,
        producer: Producer,
        settings: DetectSettings,
        summary: DetectSummary,
        extensions: Sequence[DetectExtension] = (),
    ) -> None:
        from fraudkit.stream import kafka

        self.kafka = kafka
        self.producer = producer
        self.settings = settings
        self.topics = settings.topics
        self.summary = summary
        self.extensions = extensions
        self.delivery_errors: list[str] = []
        self.delivery_failures = 0
        # Outputs the broker refused as too large (topic, key, value, error), waiting to be dead-lettered.
        self.refused_outputs: list[tuple[str, bytes | None, bytes | None, str]] = []
        # The extensions whose part of the started seal is not produced yet (seal_step).
        self.sealing: list[DetectExtension] = []

    def route(self, batch: ScoredBatch) -> None:
        """Produce every output of a batch: dead letters, then branch copy and verdict per transaction."""
        topics = self.topics
        fraud_topic = topics.fraud
        legit_topic = topics.legit
        verdict_topic = topics.verdicts
        produce = self.producer.produce
        failed = self.delivery_failed
        messages = batch.messages
        version = batch.model_version.encode()
        refused = batch.refused
        headers: list[tuple[str, str | bytes | None]]
        message: Any
        for index, bad_error in batch.bad:
            self.dead_letter(messages[index], bad_error)
        for index, reason in refused.items():
            self.dead_letter(messages[index], reason, excerpt=True)
        kafka_exception = self.kafka.KafkaException
        for position, (transaction, score, fraud, verdict) in enumerate(
            zip(batch.transactions, batch.scores, batch.frauds, batch.verdicts, strict=True)
        ):
            index = batch.good[position]
            if refused and index in refused:
                continue
            message = messages[index]
            headers = [("score", f"{score:.6f}"), ("model_version", version)]
            branch = fraud_topic if fraud else legit_topic
            try:
                try:
                    produce(branch, message.value(), message.key(), headers=headers, on_delivery=failed)
                except BufferError:
                    self.send(branch, message.value(), message.key(), headers)
            except kafka_exception as exc:
                self._output_refused(message, branch, exc)
            try:
                try:
                    produce(verdict_topic, verdict, transaction.card_id, on_delivery=failed)
                except BufferError:
                    self.send(verdict_topic, verdict, transaction.card_id, None)
            except kafka_exception as exc:
                self._output_refused(message, verdict_topic, exc)
        if batch.transactions and self.extensions:
            # Durable state follows the outputs (fraudkit.state): noted here, produced at the seal.
            sources = [messages[index] for index in batch.good]
            for extension in self.extensions:
                extension.on_batch_produce(self.producer, batch.transactions, sources, failed)

    def seal(self) -> None:
        """Produce what extensions keep durable with the offsets about to be committed (fraudkit.state)."""
        for extension in self.extensions:
            extension.on_seal(self.producer, self.delivery_failed)

    def begin_seal(self) -> None:
        """Start a seal that `seal_step` produces in slices (at-least-once)."""
        for extension in self.extensions:
            extension.begin_seal()
        self.sealing = list(self.extensions)

    def seal_step(self, budget_s: float) -> bool:
        """Produce about budget_s of the started seal; True once every extension has produced all of it."""
        self.sealing = [
            extension
            for extension in self.sealing
            if not extension.seal_step(self.producer, self.delivery_failed, budget_s)
        ]
        return not self.sealing

    def send(self, topic: str, value: bytes | None, key: Any, headers: Any) -> None:
        """Produce one message, serving delivery reports while the local queue is full (never drop)."""
        while True:
            try:
                self.producer.produce(topic, value, key, headers=headers, on_delivery=self.delivery_failed)
                return
            except BufferError:
                self.producer.poll(0.05)

    def dead_letter(self, message: Any, reason: str, excerpt: bool = False) -> None:
        """Produce the bounded dead letter of a consumed message (an excerpt if it is too large)."""
        source = (message.topic() or "", message.partition(), message.offset())
        max_bytes = self.settings.max_message_bytes
        value, key, headers = dead_letter(message.value(), message.key(), reason, source, max_bytes, excerpt)
        try:
            self.send(self.topics.dead_letter, value, key, headers)
        except self.kafka.KafkaException as exc:
            if excerpt or not too_large_error(self.kafka, exc.args[0]):
                raise BrokerError(
                    f"cannot produce to {self.topics.dead_letter}: {exc.args[0].str()}"
                ) from None
            # Smaller than max_message_bytes but over the producer's own message.max.bytes.
            value, key, headers = dead_letter(message.value(), message.key(), reason, source, excerpt=True)
            try:
                self.send(self.topics.dead_letter, value, key, headers)
            except self.kafka.KafkaException as again:
                raise BrokerError(
                    f"cannot produce to {self.topics.dead_letter}: {again.args[0].str()}"
                ) from None

    def _output_refused(self, message: Any, topic: str, exc: Exception) -> None:
        """The producer refused an output at once: too large goes to dead letter, the rest is fatal."""
        error = exc.args[0]
        if not too_large_error(self.kafka, error):
            raise BrokerError(f"cannot produce to {topic}: {error.str()}") from None
        self.summary.dead_letters += 1
        self.dead_letter(message, f"cannot copy to {topic}: {error.str()}", excerpt=True)

    def delivery_failed(self, error: KafkaError | None, message: Message) -> None:
        """Delivery callback (failures only): too large is dead-lettered later, the rest counted."""
        if error is None:
            return
        topic = message.topic() or ""
        if topic != self.topics.dead_letter and too_large_error(self.kafka, error):
            # The broker's limit is below ours: dead-letter the message instead (see the committers).
            self.refused_outputs.append((topic, message.key(), message.value(), error.str()))
            return
        self.delivery_failures += 1
        if len(self.delivery_errors) < 5:
            self.delivery_errors.append(f"{topic}: {error.str()}")

    def forget_failures(self) -> None:
        """Start counting delivery failures afresh (a transaction that will be produced again)."""
        self.delivery_failures = 0
        self.delivery_errors = []

    def check_deliveries(self) -> None:
        """BrokerError if any output failed since the last check."""
        if self.delivery_failures:
            raise BrokerError(
                f"{self.delivery_failures} output message(s) could not be delivered "
                f"({'; '.join(self.delivery_errors)}); offsets were not committed"
            )

    def dead_letter_refused(self, unsettled: list[ScoredBatch]) -> None:
        """Dead-letter (as excerpts) the sources of the outputs the broker refused as too large."""
        refused, self.refused_outputs = self.refused_outputs, []
        done: set[int] = set()  # a message's branch copy and verdict may both be refused: one letter
        for topic, key, value, error in refused:
            source = self.source_of(unsettled, topic, key, value)
            reason = f"the broker refused the copy to {topic}: {error}"
            if source is not None:
                if id(source) in done:
                    continue
                done.add(id(source))
                self.summary.dead_letters += 1
                self.dead_letter(source, reason, excerpt=True)
            else:
                # Not found among the unsettled batches (cannot happen unless they were revoked):
                # keep what the output itself says.
                self.summary.dead_letters += 1
                excerpt_value, excerpt_key, headers = dead_letter(
                    value, key, reason, (topic, -1, -1), excerpt=True
                )
                self.send(self.topics.dead_letter, excerpt_value, excerpt_key, headers)

    def refused_sources(self, batch: ScoredBatch) -> dict[int, str]:
        """Which messages of `batch` had an output refused as too large, and why (exactly-once)."""
        refused, self.refused_outputs = self.refused_outputs, []
        found: dict[int, str] = {}
        for topic, key, value, error in refused:
            source = self.source_of([batch], topic, key, value)
            if source is not None:
                index = next(i for i, message in enumerate(batch.messages) if message is source)
                found[index] = f"the broker refused the copy to {topic}: {error}"
        return found

    def source_of(
        self, batches: list[ScoredBatch], topic: str, key: bytes | None, value: bytes | None
    ) -> Any:
        """The consumed message an output was made from, among the given batches (rare: linear)."""
        transaction_id = None
        if topic == self.topics.verdicts and value is not None:
            with contextlib.suppress(Exception):
                transaction_id = orjson_loads(value).get("transaction_id")
        for batch in reversed(batches):
            for position, index in enumerate(batch.good):
                message: Any = batch.messages[index]
                if transaction_id is not None:
                    if batch.transactions[position].transaction_id == transaction_id:
                        return message
                elif message.key() == key and message.value() == value:
                    return message
        return None
