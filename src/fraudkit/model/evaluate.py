"""`fraudkit evaluate`: score a time window with a model and its baselines, the way fraud teams do.

Features are computed over the whole file (history feeds the windows); only rows in [T1, T2) are
scored. Baselines in the same table: the amount rule and a logistic regression trained on the
same features and the model's training/validation windows.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fraudkit.config import FraudkitConfig
from fraudkit.errors import ConfigError, DataError, ModelError
from fraudkit.model.metrics import DAY_MS, card_precision_at_k
from fraudkit.model.network import LoadedModel, RuleModel
from fraudkit.model.train import (
    TimeWindows,
    card_keys,
    evaluation_metrics,
    feature_table,
    fit,
    parse_time_ms,
    time_range,
    time_windows,
)
from fraudkit.rules.language import FrameColumns, RuleSet, backtest_scores
from fraudkit.timefmt import utc_text

if TYPE_CHECKING:
    import pandas as pd

LOGISTIC_NAME = "logistic regression"


@dataclass
class ModelResult:
    """One row of the evaluation table."""

    name: str
    version: str
    threshold: float
    metrics: dict[str, Any]
    card_precision_per_day: list[float] = field(default_factory=list)


@dataclass
class EvalReport:
    """The evaluated window, one result per model, notes and files written."""

    data_path: str
    from_ms: int
    to_ms: int
    rows: int
    frauds: int
    top_k: int
    results: list[ModelResult]
    days: list[int] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)

    def result(self, name: str) -> ModelResult:
        """The result of one model by its name."""
        for result in self.results:
            if result.name == name:
                return result
        raise KeyError(name)


def _model_and_spec(
    config: FraudkitConfig, model_name: str, mapping: Any
) -> tuple[Any, Any, TimeWindows | None]:
    """The model to evaluate, the feature spec it was trained with and its training windows."""
    from fraudkit.features import FeatureSpec
    from fraudkit.model.registry import Registry

    if model_name == "rules":
        spec = FeatureSpec.from_config(config.features, mapping)
        return None, spec, None
    model = Registry(config.registry.path).load(model_name)
    manifest = model.manifest
    try:
        spec = FeatureSpec.from_dict(manifest["feature_spec"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelError(f"model {model.version}: the manifest's feature_spec is unusable: {exc}") from None
    if list(spec.names) != model.feature_names:
        raise ModelError(f"model {model.version}: feature spec and feature names disagree")
    windows_data = (manifest.get("training") or {}).get("windows")
    windows = TimeWindows.from_dict(windows_data) if windows_data else None
    return model, spec, windows


def evaluate_model(
    config: FraudkitConfig,
    data_path: Path | str,
    model_name: str,
    mapping_name: str,
    spark: Any,
    *,
    from_time: str | int | None = None,
    to_time: str | int | None = None,
    predictions_out: Path | str | None = None,
    plot_dir: Path | str | None = None,
    stage: Callable[[str], None] | None = None,
    rule_set: RuleSet | None = None,
) -> EvalReport:
    """Evaluate `model_name` ("vN", "current" or "rules") on rows of `data_path` in [from, to).

    With `rule_set`, two more columns backtest it: the rules alone and the model with the rules.
    """
    from fraudkit.data.datasets import load_mapping

    def announce(text: str) -> None:
        if stage is not None:
            stage(text)

    top_k = config.evaluate.top_k
    from_ms = parse_time_ms(from_time, "--from")
    to_ms = parse_time_ms(to_time, "--to")
    mapping = load_mapping(mapping_name)
    model, spec, model_windows = _model_and_spec(config, model_name, mapping)
    # A rule naming an unknown feature fails now, not after minutes of Spark.
    compiled = rule_set.compile(list(spec.names)) if rule_set is not None else None
    announce("reading the dataset")
    first_ms, last_ms, _ = time_range(spark, data_path, mapping)
    notes: list[str] = []
    if model_windows is not None:
        baseline_windows = model_windows
    else:
        baseline_windows = time_windows(first_ms, last_ms, config.train, config.features.label_delay_days)
    default_from = model_windows.valid_to_ms if model_windows is not None else first_ms
    from_ms = default_from if from_ms is None else from_ms
    to_ms = last_ms + 1 if to_ms is None else to_ms
    if from_ms >= to_ms:
        raise ConfigError(f"--from {utc_text(from_ms)} is not before --to {utc_text(to_ms)}")
    if from_ms < baseline_windows.valid_to_ms and to_ms > baseline_windows.train_from_ms:
        whose = "the model's" if model_windows is not None else "the logistic regression's"
        notes.append(
            f"the window overlaps {whose} training/validation data ({baseline_windows.describe()}): "
            "figures are optimistic"
        )

    history_ms = int(spec.history_ms)
    if spec.use_card and first_ms > from_ms - history_ms:
        history_days = max(from_ms - first_ms, 0) / DAY_MS
        notes.append(
            f"the file holds {history_days:.1f} days of history before the window, less than the longest card "
            f"window ({history_ms / DAY_MS:g} d): windowed features start partly cold"
        )
    announce(f"computing {len(spec.names)} features with Spark over the whole file")
    needed_from = min(from_ms, baseline_windows.train_from_ms)
    needed_to = max(to_ms, baseline_windows.valid_to_ms)
    table = feature_table(spark, data_path, mapping, spec, lambda t: (t >= needed_from) & (t < needed_to))
    times = table["event_time_ms"].to_numpy(dtype=np.int64)
    window = (times >= from_ms) & (times < to_ms)
    scored = table.loc[window].reset_index(drop=True)
    if scored.empty:
        raise DataError(
            f"{data_path}: no rows in [{utc_text(from_ms)}, {utc_text(to_ms)}); the data covers "
            f"[{utc_text(first_ms)}, {utc_text(last_ms + 1)})"
        )
    labels = scored["label"].to_numpy(dtype=np.int64)
    if labels.sum() == 0:
        notes.append("no fraud in the window: ROC AUC and average precision are undefined")
    X = scored[list(spec.names)].to_numpy(dtype=np.float32)
    cards = card_keys(scored)
    event_times = scored["event_time_ms"].to_numpy(dtype=np.int64)

    def result_for(name: str, version: str, scores: np.ndarray, threshold: float) -> ModelResult:
        metrics = evaluation_metrics(labels, scores, cards, event_times, threshold, top_k)
        per_day = card_precision_at_k(cards, event_times, labels, scores, k=top_k).per_day
        return ModelResult(name, version, threshold, metrics, per_day)

    results: list[ModelResult] = []
    model_scores: np.ndarray | None = None
    if model is not None:
        announce(f"scoring {len(scored):,} rows with {model.version}")
        model_scores = model.score(X)
        results.append(result_for("MLP", model.version, model_scores, model.threshold))

    announce("fitting the logistic-regression baseline")
    baseline_table = table
    training = (model.manifest.get("training") or {}) if model is not None else {}
    source = training.get("dataset_path")
    if (
        not _has_fraud_in(table, baseline_windows)
        and source
        and Path(source).exists()
        and Path(source).resolve() != Path(data_path).resolve()
    ):
        # The evaluated file holds no training rows (e.g. a history/stream split): use the model's.
        announce(f"computing features of the model's training data {source}")
        baseline_table = feature_table(
            spark,
            source,
            load_mapping(str(training.get("dataset_mapping") or mapping_name)),
            spec,
            lambda t: (t >= baseline_windows.train_from_ms) & (t < baseline_windows.valid_to_ms),
        )
        notes.append(f"logistic regression trained on {source}, the model's training data")
    logistic = _logistic_baseline(config, baseline_table, list(spec.names), baseline_windows, top_k, notes)
    logistic_scores = logistic.score(X) if logistic is not None else None
    if logistic is not None and logistic_scores is not None:
        results.append(result_for(LOGISTIC_NAME, "baseline", logistic_scores, logistic.threshold))

    rule_threshold = config.evaluate.amount_rule_threshold
    rule_scores = _rule_scores(scored, list(spec.names), rule_threshold)
    rule_name = f"amount > {rule_threshold:g}"
    results.append(result_for(rule_name, "rules", rule_scores, 0.5))
    if model is None:
        model_scores = rule_scores
    if rule_set is not None and compiled is not None:
        announce(f"backtesting rules {rule_set.version} ({len(rule_set)} rule(s))")
        columns = FrameColumns(_with_fields(spark, data_path, mapping, scored, rule_set.names))
        model_threshold = model.threshold if model is not None else 0.5
        model_label = "MLP" if model is not None else rule_name
        assert model_scores is not None
        alone, combined = backtest_scores(compiled, columns, model_scores, model_threshold)
        results.append(result_for(f"rules {rule_set.version}", "rules", alone, 0.5))
        combined_version = f"{model.version} + rules" if model is not None else "+ rules"
        results.append(result_for(model_label, combined_version, combined, model_threshold))

    days = card_precision_at_k(cards, event_times, labels, rule_scores, k=top_k).days
    report = EvalReport(
        data_path=str(data_path),
        from_ms=from_ms,
        to_ms=to_ms,
        rows=int(labels.size),
        frauds=int(labels.sum()),
        top_k=top_k,
        results=results,
        days=days,
        notes=notes,
    )
    assert model_scores is not None
    if predictions_out is not None:
        report.files.append(write_predictions(scored, model_scores, Path(predictions_out)))
    if plot_dir is not None:
        curves = {}
        if model is not None:
            curves[f"MLP {model.version}"] = model_scores
        if logistic_scores is not None:
            curves[LOGISTIC_NAME] = logistic_scores
        curves[rule_name] = rule_scores
        report.files.extend(plot_curves(labels, curves, Path(plot_dir)))
    return report


def _with_fields(
    spark: Any, data_path: Path | str, mapping: Any, scored: pd.DataFrame, names: set[str]
) -> pd.DataFrame:
    """The scored rows with the transaction fields rules read that the feature table lacks."""
    from fraudkit.data.datasets import load_spark
    from fraudkit.rules.language import NUMBER_FIELDS, TEXT_FIELDS

    missing = sorted(
        name for name in names if name in (*TEXT_FIELDS, *NUMBER_FIELDS) and name not in scored.columns
    )
    if not missing:
        return scored
    fields: Any = load_spark(spark, str(data_path), mapping).select("transaction_id", *missing).toPandas()
    merged = scored.merge(fields.drop_duplicates("transaction_id"), on="transaction_id", how="left")
    return merged.reset_index(drop=True)


def _has_fraud_in(table: pd.DataFrame, windows: TimeWindows) -> bool:
    train_mask, valid_mask = windows.masks(table["event_time_ms"].to_numpy())
    labels = table["label"].to_numpy()
    return bool(labels[train_mask].sum() > 0 and labels[valid_mask].sum() > 0)


def _logistic_baseline(
    config: FraudkitConfig,
    table: pd.DataFrame,
    feature_names: list[str],
    windows: TimeWindows,
    top_k: int,
    notes: list[str],
) -> LoadedModel | None:
    """Logistic regression (the MLP without hidden layers) on the same features and windows."""
    if not _has_fraud_in(table, windows):
        notes.append(
            f"logistic regression skipped: the file has no fraud in its training windows ({windows.describe()})"
        )
        return None
    train_mask, valid_mask = windows.masks(table["event_time_ms"].to_numpy())
    logistic_cfg = config.train.model_copy(update={"hidden_sizes": [], "dropout": 0.0})
    result = fit(table, feature_names, logistic_cfg, train_mask, valid_mask, top_k=top_k)
    return LoadedModel.from_state(
        result.model_state, feature_names, result.normalisation, result.threshold, [], version="logistic"
    )


def _rule_scores(scored: pd.DataFrame, feature_names: list[str], amount_threshold: float) -> np.ndarray:
    """The amount rule's scores, reading the raw `amount` column."""
    if "amount" in feature_names:
        return RuleModel(amount_threshold, feature_names).score(scored[feature_names].to_numpy(np.float64))
    if "amount" in scored.columns:
        return RuleModel(amount_threshold, ["amount"]).score(scored[["amount"]].to_numpy(np.float64))
    raise DataError("the amount rule needs an 'amount' column, which the feature table lacks")


