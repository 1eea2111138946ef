"""Quality and speed of `fraudkit train`: MLP vs logistic regression vs the amount rule, and time.

Run: .venv/bin/python benchmarks/bench_train.py [--timing-rows 1000000] [--skip-quality] [--skip-timing]
     [--workdir DIR]

1. Quality: the default simulated dataset (`simulate` defaults: 5000 customers, 90 days, seed 42,
   ~700k transactions) is split by time: training [day 0, day 55), a gap of label_delay (7 d),
   validation [day 62, day 76) for early stopping and the threshold, then a held-out test window
   [day 76, day 90) scored by `evaluate` with the MLP (default train config), the logistic
   regression (same features, windows and protocol, no hidden layer) and the amount rule
   (amount > 900). Checks: MLP > logistic on average precision and card precision@100, and both
   > the amount rule on both.
2. Speed: `train_from_dataset` (Spark features over the whole file + collect + fit + publish) on a
   simulated dataset of at least --timing-rows transactions (more customers, 90 days), default
   config and windows; the Spark session is started before the clock. Target: < 5 minutes.

Exit status 1 when a quality check fails. Figures measured on a busy machine are noisy.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from fraudkit.config import SimulateConfig, load_config
from fraudkit.data.spark import spark_session
from fraudkit.model.metrics import DAY_MS

console = Console()
TARGET_SECONDS = 300.0
DEFAULT_ROWS_PER_CUSTOMER = 708_665 / 5000  # the default world's rows per customer over 90 days


def simulate(path: Path, customers: int) -> tuple[int, int, int]:
    """Write a default-config simulation with `customers` customers; rows, frauds, start ms."""
    from fraudkit.data.simulate import simulate_to_file

    terminals = max(10_000, customers * 2)
    summary = simulate_to_file(SimulateConfig(customers=customers, terminals=terminals, out=path))
    return summary.rows, summary.frauds, summary.start_ms


def quality(workdir: Path, spark: object) -> bool:
    """Train on the default dataset and evaluate on a held-out window; print the table."""
    from fraudkit.model.evaluate import evaluate_model
    from fraudkit.model.train import train_from_dataset
    from fraudkit.timefmt import utc_text

    data = workdir / "default.parquet"
    rows, frauds, start_ms = simulate(data, 5000)
    day0 = start_ms // DAY_MS * DAY_MS
    console.print(f"default simulated dataset: {rows:,} transactions, {frauds:,} frauds")
    config = load_config(
        None,
        {
            "registry.path": str(workdir / "models-quality"),
            "train.train_to": utc_text(day0 + 55 * DAY_MS),
            "train.valid_days": 14,
        },
        environ={},
    )
    started = time.perf_counter()
    report = train_from_dataset(config, data, "fraudkit", spark)
    console.print(
        f"trained {report.version} in {time.perf_counter() - started:.1f} s "
        f"({report.windows.describe()}; best epoch {report.metrics['best_epoch']})"
    )
    evaluation = evaluate_model(
        config, data, "current", "fraudkit", spark, from_time=day0 + 76 * DAY_MS, to_time=day0 + 90 * DAY_MS
    )
    k = evaluation.top_k
    table = Table(
        title=f"held-out [{utc_text(evaluation.from_ms)}, {utc_text(evaluation.to_ms)}): "
        f"{evaluation.rows:,} transactions, {evaluation.frauds:,} frauds",
        title_justify="left",
    )
    table.add_column("model")
    for header in ("ROC AUC", "AP", f"card P@{k}", "precision", "recall", "F1"):
        table.add_column(header, justify="right")
    for result in evaluation.results:
        m = result.metrics
        table.add_row(
            result.name,
            *[
                f"{m[key]:.4f}"
                for key in (
                    "roc_auc",
                    "average_precision",
                    f"card_precision@{k}",
                    "precision",
                    "recall",
                    "f1",
                )
            ],
        )
    console.print(table)
    for note in evaluation.notes:
        console.print(f"note: {note}")
    mlp, logistic, rule = evaluation.results
    checks = []
    for key, label in (("average_precision", "AP"), (f"card_precision@{k}", f"card precision@{k}")):
        checks.append((f"MLP > logistic regression on {label}", mlp.metrics[key] > logistic.metrics[key]))
        checks.append((f"MLP > amount rule on {label}", mlp.metrics[key] > rule.metrics[key]))
        checks.append(
            (f"logistic regression > amount rule on {label}", logistic.metrics[key] > rule.metrics[key])
        )
    for text, passed in checks:
        console.print(f"{'PASS' if passed else 'FAIL'}  {text}")
    return all(passed for _, passed in checks)


def timing(workdir: Path, spark: object, target_rows: int) -> None:
    """Time train_from_dataset on at least `target_rows` transactions."""
    from fraudkit.model.train import train_from_dataset

    customers = math.ceil(target_rows / DEFAULT_ROWS_PER_CUSTOMER * 1.02)
    data = workdir / "timing.parquet"
    rows, frauds, _ = simulate(data, customers)
    config = load_config(None, {"registry.path": str(workdir / "models-timing")}, environ={})
    started = time.perf_counter()
    report = train_from_dataset(config, data, "fraudkit", spark)
    elapsed = time.perf_counter() - started
    timings = report.timings
    console.print(
        f"training on {rows:,} transactions ({frauds:,} frauds, {customers:,} customers), features included: "
        f"{elapsed:.1f} s (features + collect {timings['features_s']:.1f} s, fit {timings['fit_s']:.1f} s "
        f"for {report.metrics['epochs_run']} epochs on {report.metrics['train_rows']:,} rows); "
        f"target < {TARGET_SECONDS:.0f} s: {'PASS' if elapsed < TARGET_SECONDS else 'FAIL'}"
    )
    console.print(f"validation AP {report.metrics['average_precision']:.4f}")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--timing-rows", type=int, default=1_000_000)
    parser.add_argument("--skip-quality", action="store_true")
    parser.add_argument("--skip-timing", action="store_true")
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    config = load_config(None, {}, environ={})
    conf = {"spark.ui.showConsoleProgress": "false", **config.spark.conf}
    started = time.perf_counter()
    spark = spark_session(config.spark.model_copy(update={"conf": conf}))
    console.print(f"Spark session ({config.spark.master}) started in {time.perf_counter() - started:.1f} s")
    with tempfile.TemporaryDirectory(prefix="bench-train-") as scratch:
        workdir = args.workdir or Path(scratch)
        workdir.mkdir(parents=True, exist_ok=True)
        passed = True
        if not args.skip_quality:
            passed = quality(workdir, spark)
        if not args.skip_timing:
            timing(workdir, spark, args.timing_rows)
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
