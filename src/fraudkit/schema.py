"""Transaction, label and verdict records and their JSON wire encoding (schema version 1)."""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from typing import Annotated, Any

import msgspec
import orjson

SCHEMA_VERSION = 1
# Amounts beyond this are treated as corrupt input rather than a very large purchase.
MAX_AMOUNT = 10_000_000.0
# Event times must fall between 2000-01-01 and 2100-01-01 (epoch milliseconds).
MIN_EVENT_MS = 946_684_800_000
MAX_EVENT_MS = 4_102_444_800_000
# Wall-clock and label times (produced_ms, labelled_ms, at_ms, ...) are epoch milliseconds in
# [0, 2**53): exact as a JSON double, far inside int64, so no writer (orjson, SQL BIGINT) overflows.
MAX_EPOCH_MS = 2**53 - 1
# Text fields (ids, currency, country, ...) longer than this are corrupt or hostile: a real id
# is tens of characters, and the bound keeps every verdict and every SQL row small.
MAX_TEXT_CHARS = 1024
# `extra` (dataset pass-through columns such as V1..V28): bounded count and key length.
MAX_EXTRA_FIELDS = 256
MAX_EXTRA_KEY_CHARS = 128


# Columns of the canonical dataset frame (docs/architecture.md), in order.
CANONICAL_COLUMNS = (
    "transaction_id",
    "event_time_ms",
    "card_id",
    "customer_id",
    "terminal_id",
    "amount",
    "currency",
    "merchant_category",
    "country",
    "lat",
    "lon",
    "label",
    "fraud_scenario",
)
# The fraudkit file layout: the canonical columns with a `timestamp` in place of event_time_ms.
FILE_COLUMNS = ("transaction_id", "timestamp", *CANONICAL_COLUMNS[2:])
# The canonical columns that hold text (identifiers and categories).
TEXT_COLUMNS = (
    "transaction_id",
    "card_id",
    "customer_id",
    "terminal_id",
    "currency",
    "merchant_category",
    "country",
    "fraud_scenario",
)


class InvalidMessage(ValueError):
    """A message that cannot be decoded or fails validation; the text names the field."""


# The bounds below as msgspec constraints: the detector's fast decoder (detect.codec) checks them in C.
_Id = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_TEXT_CHARS)]
_Text = Annotated[str, msgspec.Meta(max_length=MAX_TEXT_CHARS)] | None
# No finite-only constraint exists; these bounds refuse inf (1e400 parses as inf).
_Finite = Annotated[float, msgspec.Meta(ge=-sys.float_info.max, le=sys.float_info.max)]
_Extra = Annotated[
    dict[Annotated[str, msgspec.Meta(max_length=MAX_EXTRA_KEY_CHARS)], _Finite],
    msgspec.Meta(max_length=MAX_EXTRA_FIELDS),
]


class Transaction(
    msgspec.Struct,
    tag_field="schema",
    tag=SCHEMA_VERSION,
    forbid_unknown_fields=True,
    gc=False,
):
    """One card payment as it travels on the transactions topic.

    A msgspec Struct rather than a dataclass: `detect.codec` decodes well-formed messages straight
    into it (validated by the annotated bounds, 3-4x faster than orjson plus Python checks), and its
    instances stay out of the garbage collector's lists (gc=False: they hold no reference cycles).
    Construction does not validate; `transaction_from_dict` and `decode_transaction` do.
    """

    transaction_id: _Id
    event_time_ms: Annotated[int, msgspec.Meta(ge=MIN_EVENT_MS, le=MAX_EVENT_MS)]
    card_id: _Id
    amount: Annotated[float, msgspec.Meta(ge=0.0, le=MAX_AMOUNT)]
    customer_id: _Text = None
    terminal_id: _Text = None
    currency: _Text = None
    merchant_category: _Text = None
    country: _Text = None
    lat: Annotated[float, msgspec.Meta(ge=-90.0, le=90.0)] | None = None
    lon: Annotated[float, msgspec.Meta(ge=-180.0, le=180.0)] | None = None
    produced_ms: Annotated[int, msgspec.Meta(ge=0, le=MAX_EPOCH_MS)] | None = None
    extra: _Extra = msgspec.field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The wire form (schema, ids, event time, production time, fields, extra)."""
        data: dict[str, Any] = {
            "schema": SCHEMA_VERSION,
            "transaction_id": self.transaction_id,
            "event_time_ms": self.event_time_ms,
            "produced_ms": self.produced_ms,
            "card_id": self.card_id,
            "customer_id": self.customer_id,
            "terminal_id": self.terminal_id,
            "amount": self.amount,
            "currency": self.currency,
            "merchant_category": self.merchant_category,
            "country": self.country,
            "lat": self.lat,
            "lon": self.lon,
        }
        if self.extra:
            data["extra"] = self.extra
        return data


@dataclass(slots=True)
class Label:
    """The delayed truth about one transaction (a chargeback or its absence)."""

    transaction_id: str
    event_time_ms: int
    label: int
    card_id: str | None = None
    terminal_id: str | None = None
    labelled_ms: int | None = None
    fraud_scenario: str | None = None
    # Who said so: None (unset: the generator's chargebacks), "analyst" (the dashboard's review).
    source: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The wire form (`source` only when set, so older labels keep their exact bytes)."""
        data: dict[str, Any] = {
            "schema": SCHEMA_VERSION,
            "transaction_id": self.transaction_id,
            "event_time_ms": self.event_time_ms,
            "label": self.label,
            "card_id": self.card_id,
            "terminal_id": self.terminal_id,
            "labelled_ms": self.labelled_ms,
            "fraud_scenario": self.fraud_scenario,
        }
        if self.source is not None:
            data["source"] = self.source
        return data


