"""The label feed: every detector reads every label (terminal fraud rates need all of them) and applies
it to the feature state, the live quality figures and the extensions."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from fraudkit.detect.holder import ModelHolder
from fraudkit.detect.hooks import DetectExtension
from fraudkit.detect.settings import DetectSettings, DetectSummary
from fraudkit.detect.status import LiveQuality
from fraudkit.errors import BrokerError
from fraudkit.schema import InvalidMessage, Label, decode_label

if TYPE_CHECKING:
    from fraudkit.stream.kafka import Consumer

# Labels applied per poll after a batch: few enough that the next messages do not wait long for
# them (5,000 at once held the loop 15-20 ms at 5,000 tx/s: measured per iteration), and at least
# twice the batch's size, so they keep up with a label for every transaction. After a turn without
# transactions (and while catching up) as many as LABELS_PER_IDLE_POLL.
LABELS_PER_POLL = 500
LABELS_PER_IDLE_POLL = 5000


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
        # The next offset of each labels partition consumed so far (what a label snapshot covers).
        self.positions: dict[int, int] = {}
        self.catch_up_partitions: list[int] = []

    def open(self) -> None:
        """Assign every labels partition: where saved label state ends (an extension's
        `restore_labels`), else from the beginning (warm labels) or the end."""
        from fraudkit.stream import kafka

        consumer = self.consumer
        topic = self.settings.topics.labels
        try:
            metadata = consumer.list_topics(topic, timeout=10)
        except kafka.KafkaException as exc:
            raise BrokerError(f"cannot read metadata of topic {topic!r}: {exc}") from None
        partitions = sorted(metadata.topics[topic].partitions) if topic in metadata.topics else []
        start = kafka.OFFSET_BEGINNING if self.settings.labels_from_beginning else kafka.OFFSET_END
        offsets: dict[int, int] | None = None
        for extension in self.extensions:
            offsets = extension.restore_labels(self.holder.features, partitions) or offsets
        self.positions.update(offsets or {})
        # Read to the end before the first batch only where we know where we start from.
        self.catch_up_partitions = partitions if (offsets or self.settings.labels_from_beginning) else []
        # The labels topic is partitioned independently of the transactions this detector owns.
        consumer.assign([kafka.TopicPartition(topic, p, (offsets or {}).get(p, start)) for p in partitions])

    def catch_up(self, stop: threading.Event, note: Callable[[str], None]) -> None:
        """Before the first batch, read the labels topic to its end (deadline: the delivery timeout).

        Otherwise a (re)started detector would score its first batches before it had read labels
        an uninterrupted detector already knew: terminal fraud rates, and so verdicts, would differ.
        """
        if not self.catch_up_partitions:
            return
        from fraudkit.stream import kafka

        consumer = self.consumer
        topic = self.settings.topics.labels
        try:
            asked_by = time.monotonic() + 10
            ends = {
                p: kafka.watermarks(consumer, kafka.TopicPartition(topic, p), asked_by)[1]
                for p in self.catch_up_partitions
            }
        except kafka.KafkaException as exc:
            note(f"cannot read the end offsets of {topic} ({exc.args[0].str()}); not catching up")
            return
        timeout_s = self.settings.delivery_timeout_s
        deadline = time.monotonic() + timeout_s
        positions = self.positions
        while any(end > 0 and positions.get(p, -1) < end for p, end in ends.items()):
            if time.monotonic() >= deadline or stop.is_set():
                note(f"{topic} not read to its end within {timeout_s:g}s; scoring starts anyway")
                return
            self.poll(timeout_s=0.2)

    def poll(self, timeout_s: float = 0.0, after_batch: int = 0) -> None:
        """Apply labels fetched so far (waiting up to timeout_s for the first); after_batch: the size
        of the batch just scored (0: none), which bounds how many (LABELS_PER_POLL)."""
        limit = max(LABELS_PER_POLL, 2 * after_batch) if after_batch else LABELS_PER_IDLE_POLL
        messages = self.consumer.consume(limit, timeout_s)
        if not messages:
            return
        labels: list[Label] = []
        positions = self.positions
        message: Any
        for message in messages:
            if message.error() is not None:
                continue
            positions[message.partition()] = message.offset() + 1
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
