"""The detector's pure parts: decoding, verdicts, latency, live quality, model swaps, and the loop's
commit-after-delivery ordering against fake Kafka clients."""

from __future__ import annotations

import random
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import orjson
import pytest
from rich.console import Console

from fraudkit.config import FeaturesConfig, FraudkitConfig
from fraudkit.detect import (
    DetectExtension,
    DetectOptions,
    DetectSettings,
    DetectSummary,
    ModelHolder,
    codec,
    commit,
)
from fraudkit.detect.codec import decode_batch, decode_one, encode_verdicts
from fraudkit.detect.loop import DetectClients, DetectLoop
from fraudkit.detect.status import DetectStatus, LiveQuality, format_log_line, render_panel
from fraudkit.errors import BrokerError, ConfigError, ModelError
from fraudkit.features import FeatureSpec
from fraudkit.latency import LatencyHistogram
from fraudkit.model.metrics import average_precision
from fraudkit.model.network import RuleModel
from fraudkit.schema import MAX_TEXT_CHARS, InvalidMessage, Transaction, decode_transaction, encode
from fraudkit.stream import kafka

START_MS = 1_767_225_600_000


class AllFields:
    has_card = True
    has_terminal = True
    has_location = True
    has_country = True
    passthrough: ClassVar[list[str]] = []


def full_spec(**features: Any) -> FeatureSpec:
    return FeatureSpec.from_config(FeaturesConfig(**features), AllFields())


def valid_dict(index: int = 0) -> dict[str, Any]:
    return Transaction(
        transaction_id=f"tx-{index}",
        event_time_ms=START_MS + index,
        card_id=f"card-{index % 5}",
        amount=12.5 + index,
        customer_id="cust-1",
        terminal_id="term-1",
        currency="EUR",
        merchant_category="grocery",
        country="DE",
        lat=48.1,
        lon=11.6,
        produced_ms=START_MS + 5,
        extra={"V1": 0.5},
    ).to_dict()


def reference(raw: bytes | None) -> Transaction | str:
    try:
        return decode_transaction(raw)
    except InvalidMessage as exc:
        return f"invalid: {exc}"


def fast(raw: bytes | None) -> Transaction | str:
    try:
        return decode_one(raw)
    except InvalidMessage as exc:
        return f"invalid: {exc}"


ODD_VALUES: list[Any] = [
    None, True, False, 0, 1, -1, 7, 2**40, 1.5, -3.25, 1e300, 1e7, 1e7 + 1, 95.0, -95, 200, "", "x",
    "12", [], [1], {}, {"a": 1}, {"a": "b"}, {"a": True}, START_MS, float(START_MS), START_MS * 10,
]  # fmt: skip


def test_fast_decoding_matches_the_schema_validator_on_crafted_variants() -> None:
    base = valid_dict()
    cases: list[bytes | None] = [None, b"", b"null", b"[1]", b"not json", b'"text"', encode(base)]
    for name in [*base, "schema"]:
        for value in ODD_VALUES:
            cases.append(orjson.dumps({**base, name: value}))
        cases.append(orjson.dumps({k: v for k, v in base.items() if k != name}))
    for raw in cases:
        assert fast(raw) == reference(raw), raw


def test_fast_decoding_matches_the_schema_validator_on_random_mutations() -> None:
    rng = random.Random(11)
    names = [*valid_dict(), "schema"]
    for index in range(3000):
        data = valid_dict(index)
        for _ in range(rng.randint(0, 3)):
            name = rng.choice(names)
            if rng.random() < 0.2:
                data.pop(name, None)
            else:
                data[name] = rng.choice(ODD_VALUES)
        raw = orjson.dumps(data)
        assert fast(raw) == reference(raw), raw


def test_fast_decoding_matches_the_schema_validator_on_byte_level_variants() -> None:
    # What a dict cannot express: raw bytes the msgspec path (canonical prefix) sees first.
    canonical = encode(valid_dict())
    assert canonical.startswith(b'{"schema":1,')
    body = canonical[:-1]
    long_text = "x" * MAX_TEXT_CHARS
    cases = [
        body + b',"note":"\xff"}',  # invalid UTF-8 in an unknown field
        body + b',"note":1e99999}',  # infinity in an unknown field
        body + b',"note":"\\ud800"}',  # a lone surrogate
        body + b',"note":1}',  # any unknown field
        body.replace(b'"card_id":"card-0"', b'"card_id":"\xc3\xa9\xff"'),
        body.replace(b'"amount":12.5', b'"amount":1e400'),
        body.replace(b'"amount":12.5', b'"amount":123456789012345678901234567890'),
        body.replace(b'"amount":12.5', b'"amount":12'),
        body.replace(b'"V1":0.5', b'"V1":1e400'),
        body.replace(b'"V1":0.5', b'"V1":123456789012345678901234567890'),
        body.replace(b'"V1":0.5', b'"V1":0.5,"V1":2'),  # a duplicate key: the last one wins
        body + b',"amount":3}',
        body + b',"schema":2}',
        body + b',"schema":1}',
        body + b',"event_time_ms":1767225600000.0}',
        body.replace(b'"produced_ms":1767225600005', b'"produced_ms":1767225600005.5'),
        body.replace(b'"lat":48.1', b'"lat":90'),
        body.replace(b'"lat":48.1', b'"lat":90.0000001'),
        body.replace(b'"country":"DE"', b'"country":' + orjson.dumps(long_text)),
        body.replace(b'"country":"DE"', b'"country":' + orjson.dumps(long_text + "x")),
        body.replace(b'"card_id":"card-0"', b'"card_id":' + orjson.dumps("\u00e9" * MAX_TEXT_CHARS)),
        body.replace(b'"card_id":"card-0"', b'"card_id":""'),
        body.replace(b'"card_id":"card-0"', b'"card_id":7'),
        body.replace(b'"extra":{"V1":0.5}', b'"extra":' + orjson.dumps({f"V{i}": i for i in range(256)})),
        body.replace(b'"extra":{"V1":0.5}', b'"extra":' + orjson.dumps({f"V{i}": i for i in range(257)})),
        body.replace(b'"extra":{"V1":0.5}', b'"extra":' + orjson.dumps({"k" * 128: 1.0})),
        body.replace(b'"extra":{"V1":0.5}', b'"extra":' + orjson.dumps({"k" * 129: 1.0})),
        body.replace(b'"extra":{"V1":0.5}', b'"extra":null'),
        body.replace(b'"extra":{"V1":0.5}', b'"extra":{}'),
        body.replace(b'"extra":{"V1":0.5}', b'"extra":0'),
        canonical + b" ",
        canonical + b" x",
        b'{"schema":1, "transaction_id":"t","event_time_ms":1767225600000,"card_id":"c","amount":1}',
        b'{"schema":1,"transaction_id":"t","event_time_ms":1767225600000,"card_id":"c","amount":1}',
        b'{"schema":1,"transaction_id":"t","event_time_ms":1767225600000,"card_id":"c"}',
    ]
    for raw in cases:
        assert fast(raw) == reference(raw), raw


