"""Offline training: Spark features → pandas → a torch MLP under a time-based protocol → registry.

`fit` is the reusable core (also used by live retraining); `train_from_dataset` is `fraudkit train`.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, cast

import numpy as np

from fraudkit.config import FraudkitConfig, TrainConfig
from fraudkit.errors import ConfigError, DataError
from fraudkit.model.metrics import (
    DAY_MS,
    average_precision,
    card_precision_at_k,
    precision_recall_f1,
    roc_auc,
    threshold_for_budget,
    threshold_for_precision,
)
from fraudkit.model.network import LoadedModel, Normalisation, build_mlp, state_to_numpy, torch_threads
from fraudkit.timefmt import iso_ms, utc_text

if TYPE_CHECKING:
    import pandas as pd

# Columns every training table carries besides the features (see spark_features).
KEY_COLUMNS = ["transaction_id", "event_time_ms", "card_id", "label"]


def parse_time_ms(value: str | int | float | None, what: str = "time") -> int | None:
    """Epoch milliseconds from an ISO date/datetime (UTC unless it says otherwise) or epoch ms."""
    if value is None or value == "":
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        return int(value)
    text = str(value).strip()
    if text.lstrip("-").isdigit():
        return int(text)
    try:
        return iso_ms(text)
    except ValueError:
        raise ConfigError(
            f"{what}: {text!r} is not a date (2026-01-15), datetime (2026-01-15T06:00) or epoch ms"
        ) from None


@dataclass(frozen=True)
class TimeWindows:
    """Training [train_from, train_to), a gap of label_delay, then validation [valid_from, valid_to)."""

    train_from_ms: int
    train_to_ms: int
    valid_from_ms: int
    valid_to_ms: int

    def masks(self, event_time_ms: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Boolean masks of training and validation rows."""
        t = np.asarray(event_time_ms, dtype=np.int64)
        train = (t >= self.train_from_ms) & (t < self.train_to_ms)
        valid = (t >= self.valid_from_ms) & (t < self.valid_to_ms)
        return train, valid

    def to_dict(self) -> dict[str, Any]:
        """Milliseconds and readable UTC times, for the manifest."""
        data: dict[str, Any] = {}
        for name in ("train_from", "train_to", "valid_from", "valid_to"):
            ms = getattr(self, f"{name}_ms")
            data[f"{name}_ms"] = ms
            data[name] = utc_text(ms)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TimeWindows:
        """Inverse of to_dict."""
        return cls(
            int(data["train_from_ms"]),
            int(data["train_to_ms"]),
            int(data["valid_from_ms"]),
            int(data["valid_to_ms"]),
        )

    def describe(self) -> str:
        """One line for messages."""
        return (
            f"train [{utc_text(self.train_from_ms)}, {utc_text(self.train_to_ms)}), "
            f"validation [{utc_text(self.valid_from_ms)}, {utc_text(self.valid_to_ms)})"
        )


