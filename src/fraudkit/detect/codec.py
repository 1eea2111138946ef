"""The detector's hot path codecs: batch decoding of transactions and encoding of verdicts."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import msgspec
import orjson

from fraudkit.schema import (
    MAX_AMOUNT,
    MAX_EPOCH_MS,
    MAX_EVENT_MS,
    MAX_EXTRA_FIELDS,
    MAX_EXTRA_KEY_CHARS,
    MAX_TEXT_CHARS,
    MIN_EVENT_MS,
    SCHEMA_VERSION,
    InvalidMessage,
    Transaction,
    decode_transaction,
)

if TYPE_CHECKING:
    from fraudkit.rules.language import RuleOutcome

_OPTIONAL_TEXT = ("customer_id", "terminal_id", "currency", "merchant_category", "country")
# What `detect.max_message_bytes` defaults to; the loop passes the configured value.
DEFAULT_MAX_MESSAGE_BYTES = 1_000_000
_isfinite = math.isfinite
_loads = orjson.loads
_JSONDecodeError = orjson.JSONDecodeError
# The fraudkit producers' own encoding (`schema.encode`) starts so. Only such messages take the msgspec
# path: a Struct tag may be absent when decoding, and the schema version is required here.
_CANONICAL_PREFIX = b'{"schema":%d,' % SCHEMA_VERSION
_decode_canonical = msgspec.json.Decoder(Transaction).decode
_MsgspecError = msgspec.MsgspecError


def _fast_transaction(data: Any) -> Transaction | None:
    """The well-formed common case without per-field helper calls; None means "ask the full validator".

    Whatever this accepts, `schema.transaction_from_dict` accepts with the identical result; anything
    unusual (ints as ids, float event times, odd `extra`, any invalid field) returns None so the
    full validator decides and words the error.
    """
    if type(data) is not dict:
        return None
    get = data.get
    version = get("schema")
    if type(version) is not int or version != SCHEMA_VERSION:
        return None
    # Any: the checks below narrow by exact type(), which the type checker does not follow.
    transaction_id: Any = get("transaction_id")
    card_id: Any = get("card_id")
    event_time_ms: Any = get("event_time_ms")
    amount: Any = get("amount")
    if (
        type(transaction_id) is not str
        or not transaction_id
        or type(card_id) is not str
        or not card_id
        or type(event_time_ms) is not int
        or not MIN_EVENT_MS <= event_time_ms <= MAX_EVENT_MS
    ):
        return None
    amount_type = type(amount)
    if amount_type is float:
        if not (_isfinite(amount) and 0.0 <= amount <= MAX_AMOUNT):
            return None
    elif amount_type is int:
        if not 0 <= amount <= MAX_AMOUNT:
            return None
        amount = float(amount)
    else:
        return None
    customer_id = get("customer_id")
    terminal_id = get("terminal_id")
    currency = get("currency")
    merchant_category = get("merchant_category")
    country = get("country")
    for text in (customer_id, terminal_id, currency, merchant_category, country):
        if text is not None and type(text) is not str:
            return None
    lat = get("lat")
    lon = get("lon")
    if lat is not None:
        if type(lat) is int:
            lat = float(lat)
        if type(lat) is not float or not -90.0 <= lat <= 90.0:
            return None
    if lon is not None:
        if type(lon) is int:
            lon = float(lon)
        if type(lon) is not float or not -180.0 <= lon <= 180.0:
            return None
    extra_raw = get("extra")
    extra: dict[str, float] = {}
    if extra_raw:
        if type(extra_raw) is not dict or len(extra_raw) > MAX_EXTRA_FIELDS:
            return None
        for key, value in extra_raw.items():
            if len(key) > MAX_EXTRA_KEY_CHARS:
                return None
            value_type = type(value)
            if value_type is float:
                if not _isfinite(value):
                    return None
            elif value_type is int:
                value = float(value)
            else:
                return None
            extra[key] = value
    produced_ms: Any = get("produced_ms")
    if produced_ms is not None:
        produced_type = type(produced_ms)
        if produced_type is not int and produced_type is not float:
            return None
        if not 0 <= produced_ms <= MAX_EPOCH_MS:
            return None
        produced_ms = int(produced_ms)
    return Transaction(
        transaction_id,
        event_time_ms,
        card_id,
        amount,
        customer_id,
        terminal_id,
        currency,
        merchant_category,
        country,
        lat,
        lon,
        produced_ms,
        extra,
    )


def _within_limits(transaction: Transaction) -> bool:
    """Whether every text field respects the schema's bound (checked for long messages only)."""
    for text in (
        transaction.transaction_id,
        transaction.card_id,
        transaction.customer_id,
        transaction.terminal_id,
        transaction.currency,
        transaction.merchant_category,
        transaction.country,
    ):
        if text is not None and len(text) > MAX_TEXT_CHARS:
            return False
    return True


