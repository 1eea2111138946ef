"""The card-state changelog record: a version byte, then an orjson list (no pickle: decoding validates).

Layout of the list (schema 1)::

    [fingerprint, source_offset, applied_time_ms, applied_transaction_id,
     last_time, last_lat, last_lon, age_ms, amounts, heads, sums, countries, terminals]

``fingerprint`` names the card part of the feature spec the state was computed for (a model with
other windows starts fresh rather than misreading it). ``source_offset`` is the offset, in the
co-partitioned transactions partition, of the last row folded into the state, and
``(applied_time_ms, applied_transaction_id)`` its place in the features' order: a replay of rows
at or before it is not folded in again. Row times are stored as ages (``last_time - time``):
small integers, about half the bytes of epoch milliseconds. orjson writes floats in their
shortest round-trip form, so sums come back bit for bit.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any

import orjson

from fraudkit.features.spec import FeatureSpec

STATE_VERSION = 1
_PREFIX = bytes([STATE_VERSION])
_FIELDS = 13


class InvalidStateRecord(ValueError):
    """A changelog record that cannot be restored (the reason is the message)."""


def spec_fingerprint(spec: FeatureSpec) -> int:
    """A 32-bit id of what card state depends on: the card windows and the card-level features used."""
    text = f"{spec.card_windows_ms}|{spec.use_location}|{spec.use_country}|{spec.use_terminal}"
    return zlib.crc32(text.encode())


@dataclass(frozen=True)
class CardRecord:
    """A decoded card-state record."""

    fingerprint: int
    source_offset: int
    applied: tuple[int, str]
    state: list[Any]  # OnlineFeatures.export_card's layout


def encode_card(fingerprint: int, source_offset: int, applied: tuple[int, str], state: list[Any]) -> bytes:
    """The record for one card (state from OnlineFeatures.export_card)."""
    last_time, last_lat, last_lon, times, amounts, heads, sums, countries, terminals = state
    return _PREFIX + orjson.dumps(
        [
            fingerprint,
            source_offset,
            applied[0],
            applied[1],
            last_time,
            last_lat,
            last_lon,
            [last_time - t for t in times],
            amounts,
            heads,
            sums,
            countries,
            terminals,
        ]
    )


def _int(value: Any, what: str) -> int:
    if type(value) is not int:
        raise InvalidStateRecord(f"{what} is not an integer")
    return value


def _coordinate(value: Any, what: str) -> float | None:
    if value is None:
        return None
    if type(value) is int:
        return float(value)
    if type(value) is not float:
        raise InvalidStateRecord(f"{what} is not a number")
    return value


def _seen(value: Any, what: str) -> dict[str, int]:
    if type(value) is not dict or not all(type(v) is int for v in value.values()):
        raise InvalidStateRecord(f"{what} is not a map of last sightings")
    return value


def decode_card(value: bytes | None, window_count: int) -> CardRecord:
    """Validate and decode one record; InvalidStateRecord says what is wrong."""
    if not value:
        raise InvalidStateRecord("empty record")
    if value[0] != STATE_VERSION:
        raise InvalidStateRecord(f"unknown state record version {value[0]}")
    try:
        fields = orjson.loads(value[1:])
    except orjson.JSONDecodeError as exc:
        raise InvalidStateRecord(f"not JSON ({exc})") from None
    if type(fields) is not list or len(fields) != _FIELDS:
        raise InvalidStateRecord(f"not a list of {_FIELDS} fields")
    (fingerprint, offset, applied_time, applied_id, last_time, lat, lon, ages, amounts, heads, sums,
     countries, terminals) = fields  # fmt: skip
    fingerprint = _int(fingerprint, "fingerprint")
    offset = _int(offset, "source offset")
    applied_time = _int(applied_time, "applied event time")
    if type(applied_id) is not str:
        raise InvalidStateRecord("applied transaction id is not a string")
    last_time = _int(last_time, "last time")
    if type(ages) is not list or type(amounts) is not list or len(ages) != len(amounts):
        raise InvalidStateRecord("row times and amounts differ in length")
    if not all(type(age) is int for age in ages):
        raise InvalidStateRecord("a row time is not an integer")
    amounts = [float(a) if type(a) is int else a for a in amounts]
    if not all(type(a) is float and a >= 0 for a in amounts):
        raise InvalidStateRecord("an amount is not a number >= 0")
    if (
        type(heads) is not list
        or len(heads) != window_count
        or type(sums) is not list
        or len(sums) != window_count
    ):
        raise InvalidStateRecord(f"window heads and sums are not {window_count} each")
    rows = len(ages)
    if not all(type(h) is int and 0 <= h <= rows for h in heads):
        raise InvalidStateRecord("a window head is outside the rows")
    sums = [float(s) if type(s) is int else s for s in sums]
    if not all(type(s) is float for s in sums):
        raise InvalidStateRecord("a window sum is not a number")
    state = [
        last_time,
        _coordinate(lat, "last latitude"),
        _coordinate(lon, "last longitude"),
        [last_time - age for age in ages],
        amounts,
        heads,
        sums,
        _seen(countries, "countries"),
        _seen(terminals, "terminals"),
    ]
    return CardRecord(fingerprint, offset, (applied_time, applied_id), state)
