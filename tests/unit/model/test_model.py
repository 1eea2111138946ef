"""The MLP scorer's semantics (one logit, sigmoid), reason codes and the amount rule."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from fraudkit.errors import ModelError
from fraudkit.model.metrics import DAY_MS
from fraudkit.model.network import LoadedModel, Normalisation, RuleModel, build_mlp, state_to_numpy

NAMES = ["amount", "card_count_1h"]


def linear_model(weights: list[float], bias: float, mean: list[float], std: list[float]) -> LoadedModel:
    """A model without hidden layers: logit = w . (x - mean) / std + b."""
    state = {
        "output.weight": np.array([weights], dtype=np.float32),
        "output.bias": np.array([bias], np.float32),
    }
    normalisation = Normalisation(mean=np.array(mean), std=np.array(std))
    return LoadedModel.from_state(state, NAMES, normalisation, 0.5, hidden_sizes=[], version="v9")


def test_score_is_sigmoid_of_one_logit_after_normalisation() -> None:
    model = linear_model([2.0, -1.0], 0.5, mean=[100.0, 1.0], std=[50.0, 2.0])
    X = np.array([[150.0, 3.0], [0.0, 1.0], [100.0, 1.0]], dtype=np.float32)
    scores = model.score(X)
    expected_logits = [2.0 * 1 - 1.0 * 1 + 0.5, 2.0 * -2 + 0.5, 0.5]
    assert scores.dtype == np.float64
    assert scores.shape == (3,)
    assert scores == pytest.approx([1 / (1 + math.exp(-z)) for z in expected_logits], rel=1e-6)
    # A negative logit is a low probability: no argmax over a single column (which is always 0).
    assert scores[1] < 0.05


def test_score_handles_extreme_logits_and_missing_values() -> None:
    model = linear_model([1000.0, 0.0], 0.0, mean=[0.0, 0.0], std=[1.0, 1.0])
    scores = model.score(np.array([[10.0, 0.0], [-10.0, 0.0], [np.nan, 5.0]], dtype=np.float32))
    assert scores[0] == pytest.approx(1.0)
    assert scores[1] == pytest.approx(0.0)
    assert scores[2] == pytest.approx(0.5)  # NaN is imputed at the mean
    assert np.all(np.isfinite(scores))


def test_score_shapes_and_wrong_width() -> None:
    model = linear_model([1.0, 1.0], 0.0, [0.0, 0.0], [1.0, 1.0])
    assert model.score(np.zeros((0, 2), np.float32)).shape == (0,)
    assert model.score(np.zeros((2000, 2), np.float32)).shape == (2000,)
    with pytest.raises(ModelError, match="expects 2 features"):
        model.score(np.zeros((4, 3), np.float32))


def test_mlp_trained_with_dropout_scores_deterministically() -> None:
    import torch

    torch.manual_seed(0)
    network = build_mlp(2, [8, 4], dropout=0.5)
    state = state_to_numpy(network.state_dict())
    assert set(state) == {
        "hidden.0.weight",
        "hidden.0.bias",
        "hidden.1.weight",
        "hidden.1.bias",
        "output.weight",
        "output.bias",
    }
    model = LoadedModel.from_state(state, NAMES, Normalisation(np.zeros(2), np.ones(2)), 0.3, [8, 4])
    X = np.random.default_rng(1).normal(size=(50, 2)).astype(np.float32)
    first = model.score(X)
    assert np.array_equal(first, model.score(X))  # dropout is off when scoring
    network.eval()
    with torch.no_grad():
        expected = torch.sigmoid(network(torch.from_numpy(X)))[:, 0].numpy()
    assert first == pytest.approx(expected, abs=1e-6)
    assert model.threshold == 0.3
    assert model.feature_names == NAMES


def test_weights_that_do_not_fit_the_architecture_are_refused() -> None:
    state = {"output.weight": np.ones((1, 3), np.float32), "output.bias": np.zeros(1, np.float32)}
    with pytest.raises(ModelError, match="do not match"):
        LoadedModel.from_state(state, NAMES, Normalisation(np.zeros(2), np.ones(2)), 0.5, [])


def test_explain_ranks_features_by_gradient_times_normalised_input() -> None:
    model = linear_model([2.0, -1.0], 0.0, mean=[100.0, 1.0], std=[50.0, 2.0])
    X = np.array([[200.0, 5.0], [100.0, -3.0]], dtype=np.float32)
    reasons = model.explain(X, k=2)
    # Row 0: amount z=2 -> +4; count z=2 -> -2.  Row 1: amount z=0 -> 0; count z=-2 -> +2.
    assert reasons[0] == [
        {"feature": "amount", "value": 200.0, "contribution": 4.0},
        {"feature": "card_count_1h", "value": 5.0, "contribution": -2.0},
    ]
    assert [r["feature"] for r in reasons[1]] == ["card_count_1h", "amount"]
    assert reasons[1][0]["contribution"] == pytest.approx(2.0)
    assert model.explain(X, k=1)[0] == [reasons[0][0]]


@pytest.mark.parametrize("hidden_sizes", [[], [16], [64, 32]])
def test_scores_and_reasons_equal_the_torch_module_and_autograd(hidden_sizes: list[int]) -> None:
    import torch

    # The scorer multiplies the layers itself (nn.Module calls cost most of a small batch's time):
    # the same logits bit for bit, and the hand-written gradient equals autograd's.
    torch.manual_seed(3)
    names = [f"f{i}" for i in range(12)]
    network = build_mlp(len(names), hidden_sizes)
    normalisation = Normalisation(mean=np.linspace(-1, 1, 12), std=np.linspace(0.5, 2, 12))
    model = LoadedModel.from_state(
        state_to_numpy(network.state_dict()), names, normalisation, 0.5, hidden_sizes=hidden_sizes
    )
    X = np.random.default_rng(5).normal(size=(40, 12)).astype(np.float32)
    Z = torch.from_numpy(normalisation.apply(X)).requires_grad_(True)
    expected = network(Z)
    assert np.array_equal(model.logits(X), expected.detach().numpy()[:, 0])
    expected.sum().backward()
    assert Z.grad is not None
    autograd = (Z.grad * Z).detach().numpy()
    for row, reasons in enumerate(model.explain(X, k=12)):
        got = {reason["feature"]: reason["contribution"] for reason in reasons}
        assert got == pytest.approx({name: float(autograd[row, i]) for i, name in enumerate(names)}, abs=2e-6)
        assert [reason["feature"] for reason in reasons[:3]] == [
            names[i] for i in np.argsort(-autograd[row])[:3]
        ]


def test_rule_model_flags_amounts_above_threshold() -> None:
    rule = RuleModel(900.0, ["card_count_1h", "amount"])
    X = np.array([[1.0, 950.0], [3.0, 900.0], [0.0, 10.0]], dtype=np.float32)
    assert rule.version == "rules"
    assert rule.threshold == 0.5
    scores = rule.score(X)
    assert scores.dtype == np.float64
    assert scores.tolist() == [1.0, 0.0, 0.0]
    assert rule.explain(X, 3) == [[{"feature": "amount", "value": 950.0, "contribution": 1.0}], [], []]


def test_rule_model_needs_an_amount_feature() -> None:
    with pytest.raises(ModelError, match="'amount' feature"):
        RuleModel(900.0, ["card_count_1h"])


def synthetic_table(rows: int = 3000, seed: int = 0) -> Any:
    """A training table whose fraud depends on `amount` and a second feature, over 30 days."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    amount = rng.exponential(50.0, rows)
    burst = rng.poisson(1.0, rows).astype(np.float64)
    logit = 0.05 * (amount - 150) + 2.5 * (burst - 3)
    label = (rng.random(rows) < 1 / (1 + np.exp(-logit))).astype(np.int64)
    return pd.DataFrame(
        {
            "transaction_id": [f"t{i:05d}" for i in range(rows)],
            "event_time_ms": np.sort(rng.integers(0, 30 * DAY_MS, rows)),
            "card_id": [f"c{i % 300}" for i in range(rows)],
            "label": label,
            "amount": amount,
            "card_count_1h": burst,
        }
    )


