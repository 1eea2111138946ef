"""`fraudkit train` and `fraudkit evaluate` end to end on a small simulated dataset (real local Spark)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from fraudkit.cli import app
from fraudkit.model.registry import Registry

pytestmark = [pytest.mark.spark, pytest.mark.slow]

# Training [01-01, 01-16), a 2-day label delay, validation [01-18, 01-25), evaluation [01-25, 01-31).
TRAIN_FLAGS = ["--train-to", "2026-01-16", "--valid-days", "7", "--epochs", "2"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """200 customers over 30 days with raised fraud rates, so every window holds fraud."""
    from fraudkit.config import ScenarioRates, SimulateConfig
    from fraudkit.data.simulate import simulate_to_file

    path = tmp_path_factory.mktemp("data") / "transactions.parquet"
    rates = ScenarioRates(
        compromised_cards_per_day=2,
        card_testing_bursts_per_day=1,
        impossible_travel_per_day=1.5,
        compromised_terminals_per_day=0.3,
    )
    summary = simulate_to_file(
        SimulateConfig(customers=200, terminals=400, days=30, seed=11, scenarios=rates, out=path)
    )
    assert summary.frauds > 100
    return path


@pytest.fixture(scope="module")
def trained_run(spark: Any, dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """`fraudkit train` once: its workdir (registry with v1; copy it to modify) and its output."""
    workdir = tmp_path_factory.mktemp("trained")
    result = run(["train", "--data", str(dataset), *TRAIN_FLAGS], workdir)
    assert result.exit_code == 0, result.output
    return workdir, result.output


@pytest.fixture
def trained(trained_run: tuple[Path, str]) -> Path:
    return trained_run[0]


def run(args: list[str], tmp_path: Path) -> Any:
    settings = [
        "--set",
        f"registry.path={tmp_path / 'models'}",
        "--set",
        "features.label_delay_days=2",
        "--set",
        "evaluate.top_k=5",
        "--set",
        "train.batch_size=256",
    ]
    return CliRunner().invoke(app, [*args, *settings])


def table_row(output: str, label: str) -> list[float]:
    """The numbers of one row of a rich table in the output."""
    for line in output.splitlines():
        cells = [c.strip() for c in re.split(r"[│┃|]", line) if c.strip()]
        if cells and cells[0] == label:
            return [float(c.replace(",", "")) for c in cells[1:]]
    raise AssertionError(f"no row {label!r} in:\n{output}")


def test_train_publishes_and_is_deterministic(
    dataset: Path, trained_run: tuple[Path, str], tmp_path: Path
) -> None:
    workdir, output = trained_run
    shutil.copytree(workdir / "models", tmp_path / "models")
    assert "published v1 (now current)" in output
    assert "epoch 1/2  loss" in output
    (average_precision,) = table_row(output, "average precision")
    (valid_rows,) = table_row(output, "validation rows")
    assert 0.0 < average_precision <= 1.0
    assert valid_rows > 1000

    registry = Registry(tmp_path / "models")
    assert registry.current_version() == "v1"
    manifest = registry.show("v1")
    assert manifest["metrics"]["average_precision"] == pytest.approx(average_precision, abs=1e-4)
    assert manifest["training"]["windows"]["train_to"] == "2026-01-16 00:00:00"
    assert manifest["training"]["windows"]["valid_from"] == "2026-01-18 00:00:00"
    assert manifest["dropped_features"] == {}
    assert manifest["data_fingerprint"].startswith("sha256:")
    assert "card_speed_kmh" in manifest["feature_names"]
    assert manifest["feature_spec"]["names"] == manifest["feature_names"]

    second = run(["train", "--data", str(dataset), *TRAIN_FLAGS, "--no-promote"], tmp_path)
    assert second.exit_code == 0, second.output
    assert registry.current_version() == "v1"
    from safetensors.numpy import load_file

    weights_1 = load_file(tmp_path / "models" / "v1" / "model.safetensors")
    weights_2 = load_file(tmp_path / "models" / "v2" / "model.safetensors")
    assert weights_1.keys() == weights_2.keys()
    for name in weights_1:
        assert np.array_equal(weights_1[name], weights_2[name]), name
    assert registry.show("v2")["data_fingerprint"] == manifest["data_fingerprint"]
    assert registry.show("v2")["threshold"] == manifest["threshold"]


def test_evaluate_reports_model_and_baselines(dataset: Path, trained: Path, tmp_path: Path) -> None:
    predictions = tmp_path / "predictions.csv"
    plots = tmp_path / "plots"
    result = run(
        [
            "evaluate",
            "--data",
            str(dataset),
            "--model",
            "current",
            "--predictions-out",
            str(predictions),
            "--plot",
            str(plots),
        ],
        trained,
    )
    assert result.exit_code == 0, result.output
    # The default window starts where the model's validation ended.
    assert "in [2026-01-25 00:00:00" in result.output
    roc = table_row(result.output, "ROC AUC")
    average_precision = table_row(result.output, "average precision")
    card_precision = table_row(result.output, "card precision@5")
    assert len(roc) == len(average_precision) == len(card_precision) == 3  # MLP, logistic, rule
    assert all(0.0 <= value <= 1.0 for value in [*roc, *average_precision, *card_precision])
    # The amount rule flags nothing but amounts above 900: its scores are 0/1, its AUC near 0.5.
    assert table_row(result.output, "threshold")[2] == 0.5

    import pandas as pd

    written = pd.read_csv(predictions)
    assert list(written.columns) == ["transaction_id", "score", "label"]
    assert written["score"].between(0, 1).all()
    assert set(written["label"].unique()) <= {0, 1}
    for name in ("pr_curve.png", "roc_curve.png"):
        assert (plots / name).read_bytes().startswith(b"\x89PNG")

    as_json = run(["evaluate", "--data", str(dataset), "--json"], trained)
    assert as_json.exit_code == 0, as_json.output
    report = json.loads(as_json.stdout)
    assert report["rows"] == len(written)
    assert report["frauds"] == int(written["label"].sum())
    names = [r["name"] for r in report["results"]]
    assert names == ["MLP", "logistic regression", "amount > 900"]
    mlp = report["results"][0]
    assert mlp["version"] == "v1"
    assert mlp["metrics"]["average_precision"] == pytest.approx(average_precision[0], abs=1e-4)
    assert len(mlp["card_precision_per_day"]) == len(report["days"]) == 6


def test_evaluate_refuses_an_empty_window_and_a_tampered_model(
    dataset: Path, trained: Path, tmp_path: Path
) -> None:
    shutil.copytree(trained / "models", tmp_path / "models")
    empty = run(["evaluate", "--data", str(dataset), "--from", "2027-01-01", "--to", "2027-02-01"], tmp_path)
    assert empty.exit_code == 5
    assert "no rows in [2027-01-01 00:00:00, 2027-02-01 00:00:00)" in empty.output
    weights = tmp_path / "models" / "v1" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-4] + b"\0\0\0\0")
    tampered = run(["evaluate", "--data", str(dataset)], tmp_path)
    assert tampered.exit_code == 4
    assert "model.safetensors does not match its checksum" in tampered.output


def test_evaluate_backtests_a_rule_set_beside_the_model(dataset: Path, trained: Path, tmp_path: Path) -> None:
    import pandas as pd

    from fraudkit.data.datasets import load_frame, load_mapping

    rules = tmp_path / "rules.yaml"
    rules.write_text(
        "rules:\n"
        "  - {name: big_abroad, when: 'amount > 300 and country not in [\"FR\"]', action: flag}\n"
        "  - {name: busy_card, when: card_count_1h >= 3, action: review}\n"
    )
    predictions = tmp_path / "predictions.csv"
    table = run(["evaluate", "--data", str(dataset), "--rules", str(rules)], trained)
    assert table.exit_code == 0, table.output
    result = run(
        [
            "evaluate",
            "--data",
            str(dataset),
            "--rules",
            str(rules),
            "--predictions-out",
            str(predictions),
            "--json",
        ],
        trained,
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    by_name = {(r["name"], r["version"]): r for r in report["results"]}
    (rules_name,) = [name for name, version in by_name if version == "rules" and name.startswith("rules ")]
    assert f"backtesting {rules_name}" in table.output
    # The rules column and the model + rules column sit beside the model's in the table.
    recall_row = table_row(table.output, "recall")
    flagged_row = table_row(table.output, "flagged")
    assert len(recall_row) == len(flagged_row) == 5  # MLP, logistic, amount rule, rules, MLP + rules
    model = by_name[("MLP", "v1")]
    combined = by_name[("MLP", "v1 + rules")]
    alone = by_name[(rules_name, "rules")]
    assert recall_row[3:] == [pytest.approx(r["metrics"]["recall"], abs=1e-4) for r in (alone, combined)]
    assert flagged_row[3:] == [alone["metrics"]["flagged"], combined["metrics"]["flagged"]]

    # The same figures computed independently from the file and the model's written scores.
    frame = load_frame(dataset, load_mapping("fraudkit"))
    scores = pd.read_csv(predictions)
    window = frame.merge(scores, on="transaction_id", suffixes=("", "_written"))
    assert len(window) == report["rows"]
    rule = (window["amount"] > 300) & window["country"].notna() & (window["country"] != "FR")
    labels = window["label"] == 1
    assert alone["metrics"]["flagged"] == int(rule.sum()) > 0
    assert alone["metrics"]["precision"] == pytest.approx((rule & labels).sum() / rule.sum())
    assert alone["metrics"]["recall"] == pytest.approx((rule & labels).sum() / labels.sum())
    both = rule | (window["score"] >= model["threshold"])
    assert combined["threshold"] == model["threshold"]
    assert combined["metrics"]["flagged"] == int(both.sum())
    assert combined["metrics"]["recall"] == pytest.approx((both & labels).sum() / labels.sum())
    assert combined["metrics"]["recall"] >= model["metrics"]["recall"]

    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("rules:\n  - {name: odd, when: card_count_2h > 1, action: flag}\n")
    refused = run(["evaluate", "--data", str(dataset), "--rules", str(unknown)], trained)
    assert refused.exit_code == 2
    assert (
        f"{unknown}: rule 'odd': when, character 1: unknown field or feature 'card_count_2h'"
        in refused.output
    )
