"""The cost of durable state on the hot path, and how fast a partition's cards are restored.

Run: .venv/bin/python benchmarks/bench_state.py [--transactions 200000] [--customers 5000] [--rounds 2]
     [--commit-interval-ms 250]

One fresh local Apache Kafka. --transactions simulated transactions are pre-loaded into a
6-partition topic; the same MLP as bench_detect ([64, 32], full simulator feature spec) scores
them all, alternately with durable state off (`state.enabled: false`) and on (card state
changelogged with every batch), each round with a fresh consumer group (and, for "on", a fresh
changelog topic), --rounds times, in the same run. Throughput is over each detector's processing
time; the cost is 1 - on/off of the medians.

Restore: a fresh detector joins the group of the last "on" round (nothing left to consume), so all
six partitions are assigned to it and their cards restored from the changelog before it polls;
it prints cards restored, the time and cards per second, and the changelog's records and bytes.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from _engines import local_broker
from bench_detect import bench_config, preload, publish_mlp, simulated_transactions

from fraudkit.detect import run_detect
from fraudkit.state.store import changelog_topic
from fraudkit.stream import kafka


def with_group(config: Any, state: bool) -> Any:
    suffix = uuid.uuid4().hex[:6]
    return config.model_copy(
        update={
            "detect": config.detect.model_copy(update={"group_id": f"{config.detect.group_id}-{suffix}"}),
            "state": config.state.model_copy(
                update={"enabled": state, "changelog_topic": f"{config.topics.transactions}.state-{suffix}"}
            ),
        }
    )


def changelog_size(config: Any) -> tuple[int, int]:
    """Records and value bytes in the changelog (read to the end of every partition)."""
    topic = changelog_topic(config)
    reader = kafka.make_reader(config, **{"enable.partition.eof": True})
    partitions = kafka.list_topics(config)[topic]
    reader.assign([kafka.TopicPartition(topic, p, kafka.OFFSET_BEGINNING) for p in range(partitions)])
    records = size = 0
    ended: set[int] = set()
    deadline = time.monotonic() + 120
    try:
        while len(ended) < partitions and time.monotonic() < deadline:
            for message in reader.consume(10_000, 0.5):
                error = message.error()
                if error is not None:
                    if error.code() == kafka.KafkaError._PARTITION_EOF:
                        ended.add(message.partition() or 0)
                    continue
                records += 1
                size += len(message.value() or b"")
    finally:
        reader.close()
    return records, size


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--transactions", type=int, default=200_000)
    parser.add_argument("--customers", type=int, default=5_000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--commit-interval-ms",
        type=float,
        default=None,
        help="state.commit_interval_ms of the 'on' rounds (default: the config default, per batch)",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="fraudkit-bench-state-") as work, local_broker("kafka") as handle:
        workdir = Path(work)
        overrides: dict[str, Any] = {"state.snapshot_url": str(workdir / "state")}
        if args.commit_interval_ms is not None:
            overrides["state.commit_interval_ms"] = args.commit_interval_ms
        config = bench_config(handle.bootstrap_servers, workdir, **overrides)
        print(
            f"simulating {args.transactions:,} transactions of {args.customers:,} customers ...", flush=True
        )
        transactions = simulated_transactions(args.transactions, customers=args.customers)
        version = publish_mlp(config, transactions)
        kafka.ensure_topics(config)
        preload(config, transactions)
        print(f"pre-loaded {len(transactions):,}; model {version}", flush=True)
        rates: dict[bool, list[float]] = {False: [], True: []}
        last_on = config
        for round_number in range(1, args.rounds + 1):
            for state in (False, True):
                run_config = with_group(config, state)
                summary = run_detect(run_config, max_transactions=len(transactions), until_idle_s=30)
                rates[state].append(summary.throughput_per_s)
                extra = ""
                if state:
                    last_on = run_config
                    extra = f"; {summary.state['changelog_records']:,} changelog records"
                print(
                    f"round {round_number}, state {'on ' if state else 'off'}: {summary.consumed:,} in "
                    f"{summary.processing_s:.2f}s = {summary.throughput_per_s:,.0f} tx/s{extra}",
                    flush=True,
                )
        off, on = statistics.median(rates[False]), statistics.median(rates[True])
        print(f"throughput (median of {args.rounds}): state off {off:,.0f} tx/s, on {on:,.0f} tx/s")
        print(f"hot-path cost of durable state: {100 * (1 - on / off):.1f}% (goal: under 15%)")

        records, size = changelog_size(last_on)
        restorer = run_detect(last_on, until_idle_s=2, instance_id="restorer")
        figures = restorer.state
        cards = figures["restored_cards"]
        seconds = figures["restore_s"]
        print(
            f"restore: {cards:,} cards of {figures['restores']} assignment(s) in {seconds:.2f}s = "
            f"{cards / seconds if seconds else 0:,.0f} cards/s, from {records:,} changelog records "
            f"({size / 1e6:.1f} MB, {size / max(records, 1):,.0f} bytes per record before compaction)"
        )


if __name__ == "__main__":
    main()
