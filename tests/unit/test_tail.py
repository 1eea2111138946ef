"""tail's pure logic: safe previews, message kinds, filters, the live precision/recall join, rendering."""

from __future__ import annotations

import io
import subprocess
import sys
from typing import Any

import orjson
import pytest
from rich.console import Console

from fraudkit.config import FraudkitConfig
from fraudkit.errors import BrokerError
from fraudkit.tail import (
    Kind,
    Tail,
    TailMessage,
    TailOptions,
    TailStats,
    TailView,
    TopicCounter,
    matches,
    resolve_topics,
    safe_preview,
    safe_text,
    sniff_kind,
    to_tail_message,
    topic_kind,
)


class FakeMessage:
    """Only the Message methods tail calls."""

    def __init__(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | None = None,
        headers: list[tuple[str, bytes]] | None = None,
        partition: int = 0,
        offset: int = 0,
    ) -> None:
        self._topic, self._value, self._key = topic, value, key
        self._headers, self._partition, self._offset = headers, partition, offset

    def topic(self) -> str:
        return self._topic

    def value(self) -> bytes | None:
        return self._value

    def key(self) -> bytes | None:
        return self._key

    def headers(self) -> list[tuple[str, bytes]] | None:
        return self._headers

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset

    def timestamp(self) -> tuple[int, int]:
        return (1, 1_770_000_000_000)

    def error(self) -> None:
        return None


def verdict(transaction_id: str, score: float, card: str = "c1") -> dict[str, Any]:
    return {
        "schema": 1,
        "transaction_id": transaction_id,
        "card_id": card,
        "score": score,
        "decision": "fraud" if score >= 0.5 else "legit",
        "event_time_ms": 1_770_000_000_000,
    }


def message(config: FraudkitConfig, topic: str, data: Any, **kwargs: Any) -> TailMessage:
    raw = data if isinstance(data, bytes) or data is None else orjson.dumps(data)
    return to_tail_message(FakeMessage(topic, raw, **kwargs), topic_kind(topic, config))


def test_safe_text_escapes_terminal_controls_and_truncates() -> None:
    assert safe_text("a\x1b[31mred\x00\u202eb") == "a\\x1b[31mred\\x00\\u202eb"
    assert safe_text("x" * 100, limit=10) == "x" * 9 + "…"
    assert safe_text("short", limit=10) == "short"


def test_safe_preview_of_invalid_utf8() -> None:
    assert safe_preview(b"ok\xff\xfe\n") == "ok\\xff\\xfe\\x0a"
    assert safe_preview(None) == "(null)"


def test_topic_kind_from_config_then_from_name(config: FraudkitConfig) -> None:
    assert topic_kind(config.topics.verdicts, config) is Kind.VERDICT
    assert topic_kind(config.topics.fraud, config) is Kind.FRAUD_BRANCH
    assert topic_kind(config.topics.dead_letter, config) is Kind.DEAD_LETTER
    assert topic_kind("payments.dead-letter", config) is Kind.DEAD_LETTER
    assert topic_kind("shop.legit", config) is Kind.LEGIT_BRANCH
    assert topic_kind("my-labels", config) is Kind.LABEL
    assert topic_kind("clicks", config) is None


def test_sniff_kind_from_fields() -> None:
    assert sniff_kind(verdict("t", 0.1), None) is Kind.VERDICT
    assert sniff_kind({"transaction_id": "t", "label": 1, "labelled_ms": 3}, None) is Kind.LABEL
    assert sniff_kind({"type": "model_published", "version": "v2"}, "model") is Kind.CONTROL
    assert sniff_kind({"transaction_id": "t", "amount": 3.0, "card_id": "c"}, None) is Kind.TRANSACTION
    assert sniff_kind({"user": 1, "page": "/"}, None) is Kind.JSON


def test_messages_get_kinds_from_topic_and_payload(config: FraudkitConfig) -> None:
    assert message(config, config.topics.verdicts, verdict("t1", 0.9)).kind is Kind.VERDICT
    assert message(config, config.topics.verdicts, b"\x00garbage").kind is Kind.RAW
    assert message(config, config.topics.verdicts, [1, 2]).kind is Kind.JSON
    dead = message(config, config.topics.dead_letter, b"{bad", headers=[("error", b"not valid JSON")])
    assert dead.kind is Kind.DEAD_LETTER and dead.headers == {"error": "not valid JSON"}
    assert message(config, "clicks", {"page": "/"}).kind is Kind.JSON


