"""sink's pure logic and its SQLite write path: row conversion, URLs, idempotent batches, retry, commit order."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from typer.testing import CliRunner

from fraudkit.cli import app
from fraudkit.config import FraudkitConfig
from fraudkit.errors import BrokerError, ConfigError, DatabaseError
from fraudkit.schema import InvalidMessage
from fraudkit.storage.database import (
    LABEL_ROW_FIELDS,
    VERDICT_FIELDS,
    DatabaseUnavailable,
    WriteResult,
    check_table_name,
    open_database,
    parse_url,
)
from fraudkit.storage.sink import SinkOptions, SinkRunner, label_row, verdict_row, with_retry
from fraudkit.stream.broker import free_port

runner = CliRunner()


def verdict(index: int, score: float = 0.1, **extra: Any) -> dict[str, Any]:
    data = {
        "schema": 1,
        "transaction_id": f"tx{index}",
        "card_id": f"card{index % 3}",
        "terminal_id": "term1",
        "score": score,
        "decision": "fraud" if score >= 0.5 else "legit",
        "threshold": 0.5,
        "model_version": "v1",
        "reasons": [{"feature": "amount", "value": 2.0, "contribution": 0.4}],
        "event_time_ms": 1_770_000_000_000 + index,
        "produced_ms": 1_000 + index,
        "consumed_ms": 1_002 + index,
        "verdict_ms": 1_005 + index,
        "amount": 10.5,
        "currency": "EUR",
        "country": "FR",
        "merchant_category": "5411",
        "detector": "d1",
    }
    data.update(extra)
    return data


def label(index: int, value: int, scenario: str = "") -> bytes:
    return orjson.dumps(
        {
            "schema": 1,
            "transaction_id": f"tx{index}",
            "event_time_ms": 1_770_000_000_000 + index,
            "label": value,
            "card_id": f"card{index % 3}",
            "terminal_id": "term1",
            "labelled_ms": 1_770_600_000_000,
            "fraud_scenario": scenario,
        }
    )


def rows_of(path: Path, sql: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(path) as connection:
        return connection.execute(sql).fetchall()


# -- row conversion ------------------------------------------------------------------------------


def test_verdict_row_keeps_every_field_and_serialises_reasons() -> None:
    row = dict(zip(VERDICT_FIELDS, verdict_row(verdict(7, 0.9)), strict=True))
    assert row["transaction_id"] == "tx7" and row["decision"] == "fraud" and row["score"] == 0.9
    assert row["event_time_ms"] == 1_770_000_000_007 and row["verdict_ms"] == 1_012
    assert orjson.loads(row["reasons"]) == [{"feature": "amount", "value": 2.0, "contribution": 0.4}]
    assert row["country"] == "FR" and row["merchant_category"] == "5411" and row["detector"] == "d1"


def test_verdict_row_rejects_bad_fields_by_name() -> None:
    with pytest.raises(InvalidMessage, match="transaction_id: missing"):
        verdict_row({"score": 0.3})
    with pytest.raises(InvalidMessage, match="amount: expected a number"):
        verdict_row(verdict(1, amount="lots"))
    with pytest.raises(InvalidMessage, match="verdict_ms: expected epoch milliseconds"):
        verdict_row(verdict(1, verdict_ms="soon"))
    with pytest.raises(InvalidMessage, match=r"verdict_ms: .* out of range"):
        verdict_row(verdict(1, verdict_ms=2**70))


def test_label_row() -> None:
    row = dict(zip(LABEL_ROW_FIELDS, label_row(label(3, 1, "card_testing")), strict=True))
    assert row == {
        "transaction_id": "tx3",
        "event_time_ms": 1_770_000_000_003,
        "label": 1,
        "card_id": "card0",
        "terminal_id": "term1",
        "labelled_ms": 1_770_600_000_000,
        "fraud_scenario": "card_testing",
    }
    with pytest.raises(InvalidMessage, match="label: expected 0 or 1"):
        label_row(b'{"schema": 1, "transaction_id": "x", "event_time_ms": 1770000000000, "label": 2}')
    with pytest.raises(InvalidMessage, match="schema: missing schema version"):
        label_row(b'{"transaction_id": "x", "event_time_ms": 1770000000000, "label": 1}')


# -- URLs and names ------------------------------------------------------------------------------


def test_parse_url_forms() -> None:
    assert parse_url("sqlite:///fraudkit.db").path == "fraudkit.db"
    assert parse_url("sqlite:////tmp/x/fraudkit.db").path == "/tmp/x/fraudkit.db"
    pg = parse_url("postgresql://alice:s3cret@db.example:6543/fraud")
    assert (pg.dialect, pg.host, pg.port, pg.dbname, pg.user) == (
        "postgresql",
        "db.example",
        6543,
        "fraud",
        "alice",
    )
    assert pg.describe() == (
        "PostgreSQL db.example:6543/fraud as user alice (postgresql://alice:******@db.example:6543/fraud)"
    )
    assert parse_url("postgres://h/db").url == "postgresql://h/db"


@pytest.mark.parametrize("url", ["mysql://u@h/db", "fraudkit.db", "sqlite://relative.db"])
def test_parse_url_rejects_unsupported(url: str) -> None:
    with pytest.raises(ConfigError, match=r"sink\.url"):
        parse_url(url)


def test_table_names_are_checked() -> None:
    assert check_table_name("analytics.fraud_predictions", "postgresql", "sink.table")
    for bad in ('x"; drop table y; --', "a.b", "1abc", ""):
        with pytest.raises(ConfigError, match=r"sink\.table"):
            check_table_name(bad, "sqlite", "sink.table")


# -- the SQLite write path -----------------------------------------------------------------------


def sqlite_db(tmp_path: Path, name: str = "fp") -> Any:
    db = open_database(f"sqlite:///{tmp_path / 'sink.db'}", name, f"{name}_labels")
    db.ensure_schema()
    return db


def vrows(*indexes: int, score: float = 0.1) -> list[tuple[Any, ...]]:
    return [verdict_row(verdict(i, score)) for i in indexes]


def lrows(*pairs: tuple[int, int]) -> list[tuple[Any, ...]]:
    return [label_row(label(i, value, "card_testing" if value else "")) for i, value in pairs]


def test_batches_are_idempotent_on_transaction_id(tmp_path: Path) -> None:
    db = sqlite_db(tmp_path)
    assert db.write_batch(vrows(1, 2, 3, 2), []) == WriteResult(inserted=3, duplicates=1, labels=0)
    assert db.write_batch(vrows(2, 3, 4), []) == WriteResult(inserted=1, duplicates=2, labels=0)
    db.close()
    assert rows_of(tmp_path / "sink.db", "SELECT transaction_id FROM fp ORDER BY 1") == [
        ("tx1",),
        ("tx2",),
        ("tx3",),
        ("tx4",),
    ]


def test_labels_fill_predictions_whichever_arrives_first(tmp_path: Path) -> None:
    db = sqlite_db(tmp_path)
    db.write_batch(vrows(1, 2), lrows((3, 1)))  # label of tx3 before its verdict
    db.write_batch(vrows(3), lrows((1, 0), (2, 1)))
    db.write_batch([], lrows((1, 1)))  # a corrected label wins
    db.close()
    assert rows_of(
        tmp_path / "sink.db", "SELECT transaction_id, label, fraud_scenario FROM fp ORDER BY 1"
    ) == [
        ("tx1", 1, "card_testing"),
        ("tx2", 1, "card_testing"),
        ("tx3", 1, "card_testing"),
    ]
    assert rows_of(tmp_path / "sink.db", "SELECT COUNT(*) FROM fp_labels") == [(3,)]


def test_existing_table_without_our_columns_is_refused(tmp_path: Path) -> None:
    with sqlite3.connect(tmp_path / "sink.db") as connection:
        connection.execute("CREATE TABLE fp (transaction_id TEXT PRIMARY KEY, something TEXT)")
    db = open_database(f"sqlite:///{tmp_path / 'sink.db'}", "fp", "fp_labels")
    with pytest.raises(DatabaseError, match="exists without column"):
        db.ensure_schema()


def test_report_style_read_only_open_of_a_missing_file(tmp_path: Path) -> None:
    db = open_database(f"sqlite:///{tmp_path / 'none.db'}", "fp", "fp_labels", read_only=True)
    with pytest.raises(DatabaseError, match="no database at"):
        db.connection()
    assert not (tmp_path / "none.db").exists()


# -- retry and commit order ----------------------------------------------------------------------


def test_with_retry_backs_off_then_succeeds() -> None:
    calls: list[float] = []
    waits: list[float] = []

    def flaky() -> str:
        calls.append(time.monotonic())
        if len(calls) < 3:
            raise DatabaseUnavailable("cannot connect to PostgreSQL h:5432/db")
        return "ok"

    result = with_retry(
        flaky, 10, threading.Event(), lambda exc, wait: waits.append(wait), first_delay_s=0.01
    )
    assert result == "ok" and len(calls) == 3
    assert waits == [0.01, 0.02]


def test_with_retry_gives_up_after_retry_max_s() -> None:
    def down() -> None:
        raise DatabaseUnavailable("cannot connect to PostgreSQL h:5432/db: refused")

    with pytest.raises(DatabaseError, match=r"refused \(gave up after"):
        with_retry(down, 0.05, threading.Event(), first_delay_s=0.01)


class FakeKafkaMessage:
    def __init__(self, topic: str, partition: int, offset: int, value: bytes) -> None:
        self._topic, self._partition, self._offset, self._value = topic, partition, offset, value

    def error(self) -> None:
        return None

    def topic(self) -> str:
        return self._topic

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset

    def value(self) -> bytes:
        return self._value


class FakeConsumer:
    """Hands out prepared batches and records commits."""

    def __init__(self, batches: list[list[FakeKafkaMessage]]) -> None:
        self.batches = batches
        self.commits: list[list[tuple[str, int, int]]] = []
        self.closed = False

    def consume(self, num_messages: int, timeout: float) -> list[FakeKafkaMessage]:
        if self.batches:
            return self.batches.pop(0)[:num_messages]
        time.sleep(min(timeout, 0.01))
        return []

    def commit(self, offsets: list[Any], asynchronous: bool) -> None:
        assert asynchronous is False
        self.commits.append([(tp.topic, tp.partition, tp.offset) for tp in offsets])

    def close(self) -> None:
        self.closed = True


class FlakyDatabase:
    """A real SQLite database whose first `failures` writes fail as if the server were down."""

    def __init__(self, inner: Any, failures: int, consumer: FakeConsumer) -> None:
        self.inner = inner
        self.failures = failures
        self.consumer = consumer
        self.commits_seen_at_failure: list[int] = []
        self.url = inner.url
        self.table = inner.table
        self.dead_letter_table = inner.dead_letter_table

    def ensure_schema(self) -> None:
        self.inner.ensure_schema()

    def write_batch(self, verdicts: Any, labels: Any) -> WriteResult:
        if self.failures:
            self.failures -= 1
            self.commits_seen_at_failure.append(len(self.consumer.commits))
            raise DatabaseUnavailable("cannot write to PostgreSQL h:5432/db: server closed the connection")
        return self.inner.write_batch(verdicts, labels)

    def write_dead_letters(self, rows: Any) -> None:
        self.inner.write_dead_letters(rows)

    def close(self) -> None:
        self.inner.close()


def sink_config(config: FraudkitConfig, tmp_path: Path, **sink: Any) -> FraudkitConfig:
    return config.model_copy(
        update={
            "sink": config.sink.model_copy(
                update={
                    "url": f"sqlite:///{tmp_path / 'sink.db'}",
                    "table": "fp",
                    "labels_table": "fp_labels",
                    **sink,
                }
            )
        }
    )


def test_offsets_are_committed_only_after_the_database_commit(config: FraudkitConfig, tmp_path: Path) -> None:
    cfg = sink_config(config, tmp_path, retry_max_s=30.0)
    verdicts, labels = cfg.topics.verdicts, cfg.topics.labels
    batch = [
        FakeKafkaMessage(verdicts, 0, 10, orjson.dumps(verdict(1, 0.9))),
        FakeKafkaMessage(verdicts, 1, 4, orjson.dumps(verdict(2))),
        FakeKafkaMessage(verdicts, 0, 11, b"not json"),
        FakeKafkaMessage(labels, 0, 20, label(1, 1, "stolen_card")),
    ]
    consumer = FakeConsumer([batch])
    inner = open_database(cfg.sink.url, "fp", "fp_labels")
    database = FlakyDatabase(inner, failures=2, consumer=consumer)
    events: list[str] = []
    runner_ = SinkRunner(
        cfg,
        SinkOptions(max_messages=4),
        on_event=events.append,
        database=database,  # type: ignore[arg-type]
        consumer=consumer,
    )
    summary = runner_.run()
    assert database.commits_seen_at_failure == [0, 0]  # nothing committed while the database was down
    assert consumer.commits == [[(verdicts, 0, 12), (verdicts, 1, 5), (labels, 0, 21)]]
    assert summary.database_retries == 2 and len(events) == 2 and "retrying in" in events[0]
    assert (summary.messages, summary.verdicts, summary.inserted, summary.labels, summary.invalid) == (
        4,
        2,
        2,
        1,
        1,
    )
    assert summary.stopped_by == "max_messages" and consumer.closed
    assert rows_of(
        tmp_path / "sink.db", "SELECT transaction_id, label, fraud_scenario FROM fp ORDER BY 1"
    ) == [
        ("tx1", 1, "stolen_card"),
        ("tx2", None, None),
    ]


def test_a_database_that_stays_down_loses_nothing(config: FraudkitConfig, tmp_path: Path) -> None:
    cfg = sink_config(config, tmp_path, retry_max_s=0.3)
    consumer = FakeConsumer([[FakeKafkaMessage(cfg.topics.verdicts, 0, 0, orjson.dumps(verdict(1)))]])
    database = FlakyDatabase(open_database(cfg.sink.url, "fp", "fp_labels"), failures=1000, consumer=consumer)
    with pytest.raises(DatabaseError) as error:
        SinkRunner(cfg, SinkOptions(max_messages=1), database=database, consumer=consumer).run()  # type: ignore[arg-type]
    assert consumer.commits == [] and consumer.closed
    assert "gave up after" in str(error.value) and "stay uncommitted in Kafka" in str(error.value)


def test_stop_while_the_database_is_down_exits_cleanly(config: FraudkitConfig, tmp_path: Path) -> None:
    cfg = sink_config(config, tmp_path, retry_max_s=60.0)
    consumer = FakeConsumer([[FakeKafkaMessage(cfg.topics.verdicts, 0, 0, orjson.dumps(verdict(1)))]])
    database = FlakyDatabase(open_database(cfg.sink.url, "fp", "fp_labels"), failures=1000, consumer=consumer)
    stop = threading.Event()
    summary = SinkRunner(
        cfg,
        SinkOptions(),
        stop=stop,
        on_event=lambda message: stop.set(),
        database=database,  # type: ignore[arg-type]
        consumer=consumer,
    ).run()
    assert summary.stopped_by == "stopped" and summary.uncommitted == 1 and consumer.commits == []


def test_until_idle_counts_from_the_first_assignment_and_names_a_missing_one(
    config: FraudkitConfig, tmp_path: Path
) -> None:
    now = [100.0]
    bounds = SinkOptions(until_idle_s=2.0).bounds(clock=lambda: now[0])
    now[0] += 3600
    assert bounds.reached() is None  # no partition yet: waiting is not idleness
    bounds.assigned(True)
    now[0] += 1.9
    assert bounds.reached() is None
    now[0] += 0.1
    assert bounds.reached() == "idle"

    cfg = sink_config(config, tmp_path)
    database = open_database(cfg.sink.url, "fp", "fp_labels")
    runner_ = SinkRunner(cfg, SinkOptions(until_idle_s=2.0), database=database, consumer=FakeConsumer([]))
    now[0] = 0.0
    runner_.bounds = runner_.options.bounds(clock=lambda: now[0])
    now[0] = cfg.kafka.connect_timeout_s + 2.0
    runner_._check_assignment()  # exactly at the deadline: still waiting
    now[0] += 1.0
    with pytest.raises(BrokerError) as error:
        runner_._check_assignment()
    assert str(error.value) == (
        f"consumer group {cfg.sink.group_id} got no partition assignment from "
        f"{cfg.kafka.bootstrap_servers} within {cfg.kafka.connect_timeout_s + 3.0:.0f}s"
    )
    runner_.bounds.assigned(True)
    runner_._check_assignment()
    database.close()


def test_unreachable_postgres_exits_6_with_the_password_masked(tmp_path: Path) -> None:
    port = free_port()
    url = f"postgresql://fraudkit:hunter2@127.0.0.1:{port}/analytics"
    result = runner.invoke(
        app, ["sink", "--url", url, "--set", "sink.retry_max_s=6", "--set", f"broker.state_dir={tmp_path}"]
    )
    assert result.exit_code == 6, result.output
    assert f"error: cannot connect to PostgreSQL 127.0.0.1:{port}/analytics as user fraudkit" in result.stderr
    assert "postgresql://fraudkit:******@" in result.stderr and "gave up after" in result.stderr
    assert "hunter2" not in result.stderr + result.output
    assert "warning:" in result.stderr and "retrying in" in result.stderr


def test_bad_url_is_a_config_error() -> None:
    result = runner.invoke(app, ["sink", "--url", "mysql://u:pw@h/db"])
    assert result.exit_code == 2
    assert "sink.url: unsupported scheme 'mysql'" in result.stderr and "pw@" not in result.stderr