def time_windows(first_ms: int, last_ms: int, train_cfg: TrainConfig, label_delay_days: float) -> TimeWindows:
    """The protocol's windows for data spanning [first_ms, last_ms] and the configured overrides."""
    delay = int(label_delay_days * DAY_MS)
    valid_span = int(train_cfg.valid_days * DAY_MS)
    # Default windows fall on UTC midnights: the data's first day to the end of its last day.
    end = (last_ms // DAY_MS + 1) * DAY_MS
    first_day = first_ms // DAY_MS * DAY_MS
    train_from = parse_time_ms(train_cfg.train_from, "train.train_from")
    train_to = parse_time_ms(train_cfg.train_to, "train.train_to")
    if train_to is None:
        # Default: the validation window ends with the data, training ends label_delay before it.
        train_to = end - valid_span - delay
    train_from = first_day if train_from is None else train_from
    windows = TimeWindows(train_from, train_to, train_to + delay, train_to + delay + valid_span)
    if train_from >= train_to:
        raise DataError(
            f"empty training window: {windows.describe()}; the data covers "
            f"[{utc_text(first_ms)}, {utc_text(end)}) — set --train-from/--train-to/--valid-days"
        )
    return windows


class EpochReport(NamedTuple):
    """Progress of one training epoch."""

    epoch: int
    epochs: int
    loss: float
    valid_ap: float
    best_ap: float
    seconds: float


class FitResult(NamedTuple):
    """What `fit` returns: everything `Registry.publish` needs."""

    model_state: dict[str, np.ndarray]
    normalisation: Normalisation
    threshold: float
    metrics: dict[str, Any]
    history: list[dict[str, float]]


def card_keys(table: pd.DataFrame) -> np.ndarray:
    """Card ids, with the transaction id standing in where a dataset has no cards."""
    cards = table["card_id"] if "card_id" in table.columns else None
    tx = table["transaction_id"].astype(str)
    if cards is None:
        return ("tx:" + tx).to_numpy(dtype=object)
    return cards.astype(object).where(cards.notna(), "tx:" + tx).to_numpy(dtype=object)


def choose_threshold(
    train_cfg: TrainConfig, labels: np.ndarray, scores: np.ndarray, cards: np.ndarray, times: np.ndarray
) -> float:
    """The decision threshold from config: a target precision or a daily card alert budget."""
    rule = train_cfg.threshold
    if rule.mode == "budget":
        return threshold_for_budget(cards, times, scores, rule.cards_per_day)
    return threshold_for_precision(labels, scores, rule.target_precision)


def evaluation_metrics(
    labels: np.ndarray,
    scores: np.ndarray,
    cards: np.ndarray,
    times: np.ndarray,
    threshold: float,
    top_k: int,
) -> dict[str, Any]:
    """ROC AUC, AP, card precision@k and precision/recall/F1 at the threshold, as plain numbers."""
    at_threshold = precision_recall_f1(labels, scores, threshold)
    card_precision = card_precision_at_k(cards, times, labels, scores, k=top_k)
    return {
        "roc_auc": roc_auc(labels, scores),
        "average_precision": average_precision(labels, scores),
        f"card_precision@{top_k}": card_precision.mean,
        "precision": at_threshold.precision,
        "recall": at_threshold.recall,
        "f1": at_threshold.f1,
        "flagged": at_threshold.true_positives + at_threshold.false_positives,
        "rows": int(labels.size),
        "frauds": int(labels.sum()),
    }


def fit(
    table: pd.DataFrame,
    feature_names: Sequence[str],
    train_cfg: TrainConfig,
    train_mask: np.ndarray,
    valid_mask: np.ndarray,
    progress: Callable[[EpochReport], None] | None = None,
    top_k: int = 100,
    step: Callable[[], None] | None = None,
) -> FitResult:
    """Train the MLP on the masked rows, early-stopping on validation AP; deterministic per seed.

    `table` needs transaction_id, event_time_ms, card_id (may be null), label and the features.
    `step`, when given, is called after every optimiser step (live retraining paces itself there).
    """
    names = list(feature_names)
    missing = [n for n in [*names, "label", "event_time_ms", "transaction_id"] if n not in table.columns]
    if missing:
        raise DataError(f"training table lacks column(s): {', '.join(missing)}")
    train_rows = np.flatnonzero(np.asarray(train_mask, dtype=bool))
    valid_rows = np.flatnonzero(np.asarray(valid_mask, dtype=bool))
    labels = table["label"].to_numpy(dtype=np.float32)
    train_frauds = int(labels[train_rows].sum())
    valid_frauds = int(labels[valid_rows].sum())
    if train_frauds == 0 or train_frauds == train_rows.size:
        raise DataError(
            f"the training window has {train_rows.size} rows and {train_frauds} frauds: need both classes"
        )
    if valid_frauds == 0:
        raise DataError(
            f"the validation window has {valid_rows.size} rows and no fraud: average precision is undefined; "
            "widen --valid-days or move --train-to"
        )
    with torch_threads(train_cfg.threads):
        return _fit(table, names, train_cfg, train_rows, valid_rows, labels, progress, top_k, step)


def _fit(
    table: pd.DataFrame,
    names: list[str],
    train_cfg: TrainConfig,
    train_rows: np.ndarray,
    valid_rows: np.ndarray,
    labels: np.ndarray,
    progress: Callable[[EpochReport], None] | None,
    top_k: int,
    step: Callable[[], None] | None,
) -> FitResult:
    import torch

    train_frauds = int(labels[train_rows].sum())
    X = table[names].to_numpy(dtype=np.float32)
    normalisation = Normalisation.fit(X[train_rows])
    x_train = torch.from_numpy(normalisation.apply(X[train_rows]))
    y_train = torch.from_numpy(labels[train_rows])
    x_valid = torch.from_numpy(normalisation.apply(X[valid_rows]))
    y_valid = labels[valid_rows]

    torch.manual_seed(train_cfg.seed)
    shuffler = torch.Generator().manual_seed(train_cfg.seed)
    network = build_mlp(len(names), train_cfg.hidden_sizes, train_cfg.dropout)
    optimiser = torch.optim.Adam(
        network.parameters(), lr=train_cfg.learning_rate, weight_decay=train_cfg.weight_decay
    )
    pos_weight = positive_weight(train_cfg, train_rows.size - train_frauds, train_frauds)
    loss_fn = torch.nn.BCEWithLogitsLoss(pos_weight=torch.tensor([pos_weight], dtype=torch.float32))

    def validation_scores() -> np.ndarray:
        network.eval()
        with torch.inference_mode():
            return network(x_valid).numpy()[:, 0].astype(np.float64)

    history: list[dict[str, float]] = []
    best_ap, best_epoch, best_state = -math.inf, 0, None
    stale = 0
    batch = train_cfg.batch_size
    for epoch in range(1, train_cfg.epochs + 1):
        started = time.perf_counter()
        network.train()
        order = torch.randperm(train_rows.size, generator=shuffler)
        loss_sum = 0.0
        for start in range(0, train_rows.size, batch):
            index = order[start : start + batch]
            optimiser.zero_grad(set_to_none=True)
            loss = loss_fn(network(x_train[index])[:, 0], y_train[index])
            loss.backward()
            optimiser.step()
            loss_sum += float(loss.item()) * index.numel()
            if step is not None:
                step()
        valid_ap = average_precision(y_valid, validation_scores())
        mean_loss = loss_sum / train_rows.size
        if valid_ap > best_ap:
            best_ap, best_epoch, stale = valid_ap, epoch, 0
            best_state = {k: v.detach().clone() for k, v in network.state_dict().items()}
        else:
            stale += 1
        seconds = time.perf_counter() - started
        history.append({"epoch": epoch, "loss": mean_loss, "valid_ap": valid_ap, "seconds": seconds})
        if progress is not None:
            progress(EpochReport(epoch, train_cfg.epochs, mean_loss, valid_ap, best_ap, seconds))
        if stale >= train_cfg.patience:
            break
    assert best_state is not None
    model_state = state_to_numpy(best_state)
    # Score with the artifact's own scoring path so threshold and metrics match what will be served.
    served = LoadedModel.from_state(model_state, names, normalisation, 0.5, train_cfg.hidden_sizes)
    valid_scores = served.score(X[valid_rows])
    cards = card_keys(table.iloc[valid_rows])
    times = table["event_time_ms"].to_numpy(dtype=np.int64)[valid_rows]
    threshold = choose_threshold(train_cfg, y_valid, valid_scores, cards, times)
    metrics = evaluation_metrics(y_valid, valid_scores, cards, times, threshold, top_k)
    metrics.update(
        {
            "train_rows": int(train_rows.size),
            "train_frauds": train_frauds,
            "best_epoch": best_epoch,
            "epochs_run": len(history),
            "pos_weight": pos_weight,
        }
    )
    return FitResult(model_state, normalisation, float(threshold), metrics, history)


def drift_reference(
    table: pd.DataFrame, feature_names: Sequence[str], result: FitResult, config: FraudkitConfig
) -> dict[str, Any]:
    """The training distribution of each feature and of the model's score, for live drift alarms."""
    from fraudkit.observability.drift import training_reference

    names = list(feature_names)
    served = LoadedModel.from_state(
        result.model_state, names, result.normalisation, result.threshold, config.train.hidden_sizes
    )
    return training_reference(table[names].to_numpy(dtype=np.float32), names, served.score, config.drift.bins)


def positive_weight(train_cfg: TrainConfig, negatives: int, positives: int) -> float:
    """Loss weight of fraud rows: configured, else sqrt(legit/fraud) (full balancing overshoots)."""
    if train_cfg.pos_weight is not None:
        return float(train_cfg.pos_weight)
    return float(math.sqrt(negatives / max(positives, 1)))


def data_fingerprint(table: pd.DataFrame, feature_names: Sequence[str]) -> str:
    """sha256 of the training rows (ids, times, labels and features) in their sorted order."""
    import pandas as pd

    columns = [c for c in ["transaction_id", "event_time_ms", "label", *feature_names] if c in table.columns]
    hashed = pd.util.hash_pandas_object(table[columns], index=False).to_numpy()
    digest = hashlib.sha256(hashed.tobytes())
    digest.update(",".join(columns).encode())
    return "sha256:" + digest.hexdigest()


@dataclass
class TrainReport:
    """What `fraudkit train` did: the version, windows, figures and timings."""

    version: str
    promoted: bool
    windows: TimeWindows
    feature_names: list[str]
    dropped_features: dict[str, str]
    threshold: float
    metrics: dict[str, Any]
    history: list[dict[str, float]]
    data_fingerprint: str
    dataset_rows: int
    valid_rows: int
    timings: dict[str, float] = field(default_factory=dict)


def feature_table(
    spark: Any, data_path: Path | str, mapping: Any, spec: Any, row_filter: Any = None
) -> pd.DataFrame:
    """Spark features over the whole file (history feeds the windows), rows kept by `row_filter`.

    `row_filter(time_column) -> Column` selects what is collected; the result is sorted by
    (event_time_ms, transaction_id) so training is reproducible.
    """
    from pyspark.sql import functions as F

    from fraudkit.data.datasets import load_spark
    from fraudkit.features import spark_features

    frame = load_spark(spark, str(data_path), mapping)
    features = spark_features(frame, spec)
    if row_filter is not None:
        features = features.filter(row_filter(F.col("event_time_ms")))
    columns = [*KEY_COLUMNS, *[n for n in spec.names if n not in KEY_COLUMNS]]
    table = cast("pd.DataFrame", features.select(*columns).toPandas())
    return table.sort_values(["event_time_ms", "transaction_id"], kind="mergesort").reset_index(drop=True)


def time_range(spark: Any, data_path: Path | str, mapping: Any) -> tuple[int, int, int]:
    """First and last event time (ms) and the row count of a dataset."""
    from pyspark.sql import functions as F

    from fraudkit.data.datasets import load_spark

    row = (
        load_spark(spark, str(data_path), mapping)
        .agg(F.min("event_time_ms"), F.max("event_time_ms"), F.count(F.lit(1)))
        .collect()[0]
    )
    if row[2] == 0:
        raise DataError(f"{data_path}: the dataset has no rows")
    return int(row[0]), int(row[1]), int(row[2])


def train_from_dataset(
    config: FraudkitConfig,
    dataset_path: Path | str,
    mapping_name: str,
    spark: Any,
    *,
    promote: bool = True,
    progress: Callable[[EpochReport], None] | None = None,
    stage: Callable[[str], None] | None = None,
) -> TrainReport:
    """`fraudkit train`: features with Spark, fit under the time protocol, publish to the registry.

    Windows come from config (train.train_from/train_to/valid_days, features.label_delay_days);
    the CLI flags --train-from/--train-to/--valid-days override those keys.
    """
    from fraudkit.data.datasets import load_mapping
    from fraudkit.features import FeatureSpec
    from fraudkit.model.registry import Registry

    def announce(text: str) -> None:
        if stage is not None:
            stage(text)

    started = time.perf_counter()
    timings: dict[str, float] = {}
    mapping = load_mapping(mapping_name)
    spec = FeatureSpec.from_config(config.features, mapping)
    if not spec.names:
        raise DataError(f"dataset mapping {mapping_name!r} leaves no features to train on")
    announce("reading the dataset")
    first_ms, last_ms, dataset_rows = time_range(spark, dataset_path, mapping)
    windows = time_windows(first_ms, last_ms, config.train, config.features.label_delay_days)
    announce(f"computing {len(spec.names)} features with Spark ({dataset_rows:,} rows)")
    feature_start = time.perf_counter()
    table = feature_table(
        spark,
        dataset_path,
        mapping,
        spec,
        lambda t: (t >= windows.train_from_ms) & (t < windows.valid_to_ms),
    )
    timings["features_s"] = time.perf_counter() - feature_start
    train_mask, valid_mask = windows.masks(table["event_time_ms"].to_numpy())
    if not train_mask.any() or not valid_mask.any():
        raise DataError(
            f"{dataset_path}: no rows in the {'training' if not train_mask.any() else 'validation'} window "
            f"({windows.describe()})"
        )
    announce(f"training on {int(train_mask.sum()):,} rows, validating on {int(valid_mask.sum()):,}")
    fit_start = time.perf_counter()
    result = fit(table, spec.names, config.train, train_mask, valid_mask, progress, config.evaluate.top_k)
    timings["fit_s"] = time.perf_counter() - fit_start
    rows = train_mask | valid_mask
    fingerprint = data_fingerprint(table.loc[rows], spec.names)
    training = {
        "dataset_path": str(Path(dataset_path).resolve()),
        "dataset_mapping": mapping_name,
        "dataset_rows": dataset_rows,
        "windows": windows.to_dict(),
        "label_delay_days": config.features.label_delay_days,
        "valid_rows": int(valid_mask.sum()),
        "history": result.history,
        "config": config.train.model_dump(mode="json"),
        "threshold_rule": config.train.threshold.model_dump(mode="json"),
    }
    registry = Registry(config.registry.path)
    reference = drift_reference(table.loc[rows], spec.names, result, config)
    version = registry.publish(
        result.model_state,
        feature_names=spec.names,
        hidden_sizes=config.train.hidden_sizes,
        dropout=config.train.dropout,
        normalisation=result.normalisation,
        threshold=result.threshold,
        metrics=result.metrics,
        feature_spec=spec.to_dict(),
        dropped_features=dict(spec.dropped),
        data_fingerprint=fingerprint,
        training=training,
        trainer="fraudkit train",
        promote=promote,
        drift_reference=reference,
    )
    timings["total_s"] = time.perf_counter() - started
    return TrainReport(
        version=version,
        promoted=promote,
        windows=windows,
        feature_names=list(spec.names),
        dropped_features=dict(spec.dropped),
        threshold=result.threshold,
        metrics=result.metrics,
        history=result.history,
        data_fingerprint=fingerprint,
        dataset_rows=dataset_rows,
        valid_rows=int(valid_mask.sum()),
        timings=timings,
    )
