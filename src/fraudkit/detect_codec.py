"""The detector's hot path codecs: batch decoding of transactions and encoding of verdicts."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import orjson

from fraudkit.schema import (
    MAX_AMOUNT,
    MAX_EVENT_MS,
    MIN_EVENT_MS,
    SCHEMA_VERSION,
    InvalidMessage,
    Transaction,
    decode_transaction,
)

if TYPE_CHECKING:
    from fraudkit.rules import RuleOutcome

_OPTIONAL_TEXT = ("customer_id", "terminal_id", "currency", "merchant_category", "country")
_isfinite = math.isfinite
_loads = orjson.loads
_JSONDecodeError = orjson.JSONDecodeError


def _fast_transaction(data: Any) -> Transaction | None:
    """The well-formed common case without per-field helper calls; None means "ask the full validator".

    Whatever this accepts, `schema.transaction_from_dict` accepts with the identical result; anything
    unusual (ints as ids, float event times, odd `extra`, any invalid field) returns None so the
    full validator decides and words the error.
    """
    if type(data) is not dict:
        return None
    get = data.get
    if get("schema", SCHEMA_VERSION) != SCHEMA_VERSION:
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
        if type(extra_raw) is not dict:
            return None
        for key, value in extra_raw.items():
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
    produced_type = type(produced_ms)
    if produced_type is float:
        produced_ms = int(produced_ms)
    elif produced_type is not int:
        produced_ms = None
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


def decode_one(raw: bytes | None) -> Transaction:
    """Decode and validate one transaction exactly as `schema.decode_transaction` does, faster."""
    if raw is not None:
        try:
            transaction = _fast_transaction(_loads(raw))
        except _JSONDecodeError:
            transaction = None
        if transaction is not None:
            return transaction
    return decode_transaction(raw)


def decode_batch(
    values: Sequence[bytes | None],
) -> tuple[list[Transaction], list[int], list[tuple[int, str]]]:
    """Decode many message values: (transactions, their indices, [(index, error text)] for the rest)."""
    transactions: list[Transaction] = []
    good: list[int] = []
    bad: list[tuple[int, str]] = []
    append_tx = transactions.append
    append_good = good.append
    for index, raw in enumerate(values):
        transaction = None
        if raw is not None:
            try:
                transaction = _fast_transaction(_loads(raw))
            except _JSONDecodeError:
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


def verdict_record(
    transaction: Transaction,
    score: float,
    fraud: bool,
    threshold: float,
    model_version: str,
    reasons: list[dict[str, Any]],
    consumed_ms: int,
    verdict_ms: int,
    detector: str,
) -> dict[str, Any]:
    """One verdict as the dict that goes on the verdicts topic (docs/architecture.md)."""
    return {
        "schema": SCHEMA_VERSION,
        "transaction_id": transaction.transaction_id,
        "card_id": transaction.card_id,
        "terminal_id": transaction.terminal_id,
        "score": score,
        "decision": "fraud" if fraud else "legit",
        "threshold": threshold,
        "model_version": model_version,
        "reasons": reasons,
        "event_time_ms": transaction.event_time_ms,
        "produced_ms": transaction.produced_ms,
        "consumed_ms": consumed_ms,
        "verdict_ms": verdict_ms,
        "amount": transaction.amount,
        "currency": transaction.currency,
        "country": transaction.country,
        "merchant_category": transaction.merchant_category,
        "detector": detector,
        "rules": [],
        "review": False,
        "rules_version": None,
    }


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
    dumps = orjson.dumps
    no_reasons: list[dict[str, Any]] = []
    no_rules: list[str] = []
    fired: Sequence[list[str]] = rule_outcome.fired if rule_outcome is not None else ()
    review: list[bool] = rule_outcome.review.tolist() if rule_outcome is not None else []
    rules_version = rule_outcome.version if rule_outcome is not None else None
    out = []
    for index, (transaction, score, fraud) in enumerate(zip(transactions, scores, frauds, strict=True)):
        out.append(
            dumps(
                {
                    "schema": SCHEMA_VERSION,
                    "transaction_id": transaction.transaction_id,
                    "card_id": transaction.card_id,
                    "terminal_id": transaction.terminal_id,
                    "score": score,
                    "decision": "fraud" if fraud else "legit",
                    "threshold": threshold,
                    "model_version": model_version,
                    "reasons": reasons.get(index, no_reasons) if fraud else no_reasons,
                    "event_time_ms": transaction.event_time_ms,
                    "produced_ms": transaction.produced_ms,
                    "consumed_ms": consumed_ms,
                    "verdict_ms": verdict_ms,
                    "amount": transaction.amount,
                    "currency": transaction.currency,
                    "country": transaction.country,
                    "merchant_category": transaction.merchant_category,
                    "detector": detector,
                    "rules": fired[index] if fired else no_rules,
                    "review": review[index] if review else False,
                    "rules_version": rules_version,
                }
            )
        )
    return out