def test_fraud_and_score_of_each_kind(config: FraudkitConfig) -> None:
    fraud_verdict = message(config, config.topics.verdicts, verdict("t1", 0.93))
    assert fraud_verdict.is_fraud and fraud_verdict.score == pytest.approx(0.93)
    branch = message(
        config,
        config.topics.fraud,
        {"transaction_id": "t2", "amount": 5.0, "card_id": "c9"},
        key=b"c9",
        headers=[("score", b"0.77"), ("model_version", b"v2")],
    )
    assert branch.is_fraud and branch.score == pytest.approx(0.77) and branch.card_id == "c9"
    label = message(config, config.topics.labels, {"transaction_id": "t3", "label": 1, "event_time_ms": 1})
    assert label.is_fraud and label.score is None
    assert not message(config, config.topics.verdicts, verdict("t4", 0.2)).is_fraud


def test_filters(config: FraudkitConfig) -> None:
    high = message(config, config.topics.verdicts, verdict("t1", 0.9, card="c1"))
    low = message(config, config.topics.verdicts, verdict("t2", 0.3, card="c2"))
    label = message(config, config.topics.labels, {"transaction_id": "t3", "label": 0, "card_id": "c2"})
    assert [matches(m, TailOptions([], fraud_only=True)) for m in (high, low, label)] == [True, False, False]
    assert [matches(m, TailOptions([], card="c2")) for m in (high, low, label)] == [False, True, True]
    assert [matches(m, TailOptions([], min_score=0.3)) for m in (high, low, label)] == [True, True, False]
    assert not matches(low, TailOptions([], min_score=0.31))


def test_to_json_keeps_coordinates_and_previews_non_json(config: FraudkitConfig) -> None:
    good = message(config, config.topics.verdicts, verdict("t1", 0.9), key=b"c1", partition=1, offset=7)
    line = good.to_json()
    assert (line["topic"], line["partition"], line["offset"], line["key"]) == (
        config.topics.verdicts,
        1,
        7,
        "c1",
    )
    assert line["value"]["transaction_id"] == "t1" and line["kind"] == "verdicts"
    bad = message(config, config.topics.verdicts, b"\xffraw").to_json()
    assert bad["value"] is None and bad["raw"] == "\\xffraw"
    orjson.dumps(bad)


def test_stats_join_verdicts_and_labels_in_either_order(config: FraudkitConfig) -> None:
    stats = TailStats()
    verdicts = config.topics.verdicts
    labels = config.topics.labels
    sequence = [
        message(config, verdicts, verdict("a", 0.9)),  # TP (label later)
        message(config, labels, {"transaction_id": "b", "label": 1}),  # FN (label first)
        message(config, verdicts, verdict("b", 0.1)),
        message(config, verdicts, verdict("c", 0.8)),  # FP
        message(config, verdicts, verdict("d", 0.2)),  # TN
        message(config, verdicts, verdict("e", 0.7)),  # no label yet
        message(config, labels, {"transaction_id": "a", "label": 1}),
        message(config, labels, {"transaction_id": "c", "label": 0}),
        message(config, labels, {"transaction_id": "d", "label": 0}),
    ]
    for item in sequence:
        stats.observe(item)
    assert (stats.tp, stats.fp, stats.fn, stats.tn) == (1, 1, 1, 1)
    assert stats.precision == 0.5 and stats.recall == 0.5
    assert stats.verdicts == 5 and stats.fraud_verdicts == 3 and stats.fraud_rate == pytest.approx(0.6)
    assert stats.labels == 4 and stats.fraud_labels == 2
    assert list(stats.decisions) == ["e"]


def test_topic_rate_counts_the_recent_window() -> None:
    counter = TopicCounter("t", Kind.VERDICT, 1)
    counter.add(100.0, 50)
    counter.add(103.0, 50)
    assert counter.seen == 100
    assert counter.rate(104.0) == pytest.approx(20.0)
    assert counter.rate(107.0) == pytest.approx(10.0)
    assert counter.rate(120.0) == 0.0