def write_predictions(scored: pd.DataFrame, scores: np.ndarray, path: Path) -> str:
    """transaction_id, score, label as CSV (.csv) or Parquet (anything else)."""
    import pandas as pd

    frame = pd.DataFrame(
        {
            "transaction_id": scored["transaction_id"].astype(str).to_numpy(),
            "score": np.asarray(scores, dtype=np.float64),
            "label": scored["label"].to_numpy(dtype=np.int64),
        }
    )
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix.lower() == ".csv":
            frame.to_csv(path, index=False)
        else:
            frame.to_parquet(path, index=False)
    except OSError as exc:
        raise DataError(f"cannot write predictions to {path}: {exc.strerror or exc}") from None
    return str(path)


def plot_curves(labels: np.ndarray, curves: dict[str, np.ndarray], directory: Path) -> list[str]:
    """Precision-recall and ROC curves of every model as PNG files in `directory`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from fraudkit.model.metrics import average_precision, precision_recall_curve, roc_auc, roc_curve

    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"cannot create plot directory {directory}: {exc.strerror or exc}") from None
    written = []
    figure, axis = plt.subplots(figsize=(6, 5))
    for name, scores in curves.items():
        precision, recall, _ = precision_recall_curve(labels, scores)
        axis.step(
            np.r_[0.0, recall],
            np.r_[1.0, precision],
            where="post",
            label=f"{name} (AP {average_precision(labels, scores):.3f})",
        )
    axis.set(xlabel="recall", ylabel="precision", title="Precision-recall", xlim=(0, 1), ylim=(0, 1.02))
    axis.legend(loc="upper right")
    figure.tight_layout()
    written.append(str(directory / "pr_curve.png"))
    figure.savefig(written[-1], dpi=110)
    plt.close(figure)

    figure, axis = plt.subplots(figsize=(6, 5))
    for name, scores in curves.items():
        fpr, tpr, _ = roc_curve(labels, scores)
        axis.plot(fpr, tpr, label=f"{name} (AUC {roc_auc(labels, scores):.3f})")
    axis.plot([0, 1], [0, 1], linestyle=":", color="grey")
    axis.set(
        xlabel="false positive rate", ylabel="true positive rate", title="ROC", xlim=(0, 1), ylim=(0, 1.02)
    )
    axis.legend(loc="lower right")
    figure.tight_layout()
    written.append(str(directory / "roc_curve.png"))
    figure.savefig(written[-1], dpi=110)
    plt.close(figure)
    return written
