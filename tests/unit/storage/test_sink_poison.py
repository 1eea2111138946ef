"""The sink never blocks on one bad row: validation first, then isolation into the dead-letter table."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
from tests.unit.storage.test_sink import FakeConsumer, FakeKafkaMessage, label, rows_of, sink_config, verdict

from fraudkit.config import FraudkitConfig
from fraudkit.errors import DatabaseError
from fraudkit.schema import InvalidMessage
from fraudkit.storage.database import WriteResult, open_database
from fraudkit.storage.sink import SinkOptions, SinkRunner, label_row, verdict_row


def test_rows_a_database_would_refuse_are_invalid_by_name() -> None:
    for change, reason in [
        ({"card_id": "ca\x00rd"}, "card_id: contains a NUL character"),
        ({"transaction_id": "tx\x00"}, "transaction_id: contains a NUL character"),
        ({"country": "F" * 2000}, "country: 2000 characters is longer than the limit of 1024"),
        ({"reasons": [{"feature": "a\x00"}]}, "reasons: contains a NUL character"),
        ({"reasons": {"not": "a list"}}, "reasons: expected a list, got dict"),
        ({"reasons": [{"feature": "x" * 20_000}]}, "reasons: 20,016 bytes is more than the limit of 16,384"),
        ({"verdict_ms": 1e300}, "verdict_ms: 1e+300 is out of range"),
        ({"produced_ms": True}, "produced_ms: expected epoch milliseconds, got bool"),
        ({"decision": True}, "decision: expected text, got bool"),
    ]:
        with pytest.raises(InvalidMessage, match="^" + reason.replace("+", r"\+") + "$"):
            verdict_row(verdict(1, **change))
    good = orjson.loads(label(1, 1))
    for change, reason in [
        ({"labelled_ms": 1e300}, "labelled_ms: 1e+300 is out of range (0..9007199254740991)"),
        ({"fraud_scenario": "st\x00len"}, "fraud_scenario: contains a NUL character"),
        ({"label": True}, "label: expected 0 or 1, got True"),
    ]:
        with pytest.raises(
            InvalidMessage,
            match="^" + reason.replace("+", r"\+").replace("(", r"\(").replace(")", r"\)") + "$",
        ):
            label_row(orjson.dumps({**good, **change}))


def _runner(
    cfg: FraudkitConfig, batch: list[FakeKafkaMessage], database: Any, events: list[str]
) -> tuple[SinkRunner, FakeConsumer]:
    consumer = FakeConsumer([batch])
    runner = SinkRunner(
        cfg,
        SinkOptions(max_messages=len(batch)),
        on_event=events.append,
        database=database,
        consumer=consumer,
    )
    return runner, consumer


def test_a_nul_character_or_an_overflowing_time_goes_to_the_dead_letter_table(
    config: FraudkitConfig, tmp_path: Path
) -> None:
    cfg = sink_config(config, tmp_path)
    verdicts, labels = cfg.topics.verdicts, cfg.topics.labels
    nul = orjson.dumps(verdict(2, card_id="ca\x00rd"))
    overflow = orjson.dumps({**orjson.loads(label(1, 1)), "labelled_ms": 1e300})
    batch = [
        FakeKafkaMessage(verdicts, 0, 10, orjson.dumps(verdict(1))),
        FakeKafkaMessage(verdicts, 0, 11, nul),
        FakeKafkaMessage(labels, 2, 30, overflow),
        FakeKafkaMessage(verdicts, 1, 5, orjson.dumps(verdict(3))),
    ]
    database = open_database(cfg.sink.url, "fp", "fp_labels", dead_letter_table="fp_dead")
    runner, consumer = _runner(cfg, batch, database, [])
    summary = runner.run()
    assert (summary.inserted, summary.dead_letters) == (2, 2)
    # The offsets moved past the bad ones: the next run does not meet them again.
    assert consumer.commits == [[(verdicts, 0, 12), (labels, 2, 31), (verdicts, 1, 6)]]
    assert rows_of(tmp_path / "sink.db", "SELECT transaction_id FROM fp ORDER BY 1") == [("tx1",), ("tx3",)]
    letters = rows_of(
        tmp_path / "sink.db",
        "SELECT source_topic, source_partition, source_offset, reason, payload_bytes, payload_excerpt "
        "FROM fp_dead ORDER BY source_offset",
    )
    assert letters == [
        (
            verdicts,
            0,
            11,
            "card_id: contains a NUL character",
            len(nul),
            nul.decode().replace("\x00", "\ufffd"),
        ),
        (
            labels,
            2,
            30,
            "labelled_ms: 1e+300 is out of range (0..9007199254740991)",
            len(overflow),
            overflow.decode(),
        ),
    ]


class RefusingDatabase:
    """A real SQLite database that refuses (as a constraint would) every batch holding a marked row."""

    def __init__(self, inner: Any, refuse: set[str], refuse_all: bool = False) -> None:
        self.inner = inner
        self.refuse = refuse
        self.refuse_all = refuse_all
        self.url = inner.url
        self.table = inner.table
        self.dead_letter_table = inner.dead_letter_table
        self.writes = 0

    def ensure_schema(self) -> None:
        self.inner.ensure_schema()

    def write_batch(self, verdicts: Any, labels: Any) -> WriteResult:
        self.writes += 1
        ids = {row[0] for row in [*verdicts, *labels]}
        if self.refuse_all or ids & self.refuse:
            raise DatabaseError("cannot write to SQLite database x: CHECK constraint failed")
        result: WriteResult = self.inner.write_batch(verdicts, labels)
        return result

    def write_dead_letters(self, rows: Any) -> None:
        self.inner.write_dead_letters(rows)

    def close(self) -> None:
        self.inner.close()


def test_a_row_the_database_refuses_is_isolated_and_the_rest_is_written(
    config: FraudkitConfig, tmp_path: Path
) -> None:
    cfg = sink_config(config, tmp_path)
    verdicts, labels = cfg.topics.verdicts, cfg.topics.labels
    batch = [FakeKafkaMessage(verdicts, 0, offset, orjson.dumps(verdict(offset))) for offset in range(40)]
    batch.append(FakeKafkaMessage(labels, 0, 7, label(3, 1, "stolen_card")))
    database = RefusingDatabase(open_database(cfg.sink.url, "fp", "fp_labels"), refuse={"tx13", "tx31"})
    events: list[str] = []
    runner, consumer = _runner(cfg, batch, database, events)
    summary = runner.run()
    assert (summary.inserted, summary.dead_letters, summary.labels) == (38, 2, 1)
    assert consumer.commits == [[(verdicts, 0, 40), (labels, 0, 8)]]
    written = rows_of(tmp_path / "sink.db", "SELECT transaction_id, label FROM fp ORDER BY 1")
    assert [row[0] for row in written] == sorted(f"tx{i}" for i in range(40) if i not in (13, 31))
    assert ("tx3", 1) in written
    letters = rows_of(tmp_path / "sink.db", "SELECT source_offset, reason FROM fraud_dead_letters ORDER BY 1")
    assert letters == [
        (13, "the database refused the row: cannot write to SQLite database x: CHECK constraint failed"),
        (31, "the database refused the row: cannot write to SQLite database x: CHECK constraint failed"),
    ]
    assert events == ["2 row(s) refused by the database went to fraud_dead_letters"]
    assert database.writes < 30  # bisection, not a write per row


def test_a_database_that_refuses_every_row_stops_the_sink_without_committing(
    config: FraudkitConfig, tmp_path: Path
) -> None:
    cfg = sink_config(config, tmp_path)
    batch = [
        FakeKafkaMessage(cfg.topics.verdicts, 0, offset, orjson.dumps(verdict(offset))) for offset in range(4)
    ]
    database = RefusingDatabase(open_database(cfg.sink.url, "fp", "fp_labels"), set(), refuse_all=True)
    runner, consumer = _runner(cfg, batch, database, [])
    with pytest.raises(
        DatabaseError, match=r"CHECK constraint failed; 4 message\(s\) of the last batch stay uncommitted"
    ):
        runner.run()
    assert consumer.commits == []
