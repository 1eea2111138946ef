"""Bytes per record of every fraudkit topic, as values and on a broker's disk, and what a week costs.

Run: .venv/bin/python benchmarks/bench_topic_sizes.py [--customers 5000] [--days 45] [--records 150000] [--rate 1000]

One fresh local Apache Kafka. The simulator makes --days of transactions. Card state: the online
features fold in the whole stream (more than the 30-day longest window, so every card holds the
rows a detector in steady state holds); each card's changelog record is encoded, and all of them
are produced to a compacted changelog topic (one record per card, what compaction leaves). Then
the first --records transactions, a verdict and a label for each are produced as the detector and
the generator send them (lz4, fraudkit's producer defaults). Printed per topic: value bytes per
record, log-segment bytes per record on the broker's disk, and at --rate transactions per second
the bytes per day and over the topic's default retention (one replica; multiply by
topics.replication_factor).
"""

from __future__ import annotations

import argparse
import statistics
import time
import uuid
from pathlib import Path

import msgspec
import numpy as np
from _engines import local_broker
from bench_detect import SimulatorFields

from fraudkit.config import FeaturesConfig, FraudkitConfig, SimulateConfig, load_config
from fraudkit.data.simulate import simulate_dataset
from fraudkit.detect.codec import encode_verdicts
from fraudkit.features import FeatureSpec, frame_to_transactions
from fraudkit.features.online import OnlineFeatures
from fraudkit.schema import Label, Transaction, encode
from fraudkit.state.codec import encode_card, spec_fingerprint
from fraudkit.stream import kafka

DAY_MS = 86_400_000
BATCH = 2000


def on_disk(log_dir: Path, topic: str) -> int:
    """Bytes of the topic's log segments (every partition) on the broker's disk."""
    return sum(
        segment.stat().st_size
        for directory in log_dir.glob(f"{topic}-*")
        if directory.is_dir() and directory.name.rsplit("-", 1)[1].isdigit()
        for segment in directory.glob("*.log")
    )


def card_records(transactions: list[Transaction]) -> list[tuple[str | None, bytes]]:
    """Every card's changelog record after the whole stream (its last row's place as the offset)."""
    spec = FeatureSpec.from_config(FeaturesConfig(), SimulatorFields())
    features = OnlineFeatures(spec)
    for start in range(0, len(transactions), BATCH):
        features.transform(transactions[start : start + BATCH])
    features.expire(transactions[-1].event_time_ms)
    last = {tx.card_id: (index, tx) for index, tx in enumerate(transactions)}
    fingerprint = spec_fingerprint(spec)
    records = []
    for card_id in features.card_ids():
        state = features.export_card(card_id)
        if state is not None:
            index, tx = last[card_id]
            records.append(
                (card_id, encode_card(fingerprint, index, (tx.event_time_ms, tx.transaction_id), state))
            )
    return records


