"""Feature spec and the online implementation: window edges, label delay, ties, expiry, bounded state."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

import msgspec
import numpy as np
import pandas as pd
import pytest

from fraudkit.config import FeaturesConfig
from fraudkit.errors import ConfigError, ModelError
from fraudkit.features import (
    DAY_MS,
    HOUR_MS,
    MAX_SPEED_KMH,
    FeatureSpec,
    OnlineFeatures,
    frame_to_labels,
    frame_to_transactions,
    haversine_km,
    pandas_features,
)
from fraudkit.schema import Label, Transaction

T0 = 1_736_121_600_000  # 2025-01-06 00:00 UTC, a Monday
MINUTE_MS = 60_000


@dataclass
class Mapping:
    has_card: bool = True
    has_terminal: bool = True
    has_location: bool = True
    has_country: bool = True
    has_merchant: bool = True
    passthrough: list[str] = field(default_factory=list)


def full_spec(**overrides: object) -> FeatureSpec:
    return FeatureSpec.from_config(FeaturesConfig.model_validate(overrides), Mapping())


def tx(
    n: int,
    at_ms: int,
    card: str | None = "c1",
    amount: float = 10.0,
    terminal: str | None = "t1",
    country: str | None = "FR",
    lat: float | None = 48.85,
    lon: float | None = 2.35,
    extra: dict[str, float] | None = None,
) -> Transaction:
    return Transaction(
        transaction_id=f"tx{n:06d}",
        event_time_ms=at_ms,
        card_id=card,  # type: ignore[arg-type]
        amount=amount,
        terminal_id=terminal,
        country=country,
        lat=lat,
        lon=lon,
        extra=extra or {},
    )


def features(spec: FeatureSpec, transactions: list[Transaction], labels: list[Label] = ()) -> list[dict]:  # type: ignore[assignment]
    online = OnlineFeatures(spec)
    online.observe_labels(labels)
    matrix = online.transform(transactions, dtype=np.float64)
    return [dict(zip(spec.names, row.tolist(), strict=True)) for row in matrix]


# --- the spec ---------------------------------------------------------------------------------


def test_full_mapping_names_every_feature_in_vector_order() -> None:
    spec = full_spec()
    assert spec.names[:2] == ["amount", "log_amount"]
    assert spec.names[2:10] == [
        "card_count_1h",
        "card_mean_amount_1h",
        "card_count_24h",
        "card_mean_amount_24h",
        "card_count_168h",
        "card_mean_amount_168h",
        "card_count_720h",
        "card_mean_amount_720h",
    ]
    assert spec.names[10:16] == [
        "card_amount_ratio_168h",
        "card_log_seconds_since_prev",
        "card_distance_km",
        "card_speed_kmh",
        "card_new_country",
        "card_new_terminal",
    ]
    assert spec.names[16:] == [
        "terminal_count_1d",
        "terminal_fraud_rate_1d",
        "terminal_count_7d",
        "terminal_fraud_rate_7d",
        "terminal_count_30d",
        "terminal_fraud_rate_30d",
        "hour_sin",
        "hour_cos",
        "is_weekend",
    ]
    assert spec.dropped == {}
    assert spec.label_delay_ms == 7 * DAY_MS
    assert spec.history_ms == 720 * HOUR_MS


def test_creditcard_like_mapping_drops_card_terminal_and_location_features_with_reasons() -> None:
    mapping = Mapping(
        has_card=False,
        has_terminal=False,
        has_location=False,
        has_country=False,
        passthrough=["V1", "V2", "V3"],
    )
    spec = FeatureSpec.from_config(FeaturesConfig(), mapping)
    assert spec.names == ["amount", "log_amount", "hour_sin", "hour_cos", "is_weekend", "V1", "V2", "V3"]
    assert spec.dropped["card_count_1h"] == "needs card_id, which the dataset lacks"
    assert spec.dropped["card_distance_km"] == "needs card_id and lat/lon, which the dataset lacks"
    assert spec.dropped["card_new_terminal"] == "needs card_id and terminal_id, which the dataset lacks"
    assert spec.dropped["terminal_fraud_rate_30d"] == "needs terminal_id, which the dataset lacks"
    assert len(spec.dropped) == 8 + 6 + 6


def test_mapping_with_location_but_no_card_blames_only_the_card() -> None:
    spec = FeatureSpec.from_config(FeaturesConfig(), Mapping(has_card=False))
    assert spec.dropped["card_distance_km"] == "needs card_id, which the dataset lacks"
    assert [name for name in spec.names if name.startswith("terminal_")] == [
        "terminal_count_1d",
        "terminal_fraud_rate_1d",
        "terminal_count_7d",
        "terminal_fraud_rate_7d",
        "terminal_count_30d",
        "terminal_fraud_rate_30d",
    ]
    rows = features(spec, [tx(1, T0, card=None), tx(2, T0 + 1, card=None)])
    assert rows[1]["amount"] == 10.0 and "card_count_1h" not in rows[1]


def test_mapping_without_location_drops_only_distance_and_speed() -> None:
    spec = FeatureSpec.from_config(FeaturesConfig(), Mapping(has_location=False))
    assert set(spec.dropped) == {"card_distance_km", "card_speed_kmh"}
    assert spec.dropped["card_speed_kmh"] == "needs lat/lon, which the dataset lacks"


def test_ratio_window_outside_card_windows_is_added_to_them() -> None:
    spec = full_spec(card_windows_hours=[720.0, 1.0], relative_amount_window_hours=48.0)
    assert spec.card_windows_ms == [HOUR_MS, 48 * HOUR_MS, 720 * HOUR_MS]
    assert "card_mean_amount_48h" in spec.names
    assert "card_amount_ratio_48h" in spec.names


def test_spec_round_trips_through_its_dict_form() -> None:
    spec = FeatureSpec.from_config(FeaturesConfig(label_delay_days=2.5), Mapping(passthrough=["V1"]))
    again = FeatureSpec.from_dict(spec.to_dict())
    assert again == spec
    assert again.names[-1] == "V1"
    assert again.label_delay_ms == int(2.5 * DAY_MS)


def test_tampered_spec_dict_is_refused() -> None:
    data = full_spec().to_dict()
    data["names"] = [*data["names"][:-1], "something_else"]
    with pytest.raises(ModelError, match="names do not match"):
        FeatureSpec.from_dict(data)
    data = full_spec().to_dict()
    del data["label_delay_ms"]
    with pytest.raises(ModelError, match="missing key 'label_delay_ms'"):
        FeatureSpec.from_dict(data)
    with pytest.raises(ModelError, match="unsupported version"):
        FeatureSpec.from_dict({**full_spec().to_dict(), "version": 99})


def test_passthrough_clashing_with_a_feature_name_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="amount"):
        FeatureSpec.from_config(FeaturesConfig(), Mapping(passthrough=["amount"]))


# --- card windows -----------------------------------------------------------------------------


def test_card_window_holds_rows_strictly_newer_than_t_minus_w_and_the_row_itself() -> None:
    rows = features(
        full_spec(),
        [
            tx(1, T0, amount=10.0),
            tx(2, T0 + 30 * MINUTE_MS, amount=20.0),
            tx(3, T0 + HOUR_MS, amount=60.0),  # exactly 1 h after the first: the first is out
        ],
    )
    assert [r["card_count_1h"] for r in rows] == [1, 2, 2]
    assert [r["card_mean_amount_1h"] for r in rows] == [10.0, 15.0, 40.0]
    assert [r["card_count_24h"] for r in rows] == [1, 2, 3]
    assert rows[2]["card_mean_amount_24h"] == pytest.approx(30.0)


def test_same_timestamp_rows_see_each_other_in_the_given_order() -> None:
    rows = features(full_spec(), [tx(1, T0, amount=5.0), tx(2, T0, amount=15.0), tx(3, T0, amount=40.0)])
    assert [r["card_count_1h"] for r in rows] == [1, 2, 3]
    assert [r["card_mean_amount_1h"] for r in rows] == [5.0, 10.0, 20.0]
    assert [r["card_log_seconds_since_prev"] for r in rows][1:] == [0.0, 0.0]
    assert [r["card_speed_kmh"] for r in rows] == [0.0, 0.0, 0.0]


def test_cards_do_not_share_windows() -> None:
    rows = features(full_spec(), [tx(1, T0, card="a"), tx(2, T0 + 1, card="b"), tx(3, T0 + 2, card="a")])
    assert [r["card_count_720h"] for r in rows] == [1, 1, 2]


def test_amount_ratio_uses_previous_rows_of_the_ratio_window_and_is_one_without_history() -> None:
    rows = features(
        full_spec(),
        [
            tx(1, T0, amount=10.0),
            tx(2, T0 + HOUR_MS, amount=30.0),
            tx(3, T0 + 2 * HOUR_MS, amount=100.0),
            tx(4, T0 + 9 * DAY_MS, amount=50.0),  # the others are older than 168 h
        ],
    )
    assert [r["card_amount_ratio_168h"] for r in rows] == [1.0, 3.0, 5.0, 1.0]


def test_amount_ratio_is_one_when_the_previous_mean_is_below_a_cent_and_capped_otherwise() -> None:
    rows = features(
        full_spec(),
        [tx(1, T0, amount=0.0), tx(2, T0 + 1000, amount=50.0), tx(3, T0 + 2000, amount=1e6)],
    )
    assert rows[1]["card_amount_ratio_168h"] == 1.0
    assert rows[2]["card_amount_ratio_168h"] == 1000.0  # 1e6 / 25 capped


def test_seconds_since_previous_are_log_scaled_and_forgotten_after_the_history() -> None:
    spec = full_spec()
    rows = features(
        spec,
        [tx(1, T0), tx(2, T0 + 90_000), tx(3, T0 + 90_000 + spec.history_ms)],
    )
    no_history = math.log1p(spec.history_ms / 1000)
    assert rows[0]["card_log_seconds_since_prev"] == pytest.approx(no_history)
    assert rows[1]["card_log_seconds_since_prev"] == pytest.approx(math.log1p(90.0))
    assert rows[2]["card_log_seconds_since_prev"] == pytest.approx(no_history)
    assert rows[2]["card_count_720h"] == 1


def test_distance_and_speed_from_the_previous_location() -> None:
    paris = (48.8566, 2.3522)
    london = (51.5074, -0.1278)
    rows = features(
        full_spec(),
        [
            tx(1, T0, lat=paris[0], lon=paris[1]),
            tx(2, T0 + 2 * HOUR_MS, lat=london[0], lon=london[1]),
            tx(3, T0 + 2 * HOUR_MS + 10 * MINUTE_MS, lat=paris[0], lon=paris[1]),
            tx(4, T0 + 3 * HOUR_MS, lat=None, lon=None),
            tx(5, T0 + 4 * HOUR_MS, lat=paris[0], lon=paris[1]),
        ],
    )
    assert rows[0]["card_distance_km"] == 0.0
    assert rows[1]["card_distance_km"] == pytest.approx(343.6, abs=0.5)
    assert rows[1]["card_speed_kmh"] == pytest.approx(rows[1]["card_distance_km"] / 2)
    assert rows[2]["card_speed_kmh"] == MAX_SPEED_KMH  # 344 km in 10 minutes
    assert rows[3]["card_distance_km"] == rows[4]["card_distance_km"] == 0.0  # a side without location


def test_haversine_is_symmetric_and_zero_for_the_same_point() -> None:
    assert haversine_km(10.0, 20.0, 10.0, 20.0) == 0.0
    assert haversine_km(0.0, 0.0, 0.0, 180.0) == pytest.approx(math.pi * 6371.0)
    assert haversine_km(1.0, 2.0, 3.0, 4.0) == pytest.approx(haversine_km(3.0, 4.0, 1.0, 2.0))


def test_new_country_and_terminal_within_the_history_only() -> None:
    spec = full_spec()
    rows = features(
        spec,
        [
            tx(1, T0, country="FR", terminal="t1"),
            tx(2, T0 + 1, country="FR", terminal="t2"),
            tx(3, T0 + 2, country="US", terminal="t1"),
            tx(4, T0 + 3, country=None, terminal=None),
            tx(5, T0 + 2 + spec.history_ms, country="US", terminal="t1"),  # last seen exactly H ago
            tx(6, T0 + 3 + spec.history_ms, country="US", terminal="t1"),
        ],
    )
    assert [r["card_new_country"] for r in rows] == [1, 0, 1, 0, 1, 0]
    assert [r["card_new_terminal"] for r in rows] == [1, 1, 0, 0, 1, 0]


# --- terminal windows and the label delay -----------------------------------------------------


def label(n: int, at_ms: int, fraud: int, terminal: str | None = "t1") -> Label:
    return Label(transaction_id=f"tx{n:06d}", event_time_ms=at_ms, label=fraud, terminal_id=terminal)


def test_terminal_windows_only_count_labels_older_than_the_delay() -> None:
    spec = full_spec(label_delay_days=7.0)
    query_at = T0 + 40 * DAY_MS
    upper = query_at - 7 * DAY_MS
    labels = [
        label(1, upper, 1),  # not older than the delay: excluded
        label(2, upper - 1, 1),  # inside every window
        label(3, upper - DAY_MS, 0),  # exactly 1 d before: inside 1 d ([t-d-W, t-d) is closed below)
        label(4, upper - DAY_MS - 1, 0),  # outside 1 d, inside 7 d
        label(5, upper - 7 * DAY_MS - 1, 1),  # inside 30 d only
        label(6, upper - 30 * DAY_MS - 1, 1),  # outside everything
        label(7, upper - 2, 1, terminal="t2"),  # another terminal
    ]
    (row,) = features(spec, [tx(100, query_at)], labels)
    assert (row["terminal_count_1d"], row["terminal_fraud_rate_1d"]) == (2, 0.5)
    assert (row["terminal_count_7d"], row["terminal_fraud_rate_7d"]) == (3, pytest.approx(1 / 3))
    assert (row["terminal_count_30d"], row["terminal_fraud_rate_30d"]) == (4, 0.5)


def test_terminal_without_labels_or_id_has_zero_counts_and_rates() -> None:
    rows = features(full_spec(), [tx(1, T0, terminal="unseen"), tx(2, T0, terminal=None)])
    for row in rows:
        assert [row[n] for n in row if n.startswith("terminal_")] == [0.0] * 6


def test_labels_arriving_out_of_order_between_queries_are_counted() -> None:
    spec = full_spec(label_delay_days=1.0)
    online = OnlineFeatures(spec)
    at = T0 + 20 * DAY_MS
    online.observe_label(label(1, at - 3 * DAY_MS, 1))
    first = online.transform([tx(10, at)], dtype=np.float64)[0]
    # Late labels land before, inside and after the cursors the first query left.
    online.observe_label(label(2, at - 2 * DAY_MS + 5, 0))
    online.observe_label(label(3, at - 40 * DAY_MS, 1))
    online.observe_label(label(4, at - DAY_MS - 1, 0))
    online.observe_label(label(5, at + DAY_MS, 1))
    second = online.transform([tx(11, at + 1)], dtype=np.float64)[0]
    names = spec.names
    assert first[names.index("terminal_count_7d")] == 1
    # The second query's 1 d window is [at + 1 - 2 d, at + 1 - 1 d): labels 2 and 4.
    assert second[names.index("terminal_count_1d")] == 2
    assert second[names.index("terminal_fraud_rate_1d")] == 0.0
    assert second[names.index("terminal_count_7d")] == 3
    assert second[names.index("terminal_fraud_rate_7d")] == pytest.approx(1 / 3)


def test_event_time_stepping_back_moves_the_terminal_cursors_back() -> None:
    spec = full_spec(label_delay_days=1.0)
    labels = [label(i, T0 + i * HOUR_MS, i % 2) for i in range(200)]
    times = [T0 + 5 * DAY_MS, T0 + 9 * DAY_MS, T0 + 6 * DAY_MS, T0 + 2 * DAY_MS, T0 + 8 * DAY_MS]
    online = OnlineFeatures(spec)
    online.observe_labels(labels)
    together = online.transform([tx(1000 + i, at, card=f"c{i}") for i, at in enumerate(times)])
    for i, at in enumerate(times):
        alone = features(spec, [tx(1000 + i, at, card=f"c{i}")], labels)[0]
        assert together[i].tolist() == pytest.approx([alone[n] for n in spec.names], rel=1e-6)


# --- time of day, pass-through ----------------------------------------------------------------


def test_hour_is_cyclic_and_weekend_is_saturday_and_sunday_utc() -> None:
    spec = full_spec()
    saturday_6am = T0 + 5 * DAY_MS + 6 * HOUR_MS
    rows = features(spec, [tx(1, T0), tx(2, T0 + 4 * DAY_MS + 23 * HOUR_MS, card="x"), tx(3, saturday_6am)])
    assert rows[0]["hour_sin"] == pytest.approx(0.0) and rows[0]["hour_cos"] == pytest.approx(1.0)
    assert rows[2]["hour_sin"] == pytest.approx(1.0) and rows[2]["hour_cos"] == pytest.approx(0.0, abs=1e-12)
    assert [r["is_weekend"] for r in rows] == [0.0, 0.0, 1.0]
    sunday_late = features(spec, [tx(4, T0 + 6 * DAY_MS + 23 * HOUR_MS)])[0]
    assert sunday_late["is_weekend"] == 1.0


def test_passthrough_columns_come_from_extra_and_default_to_zero() -> None:
    spec = FeatureSpec.from_config(FeaturesConfig(), Mapping(has_card=False, passthrough=["V1", "V2"]))
    rows = features(spec, [tx(1, T0, extra={"V1": 1.5, "V2": -2.0}), tx(2, T0, extra={"V2": math.nan})])
    assert (rows[0]["V1"], rows[0]["V2"]) == (1.5, -2.0)
    assert (rows[1]["V1"], rows[1]["V2"]) == (0.0, 0.0)


def test_transform_returns_float32_rows_of_the_spec_width() -> None:
    spec = full_spec()
    matrix = OnlineFeatures(spec).transform([tx(1, T0), tx(2, T0 + 1)])
    assert matrix.dtype == np.float32
    assert matrix.shape == (2, len(spec.names))
    assert OnlineFeatures(spec).transform([]).shape == (0, len(spec.names))


# --- a brute-force reference over random data -------------------------------------------------


def random_stream(seed: int, rows: int = 1500) -> tuple[list[Transaction], list[Label]]:
    rng = random.Random(seed)
    transactions = []
    at = T0
    for n in range(rows):
        at += rng.choice([0, 0, 1, MINUTE_MS, 37 * MINUTE_MS, 5 * HOUR_MS, 2 * DAY_MS])
        located = rng.random() > 0.1
        transactions.append(
            tx(
                n,
                at,
                card=f"c{rng.randrange(12)}",
                amount=rng.choice([0.0, 1.0, round(rng.uniform(1, 500), 2)]),
                terminal=None if rng.random() < 0.05 else f"t{rng.randrange(6)}",
                country=None if rng.random() < 0.05 else rng.choice(["FR", "FR", "FR", "US", "BR"]),
                lat=rng.uniform(-60, 60) if located else None,
                lon=rng.uniform(-170, 170) if located else None,
                extra={"V1": rng.gauss(0, 1)},
            )
        )
    transactions.sort(key=lambda t: (t.event_time_ms, t.transaction_id))
    labels = [
        Label(t.transaction_id, t.event_time_ms, int(rng.random() < 0.2), t.card_id, t.terminal_id)
        for t in transactions
    ]
    return transactions, labels


def reference(spec: FeatureSpec, txs: list[Transaction], labels: list[Label]) -> np.ndarray:
    """Each feature straight from its definition, in vector order, by scanning all earlier rows."""
    assert spec.use_card and spec.use_location and spec.use_country and spec.use_terminal
    rows = []
    history = spec.history_ms
    for i, row in enumerate(txs):
        t = row.event_time_ms
        mine = [p for p in txs[: i + 1] if p.card_id == row.card_id]
        earlier = mine[:-1]
        values = [row.amount, math.log1p(row.amount)]
        for window in spec.card_windows_ms:
            inside = [p.amount for p in mine if p.event_time_ms > t - window]
            values += [len(inside), sum(inside) / len(inside)]
        previous = [p.amount for p in earlier if p.event_time_ms > t - spec.relative_window_ms]
        ratio = 1.0
        if previous and sum(previous) / len(previous) >= 0.01:
            ratio = min(row.amount / (sum(previous) / len(previous)), 1000.0)
        last = earlier[-1] if earlier and earlier[-1].event_time_ms > t - history else None
        values += [ratio, math.log1p((t - last.event_time_ms if last else history) / 1000)]
        distance = speed = 0.0
        if last and None not in (row.lat, row.lon, last.lat, last.lon):
            distance = haversine_km(last.lat, last.lon, row.lat, row.lon)  # type: ignore[arg-type]
            speed = min(distance / (max(t - last.event_time_ms, 60_000) / HOUR_MS), 1000.0)
        recent = [p for p in earlier if p.event_time_ms > t - history]
        values += [
            distance,
            speed,
            float(row.country is not None and all(p.country != row.country for p in recent)),
            float(row.terminal_id is not None and all(p.terminal_id != row.terminal_id for p in recent)),
        ]
        for window in spec.terminal_windows_ms:
            upper = t - spec.label_delay_ms
            seen = [
                lab.label
                for lab in labels
                if row.terminal_id is not None
                and lab.terminal_id == row.terminal_id
                and upper - window <= lab.event_time_ms < upper
            ]
            values += [len(seen), sum(seen) / len(seen) if seen else 0.0]
        angle = (t % DAY_MS) / DAY_MS * 2 * math.pi
        values += [math.sin(angle), math.cos(angle), float(((t // DAY_MS) + 3) % 7 >= 5)]
        values += [row.extra.get(name, 0.0) for name in spec.passthrough]
        assert len(values) == len(spec.names)
        rows.append(values)
    return np.array(rows)


@pytest.mark.parametrize("seed", [1, 2])
def test_online_features_match_the_definitions_with_labels_released_after_the_delay(seed: int) -> None:
    spec = FeatureSpec.from_config(
        FeaturesConfig(
            label_delay_days=1.0,
            card_windows_hours=[1.0, 24.0, 240.0],
            terminal_windows_days=[0.5, 3.0],
            relative_amount_window_hours=24.0,
        ),
        Mapping(passthrough=["V1"]),
    )
    txs, labels = random_stream(seed)
    expected = reference(spec, txs, labels)
    online = OnlineFeatures(spec)
    got = []
    released = 0
    for n, row in enumerate(txs):
        while (
            released < len(labels)
            and labels[released].event_time_ms + spec.label_delay_ms <= row.event_time_ms
        ):
            online.observe_label(labels[released])
            released += 1
        got.append(online.transform([row], dtype=np.float64)[0])
        if n % 97 == 0:
            online.expire(row.event_time_ms)
    np.testing.assert_allclose(np.array(got), expected, rtol=1e-9, atol=1e-9)


def test_expire_never_changes_later_features_and_bounds_the_state() -> None:
    spec = full_spec(
        card_windows_hours=[1.0, 24.0],
        terminal_windows_days=[1.0],
        label_delay_days=1.0,
        relative_amount_window_hours=24.0,
    )
    txs, labels = random_stream(3, rows=1200)
    plain = OnlineFeatures(spec)
    plain.observe_labels(labels)
    expected = plain.transform(txs, dtype=np.float64)
    trimmed = OnlineFeatures(spec)
    trimmed.observe_labels(labels)
    got = []
    for start in range(0, len(txs), 50):
        chunk = txs[start : start + 50]
        trimmed.expire(chunk[0].event_time_ms)
        got.append(trimmed.transform(chunk, dtype=np.float64))
    np.testing.assert_array_equal(np.vstack(got), expected)
    # After a quiet spell longer than every window, nothing is left.
    trimmed.expire(txs[-1].event_time_ms + 3 * DAY_MS)
    assert trimmed.state_counts()["cards"] == 0
    assert trimmed.state_counts()["terminals"] == 0
    assert trimmed.state_counts()["terminal_labels"] == 0
    assert plain.state_counts()["cards"] == 12


def test_an_expiry_sweep_in_slices_between_batches_equals_the_whole_sweep(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import fraudkit.features.online as online_module

    monkeypatch.setattr(online_module, "SWEEP_SLICE", 1)  # one card or terminal per slice
    spec = full_spec(
        card_windows_hours=[1.0, 24.0],
        terminal_windows_days=[1.0],
        label_delay_days=1.0,
        relative_amount_window_hours=24.0,
    )
    txs, labels = random_stream(5, rows=1500)
    whole, sliced = OnlineFeatures(spec), OnlineFeatures(spec)
    whole.observe_labels(labels)
    sliced.observe_labels(labels)
    expected, got, slices = [], [], 0
    for start in range(0, len(txs), 25):
        chunk = txs[start : start + 25]
        if start % 500 == 0:
            whole.expire(chunk[0].event_time_ms)
        expected.append(whole.transform(chunk, dtype=np.float64))
        # A budget of zero: each call does one slice; the sweep spans the batches that follow.
        slices += 1
        sliced.expire_step(chunk[0].event_time_ms, 0.0)
        got.append(sliced.transform(chunk, dtype=np.float64))
    np.testing.assert_array_equal(np.vstack(got), np.vstack(expected))
    assert slices > 0
    end = txs[-1].event_time_ms + 3 * DAY_MS
    while not sliced.expire_step(end, 0.0):  # the sweep under way ends at its own time
        pass
    steps = 1
    while not sliced.expire_step(end, 0.0):  # then one from `end`
        steps += 1
    whole.expire(end)
    assert steps > 2  # it really went in slices
    assert sliced.state_counts() == whole.state_counts()
    assert whole.state_counts()["cards"] == whole.state_counts()["terminal_labels"] == 0


def test_expire_step_finishes_a_sweep_within_its_budget_and_starts_the_next_one_afresh() -> None:
    spec = full_spec(card_windows_hours=[1.0], relative_amount_window_hours=1.0)
    rows = [tx(n, T0 + n * MINUTE_MS, card=f"c{n % 300}") for n in range(900)]
    online, reference = OnlineFeatures(spec), OnlineFeatures(spec)
    online.transform(rows)
    reference.transform(rows)
    now = T0 + 900 * MINUTE_MS
    reference.expire(now)
    assert online.expire_step(now, 10.0) is True  # a generous budget: the whole sweep in one call
    assert online.state_counts() == reference.state_counts()
    assert 0 < online.state_counts()["cards"] < 300  # the cards older than the history went
    assert online.expire_step(now + 2 * DAY_MS, 10.0) is True  # a new sweep, from the new time
    assert online.state_counts()["cards"] == 0


def test_card_lists_stay_bounded_without_expire_calls() -> None:
    spec = full_spec(card_windows_hours=[1.0], relative_amount_window_hours=1.0)
    online = OnlineFeatures(spec)
    online.transform([tx(n, T0 + n * MINUTE_MS) for n in range(5000)])
    card = online._cards["c1"]
    # One hour of minutes is 60 rows; compaction lets at most as many dead rows wait.
    assert len(card.times) <= 2 * 60 + 32
    assert online.memory_bytes() < 50_000


def test_labels_older_than_every_window_after_expire_are_ignored() -> None:
    spec = full_spec(label_delay_days=1.0, terminal_windows_days=[1.0])
    online = OnlineFeatures(spec)
    online.expire(T0 + 10 * DAY_MS)
    online.observe_label(label(1, T0 + 7 * DAY_MS, 1))  # older than now - delay - 1 d
    online.observe_label(label(2, T0 + 9 * DAY_MS, 1))
    assert online.state_counts() == {"cards": 0, "terminals": 1, "terminal_labels": 1, "labels_ignored": 1}


def test_max_cards_evicts_the_least_recent_cards() -> None:
    online = OnlineFeatures(full_spec(), max_cards=2)
    online.transform([tx(1, T0, card="a"), tx(2, T0 + 1, card="b"), tx(3, T0 + 2, card="c")])
    online.expire(T0 + 3)
    assert set(online._cards) == {"b", "c"}


# --- pandas ------------------------------------------------------------------------------------


def test_pandas_features_follow_event_order_and_align_with_the_frame_rows() -> None:
    spec = FeatureSpec.from_config(FeaturesConfig(label_delay_days=1.0), Mapping(passthrough=["V1"]))
    txs, labels = random_stream(4, rows=300)
    frame = pd.DataFrame(
        {
            "transaction_id": [t.transaction_id for t in txs],
            "event_time_ms": [t.event_time_ms for t in txs],
            "card_id": [t.card_id for t in txs],
            "customer_id": None,
            "terminal_id": [t.terminal_id for t in txs],
            "amount": [t.amount for t in txs],
            "currency": "EUR",
            "merchant_category": None,
            "country": [t.country for t in txs],
            "lat": [np.nan if t.lat is None else t.lat for t in txs],
            "lon": [np.nan if t.lon is None else t.lon for t in txs],
            "label": [lab.label for lab in labels],
            "fraud_scenario": "",
            "V1": [t.extra["V1"] for t in txs],
        }
    )
    expected = reference(spec, txs, labels)
    shuffled = frame.sample(frac=1.0, random_state=0)
    got = pandas_features(shuffled, spec)
    np.testing.assert_allclose(got, expected[shuffled.index.to_numpy()], rtol=1e-9, atol=1e-9)
    # Round trip through the frame: NaN locations come back as None, pass-through goes to extra.
    rebuilt = frame_to_transactions(frame, ["V1"])
    assert rebuilt == [msgspec.structs.replace(t, currency="EUR") for t in txs]
    assert any(t.lat is None for t in rebuilt) and any(t.terminal_id is None for t in rebuilt)
    assert frame_to_labels(frame) == labels
