"""Parquet written by pandas with nanosecond timestamps (TIMESTAMP(NANOS)) reads on Spark."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from fraudkit.cli import app
from fraudkit.data.datasets import load_mapping, load_spark

pytestmark = pytest.mark.spark
runner = CliRunner()


def nanosecond_handbook(path: Path, rows: int = 40, tz: str | None = None) -> tuple[Path, list[int]]:
    rng = np.random.default_rng(3)
    seconds = np.sort(rng.integers(0, 5 * 86_400, rows))
    stamps = (pd.Timestamp("2018-04-01") + pd.to_timedelta(seconds, unit="s")).astype("datetime64[ns]")
    if tz is not None:
        stamps = stamps.tz_localize(tz)
    frame = pd.DataFrame(
        {
            "TRANSACTION_ID": np.arange(rows),
            "TX_DATETIME": stamps + pd.to_timedelta(rng.integers(0, 999_999_999, rows), unit="ns"),
            "CUSTOMER_ID": rng.integers(0, 20, rows),
            "TERMINAL_ID": rng.integers(0, 30, rows),
            "TX_AMOUNT": np.round(rng.uniform(1, 200, rows), 2),
            "TX_FRAUD": (rng.random(rows) < 0.2).astype(int),
        }
    )
    frame.to_parquet(path, index=False)  # pandas' defaults, as a user would save it
    column = pq.read_schema(path).field("TX_DATETIME").type
    assert column.unit == "ns", column  # the file really holds TIMESTAMP(NANOS)
    expected = (frame["TX_DATETIME"].astype("int64") // 1_000_000).tolist()
    return path, expected


@pytest.mark.parametrize("tz", [None, "UTC"])
def test_load_spark_reads_nanosecond_timestamps(spark: Any, tmp_path: Path, tz: str | None) -> None:
    path, expected_ms = nanosecond_handbook(tmp_path / "handbook.parquet", tz=tz)
    loaded = load_spark(spark, path, load_mapping("handbook")).toPandas()
    ordered = loaded.sort_values("transaction_id", key=lambda ids: ids.astype(int), ignore_index=True)
    assert ordered["event_time_ms"].tolist() == expected_ms
    assert len(ordered) == 40


def test_split_accepts_a_pandas_written_file(spark: Any, tmp_path: Path) -> None:
    path, expected_ms = nanosecond_handbook(tmp_path / "handbook.parquet")
    result = runner.invoke(
        app,
        [
            "split",
            "--dataset",
            "handbook",
            "--input",
            str(path),
            "--train-fraction",
            "0.5",
            "--history-out",
            str(tmp_path / "history.parquet"),
            "--stream-out",
            str(tmp_path / "stream.parquet"),
            "--set",
            "spark.shuffle_partitions=2",
        ],
    )
    assert result.exit_code == 0, result.output
    history = pd.read_parquet(tmp_path / "history.parquet")
    stream = pd.read_parquet(tmp_path / "stream.parquet")
    assert len(history) + len(stream) == len(expected_ms)
