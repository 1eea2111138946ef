"""The feature specification, defined once and computed twice: online (detector) and in Spark (training).

Semantics shared by both implementations (tests/integration/test_feature_parity.py holds them to
1e-9 in float64 and 1e-6 in the float32 rows the detector scores, on every row):

* Event time only. Records are ordered by ``(event_time_ms, transaction_id)``; a row sees every
  earlier row of its card in that order (same-timestamp rows with a smaller transaction id too)
  and itself. Spark applies that order; `OnlineFeatures.transform` takes rows in the order given
  (the detector's arrival order), `pandas_features` sorts first.
* Card window ``W`` (``card_windows_hours``, in ms) holds the card's rows with
  ``event_time > t - W`` up to and including the current row: ``card_count_W`` counts them,
  ``card_mean_amount_W`` averages their amounts.
* ``card_amount_ratio_R`` is ``amount / mean(the card's previous rows in window R)``; 1 when there
  are none or that mean is under a cent; capped at 1000. ``R`` is always one of the card windows.
* The card's history ``H`` is its longest window. A previous row older than ``H`` counts as none:
  ``card_log_seconds_since_prev`` is ``log1p(seconds since it)``, else ``log1p(H in seconds)``;
  ``card_distance_km`` (haversine) and ``card_speed_kmh`` (over at least a minute, capped at
  1000 km/h) are 0 without it or without a location on either side. A country or terminal is new
  for the card (1) unless the card used it within ``H``; a missing one is never new. So online
  state older than ``H`` can be dropped without changing any later feature: memory stays bounded.
* Terminal window ``W`` counts labelled transactions of the terminal with event time in
  ``[t - label_delay - W, t - label_delay)``; ``terminal_fraud_rate_W`` is their fraud share
  (0 when none). Online, labels arrive through `observe_label` in any order; in Spark they are the
  frame's ``label`` column. A missing terminal id gives 0s.
* ``hour_sin``/``hour_cos`` place the UTC time of day on a circle; ``is_weekend`` is Saturday or
  Sunday, UTC.
* Pass-through columns are copied; a missing or NaN value reads as 0.
* Features needing a field the dataset lacks are left out and listed in ``FeatureSpec.dropped``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from fraudkit.config import FeaturesConfig
from fraudkit.errors import ConfigError, ModelError

if TYPE_CHECKING:
    pass


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
RADIANS_PER_DEGREE = math.pi / 180.0
HALF_RADIANS_PER_DEGREE = math.pi / 360.0
ANGLE_PER_MS = 2.0 * math.pi / DAY_MS
# Before and after every real event time: "never seen" needs no None check, a sorted list no bounds check.
NEVER_MS = -(1 << 62)
FOREVER_MS = 1 << 62

_FIELD_TEXT = {
    "card": "card_id",
    "location": "lat/lon",
    "country": "country",
    "terminal": "terminal_id",
}


class DatasetFields(Protocol):
    """What a dataset mapping tells the feature spec (duck-typed: datasets.DatasetMapping fits)."""

    @property
    def has_card(self) -> bool: ...
    @property
    def has_terminal(self) -> bool: ...
    @property
    def has_location(self) -> bool: ...
    @property
    def has_country(self) -> bool: ...
    @property
    def passthrough(self) -> list[str]: ...


_UNITS = (("d", DAY_MS), ("h", HOUR_MS), ("m", 60_000), ("s", 1000), ("ms", 1))


def _duration_label(window_ms: int, preferred: str) -> str:
    """'24h', '7d', or a smaller whole unit ('15m') so names never need a dot (Spark reads dots as paths)."""
    units = _UNITS[[unit for unit, _ in _UNITS].index(preferred) :]
    for unit, size in units:
        if window_ms % size == 0:
            return f"{window_ms // size}{unit}"
    return f"{window_ms}ms"


def hours_label(window_ms: int) -> str:
    return _duration_label(window_ms, "h")


def days_label(window_ms: int) -> str:
    return _duration_label(window_ms, "d")


def _catalogue(
    card_windows_ms: Sequence[int],
    relative_window_ms: int,
    terminal_windows_ms: Sequence[int],
    passthrough: Sequence[str],
) -> list[tuple[str, tuple[str, ...]]]:
    """Every feature in vector order with the dataset fields it needs."""
    entries: list[tuple[str, tuple[str, ...]]] = [("amount", ()), ("log_amount", ())]
    for window in card_windows_ms:
        entries.append((f"card_count_{hours_label(window)}", ("card",)))
        entries.append((f"card_mean_amount_{hours_label(window)}", ("card",)))
    entries.append((f"card_amount_ratio_{hours_label(relative_window_ms)}", ("card",)))
    entries.append(("card_log_seconds_since_prev", ("card",)))
    entries.append(("card_distance_km", ("card", "location")))
    entries.append(("card_speed_kmh", ("card", "location")))
    entries.append(("card_new_country", ("card", "country")))
    entries.append(("card_new_terminal", ("card", "terminal")))
    for window in terminal_windows_ms:
        entries.append((f"terminal_count_{days_label(window)}", ("terminal",)))
        entries.append((f"terminal_fraud_rate_{days_label(window)}", ("terminal",)))
    entries += [("hour_sin", ()), ("hour_cos", ()), ("is_weekend", ())]
    entries += [(name, ()) for name in passthrough]
    return entries


@dataclass
class FeatureSpec:
    """Which features a model uses and their parameters (windows, label delay); stored in manifests.

    ``use_card`` .. ``use_terminal`` say which fields the dataset has; a feature is in ``names`` when
    every field it needs is there, otherwise in ``dropped`` with the reason.
    """

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
        return cls(
            card_windows_ms=[round(hours * HOUR_MS) for hours in features.card_windows_hours],
            terminal_windows_ms=[round(days * DAY_MS) for days in features.terminal_windows_days],
            label_delay_ms=round(features.label_delay_days * DAY_MS),
            relative_window_ms=round(features.relative_amount_window_hours * HOUR_MS),
            use_card=bool(getattr(mapping, "has_card", False)),
            use_location=bool(getattr(mapping, "has_location", False)),
            use_country=bool(getattr(mapping, "has_country", False)),
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
    half_dlat = math.sin((lat2 - lat1) * HALF_RADIANS_PER_DEGREE)
    half_dlon = math.sin((lon2 - lon1) * HALF_RADIANS_PER_DEGREE)
    a = half_dlat * half_dlat + math.cos(lat1 * RADIANS_PER_DEGREE) * math.cos(lat2 * RADIANS_PER_DEGREE) * (
        half_dlon * half_dlon
    )
    return 2.0 * EARTH_RADIUS_KM * math.asin(math.sqrt(min(a, 1.0)))


def haversine_km_array(lat1: Any, lon1: Any, lat2: Any, lon2: Any) -> Any:
    """haversine_km element-wise over numpy arrays (or pandas Series); NaN where a coordinate is missing."""
    import numpy as np  # numpy stays out of the spec's import: manifests are read without it

    half_dlat = np.sin((lat2 - lat1) * HALF_RADIANS_PER_DEGREE)
    half_dlon = np.sin((lon2 - lon1) * HALF_RADIANS_PER_DEGREE)
    a = half_dlat * half_dlat + np.cos(lat1 * RADIANS_PER_DEGREE) * np.cos(lat2 * RADIANS_PER_DEGREE) * (
        half_dlon * half_dlon
    )
    return 2.0 * EARTH_RADIUS_KM * np.arcsin(np.sqrt(np.minimum(a, 1.0)))