def test_canonical_messages_take_the_compiled_path(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[bytes] = []
    compiled = codec._decode_canonical

    def spy(raw: bytes) -> Transaction:
        seen.append(raw)
        return compiled(raw)

    monkeypatch.setattr(codec, "_decode_canonical", spy)
    canonical = encode(valid_dict())
    spaced = canonical.replace(b'"schema":1,', b'"schema": 1,')
    transactions, good, bad = decode_batch([canonical, spaced])
    assert seen == [canonical]  # the other encoding goes the orjson way, with the same result
    assert good == [0, 1] and not bad
    assert transactions[0] == transactions[1] == decode_transaction(canonical)


def test_decode_batch_keeps_positions_and_reasons() -> None:
    values = [encode(valid_dict(0)), b"{bad", encode(valid_dict(2)), orjson.dumps({"schema": 2}), None]
    transactions, good, bad = decode_batch(values)
    assert good == [0, 2]
    assert [tx.transaction_id for tx in transactions] == ["tx-0", "tx-2"]
    assert [index for index, _ in bad] == [1, 3, 4]
    assert bad[0][1].startswith("not valid JSON")
    assert bad[1][1] == "schema: unsupported version 2 (expected 1)"
    assert bad[2][1] == "empty message value"


def test_verdicts_carry_every_field() -> None:
    transactions = [decode_transaction(encode(valid_dict(i))) for i in range(2)]
    reasons = {1: [{"feature": "amount", "value": 13.5, "contribution": 2.0}]}
    encoded = encode_verdicts(transactions, [0.1, 0.9], [False, True], reasons, 0.5, "v3", 100, 105, "det-1")
    legit, fraud = (orjson.loads(raw) for raw in encoded)
    assert fraud == {
        "schema": 1,
        "transaction_id": "tx-1",
        "card_id": "card-1",
        "terminal_id": "term-1",
        "score": 0.9,
        "decision": "fraud",
        "threshold": 0.5,
        "model_version": "v3",
        "reasons": reasons[1],
        "event_time_ms": START_MS + 1,
        "produced_ms": START_MS + 5,
        "consumed_ms": 100,
        "verdict_ms": 105,
        "amount": 13.5,
        "currency": "EUR",
        "country": "DE",
        "merchant_category": "grocery",
        "detector": "det-1",
        "rules": [],
        "review": False,
        "rules_version": None,
    }
    assert legit["decision"] == "legit" and legit["reasons"] == []
    # Nothing of a row leaks into the next.
    first, second = (
        orjson.loads(raw)
        for raw in encode_verdicts(
            transactions[::-1], [0.9, 0.1], [True, False], {0: reasons[1]}, 0.5, "v3", 100, 105, "det-1"
        )
    )
    assert first == fraud
    assert second == legit


def test_verdict_bytes_are_orjson_of_the_record_with_hostile_text() -> None:
    # The batch is encoded in one call and split on newlines: text holding newlines, quotes,
    # control characters and non-ASCII must not split a verdict, and the bytes stay orjson's.
    odd = ["a\nb", 'q"uote\\', "\u2028sep\r", "é中😀", "\x00\x1f", "plain"]
    transactions = [
        Transaction(
            transaction_id=text,
            event_time_ms=START_MS + i,
            card_id=f"card\n{i}",
            amount=[0.1, 1e-7, 123456.789, 0.0, 5.0, 1e6][i],
            terminal_id=None if i % 2 else text,
            currency=text,
            country=None,
            merchant_category=text,
            produced_ms=None if i % 3 else START_MS,
        )
        for i, text in enumerate(odd)
    ]
    scores = [0.25, 1e-9, 0.999999, 0.0, 1.0, 0.5]
    frauds = [False, True, True, False, True, False]
    reasons = {1: [{"feature": "amount\n", "value": 1e-7, "contribution": -2.5}]}
    encoded = encode_verdicts(transactions, scores, frauds, reasons, 0.5, "v\n9", 100, 105, "det\n1")
    assert len(encoded) == len(odd)
    for index, (raw, tx) in enumerate(zip(encoded, transactions, strict=True)):
        expected = {
            "schema": 1,
            "transaction_id": tx.transaction_id,
            "card_id": tx.card_id,
            "terminal_id": tx.terminal_id,
            "score": scores[index],
            "decision": "fraud" if frauds[index] else "legit",
            "threshold": 0.5,
            "model_version": "v\n9",
            "reasons": reasons.get(index, []) if frauds[index] else [],
            "event_time_ms": tx.event_time_ms,
            "produced_ms": tx.produced_ms,
            "consumed_ms": 100,
            "verdict_ms": 105,
            "amount": tx.amount,
            "currency": tx.currency,
            "country": tx.country,
            "merchant_category": tx.merchant_category,
            "detector": "det\n1",
            "rules": [],
            "review": False,
            "rules_version": None,
        }
        assert raw == orjson.dumps(expected)
    assert encode_verdicts([], [], [], {}, 0.5, "v1", 1, 2, "d") == []


def test_latency_percentiles_are_exact() -> None:
    rng = np.random.default_rng(3)
    values = rng.integers(0, 400, 5001)
    histogram = LatencyHistogram()
    for chunk in np.array_split(values, 7):
        histogram.add(chunk.tolist())
    for q in (50, 95, 99):
        assert histogram.percentile(q) == np.percentile(values, q, method="inverted_cdf")
    summary = histogram.summary()
    assert summary["max"] == values.max() and histogram.total == 5001
    histogram.add([-5, 10**9])  # clock skew counts as 0; a huge value keeps three digits, not lost
    assert histogram.total == 5003 and histogram.summary()["max"] == 10**9
    assert histogram.percentile(0) == 0.0
    assert LatencyHistogram().summary() == {"p50": None, "p95": None, "p99": None, "max": None}


def test_live_quality_matches_labels_per_model_version() -> None:
    quality = LiveQuality(capacity=1000, window=100)
    scores = [i / 10 for i in range(10)]
    frauds = [s >= 0.5 for s in scores]
    quality.remember([f"a{i}" for i in range(10)], scores, frauds, "v1")
    quality.remember([f"b{i}" for i in range(10)], scores, frauds, "v2")
    truth = [0, 0, 0, 0, 1, 0, 1, 0, 1, 1]
    assert quality.observe_many((f"a{i}", y) for i, y in enumerate(truth)) == 10
    assert quality.observe_many([("b9", 1), ("b0", 0), ("unknown", 1)]) == 2
    assert quality.unmatched == 1 and not quality.observe("a0", 1)  # each verdict matches once
    figures = quality.figures()
    v1 = figures["v1"]
    assert (v1.labelled, v1.frauds, v1.flagged) == (10, 4, 5)
    assert v1.precision == pytest.approx(3 / 5) and v1.recall == pytest.approx(3 / 4)
    assert v1.average_precision == pytest.approx(average_precision(truth, scores))
    v2 = figures["v2"]
    assert (v2.labelled, v2.precision, v2.recall, v2.average_precision) == (2, 1.0, 1.0, 1.0)


def test_live_quality_memory_and_window_are_bounded() -> None:
    quality = LiveQuality(capacity=100, window=5)
    for start in range(0, 1000, 10):
        ids = [f"t{i}" for i in range(start, start + 10)]
        quality.remember(ids, [0.9] * 10, [True] * 10, "v1")
    assert quality.remembered <= 100
    assert not quality.observe("t0", 1)  # forgotten long ago
    for i in range(990, 1000):
        assert quality.observe(f"t{i}", 1)
    assert quality.figures()["v1"].labelled == 5


def test_live_quality_ring_keeps_the_right_score_across_wrap_arounds() -> None:
    quality = LiveQuality(capacity=10, window=1000)
    for batch in range(8):  # batches of 4 in a 10-slot ring: the last one wraps around its end
        ids = [f"t{batch}-{i}" for i in range(4)]
        quality.remember(ids, [batch + i / 10 for i in range(4)], [i == 3 for i in range(4)], f"v{batch % 2}")
    assert not quality.observe("t5-3", 0)  # an older generation: forgotten
    for batch in (6, 7):
        for i in range(4):
            assert quality.observe(f"t{batch}-{i}", i % 2)
    window = {version: list(values) for version, values in quality._windows.items()}
    assert window == {
        "v0": [(6.0, False, 0), (6.1, False, 1), (6.2, False, 0), (6.3, True, 1)],
        "v1": [(7.0, False, 0), (7.1, False, 1), (7.2, False, 0), (7.3, True, 1)],
    }
    quality.remember([f"x{i}" for i in range(25)], [float(i) for i in range(25)], [False] * 25, "v3")
    assert quality.observe("x24", 0) and not quality.observe("x5", 0)  # only the newest 10 are kept


def rules(spec: FeatureSpec, threshold: float = 500.0) -> RuleModel:
    return RuleModel(threshold, spec.names)


def test_model_holder_swaps_only_between_batches_and_keeps_state_for_the_same_spec() -> None:
    spec = full_spec()
    holder = ModelHolder(rules(spec), spec)
    features = holder.features
    replacement = rules(spec, 100.0)
    holder.offer(replacement)
    assert holder.model is not replacement  # nothing changes until the loop swaps
    assert holder.swap() == "rules"
    assert holder.model is replacement and holder.features is features and holder.swaps == 1
    assert holder.swap() is None
    other = full_spec(card_windows_hours=[2.0])
    holder.offer(rules(other), other)
    holder.swap()
    assert holder.features is not features and holder.spec is other
    with pytest.raises(ModelError, match="feature names do not match"):
        holder.offer(rules(spec))  # the serving spec is `other` now
    holder.record_retrain()
    assert holder.retrains == 1


def test_options_reject_non_positive_bounds() -> None:
    with pytest.raises(ConfigError, match="--until-idle: must be > 0"):
        DetectOptions(until_idle_s=0).validate()
    with pytest.raises(ConfigError, match="--max-transactions: must be > 0"):
        DetectOptions(max_transactions=-1).validate()
    DetectOptions(duration_s=1, max_transactions=1, until_idle_s=1).validate()


def test_summary_dict_and_throughput() -> None:
    summary = DetectSummary(
        detector="d", consumed=1000, verdicts=990, fraud=10, dead_letters=10, processing_s=0.5
    )
    data = summary.to_dict()
    assert data["throughput_per_s"] == 2000.0 and data["legit"] == 980
    for key in ("consumed", "verdicts", "fraud", "dead_letters", "latency_ms", "model_version", "retrains"):
        assert key in data
    assert DetectSummary(detector="d").throughput_per_s == 0.0


def test_status_renders_as_panel_and_log_line() -> None:
    quality = LiveQuality()
    quality.remember(["a", "b"], [0.9, 0.1], [True, False], "v2")
    quality.observe("a", 1)
    quality.observe("b", 0)
    status = DetectStatus(
        detector="det-1", elapsed_s=12.0, consumed=12345, verdicts=12340, fraud=40, dead_letters=5,
        rate_per_s=5000.0, lag=17, batch_ms=3.2, latency_ms={"p50": 4.0, "p95": 8.0, "p99": 11.0, "max": 20.0},
        model_version="v2", model_swaps=1, retrains=2, labels=2, quality=quality.figures(), partitions=[0, 2],
        cards=300, exactly_once=False,
    )  # fmt: skip
    line = format_log_line(status)
    assert "consumed=12345" in line and "lag=17" in line and "p99=11ms" in line and "model=v2" in line
    assert "precision=1.000" in line and "retrains=2" in line and "dead_letters=5" in line
    console = Console(width=120, record=True)
    console.print(render_panel(status))
    text = console.export_text()
    assert "12,345" in text and "v2" in text and "1.000" in text and "at-least-once" in text


# -- the loop against fake clients -------------------------------------------------------------


class FakeMessage:
    def __init__(
        self, topic: str, partition: int, offset: int, value: bytes | None, key: bytes | None
    ) -> None:
        self._topic, self._partition, self._offset, self._value, self._key = (
            topic,
            partition,
            offset,
            value,
            key,
        )

    def error(self) -> None:
        return None

    def topic(self) -> str:
        return self._topic

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset

    def value(self) -> bytes | None:
        return self._value

    def key(self) -> bytes | None:
        return self._key


class Metadata:
    def __init__(self, topic: str, partitions: int) -> None:
        self.topics = {topic: type("TopicMetadata", (), {"partitions": dict.fromkeys(range(partitions))})()}


class FakeConsumer:
    """Serves scripted batches; `before_batch[i]` runs inside the consume call that returns batch i."""

    def __init__(self, events: list[tuple[Any, ...]], batches: list[list[FakeMessage]]) -> None:
        self.events = events
        self.batches = list(batches)
        self.served = 0
        self.just_served = False
        self.before_batch: dict[int, Callable[[FakeConsumer], None]] = {}
        self.on_revoke: Any = None
        self.topic = ""
        self.producer: FakeProducer | None = None

    def subscribe(self, topics: list[str], on_assign: Any, on_revoke: Any, on_lost: Any) -> None:
        self.topic = topics[0]
        self.on_revoke = on_revoke
        on_assign(self, [kafka.TopicPartition(topics[0], 0), kafka.TopicPartition(topics[0], 1)])

    def consume(self, count: int, timeout: float) -> list[FakeMessage]:
        # A scripted batch arrives whole on the loop's first-message call; the drain call right
        # after it finds nothing more already fetched.
        if timeout == 0 and self.just_served:
            self.just_served = False
            return []
        if not self.batches:
            return []
        self.just_served = True
        if self.served in self.before_batch:
            self.before_batch[self.served](self)
        self.served += 1
        return self.batches.pop(0)

    def commit(self, offsets: list[Any], asynchronous: bool) -> None:
        # What matters: nothing produced before a commit may still be unacknowledged.
        assert self.producer is not None and not self.producer.outstanding, "commit before delivery"
        self.events.append(("commit", {tp.partition: tp.offset for tp in offsets}, asynchronous))

    def list_topics(self, topic: str, timeout: float) -> Metadata:
        return Metadata(topic, 2)

    def assign(self, partitions: list[Any]) -> None:
        pass

    def position(self, partitions: list[Any]) -> list[Any]:
        return partitions

    def get_watermark_offsets(
        self, partition: Any, cached: bool = False, timeout: float | None = None
    ) -> tuple[int, int]:
        return (0, 0)

    def consumer_group_metadata(self) -> str:
        return "group-metadata"

    def close(self) -> None:
        self.events.append(("close",))


class FakeProducer:
    """Records produce calls; flush, or poll when `acks_on_poll`, 'delivers' them (failing the
    ones whose topic is in `failing`)."""

    def __init__(self, events: list[tuple[Any, ...]], failing: set[str] | None = None) -> None:
        self.events = events
        self.failing = failing or set()
        self.outstanding: list[tuple[str, Any]] = []
        self.produced: list[tuple[str, bytes | None, Any, Any]] = []
        self.acks_on_poll = False
        self.broker_max_bytes = 10**9
        self.transaction_failed = False

    def __len__(self) -> int:
        return len(self.outstanding)

    def produce(
        self, topic: str, value: bytes | None, key: Any, headers: Any = None, on_delivery: Any = None
    ) -> None:
        self.events.append(("produce", topic))
        self.produced.append((topic, value, key, headers))
        self.outstanding.append((topic, on_delivery, value, key))

    def _deliver(self) -> int:
        for topic, callback, value, key in self.outstanding:
            if topic in self.failing:
                callback(
                    FakeError(kafka.KafkaError._TRANSPORT, "broker down"),
                    FakeMessage(topic, 0, 0, None, None),
                )
            elif value is not None and len(value) > self.broker_max_bytes:
                # What a broker with a smaller message.max.bytes answers.
                error = FakeError(kafka.KafkaError.MSG_SIZE_TOO_LARGE, "Broker: Message size too large")
                callback(error, FakeMessage(topic, 0, 0, value, key))
                self.transaction_failed = True
        delivered = len(self.outstanding)
        self.outstanding = []
        return delivered

    def flush(self, timeout: float = 0) -> int:
        self.events.append(("flush", self._deliver()))
        return 0

    def poll(self, timeout: float) -> int:
        if self.acks_on_poll:
            self.events.append(("acks", self._deliver()))
        return 0

    def init_transactions(self, timeout: float) -> None:
        self.events.append(("init_transactions",))

    def begin_transaction(self) -> None:
        self.events.append(("begin_transaction",))

    def send_offsets_to_transaction(self, offsets: list[Any], metadata: Any, timeout: float) -> None:
        self.events.append(("send_offsets", {tp.partition: tp.offset for tp in offsets}, metadata))

    def commit_transaction(self, timeout: float) -> None:
        self.flush()
        if self.transaction_failed:
            raise kafka.KafkaException(FakeError(kafka.KafkaError._STATE, "delivery failed", abort=True))
        self.events.append(("commit_transaction",))

    def abort_transaction(self, timeout: float) -> None:
        self.outstanding = []
        self.transaction_failed = False
        self.events.append(("abort_transaction",))


class FakeError:
    """A KafkaError-like error: code, text, and the flags librdkafka sets."""

    def __init__(self, code: int, text: str, abort: bool = False, fatal: bool = False) -> None:
        self._code, self._text, self._abort, self._fatal = code, text, abort, fatal

    def code(self) -> int:
        return self._code

    def str(self) -> str:
        return self._text

    def txn_requires_abort(self) -> bool:
        return self._abort

    def retriable(self) -> bool:
        return False

    def fatal(self) -> bool:
        return self._fatal


def scripted_loop(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    batches: list[list[FakeMessage]],
    exactly_once: bool = False,
    failing: set[str] | None = None,
    extensions: list[DetectExtension] | None = None,
    max_transactions: int | None = None,
    detect: dict[str, Any] | None = None,
    state: dict[str, Any] | None = None,
) -> tuple[DetectLoop, FakeConsumer, FakeProducer, list[tuple[Any, ...]]]:
    """A loop over fake clients, bounded by max_transactions (else by a short idle time).

    Durable state is off unless `state` says otherwise: no StateExtension runs here, and with it on
    the committer seals (and commits) only once per state.commit_interval_ms.
    """
    config = FraudkitConfig.model_validate(
        {
            "registry": {"path": str(tmp_path)},
            "detect": {"batch_size": 10, **(detect or {})},
            "state": state or {"enabled": False},
        }
    )
    events: list[tuple[Any, ...]] = []
    consumer = FakeConsumer(events, batches)
    labels = FakeConsumer([], [])
    producer = FakeProducer(events, failing)
    consumer.producer = producer
    spec = full_spec()
    holder = ModelHolder(rules(spec), spec)
    options = DetectOptions(
        until_idle_s=None if max_transactions else 0.2,
        max_transactions=max_transactions,
        exactly_once=exactly_once,
        instance_id="fake",
    )
    settings = DetectSettings.resolve(config, options)
    clients = DetectClients(consumer, producer, labels, kafka.BrokerWatch(config))  # type: ignore[arg-type]
    loop = DetectLoop(
        config, settings, holder, clients, threading.Event(), None, lambda _: None, extensions or []
    )
    return loop, consumer, producer, events


def batch(partition_offsets: list[tuple[int, int]], amount: float = 10.0) -> list[FakeMessage]:
    messages = []
    for partition, offset in partition_offsets:
        tx = valid_dict(partition * 1000 + offset)
        tx["amount"] = amount
        messages.append(FakeMessage("transactions", partition, offset, encode(tx), tx["card_id"].encode()))
    return messages


def test_offsets_are_committed_only_after_the_batch_outputs_are_delivered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = batch([(0, 0), (0, 1), (1, 0)])
    second = [*batch([(1, 1)], amount=900.0), FakeMessage("transactions", 0, 2, b"{broken", b"k")]
    third = batch([(0, 3)])
    loop, _, producer, events = scripted_loop(
        tmp_path, monkeypatch, [first, second, third], max_transactions=6
    )
    summary = loop.run()

    assert (summary.consumed, summary.verdicts, summary.fraud, summary.dead_letters) == (6, 5, 1, 1)
    # Nothing is acknowledged before the end (acks only on flush): one final commit, after the wait
    # for every acknowledgement; FakeConsumer.commit checks nothing is outstanding at that moment.
    commits = [e for e in events if e[0] == "commit"]
    assert commits == [("commit", {0: 4, 1: 2}, True)]
    topics = [p[0] for p in producer.produced]
    assert topics.count(loop.topics.verdicts) == 5 and topics.count(loop.topics.fraud) == 1
    letter = next(p for p in producer.produced if p[0] == loop.topics.dead_letter)
    assert letter[1] == b"{broken" and letter[2] == b"k"
    assert dict(letter[3]) == {
        "error": letter[3][0][1],
        "source_topic": "transactions",
        "source_partition": "0",
        "source_offset": "2",
    }
    assert letter[3][0][1].startswith("not valid JSON")


def test_acknowledged_batches_are_committed_without_waiting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    batches = [batch([(0, 0), (1, 0)]), batch([(0, 1)]), batch([(1, 1)])]
    loop, _, producer, events = scripted_loop(tmp_path, monkeypatch, batches, max_transactions=4)
    producer.acks_on_poll = True  # acknowledgements arrive while the next batch is scored
    loop.run()
    commits = [e for e in events if e[0] == "commit"]
    # Before batch 2 and 3 are produced, the earlier ones are committed asynchronously (no flush).
    assert commits[:2] == [("commit", {0: 1, 1: 1}, True), ("commit", {0: 2}, True)]
    assert commits[-1] == ("commit", {1: 2}, True)
    first_commit = events.index(commits[0])
    assert ("flush", 2) not in events[:first_commit]
    # Every verdict's end-to-end latency was taken once its acknowledgement was seen.
    assert loop.latency.total == 4 and loop.committer.undelivered == []  # type: ignore[attr-defined]


def test_unacknowledged_batches_past_the_bound_are_waited_for_and_committed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(commit, "MAX_UNSETTLED_BATCHES", 3)
    monkeypatch.setattr(commit, "MAX_UNSETTLED_S", 3600.0)  # only the message count bounds here
    # Full batches (detect.batch_size is 10 here): the bound is 3 of them, 30 messages.
    batches = [batch([(0, offset) for offset in range(start, start + 10)]) for start in range(0, 70, 10)]
    loop, _, _, events = scripted_loop(tmp_path, monkeypatch, batches, max_transactions=70)
    loop.run()
    # Acknowledgements come only with a flush: every third batch makes the next one wait for them.
    commits = [e for e in events if e[0] == "commit"]
    assert commits == [("commit", {0: 30}, True), ("commit", {0: 60}, True), ("commit", {0: 70}, True)]
    assert events.index(("flush", 60)) < events.index(commits[0])


def test_small_batches_are_not_waited_for_until_their_messages_reach_the_bound(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # At a moderate rate batches are small: a bound in batches made the loop wait for
    # acknowledgements every few milliseconds' worth of them. The bound is in messages.
    monkeypatch.setattr(commit, "MAX_UNSETTLED_BATCHES", 3)
    monkeypatch.setattr(commit, "MAX_UNSETTLED_S", 3600.0)
    batches = [batch([(0, offset)]) for offset in range(7)]
    loop, _, _, events = scripted_loop(tmp_path, monkeypatch, batches, max_transactions=7)
    loop.run()
    commits = [e for e in events if e[0] == "commit"]
    assert commits == [("commit", {0: 7}, True)]  # only at the close: 7 messages < 30
    assert not [e for e in events[: events.index(commits[0]) - 1] if e[0] == "flush"]


def test_a_failed_delivery_stops_the_loop_without_committing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    loop, _, _, events = scripted_loop(tmp_path, monkeypatch, [batch([(0, 0), (0, 1)])], failing={"verdicts"})
    with pytest.raises(
        BrokerError, match=r"could not be delivered .*broker down.*offsets were not committed"
    ):
        loop.run()
    assert not [e for e in events if e[0] == "commit"]


def test_revocation_commits_the_batch_in_flight_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    loop, consumer, _, events = scripted_loop(
        tmp_path, monkeypatch, [batch([(0, 0)]), batch([(1, 0)])], max_transactions=2
    )

    def revoke(fake: FakeConsumer) -> None:
        fake.events.append(("revoke",))
        fake.on_revoke(fake, [kafka.TopicPartition(fake.topic, 0)])

    consumer.before_batch[1] = revoke
    loop.run()
    revoked = events.index(("revoke",))
    assert events[revoked + 1 : revoked + 3] == [("flush", 2), ("commit", {0: 1}, True)]
    assert events.index(("produce", loop.topics.verdicts), revoked) > revoked + 2
    assert loop.assigned == {1}


def test_labels_per_poll_follow_the_batch_just_scored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Applying 5,000 labels at once held the loop 15-20 ms: after a batch it takes at most
    # LABELS_PER_POLL or twice the batch, and more only after a turn without transactions.
    from fraudkit.detect import labels as label_feed

    batches = [batch([(0, offset)]) for offset in range(3)]
    batches.append(batch([(0, offset) for offset in range(3, 3 + 400)]))
    loop, _, _, _ = scripted_loop(tmp_path, monkeypatch, batches)  # until idle
    asked: list[int] = []
    consume = loop.labels.consumer.consume

    def recording(count: int, timeout: float) -> list[Any]:
        asked.append(count)
        return consume(count, timeout)

    monkeypatch.setattr(loop.labels.consumer, "consume", recording)
    loop.run()
    per_batch = [count for count in asked if count != label_feed.LABELS_PER_IDLE_POLL]
    assert per_batch == [label_feed.LABELS_PER_POLL] * 3 + [800]
    assert label_feed.LABELS_PER_IDLE_POLL in asked  # turns without a batch (the idle tail)


class SealRecorder(DetectExtension):
    """Notes the cards each batch changed and writes one 'changelog' record per card at each seal."""

    def __init__(self, events: list[tuple[Any, ...]]) -> None:
        self.events = events
        self.dirty: set[str | None] = set()
        self.latency: LatencyHistogram | None = None
        self.latency_at_seal: list[int] = []

    def on_batch_produce(self, producer: Any, transactions: Any, sources: Any, on_delivery: Any) -> None:
        self.dirty.update(tx.card_id for tx in transactions)
        self.events.append(("batch_produce", len(transactions)))

    def on_seal(self, producer: Any, on_delivery: Any) -> None:
        self.latency_at_seal.append(self.latency.total if self.latency is not None else -1)
        self.events.append(("seal", len(self.dirty)))
        for card_id in sorted(self.dirty, key=str):
            producer.produce("changelog", b"state", card_id, on_delivery=on_delivery)
        self.dirty = set()


def run_with_seals(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    commit_interval_ms: int,
    recorder: SealRecorder | None = None,
    batches: list[list[FakeMessage]] | None = None,
) -> tuple[SealRecorder, list[list[FakeMessage]], FakeProducer, list[tuple[Any, ...]]]:
    """Run batches (by default three, four rows; acknowledged at once) through a loop with a SealRecorder."""
    recorder = recorder or SealRecorder([])
    batches = batches or [batch([(0, 0), (1, 0)]), batch([(0, 1)]), batch([(1, 1)])]
    loop, _, producer, events = scripted_loop(
        tmp_path,
        monkeypatch,
        batches,
        max_transactions=sum(len(messages) for messages in batches),
        extensions=[recorder],
        state={"commit_interval_ms": commit_interval_ms},
    )
    recorder.events = events
    recorder.latency = loop.latency
    producer.acks_on_poll = True  # acknowledged at once: only the interval holds the commit back
    loop.run()
    return recorder, batches, producer, events


def test_state_is_sealed_once_per_interval_before_the_offsets_it_covers_are_committed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    recorder, batches, producer, events = run_with_seals(tmp_path, monkeypatch, commit_interval_ms=1000)
    # Each verdict's latency ended at its acknowledgement, before the seal and the commit (all but
    # the last batch's, acknowledged by the close's own flush).
    assert recorder.latency_at_seal == [3]
    # The three batches fit in one interval: no seal and no commit until the close, then one seal
    # writing each changed card once, and one commit of everything (FakeConsumer.commit checks
    # the changelog records were acknowledged first).
    seals = [e for e in events if e[0] == "seal"]
    commits = [e for e in events if e[0] == "commit"]
    cards = {orjson.loads(m.value())["card_id"] for b in batches for m in b}
    assert seals == [("seal", len(cards))] and commits == [("commit", {0: 2, 1: 2}, True)]
    assert events.index(seals[0]) > max(i for i, e in enumerate(events) if e[0] == "batch_produce")
    assert events.index(commits[0]) > events.index(seals[0])
    assert [p[0] for p in producer.produced].count("changelog") == len(cards) < 4


def test_without_an_interval_every_batch_is_sealed_before_its_commit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, batches, _, events = run_with_seals(tmp_path, monkeypatch, commit_interval_ms=0)
    kinds = [e[0] for e in events if e[0] in ("batch_produce", "seal", "commit")]
    # Each batch's state is sealed right after it is routed, and committed before the next is produced.
    assert kinds == [
        "batch_produce",
        "seal",
        "commit",
        "batch_produce",
        "seal",
        "commit",
        "batch_produce",
        "seal",
        "commit",
    ]
    cards = [len({orjson.loads(m.value())["card_id"] for m in b}) for b in batches]
    assert [e[1] for e in events if e[0] == "seal"] == cards


class SlicedSealRecorder(SealRecorder):
    """Writes one card per seal_step: a seal that takes several slices between batches."""

    def begin_seal(self) -> None:
        self.events.append(("begin_seal",))
        self.marked = sorted(self.dirty, key=str)
        self.dirty = set()

    def seal_step(self, producer: Any, on_delivery: Any, budget_s: float) -> bool:
        while self.marked:
            producer.produce("changelog", b"state", self.marked.pop(0), on_delivery=on_delivery)
            if budget_s != float("inf"):
                break
        if self.marked:
            return False
        self.events.append(("sealed",))
        return True


def test_a_seal_in_slices_lets_the_next_batch_through_and_commits_only_once_it_is_complete(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each batch's rows are distinct cards: a seal of batch 1 takes two slices.
    batches = [batch([(0, 0), (0, 1)]), batch([(0, 2), (0, 3)]), batch([(0, 4)])]
    _, _, producer, events = run_with_seals(tmp_path, monkeypatch, 0, SlicedSealRecorder([]), batches)
    kinds = [e[0] if e[0] != "produce" or e[1] != "changelog" else "changelog" for e in events]
    kinds = [k for k in kinds if k in ("batch_produce", "begin_seal", "changelog", "sealed", "commit")]
    # Batch 2 is routed between the first and the second slice of batch 1's seal; batch 1's offsets
    # are committed only after its last slice.
    assert kinds[:7] == [
        "batch_produce",
        "begin_seal",
        "changelog",
        "batch_produce",
        "changelog",
        "sealed",
        "begin_seal",
    ]
    commits = [e for e in events if e[0] == "commit"]
    first_sealed = events.index(("sealed",))
    assert commits and events.index(commits[0]) > first_sealed
    assert commits[0][1] == {0: 2}
    assert commits[-1] == ("commit", {0: 5}, True)
    assert [p[0] for p in producer.produced].count("changelog") == 5


def test_exactly_once_puts_outputs_and_offsets_in_one_transaction(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    loop, _, _, events = scripted_loop(
        tmp_path, monkeypatch, [batch([(0, 5), (1, 7)])], exactly_once=True, max_transactions=2
    )
    loop.run()
    kinds = [e[0] for e in events]
    assert kinds[0] == "init_transactions"
    begin = kinds.index("begin_transaction")
    assert kinds[begin + 1 : begin + 5] == ["produce"] * 4
    assert events[begin + 5] == ("send_offsets", {0: 6, 1: 8}, "group-metadata")
    assert kinds[begin + 6 : begin + 8] == ["flush", "commit_transaction"]
    assert "commit" not in kinds  # never a plain consumer commit in this mode


def test_exactly_once_sends_the_offsets_again_while_the_group_coordinator_moves(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    loop, _, producer, events = scripted_loop(
        tmp_path, monkeypatch, [batch([(0, 5), (1, 7)])], exactly_once=True, max_transactions=2
    )
    send = producer.send_offsets_to_transaction
    refusals = [FakeError(kafka.KafkaError.COORDINATOR_LOAD_IN_PROGRESS, "Coordinator load in progress")] * 2

    def moving_coordinator(offsets: list[Any], metadata: Any, timeout: float) -> None:
        if refusals:
            raise kafka.KafkaException(refusals.pop())
        send(offsets, metadata, timeout)

    monkeypatch.setattr(producer, "send_offsets_to_transaction", moving_coordinator)
    summary = loop.run()
    assert not refusals  # both refusals were met, then the call went through
    assert [e[0] for e in events].count("commit_transaction") == 1
    assert ("send_offsets", {0: 6, 1: 8}, "group-metadata") in events
    assert summary.consumed == 2


def test_exactly_once_commits_the_transaction_again_after_a_retriable_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    loop, _, producer, events = scripted_loop(
        tmp_path, monkeypatch, [batch([(0, 5), (1, 7)])], exactly_once=True, max_transactions=2
    )
    commit = producer.commit_transaction
    refusals = [FakeError(kafka.KafkaError.NOT_COORDINATOR, "Not coordinator")]
    timeouts: list[float] = []

    def moving_coordinator(timeout: float) -> None:
        timeouts.append(timeout)
        if refusals:
            raise kafka.KafkaException(refusals.pop())
        commit(timeout)

    monkeypatch.setattr(producer, "commit_transaction", moving_coordinator)
    summary = loop.run()
    assert not refusals and len(timeouts) == 2  # refused once, then committed
    assert [e[0] for e in events].count("commit_transaction") == 1
    assert "abort_transaction" not in [e[0] for e in events]
    assert summary.consumed == 2


def test_exactly_once_does_not_retry_a_commit_that_needs_an_abort(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    loop, _, producer, events = scripted_loop(
        tmp_path, monkeypatch, [batch([(0, 5)])], exactly_once=True, max_transactions=1
    )
    calls: list[float] = []

    def fenced_write(timeout: float) -> None:
        calls.append(timeout)
        raise kafka.KafkaException(FakeError(kafka.KafkaError._STATE, "produce timed out", abort=True))

    monkeypatch.setattr(producer, "commit_transaction", fenced_write)
    with pytest.raises(BrokerError, match=r"transaction failed \(produce timed out"):
        loop.run()
    assert len(calls) == 1  # not called again: the transaction was aborted instead
    assert "abort_transaction" in [e[0] for e in events]


def test_extensions_see_scored_batches_and_can_swap_the_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[tuple[int, int, str]] = []

    class Swapper(DetectExtension):
        def on_start(self, context: Any) -> None:
            self.holder = context.holder

        def on_batch_scored(self, features: Any, transactions: Any, scores: Any, model_version: str) -> None:
            seen.append((features.shape[0], len(transactions), model_version))
            spec = self.holder.spec
            self.holder.offer(RuleModel(1.0, spec.names))

    loop, _, _, _ = scripted_loop(
        tmp_path,
        monkeypatch,
        [batch([(0, 0), (0, 1)]), batch([(0, 2)])],
        extensions=[Swapper()],
        max_transactions=3,
    )
    summary = loop.run()
    assert [s[:2] for s in seen] == [(2, 2), (1, 1)]
    assert summary.model_swaps >= 1
    # The second batch was scored by the swapped-in rule (amount 10 > 1): fraud.
    assert summary.fraud == 1


def test_rules_model_needs_no_registry(config: FraudkitConfig) -> None:
    from fraudkit.detect import load_holder

    holder = load_holder(config, "rules")
    assert holder.model.version == "rules" and "amount" in holder.spec.names
    assert holder.features.spec is holder.spec


def test_a_missing_model_fails_with_exit_4_before_any_broker_wait(
    config: FraudkitConfig, tmp_path: Path
) -> None:
    from typer.testing import CliRunner

    from fraudkit.cli import app

    config_path = tmp_path / "config.yaml"
    config_path.write_text(orjson.dumps(config.model_dump(mode="json")).decode())
    result = CliRunner().invoke(app, ["detect", "--config", str(config_path), "--json"])
    assert result.exit_code == 4
    assert "error: no current model in" in result.stderr
    assert "waiting for Kafka" not in result.stderr