def too_large(size: int, max_bytes: int) -> str:
    """The dead-letter reason of a message over detect.max_message_bytes."""
    return f"message of {size:,} bytes is larger than detect.max_message_bytes ({max_bytes:,})"


def decode_one(raw: bytes | None, max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> Transaction:
    """Decode and validate one transaction exactly as `decode_batch` does; InvalidMessage otherwise."""
    transactions, _, bad = decode_batch([raw], max_bytes)
    if bad:
        raise InvalidMessage(bad[0][1])
    return transactions[0]


def _all_canonical(values: Sequence[bytes | None], max_bytes: int) -> list[Transaction] | None:
    """The common batch in two C-driven passes: every value canonical, within bounds and valid; else None.

    None sends the batch through the per-message paths (which decide each message and word the
    errors), so a batch with a poison message is decoded twice: rare, and bounded by its size.
    """
    prefix = _CANONICAL_PREFIX
    for raw in values:
        if raw is None or len(raw) > max_bytes or not raw.startswith(prefix):
            return None
    decode = _decode_canonical
    try:
        return [decode(raw) for raw in values]  # type: ignore[arg-type]  # None was excluded above
    except _MsgspecError:
        return None


def decode_batch(
    values: Sequence[bytes | None], max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
) -> tuple[list[Transaction], list[int], list[tuple[int, str]]]:
    """Decode many message values: (transactions, their indices, [(index, error text)] for the rest).

    Accepts exactly what `schema.decode_transaction` accepts (with the same error text), except
    values over `max_bytes`, which are refused before parsing.
    """
    canonical = _all_canonical(values, max_bytes)
    if canonical is not None:
        return canonical, list(range(len(canonical))), []
    transactions: list[Transaction] = []
    good: list[int] = []
    bad: list[tuple[int, str]] = []
    append_tx = transactions.append
    append_good = good.append
    for index, raw in enumerate(values):
        transaction = None
        if raw is not None:
            size = len(raw)
            if size > max_bytes:
                bad.append((index, too_large(size, max_bytes)))
                continue
            if raw.startswith(_CANONICAL_PREFIX):
                # Validated in C against the bounds annotated on Transaction; whatever it refuses
                # (an unknown field, a float event time, ...) the paths below decide and word.
                try:
                    transaction = _decode_canonical(raw)
                except _MsgspecError:
                    transaction = None
            if transaction is None:
                try:
                    transaction = _fast_transaction(_loads(raw))
                except _JSONDecodeError:
                    transaction = None
                # A short message cannot hold an over-long field: only long ones pay for the check.
                if transaction is not None and size > MAX_TEXT_CHARS and not _within_limits(transaction):
                    transaction = None
        if transaction is None:
            try:
                transaction = decode_transaction(raw)
            except InvalidMessage as exc:
                bad.append((index, str(exc)))
                continue
        append_tx(transaction)
        append_good(index)
    return transactions, good, bad


class _Verdict(msgspec.Struct, gc=False):
    """A verdict's wire form, its fields in wire order (schema.py documents the record)."""

    schema: int
    transaction_id: str
    card_id: str
    terminal_id: str | None
    score: float
    decision: str
    threshold: float
    model_version: str
    reasons: list[dict[str, Any]]
    event_time_ms: int
    produced_ms: int | None
    consumed_ms: int
    verdict_ms: int
    amount: float
    currency: str | None
    country: str | None
    merchant_category: str | None
    detector: str
    rules: list[str]
    review: bool
    rules_version: str | None


_encode_lines = msgspec.json.Encoder().encode_lines


def encode_verdicts(
    transactions: Sequence[Transaction],
    scores: Sequence[float],
    frauds: Sequence[bool],
    reasons: dict[int, list[dict[str, Any]]],
    threshold: float,
    model_version: str,
    consumed_ms: int,
    verdict_ms: int,
    detector: str,
    rule_outcome: RuleOutcome | None = None,
) -> list[bytes]:
    """JSON bytes of every verdict of a batch; `reasons` maps row index to reason codes (fraud rows).

    `rule_outcome` (rules applied to the batch) names the matching rules of each row and its review flag.
    """
    no_reasons: list[dict[str, Any]] = []
    no_rules: list[str] = []
    fired: Sequence[list[str]] = rule_outcome.fired if rule_outcome is not None else ()
    review: list[bool] = rule_outcome.review.tolist() if rule_outcome is not None else []
    rules_version = rule_outcome.version if rule_outcome is not None else None
    get_reasons = reasons.get
    rows = [
        _Verdict(
            SCHEMA_VERSION,
            transaction.transaction_id,
            transaction.card_id,
            transaction.terminal_id,
            score,
            "fraud" if fraud else "legit",
            threshold,
            model_version,
            get_reasons(index, no_reasons) if fraud else no_reasons,
            transaction.event_time_ms,
            transaction.produced_ms,
            consumed_ms,
            verdict_ms,
            transaction.amount,
            transaction.currency,
            transaction.country,
            transaction.merchant_category,
            detector,
            fired[index] if fired else no_rules,
            review[index] if review else False,
            rules_version,
        )
        for index, (transaction, score, fraud) in enumerate(zip(transactions, scores, frauds, strict=True))
    ]
    # One call for the batch, then split: JSON escapes every newline inside strings, so each line
    # is exactly one verdict. The bytes are orjson.dumps's of the same dict (tested), except that
    # floats of 1e16 and more read "1e16" rather than "1e+16": the same JSON number.
    return _encode_lines(rows).split(b"\n")[:-1]


# A dead letter keeps the original bytes when they fit, else an excerpt: it must always fit the
# producer's and the broker's message.max.bytes, or the dead-letter path itself would crash-loop.
DEAD_LETTER_HEADER_ROOM = 8192
DEAD_LETTER_EXCERPT_BYTES = 4096
DEAD_LETTER_KEY_BYTES = 1024
MAX_REASON_CHARS = 1000

DeadLetter = tuple[bytes | None, bytes | None, list[tuple[str, str | bytes | None]]]


def dead_letter(
    value: bytes | None,
    key: bytes | None,
    reason: str,
    source: tuple[str, int, int],
    max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    excerpt: bool = False,
) -> DeadLetter:
    """(value, key, headers) of the dead letter of a message: verbatim if it fits, else an excerpt.

    Headers: `error` (the reason, at most MAX_REASON_CHARS), `source_topic`, `source_partition`,
    `source_offset`; an excerpt adds `truncated` ("true"), `original_bytes` and `sha256` of the
    whole original value. `excerpt` forces one (the broker refused something that size already).
    """
    topic, partition, offset = source
    if len(reason) > MAX_REASON_CHARS:
        reason = reason[: MAX_REASON_CHARS - 3] + "..."
    headers: list[tuple[str, str | bytes | None]] = [
        ("error", reason),
        ("source_topic", topic),
        ("source_partition", str(partition)),
        ("source_offset", str(offset)),
    ]
    size = (len(value) if value is not None else 0) + (len(key) if key is not None else 0)
    if not excerpt and size + DEAD_LETTER_HEADER_ROOM <= max_bytes:
        return value, key, headers
    if value is not None:
        headers += [
            ("truncated", "true"),
            ("original_bytes", str(len(value))),
            ("sha256", hashlib.sha256(value).hexdigest()),
        ]
        value = value[:DEAD_LETTER_EXCERPT_BYTES]
    if key is not None and len(key) > DEAD_LETTER_KEY_BYTES:
        headers.append(("original_key_bytes", str(len(key))))
        key = key[:DEAD_LETTER_KEY_BYTES]
    return value, key, headers
