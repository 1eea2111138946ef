"""`fraudkit split`: a dataset cut by event time into a history part (training) and a stream part
(replay), on Spark, written as Parquet in the `fraudkit` layout whatever the input mapping was."""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fraudkit.config import FraudkitConfig, SplitConfig
from fraudkit.data.datasets import DatasetMapping, check_columns, load_mapping, load_spark
from fraudkit.errors import ConfigError, DataError
from fraudkit.schema import FILE_COLUMNS
from fraudkit.timefmt import iso_ms, utc_text

if TYPE_CHECKING:
    from collections.abc import Iterator

    from pyspark.sql import DataFrame as SparkDataFrame
    from pyspark.sql import SparkSession


@dataclass
class PartSummary:
    """Rows, frauds and time range of one output part."""

    name: str
    path: Path
    rows: int
    frauds: int
    start_ms: int | None
    end_ms: int | None

    @property
    def fraud_rate(self) -> float:
        return self.frauds / self.rows if self.rows else 0.0


@dataclass
class SplitReport:
    """What `split_dataset` read and wrote."""

    input_path: Path
    dataset: str
    boundary_ms: int
    parts: list[PartSummary] = field(default_factory=list)
    passthrough: list[str] = field(default_factory=list)

    @property
    def rows(self) -> int:
        return sum(part.rows for part in self.parts)

    @property
    def history(self) -> PartSummary:
        return self.parts[0]

    @property
    def stream(self) -> PartSummary:
        return self.parts[1]


def parse_timestamp_ms(value: str, what: str = "--at") -> int:
    """Epoch ms of an ISO date or date-time (naive values are UTC)."""
    try:
        return iso_ms(str(value))
    except ValueError:
        raise ConfigError(f"{what}: not an ISO date or time: {value!r} (e.g. 2026-03-01T00:00:00)") from None


def _same_or_inside(a: Path, b: Path) -> bool:
    a, b = a.resolve(), b.resolve()
    return a == b or b in a.parents or a in b.parents


@contextmanager
def _parquet_timestamps_as_micros(spark: SparkSession) -> Iterator[None]:
    """Write standard Parquet timestamps (not legacy INT96) and put the session back as it was."""
    key = "spark.sql.parquet.outputTimestampType"
    before = spark.conf.get(key, None)
    spark.conf.set(key, "TIMESTAMP_MICROS")
    try:
        yield
    finally:
        if before is None:
            spark.conf.unset(key)
        else:
            spark.conf.set(key, before)


def file_layout(frame: SparkDataFrame, passthrough: list[str]) -> SparkDataFrame:
    """A canonical Spark frame in the on-disk `fraudkit` layout (plus pass-through columns)."""
    from pyspark.sql import functions as F

    columns = [
        F.timestamp_millis(F.col("event_time_ms")).alias("timestamp") if name == "timestamp" else F.col(name)
        for name in FILE_COLUMNS
    ]
    return frame.select(*columns, *[F.col(f"`{name}`") for name in passthrough])


