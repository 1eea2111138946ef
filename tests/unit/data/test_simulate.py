"""The simulator: determinism, the canonical frame, each fraud scenario's behaviour and rate, the stream."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from fraudkit.cli import app
from fraudkit.config import SimulateConfig
from fraudkit.data.datasets import load_frame, load_mapping
from fraudkit.data.simulate import (
    CANONICAL_COLUMNS,
    DAY_MS,
    SCENARIOS,
    parse_start,
    simulate_dataset,
    simulate_to_file,
    stream_transactions,
    write_dataset,
)
from fraudkit.errors import ConfigError
from fraudkit.features.spec import haversine_km_array

runner = CliRunner()
START_MS = parse_start("2026-01-01")
# Every scenario far more often than by default, so a small world shows each of them.
BUSY_SCENARIOS = {
    "large_amount": 0.01,
    "compromised_terminals_per_day": 2.0,
    "compromised_cards_per_day": 3.0,
    "card_testing_bursts_per_day": 3.0,
    "impossible_travel_per_day": 10.0,
}


def small(**overrides: Any) -> SimulateConfig:
    settings: dict[str, Any] = {"customers": 200, "terminals": 400, "days": 10, "seed": 7}
    settings.update(overrides)
    return SimulateConfig.model_validate(settings)


@pytest.fixture(scope="module")
def busy() -> pd.DataFrame:
    return simulate_dataset(small(scenarios=BUSY_SCENARIOS))


@pytest.mark.parametrize("file_format", ["parquet", "csv"])
def test_same_seed_gives_the_same_bytes(tmp_path: Path, file_format: str) -> None:
    first = simulate_to_file(small(out=tmp_path / f"a.{file_format}", format=file_format))
    second = simulate_to_file(small(out=tmp_path / f"b.{file_format}", format=file_format))
    other = simulate_to_file(small(out=tmp_path / f"c.{file_format}", format=file_format, seed=8))
    assert first.path.read_bytes() == second.path.read_bytes()
    assert first.path.read_bytes() != other.path.read_bytes()
    # The file written from the frame equals the one `simulate` writes.
    frame_file = write_dataset(simulate_dataset(small()), tmp_path / f"d.{file_format}", file_format)
    assert frame_file.read_bytes() == first.path.read_bytes()


def test_canonical_frame(busy: pd.DataFrame) -> None:
    assert tuple(busy.columns) == CANONICAL_COLUMNS
    assert busy["event_time_ms"].dtype == np.int64
    assert busy["amount"].dtype == np.float64
    assert busy["transaction_id"].is_unique
    assert busy[["card_id", "customer_id", "terminal_id", "country", "currency"]].notna().all().all()
    keys = list(zip(busy["event_time_ms"], busy["transaction_id"], strict=True))
    assert keys == sorted(keys)
    assert busy["event_time_ms"].min() >= START_MS
    assert busy["event_time_ms"].max() < START_MS + 10 * DAY_MS
    assert set(busy["label"].unique()) == {0, 1}
    assert ((busy["label"] == 1) == (busy["fraud_scenario"] != "")).all()
    assert (busy["amount"] > 0).all()
    assert busy["lat"].between(-90, 90).all() and busy["lon"].between(-180, 180).all()
    # Every card belongs to exactly one customer.
    assert busy.groupby("card_id")["customer_id"].nunique().max() == 1


def test_default_world_size_and_fraud_rate() -> None:
    frame = simulate_dataset(SimulateConfig(customers=1000, terminals=2000, days=30, seed=3))
    # About customers x days x daily_transactions rows, and a fraud rate well below 1%.
    assert 0.85 * 1000 * 30 * 1.6 < len(frame) < 1.15 * 1000 * 30 * 1.6
    assert 0.001 < frame["label"].mean() < 0.01
    assert frame["country"].nunique() >= 10
    assert set(frame["fraud_scenario"].unique()) - {""} <= set(SCENARIOS)


def test_every_scenario_occurs(busy: pd.DataFrame) -> None:
    counts = busy["fraud_scenario"].value_counts()
    for scenario in SCENARIOS:
        assert counts.get(scenario, 0) > 5, scenario


def _home_country(frame: pd.DataFrame) -> pd.Series:
    legit = frame[frame["label"] == 0]
    return legit.groupby("customer_id")["country"].agg(lambda c: c.value_counts().index[0])


def test_card_testing_is_bursts_of_tiny_amounts_at_many_merchants(busy: pd.DataFrame) -> None:
    testing = busy[busy["fraud_scenario"] == "card_testing"]
    tiny = testing[testing["amount"] <= 3.0]
    # The rest are the occasional cash-out purchases that follow a successful test.
    assert len(tiny) > 0.8 * len(testing)
    for _card, burst in tiny.groupby("card_id"):
        times = burst["event_time_ms"].to_numpy()
        # Each burst: at least five charges within an hour, at different terminals.
        in_hour = np.searchsorted(times, times + 3_600_000) - np.arange(len(times))
        assert in_hour.max() >= 5
        assert burst["terminal_id"].nunique() >= 0.8 * len(burst)


def test_impossible_travel_lands_far_away_soon_after_a_genuine_purchase(busy: pd.DataFrame) -> None:
    frame = busy.sort_values(["card_id", "event_time_ms"], kind="stable")
    previous = frame.groupby("card_id")[["event_time_ms", "lat", "lon", "fraud_scenario"]].shift()
    travel = frame["fraud_scenario"] == "impossible_travel"
    # The first transaction of each episode follows a purchase of the card at home.
    first = travel & previous["fraud_scenario"].eq("")
    assert first.sum() >= 5
    distance = haversine_km_array(previous["lat"], previous["lon"], frame["lat"], frame["lon"])[first]
    hours = (frame["event_time_ms"] - previous["event_time_ms"])[first] / 3_600_000
    assert (distance > 3000).all()
    assert (distance / hours > 1000).all()
    home = frame["customer_id"].map(_home_country(busy))
    assert (frame.loc[travel, "country"] != home[travel]).all()


def test_compromised_terminals_defraud_a_large_share_of_their_transactions(busy: pd.DataFrame) -> None:
    hit = busy[busy["fraud_scenario"] == "compromised_terminal"]
    terminals = hit["terminal_id"].unique()
    assert 1 <= len(terminals) < len(hit)
    at_terminals = busy[busy["terminal_id"].isin(terminals)]
    after_first = at_terminals[
        at_terminals["event_time_ms"]
        >= at_terminals["terminal_id"].map(hit.groupby("terminal_id")["event_time_ms"].min())
    ]
    share = (after_first["fraud_scenario"] == "compromised_terminal").mean()
    assert 0.3 < share < 0.8  # terminal_fraud_fraction is 0.5
    # Elsewhere the scenario never occurs, and the amounts are the customers' usual ones.
    assert busy.loc[~busy["terminal_id"].isin(terminals), "fraud_scenario"].ne("compromised_terminal").all()


def test_compromised_cards_and_large_amounts_spend_far_above_the_card_habit(busy: pd.DataFrame) -> None:
    usual = busy[busy["label"] == 0].groupby("card_id")["amount"].median()
    for scenario, factor in (("compromised_card", 2.0), ("large_amount", 5.0)):
        fraud = busy[busy["fraud_scenario"] == scenario]
        ratio = fraud["amount"] / fraud["card_id"].map(usual)
        assert ratio.median() > factor, scenario


def test_scenario_rates_follow_the_config() -> None:
    config = small(customers=400, terminals=800, days=20, scenarios={"large_amount": 0.02})
    frame = simulate_dataset(config)
    large = (frame["fraud_scenario"] == "large_amount").mean()
    expected = 0.02
    sigma = (expected * (1 - expected) / len(frame)) ** 0.5
    assert abs(large - expected) < 4 * sigma

    bursts = dict(BUSY_SCENARIOS, card_testing_bursts_per_day=5.0)
    frame = simulate_dataset(small(customers=400, terminals=800, days=20, scenarios=bursts))
    testing = frame[(frame["fraud_scenario"] == "card_testing") & (frame["amount"] <= 3.0)]
    # A new burst starts where the card's previous test charge is more than two hours back.
    gaps = testing.sort_values(["card_id", "event_time_ms"]).groupby("card_id")["event_time_ms"].diff()
    observed = int((gaps.isna() | (gaps > 2 * 3_600_000)).sum())
    expected_bursts = 5.0 * 400 / 1000 * 20
    assert abs(observed - expected_bursts) < 4 * expected_bursts**0.5


def test_a_scenario_rate_changes_only_that_scenario() -> None:
    with_travel = simulate_dataset(small(scenarios=BUSY_SCENARIOS))
    without = simulate_dataset(small(scenarios=dict(BUSY_SCENARIOS, impossible_travel_per_day=0.0)))
    assert (without["fraud_scenario"] == "impossible_travel").sum() == 0
    kept = with_travel[with_travel["fraud_scenario"] != "impossible_travel"]
    columns = ["event_time_ms", "card_id", "terminal_id", "amount", "fraud_scenario"]
    pd.testing.assert_frame_equal(kept[columns].reset_index(drop=True), without[columns])


def test_stream_continues_the_batch_day_after_day() -> None:
    config = small(days=3, scenarios=BUSY_SCENARIOS)
    stream = stream_transactions(config)
    chunks = [next(stream) for _ in range(6)]
    for index, chunk in enumerate(chunks):
        day_start = START_MS + index * DAY_MS
        assert chunk["event_time_ms"].between(day_start, day_start + DAY_MS - 1).all()
        assert chunk["transaction_id"].is_unique
        assert tuple(chunk.columns) == CANONICAL_COLUMNS
    pd.testing.assert_frame_equal(pd.concat(chunks[:3], ignore_index=True), simulate_dataset(config))
    later = pd.concat(chunks[3:], ignore_index=True)
    # Past the batch's days, the same world keeps producing every kind of fraud.
    assert set(later["fraud_scenario"].unique()) - {""} == set(SCENARIOS)
    assert set(later["card_id"]) <= set(simulate_dataset(small(days=30, scenarios=BUSY_SCENARIOS))["card_id"])


def test_stream_from_an_instant_starts_there_with_the_same_transactions() -> None:
    config = small(days=1)
    start = START_MS + 13 * 3_600_000
    first = next(stream_transactions(config, start_ms=start))
    day = simulate_dataset(config)
    assert first["event_time_ms"].min() >= start
    pd.testing.assert_frame_equal(first, day[day["event_time_ms"] >= start].reset_index(drop=True))


def test_bad_start_date_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"simulate.start_date: not an ISO date"):
        simulate_dataset(small(start_date="first of May"))


def test_cli_simulate_writes_the_file_and_prints_a_summary(tmp_path: Path) -> None:
    out = tmp_path / "tx.csv"
    result = runner.invoke(
        app,
        [
            "simulate",
            "--customers",
            "100",
            "--terminals",
            "200",
            "--days",
            "4",
            "--seed",
            "5",
            "--out",
            str(out),
            "--format",
            "csv",
            "--set",
            "simulate.scenarios.card_testing_bursts_per_day=20",
        ],
    )
    assert result.exit_code == 0, result.output
    frame = load_frame(out, load_mapping("fraudkit"))
    assert f"simulated {len(frame):,} transactions" in result.output
    testing = int((frame["fraud_scenario"] == "card_testing").sum())
    assert testing > 0
    assert f"card_testing         │ {testing:>12,}" in result.output
    assert "2026-01-01" in result.output and str(out) in result.output


def test_cli_simulate_bad_start_date_exits_2(tmp_path: Path) -> None:
    result = runner.invoke(app, ["simulate", "--start-date", "soon", "--out", str(tmp_path / "x.parquet")])
    assert result.exit_code == 2
    assert result.stderr.strip() == "error: simulate.start_date: not an ISO date or time: 'soon'"
