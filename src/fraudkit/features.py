"""The feature specification, defined once and computed twice: online (detector) and in Spark (training).

Semantics shared by both implementations (the parity test holds them to 1e-6 on every row):

* Records are ordered by ``(event_time_ms, transaction_id)``; a row sees every earlier row of its card
  in that order, including rows with the same timestamp and a smaller transaction id, and itself.
* Card window ``W`` holds the card's rows with ``event_time > t - W`` up to and including the current
  row: ``card_count_W`` counts them, ``card_mean_amount_W`` averages their amounts.
* ``card_amount_ratio_R`` is ``amount / mean(previous rows in window R)``, 1 without history, capped.
* The card's history is its longest window ``H``: a previous row older than ``H`` counts as none
  (seconds since previous, distance, speed), and a country or terminal is new for the card unless
  it was seen within ``H``. Online state older than ``H`` can therefore be dropped without changing
  any later feature, which keeps memory bounded.
* Terminal window ``W`` counts labelled transactions of the terminal with event time in
  ``[t - label_delay - W, t - label_delay)``; ``terminal_fraud_rate_W`` is the fraud share (0 if none).
* Hour of day is cyclic (UTC), ``is_weekend`` is Saturday or Sunday (UTC).
* Pass-through columns are copied; a missing or NaN value reads as 0.
"""

from __future__ import annotations

import math
import sys
from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from fraudkit.config import FeaturesConfig
from fraudkit.errors import ConfigError, ModelError
from fraudkit.schema import Label, Transaction

if TYPE_CHECKING:
    import pandas as pd
    from pyspark.sql import Column, DataFrame

SPEC_VERSION = 1
HOUR_MS = 3_600_000
DAY_MS = 86_400_000
EARTH_RADIUS_KM = 6371.0
# Implied speeds beyond an airliner's are all equally impossible; capping keeps the scale sane.
MAX_SPEED_KMH = 1000.0
# Two payments within a minute are treated as a minute apart, so speed does not explode on ties.
MIN_TRAVEL_MS = 60_000
# A previous mean below one cent is no reference point for a ratio.
MIN_MEAN_FOR_RATIO = 0.01
MAX_AMOUNT_RATIO = 1000.0
_RADIANS_PER_DEGREE = math.pi / 180.0
_HALF_RADIANS_PER_DEGREE = math.pi / 360.0
_ANGLE_PER_MS = 2.0 * math.pi / DAY_MS
# Before every real event time, so "no previous transaction" needs no None check in the hot loop.
_NEVER = -(1 << 62)

_FIELD_TEXT = {
    "card": "card_id",
    "location": "lat/lon",
    "country": "country",
    "terminal": "terminal_id",
}


class DatasetFields(Protocol):
    """What a dataset mapping tells the feature spec (duck-typed: datasets.DatasetMapping fits)."""

    has_card: bool
    has_terminal: bool
    has_location: bool
    has_country: bool
    passthrough: list[str]


def _hours_label(window_ms: int) -> str:
    return f"{window_ms / HOUR_MS:g}h"


def _days_label(window_ms: int) -> str:
    return f"{window_ms / DAY_MS:g}d"


def _catalogue(
    card_windows_ms: Sequence[int],
    relative_window_ms: int,
    terminal_windows_ms: Sequence[int],
    passthrough: Sequence[str],
) -> list[tuple[str, tuple[str, ...]]]:
    """Every feature in vector order with the dataset fields it needs."""
    entries: list[tuple[str, tuple[str, ...]]] = [("amount", ()), ("log_amount", ())]
    for window in card_windows_ms:
        entries.append((f"card_count_{_hours_label(window)}", ("card",)))
        entries.append((f"card_mean_amount_{_hours_label(window)}", ("card",)))
    entries.append((f"card_amount_ratio_{_hours_label(relative_window_ms)}", ("card",)))
    entries.append(("card_log_seconds_since_prev", ("card",)))
    entries.append(("card_distance_km", ("card", "location")))
    entries.append(("card_speed_kmh", ("card", "location")))
    entries.append(("card_new_country", ("card", "country")))
    entries.append(("card_new_terminal", ("card", "terminal")))
    for window in terminal_windows_ms:
        entries.append((f"terminal_count_{_days_label(window)}", ("terminal",)))
        entries.append((f"terminal_fraud_rate_{_days_label(window)}", ("terminal",)))
    entries += [("hour_sin", ()), ("hour_cos", ()), ("is_weekend", ())]
    entries += [(name, ()) for name in passthrough]
    return entries


