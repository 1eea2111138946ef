"""Fuzzing every decoder over every field: a valid record or InvalidMessage, never another exception.

Published rule sets (`rules_published` on the control topic) go the detector's whole way: a rule set
that compiles and applies to a batch, or RuleError.

Bounded for CI: a fixed number of examples per test, no deadline (the whole file runs in seconds).
"""

from __future__ import annotations

import contextlib
from typing import Any

import numpy as np
import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.unit.detect.test_detect import valid_dict
from tests.unit.rules.test_rules import BATCH, FEATURES, MATRIX

from fraudkit.detect.codec import decode_batch, encode_verdicts
from fraudkit.rules.language import (
    ACTIONS,
    MAX_CONDITION_CHARS,
    BatchColumns,
    RuleError,
    rules_from_data,
    rules_from_message,
    rules_message,
)
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


def _mutate(
    base: dict[str, Any], data: st.DataObject, extra: tuple[str, ...], max_changes: int = 4
) -> dict[str, Any]:
    record = dict(base)
    changes = st.lists(st.sampled_from([*base, *extra]), max_size=max_changes, unique=True)
    for name in data.draw(changes):
        if data.draw(st.booleans()):
            record.pop(name, None)
        else:
            record[name] = data.draw(json_values)
    return record


def _mutated(base: dict[str, Any], data: st.DataObject, max_changes: int = 4) -> bytes:
    record = _mutate(base, data, ("schema", "extra", "unknown"), max_changes)
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


# Conditions: well-formed ones over known and unknown names (they reach the type check and the
# evaluators), token soup from the rule language, deep nesting around the limit and beyond, any text.
_names = st.sampled_from(["amount", "lat", "card_count_1h", "card_new_country", "card_id", "country", "nope"])
_literals = st.sampled_from(["1", "-2.5e3", "1e999", ".5", "0", '"DE"', "'x\\'y'", '"\\n"', "''"])
_operands = st.one_of(_names, _literals)
_comparisons = st.one_of(
    st.builds("{} {} {}".format, _operands, st.sampled_from(["==", "!=", "<", "<=", ">", ">="]), _operands),
    st.builds(
        "{} {}in [{}]".format,
        _operands,
        st.sampled_from(["", "not "]),
        st.lists(_literals, max_size=3).map(", ".join),
    ),
)
_well_formed = st.recursive(
    _comparisons,
    lambda inner: st.one_of(
        st.builds("{} and {}".format, inner, inner),
        st.builds("{} or {}".format, inner, inner),
        st.builds("not {}".format, inner),
        st.builds("({})".format, inner),
    ),
    max_leaves=6,
)
_CONDITION_TOKENS = [
    "amount", "card_id", "country", "card_count_1h", "nope", "and", "or", "not", "in",
    "==", "!=", "<", "<=", ">", ">=", "(", ")", "[", "]", ",", "1", "-", '"DE"', '"\\q"', '"open', "@", "\x00",
]  # fmt: skip
_token_soup = st.lists(st.sampled_from(_CONDITION_TOKENS), max_size=12).map(" ".join)
_nested = st.builds(
    lambda opener, depth, inner: opener * depth + inner + (")" * depth if "(" in opener else ""),
    st.sampled_from(["(", "not ", "not ("]),
    # Depths around the nesting limit (100) and past where Python's recursion limit would hit.
    st.one_of(st.sampled_from([99, 100, 101, 400, 2500]), st.integers(min_value=0, max_value=3000)),
    _well_formed,
).map(lambda text: text[:MAX_CONDITION_CHARS])
conditions = st.one_of(
    _well_formed, _well_formed, _well_formed, _nested, _nested, _token_soup, st.text(max_size=40)
)


def _rules_message(data: st.DataObject) -> dict[str, Any]:
    """A `rules_published` announcement whose rules are valid but for a few fuzzed fields."""
    rules = [
        _mutate(
            {
                "name": f"rule{index}",
                "when": data.draw(conditions),
                "action": data.draw(st.sampled_from(ACTIONS)),
            },
            data,
            ("description", "extra"),
            max_changes=1,
        )
        for index in range(data.draw(st.integers(min_value=0, max_value=3)))
    ]
    message = rules_message(rules_from_data([]), "fuzz", 1_767_225_600_000)
    message["rules"] = rules
    with contextlib.suppress(RuleError):  # the version of the content, where it parses: compile is reached
        message["version"] = rules_from_data(rules).version
    return message


@FUZZ
@given(st.data())
def test_published_rule_sets_parse_compile_and_apply_or_raise_rule_error(data: st.DataObject) -> None:
    # The detector's path (rules.live): decode_json, rules_from_message, compile, apply per batch.
    raw = _mutated(_rules_message(data), data, max_changes=1)
    try:
        event = decode_json(raw)
    except InvalidMessage:
        return
    try:
        rule_set = rules_from_message(event)
    except RuleError as exc:
        assert str(exc)
        return
    assert rule_set.version == event["version"]
    assert all(rule.action in ACTIONS and rule.condition is not None for rule in rule_set.rules)
    try:
        compiled = rule_set.compile(FEATURES)
    except RuleError as exc:
        assert str(exc)
        return
    outcome = compiled.apply(BatchColumns(BATCH, MATRIX, FEATURES), np.zeros(len(BATCH), dtype=bool))
    assert outcome.fraud.shape == outcome.review.shape == (len(BATCH),)
    assert len(outcome.fired) == len(BATCH) and outcome.version == rule_set.version