def encode(record: Transaction | Label | dict[str, Any]) -> bytes:
    """JSON bytes for a record or a plain dict."""
    data = record if isinstance(record, dict) else record.to_dict()
    return orjson.dumps(data, option=orjson.OPT_SERIALIZE_NUMPY)


def _load(raw: bytes | str | None) -> dict[str, Any]:
    if raw is None:
        raise InvalidMessage("empty message value")
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidMessage(f"not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise InvalidMessage(f"expected a JSON object, got {type(data).__name__}")
    check_schema(data)
    return data


def check_schema(data: dict[str, Any]) -> None:
    """InvalidMessage unless `schema` is exactly the integer SCHEMA_VERSION (not `true`, not `1.0`)."""
    version = data.get("schema")
    if type(version) is int and version == SCHEMA_VERSION:
        return
    if version is None:
        raise InvalidMessage("schema: missing schema version")
    if type(version) is not int:
        raise InvalidMessage(f"schema: expected an integer version, got {_kind(version)}")
    raise InvalidMessage(f"schema: unsupported version {version!r} (expected {SCHEMA_VERSION})")


def _kind(value: Any) -> str:
    """The JSON name of a decoded value's type, for error messages."""
    if isinstance(value, bool):
        return "bool"
    return type(value).__name__


def _bounded(name: str, value: str) -> str:
    if len(value) > MAX_TEXT_CHARS:
        raise InvalidMessage(f"{name}: {len(value)} characters is longer than the limit of {MAX_TEXT_CHARS}")
    return value


def _require_str(data: dict[str, Any], name: str) -> str:
    value = data.get(name)
    if isinstance(value, str) and value:
        return _bounded(name, value)
    if type(value) is int:
        return str(value)
    if value is None or value == "":
        raise InvalidMessage(f"{name}: missing")
    raise InvalidMessage(f"{name}: expected a string, got {_kind(value)}")


def _optional_str(data: dict[str, Any], name: str) -> str | None:
    value = data.get(name)
    if value is None:
        return None
    if isinstance(value, str):
        return _bounded(name, value)
    if type(value) is int:
        return str(value)
    raise InvalidMessage(f"{name}: expected a string, got {_kind(value)}")


def _number(data: dict[str, Any], name: str, required: bool) -> float | None:
    value = data.get(name)
    if value is None:
        if required:
            raise InvalidMessage(f"{name}: missing")
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidMessage(f"{name}: expected a number, got {_kind(value)}")
    if not math.isfinite(value):
        raise InvalidMessage(f"{name}: not a finite number")
    return float(value)


def _event_time(data: dict[str, Any]) -> int:
    value = data.get("event_time_ms")
    if value is None:
        raise InvalidMessage("event_time_ms: missing")
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidMessage(f"event_time_ms: expected epoch milliseconds, got {_kind(value)}")
    if not MIN_EVENT_MS <= value <= MAX_EVENT_MS:
        raise InvalidMessage(f"event_time_ms: {value} is outside 2000-01-01..2100-01-01")
    return int(value)


def optional_epoch_ms(data: dict[str, Any], name: str) -> int | None:
    """An optional wall-clock/label time: None, or a finite number in [0, MAX_EPOCH_MS] (as int)."""
    value = data.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidMessage(f"{name}: expected epoch milliseconds, got {_kind(value)}")
    # NaN fails the comparison too (orjson never yields one, other callers might).
    if not 0 <= value <= MAX_EPOCH_MS:
        raise InvalidMessage(f"{name}: {value!r} is out of range (0..{MAX_EPOCH_MS})")
    return int(value)


def transaction_from_dict(data: dict[str, Any]) -> Transaction:
    """Validate a decoded transaction object; InvalidMessage names the bad field."""
    amount = _number(data, "amount", required=True)
    assert amount is not None
    if amount < 0:
        raise InvalidMessage(f"amount: {amount} is negative")
    if amount > MAX_AMOUNT:
        raise InvalidMessage(f"amount: {amount} is absurdly large (> {MAX_AMOUNT:g})")
    lat = _number(data, "lat", required=False)
    lon = _number(data, "lon", required=False)
    if lat is not None and not -90 <= lat <= 90:
        raise InvalidMessage(f"lat: {lat} is outside [-90, 90]")
    if lon is not None and not -180 <= lon <= 180:
        raise InvalidMessage(f"lon: {lon} is outside [-180, 180]")
    extra_raw = data.get("extra") or {}
    if not isinstance(extra_raw, dict):
        raise InvalidMessage("extra: expected an object of numbers")
    if len(extra_raw) > MAX_EXTRA_FIELDS:
        raise InvalidMessage(f"extra: {len(extra_raw)} fields is more than the limit of {MAX_EXTRA_FIELDS}")
    extra: dict[str, float] = {}
    for key, value in extra_raw.items():
        if len(key) > MAX_EXTRA_KEY_CHARS:
            raise InvalidMessage(f"extra: a field name is longer than {MAX_EXTRA_KEY_CHARS} characters")
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise InvalidMessage(f"extra.{key}: expected a finite number")
        extra[key] = float(value)
    produced_ms = optional_epoch_ms(data, "produced_ms")
    return Transaction(
        transaction_id=_require_str(data, "transaction_id"),
        event_time_ms=_event_time(data),
        card_id=_require_str(data, "card_id"),
        amount=amount,
        customer_id=_optional_str(data, "customer_id"),
        terminal_id=_optional_str(data, "terminal_id"),
        currency=_optional_str(data, "currency"),
        merchant_category=_optional_str(data, "merchant_category"),
        country=_optional_str(data, "country"),
        lat=lat,
        lon=lon,
        produced_ms=produced_ms,
        extra=extra,
    )


def decode_transaction(raw: bytes | str | None) -> Transaction:
    """Decode and validate a transaction message."""
    return transaction_from_dict(_load(raw))


def decode_label(raw: bytes | str | None) -> Label:
    """Decode and validate a label message."""
    data = _load(raw)
    label = data.get("label")
    if type(label) is not int or label not in (0, 1):
        raise InvalidMessage(f"label: expected 0 or 1, got {_excerpt(label)}")
    return Label(
        transaction_id=_require_str(data, "transaction_id"),
        event_time_ms=_event_time(data),
        label=label,
        card_id=_optional_str(data, "card_id"),
        terminal_id=_optional_str(data, "terminal_id"),
        labelled_ms=optional_epoch_ms(data, "labelled_ms"),
        fraud_scenario=_optional_str(data, "fraud_scenario"),
        source=_optional_str(data, "source"),
    )


def _excerpt(value: Any, limit: int = 40) -> str:
    """repr() of a value cut to `limit` characters, for error messages about hostile input."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def decode_json(raw: bytes | str | None) -> dict[str, Any]:
    """Decode any fraudkit JSON message (a JSON object with `"schema": 1`) to a dict."""
    return _load(raw)


# The control topic's announcements (docs/architecture.md): the fields detectors read, by type.
# Other fields are free-form: they are only shown, after escaping.
_CONTROL_NAMES = ("type", "version", "trainer", "champion_version", "metric")
# `error` may carry the tail of a failed retraining's log (retrain.LOG_TAIL_CHARS).
_CONTROL_PROSE = ("reason", "error")
MAX_CONTROL_PROSE_CHARS = 8 * MAX_TEXT_CHARS
_CONTROL_OBJECTS = ("metrics", "champion_metrics", "rows", "timings")


def decode_control(raw: bytes | str | None) -> dict[str, Any]:
    """Decode a control-topic announcement, checking the type of every field the detectors read."""
    data = _load(raw)
    kind = data.get("type")
    if kind is None:
        raise InvalidMessage("type: missing")
    for name in (*_CONTROL_NAMES, *_CONTROL_PROSE):
        value = data.get(name)
        if value is None:
            continue
        if not isinstance(value, str):
            raise InvalidMessage(f"{name}: expected a string, got {_kind(value)}")
        limit = MAX_TEXT_CHARS if name in _CONTROL_NAMES else MAX_CONTROL_PROSE_CHARS
        if len(value) > limit:
            raise InvalidMessage(f"{name}: {len(value)} characters is longer than the limit of {limit}")
    for name in _CONTROL_OBJECTS:
        value = data.get(name)
        if value is not None and not isinstance(value, dict):
            raise InvalidMessage(f"{name}: expected an object, got {_kind(value)}")
    holdout = (data.get("rows") or {}).get("holdout")
    if holdout is not None and (type(holdout) is not int or not 0 <= holdout <= MAX_EPOCH_MS):
        raise InvalidMessage(f"rows.holdout: expected a row count, got {_excerpt(holdout)}")
    optional_epoch_ms(data, "at_ms")
    return data