def produce_stream(config: FraudkitConfig, transactions: list[Transaction]) -> dict[str, int]:
    """Transactions, their verdicts and labels on their topics; returns value bytes per topic."""
    topics = config.topics
    producer = kafka.make_producer(config)
    values = {topics.transactions: 0, topics.verdicts: 0, topics.labels: 0}
    rng = np.random.default_rng(7)
    now = int(time.time() * 1000)
    for start in range(0, len(transactions), BATCH):
        batch = [
            msgspec.structs.replace(tx, produced_ms=now + start) for tx in transactions[start : start + BATCH]
        ]
        scores = (rng.random(len(batch)) ** 4).tolist()  # mostly low, as a detector's scores are
        verdicts = encode_verdicts(
            batch, scores, [False] * len(batch), {}, 0.731, "v12", now + start, now + start + 7, "detect-0"
        )
        for tx, verdict in zip(batch, verdicts, strict=True):
            label = Label(
                tx.transaction_id,
                tx.event_time_ms,
                0,
                card_id=tx.card_id,
                terminal_id=tx.terminal_id,
                labelled_ms=tx.event_time_ms + 7 * DAY_MS,
            )
            for topic, value in (
                (topics.transactions, encode(tx)),
                (topics.verdicts, verdict),
                (topics.labels, encode(label)),
            ):
                kafka.produce(producer, topic, value, key=tx.card_id)
                values[topic] += len(value)
        producer.poll(0)
    kafka.flush(producer, 120)
    return values


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--customers", type=int, default=5000)
    parser.add_argument("--days", type=int, default=45)
    parser.add_argument("--records", type=int, default=150_000)
    parser.add_argument(
        "--rate", type=float, default=1000.0, help="transactions per second for the sizes per day"
    )
    args = parser.parse_args()
    frame = simulate_dataset(
        SimulateConfig(customers=args.customers, terminals=2 * args.customers, days=args.days, seed=42)
    ).sort_values(["event_time_ms", "transaction_id"], kind="mergesort")
    transactions = frame_to_transactions(frame)
    records = card_records(transactions)
    sizes = [len(value) for _, value in records]
    defaults = FraudkitConfig().topics
    with local_broker("kafka") as handle:
        suffix = uuid.uuid4().hex[:6]
        config = load_config(
            None,
            {
                "kafka.common.bootstrap.servers": handle.bootstrap_servers,
                "topics.transactions": f"size-tx-{suffix}",
                "topics.verdicts": f"size-verdicts-{suffix}",
                "topics.labels": f"size-labels-{suffix}",
            },
            environ={},
        )
        topics = config.topics
        kafka.ensure_topics(config, [topics.transactions, topics.verdicts, topics.labels])
        changelog = f"size-changelog-{suffix}"
        kafka.ensure_changelog(config, changelog, topics.transactions_partitions)
        producer = kafka.make_producer(config)
        for card_id, value in records:
            kafka.produce(producer, changelog, value, key=card_id)
        kafka.flush(producer, 120)
        stream = transactions[: args.records]
        values = produce_stream(config, stream)
        time.sleep(2)  # the last batches reach the segment files
        log_dir = handle.nodes[0].data_dir / "log"
        disk = {topic: on_disk(log_dir, topic) for topic in [*values, changelog]}
    seen = frame["card_id"].nunique()
    print(
        f"card state after {args.days} event days, {args.customers:,} customers: {len(records):,} cards "
        f"(of {seen:,} seen); record value mean {statistics.mean(sizes):,.0f} B, median "
        f"{statistics.median(sizes):,.0f} B, p99 {np.percentile(sizes, 99):,.0f} B; "
        f"{disk[changelog] / len(records):,.0f} B per card on disk (lz4, compacted: one record per card)"
    )
    per_day = args.rate * 86_400
    print(
        f"\nper topic, {len(stream):,} records each; per day at {args.rate:,.0f} tx/s = {per_day / 1e6:,.1f} M records:"
    )
    print("topic         value B/record  disk B/record  disk per day  default retention  disk over it")
    retention = {
        topics.transactions: ("transactions", defaults.retention_ms),
        topics.verdicts: ("verdicts", defaults.retention_ms),
        topics.labels: ("labels", defaults.labels_retention_ms),
    }
    for topic, (name, retention_ms) in retention.items():
        per_record = disk[topic] / len(stream)
        days = retention_ms / DAY_MS
        print(
            f"{name:13s} {values[topic] / len(stream):14,.0f} {per_record:14,.0f} "
            f"{per_record * per_day / 1e9:10,.1f} GB {days:14,.0f} days {per_record * per_day * days / 1e9:9,.0f} GB"
        )
    print(
        f"changelog: {disk[changelog] / len(records) * 1e6 / 1e9:,.2f} GB per million active cards after compaction "
        f"(retention {defaults.changelog_retention_ms / DAY_MS:,.0f} days, compact,delete)"
    )


if __name__ == "__main__":
    main()
