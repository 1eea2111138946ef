"""Sink throughput: the database write path alone, and end to end from a local broker per engine.

    .venv/bin/python benchmarks/bench_sink.py [--rows 200000] [--url postgresql://...] [--engines kafka,tansu]

Without --url (or $FRAUDKIT_TEST_POSTGRES_URL) it starts a throw-away local PostgreSQL server.

Prints rows/s of `Database.write_batch` (COPY into a temp table + INSERT ... ON CONFLICT) next to a
baseline measured in the same run (psycopg executemany of INSERT ... ON CONFLICT DO NOTHING), then
rows/s of `run_sink` consuming verdicts from a local broker into the same database, measured from
the first written batch to the last (group join and the idle wait left out), next to the broker
alone in the same run: a plain consumer of a fresh group reading the same verdict topic in batches
of --batch-size with no processing, measured the same way (first batch to last).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import time
import uuid
from typing import Any

import psycopg
from _engines import add_engines_argument, chosen_engines, local_broker

from fraudkit import schema
from fraudkit.config import FraudkitConfig, load_config
from fraudkit.storage.database import VERDICT_FIELDS, open_database
from fraudkit.storage.localpg import running_postgres
from fraudkit.storage.sink import SinkOptions, SinkSummary, run_sink, verdict_row
from fraudkit.stream import kafka

DEFAULT_URL = os.environ.get("FRAUDKIT_TEST_POSTGRES_URL")
EVENT_MS = 1_770_000_000_000


def verdict(index: int) -> dict[str, Any]:
    score = (index * 7919 % 1000) / 1000
    return {
        "schema": 1,
        "transaction_id": f"bench-{index:09d}",
        "card_id": f"card{index % 5000}",
        "terminal_id": f"term{index % 10000}",
        "score": score,
        "decision": "fraud" if score > 0.98 else "legit",
        "threshold": 0.98,
        "model_version": "v1",
        "reasons": [{"feature": "amount", "value": 3.2, "contribution": 0.5}] if score > 0.98 else [],
        "event_time_ms": EVENT_MS + index * 100,
        "produced_ms": EVENT_MS + index,
        "consumed_ms": EVENT_MS + index + 3,
        "verdict_ms": EVENT_MS + index + 9,
        "amount": round(5 + (index % 997) * 0.37, 2),
        "currency": "EUR",
        "country": "FR",
        "merchant_category": "5411",
        "detector": "bench",
    }


def drop(url: str, table: str) -> None:
    if url.startswith("postgresql"):
        with psycopg.connect(url, autocommit=True) as connection:
            connection.execute(f"DROP TABLE IF EXISTS {table}, {table}_labels")


def write_path(url: str, rows: list[tuple[Any, ...]], batch_size: int) -> float:
    table = f"bench_{uuid.uuid4().hex[:10]}"
    db = open_database(url, table, f"{table}_labels")
    try:
        db.ensure_schema()
        started = time.perf_counter()
        for start in range(0, len(rows), batch_size):
            db.write_batch(rows[start : start + batch_size], [])
        elapsed = time.perf_counter() - started
        db.close()
        return len(rows) / elapsed
    finally:
        db.close()
        drop(url, table)


def baseline_executemany(url: str, rows: list[tuple[Any, ...]], batch_size: int) -> float:
    table = f"bench_{uuid.uuid4().hex[:10]}"
    db = open_database(url, table, f"{table}_labels")
    db.ensure_schema()
    db.close()
    columns = ", ".join(VERDICT_FIELDS)
    marks = ", ".join("%s" for _ in VERDICT_FIELDS)
    sql = f"INSERT INTO {table} ({columns}) VALUES ({marks}) ON CONFLICT (transaction_id) DO NOTHING"
    try:
        with psycopg.connect(url) as connection:
            started = time.perf_counter()
            for start in range(0, len(rows), batch_size):
                with connection.cursor() as cursor:
                    cursor.executemany(sql, rows[start : start + batch_size])
                connection.commit()
            return len(rows) / (time.perf_counter() - started)
    finally:
        drop(url, table)


def plain_consumer(config: FraudkitConfig, count: int, batch_size: int) -> float:
    """Messages/s of a fresh group reading `count` verdicts in batches, no processing, first to last batch."""
    consumer = kafka.make_consumer(config, f"{config.sink.group_id}-plain")
    consumer.subscribe([config.topics.verdicts])
    marks: list[tuple[float, int]] = []
    read = 0
    deadline = time.monotonic() + 120
    try:
        while read < count and time.monotonic() < deadline:
            messages = consumer.consume(batch_size, 1.0)
            read += sum(1 for message in messages if message.error() is None)
            if messages:
                marks.append((time.perf_counter(), read))
    finally:
        consumer.close()
    if read < count or len(marks) < 2:
        raise SystemExit(f"plain consumer read {read:,} of {count:,} verdicts in {len(marks)} batch(es)")
    (first_time, first_read), (last_time, last_read) = marks[0], marks[-1]
    return (last_read - first_read) / (last_time - first_time)


def end_to_end(url: str, count: int, batch_size: int, engine: str) -> tuple[float, float, SinkSummary]:
    table = f"bench_{uuid.uuid4().hex[:10]}"
    suffix = uuid.uuid4().hex[:8]
    with local_broker(engine) as handle:
        bootstrap = handle.bootstrap_servers
        config = load_config(
            None,
            {
                "kafka.common.bootstrap.servers": bootstrap,
                "topics.verdicts": f"bench-verdicts-{suffix}",
                "topics.labels": f"bench-labels-{suffix}",
                "sink.url": url,
                "sink.table": table,
                "sink.labels_table": f"{table}_labels",
                "sink.group_id": f"bench-sink-{suffix}",
                "sink.batch_size": batch_size,
            },
            environ={},
        )
        kafka.ensure_topics(config, [config.topics.verdicts, config.topics.labels])
        producer = kafka.make_producer(config)
        for index in range(count):
            data = verdict(index)
            kafka.produce(producer, config.topics.verdicts, schema.encode(data), data["card_id"])
        kafka.flush(producer, 120)
        plain = plain_consumer(config, count, batch_size)
        marks: list[tuple[float, int]] = []

        def on_batch(summary: SinkSummary) -> None:
            marks.append((time.perf_counter(), summary.verdicts))

        try:
            summary = run_sink(config, SinkOptions(until_idle_s=3.0), on_batch=on_batch)
        finally:
            drop(url, table)
    (first_time, first_rows), (last_time, last_rows) = marks[0], marks[-1]
    return (last_rows - first_rows) / (last_time - first_time), plain, summary


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--batch-size", type=int, default=5000)
    parser.add_argument(
        "--url", default=DEFAULT_URL, help="PostgreSQL URL (default: start a throw-away local server)"
    )
    parser.add_argument("--skip-end-to-end", action="store_true")
    add_engines_argument(parser)
    args = parser.parse_args()
    with contextlib.ExitStack() as stack:
        if args.url is None:
            args.url = stack.enter_context(running_postgres())
            print(f"started a local PostgreSQL at {args.url}")
        measure(args)


def measure(args: argparse.Namespace) -> None:
    """The write path, its baseline, SQLite, then broker -> sink -> PostgreSQL per engine."""
    started = time.perf_counter()
    rows = [verdict_row(verdict(i)) for i in range(args.rows)]
    convert = args.rows / (time.perf_counter() - started)
    print(f"verdict -> row conversion: {convert:,.0f} rows/s")
    copy_rate = write_path(args.url, rows, args.batch_size)
    base_rate = baseline_executemany(args.url, rows, args.batch_size)
    print(f"write path, COPY + INSERT ON CONFLICT ({args.url.split('@')[-1]}): {copy_rate:,.0f} rows/s")
    print(f"baseline, executemany INSERT ON CONFLICT:              {base_rate:,.0f} rows/s")
    print(f"ratio COPY / executemany: {copy_rate / base_rate:.2f}x")
    sqlite_path = f"/tmp/fraudkit-bench-{uuid.uuid4().hex[:8]}.db"
    try:
        print(
            f"write path, SQLite ({sqlite_path}): {write_path(f'sqlite:///{sqlite_path}', rows, args.batch_size):,.0f} rows/s"
        )
    finally:
        for suffix in ("", "-wal", "-shm"):
            if os.path.exists(sqlite_path + suffix):
                os.remove(sqlite_path + suffix)
    if not args.skip_end_to_end:
        for engine in chosen_engines(args):
            rate, plain, summary = end_to_end(args.url, args.rows, args.batch_size, engine)
            print(
                f"end to end, {engine} broker -> sink -> PostgreSQL: {rate:,.0f} rows/s "
                f"({summary.inserted:,} rows in {summary.batches} batches)"
            )
            print(
                f"baseline, the {engine} broker alone: a plain consumer read the same verdicts in "
                f"batches of {args.batch_size:,}, no processing: {plain:,.0f} messages/s"
            )
            print(f"ratio sink / plain consumer: {rate / plain:.2f}")


if __name__ == "__main__":
    main()