def test_resolve_topics_by_name_or_alias(config: FraudkitConfig) -> None:
    existing = [config.topics.verdicts, config.topics.labels, "other"]
    assert resolve_topics(config, ["verdicts", "other", config.topics.verdicts], existing) == [
        config.topics.verdicts,
        "other",
    ]
    with pytest.raises(BrokerError) as error:
        resolve_topics(config, ["nope", "labels"], existing)
    text = str(error.value)
    assert "unknown topic 'nope'" in text
    assert f"existing topics: {config.topics.labels}, other, {config.topics.verdicts}" in text


class FakeReader:
    def __init__(self, batches: list[list[FakeMessage]]) -> None:
        self.batches = batches

    def consume(self, num_messages: int, timeout: float) -> list[FakeMessage]:
        return self.batches.pop(0) if self.batches else []


def reading_tail(config: FraudkitConfig, options: TailOptions, batches: list[list[FakeMessage]]) -> Tail:
    """A Tail past open(): one partition of the verdicts topic, 4 messages long."""
    topic = config.topics.verdicts
    tail = Tail(config, options)
    tail._reader = FakeReader(batches)
    tail._ends[(topic, 0)] = 4
    tail._fetched.add((topic, 0))
    tail.topic_kinds[topic] = Kind.VERDICT
    tail.counters[topic] = TopicCounter(topic, Kind.VERDICT, 1)
    tail.summary.per_topic[topic] = 0
    return tail


def test_tail_stops_with_the_shared_stop_reasons(config: FraudkitConfig) -> None:
    topic = config.topics.verdicts
    batch = [
        FakeMessage(topic, orjson.dumps(verdict(f"t{i}", 0.9 if i % 2 else 0.1)), offset=i) for i in range(4)
    ]
    limited = reading_tail(config, TailOptions([topic], limit=1, fraud_only=True), [batch])
    assert limited.finished() is None
    assert [m.fields["transaction_id"] for m in limited.poll()] == ["t1"]
    assert (limited.summary.seen, limited.summary.shown, limited.finished()) == (4, 1, "max_messages")

    to_the_end = reading_tail(config, TailOptions([topic], follow=False), [batch[:2], batch[2:]])
    to_the_end.poll()
    assert to_the_end.finished() is None
    to_the_end.poll()
    assert to_the_end.finished() == "end_of_source"

    following = reading_tail(config, TailOptions([topic]), [batch])
    following.poll()
    assert following.finished() is None
    following.stop.set()
    assert following.finished() == "stopped"


def test_view_renders_one_table_per_kind_with_fraud_rows_styled(config: FraudkitConfig) -> None:
    options = TailOptions([config.topics.verdicts], stats=True, rows=10)
    stats = TailStats()
    counter = TopicCounter(config.topics.verdicts, Kind.VERDICT, 2, seen=3, shown=3)
    view = TailView([counter], stats, options)
    for item in (
        message(config, config.topics.verdicts, verdict("tx-fraud-1", 0.97, card="card-9")),
        message(config, config.topics.verdicts, verdict("tx-legit-1", 0.05)),
        message(config, config.topics.verdicts, b"\x1b]0;pwned\x07"),
        message(config, "clicks", {"page": "/home", "user": 7}),
    ):
        stats.observe(item)
        view.add(item)
    console = Console(
        record=True, width=160, file=io.StringIO(), force_terminal=True, color_system="standard"
    )
    console.print(view)
    text = console.export_text(styles=True)
    plain = Console(record=True, width=160, file=io.StringIO())
    plain.print(view)
    screen = plain.export_text()
    assert "Verdicts (last 2)" in screen and "Not JSON (last 1)" in screen and "Other JSON (last 1)" in screen
    assert "page, user" in screen
    assert "\\x1b]0;pwned\\x07" in screen and "\x07" not in text
    assert "fraud rate 50.00% (1 of 2 verdicts)" in screen
    fraud_line = next(line for line in text.splitlines() if "tx-fraud-1" in line)
    legit_line = next(line for line in text.splitlines() if "tx-legit-1" in line)
    assert "\x1b[1;31m" in fraud_line and "\x1b[1;31m" not in legit_line
    assert "0.970" in fraud_line and "card-9" in fraud_line


def test_tail_path_imports_no_heavy_libraries() -> None:
    code = (
        "import sys, fraudkit.cli, fraudkit.tail, fraudkit.cli.tail; "
        "heavy = sorted(m for m in ('torch', 'pyspark', 'pandas', 'matplotlib') if m in sys.modules); "
        "print(','.join(heavy))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ""