def test_fit_learns_is_deterministic_and_picks_a_threshold_on_validation() -> None:
    from fraudkit.config import TrainConfig
    from fraudkit.model.train import fit

    table = synthetic_table()
    times = table["event_time_ms"].to_numpy()
    train_mask, valid_mask = times < 20 * DAY_MS, times >= 23 * DAY_MS
    cfg = TrainConfig(hidden_sizes=[8], epochs=6, batch_size=128, learning_rate=0.02, seed=3, patience=2)
    epochs_seen: list[int] = []
    first = fit(table, NAMES, cfg, train_mask, valid_mask, progress=lambda e: epochs_seen.append(e.epoch))
    second = fit(table, NAMES, cfg, train_mask, valid_mask)
    assert epochs_seen == list(range(1, len(first.history) + 1))
    for name, weights in first.model_state.items():
        assert np.array_equal(weights, second.model_state[name]), name
    assert first.threshold == second.threshold
    assert first.metrics["average_precision"] > 0.5  # a learnable signal, far above the fraud rate
    assert first.metrics["rows"] == int(valid_mask.sum())
    assert first.metrics["best_epoch"] == 1 + int(np.argmax([h["valid_ap"] for h in first.history]))
    # The target precision (0.5 by default) is reached at the chosen threshold on validation.
    assert first.metrics["precision"] >= 0.5
    assert first.normalisation.mean[0] == pytest.approx(table.loc[train_mask, "amount"].mean())
    other_seed = fit(table, NAMES, cfg.model_copy(update={"seed": 4}), train_mask, valid_mask)
    assert not np.array_equal(other_seed.model_state["output.bias"], first.model_state["output.bias"])


