"""What the loop tells the operator about its surroundings: a broker outage as it begins and ends,
event times far ahead of the stream, and how far behind each partition it is."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from fraudkit.stream.clock import StreamClock

if TYPE_CHECKING:
    from fraudkit.stream.kafka import BrokerWatch, Consumer

NoteCallback = Callable[[str], None]


class OutageNotice:
    """Raise BrokerError once no broker has answered for kafka.connect_timeout_s; say so when it starts."""

    def __init__(self, watch: BrokerWatch, note: NoteCallback) -> None:
        self.watch = watch
        self.note = note
        self.logged = False

    def check(self) -> None:
        """One check between batches (BrokerWatch.check raises when the outage lasted too long)."""
        down = self.watch.check()
        if down is None:
            if self.logged:
                self.note(f"Kafka at {self.watch.servers} answers again")
                self.logged = False
            return
        if not self.logged:
            self.logged = True
            self.note(
                f"no broker of {self.watch.servers} answers; waiting, giving up in "
                f"{max(0.0, self.watch.timeout_s - down):.0f}s"
            )


class FarAheadNotice:
    """Says (at 1, 10, 100, ... occurrences) that far-ahead event times were kept off the clock."""

    def __init__(self, clock: StreamClock, max_future_skew_s: float, note: NoteCallback) -> None:
        self.clock = clock
        self.max_future_skew_s = max_future_skew_s
        self.note = note
        self.reported = 0

    def check(self) -> None:
        """After a batch moved the clock."""
        count = self.clock.ignored_ahead
        if count > self.reported and count >= max(1, 10 * self.reported):
            self.note(
                f"{count:,} transaction(s) dated more than detect.max_future_skew_s="
                f"{self.max_future_skew_s:g}s ahead of the stream were scored but did not advance its clock"
            )
            self.reported = count


def partition_lag(consumer: Consumer, topic: str, assigned: set[int]) -> dict[int, int] | None:
    """Messages behind the end of each assigned partition (None without partitions or on error)."""
    if not assigned:
        return None
    from fraudkit.stream import kafka

    try:
        positions = consumer.position([kafka.TopicPartition(topic, p) for p in sorted(assigned)])
        lag: dict[int, int] = {}
        for position in positions:
            _, high = consumer.get_watermark_offsets(position, cached=True)
            if position.offset >= 0 and high >= 0:
                lag[position.partition] = max(0, high - position.offset)
        return lag
    except kafka.KafkaException:
        return None
