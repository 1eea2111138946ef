"""The Spark and online feature implementations agree on every feature of every row.

Tolerance: the online side works in float64 like Spark; the two differ only in the last bits of
library functions (Java's vs C's sin, log1p, ...), so float64 outputs must agree to 1e-9 (relative
and absolute). The float32 rows the detector scores must match Spark's doubles rounded to float32
to 1e-6 relative / 1e-6 absolute (float32 itself carries ~6e-8 relative).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import pytest

from fraudkit.config import FeaturesConfig
from fraudkit.features import (
    DAY_MS,
    FeatureSpec,
    OnlineFeatures,
    frame_to_labels,
    frame_to_transactions,
    pandas_features,
    spark_features,
)

pytestmark = [pytest.mark.spark, pytest.mark.slow]

START_MS = 1_735_689_600_000  # 2025-01-01 00:00 UTC


@dataclass
class Mapping:
    has_card: bool = True
    has_terminal: bool = True
    has_location: bool = True
    has_country: bool = True
    has_merchant: bool = True
    passthrough: list[str] = field(default_factory=list)


def boundary_offsets(spec: FeatureSpec) -> list[int]:
    """Offsets that put a later row exactly on each window edge of an earlier row of the same card."""
    delay = spec.label_delay_ms
    return [
        *spec.card_windows_ms,
        delay,
        *[delay + window for window in spec.terminal_windows_ms],
    ]


def canonical_frame(rows: int = 3000, seed: int = 11, offsets: list[int] = ()) -> pd.DataFrame:  # type: ignore[assignment]
    """A small world: 40 cards (some appear late), 12 terminals, 60 days, ties, gaps, trips abroad.

    Every offset also gets 40 pairs of rows of one card and terminal exactly that far apart, so
    window edges (inclusive or not) are tested, not left to chance.
    """
    rng = np.random.default_rng(seed)
    rows -= 40 * len(offsets)
    cards = rng.integers(0, 40, rows)
    times = START_MS + rng.integers(0, 60 * DAY_MS, rows)
    # Late cards have no history; a fifth of the rows copy another row's timestamp (ties, same card too).
    late = cards >= 35
    times[late] = START_MS + 45 * DAY_MS + rng.integers(0, 15 * DAY_MS, late.sum())
    tied = rng.random(rows) < 0.2
    times[tied] = times[rng.integers(0, rows, tied.sum())]
    same_card_ties = rng.choice(rows, 60, replace=False)
    cards[same_card_ties[:30]] = cards[same_card_ties[30:]]
    times[same_card_ties[:30]] = times[same_card_ties[30:]]
    # A card uses two terminals of twelve; pairs at window edges share card and terminal.
    terminal_index = (cards * 5 + rng.integers(0, 2, rows)) % 12
    for offset in offsets:
        base = rng.choice(rows, 40, replace=False)
        cards = np.concatenate([cards, cards[base]])
        terminal_index = np.concatenate([terminal_index, terminal_index[base]])
        times = np.concatenate([times, times[base] + offset])
        rows += 40
    home_lat = rng.uniform(35, 60, 40)
    home_lon = rng.uniform(-10, 30, 40)
    abroad = rng.random(rows) < 0.05
    lat = home_lat[cards] + rng.normal(0, 0.3, rows) + abroad * 25.0
    lon = home_lon[cards] + rng.normal(0, 0.3, rows) - abroad * 60.0
    no_location = rng.random(rows) < 0.08
    lat[no_location] = np.nan
    lon[no_location] = np.nan
    country = np.where(abroad, rng.choice(["US", "BR"], rows), np.array(["FR", "DE", "ES"])[cards % 3])
    country = country.astype(object)
    country[rng.random(rows) < 0.03] = None
    terminal = np.array([f"T{t:02d}" for t in terminal_index], dtype=object)
    terminal[rng.random(rows) < 0.03] = None
    amount = np.round(rng.lognormal(3.5, 1.1, rows), 2)
    amount[rng.random(rows) < 0.02] = 0.0
    fraud = (rng.random(rows) < 0.08).astype(np.int64)
    # Ids in random order, so ties are broken by transaction_id and not by position.
    ids = [f"tx-{value:08x}" for value in rng.permutation(rows) * 7919 + 17]
    return pd.DataFrame(
        {
            "transaction_id": ids,
            "event_time_ms": times.astype(np.int64),
            "card_id": [f"card-{c}" for c in cards],
            "customer_id": [f"cust-{c}" for c in cards],
            "terminal_id": terminal,
            "amount": amount,
            "currency": "EUR",
            "merchant_category": "5411",
            "country": country,
            "lat": lat,
            "lon": lon,
            "label": fraud,
            "fraud_scenario": np.where(fraud == 1, "stolen_card", ""),
            "V1": rng.normal(0, 1, rows),
            "V2": np.where(rng.random(rows) < 0.05, np.nan, rng.normal(0, 1, rows)),
        }
    )


def to_spark(spark: Any, frame: pd.DataFrame) -> Any:
    from pyspark.sql import types as T

    schema = T.StructType(
        [
            T.StructField("transaction_id", T.StringType()),
            T.StructField("event_time_ms", T.LongType()),
            T.StructField("card_id", T.StringType()),
            T.StructField("customer_id", T.StringType()),
            T.StructField("terminal_id", T.StringType()),
            T.StructField("amount", T.DoubleType()),
            T.StructField("currency", T.StringType()),
            T.StructField("merchant_category", T.StringType()),
            T.StructField("country", T.StringType()),
            T.StructField("lat", T.DoubleType()),
            T.StructField("lon", T.DoubleType()),
            T.StructField("label", T.IntegerType()),
            T.StructField("fraud_scenario", T.StringType()),
            T.StructField("V1", T.DoubleType()),
            T.StructField("V2", T.DoubleType()),
        ]
    )
    records = frame.astype(object).where(frame.notna(), None).itertuples(index=False, name=None)
    return spark.createDataFrame(list(records), schema=schema)


def spark_matrix(spark: Any, frame: pd.DataFrame, spec: FeatureSpec) -> tuple[pd.DataFrame, np.ndarray]:
    result: pd.DataFrame = spark_features(to_spark(spark, frame), spec).toPandas()
    result = result.sort_values(["event_time_ms", "transaction_id"], kind="mergesort").reset_index(drop=True)
    return result, result[spec.names].to_numpy(dtype=np.float64)


def online_matrix(frame: pd.DataFrame, spec: FeatureSpec, dtype: Any) -> np.ndarray:
    """Feed rows in event order; each label goes in once event time reaches its event time + label_delay."""
    ordered = frame.sort_values(["event_time_ms", "transaction_id"], kind="mergesort")
    transactions = frame_to_transactions(ordered, spec.passthrough)
    labels = sorted(frame_to_labels(ordered), key=lambda label: label.event_time_ms)
    online = OnlineFeatures(spec)
    parts = []
    chunk: list[Any] = []
    released = 0
    for n, tx in enumerate(transactions):
        due = released
        while due < len(labels) and labels[due].event_time_ms + spec.label_delay_ms <= tx.event_time_ms:
            due += 1
        if due > released or n % 300 == 0:
            if chunk:
                parts.append(online.transform(chunk, dtype=dtype))
                chunk = []
            online.observe_labels(labels[released:due])
            released = due
            online.expire(tx.event_time_ms)
        chunk.append(tx)
    parts.append(online.transform(chunk, dtype=dtype))
    assert online.state_counts()["terminal_labels"] > 0 or not spec.use_terminal
    return np.vstack(parts)


def test_spark_and_online_features_agree_on_every_row(spark: Any) -> None:
    spec = FeatureSpec.from_config(FeaturesConfig(), Mapping(passthrough=["V1", "V2"]))
    assert spec.dropped == {}
    frame = canonical_frame(offsets=boundary_offsets(spec))
    result, expected = spark_matrix(spark, frame, spec)
    assert list(result.columns) == ["transaction_id", "event_time_ms", "card_id", "label", *spec.names]
    assert len(result) == len(frame)

    online64 = online_matrix(frame, spec, np.float64)
    for column, name in enumerate(spec.names):
        np.testing.assert_allclose(
            online64[:, column], expected[:, column], rtol=1e-9, atol=1e-9, err_msg=f"feature {name}"
        )
    online32 = online_matrix(frame, spec, np.float32)
    assert online32.dtype == np.float32
    np.testing.assert_allclose(online32, expected.astype(np.float32), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(
        pandas_features(frame, spec)[
            frame.sort_values(["event_time_ms", "transaction_id"], kind="mergesort").index.to_numpy()
        ],
        expected,
        rtol=1e-9,
        atol=1e-9,
    )

    # The data really exercised every path: ties, full windows, delayed terminal labels, trips.
    by_name = dict(zip(spec.names, expected.T, strict=True))
    assert result.duplicated(["card_id", "event_time_ms"]).sum() > 10
    assert by_name["card_count_720h"].max() > 40
    assert (by_name["terminal_count_30d"] > 0).mean() > 0.5
    assert 0 < by_name["terminal_fraud_rate_7d"].mean() < 0.5
    assert by_name["card_speed_kmh"].max() == 1000.0
    assert 0 < by_name["card_new_country"].mean() < 0.5
    assert by_name["card_log_seconds_since_prev"].min() == 0.0


def test_short_windows_and_delay_agree_too(spark: Any) -> None:
    features = FeaturesConfig(
        label_delay_days=0.5,
        card_windows_hours=[0.25, 6.0],
        terminal_windows_days=[0.1, 2.0],
        relative_amount_window_hours=48.0,
    )
    spec = FeatureSpec.from_config(features, Mapping(has_location=False))
    assert set(spec.dropped) == {"card_distance_km", "card_speed_kmh"}
    frame = canonical_frame(seed=12, offsets=boundary_offsets(spec))
    _, expected = spark_matrix(spark, frame, spec)
    np.testing.assert_allclose(online_matrix(frame, spec, np.float64), expected, rtol=1e-9, atol=1e-9)


def test_creditcard_like_mapping_drops_card_features_and_still_agrees(spark: Any) -> None:
    frame = canonical_frame(rows=400, seed=5)
    for column in ("card_id", "customer_id", "terminal_id", "country"):
        frame[column] = None
    frame["lat"] = np.nan
    frame["lon"] = np.nan
    mapping = Mapping(
        has_card=False, has_terminal=False, has_location=False, has_country=False, passthrough=["V1", "V2"]
    )
    spec = FeatureSpec.from_config(FeaturesConfig(), mapping)
    assert spec.names == ["amount", "log_amount", "hour_sin", "hour_cos", "is_weekend", "V1", "V2"]
    assert spec.dropped["card_mean_amount_24h"] == "needs card_id, which the dataset lacks"
    assert spec.dropped["terminal_count_7d"] == "needs terminal_id, which the dataset lacks"
    result, expected = spark_matrix(spark, frame, spec)
    assert list(result.columns)[4:] == spec.names
    np.testing.assert_allclose(online_matrix(frame, spec, np.float64), expected, rtol=1e-9, atol=1e-9)
