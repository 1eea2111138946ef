"""The label feed: every detector reads every label (terminal fraud rates need all of them) and applies
it to the feature state, the live quality figures and the extensions."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from fraudkit.detect.holder import ModelHolder
from fraudkit.detect.hooks import DetectExtension
from fraudkit.detect.settings import DetectSettings, DetectSummary
from fraudkit.detect.status import LiveQuality
from fraudkit.errors import BrokerError
from fraudkit.schema import InvalidMessage, Label, decode_label

if TYPE_CHECKING:
    from fraudkit.stream.kafka import Consumer

LABELS_PER_POLL = 5000


class LabelFeed:
    """Assigns every partition of the labels topic to its own consumer and polls it between batches."""

    def __init__(
        self,
        consumer: Consumer,
        settings: DetectSettings,
        holder: ModelHolder,
        quality: LiveQuality,
        summary: DetectSummary,
        extensions: Sequence[DetectExtension],
    ) -> None:
        self.consumer = consumer
        self.settings = settings
        self.holder = holder
        self.quality = quality
        self.summary = summary
        self.extensions = extensions

    def open(self) -> None:
        """Assign every labels partition, from the beginning (warm labels) or the end."""
        from fraudkit.stream import kafka

        consumer = self.consumer
        topic = self.settings.topics.labels
        try:
            metadata = consumer.list_topics(topic, timeout=10)
        except kafka.KafkaException as exc:
            raise BrokerError(f"cannot read metadata of topic {topic!r}: {exc}") from None
        partitions = sorted(metadata.topics[topic].partitions) if topic in metadata.topics else []
        start = kafka.OFFSET_BEGINNING if self.settings.labels_from_beginning else kafka.OFFSET_END
        # The labels topic is partitioned independently of the transactions this detector owns.
        # Nothing is committed: the feature state lives in memory, so a restart re-reads what is retained.
        consumer.assign([kafka.TopicPartition(topic, p, start) for p in partitions])

    def poll(self) -> None:
        """Apply the labels fetched so far (never waits)."""
        messages = self.consumer.consume(LABELS_PER_POLL, 0)
        if not messages:
            return
        labels: list[Label] = []
        for message in messages:
            if message.error() is not None:
                continue
            try:
                labels.append(decode_label(message.value()))
            except InvalidMessage:
                self.summary.invalid_labels += 1
        if not labels:
            return
        features = self.holder.features
        observe = self.quality.observe
        for label in labels:
            features.observe_label(label)
            observe(label.transaction_id, label.label)
        self.summary.labels += len(labels)
        for extension in self.extensions:
            extension.on_labels(labels)
