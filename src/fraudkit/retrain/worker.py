"""The retraining process: Spark joins the feature log's labels to its logged rows, PyTorch trains a challenger, the challenger
meets the champion on the most recent labelled rows it did not train on, and the winner is recorded.

The detector runs it as `python -m fraudkit.retrain.worker JOB_DIR` in its own process group at a
lower CPU priority (scoring keeps its core); it reads JOB_DIR/job.json and writes
JOB_DIR/result.json atomically. A result is always written for errors it can name (no data,
diverged training, ...); a crash leaves no result and the detector reports the exit code and log.

The window: Spark joins each logged label to its transaction's logged row (one of each per
transaction, however late the label came and whoever scored it: `read_window`; or, with
`retrain.window_reader: arrow`, pyarrow in this process, newest event day first:
`read_window_arrow`), keeps the most recent
`retrain.window_rows` by event time, then in time order the oldest part trains, the next
`holdout_fraction` of it validates (early stopping and threshold, as in `fraudkit train`), and
the most recent `holdout_fraction` of the window is held out for champion/challenger.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fraudkit.config import FraudkitConfig, SparkConfig
from fraudkit.errors import DataError, FraudkitError
from fraudkit.files import write_bytes_atomic

if TYPE_CHECKING:
    import pandas as pd

    from fraudkit.detect import Scorer
    from fraudkit.model.train import EpochReport, FitResult
    from fraudkit.retrain.feature_log import FeatureLog, LogFile

JOB_FILE = "job.json"
RESULT_FILE = "result.json"
LOG_FILE = "worker.log"
WORKER_NICENESS = 10
WORKER_JVM_OPTIONS = "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC -XX:ActiveProcessorCount=1"
PARENT_CHECK_S = 1.0


def lower_priority(pid: int = 0) -> None:
    """Let process `pid` (0: this one; with the JVM it starts) run only on CPU time the detector leaves over.

    SCHED_IDLE (Linux) lets any waking scorer, broker or producer thread take the core at once; a
    positive nice value alone still shares it (p99 about 3x the control while retraining, measured).
    The detector calls it on the worker right after starting it (the interpreter's start-up and the
    worker's imports, ~0.3 s of CPU, would otherwise run at its own priority); the worker calls it
    again on itself, for a worker started by other means. Idempotent.
    """
    with contextlib.suppress(OSError):
        current = os.getpriority(os.PRIO_PROCESS, pid)
        os.setpriority(os.PRIO_PROCESS, pid, max(current, WORKER_NICENESS))
    if hasattr(os, "sched_setscheduler") and hasattr(os, "SCHED_IDLE"):
        with contextlib.suppress(OSError):
            os.sched_setscheduler(pid, os.SCHED_IDLE, os.sched_param(0))


def confine_to_cpus(cpus: Sequence[int], pid: int = 0) -> str | None:
    """Keep process `pid` (0: this one) and what it starts later on `cpus` (retrain.worker_cpus).

    Returns why it could not (CPUs this machine or its cpuset does not offer), or None. Threads
    and processes started afterwards (the Spark JVM, torch's and pyarrow's pools) inherit it.
    """
    if not cpus:
        return None
    try:
        os.sched_setaffinity(pid, cpus)
    except (OSError, AttributeError) as exc:
        return f"cannot run on CPUs {list(cpus)}: {exc.strerror if isinstance(exc, OSError) else exc}"
    return None


# The share is kept over short stretches: what the process saves while it waits (on the JVM, on a
# file) is not spent afterwards as a burst at full speed, the burst being what delays a scorer.
BUDGET_BURST_S = 0.02


class CpuBudget:
    """Holds the retraining's Python side to `share` of one CPU (retrain.worker_cpu_share) while active.

    SCHED_IDLE alone leaves the retraining every CPU cycle the detector does not use, and on a
    busy machine a runnable retraining still delays a waking scorer thread up to the scheduler's
    tick (docs/retraining.md; bench_retrain.py's figures with and without it are in the README).
    Python work calls `pace()` between steps (each import, each file read, each training step): it
    sleeps while this process is ahead of its share. A share of 1 does nothing. The Spark JVM is
    not paced: stopped and continued in turns (SIGSTOP/SIGCONT, a fifth of every 50 ms running)
    its window read took 231 s instead of 11-14 s and the p99 got worse (3.70x, measured).
    """

    def __init__(
        self,
        share: float,
        clock: Callable[[], float] = time.monotonic,
        cpu_time: Callable[[], float] = time.process_time,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.share = share
        self.slept_s = 0.0
        self._clock, self._cpu_time, self._sleep = clock, cpu_time, sleep
        self._tokens = BUDGET_BURST_S
        self._wall, self._cpu = clock(), cpu_time()
        self._finder = _PacedImports(self.pace)

    def pace(self) -> None:
        """Sleep as long as this process has used more than its share (the tokens it had, at most BUDGET_BURST_S)."""
        if self.share >= 1:
            return
        wall, cpu = self._clock(), self._cpu_time()
        self._tokens = min(BUDGET_BURST_S, self._tokens + (wall - self._wall) * self.share) - (
            cpu - self._cpu
        )
        self._wall, self._cpu = wall, cpu
        if self._tokens < 0:
            pause = -self._tokens / self.share
            self._sleep(pause)
            self.slept_s += pause
            self._tokens = 0.0
            self._wall, self._cpu = self._clock(), self._cpu_time()

    @contextlib.contextmanager
    def active(self) -> Iterator[CpuBudget]:
        """Pace every import inside the block."""
        if self.share >= 1:
            yield self
            return
        sys.meta_path.insert(0, self._finder)
        try:
            yield self
        finally:
            with contextlib.suppress(ValueError):
                sys.meta_path.remove(self._finder)


class _PacedImports:
    """A meta-path finder that finds nothing: it paces each import (torch's are ~2 s of CPU)."""

    def __init__(self, pace: Callable[[], None]) -> None:
        self._pace = pace

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> None:
        self._pace()


class RetrainFailed(DataError):
    """A retraining that cannot produce a comparable challenger (too little data, diverged, ...)."""


@dataclass(frozen=True)
class WindowSplit:
    """Row ranges of a time-ordered window: [0, valid_start) trains, then validation, then holdout."""

    rows: int
    valid_start: int
    holdout_start: int

    def masks(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Boolean masks of the training, validation and held-out rows."""
        position = np.arange(self.rows)
        train = position < self.valid_start
        valid = (position >= self.valid_start) & (position < self.holdout_start)
        return train, valid, position >= self.holdout_start

    @property
    def counts(self) -> dict[str, int]:
        """Rows per part."""
        return {
            "window": self.rows,
            "train": self.valid_start,
            "valid": self.holdout_start - self.valid_start,
            "holdout": self.rows - self.holdout_start,
        }


def split_window(rows: int, holdout_fraction: float) -> WindowSplit:
    """Time-ordered split: the newest `holdout_fraction` is held out, the newest share of the rest validates."""
    holdout = max(1, math.ceil(rows * holdout_fraction))
    before = rows - holdout
    valid = max(1, math.ceil(before * holdout_fraction))
    if before - valid < 1:
        raise RetrainFailed(f"{rows} labelled row(s) are too few to train, validate and hold out")
    return WindowSplit(rows, before - valid, before)


def decide(
    metric: str, challenger: float, champion: float, min_improvement: float, champion_version: str
) -> tuple[bool, str]:
    """Champion/challenger: the challenger wins only if it beats the champion by more than min_improvement."""
    champion_value = champion if math.isfinite(champion) else -math.inf
    margin = challenger - champion_value
    comparison = f"{metric} {challenger:.4f} vs {champion_version} {champion:.4f}"
    if margin > min_improvement:
        return True, f"{comparison}: better by {margin:.4f} (> {min_improvement:g})"
    return False, f"{comparison}: not better by more than {min_improvement:g}"


@dataclass
class Contest:
    """A trained challenger and both models' figures on the held-out rows."""

    fit: FitResult
    split: WindowSplit
    metric: str
    challenger_metrics: dict[str, Any]
    champion_metrics: dict[str, Any]
    accepted: bool
    reason: str


def _diverging(report: EpochReport) -> None:
    if not math.isfinite(report.loss):
        raise RetrainFailed(
            f"training diverged: the loss is {report.loss} at epoch {report.epoch}/{report.epochs} "
            "(lower train.learning_rate)"
        )


def run_contest(
    table: pd.DataFrame,
    feature_names: Sequence[str],
    config: FraudkitConfig,
    champion: Scorer,
    progress: Callable[[EpochReport], None] | None = None,
    pace: Callable[[], None] | None = None,
) -> Contest:
    """Train a challenger on the window (train.fit, retrain.epochs) and judge it against the champion.

    `table` is time-ordered and holds transaction_id, event_time_ms, card_id, label and the features.
    `pace` is called after every training step (CpuBudget.pace).
    """
    from fraudkit.model.network import LoadedModel
    from fraudkit.model.train import card_keys, evaluation_metrics, fit

    retrain = config.retrain
    names = list(feature_names)
    split = split_window(len(table), retrain.holdout_fraction)
    train_mask, valid_mask, holdout_mask = split.masks()
    holdout_labels = table["label"].to_numpy(dtype=np.int64)[holdout_mask]
    if not 0 < int(holdout_labels.sum()) < holdout_labels.size:
        raise RetrainFailed(
            f"the {holdout_labels.size} most recent labelled rows (the holdout) hold "
            f"{int(holdout_labels.sum())} fraud(s): champion and challenger cannot be compared"
        )

    def watch(report: EpochReport) -> None:
        _diverging(report)
        if progress is not None:
            progress(report)

    train_config = config.train.model_copy(update={"epochs": retrain.epochs})
    result = fit(table, names, train_config, train_mask, valid_mask, watch, config.evaluate.top_k, pace)
    challenger = LoadedModel.from_state(
        result.model_state, names, result.normalisation, result.threshold, config.train.hidden_sizes
    )
    holdout = table.loc[holdout_mask]
    X = holdout[names].to_numpy(dtype=np.float32)
    cards = card_keys(holdout)
    times = holdout["event_time_ms"].to_numpy(dtype=np.int64)
    challenger_scores = challenger.score(X)
    if not np.all(np.isfinite(challenger_scores)):
        raise RetrainFailed("training diverged: the challenger's scores are not finite")
    champion_scores = np.asarray(champion.score(X), dtype=np.float64)
    top_k = config.evaluate.top_k
    challenger_metrics = evaluation_metrics(
        holdout_labels, challenger_scores, cards, times, result.threshold, top_k
    )
    champion_metrics = evaluation_metrics(
        holdout_labels, champion_scores, cards, times, champion.threshold, top_k
    )
    accepted, reason = decide(
        retrain.metric,
        float(challenger_metrics[retrain.metric]),
        float(champion_metrics[retrain.metric]),
        retrain.min_improvement,
        champion.version,
    )
    # A challenger that alerts on a large share of traffic swamps analysts (and the detector's
    # reason codes) even when its ranking metric looks better.
    flagged_share = float(np.mean(challenger_scores >= result.threshold))
    challenger_metrics["flagged_share"] = flagged_share
    if accepted and flagged_share > retrain.max_flagged_share:
        accepted = False
        reason = (
            f"{reason}; but it flags {flagged_share:.1%} of the holdout "
            f"(> retrain.max_flagged_share {retrain.max_flagged_share:.1%})"
        )
    return Contest(result, split, retrain.metric, challenger_metrics, champion_metrics, accepted, reason)


def load_champion(config: FraudkitConfig, version: str, feature_names: Sequence[str]) -> Scorer:
    """The serving model to beat: a registry version, or the amount rule."""
    if version == "rules":
        from fraudkit.model.network import RuleModel

        return RuleModel(config.detect.amount_rule_threshold, feature_names)
    from fraudkit.errors import ModelError
    from fraudkit.model.registry import Registry

    model = Registry(config.registry.path).load(version)
    if list(model.feature_names) != list(feature_names):
        raise ModelError(f"champion {version}: its features differ from the feature log's")
    return model


def worker_spark_config(config: FraudkitConfig) -> SparkConfig:
    """The configured Spark settings, with a local master narrowed to retrain.worker_threads cores."""
    spark = config.spark
    conf = {"spark.sql.files.ignoreMissingFiles": "true", **spark.conf}
    # A short-lived JVM: the C1 compiler only and a serial collector start faster and leave the
    # scorer's cores alone (measured ~30% less wall time for start-up plus the window query).
    java_options = ["-Duser.timezone=UTC", WORKER_JVM_OPTIONS, conf.get("spark.driver.extraJavaOptions", "")]
    conf["spark.driver.extraJavaOptions"] = " ".join(option for option in java_options if option)
    update: dict[str, Any] = {"conf": conf}
    if spark.master.startswith("local"):
        threads = config.retrain.worker_threads
        update["master"] = f"local[{threads}]"
        update["shuffle_partitions"] = min(spark.shuffle_partitions, max(2, 2 * threads))
    return spark.model_copy(update=update)


def _read_log(spark: Any, path: str, schema_file: str | None) -> Any:
    """A feature-log directory as a Spark DataFrame, its schema taken from schema_file when given.

    Inferred from the files Spark samples, a schema can come from none: a day directory pruned
    (by a detector, behind the horizon) between Spark's listing and its footer reads left nothing
    to infer from (UNABLE_TO_INFER_SCHEMA, seen in a demo). The newest file's day is never pruned.
    Files missing at read time are skipped (spark.sql.files.ignoreMissingFiles).
    """
    reader = spark.read.option("basePath", path)
    if schema_file is not None:
        reader = reader.schema(spark.read.parquet(schema_file).schema)
    return reader.parquet(path)


def read_window(
    spark: Any,
    rows_path: str,
    labels_path: str,
    feature_names: Sequence[str],
    window_rows: int,
    schema_files: tuple[str, str] | None = None,
) -> pd.DataFrame:
    """The most recent `window_rows` logged rows that have a label (one per transaction), oldest first.

    The join of the feature log (`fraudkit.retrain.feature_log`) in Spark: however late a label came
    and whichever detector scored its transaction. A transaction scored twice (an at-least-once
    replay) keeps its latest row; a label logged by several detectors counts once.
    """
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    from fraudkit.model.train import KEY_COLUMNS

    rows_schema, labels_schema = schema_files or (None, None)
    rows = _read_log(spark, rows_path, rows_schema).drop("day")
    labels = _read_log(spark, labels_path, labels_schema).where(F.col("label").isin(0, 1))
    newest_row = Window.partitionBy("transaction_id").orderBy(F.col("scored_ms").desc(), F.col("detector"))
    rows = rows.withColumn("_rank", F.row_number().over(newest_row)).where(F.col("_rank") == 1).drop("_rank")
    newest_label = Window.partitionBy("transaction_id").orderBy(
        F.col("labelled_ms").desc_nulls_last(), F.col("detector")
    )
    labels = (
        labels.withColumn("_rank", F.row_number().over(newest_label))
        .where(F.col("_rank") == 1)
        .select("transaction_id", "label")
    )
    joined = rows.join(labels, "transaction_id", "inner")
    newest = joined.orderBy(F.col("event_time_ms").desc(), F.col("transaction_id").desc()).limit(window_rows)
    table = newest.select(*KEY_COLUMNS, *feature_names).toPandas()
    table["label"] = table["label"].astype(np.int64)
    return table.sort_values(["event_time_ms", "transaction_id"], kind="mergesort").reset_index(drop=True)


def _read_day(
    log_store: FeatureLog,
    files: Sequence[LogFile],
    only_ids: Any = None,
    pace: Callable[[], None] = lambda: None,
) -> pd.DataFrame | None:
    """One day's files of the log as one frame (rows of `only_ids` only, when given); None if none is left.

    A file deleted meanwhile (its day pruned behind the horizon) is skipped, as Spark's
    ignoreMissingFiles does. Filtered file by file, so a day's unlabelled rows are never all in memory.
    """
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    tables = []
    for item in files:
        pace()
        try:
            table = pq.read_table(item.path, filesystem=log_store.fs)
        except FileNotFoundError:
            continue
        if only_ids is not None:
            table = table.filter(pc.is_in(table["transaction_id"], value_set=only_ids))
        tables.append(table)
    if not tables:
        return None
    return pa.concat_tables(tables).to_pandas()


def _files_by_day(files: Sequence[LogFile]) -> dict[str, list[LogFile]]:
    by_day: dict[str, list[LogFile]] = {}
    for item in files:
        by_day.setdefault(item.day, []).append(item)
    return by_day


def read_window_arrow(
    log_store: FeatureLog,
    row_files: Sequence[LogFile],
    label_files: Sequence[LogFile],
    feature_names: Sequence[str],
    window_rows: int,
    pace: Callable[[], None] = lambda: None,
) -> pd.DataFrame:
    """`read_window`'s window, read in this process with pyarrow: no JVM, for a log one machine can read.

    row_files, label_files: the log's listing (`FeatureLog.files`), taken once by the caller.
    `pace` is called before every file is read (CpuBudget.pace).

    Labels are logged under their transaction's event day (`Label.event_time_ms`), as its rows are,
    so day d's labels join day d's rows; days are read newest first until the window is full, so
    memory holds one day's labels and the labelled rows of the days read, however long the log.
    The same rules as the Spark join: a transaction's latest row (scored_ms, then detector), its
    latest label (labelled_ms, unset last, then detector), labels 0 or 1 only. Unlike it, a label
    whose event_time_ms is not its transaction's finds no row (tests compare the two windows).
    """
    import pandas as pd
    import pyarrow as pa

    from fraudkit.model.train import KEY_COLUMNS

    rows_by_day, labels_by_day = _files_by_day(row_files), _files_by_day(label_files)
    columns = [*KEY_COLUMNS, *feature_names]
    joined: list[pd.DataFrame] = []
    found = 0
    for day in sorted(set(rows_by_day) & set(labels_by_day), reverse=True):
        labels = _read_day(log_store, labels_by_day[day], pace=pace)
        if labels is None:
            continue
        labels = labels[labels["label"].isin([0, 1])]
        labels = labels.sort_values(
            ["labelled_ms", "detector"], ascending=[False, True], na_position="last", kind="mergesort"
        ).drop_duplicates("transaction_id")
        rows = _read_day(log_store, rows_by_day[day], pa.array(labels["transaction_id"], pa.string()), pace)
        if rows is None or rows.empty:
            continue
        rows = rows.sort_values(["scored_ms", "detector"], ascending=[False, True], kind="mergesort")
        rows = rows.drop_duplicates("transaction_id")
        day_window = rows.merge(labels[["transaction_id", "label"]], on="transaction_id", how="inner")
        joined.append(day_window[columns])
        found += len(day_window)
        if found >= window_rows:
            break
    if not joined:
        return pd.DataFrame({name: [] for name in columns})
    table = pd.concat(joined, ignore_index=True)
    table = table.sort_values(["event_time_ms", "transaction_id"], ascending=False, kind="mergesort")
    table = table.head(window_rows).copy()
    table["label"] = table["label"].astype(np.int64)
    return table.sort_values(["event_time_ms", "transaction_id"], kind="mergesort").reset_index(drop=True)


def run_job(job: dict[str, Any], log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run one retraining job (window, fit, champion/challenger, registry); returns its result.

    Its Python side within retrain.worker_cpu_share of one CPU (CpuBudget); the Spark JVM is not paced.
    """
    config = FraudkitConfig.model_validate(job["config"])
    budget = CpuBudget(config.retrain.worker_cpu_share)
    if budget.share < 1:
        log(f"retraining within {budget.share:.0%} of one CPU (retrain.worker_cpu_share)")
    with budget.active():
        return _run_job(job, config, log, budget)


def _run_job(
    job: dict[str, Any], config: FraudkitConfig, log: Callable[[str], None], budget: CpuBudget
) -> dict[str, Any]:
    from fraudkit.data.spark import spark_session
    from fraudkit.model.registry import Registry
    from fraudkit.model.train import data_fingerprint, drift_reference
    from fraudkit.retrain.feature_log import FeatureLog

    started = time.perf_counter()
    timings: dict[str, float] = {}
    retrain = config.retrain
    spec = dict(job["spec"])
    names = [str(name) for name in spec["names"]]
    champion_version = str(job["champion_version"])
    result: dict[str, Any] = {
        "champion_version": champion_version,
        "metric": retrain.metric,
        "min_improvement": retrain.min_improvement,
    }
    champion = load_champion(config, champion_version, names)
    log_store = FeatureLog(retrain.feature_log_url, spec, str(job.get("trainer", "")))
    row_files, label_files = log_store.files("rows"), log_store.files("labels")
    if not row_files or not label_files:
        raise RetrainFailed(
            f"the feature log {log_store.url} holds no {'scored rows' if not row_files else 'labels'} yet"
        )
    result["buffer"] = {
        "row_files": len(row_files),
        "logged_rows": sum(item.rows for item in row_files),
        "label_files": len(label_files),
        "logged_labels": sum(item.rows for item in label_files),
    }

    if retrain.window_reader == "arrow":
        import pyarrow as pa

        pa.set_cpu_count(retrain.worker_threads)
        phase = time.perf_counter()
        table = read_window_arrow(log_store, row_files, label_files, names, retrain.window_rows, budget.pace)
        timings["read_s"] = time.perf_counter() - phase
    else:
        phase = time.perf_counter()
        spark = spark_session(worker_spark_config(config), app_name="fraudkit-retrain")
        timings["spark_start_s"] = time.perf_counter() - phase
        try:
            phase = time.perf_counter()
            table = read_window(
                spark,
                log_store.spark_path("rows"),
                log_store.spark_path("labels"),
                names,
                retrain.window_rows,
                (log_store.spark_url(row_files[-1].path), log_store.spark_url(label_files[-1].path)),
            )
            timings["read_s"] = time.perf_counter() - phase
        finally:
            spark.stop()
    if table.empty:
        raise RetrainFailed(f"no label in the feature log {log_store.url} matches a logged row yet")
    log(f"window: {len(table):,} labelled rows ({int(table['label'].sum()):,} frauds)")

    import torch

    torch.set_num_threads(retrain.worker_threads)
    phase = time.perf_counter()
    contest = run_contest(
        table,
        names,
        config,
        champion,
        lambda report: log(
            f"epoch {report.epoch}/{report.epochs}: loss {report.loss:.5f}, valid AP {report.valid_ap:.4f}"
        ),
        budget.pace,
    )
    timings["fit_s"] = time.perf_counter() - phase
    result["rows"] = contest.split.counts
    result["metrics"] = contest.challenger_metrics
    result["champion_metrics"] = contest.champion_metrics
    result["reason"] = contest.reason
    train_mask, valid_mask, _ = contest.split.masks()
    trainer = f"fraudkit detect {job.get('trainer', '')}".strip()
    first_ms = int(table["event_time_ms"].iloc[0])
    last_ms = int(table["event_time_ms"].iloc[-1])
    training = {
        "source": "live retraining",
        "feature_log": log_store.url,
        "window": {"first_event_ms": first_ms, "last_event_ms": last_ms, **contest.split.counts},
        "champion_version": champion_version,
        "champion_metrics": contest.champion_metrics,
        "validation_metrics": dict(contest.fit.metrics),
        "metric": retrain.metric,
        "min_improvement": retrain.min_improvement,
        "decision": contest.reason,
        "history": contest.fit.history,
        "config": config.train.model_dump(mode="json") | {"epochs": retrain.epochs},
    }
    fields: dict[str, Any] = {
        "feature_names": names,
        "hidden_sizes": config.train.hidden_sizes,
        "dropout": config.train.dropout,
        "normalisation": contest.fit.normalisation,
        "threshold": contest.fit.threshold,
        "metrics": contest.challenger_metrics,
        "feature_spec": spec,
        "dropped_features": dict(spec.get("dropped") or {}),
        "data_fingerprint": data_fingerprint(table.loc[train_mask | valid_mask], names),
        "training": training,
        "trainer": trainer,
        "drift_reference": drift_reference(table.loc[train_mask | valid_mask], names, contest.fit, config),
    }
    phase = time.perf_counter()
    registry = Registry(config.registry.path)
    if contest.accepted:
        result["version"] = registry.publish(contest.fit.model_state, promote=True, **fields)
        result["outcome"] = "published"
    else:
        result["version"] = registry.record_rejected(contest.fit.model_state, reason=contest.reason, **fields)
        result["outcome"] = "rejected"
    timings["publish_s"] = time.perf_counter() - phase
    timings["paced_s"] = budget.slept_s
    timings["total_s"] = time.perf_counter() - started
    result["timings"] = timings
    return result


def _watch_parent(parent: int) -> None:
    """Exit if the detector that started this job dies: an orphan must not publish behind its back."""

    def watch() -> None:
        while True:
            time.sleep(PARENT_CHECK_S)
            if os.getppid() != parent:
                os._exit(3)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def write_result(job_dir: Path, result: dict[str, Any]) -> None:
    """result.json, written atomically (temporary file, then rename)."""
    from fraudkit.model.registry import jsonable

    write_bytes_atomic(job_dir / RESULT_FILE, json.dumps(jsonable(result), allow_nan=False).encode())


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the retraining process: JOB_DIR in, JOB_DIR/result.json out."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        print("usage: python -m fraudkit.retrain.worker JOB_DIR", file=sys.stderr)
        return 2
    job_dir = Path(args[0])
    lower_priority()
    _watch_parent(os.getppid())
    started = time.perf_counter()

    def log(message: str) -> None:
        print(f"[retrain {time.perf_counter() - started:7.1f}s] {message}", flush=True)

    try:
        job = json.loads((job_dir / JOB_FILE).read_text())
        result = run_job(job, log)
    except FraudkitError as exc:
        result = {"outcome": "failed", "error": str(exc)}
    except Exception as exc:
        traceback.print_exc()
        result = {"outcome": "failed", "error": f"{type(exc).__name__}: {exc}"}
    result.setdefault("seconds", time.perf_counter() - started)
    log(f"{result['outcome']}: {result.get('reason') or result.get('error') or ''}")
    write_result(job_dir, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
