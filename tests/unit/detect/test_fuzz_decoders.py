"""Fuzzing every decoder over every field: a valid record or InvalidMessage, never another exception.

Bounded for CI: a fixed number of examples per test, no deadline (the whole file runs in seconds).
"""

from __future__ import annotations

import contextlib
from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.unit.detect.test_detect import valid_dict

from fraudkit.detect.codec import decode_batch, encode_verdicts
from fraudkit.schema import InvalidMessage, Label, decode_control, decode_json, decode_label
from fraudkit.storage.sink import label_row, verdict_row

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Any JSON value, with the awkward cases weighted in: booleans, huge and tiny numbers, NUL, long text.
json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**64), max_value=2**64),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([0, 1, -1, 1e300, -1e300, 2**53, 2**63, 2**64 - 1, 946_684_800_000, 4_102_444_800_001]),
    st.text(max_size=30),
    st.sampled_from(["", "\x00", "a\x00b", "x" * 1025, "\u202e", "\ud7ff"]),
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=10,
)


def _mutated(base: dict[str, Any], data: st.DataObject) -> bytes:
    record = dict(base)
    names = [*base, "schema", "extra", "unknown"]
    for name in data.draw(st.lists(st.sampled_from(names), max_size=4, unique=True)):
        if data.draw(st.booleans()):
            record.pop(name, None)
        else:
            record[name] = data.draw(json_values)
    try:
        return orjson.dumps(record)
    except TypeError:  # a value orjson cannot write (e.g. an integer past 64 bits): send text instead
        return repr(record).encode()


def _label_dict() -> dict[str, Any]:
    return Label("tx-1", 1_767_225_600_000, 1, "card", "term", 1_767_830_400_000, "").to_dict()


def _verdict_dict() -> dict[str, Any]:
    return {
        "schema": 1, "transaction_id": "tx-1", "card_id": "card", "terminal_id": "term", "score": 0.7,
        "decision": "fraud", "threshold": 0.5, "model_version": "v1",
        "reasons": [{"feature": "amount", "value": 2.0, "contribution": 0.4}],
        "event_time_ms": 1_767_225_600_000, "produced_ms": 1, "consumed_ms": 2, "verdict_ms": 3,
        "amount": 12.5, "currency": "EUR", "country": "DE", "merchant_category": "5411", "detector": "d",
    }  # fmt: skip


def _control_dict() -> dict[str, Any]:
    return {
        "schema": 1, "type": "model_published", "version": "v2", "metrics": {"average_precision": 0.8},
        "champion_metrics": {}, "at_ms": 1, "trainer": "t", "rows": {"holdout": 10},
    }  # fmt: skip


@FUZZ
@given(st.data())
def test_transactions_decode_to_a_record_that_encodes_or_to_a_reason(data: st.DataObject) -> None:
    raw = _mutated(valid_dict(), data)
    transactions, good, bad = decode_batch([raw])
    assert len(good) + len(bad) == 1
    if bad:
        assert isinstance(bad[0][1], str) and bad[0][1]
    else:
        # Whatever is accepted can be scored and written as a verdict (orjson refuses > 64-bit ints).
        encode_verdicts(transactions, [0.5], [True], {}, 0.5, "v1", 1, 2, "d")


@FUZZ
@given(st.binary(max_size=300))
def test_any_bytes_decode_or_are_refused_with_a_reason(raw: bytes) -> None:
    _, good, bad = decode_batch([raw])
    assert len(good) + len(bad) == 1
    for decoder in (decode_label, decode_json, decode_control):
        with contextlib.suppress(InvalidMessage):
            decoder(raw)


@FUZZ
@given(st.data())
def test_labels_decode_to_a_storable_row_or_to_a_reason(data: st.DataObject) -> None:
    raw = _mutated(_label_dict(), data)
    try:
        label = decode_label(raw)
    except InvalidMessage:
        return
    assert type(label.label) is int and label.label in (0, 1)
    try:
        row = label_row(raw)
    except InvalidMessage:
        return
    assert all(value is None or not isinstance(value, int) or abs(value) < 2**63 for value in row)


@FUZZ
@given(st.data())
def test_verdicts_decode_to_a_storable_row_or_to_a_reason(data: st.DataObject) -> None:
    raw = _mutated(_verdict_dict(), data)
    try:
        row = verdict_row(decode_json(raw))
    except InvalidMessage:
        return
    for value in row:
        if isinstance(value, str):
            assert "\x00" not in value and len(value) <= 16_384
        elif isinstance(value, int):
            assert abs(value) < 2**63


@FUZZ
@given(st.data())
def test_control_messages_decode_with_typed_fields_or_to_a_reason(data: st.DataObject) -> None:
    from fraudkit.retrain.extension import outcome_summary

    raw = _mutated(_control_dict(), data)
    try:
        event = decode_control(raw)
    except InvalidMessage:
        return
    assert isinstance(event["type"], str)
    # What the detectors do with an announcement: it must not raise either.
    assert isinstance(outcome_summary(event), str)