def split_dataset(
    spark: SparkSession,
    config: FraudkitConfig | SplitConfig | None,
    input_path: Path | str,
    mapping: DatasetMapping | str,
    at: str | None = None,
    train_fraction: float | None = None,
    history_out: Path | str | None = None,
    stream_out: Path | str | None = None,
) -> SplitReport:
    """Cut a dataset at `at` (or at `train_fraction` of its time range) into history and stream Parquet."""
    from pyspark.sql import functions as F

    split_config = config.split if isinstance(config, FraudkitConfig) else config
    if at is not None and train_fraction is not None:
        raise ConfigError("give either --at or --train-fraction, not both")
    if at is None and train_fraction is None and split_config is not None:
        at = split_config.at
        train_fraction = None if at else split_config.train_fraction
    if at is None and train_fraction is None:
        raise ConfigError("split: give --at TIMESTAMP or --train-fraction F")
    if train_fraction is not None and not 0 < train_fraction < 1:
        raise ConfigError(f"--train-fraction: must be between 0 and 1, got {train_fraction}")
    data_config = config.data if isinstance(config, FraudkitConfig) else None
    history_path = Path(history_out or (data_config.history_path if data_config else "data/history.parquet"))
    stream_path = Path(stream_out or (data_config.stream_path if data_config else "data/stream.parquet"))
    input_path = Path(input_path)
    if _same_or_inside(history_path, stream_path):
        raise ConfigError(f"history and stream outputs must differ: {history_path}, {stream_path}")
    for out in (history_path, stream_path):
        if _same_or_inside(out, input_path):
            raise ConfigError(f"output {out} would overwrite the input {input_path}")
    boundary_at = parse_timestamp_ms(at) if at is not None else None
    if isinstance(mapping, str):
        mapping = load_mapping(mapping)

    check_columns(input_path, mapping)
    frame = load_spark(spark, input_path, mapping).cache()
    try:
        bounds = frame.agg(
            F.count(F.lit(1)).alias("rows"),
            F.min("event_time_ms").alias("lo"),
            F.max("event_time_ms").alias("hi"),
        ).first()
        if bounds is None or not bounds["rows"]:
            raise DataError(f"{input_path}: the dataset has no rows")
        first_ms, last_ms = int(bounds["lo"]), int(bounds["hi"])
        if boundary_at is not None:
            boundary = boundary_at
        else:
            assert train_fraction is not None
            boundary = first_ms + math.ceil(train_fraction * (last_ms - first_ms))
        if boundary <= first_ms or boundary > last_ms:
            raise DataError(
                f"{input_path}: splitting at {utc_text(boundary)} leaves a part empty; the data runs "
                f"from {utc_text(first_ms)} to {utc_text(last_ms)}"
            )

        in_history = F.col("event_time_ms") < F.lit(boundary)
        stats = {
            row["history"]: row
            for row in frame.groupBy(in_history.alias("history"))
            .agg(
                F.count(F.lit(1)).alias("rows"),
                F.sum("label").alias("frauds"),
                F.min("event_time_ms").alias("lo"),
                F.max("event_time_ms").alias("hi"),
            )
            .collect()
        }
        layout = file_layout(frame, mapping.passthrough)
        with _parquet_timestamps_as_micros(spark):
            for path, condition in ((history_path, in_history), (stream_path, ~in_history)):
                try:
                    (
                        layout.filter(condition)
                        .orderBy("timestamp", "transaction_id")
                        .write.mode("overwrite")
                        .parquet(str(path))
                    )
                except Exception as exc:  # a Java-side write failure: disk, permissions, path
                    raise DataError(f"cannot write {path}: {str(exc).strip().splitlines()[0]}") from None
    finally:
        frame.unpersist()

    def part(name: str, path: Path, key: bool) -> PartSummary:
        row: Any = stats.get(key)
        if row is None:
            return PartSummary(name, path, 0, 0, None, None)
        return PartSummary(
            name, path, int(row["rows"]), int(row["frauds"] or 0), int(row["lo"]), int(row["hi"])
        )

    return SplitReport(
        input_path=input_path,
        dataset=mapping.name,
        boundary_ms=boundary,
        parts=[part("history", history_path, True), part("stream", stream_path, False)],
        passthrough=list(mapping.passthrough),
    )


def run_split(
    config: FraudkitConfig,
    at: str | None,
    train_fraction: float | None,
    progress: Callable[[str], None] | None = None,
) -> SplitReport:
    """`fraudkit split`: check the input's columns, start Spark from config, split.

    `progress` hears what is happening, one line per step (Spark's own output goes to its log file).
    """
    from fraudkit.data.spark import spark_log_path, spark_session

    say = progress or (lambda line: None)
    mapping = load_mapping(config.data.dataset)
    # Fail on a wrong file or mapping before paying for a Spark start.
    check_columns(config.data.path, mapping)
    say(f"starting Spark ({config.spark.master}; its own log: {spark_log_path(config.spark)})")
    spark = spark_session(config.spark, app_name="fraudkit-split")
    say(f"splitting {config.data.path} by event time")
    return split_dataset(
        spark,
        config,
        config.data.path,
        mapping,
        at=at,
        train_fraction=train_fraction,
        history_out=config.data.history_path,
        stream_out=config.data.stream_path,
    )
