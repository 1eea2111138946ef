"""The Spark implementation of the feature specification: the same definitions as window functions."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from fraudkit.errors import ModelError
from fraudkit.features.spec import (
    ANGLE_PER_MS,
    DAY_MS,
    EARTH_RADIUS_KM,
    HALF_RADIANS_PER_DEGREE,
    HOUR_MS,
    MAX_AMOUNT_RATIO,
    MAX_SPEED_KMH,
    MIN_MEAN_FOR_RATIO,
    MIN_TRAVEL_MS,
    RADIANS_PER_DEGREE,
    FeatureSpec,
    days_label,
    hours_label,
)

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame


# ---------------------------------------------------------------------------------------------
# Spark: the same definitions as window functions over the canonical frame


def _haversine_column(lat1: Column, lon1: Column, lat2: Column, lon2: Column) -> Column:
    from pyspark.sql import functions as F

    half_dlat = F.sin((lat2 - lat1) * F.lit(HALF_RADIANS_PER_DEGREE))
    half_dlon = F.sin((lon2 - lon1) * F.lit(HALF_RADIANS_PER_DEGREE))
    a = half_dlat * half_dlat + F.cos(lat1 * F.lit(RADIANS_PER_DEGREE)) * F.cos(
        lat2 * F.lit(RADIANS_PER_DEGREE)
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
            quoted = F.col(f"`{name}`")  # pass-through names may hold dots
            staged = staged.withColumn(name, F.nanvl(quoted.cast("double"), null_double))
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
            label = hours_label(window)
            columns[f"card_count_{label}"] = F.col(f"_n_{window}")
            columns[f"card_mean_amount_{label}"] = window_sum(window) / F.col(f"_n_{window}")
        relative = spec.relative_window_ms
        previous_count = F.col(f"_n_{relative}") - 1
        # Spark runs in ANSI mode: a zero divisor raises, so it becomes null (and the row falls to 1.0).
        previous_mean = (window_sum(relative) - amount) / F.when(previous_count > 0, previous_count)
        columns[f"card_amount_ratio_{hours_label(relative)}"] = F.when(
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
        for k, window in enumerate(spec.terminal_windows_ms):
            # [t - delay - W, t - delay) on integer milliseconds.
            frame = by_terminal.rangeBetween(-(delay + window), -(delay + 1))
            label = days_label(window)
            count = F.count("label").over(frame)
            frauds = F.coalesce(F.sum(F.col("label").cast("double")).over(frame), F.lit(0.0))
            known = F.col("terminal_id").isNotNull()
            staged = staged.withColumn(f"_tn_{k}", F.when(known, count).otherwise(F.lit(0)))
            staged = staged.withColumn(f"_tf_{k}", F.when(known, frauds).otherwise(F.lit(0.0)))
            columns[f"terminal_count_{label}"] = F.col(f"_tn_{k}")
            positive_count = F.when(F.col(f"_tn_{k}") > 0, F.col(f"_tn_{k}"))
            columns[f"terminal_fraud_rate_{label}"] = F.coalesce(
                F.col(f"_tf_{k}") / positive_count, F.lit(0.0)
            )

    angle = F.pmod(t, F.lit(DAY_MS)) * F.lit(ANGLE_PER_MS)
    columns["hour_sin"] = F.sin(angle)
    columns["hour_cos"] = F.cos(angle)
    weekday = F.pmod(F.floor(t / F.lit(DAY_MS)) + 3, F.lit(7))
    columns["is_weekend"] = F.when(weekday >= 5, F.lit(1.0)).otherwise(F.lit(0.0))
    for name in spec.passthrough:
        columns[name] = F.coalesce(F.col(f"`{name}`"), F.lit(0.0))

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
