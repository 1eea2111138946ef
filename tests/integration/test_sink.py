"""`fraudkit sink` through the real broker into SQLite and the real PostgreSQL, including kill -9 and restart."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pytest
import yaml
from typer.testing import CliRunner

from fraudkit import schema
from fraudkit.cli import app
from fraudkit.config import FraudkitConfig, config_as_dict
from fraudkit.storage.database import open_database
from fraudkit.storage.sink import label_row, verdict_row
from fraudkit.stream import kafka

runner = CliRunner()
EVENT_MS = 1_770_000_000_000


def verdict(index: int, score: float = 0.1) -> dict[str, Any]:
    return {
        "schema": 1,
        "transaction_id": f"tx{index:06d}",
        "card_id": f"card{index % 50}",
        "terminal_id": f"term{index % 20}",
        "score": score,
        "decision": "fraud" if score >= 0.5 else "legit",
        "threshold": 0.5,
        "model_version": "v1",
        "reasons": [{"feature": "amount", "value": 1.5, "contribution": 0.2}] if score >= 0.5 else [],
        "event_time_ms": EVENT_MS + index * 1000,
        "produced_ms": EVENT_MS + index,
        "consumed_ms": EVENT_MS + index + 3,
        "verdict_ms": EVENT_MS + index + 8,
        "amount": 10.0 + index % 100,
        "currency": "EUR",
        "country": "FR",
        "merchant_category": "5411",
        "detector": "d1",
    }


def label(index: int, value: int) -> schema.Label:
    return schema.Label(
        f"tx{index:06d}",
        EVENT_MS + index * 1000,
        value,
        f"card{index % 50}",
        f"term{index % 20}",
        EVENT_MS + 86_400_000,
        "stolen_card" if value else "",
    )


def produce_verdicts(
    config: FraudkitConfig, indexes: list[int], labelled: dict[int, int] | None = None
) -> None:
    producer = kafka.make_producer(config)
    tracker = kafka.DeliveryTracker()
    for index in indexes:
        data = verdict(index, 0.9 if index % 10 == 0 else 0.1)
        kafka.produce(
            producer,
            config.topics.verdicts,
            schema.encode(data),
            data["card_id"],
            on_delivery=tracker.callback,
        )
    for index, value in (labelled or {}).items():
        item = label(index, value)
        kafka.produce(
            producer, config.topics.labels, schema.encode(item), item.card_id, on_delivery=tracker.callback
        )
    kafka.flush(producer)
    tracker.check()


def write_config(config: FraudkitConfig, tmp_path: Path) -> Path:
    path = tmp_path / "fraudkit.yaml"
    path.write_text(yaml.safe_dump(config_as_dict(config, mask_secrets=False)))
    return path


# -- backends ------------------------------------------------------------------------------------


class Backend:
    """A database under test: its URL, a row counter and clean-up."""

    def __init__(self, url: str, table: str, count: Callable[[str], list[tuple[Any, ...]]]) -> None:
        self.url = url
        self.table = table
        self.labels_table = f"{table}_labels"
        self.query = count

    def count(self) -> int:
        try:
            return int(self.query(f"SELECT COUNT(*) FROM {self.table}")[0][0])
        except (sqlite3.Error, psycopg.Error):
            return 0  # the sink has not created the table yet


def sqlite_backend(tmp_path: Path) -> Backend:
    path = tmp_path / "predictions.db"

    def query(sql: str) -> list[tuple[Any, ...]]:
        with sqlite3.connect(path, timeout=30) as connection:
            return connection.execute(sql).fetchall()

    return Backend(f"sqlite:///{path}", "fraud_predictions", query)


@pytest.fixture
def postgres_backend(postgres_url: str) -> Iterator[Backend]:
    table = f"fp_{uuid.uuid4().hex[:12]}"

    def query(sql: str) -> list[tuple[Any, ...]]:
        with psycopg.connect(postgres_url) as connection:
            return connection.execute(sql).fetchall()

    yield Backend(postgres_url, table, query)
    with psycopg.connect(postgres_url, autocommit=True) as connection:
        connection.execute(f"DROP TABLE IF EXISTS {table}, {table}_labels, {table}_dead")


def configure(config: FraudkitConfig, backend: Backend, **sink: Any) -> FraudkitConfig:
    values = {"url": backend.url, "table": backend.table, "labels_table": backend.labels_table, **sink}
    return config.model_copy(update={"sink": config.sink.model_copy(update=values)})


# -- tests ---------------------------------------------------------------------------------------


@pytest.mark.kafka
def test_sink_to_sqlite_commits_offsets_after_writing(kafka_config: FraudkitConfig, tmp_path: Path) -> None:
    backend = sqlite_backend(tmp_path)
    config = configure(kafka_config, backend, batch_size=100)
    kafka.ensure_topics(config, [config.topics.verdicts, config.topics.labels])
    # 300 verdicts, 40 of them delivered twice (a detector re-run), labels for the first 100.
    produce_verdicts(config, list(range(300)) + list(range(40)), {i: int(i % 10 == 0) for i in range(100)})
    producer = kafka.make_producer(config)
    kafka.produce(producer, config.topics.verdicts, b"garbage", "x")
    kafka.produce(producer, config.topics.verdicts, orjson.dumps({"schema": 1, "score": 0.3}), "x")
    kafka.flush(producer)

    result = runner.invoke(
        app, ["sink", "-c", str(write_config(config, tmp_path)), "--until-idle", "1.5", "--json"]
    )
    assert result.exit_code == 0, result.output + result.stderr
    summary = orjson.loads(result.stdout)
    assert (summary["messages"], summary["verdicts"], summary["labels"], summary["invalid"]) == (
        442,
        340,
        100,
        2,
    )
    assert summary["inserted"] == 300 and summary["duplicates"] == 40 and summary["stopped_by"] == "idle"
    assert backend.count() == 300
    assert backend.query("SELECT COUNT(*), SUM(label) FROM fraud_predictions WHERE label IS NOT NULL") == [
        (100, 10)
    ]
    assert backend.query(
        "SELECT score, decision, reasons, fraud_scenario FROM fraud_predictions WHERE transaction_id = 'tx000010'"
    ) == [(0.9, "fraud", '[{"feature":"amount","value":1.5,"contribution":0.2}]', "stolen_card")]

    consumer = kafka.make_consumer(config, config.sink.group_id)
    try:
        for topic in (config.topics.verdicts, config.topics.labels):
            committed = consumer.committed(
                [kafka.TopicPartition(topic, p) for p in range(config.topics.partitions)], timeout=10
            )
            reader = kafka.make_reader(config)
            reader.assign(
                [
                    kafka.TopicPartition(topic, p, kafka.OFFSET_BEGINNING)
                    for p in range(config.topics.partitions)
                ]
            )
            ends: dict[int, int] = {}
            deadline = time.monotonic() + 10
            expected = 342 if topic == config.topics.verdicts else 100
            while (
                sum(ends.get(p, 0) for p in range(config.topics.partitions)) < expected
                and time.monotonic() < deadline
            ):
                for message in reader.consume(500, 0.2):
                    partition, offset = message.partition(), message.offset()
                    if message.error() is None and partition is not None and offset is not None:
                        ends[partition] = offset + 1
            reader.close()
            assert {tp.partition: tp.offset for tp in committed if tp.offset >= 0} == ends
    finally:
        consumer.close()


def run_until_killed(config_path: Path, backend: Backend, at_least: int) -> int:
    """Start `python -m fraudkit sink`, kill -9 it once `at_least` rows are stored; return the count then."""
    process = subprocess.Popen(
        [sys.executable, "-m", "fraudkit", "sink", "-c", str(config_path), "--until-idle", "30"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 90
        while backend.count() < at_least and time.monotonic() < deadline and process.poll() is None:
            time.sleep(0.02)
        assert process.poll() is None, (
            f"sink exited early: {process.stderr.read().decode() if process.stderr else ''}"
        )
        os.kill(process.pid, signal.SIGKILL)
        process.wait(10)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
    return backend.count()


def kill_and_restart(config: FraudkitConfig, backend: Backend, tmp_path: Path) -> None:
    kafka.ensure_topics(config, [config.topics.verdicts, config.topics.labels])
    first = list(range(6000))
    produce_verdicts(config, first, {i: int(i % 10 == 0) for i in range(0, 6000, 3)})
    path = write_config(config, tmp_path)
    stored_at_kill = run_until_killed(path, backend, at_least=1500)
    assert stored_at_kill >= 1500
    print(f"stored at kill: {stored_at_kill}")
    # More verdicts arrive while the sink is down, some of them re-deliveries of stored ones.
    second = list(range(6000, 7000)) + list(range(0, 7000, 7))
    produce_verdicts(config, second, {i: 1 for i in range(6000, 7000, 50)})

    result = runner.invoke(app, ["sink", "-c", str(path), "--until-idle", "2", "--json"])
    assert result.exit_code == 0, result.output + result.stderr
    distinct = set(first) | set(second)
    assert backend.count() == len(distinct) == 7000
    assert backend.query(f"SELECT COUNT(DISTINCT transaction_id) FROM {backend.table}") == [(7000,)]
    labels_expected = len(range(0, 6000, 3)) + len(range(6000, 7000, 50))
    assert backend.query(f"SELECT COUNT(*) FROM {backend.table} WHERE label IS NOT NULL") == [
        (labels_expected,)
    ]
    summary = orjson.loads(result.stdout)
    assert summary["inserted"] == 7000 - stored_at_kill


@pytest.mark.kafka
@pytest.mark.slow
def test_kill_and_restart_sqlite(kafka_config: FraudkitConfig, tmp_path: Path) -> None:
    backend = sqlite_backend(tmp_path)
    kill_and_restart(configure(kafka_config, backend, batch_size=250, poll_timeout_s=0.1), backend, tmp_path)


@pytest.mark.kafka
@pytest.mark.slow
@pytest.mark.postgres
def test_kill_and_restart_postgres(
    kafka_config: FraudkitConfig, postgres_backend: Backend, tmp_path: Path
) -> None:
    config = configure(kafka_config, postgres_backend, batch_size=250, poll_timeout_s=0.1)
    kill_and_restart(config, postgres_backend, tmp_path)


@pytest.mark.postgres
def test_postgres_batches_are_idempotent_in_a_schema(postgres_url: str) -> None:
    schema_name = f"fk_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(postgres_url, autocommit=True) as connection:
        connection.execute(f"CREATE SCHEMA {schema_name}")
    try:
        db = open_database(postgres_url, f"{schema_name}.predictions", f"{schema_name}.labels")
        db.ensure_schema()
        first = [verdict_row(verdict(i, 0.9 if i == 2 else 0.1)) for i in (1, 2, 3, 2)]
        result = db.write_batch(first, [label_row(schema.encode(label(5, 1)))])
        assert (result.inserted, result.duplicates, result.labels) == (3, 1, 1)
        result = db.write_batch(
            [verdict_row(verdict(i)) for i in (3, 4, 5)],
            [label_row(schema.encode(label(i, i % 2))) for i in (1, 2)],
        )
        assert (result.inserted, result.duplicates) == (2, 1)
        rows = db.query(
            f"SELECT transaction_id, label, fraud_scenario, reasons FROM {schema_name}.predictions ORDER BY 1"
        )
        db.close()
        assert [(r[0], r[1], r[2]) for r in rows] == [
            ("tx000001", 1, "stolen_card"),
            ("tx000002", 0, ""),
            ("tx000003", None, None),
            ("tx000004", None, None),
            ("tx000005", 1, "stolen_card"),
        ]
        assert rows[1][3] == [{"feature": "amount", "value": 1.5, "contribution": 0.2}]  # stored as JSONB
    finally:
        with psycopg.connect(postgres_url, autocommit=True) as connection:
            connection.execute(f"DROP SCHEMA {schema_name} CASCADE")


@pytest.mark.postgres
def test_postgres_missing_database_is_a_clear_error(postgres_url: str, tmp_path: Path) -> None:
    base, _, _ = postgres_url.rpartition("/")
    result = runner.invoke(
        app, ["sink", "--url", f"{base}/fraudkit_no_such_db", "--set", "sink.retry_max_s=0.3"]
    )
    assert result.exit_code == 6
    assert (
        "/fraudkit_no_such_db" in result.stderr
        and 'database "fraudkit_no_such_db" does not exist' in result.stderr
    )


def sink_poison(config: FraudkitConfig, backend: Backend) -> None:
    """A NUL in a text field and labelled_ms 1e300 among good verdicts: dead-lettered, never blocking."""
    config = configure(config, backend, dead_letter_table=f"{backend.table}_dead", poll_timeout_s=0.1)
    # Apache Kafka creates no topic on first produce: the topics exist before anything is sent.
    kafka.ensure_topics(config, [config.topics.verdicts, config.topics.labels])
    produce_verdicts(config, list(range(50)), labelled={3: 1})
    nul = orjson.dumps({**verdict(900), "country": "F\x00R"})
    nul_reason = orjson.dumps(
        {**verdict(901), "reasons": [{"feature": "a\x00b", "value": 1, "contribution": 1}]}
    )
    overflow = orjson.dumps({**label(902, 1).to_dict(), "labelled_ms": 1e300})
    producer = kafka.make_producer(config)
    for topic, value in (
        (config.topics.verdicts, nul),
        (config.topics.verdicts, nul_reason),
        (config.topics.labels, overflow),
    ):
        kafka.produce(producer, topic, value, "card-bad")
    kafka.flush(producer)
    produce_verdicts(config, list(range(50, 100)))

    result = runner.invoke(
        app,
        ["sink", "--until-idle", "3", "--json"],
        env={"FRAUDKIT_CONFIG": str(write_config(config, backend_dir(config)))},
    )
    assert result.exit_code == 0, result.output
    summary = orjson.loads(result.stdout.strip().splitlines()[-1])
    assert (summary["verdicts"], summary["labels"], summary["dead_letters"]) == (100, 1, 3)
    assert backend.count() == 100
    letters = backend.query(
        f"SELECT source_topic, source_offset >= 0, reason, payload_bytes FROM {backend.table}_dead ORDER BY reason"
    )
    assert [(row[0], row[1], row[2], row[3]) for row in letters] == [
        (config.topics.verdicts, True, "country: contains a NUL character", len(nul)),
        (
            config.topics.labels,
            True,
            "labelled_ms: 1e+300 is out of range (0..9007199254740991)",
            len(overflow),
        ),
        (config.topics.verdicts, True, "reasons: contains a NUL character", len(nul_reason)),
    ]
    # Committed past them: the next run finds nothing (it used to fail on the same batch forever).
    again = runner.invoke(
        app,
        ["sink", "--until-idle", "2", "--json"],
        env={"FRAUDKIT_CONFIG": str(write_config(config, backend_dir(config)))},
    )
    assert again.exit_code == 0, again.output
    assert orjson.loads(again.stdout.strip().splitlines()[-1])["messages"] == 0


def backend_dir(config: FraudkitConfig) -> Path:
    return Path(config.registry.path).parent


@pytest.mark.kafka
def test_sink_dead_letters_poison_rows_sqlite(kafka_config: FraudkitConfig, tmp_path: Path) -> None:
    sink_poison(kafka_config, sqlite_backend(tmp_path))


@pytest.mark.kafka
@pytest.mark.postgres
def test_sink_dead_letters_poison_rows_postgres(
    kafka_config: FraudkitConfig, postgres_backend: Backend
) -> None:
    sink_poison(kafka_config, postgres_backend)


@pytest.mark.postgres
def test_postgres_refuses_a_nul_as_a_data_error_and_keeps_dead_letters(postgres_url: str) -> None:
    """The premise of row isolation: PostgreSQL's refusal of a bad row is not "unavailable" (no retry)."""
    from fraudkit.errors import DatabaseError
    from fraudkit.storage.database import DatabaseUnavailable

    table = f"fp_{uuid.uuid4().hex[:12]}"
    db = open_database(postgres_url, table, f"{table}_labels", dead_letter_table=f"{table}_dead")
    try:
        db.ensure_schema()
        good = verdict_row(verdict(1))
        bad = tuple(value.replace("FR", "F\x00R") if value == "FR" else value for value in good)
        with pytest.raises(DatabaseError) as error:
            db.write_batch([bad], [])
        assert not isinstance(error.value, DatabaseUnavailable)
        assert db.write_batch([good], []).inserted == 1  # the connection is usable after the refusal
        db.write_dead_letters([("verdicts", 0, 7, "country: contains a NUL character", 10, "excerpt")])
        db.write_dead_letters([("verdicts", 0, 7, "again", 10, "excerpt")])  # a re-delivery: no-op
        assert db.query(f"SELECT source_offset, reason FROM {table}_dead") == [
            (7, "country: contains a NUL character")
        ]
    finally:
        db.close()
        with psycopg.connect(postgres_url, autocommit=True) as connection:
            connection.execute(f"DROP TABLE IF EXISTS {table}, {table}_labels, {table}_dead")