@dataclass
class FeatureSpec:
    """Which features a model uses and their parameters (windows, label delay); stored in manifests."""

    card_windows_ms: list[int]
    terminal_windows_ms: list[int]
    label_delay_ms: int
    relative_window_ms: int
    use_card: bool
    use_location: bool
    use_country: bool
    use_terminal: bool
    passthrough: list[str] = field(default_factory=list)
    names: list[str] = field(init=False)
    dropped: dict[str, str] = field(init=False)

    def __post_init__(self) -> None:
        # Windows are kept sorted and unique, and the ratio's window is always one of the card windows,
        # so the online loop can walk them in vector order.
        self.card_windows_ms = sorted({*self.card_windows_ms, self.relative_window_ms})
        self.terminal_windows_ms = sorted(set(self.terminal_windows_ms))
        if min([*self.card_windows_ms, *self.terminal_windows_ms]) <= 0 or self.label_delay_ms < 0:
            raise ConfigError("features: windows must be at least 1 ms and label_delay_days >= 0")
        available = {
            "card": self.use_card,
            "location": self.use_location,
            "country": self.use_country,
            "terminal": self.use_terminal,
        }
        catalogue = _catalogue(
            self.card_windows_ms, self.relative_window_ms, self.terminal_windows_ms, self.passthrough
        )
        self.names = []
        self.dropped = {}
        for name, needs in catalogue:
            missing = [_FIELD_TEXT[need] for need in needs if not available[need]]
            if missing:
                self.dropped[name] = f"needs {' and '.join(missing)}, which the dataset lacks"
            else:
                self.names.append(name)
        duplicates = sorted({name for name in self.names if self.names.count(name) > 1})
        if duplicates:
            raise ConfigError(
                f"features: pass-through column(s) {', '.join(duplicates)} clash with feature names"
            )

    @property
    def history_ms(self) -> int:
        """The card's retained history: its longest window."""
        return self.card_windows_ms[-1]

    @classmethod
    def from_config(cls, features: FeaturesConfig, mapping: DatasetFields) -> FeatureSpec:
        """The spec for a dataset: configured windows, minus features whose fields the mapping lacks."""
        has_card = bool(getattr(mapping, "has_card", False))
        return cls(
            card_windows_ms=[round(hours * HOUR_MS) for hours in features.card_windows_hours],
            terminal_windows_ms=[round(days * DAY_MS) for days in features.terminal_windows_days],
            label_delay_ms=round(features.label_delay_days * DAY_MS),
            relative_window_ms=round(features.relative_amount_window_hours * HOUR_MS),
            use_card=has_card,
            use_location=has_card and bool(getattr(mapping, "has_location", False)),
            use_country=has_card and bool(getattr(mapping, "has_country", False)),
            use_terminal=bool(getattr(mapping, "has_terminal", False)),
            passthrough=list(getattr(mapping, "passthrough", None) or []),
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form for a model manifest (parameters, names, dropped features and why)."""
        return {
            "version": SPEC_VERSION,
            "card_windows_ms": list(self.card_windows_ms),
            "terminal_windows_ms": list(self.terminal_windows_ms),
            "label_delay_ms": self.label_delay_ms,
            "relative_window_ms": self.relative_window_ms,
            "use_card": self.use_card,
            "use_location": self.use_location,
            "use_country": self.use_country,
            "use_terminal": self.use_terminal,
            "passthrough": list(self.passthrough),
            "names": list(self.names),
            "dropped": dict(self.dropped),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FeatureSpec:
        """Rebuild a spec from a manifest; ModelError if it is malformed or its names do not match."""
        if not isinstance(data, dict):
            raise ModelError("feature spec: expected an object")
        if data.get("version") != SPEC_VERSION:
            raise ModelError(
                f"feature spec: unsupported version {data.get('version')!r} (expected {SPEC_VERSION})"
            )
        try:
            spec = cls(
                card_windows_ms=[int(w) for w in data["card_windows_ms"]],
                terminal_windows_ms=[int(w) for w in data["terminal_windows_ms"]],
                label_delay_ms=int(data["label_delay_ms"]),
                relative_window_ms=int(data["relative_window_ms"]),
                use_card=bool(data["use_card"]),
                use_location=bool(data["use_location"]),
                use_country=bool(data["use_country"]),
                use_terminal=bool(data["use_terminal"]),
                passthrough=[str(name) for name in data["passthrough"]],
            )
        except KeyError as exc:
            raise ModelError(f"feature spec: missing key {exc.args[0]!r}") from None
        except (TypeError, ValueError, ConfigError) as exc:
            raise ModelError(f"feature spec: malformed ({exc})") from None
        if list(data.get("names", [])) != spec.names:
            raise ModelError("feature spec: the stored feature names do not match its parameters")
        return spec


def haversine_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance in km (the same operation order as the Spark expression)."""
    half_dlat = math.sin((lat2 - lat1) * _HALF_RADIANS_PER_DEGREE)
    half_dlon = math.sin((lon2 - lon1) * _HALF_RADIANS_PER_DEGREE)
    a = half_dlat * half_dlat + math.cos(lat1 * _RADIANS_PER_DEGREE) * math.cos(
        lat2 * _RADIANS_PER_DEGREE
    ) * (half_dlon * half_dlon)
    return 2.0 * EARTH_RADIUS_KM * math.asin(math.sqrt(min(a, 1.0)))


class _CardState:
    """One card's recent transactions; ``heads[k]`` is the first index inside window k."""

    __slots__ = (
        "amounts",
        "countries",
        "heads",
        "last_lat",
        "last_lon",
        "last_time",
        "sums",
        "terminals",
        "times",
    )

    def __init__(self, window_count: int) -> None:
        self.times: list[int] = []
        self.amounts: list[float] = []
        self.heads = [0] * window_count
        self.sums = [0.0] * window_count
        self.last_time = _NEVER
        self.last_lat: float | None = None
        self.last_lon: float | None = None
        self.countries: dict[str, int] = {}
        self.terminals: dict[str, int] = {}


class _TerminalLabels:
    """A terminal's labelled transactions sorted by event time, with cursors left by the last query.

    ``upper`` is the last query's ``t - label_delay``; ``end`` counts the labels before it and
    ``starts[k]`` those before ``upper - window_k``; the ``frauds_before_*`` count frauds in the same
    prefixes. A window's count and frauds are differences, so each cursor moves on its own, a step
    at a time as event time advances (or steps back), instead of a binary search per query.
    """

    __slots__ = ("end", "fraud_flags", "frauds_before_end", "frauds_before_start", "starts", "times", "upper")

    def __init__(self, window_count: int) -> None:
        self.times: list[int] = []
        self.fraud_flags: list[int] = []
        self.upper = _NEVER
        self.end = 0
        self.frauds_before_end = 0
        self.starts = [0] * window_count
        self.frauds_before_start = [0] * window_count

    def insert(self, event_time: int, fraud: int, windows: Sequence[int]) -> None:
        """Add one label in time order, keeping every cursor's prefix count true."""
        times = self.times
        if not times or event_time >= times[-1]:
            times.append(event_time)
            self.fraud_flags.append(fraud)
        else:
            index = bisect_right(times, event_time)
            times.insert(index, event_time)
            self.fraud_flags.insert(index, fraud)
        upper = self.upper
        if event_time < upper:
            self.end += 1
            self.frauds_before_end += fraud
            starts = self.starts
            frauds_before_start = self.frauds_before_start
            for k, window in enumerate(windows):
                if event_time < upper - window:
                    starts[k] += 1
                    frauds_before_start[k] += fraud

    def drop_before(self, floor: int) -> int:
        """Forget labels older than floor; returns how many went."""
        cut = bisect_left(self.times, floor)
        if not cut:
            return 0
        frauds_cut = sum(self.fraud_flags[:cut])
        del self.times[:cut]
        del self.fraud_flags[:cut]
        # A cursor past the cut keeps its place relative to the rest; one inside it now counts nothing.
        if self.end >= cut:
            self.end -= cut
            self.frauds_before_end -= frauds_cut
        else:
            self.end = self.frauds_before_end = 0
        for k, start in enumerate(self.starts):
            if start >= cut:
                self.starts[k] = start - cut
                self.frauds_before_start[k] -= frauds_cut
            else:
                self.starts[k] = self.frauds_before_start[k] = 0
        return cut


class OnlineFeatures:
    """Incremental per-card and per-terminal state computing the spec's features row by row."""

    def __init__(self, spec: FeatureSpec, max_cards: int | None = None) -> None:
        self.spec = spec
        self.max_cards = max_cards
        self.width = len(spec.names)
        # Card windows are sorted, so the largest (last) window has the smallest head.
        self._windows = spec.card_windows_ms
        self._relative_index = self._windows.index(spec.relative_window_ms)
        self._history_ms = spec.history_ms
        self._terminal_horizon_ms = spec.label_delay_ms + max(spec.terminal_windows_ms)
        self._raw_width = (
            2
            + spec.use_card * (2 * len(self._windows) + 1 + 4 * spec.use_location + spec.use_country)
            + spec.use_card * spec.use_terminal
            + spec.use_terminal * 2 * len(spec.terminal_windows_ms)
            + len(spec.passthrough)
        )
        self._cards: dict[str | None, _CardState] = {}
        self._terminals: dict[str, _TerminalLabels] = {}
        self._label_floor = _NEVER
        self._labels_kept = 0
        self.labels_ignored = 0

    def transform(self, transactions: Sequence[Transaction], dtype: Any = np.float32) -> np.ndarray:
        """Features of each transaction (state before it, plus itself), updating state in the given order."""
        raw = self._walk(transactions)
        return self._finish(raw.reshape(len(transactions), self._raw_width), dtype)

    def _walk(self, transactions: Sequence[Transaction]) -> np.ndarray:
        """The stateful pass: per row, the raw quantities only state can give (counts, sums, last sightings).

        Everything that is plain arithmetic on them happens in `_finish`, vectorised, which keeps this
        loop (the detector's hot path) short. Layout per row: t, amount, then for cards each window's
        (count, sum), time since the previous row, [lat, lon, previous lat, previous lon], [when the
        country was last seen], [when the terminal was last seen]; then for terminals each window's
        (labels, frauds); then the pass-through values (None when absent).
        """
        spec = self.spec
        values: list[Any] = []
        use_card = spec.use_card
        use_location = spec.use_location
        use_country = spec.use_country
        use_terminal = spec.use_terminal
        cards = self._cards
        windows = self._windows
        window_count = len(windows)
        last_window = window_count - 1
        terminals = self._terminals
        label_delay = spec.label_delay_ms
        terminal_windows = spec.terminal_windows_ms
        terminal_zeros = (0, 0) * len(terminal_windows)
        passthrough = spec.passthrough
        for tx in transactions:
            t = tx.event_time_ms
            amount = tx.amount
            values += (t, amount)
            if use_card:
                card_id = tx.card_id
                card = cards.get(card_id)
                if card is None:
                    card = cards[card_id] = _CardState(window_count)
                times = card.times
                amounts = card.amounts
                times.append(t)
                amounts.append(amount)
                size = len(times)
                heads = card.heads
                sums = card.sums
                k = 0
                for window in windows:
                    head = heads[k]
                    if times[head] <= t - window:
                        cutoff = t - window
                        total = sums[k]
                        # The current row is always inside, so the scan stops without a bounds check.
                        while times[head] <= cutoff:
                            total -= amounts[head]
                            head += 1
                        heads[k] = head
                        # Only the current row left: restart the sum exactly, shedding rounding drift.
                        total = amount if head == size - 1 else total + amount
                    else:
                        total = sums[k] + amount
                    sums[k] = total
                    values += (size - head, total)
                    k += 1
                # Rows outside even the longest window are garbage; drop them once they are half the list.
                if head >= 32 and head + head >= size:
                    del times[:head]
                    del amounts[:head]
                    card.heads = [old - head for old in heads]
                values.append(t - card.last_time)
                card.last_time = t
                if use_location:
                    lat = tx.lat
                    lon = tx.lon
                    values += (lat, lon, card.last_lat, card.last_lon)
                    card.last_lat = lat
                    card.last_lon = lon
                if use_country:
                    country = tx.country
                    if country is None:
                        values.append(t)
                    else:
                        countries = card.countries
                        values.append(countries.get(country, _NEVER))
                        countries[country] = t
                if use_terminal:
                    terminal_id = tx.terminal_id
                    if terminal_id is None:
                        values.append(t)
                    else:
                        visited = card.terminals
                        values.append(visited.get(terminal_id, _NEVER))
                        visited[terminal_id] = t
            if use_terminal:
                terminal_id = tx.terminal_id
                labels = terminals.get(terminal_id) if terminal_id is not None else None
                if labels is None:
                    values += terminal_zeros
                else:
                    upper = t - label_delay
                    step = upper - labels.upper
                    end = labels.end
                    frauds_before_end = labels.frauds_before_end
                    starts = labels.starts
                    frauds_before_start = labels.frauds_before_start
                    if step:
                        label_times = labels.times
                        flags = labels.fraud_flags
                        if step > 0:
                            size = len(label_times)
                            while end < size and label_times[end] < upper:
                                frauds_before_end += flags[end]
                                end += 1
                        else:
                            while end and label_times[end - 1] >= upper:
                                end -= 1
                                frauds_before_end -= flags[end]
                        labels.upper = upper
                        labels.end = end
                        labels.frauds_before_end = frauds_before_end
                        k = 0
                        for window in terminal_windows:
                            lower = upper - window
                            start = starts[k]
                            if step > 0:
                                # Labels at or after `end` are >= upper > lower, so `end` bounds the walk.
                                if start < end and label_times[start] < lower:
                                    frauds = frauds_before_start[k]
                                    while start < end and label_times[start] < lower:
                                        frauds += flags[start]
                                        start += 1
                                    starts[k] = start
                                    frauds_before_start[k] = frauds
                            elif start and label_times[start - 1] >= lower:
                                frauds = frauds_before_start[k]
                                while start and label_times[start - 1] >= lower:
                                    start -= 1
                                    frauds -= flags[start]
                                starts[k] = start
                                frauds_before_start[k] = frauds
                            k += 1
                    k = 0
                    for start in starts:
                        values += (end - start, frauds_before_end - frauds_before_start[k])
                        k += 1
            if passthrough:
                values += map(tx.extra.get, passthrough)
        # None (no location, no pass-through value) becomes NaN here.
        return np.array(values, dtype=np.float64)

    def _finish(self, raw: np.ndarray, dtype: Any) -> np.ndarray:
        """The features from the raw per-row quantities, as whole columns."""
        spec = self.spec
        rows = raw.shape[0]
        out = np.empty((rows, self.width), dtype=np.float64)
        times = raw[:, 0].astype(np.int64)
        amount = raw[:, 1]
        out[:, 0] = amount
        out[:, 1] = np.log1p(amount)
        column = 2
        at = 2
        with np.errstate(divide="ignore", invalid="ignore"):
            if spec.use_card:
                history = self._history_ms
                for k in range(len(self._windows)):
                    count = raw[:, at + 2 * k]
                    out[:, column] = count
                    out[:, column + 1] = raw[:, at + 2 * k + 1] / count
                    column += 2
                relative = at + 2 * self._relative_index
                previous_count = raw[:, relative] - 1.0
                previous_mean = (raw[:, relative + 1] - amount) / previous_count
                usable = (previous_count > 0) & (previous_mean >= MIN_MEAN_FOR_RATIO)
                ratio = np.minimum(amount / previous_mean, MAX_AMOUNT_RATIO)
                out[:, column] = np.where(usable, ratio, 1.0)
                at += 2 * len(self._windows)
                elapsed = raw[:, at]
                has_previous = elapsed < history
                out[:, column + 1] = np.where(
                    has_previous, np.log1p(elapsed / 1000.0), math.log1p(history / 1000.0)
                )
                column += 2
                at += 1
                if spec.use_location:
                    lat, lon, last_lat, last_lon = (raw[:, at + i] for i in range(4))
                    located = has_previous & ~np.isnan(lat + lon + last_lat + last_lon)
                    distance = _haversine_array(last_lat, last_lon, lat, lon)
                    hours = np.maximum(elapsed, MIN_TRAVEL_MS) / HOUR_MS
                    out[:, column] = np.where(located, distance, 0.0)
                    out[:, column + 1] = np.where(located, np.minimum(distance / hours, MAX_SPEED_KMH), 0.0)
                    column += 2
                    at += 4
                horizon = times - history
                for flag in (spec.use_country, spec.use_terminal):
                    if flag:
                        out[:, column] = raw[:, at] <= horizon
                        column += 1
                        at += 1
            if spec.use_terminal:
                for k in range(len(spec.terminal_windows_ms)):
                    count = raw[:, at + 2 * k]
                    out[:, column] = count
                    out[:, column + 1] = np.where(count > 0, raw[:, at + 2 * k + 1] / count, 0.0)
                    column += 2
                at += 2 * len(spec.terminal_windows_ms)
        angle = (times % DAY_MS) * _ANGLE_PER_MS
        out[:, column] = np.sin(angle)
        out[:, column + 1] = np.cos(angle)
        # 1970-01-01 was a Thursday: (day + 3) % 7 is 0 on Mondays, 5 and 6 at the weekend.
        out[:, column + 2] = (times // DAY_MS + 3) % 7 >= 5
        column += 3
        if spec.passthrough:
            passthrough = raw[:, at : at + len(spec.passthrough)]
            out[:, column:] = np.where(np.isnan(passthrough), 0.0, passthrough)
        return out.astype(dtype, copy=False)

    def observe_label(self, label: Label) -> None:
        """Record a transaction's truth for its terminal's fraud rates (any arrival order)."""
        terminal_id = label.terminal_id
        event_time = label.event_time_ms
        if terminal_id is None or not self.spec.use_terminal or event_time < self._label_floor:
            self.labels_ignored += 1
            return
        windows = self.spec.terminal_windows_ms
        labels = self._terminals.get(terminal_id)
        if labels is None:
            labels = self._terminals[terminal_id] = _TerminalLabels(len(windows))
        labels.insert(event_time, 1 if label.label else 0, windows)
        self._labels_kept += 1

    def observe_labels(self, labels: Iterable[Label]) -> None:
        """observe_label for each label."""
        for label in labels:
            self.observe_label(label)

    def expire(self, now_ms: int) -> None:
        """Drop state no feature at event time >= now_ms can use (older than the windows), then cap cards."""
        card_cutoff = now_ms - self._history_ms
        stale = [card_id for card_id, card in self._cards.items() if card.last_time <= card_cutoff]
        for card_id in stale:
            del self._cards[card_id]
        last_window = len(self._windows) - 1
        for card in self._cards.values():
            oldest = card.heads[last_window]
            if oldest:
                del card.times[:oldest]
                del card.amounts[:oldest]
                card.heads = [head - oldest for head in card.heads]
            for seen in (card.countries, card.terminals):
                if seen:
                    for key in [key for key, last in seen.items() if last <= card_cutoff]:
                        del seen[key]
        label_floor = now_ms - self._terminal_horizon_ms
        self._label_floor = max(self._label_floor, label_floor)
        empty = []
        for terminal_id, labels in self._terminals.items():
            self._labels_kept -= labels.drop_before(label_floor)
            if not labels.times:
                empty.append(terminal_id)
        for terminal_id in empty:
            del self._terminals[terminal_id]
        if self.max_cards is not None and len(self._cards) > self.max_cards:
            self._evict_least_recent(len(self._cards) - self.max_cards)

    def _evict_least_recent(self, how_many: int) -> None:
        # A memory safety valve, not part of the feature definition: evicted cards restart from scratch.
        by_recency = sorted(self._cards.items(), key=lambda item: item[1].last_time)
        for card_id, _ in by_recency[:how_many]:
            del self._cards[card_id]

    def state_counts(self) -> dict[str, int]:
        """Sizes of the state, for status panels (cheap: no scan)."""
        return {
            "cards": len(self._cards),
            "terminals": len(self._terminals),
            "terminal_labels": self._labels_kept,
            "labels_ignored": self.labels_ignored,
        }

    def memory_bytes(self, sample: int = 1000) -> int:
        """Estimated bytes held by the state (measures up to `sample` cards and terminals, scales up)."""
        return _estimate(self._cards, sample, _card_bytes) + _estimate(self._terminals, sample, _terminal_bytes)


def _estimate(states: dict[Any, Any], sample: int, measure: Any) -> int:
    if not states:
        return sys.getsizeof(states)
    measured = 0
    for count, state in enumerate(states.values(), start=1):
        measured += measure(state)
        if count >= sample:
            break
    return sys.getsizeof(states) + measured * len(states) // count


def _haversine_array(lat1: np.ndarray, lon1: np.ndarray, lat2: np.ndarray, lon2: np.ndarray) -> np.ndarray:
    """haversine_km over arrays (NaN where a coordinate is missing)."""
    half_dlat = np.sin((lat2 - lat1) * _HALF_RADIANS_PER_DEGREE)
    half_dlon = np.sin((lon2 - lon1) * _HALF_RADIANS_PER_DEGREE)
    a = half_dlat * half_dlat + np.cos(lat1 * _RADIANS_PER_DEGREE) * np.cos(lat2 * _RADIANS_PER_DEGREE) * (
        half_dlon * half_dlon
    )
    return 2.0 * EARTH_RADIUS_KM * np.arcsin(np.sqrt(np.minimum(a, 1.0)))


def _card_bytes(card: _CardState) -> int:
    size = sys.getsizeof
    total = size(card) + size(card.times) + size(card.amounts) + size(card.heads) + size(card.sums)
    total += 32 * len(card.times) + 24 * len(card.amounts)
    for seen in (card.countries, card.terminals):
        total += size(seen) + sum(size(key) + 32 for key in seen)
    return total


def _terminal_bytes(labels: _TerminalLabels) -> int:
    size = sys.getsizeof
    return size(labels) + size(labels.times) + size(labels.fraud_flags) + 32 * len(labels.times)


# ---------------------------------------------------------------------------------------------
# pandas helpers: run the online implementation over a canonical frame


def _nullable_strings(frame: pd.DataFrame, column: str) -> list[str | None]:
    if column not in frame.columns:
        return [None] * len(frame)
    series = frame[column]
    missing = series.isna().to_numpy()
    return [None if gone else str(value) for value, gone in zip(series.tolist(), missing, strict=True)]


def _nullable_floats(frame: pd.DataFrame, column: str) -> list[float | None]:
    if column not in frame.columns:
        return [None] * len(frame)
    numbers = frame[column].to_numpy(dtype=np.float64, na_value=np.nan).tolist()
    return [None if value != value else value for value in numbers]


def frame_to_transactions(frame: pd.DataFrame, passthrough: Sequence[str] = ()) -> list[Transaction]:
    """Transactions of a canonical frame, in its row order (pass-through columns go to `extra`)."""
    ids = [str(value) for value in frame["transaction_id"].tolist()]
    times = frame["event_time_ms"].to_numpy(dtype=np.int64).tolist()
    amounts = frame["amount"].to_numpy(dtype=np.float64).tolist()
    cards = _nullable_strings(frame, "card_id")
    customers = _nullable_strings(frame, "customer_id")
    terminals = _nullable_strings(frame, "terminal_id")
    currencies = _nullable_strings(frame, "currency")
    categories = _nullable_strings(frame, "merchant_category")
    countries = _nullable_strings(frame, "country")
    lats = _nullable_floats(frame, "lat")
    lons = _nullable_floats(frame, "lon")
    extra_columns = [
        (name, frame[name].to_numpy(dtype=np.float64, na_value=np.nan).tolist()) for name in passthrough
    ]
    transactions = []
    for row in range(len(ids)):
        extra = {}
        for name, column in extra_columns:
            value = column[row]
            if value == value:
                extra[name] = value
        transactions.append(
            Transaction(
                transaction_id=ids[row],
                event_time_ms=times[row],
                card_id=cards[row],  # type: ignore[arg-type]  # datasets without cards have none
                amount=amounts[row],
                customer_id=customers[row],
                terminal_id=terminals[row],
                currency=currencies[row],
                merchant_category=categories[row],
                country=countries[row],
                lat=lats[row],
                lon=lons[row],
                extra=extra,
            )
        )
    return transactions


def frame_to_labels(frame: pd.DataFrame) -> list[Label]:
    """Labels of a canonical frame's labelled rows (rows with a null label are skipped)."""
    labels = frame["label"]
    known = ~labels.isna().to_numpy()
    ids = frame["transaction_id"].to_numpy()[known].tolist()
    times = frame["event_time_ms"].to_numpy(dtype=np.int64)[known].tolist()
    values = labels.to_numpy()[known].astype(np.int64).tolist()
    cards = [card for card, keep in zip(_nullable_strings(frame, "card_id"), known, strict=True) if keep]
    terminal_ids = _nullable_strings(frame, "terminal_id")
    terminals = [terminal for terminal, keep in zip(terminal_ids, known, strict=True) if keep]
    return [
        Label(
            transaction_id=str(ids[i]),
            event_time_ms=times[i],
            label=values[i],
            card_id=cards[i],
            terminal_id=terminals[i],
        )
        for i in range(len(ids))
    ]


def pandas_features(frame: pd.DataFrame, spec: FeatureSpec, dtype: Any = np.float64) -> np.ndarray:
    """Features of every row of a canonical frame, aligned with its rows (same values as spark_features).

    Rows are processed in (event_time_ms, transaction_id) order whatever the frame's order; every
    label of the frame is known up front, which is equivalent to releasing each one at
    event time + label_delay because terminal windows only read labels older than the delay.
    """
    if len(frame) == 0:
        return np.empty((0, len(spec.names)), dtype=dtype)
    order = (
        frame[["event_time_ms", "transaction_id"]]
        .assign(transaction_id=frame["transaction_id"].astype(str), _row=np.arange(len(frame)))
        .sort_values(["event_time_ms", "transaction_id"], kind="mergesort")["_row"]
        .to_numpy()
    )
    ordered = frame.iloc[order]
    online = OnlineFeatures(spec)
    if spec.use_terminal and "label" in frame.columns:
        online.observe_labels(frame_to_labels(ordered))
    features = online.transform(frame_to_transactions(ordered, spec.passthrough), dtype=dtype)
    aligned = np.empty_like(features)
    aligned[order] = features
    return aligned


# ---------------------------------------------------------------------------------------------
# Spark: the same definitions as window functions over the canonical frame


def _haversine_column(lat1: Column, lon1: Column, lat2: Column, lon2: Column) -> Column:
    from pyspark.sql import functions as F

    half_dlat = F.sin((lat2 - lat1) * F.lit(_HALF_RADIANS_PER_DEGREE))
    half_dlon = F.sin((lon2 - lon1) * F.lit(_HALF_RADIANS_PER_DEGREE))
    a = half_dlat * half_dlat + F.cos(lat1 * F.lit(_RADIANS_PER_DEGREE)) * F.cos(
        lat2 * F.lit(_RADIANS_PER_DEGREE)
    ) * (half_dlon * half_dlon)
    return F.lit(2.0 * EARTH_RADIUS_KM) * F.asin(F.sqrt(F.least(a, F.lit(1.0))))


def spark_features(df: DataFrame, spec: FeatureSpec) -> DataFrame:
    """Features of a canonical Spark frame: transaction_id, event_time_ms, card_id, label, then spec.names."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    null_double = F.lit(None).cast("double")
    t = F.col("event_time_ms").cast("long")
    amount = F.col("amount").cast("double")
    staged = df.withColumn("event_time_ms", t).withColumn("amount", amount)
    for name in ("lat", "lon", *spec.passthrough):
        if name in df.columns:
            staged = staged.withColumn(name, F.nanvl(F.col(name).cast("double"), null_double))
    t = F.col("event_time_ms")
    amount = F.col("amount")
    columns: dict[str, Column] = {"amount": amount, "log_amount": F.log1p(amount)}

    if spec.use_card:
        history = spec.history_ms
        by_card = Window.partitionBy("card_id").orderBy("event_time_ms", "transaction_id")
        by_card_time = Window.partitionBy("card_id").orderBy("event_time_ms")
        # A range frame on event time also holds same-timestamp rows that come later in
        # (event_time_ms, transaction_id) order; subtract them so a row sees exactly what it does online.
        later_peers = (
            Window.partitionBy("card_id", "event_time_ms")
            .orderBy("transaction_id")
            .rowsBetween(1, Window.unboundedFollowing)
        )
        staged = staged.withColumn("_later_n", F.count(F.lit(1)).over(later_peers)).withColumn(
            "_later_sum", F.coalesce(F.sum(amount).over(later_peers), F.lit(0.0))
        )
        for window in spec.card_windows_ms:
            frame = by_card_time.rangeBetween(-(window - 1), 0)
            count = F.count(F.lit(1)).over(frame) - F.col("_later_n")
            staged = staged.withColumn(f"_n_{window}", count).withColumn(
                f"_s_{window}", F.sum(amount).over(frame) - F.col("_later_sum")
            )
        staged = (
            staged.withColumn("_prev_t", F.lag(t).over(by_card))
            .withColumn("_prev_lat", F.lag("lat").over(by_card) if spec.use_location else null_double)
            .withColumn("_prev_lon", F.lag("lon").over(by_card) if spec.use_location else null_double)
        )
        if spec.use_country:
            by_country = Window.partitionBy("card_id", "country").orderBy("event_time_ms", "transaction_id")
            staged = staged.withColumn("_prev_country_t", F.lag(t).over(by_country))
        if spec.use_terminal:
            by_visit = Window.partitionBy("card_id", "terminal_id").orderBy("event_time_ms", "transaction_id")
            staged = staged.withColumn("_prev_terminal_t", F.lag(t).over(by_visit))

        def window_sum(window: int) -> Column:
            # One row left means the sum is exactly its amount, as the online running sum resets.
            return F.when(F.col(f"_n_{window}") == 1, amount).otherwise(F.col(f"_s_{window}"))

        for window in spec.card_windows_ms:
            label = _hours_label(window)
            columns[f"card_count_{label}"] = F.col(f"_n_{window}")
            columns[f"card_mean_amount_{label}"] = window_sum(window) / F.col(f"_n_{window}")
        relative = spec.relative_window_ms
        previous_count = F.col(f"_n_{relative}") - 1
        # Spark runs in ANSI mode: a zero divisor raises, so it becomes null (and the row falls to 1.0).
        previous_mean = (window_sum(relative) - amount) / F.when(previous_count > 0, previous_count)
        columns[f"card_amount_ratio_{_hours_label(relative)}"] = F.when(
            (previous_count > 0) & (previous_mean >= MIN_MEAN_FOR_RATIO),
            F.least(amount / previous_mean, F.lit(MAX_AMOUNT_RATIO)),
        ).otherwise(F.lit(1.0))
        prev_t = F.col("_prev_t")
        has_previous = prev_t.isNotNull() & (prev_t > t - F.lit(history))
        columns["card_log_seconds_since_prev"] = F.when(
            has_previous, F.log1p((t - prev_t) / F.lit(1000.0))
        ).otherwise(F.lit(math.log1p(history / 1000.0)))
        if spec.use_location:
            located = (
                has_previous
                & F.col("lat").isNotNull()
                & F.col("lon").isNotNull()
                & F.col("_prev_lat").isNotNull()
                & F.col("_prev_lon").isNotNull()
            )
            distance = _haversine_column(F.col("_prev_lat"), F.col("_prev_lon"), F.col("lat"), F.col("lon"))
            hours = F.greatest(t - prev_t, F.lit(MIN_TRAVEL_MS)) / F.lit(HOUR_MS)
            columns["card_distance_km"] = F.when(located, distance).otherwise(F.lit(0.0))
            columns["card_speed_kmh"] = F.when(
                located, F.least(distance / hours, F.lit(MAX_SPEED_KMH))
            ).otherwise(F.lit(0.0))
        for flag, key, previous in (
            (spec.use_country, "country", "_prev_country_t"),
            (spec.use_terminal, "terminal_id", "_prev_terminal_t"),
        ):
            if flag:
                seen = F.col(previous)
                is_new = seen.isNull() | (seen <= t - F.lit(history))
                name = "card_new_country" if key == "country" else "card_new_terminal"
                columns[name] = F.when(F.col(key).isNull(), F.lit(0.0)).otherwise(
                    F.when(is_new, F.lit(1.0)).otherwise(F.lit(0.0))
                )

    if spec.use_terminal:
        by_terminal = Window.partitionBy("terminal_id").orderBy("event_time_ms")
        delay = spec.label_delay_ms
        for window in spec.terminal_windows_ms:
            # [t - delay - W, t - delay) on integer milliseconds.
            frame = by_terminal.rangeBetween(-(delay + window), -(delay + 1))
            label = _days_label(window)
            count = F.count("label").over(frame)
            frauds = F.coalesce(F.sum(F.col("label").cast("double")).over(frame), F.lit(0.0))
            known = F.col("terminal_id").isNotNull()
            staged = staged.withColumn(f"_tn_{label}", F.when(known, count).otherwise(F.lit(0)))
            staged = staged.withColumn(f"_tf_{label}", F.when(known, frauds).otherwise(F.lit(0.0)))
            columns[f"terminal_count_{label}"] = F.col(f"_tn_{label}")
            positive_count = F.when(F.col(f"_tn_{label}") > 0, F.col(f"_tn_{label}"))
            columns[f"terminal_fraud_rate_{label}"] = F.coalesce(
                F.col(f"_tf_{label}") / positive_count, F.lit(0.0)
            )

    angle = F.pmod(t, F.lit(DAY_MS)) * F.lit(_ANGLE_PER_MS)
    columns["hour_sin"] = F.sin(angle)
    columns["hour_cos"] = F.cos(angle)
    weekday = F.pmod(F.floor(t / F.lit(DAY_MS)) + 3, F.lit(7))
    columns["is_weekend"] = F.when(weekday >= 5, F.lit(1.0)).otherwise(F.lit(0.0))
    for name in spec.passthrough:
        columns[name] = F.coalesce(F.col(name), F.lit(0.0))

    missing = [name for name in spec.names if name not in columns]
    if missing:
        raise ModelError(f"feature spec: no Spark definition for {', '.join(missing)}")
    return staged.select(
        "transaction_id",
        "event_time_ms",
        "card_id",
        "label",
        *[columns[name].cast("double").alias(name) for name in spec.names],
    )
