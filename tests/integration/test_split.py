"""`load_spark` and `split` on a real local Spark: same canonical data as pandas, no row lost or doubled."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from fraudkit.cli import app
from fraudkit.config import SimulateConfig, SplitConfig
from fraudkit.data.datasets import load_frame, load_mapping, load_spark
from fraudkit.data.simulate import parse_start, simulate_dataset, write_dataset
from fraudkit.data.split import split_dataset
from fraudkit.errors import DataError

pytestmark = pytest.mark.spark
runner = CliRunner()
V_COLUMNS = [f"V{i}" for i in range(1, 29)]


def creditcard_frame(rows: int = 50, seed: int = 0) -> pd.DataFrame:
    """A small table in the Kaggle creditcard.csv layout: Time, V1..V28, Amount, Class."""
    rng = np.random.default_rng(seed)
    data: dict[str, Any] = {"Time": np.sort(rng.integers(0, 172_792, rows)).astype(float)}
    for name in V_COLUMNS:
        data[name] = rng.normal(0, 1.5, rows)
    data["Amount"] = np.round(rng.gamma(1.0, 80.0, rows), 2)
    data["Class"] = (rng.random(rows) < 0.1).astype(int)
    return pd.DataFrame(data)


def handbook_frame(rows: int = 40, seed: int = 1) -> pd.DataFrame:
    """A small table in the Fraud Detection Handbook layout."""
    rng = np.random.default_rng(seed)
    seconds = np.sort(rng.integers(0, 5 * 86_400, rows))
    return pd.DataFrame(
        {
            "TRANSACTION_ID": np.arange(rows),
            "TX_DATETIME": pd.Timestamp("2018-04-01") + pd.to_timedelta(seconds, unit="s"),
            "CUSTOMER_ID": rng.integers(0, 20, rows),
            "TERMINAL_ID": rng.integers(0, 30, rows),
            "TX_AMOUNT": np.round(rng.uniform(1, 200, rows), 2),
            "TX_FRAUD": (rng.random(rows) < 0.2).astype(int),
        }
    )


def write(frame: pd.DataFrame, path: Path) -> Path:
    if path.suffix == ".csv":
        frame.to_csv(path, index=False)
    else:
        frame.to_parquet(path, index=False)
    return path


BUSY = {"card_testing_bursts_per_day": 10.0, "impossible_travel_per_day": 10.0, "large_amount": 0.01}


@pytest.fixture(scope="module")
def simulated(tmp_path_factory: pytest.TempPathFactory) -> tuple[pd.DataFrame, Path]:
    frame = simulate_dataset(SimulateConfig(customers=200, terminals=400, days=10, seed=11, scenarios=BUSY))
    path = write_dataset(frame, tmp_path_factory.mktemp("sim") / "tx.parquet", "parquet")
    return frame, path


def _ordered(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.sort_values(["event_time_ms", "transaction_id"], ignore_index=True)


def test_load_spark_types_and_values_match_pandas(spark: Any, simulated: tuple[pd.DataFrame, Path]) -> None:
    frame, path = simulated
    loaded = load_spark(spark, path, load_mapping("fraudkit"))
    types = dict(loaded.dtypes)
    assert list(loaded.columns) == list(frame.columns)
    assert (types["event_time_ms"], types["amount"], types["label"], types["card_id"]) == (
        "bigint",
        "double",
        "int",
        "string",
    )
    from_spark = _ordered(loaded.toPandas())
    for column in frame.columns:
        assert from_spark[column].tolist() == frame[column].tolist(), column


@pytest.mark.parametrize("layout", ["creditcard.csv", "handbook.csv", "handbook.parquet"])
def test_load_spark_reads_every_shipped_layout_like_pandas(spark: Any, tmp_path: Path, layout: str) -> None:
    name = layout.split(".")[0]
    source = creditcard_frame() if name == "creditcard" else handbook_frame()
    path = write(source, tmp_path / layout)
    mapping = load_mapping(name)
    expected = load_frame(path, mapping)
    loaded = load_spark(spark, path, mapping)
    assert list(loaded.columns) == list(expected.columns)
    from_spark = _ordered(loaded.toPandas())
    for column in expected.columns:
        left, right = from_spark[column], expected[column]
        if left.isna().all():
            assert right.isna().all(), column
        else:
            assert left.tolist() == right.tolist(), column


@pytest.mark.parametrize(
    ("column", "value", "problem"),
    [
        ("TX_DATETIME", "yesterday", "unparseable timestamp: 'yesterday'"),
        ("TX_AMOUNT", "-3.5", "negative amount: '-3.5'"),
        ("TX_FRAUD", "2", "label must be 0 or 1: '2'"),
    ],
)
def test_load_spark_reports_the_first_bad_row_like_pandas(
    spark: Any, tmp_path: Path, column: str, value: str, problem: str
) -> None:
    source = handbook_frame().astype({column: object})
    source.loc[[6, 20], column] = value
    path = write(source, tmp_path / "bad.csv")
    mapping = load_mapping("handbook")
    with pytest.raises(DataError) as from_pandas:
        load_frame(path, mapping)
    with pytest.raises(DataError) as from_spark:
        load_spark(spark, path, mapping)
    assert (
        str(from_spark.value)
        == str(from_pandas.value)
        == f"{path}: column {column!r}, row 7 (line 8): {problem}"
    )


def test_split_by_fraction_conserves_every_row(
    spark: Any, tmp_path: Path, simulated: tuple[pd.DataFrame, Path]
) -> None:
    frame, path = simulated
    report = split_dataset(
        spark,
        SplitConfig(),
        path,
        "fraudkit",
        train_fraction=0.7,
        history_out=tmp_path / "history.parquet",
        stream_out=tmp_path / "stream.parquet",
    )
    mapping = load_mapping("fraudkit")
    history = load_frame(tmp_path / "history.parquet", mapping)
    stream = load_frame(tmp_path / "stream.parquet", mapping)
    ids = pd.concat([history["transaction_id"], stream["transaction_id"]])
    assert len(history) + len(stream) == len(frame) == report.rows
    assert ids.is_unique and set(ids) == set(frame["transaction_id"])
    first, last = frame["event_time_ms"].min(), frame["event_time_ms"].max()
    assert report.boundary_ms == first + -(-7 * (last - first) // 10)
    assert history["event_time_ms"].max() < report.boundary_ms <= stream["event_time_ms"].min()
    assert (report.history.rows, report.stream.rows) == (len(history), len(stream))
    assert (report.history.frauds, report.stream.frauds) == (history["label"].sum(), stream["label"].sum())
    assert (report.history.start_ms, report.stream.end_ms) == (first, last)
    # The parts are the original rows, unchanged, in event order.
    pd.testing.assert_frame_equal(pd.concat([history, stream], ignore_index=True), frame)


def test_cli_split_at_a_timestamp_of_a_handbook_csv(tmp_path: Path) -> None:
    source = handbook_frame(rows=60)
    path = write(source, tmp_path / "handbook.csv")
    history_out, stream_out = tmp_path / "h.parquet", tmp_path / "s.parquet"
    result = runner.invoke(
        app,
        [
            "split",
            "--dataset",
            "handbook",
            "--input",
            str(path),
            "--at",
            "2018-04-03",
            "--history-out",
            str(history_out),
            "--stream-out",
            str(stream_out),
            "--set",
            "spark.shuffle_partitions=2",
        ],
    )
    assert result.exit_code == 0, result.output + result.stderr
    mapping = load_mapping("fraudkit")
    history, stream = load_frame(history_out, mapping), load_frame(stream_out, mapping)
    boundary = parse_start("2018-04-03")
    expected_history = (source["TX_DATETIME"] < pd.Timestamp("2018-04-03")).sum()
    assert (len(history), len(stream)) == (expected_history, len(source) - expected_history)
    assert history["event_time_ms"].max() < boundary <= stream["event_time_ms"].min()
    assert sorted(history["transaction_id"].tolist() + stream["transaction_id"].tolist(), key=int) == [
        str(i) for i in range(len(source))
    ]
    assert "split " in result.output and "2018-04-03 00:00:00" in result.output
    history_row = next(line for line in result.output.splitlines() if "│ history" in line)
    assert f"│ {expected_history:>4} │" in history_row
    assert f"stream: {stream_out}" in result.output


def test_split_of_creditcard_keeps_the_passthrough_columns(spark: Any, tmp_path: Path) -> None:
    source = creditcard_frame(rows=80)
    path = write(source, tmp_path / "creditcard.csv")
    report = split_dataset(
        spark,
        None,
        path,
        load_mapping("creditcard"),
        train_fraction=0.5,
        history_out=tmp_path / "h.parquet",
        stream_out=tmp_path / "s.parquet",
    )
    assert report.passthrough == V_COLUMNS and report.rows == len(source)
    extended = tmp_path / "creditcard-split.yaml"
    extended.write_text(f"base: fraudkit\npassthrough: [{', '.join(V_COLUMNS)}]\n")
    parts = [load_frame(tmp_path / part, load_mapping(str(extended))) for part in ("h.parquet", "s.parquet")]
    combined = pd.concat(parts, ignore_index=True)
    original = load_frame(path, load_mapping("creditcard"))
    assert combined["transaction_id"].tolist() == original["transaction_id"].tolist()
    for column in ("event_time_ms", "amount", "label", *V_COLUMNS):
        assert combined[column].tolist() == original[column].tolist(), column
    # The plain `fraudkit` mapping reads the same parts, without the extra features.
    plain = load_frame(tmp_path / "h.parquet", load_mapping("fraudkit"))
    assert len(plain) == report.history.rows and "V1" not in plain.columns


def test_split_outside_the_data_leaves_a_part_empty(
    spark: Any, tmp_path: Path, simulated: tuple[pd.DataFrame, Path]
) -> None:
    _, path = simulated
    with pytest.raises(
        DataError,
        match=r"splitting at 2030-01-01 00:00:00 leaves a part empty; the data runs from 2026-01-01",
    ):
        split_dataset(
            spark,
            None,
            path,
            "fraudkit",
            at="2030-01-01",
            history_out=tmp_path / "h.parquet",
            stream_out=tmp_path / "s.parquet",
        )