def test_fit_refuses_a_validation_window_without_fraud() -> None:
    from fraudkit.config import TrainConfig
    from fraudkit.errors import DataError
    from fraudkit.model.train import fit

    table = synthetic_table(500)
    table["label"] = np.where(table["event_time_ms"] >= 20 * DAY_MS, 0, table["label"])
    times = table["event_time_ms"].to_numpy()
    with pytest.raises(DataError, match=r"validation window has .* no fraud"):
        fit(table, NAMES, TrainConfig(epochs=1), times < 15 * DAY_MS, times >= 20 * DAY_MS)


def test_time_windows_follow_the_protocol() -> None:
    from fraudkit.config import TrainConfig
    from fraudkit.errors import ConfigError, DataError
    from fraudkit.model.train import parse_time_ms, time_windows

    start = parse_time_ms("2026-01-01")
    assert start == 1_767_225_600_000
    assert parse_time_ms("2026-01-01T06:00:00Z") == start + 6 * 3_600_000
    assert parse_time_ms(str(start)) == start
    with pytest.raises(ConfigError, match="--from: 'soon' is not a date"):
        parse_time_ms("soon", "--from")
    last = start + 60 * DAY_MS - 1
    default = time_windows(start, last, TrainConfig(valid_days=14), label_delay_days=7)
    assert (default.train_from_ms, default.valid_to_ms) == (start, start + 60 * DAY_MS)
    assert default.train_to_ms == start + 39 * DAY_MS
    assert default.valid_from_ms == default.train_to_ms + 7 * DAY_MS
    explicit = time_windows(
        start, last, TrainConfig(train_from="2026-01-10", train_to="2026-01-20", valid_days=5), 7
    )
    assert explicit.train_from_ms == start + 9 * DAY_MS
    assert explicit.valid_from_ms == start + 26 * DAY_MS
    assert explicit.valid_to_ms == start + 31 * DAY_MS
    with pytest.raises(DataError, match="empty training window"):
        time_windows(start, start + 10 * DAY_MS, TrainConfig(valid_days=14), 7)
