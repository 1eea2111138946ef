"""Time as text and back: epoch-millisecond instants (UTC, the project's event time) and latencies.

Every command formats and parses time through these, so "2026-01-15", "2026-01-15T06:00" and
"...Z" mean the same everywhere (a date is its UTC midnight; a time without an offset is UTC).
Callers wrap `ValueError` from the parsers in their own `ConfigError` naming the key or flag.
"""

from __future__ import annotations

from datetime import UTC, datetime

# The formats of instants in tables and messages.
SECONDS = "%Y-%m-%d %H:%M:%S"
MINUTES = "%Y-%m-%d %H:%M"
DAYS = "%Y-%m-%d"
SHORT = "%m-%d %H:%M:%S"


def datetime_ms(moment: datetime) -> int:
    """Epoch ms of a datetime; a naive one is UTC."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


def iso_ms(text: str) -> int:
    """Epoch ms of an ISO date or date-time (trailing Z allowed); ValueError if it is neither."""
    return datetime_ms(datetime.fromisoformat(text.strip().replace("Z", "+00:00")))


def utc_text(ms: float | None, fmt: str = SECONDS) -> str:
    """An epoch-ms instant as UTC text in `fmt` ("-" for None)."""
    if ms is None:
        return "-"
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime(fmt)


def ms_text(value: float | None, spec: str = ",.0f", unit: str = " ms") -> str:
    """A latency or duration in ms with the format spec and unit of its table ("-" for None)."""
    return "-" if value is None else f"{value:{spec}}{unit}"
