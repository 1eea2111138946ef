"""Fresh topics for the benchmarks: their partitions written once before anything is measured."""

from __future__ import annotations

from collections.abc import Iterable

from fraudkit.config import FraudkitConfig
from fraudkit.stream import kafka

# Readers of these topics in the benchmarks skip records that carry headers.
WARMUP_HEADERS = [("warmup", b"1")]


def warm_partitions(config: FraudkitConfig, topics: Iterable[str]) -> None:
    """One record (header warmup) in every partition of `topics`.

    On this project's machine the broker's first write to a freshly created partition stalls it for
    ~0.5 s (request handlers in OffsetIndex.append on the new index files; gone with the broker's
    data on tmpfs): a topic first written inside a measured window would put that stall there.
    """
    names = list(topics)
    metadata = kafka.make_admin(config).list_topics(timeout=30)
    producer = kafka.make_producer(config)
    for name in names:
        for partition in metadata.topics[name].partitions:
            producer.produce(name, b"{}", partition=partition, headers=WARMUP_HEADERS)
    kafka.flush(producer, 60)


def ready_messages(consumer: kafka.Consumer, timeout_s: float = 0.05) -> list[kafka.Message]:
    """Wait up to timeout_s for one message, then take what is already fetched (up to 1,000)."""
    first = consumer.consume(1, timeout_s)
    return first + consumer.consume(999, 0) if first else []
