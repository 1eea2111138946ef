"""Dataset mappings and `load_frame`: every shipped layout, and one clear line for every bad input."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from fraudkit.cli import app
from fraudkit.config import SimulateConfig
from fraudkit.data.datasets import (
    CANONICAL_COLUMNS,
    PACKAGE_MAPPINGS,
    DatasetMapping,
    load_frame,
    load_mapping,
    shipped_mappings,
)
from fraudkit.data.simulate import simulate_dataset, write_dataset
from fraudkit.errors import ConfigError, DataError

runner = CliRunner()
V_COLUMNS = [f"V{i}" for i in range(1, 29)]
CREDITCARD_ORIGIN_MS = 1_377_993_600_000  # 2013-09-01T00:00:00Z
HANDBOOK_START = pd.Timestamp("2018-04-01")


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
    """A small table in the Fraud Detection Handbook layout (with its extra columns)."""
    rng = np.random.default_rng(seed)
    seconds = np.sort(rng.integers(0, 5 * 86_400, rows))
    return pd.DataFrame(
        {
            "TRANSACTION_ID": np.arange(rows),
            "TX_DATETIME": HANDBOOK_START + pd.to_timedelta(seconds, unit="s"),
            "CUSTOMER_ID": rng.integers(0, 20, rows),
            "TERMINAL_ID": rng.integers(0, 30, rows),
            "TX_AMOUNT": np.round(rng.uniform(1, 200, rows), 2),
            "TX_TIME_SECONDS": seconds,
            "TX_TIME_DAYS": seconds // 86_400,
            "TX_FRAUD": (rng.random(rows) < 0.2).astype(int),
            "TX_FRAUD_SCENARIO": 0,
        }
    )


def write(frame: pd.DataFrame, path: Path) -> Path:
    if path.suffix == ".csv":
        frame.to_csv(path, index=False)
    else:
        frame.to_parquet(path, index=False)
    return path


# -- mappings -----------------------------------------------------------------------------------


def test_shipped_mappings_and_what_they_have() -> None:
    assert shipped_mappings() == ["creditcard", "fraudkit", "handbook"]
    fraudkit = load_mapping("fraudkit")
    assert (fraudkit.has_card, fraudkit.has_terminal, fraudkit.has_location, fraudkit.has_country) == (
        True,
        True,
        True,
        True,
    )
    assert fraudkit.has_merchant and fraudkit.passthrough == []
    creditcard = load_mapping("creditcard")
    assert not (
        creditcard.has_card or creditcard.has_terminal or creditcard.has_location or creditcard.has_country
    )
    assert creditcard.passthrough == V_COLUMNS
    assert (creditcard.timestamp_unit, creditcard.timestamp_origin_ms) == ("s", CREDITCARD_ORIGIN_MS)
    handbook = load_mapping("handbook")
    assert handbook.has_card and handbook.has_terminal
    assert not (handbook.has_location or handbook.has_country or handbook.has_merchant)
    assert handbook.column("card_id") == handbook.column("customer_id") == "CUSTOMER_ID"


def test_mappings_are_package_data_and_the_repository_folder_links_to_them() -> None:
    assert sorted(p.name for p in PACKAGE_MAPPINGS.glob("*.yaml")) == [
        "creditcard.yaml",
        "fraudkit.yaml",
        "handbook.yaml",
    ]
    repository_folder = Path(__file__).parents[3] / "configs" / "datasets"
    assert repository_folder.resolve() == PACKAGE_MAPPINGS.resolve()


def test_a_project_mapping_folder_is_searched_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "configs" / "datasets"
    folder.mkdir(parents=True)
    (folder / "mine.yaml").write_text("columns: {timestamp: t, amount: a, label: y}\n")
    monkeypatch.chdir(tmp_path)
    mine = load_mapping("mine")
    assert mine.name == "mine" and mine.columns == {"timestamp": "t", "amount": "a", "label": "y"}
    assert load_mapping("handbook").name == "handbook"  # shipped ones still found from anywhere


def test_a_mapping_file_can_extend_another(tmp_path: Path) -> None:
    path = tmp_path / "split-creditcard.yaml"
    path.write_text("base: fraudkit\npassthrough: [V1, V2]\n")
    mapping = load_mapping(str(path))
    assert mapping.columns == load_mapping("fraudkit").columns
    assert mapping.passthrough == ["V1", "V2"] and mapping.name == "split-creditcard"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("columns: {timestamp: t, label: y}\n", "columns: amount must be mapped to a column"),
        ("columns: {timestamp: t, amount: a, label: y, colour: c}\n", "columns.colour: unknown field"),
        (
            "columns: {timestamp: t, amount: a, label: y}\ntimestamp: {unit: hours}\n",
            "timestamp.unit: must be one of",
        ),
        (
            "columns: {timestamp: t, amount: a, label: y}\ntimestamp: {unit: s, origin: soon}\n",
            "timestamp.origin",
        ),
        ("columns: {timestamp: t, amount: a, label: y}\nfilter: x\n", "unknown key(s) filter"),
        ("columns: {timestamp: t, amount: a, label: y}\npassthrough: [a]\n", "passthrough: a already used"),
    ],
)
def test_bad_mapping_files_are_config_errors(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_mapping(str(path))
    assert str(caught.value).startswith(f"{path}: ")
    assert message in str(caught.value)


def test_unknown_mapping_names_the_shipped_ones() -> None:
    with pytest.raises(
        ConfigError, match=r"unknown dataset 'kaggle': shipped mappings are creditcard, fraudkit, handbook"
    ):
        load_mapping("kaggle")
    with pytest.raises(ConfigError, match=r"dataset mapping file not found: nowhere/x.yaml"):
        load_mapping("nowhere/x.yaml")


# -- loading each layout ------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
def test_fraudkit_files_load_back_to_the_simulated_frame(tmp_path: Path, suffix: str) -> None:
    frame = simulate_dataset(SimulateConfig(customers=50, terminals=100, days=3, seed=2))
    path = write_dataset(frame, tmp_path / f"tx{suffix}", suffix[1:])  # type: ignore[arg-type]
    pd.testing.assert_frame_equal(load_frame(path, load_mapping("fraudkit")), frame)


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_creditcard_layout(tmp_path: Path, suffix: str) -> None:
    source = creditcard_frame()
    frame = load_frame(write(source, tmp_path / f"creditcard{suffix}"), load_mapping("creditcard"))
    assert list(frame.columns) == [*CANONICAL_COLUMNS, *V_COLUMNS]
    assert len(frame) == len(source)
    assert frame["transaction_id"].tolist()[:2] == ["row-000000001", "row-000000002"]
    expected_ms = (CREDITCARD_ORIGIN_MS + source["Time"] * 1000).astype(np.int64)
    assert frame["event_time_ms"].tolist() == expected_ms.tolist()
    np.testing.assert_allclose(frame["amount"], source["Amount"])
    assert frame["label"].tolist() == source["Class"].tolist()
    for name in ("card_id", "customer_id", "terminal_id", "country", "fraud_scenario"):
        assert frame[name].isna().all(), name
    assert frame[["lat", "lon"]].isna().all().all()
    for name in V_COLUMNS:
        assert frame[name].dtype == np.float64
        np.testing.assert_allclose(frame[name], source[name], rtol=1e-12)


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_handbook_layout(tmp_path: Path, suffix: str) -> None:
    source = handbook_frame()
    frame = load_frame(write(source, tmp_path / f"handbook{suffix}"), load_mapping("handbook"))
    assert list(frame.columns) == list(CANONICAL_COLUMNS)
    assert frame["transaction_id"].tolist() == [str(i) for i in source["TRANSACTION_ID"]]
    expected_ms = (source["TX_DATETIME"] - pd.Timestamp("1970-01-01")) // pd.Timedelta(1, "ms")
    assert frame["event_time_ms"].tolist() == expected_ms.tolist()
    assert frame["card_id"].tolist() == [str(c) for c in source["CUSTOMER_ID"]]
    assert (frame["card_id"] == frame["customer_id"]).all()
    assert frame["terminal_id"].tolist() == [str(t) for t in source["TERMINAL_ID"]]
    assert frame["label"].tolist() == source["TX_FRAUD"].tolist()
    assert frame["merchant_category"].isna().all() and frame["lat"].isna().all()


def test_rows_come_back_in_event_time_order(tmp_path: Path) -> None:
    source = handbook_frame().iloc[::-1]
    frame = load_frame(write(source, tmp_path / "reversed.csv"), load_mapping("handbook"))
    assert frame["event_time_ms"].is_monotonic_increasing
    assert frame["transaction_id"].tolist() == [str(i) for i in range(len(source))]


# -- one clear line for bad input ---------------------------------------------------------------


def _with(frame: pd.DataFrame, row: int, column: str, value: Any) -> pd.DataFrame:
    frame = frame.astype({column: object})
    frame.loc[row, column] = value
    return frame


BAD_HANDBOOK = [
    pytest.param("TX_DATETIME", "yesterday", "unparseable timestamp: 'yesterday'", id="timestamp"),
    pytest.param("TX_AMOUNT", -3.5, "negative amount: '-3.5'", id="negative-amount"),
    pytest.param("TX_AMOUNT", "12,50", "not a number: '12,50'", id="text-amount"),
    pytest.param("TX_FRAUD", 2, "label must be 0 or 1: '2'", id="label"),
    pytest.param("TX_FRAUD", None, "missing value: empty", id="missing-label"),
    pytest.param("TRANSACTION_ID", 3, "duplicate transaction id: '3'", id="duplicate-id"),
]


@pytest.mark.parametrize(("column", "value", "problem"), BAD_HANDBOOK)
def test_bad_values_name_file_column_and_first_bad_row(
    tmp_path: Path, column: str, value: Any, problem: str
) -> None:
    # Row index 6 is the 7th data row, line 8 of the CSV; a later bad row is not the one reported.
    source = _with(_with(handbook_frame(), 6, column, value), 20, column, value)
    path = write(source, tmp_path / "bad.csv")
    with pytest.raises(DataError) as caught:
        load_frame(path, load_mapping("handbook"))
    assert str(caught.value) == f"{path}: column {column!r}, row 7 (line 8): {problem}"


def test_bad_values_in_parquet_name_the_row(tmp_path: Path) -> None:
    source = creditcard_frame()
    source.loc[11, "Amount"] = -1.0
    source.loc[30, "Class"] = 3
    path = write(source, tmp_path / "bad.parquet")
    with pytest.raises(DataError) as caught:
        load_frame(path, load_mapping("creditcard"))
    assert str(caught.value) == f"{path}: column 'Amount', row 12: negative amount: -1.0"


def test_the_earliest_bad_row_wins_across_columns(tmp_path: Path) -> None:
    source = _with(_with(handbook_frame(), 9, "TX_AMOUNT", "abc"), 4, "TX_FRAUD", 7)
    path = write(source, tmp_path / "two.csv")
    with pytest.raises(DataError, match=r"column 'TX_FRAUD', row 5 \(line 6\): label must be 0 or 1: '7'"):
        load_frame(path, load_mapping("handbook"))


def test_non_numeric_passthrough_is_reported(tmp_path: Path) -> None:
    source = _with(creditcard_frame(), 2, "V17", "n/a")
    path = write(source, tmp_path / "cc.csv")
    with pytest.raises(DataError, match=r"column 'V17', row 3 \(line 4\): not a number: 'n/a'"):
        load_frame(path, load_mapping("creditcard"))


def test_missing_columns_are_listed_with_their_field(tmp_path: Path) -> None:
    path = write(handbook_frame().drop(columns=["TX_AMOUNT", "TX_FRAUD"]), tmp_path / "short.csv")
    with pytest.raises(DataError) as caught:
        load_frame(path, load_mapping("handbook"))
    assert str(caught.value).startswith(
        f"{path}: missing column(s) 'TX_AMOUNT' (amount), 'TX_FRAUD' (label) required by dataset 'handbook'; "
        "the file has: TRANSACTION_ID, TX_DATETIME, CUSTOMER_ID"
    )


def test_missing_file_and_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"dataset not found: .*nothing.parquet"):
        load_frame(tmp_path / "nothing.parquet", load_mapping("fraudkit"))
    garbage = tmp_path / "garbage.parquet"
    garbage.write_bytes(b"not parquet at all")
    with pytest.raises(DataError, match=r"garbage.parquet: cannot read as Parquet"):
        load_frame(garbage, load_mapping("fraudkit"))


def test_numeric_timestamps_need_a_unit(tmp_path: Path) -> None:
    mapping = DatasetMapping(
        name="plain", columns={"timestamp": "Time", "amount": "Amount", "label": "Class"}
    )
    path = write(creditcard_frame(), tmp_path / "cc.parquet")
    with pytest.raises(
        DataError, match=r"column 'Time' holds double values, not date-times; set timestamp.unit"
    ):
        load_frame(path, mapping)


def test_cli_bad_dataset_is_one_line_exit_5_before_spark_starts(tmp_path: Path) -> None:
    path = write(handbook_frame().drop(columns=["TX_FRAUD"]), tmp_path / "short.csv")
    result = runner.invoke(
        app,
        [
            "split",
            "--dataset",
            "handbook",
            "--data",
            str(path),
            "--history-out",
            str(tmp_path / "h"),
            "--stream-out",
            str(tmp_path / "s"),
        ],
    )
    assert result.exit_code == 5
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {path}: missing column(s) 'TX_FRAUD' (label)")
    assert "Traceback" not in result.output + result.stderr


def test_cli_unknown_dataset_exits_2(tmp_path: Path) -> None:
    result = runner.invoke(app, ["split", "--dataset", "kaggle", "--input", str(tmp_path / "x.csv")])
    assert result.exit_code == 2
    assert result.stderr.startswith("error: unknown dataset 'kaggle'")


@pytest.mark.parametrize("command", ["split", "train", "evaluate"])
def test_the_dataset_flag_is_data_in_every_command(command: str) -> None:
    result = runner.invoke(app, [command, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    assert "--data " in result.output
    assert "--input" not in result.output  # split's former name still works, but is not advertised


def test_split_input_alias_names_the_same_dataset_as_data(tmp_path: Path) -> None:
    missing = tmp_path / "absent.parquet"
    via_alias = runner.invoke(app, ["split", "--input", str(missing)])
    via_data = runner.invoke(app, ["split", "--data", str(missing)])
    assert via_alias.exit_code == via_data.exit_code == 5
    assert via_alias.stderr == via_data.stderr
    assert str(missing) in via_data.stderr


def test_split_data_and_a_different_input_alias_is_a_usage_error(tmp_path: Path) -> None:
    result = runner.invoke(app, ["split", "--data", str(tmp_path / "a"), "--input", str(tmp_path / "b")])
    assert result.exit_code == 2
    assert result.stderr.startswith("error: --data ")
    assert "--input" in result.stderr
