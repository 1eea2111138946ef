"""Poison messages: whatever one message holds, it is dead-lettered with a reason and the loop goes on."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import orjson
import pytest
from tests.unit.detect.test_detect import START_MS, FakeMessage, batch, full_spec, scripted_loop, valid_dict

from fraudkit.detect.codec import (
    DEAD_LETTER_EXCERPT_BYTES,
    dead_letter,
    decode_batch,
    encode_verdicts,
)
from fraudkit.features import OnlineFeatures
from fraudkit.schema import (
    InvalidMessage,
    Label,
    Transaction,
    decode_control,
    decode_json,
    decode_label,
    decode_transaction,
    encode,
)
from fraudkit.stream.clock import MIN_SAMPLES, StreamClock

HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS
YEAR_2099_MS = 4_070_908_800_000  # 2099-01-01
# Six text fields of 1,000 characters: a valid transaction whose branch copy and verdict are ~6 KB.
LONG_FIELDS = ("transaction_id", "card_id", "terminal_id", "currency", "merchant_category", "country")


def reason_of(value: dict[str, Any] | bytes) -> str:
    raw = value if isinstance(value, bytes) else orjson.dumps(value)
    transactions, _, bad = decode_batch([raw])
    assert not transactions, f"accepted: {raw!r}"
    return bad[0][1]


# -- decoding: types and ranges ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"produced_ms": 1e300}, "produced_ms: 1e+300 is out of range (0..9007199254740991)"),
        ({"produced_ms": -1}, "produced_ms: -1 is out of range (0..9007199254740991)"),
        ({"produced_ms": 2**64 - 1}, "produced_ms: 18446744073709551615 is out of range"),
        ({"produced_ms": True}, "produced_ms: expected epoch milliseconds, got bool"),
        ({"produced_ms": "12"}, "produced_ms: expected epoch milliseconds, got str"),
        ({"schema": True}, "schema: expected an integer version, got bool"),
        ({"schema": 1.0}, "schema: expected an integer version, got float"),
        ({"schema": None}, "schema: missing schema version"),
        ({"event_time_ms": True}, "event_time_ms: expected epoch milliseconds, got bool"),
        ({"amount": False}, "amount: expected a number, got bool"),
        ({"card_id": True}, "card_id: expected a string, got bool"),
        ({"lat": True}, "lat: expected a number, got bool"),
        ({"card_id": "c" * 1025}, "card_id: 1025 characters is longer than the limit of 1024"),
        ({"country": "x" * 5000}, "country: 5000 characters is longer than the limit of 1024"),
        ({"extra": {"k" * 200: 1.0}}, "extra: a field name is longer than 128 characters"),
        ({"extra": {f"V{i}": 1.0 for i in range(300)}}, "extra: 300 fields is more than the limit of 256"),
    ],
)
def test_a_transaction_with_a_mistyped_or_out_of_range_field_is_refused(
    change: dict[str, Any], reason: str
) -> None:
    data = {**valid_dict(), **change}
    if change.get("schema", 0) is None:
        del data["schema"]
    assert reason_of(data).startswith(reason)
    with pytest.raises(
        InvalidMessage, match="^" + reason.replace("(", r"\(").replace(")", r"\)").replace("+", r"\+")
    ):
        decode_transaction(orjson.dumps(data))


def test_every_accepted_transaction_encodes_as_a_verdict() -> None:
    # The crash loop: 1e300 was accepted as produced_ms, then orjson refused the verdict's int.
    edge = [
        {"produced_ms": 2**53 - 1},
        {"produced_ms": 0},
        {"produced_ms": 1.5e12},
        {"amount": 10_000_000},
        {"card_id": 2**64 - 1},
        {"card_id": "c" * 1024},
    ]
    values = [orjson.dumps({**valid_dict(i), **change}) for i, change in enumerate(edge)]
    transactions, good, bad = decode_batch(values)
    assert bad == [] and good == list(range(len(edge)))
    verdicts = encode_verdicts(
        transactions, [0.5] * len(edge), [False] * len(edge), {}, 0.5, "v1", 1, 2, "test"
    )
    assert [orjson.loads(v)["produced_ms"] for v in verdicts[:3]] == [2**53 - 1, 0, 1_500_000_000_000]


def test_a_label_or_verdict_or_announcement_with_a_boolean_schema_is_refused() -> None:
    label = Label("tx-1", START_MS, 1, "card", "term", START_MS + DAY_MS, "").to_dict()
    assert decode_label(orjson.dumps(label)).label == 1
    for change, reason in [
        ({"schema": True}, "schema: expected an integer version, got bool"),
        ({"label": True}, "label: expected 0 or 1, got True"),
        ({"label": 1.0}, "label: expected 0 or 1, got 1.0"),
        ({"labelled_ms": 1e300}, "labelled_ms: 1e+300 is out of range"),
        ({"labelled_ms": False}, "labelled_ms: expected epoch milliseconds, got bool"),
    ]:
        with pytest.raises(InvalidMessage, match=reason.replace("+", r"\+")):
            decode_label(orjson.dumps({**label, **change}))
    without_schema = {k: v for k, v in label.items() if k != "schema"}
    with pytest.raises(InvalidMessage, match="schema: missing schema version"):
        decode_label(orjson.dumps(without_schema))
    with pytest.raises(InvalidMessage, match="schema: expected an integer version, got bool"):
        decode_json(b'{"schema": true, "transaction_id": "x"}')
    announcement = {"schema": 1, "type": "model_published", "version": "v2", "metrics": {}}
    assert decode_control(orjson.dumps(announcement))["version"] == "v2"
    for change, reason in [
        ({"schema": True}, "schema: expected an integer version, got bool"),
        ({"version": 2}, "version: expected a string, got int"),
        ({"metrics": [1]}, "metrics: expected an object, got list"),
        ({"rows": {"holdout": "many"}}, "rows.holdout: expected a row count, got 'many'"),
        ({"rows": {"holdout": True}}, "rows.holdout: expected a row count, got True"),
        ({"at_ms": 1e300}, "at_ms: 1e+300 is out of range"),
        ({"type": None}, "type: missing"),
    ]:
        with pytest.raises(InvalidMessage, match=reason.replace("+", r"\+")):
            decode_control(orjson.dumps({**announcement, **change}))


def test_messages_over_the_size_limit_are_refused_before_parsing() -> None:
    huge = orjson.dumps({**valid_dict(), "merchant_category": "m" * 1_500_000})
    _, good, bad = decode_batch([encode(valid_dict()), huge, b"\xff" * 2_000_000])
    assert good == [0]
    assert bad == [
        (1, f"message of {len(huge):,} bytes is larger than detect.max_message_bytes (1,000,000)"),
        (2, "message of 2,000,000 bytes is larger than detect.max_message_bytes (1,000,000)"),
    ]


# -- bounded dead letters ---------------------------------------------------------------------


def test_a_dead_letter_keeps_small_messages_whole_and_large_ones_as_an_excerpt() -> None:
    source = ("transactions", 2, 41)
    value, key, headers = dead_letter(b"{bad", b"card", "not valid JSON", source)
    assert (value, key) == (b"{bad", b"card")
    assert dict(headers) == {
        "error": "not valid JSON",
        "source_topic": "transactions",
        "source_partition": "2",
        "source_offset": "41",
    }
    original = b"\xfe" * 2_000_000
    value, key, headers = dead_letter(original, b"k" * 5000, "r" * 5000, source)
    assert value == original[:DEAD_LETTER_EXCERPT_BYTES]
    assert key == b"k" * 1024
    fields = dict(headers)
    assert fields["error"] == "r" * 997 + "..."
    assert fields["truncated"] == "true"
    assert fields["original_bytes"] == "2000000"
    assert fields["original_key_bytes"] == "5000"
    assert fields["sha256"] == hashlib.sha256(original).hexdigest()
    assert fields["source_offset"] == "41"
    size = len(value) + len(key) + sum(len(k) + len(str(v)) for k, v in headers)
    assert size < 8192


# -- the loop ---------------------------------------------------------------------------------


def _letters(loop: Any, producer: Any, since: int = 0) -> list[tuple[str, bytes | None, Any, Any]]:
    return [p for p in producer.produced[since:] if p[0] == loop.topics.dead_letter]


@pytest.mark.parametrize("exactly_once", [False, True])
def test_an_oversized_message_is_dead_lettered_as_an_excerpt_and_committed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, exactly_once: bool
) -> None:
    messages = batch([(0, 0), (0, 1)])
    big = orjson.dumps({**valid_dict(7), "merchant_category": "m" * 30_000})
    messages.insert(1, FakeMessage("transactions", 1, 5, big, b"card-big"))
    loop, _, producer, events = scripted_loop(
        tmp_path,
        monkeypatch,
        [messages],
        exactly_once=exactly_once,
        max_transactions=3,
        detect={"max_message_bytes": 20_000},
    )
    summary = loop.run()
    assert (summary.verdicts, summary.dead_letters) == (2, 1)
    [letter] = _letters(loop, producer)
    headers = dict(letter[3])
    assert letter[1] == big[:DEAD_LETTER_EXCERPT_BYTES] and letter[2] == b"card-big"
    size = len(big) + len(b"card-big")  # the key travels with every copy: it counts
    assert headers["error"] == f"message of {size:,} bytes is larger than detect.max_message_bytes (20,000)"
    assert (headers["source_partition"], headers["source_offset"]) == ("1", "5")
    assert headers["original_bytes"] == str(len(big))
    if exactly_once:
        assert ("send_offsets", {0: 2, 1: 6}, "group-metadata") in events
    else:
        assert [e for e in events if e[0] == "commit"][-1] == ("commit", {0: 2, 1: 6}, True)


def test_outputs_the_broker_refuses_as_too_large_are_dead_lettered_at_least_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    messages = batch([(0, 0), (0, 1), (1, 0)])
    long_field = orjson.dumps({**valid_dict(9), **dict.fromkeys(LONG_FIELDS, "m" * 1000)})
    messages.append(FakeMessage("transactions", 1, 1, long_field, b"card-long"))
    loop, _, producer, events = scripted_loop(tmp_path, monkeypatch, [messages], max_transactions=4)
    producer.broker_max_bytes = 5000  # below both outputs of the long one, above the others'
    summary = loop.run()
    assert summary.dead_letters == 1
    [letter] = _letters(loop, producer)
    headers = dict(letter[3])
    assert headers["error"].startswith("the broker refused the copy to transactions.")
    assert headers["error"].endswith("Broker: Message size too large")
    assert (headers["source_partition"], headers["source_offset"]) == ("1", "1")
    assert letter[1] == long_field[:DEAD_LETTER_EXCERPT_BYTES]
    # Committed past it, after the dead letter was delivered (FakeConsumer.commit checks that).
    assert [e for e in events if e[0] == "commit"][-1] == ("commit", {0: 2, 1: 2}, True)


def test_outputs_the_broker_refuses_as_too_large_are_dead_lettered_exactly_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    messages = batch([(0, 0), (0, 1)])
    long_field = orjson.dumps({**valid_dict(9), **dict.fromkeys(LONG_FIELDS, "m" * 1000)})
    messages.insert(1, FakeMessage("transactions", 1, 1, long_field, b"card-long"))
    loop, _, producer, events = scripted_loop(
        tmp_path, monkeypatch, [messages], exactly_once=True, max_transactions=3
    )
    producer.broker_max_bytes = 5000
    summary = loop.run()
    kinds = [e[0] for e in events]
    # The first transaction is aborted; the second holds the dead letter instead and commits.
    assert kinds.count("abort_transaction") == 1 and kinds.count("commit_transaction") == 1
    assert kinds.index("abort_transaction") < kinds.index("commit_transaction")
    retry = max(i for i, e in enumerate(events) if e[0] == "begin_transaction")
    produced_after = [e[1] for e in events[retry:] if e[0] == "produce"]
    assert produced_after.count(loop.topics.dead_letter) == 1
    assert produced_after.count(loop.topics.verdicts) == 2
    assert (summary.verdicts, summary.dead_letters) == (2, 1)
    assert ("send_offsets", {0: 2, 1: 2}, "group-metadata") in events


# -- the stream clock -------------------------------------------------------------------------


def _tx(index: int, time_ms: int) -> Transaction:
    return Transaction(
        transaction_id=f"tx-{index}",
        event_time_ms=time_ms,
        card_id=f"card-{index % 20}",
        amount=10.0 + index % 7,
        customer_id=f"cust-{index % 20}",
        terminal_id=f"term-{index % 5}",
        country="DE",
        lat=48.1,
        lon=11.6,
    )


def _label(index: int, time_ms: int) -> Label:
    return Label(f"tx-{index}", time_ms, index % 2, f"card-{index % 20}", f"term-{index % 5}")


def test_one_transaction_dated_2099_does_not_wipe_the_feature_state() -> None:
    features = OnlineFeatures(full_spec())
    clock = StreamClock(max_future_skew_ms=HOUR_MS)
    # A normal stream: a transaction every minute for 10 hours, in batches of 10, with labels.
    index = 0
    for _ in range(60):
        batch_txs = [_tx(index + i, START_MS + (index + i) * 60_000) for i in range(10)]
        features.transform(batch_txs)
        features.observe_labels(
            _label(tx_index, START_MS + tx_index * 60_000) for tx_index in range(index, index + 10)
        )
        clock.observe([tx.event_time_ms for tx in batch_txs])
        index += 10
    last_normal = START_MS + (index - 1) * 60_000
    assert clock.now_ms == last_normal
    before = features.state_counts()
    assert before["cards"] == 20 and before["terminal_labels"] == 600

    # The poison message, alone in its batch (a quiet stream), then the stream goes on.
    poison = _tx(index, YEAR_2099_MS)
    features.transform([poison])
    clock.observe([poison.event_time_ms])
    assert clock.now_ms == last_normal and clock.ignored_ahead == 1
    features.expire(clock.now_ms)

    after = features.state_counts()
    assert after["cards"] == 20 and after["terminal_labels"] == 600
    # Labels that arrive later are still kept, not ignored as "older than the clock".
    ignored = after["labels_ignored"]
    features.observe_label(_label(index + 1, last_normal + 60_000))
    assert features.state_counts()["terminal_labels"] == 601
    assert features.state_counts()["labels_ignored"] == ignored
    # And the normal stream keeps moving the clock.
    clock.observe([last_normal + 60_000 * step for step in range(1, 11)])
    assert clock.now_ms == last_normal + 10 * 60_000


def test_the_stream_clock_follows_the_stream_but_not_a_minority_of_outliers() -> None:
    clock = StreamClock(max_future_skew_ms=HOUR_MS)
    # A stream that starts with an outlier is not dated by it.
    clock.observe([YEAR_2099_MS])
    clock.observe([START_MS + i for i in range(MIN_SAMPLES)])
    assert clock.now_ms == START_MS + MIN_SAMPLES - 1
    # Up to the skew ahead of the median moves it (ordinary out-of-order arrival); beyond does not.
    clock.observe([START_MS + 30 * 60_000])
    assert clock.now_ms == START_MS + 30 * 60_000
    clock.observe([START_MS + 2 * HOUR_MS])
    assert clock.now_ms == START_MS + 30 * 60_000
    assert clock.ignored_ahead == 1  # the +2 h one (the 2099 one came before the clock started)
    # It never goes back.
    clock.observe([START_MS - DAY_MS] * 5)
    assert clock.now_ms == START_MS + 30 * 60_000
    # A sparse stream whose newest samples span more than the skew still advances (to the reference).
    sparse = StreamClock(max_future_skew_ms=60_000)
    for step in range(100):
        sparse.observe([START_MS + step * HOUR_MS])
    assert sparse.now_ms == START_MS + 89 * HOUR_MS  # the 90th percentile of the 100 samples
    # When the whole stream moves on (most recent samples), the clock follows it.
    later = START_MS + 10 * DAY_MS
    for step in range(20):
        clock.observe([later + step * 1000 + i for i in range(40)])
    assert clock.now_ms == later + 19 * 1000 + 39


def test_the_detector_loop_expires_state_by_the_stream_clock_not_by_an_outlier(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    normal = batch([(0, offset) for offset in range(20)])
    poison = orjson.dumps({**valid_dict(99), "event_time_ms": YEAR_2099_MS})
    loop, _, _, _ = scripted_loop(
        tmp_path,
        monkeypatch,
        [normal, [FakeMessage("transactions", 1, 0, poison, b"card-0")]],
        max_transactions=21,
    )
    summary = loop.run()
    assert summary.verdicts == 21  # the outlier is scored like any other transaction
    assert loop.clock.now_ms == max(orjson.loads(m.value())["event_time_ms"] for m in normal)
    assert loop.clock.ignored_ahead == 1
