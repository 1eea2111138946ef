"""Live retraining logic: the feature log and its Spark join, triggers, the trainer lock, champion/challenger."""

from __future__ import annotations

import math
import os
import re
import sys
import threading
import time
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import pytest

from fraudkit.config import FeaturesConfig, FraudkitConfig, load_config
from fraudkit.detect import ModelHolder
from fraudkit.errors import ConfigError, DataError
from fraudkit.features import FeatureSpec
from fraudkit.model.network import RuleModel
from fraudkit.retrain import extension
from fraudkit.retrain.extension import (
    MODEL_PUBLISHED,
    RETRAIN_CANCELLED,
    RETRAIN_FAILED,
    DriftTrigger,
    RetrainExtension,
    RetrainJob,
    RetrainPolicy,
    TrainerLock,
    control_message,
    outcome_summary,
)
from fraudkit.retrain.feature_log import FeatureLog
from fraudkit.retrain.worker import (
    BUDGET_BURST_S,
    CpuBudget,
    RetrainFailed,
    decide,
    read_window,
    read_window_arrow,
    run_contest,
    split_window,
)
from fraudkit.schema import Label, Transaction

START_MS = 1_767_225_600_000


def overridden(config: FraudkitConfig, overrides: dict[str, Any]) -> FraudkitConfig:
    data = config.model_dump(mode="json")
    for dotted, value in overrides.items():
        *parents, leaf = dotted.split(".")
        node = data
        for part in parents:
            node = node[part]
        node[leaf] = value
    return FraudkitConfig.model_validate(data)


def transactions(start: int, count: int) -> list[Transaction]:
    return [
        Transaction(
            transaction_id=f"tx-{i:05d}",
            event_time_ms=START_MS + i * 1000,
            card_id=f"card-{i % 7}",
            amount=float(i),
        )
        for i in range(start, start + count)
    ]


def features_of(txs: list[Transaction]) -> np.ndarray:
    """Two columns that identify the row: its index and its double."""
    index = np.array([int(tx.transaction_id[3:]) for tx in txs], dtype=np.float32)
    return np.stack([index, 2 * index], axis=1)


def label(index: int, value: int, labelled_ms: int | None = None) -> Label:
    return Label(
        transaction_id=f"tx-{index:05d}",
        event_time_ms=START_MS + index * 1000,
        label=value,
        labelled_ms=labelled_ms,
    )


# -- the feature log -----------------------------------------------------------------------

LOG_SPEC = {"names": ["index", "double"], "version": 1}
DAY_MS = 86_400_000


@pytest.fixture(params=["directory", "file-url"])
def log_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """retrain.feature_log_url as a plain directory and as a file:// URL of the same directory."""
    return str(tmp_path) if request.param == "directory" else tmp_path.as_uri()


def test_rows_and_labels_are_logged_by_event_day_and_shared_by_detectors(
    log_url: str, tmp_path: Path
) -> None:
    first = FeatureLog(log_url, LOG_SPEC, "host-1", flush_batches=2, flush_s=60)
    second = FeatureLog(log_url, LOG_SPEC, "host/2", flush_batches=2, flush_s=60)
    rows = transactions(0, 10)
    late = [
        Transaction(transaction_id="tx-late", event_time_ms=START_MS + DAY_MS + 5, card_id="c", amount=1.0)
    ]
    first.add_rows(rows, features_of(rows), np.linspace(0, 1, 10), "v1", 111)
    assert not first.due()  # one batch of two
    first.add_rows(late, np.array([[7.0, 14.0]], dtype=np.float32), np.array([0.5]), "v2", 222)
    assert first.due()
    first.write(*first.take())
    second.add_labels([label(3, 1, labelled_ms=999), label(4, 0)])
    second.write(*second.take())

    row_files = first.files("rows")
    assert [(f.day, f.detector, f.rows) for f in row_files] == [
        ("2026-01-01", "host-1", 10),
        ("2026-01-02", "host-1", 1),
    ]
    label_files = first.files("labels")  # one directory for every detector and spec
    assert [(f.day, f.detector, f.rows) for f in label_files] == [("2026-01-01", "host_2", 2)]
    table = pd.read_parquet(row_files[0].path)
    assert table["transaction_id"].tolist() == [tx.transaction_id for tx in rows]
    assert table["double"].tolist() == [2.0 * i for i in range(10)]
    assert set(table["model_version"]) == {"v1"} and set(table["scored_ms"]) == {111}
    labels = pd.read_parquet(label_files[0].path)
    assert labels["label"].tolist() == [1, 0] and labels["labelled_ms"].tolist()[0] == 999
    assert first.take() == (None, None)
    # A file:// URL names the same directory: the files are where a plain path would put them.
    on_disk = sorted(str(path.relative_to(tmp_path)) for path in tmp_path.rglob("*.parquet"))
    assert on_disk == sorted(str(Path(f.path).relative_to(tmp_path)) for f in [*row_files, *label_files])
    assert on_disk[0].startswith("labels/day=2026-01-01/") and len(on_disk) == 3


def test_days_older_than_the_horizon_leave_the_log(log_url: str, tmp_path: Path) -> None:
    log = FeatureLog(log_url, LOG_SPEC, "d", flush_batches=1, horizon_days=2)
    for day in range(5):
        rows = [
            Transaction(
                transaction_id=f"tx-{day}", event_time_ms=START_MS + day * DAY_MS, card_id="c", amount=1.0
            )
        ]
        log.add_rows(rows, np.zeros((1, 2), dtype=np.float32), np.zeros(1), "v1", 0)
        log.add_labels([Label(f"tx-{day}", START_MS + day * DAY_MS, 0)])
        log.write(*log.take())
    assert [f.day for f in log.files("rows")] == ["2026-01-03", "2026-01-04", "2026-01-05"]
    assert [f.day for f in log.files("labels")] == ["2026-01-03", "2026-01-04", "2026-01-05"]
    assert log.days_deleted == 4
    assert sorted(path.name for path in (tmp_path / "labels").iterdir()) == [
        "day=2026-01-03",
        "day=2026-01-04",
        "day=2026-01-05",
    ]


def test_the_log_is_flushed_after_its_interval(tmp_path: Path) -> None:
    log = FeatureLog(str(tmp_path), LOG_SPEC, "d", flush_batches=100, flush_s=0.05)
    assert not log.due()  # nothing buffered
    log.add_labels([label(1, 0)])
    assert not log.due(time.monotonic())
    assert log.due(time.monotonic() + 0.1)


def test_the_log_refuses_feature_names_that_clash_with_its_columns(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="score"):
        FeatureLog(str(tmp_path), {"names": ["amount", "score"]}, "d")


@pytest.mark.spark
def test_the_spark_join_takes_late_labels_from_any_detector_once(log_url: str, spark: Any) -> None:
    scorer = FeatureLog(log_url, LOG_SPEC, "scorer")
    rows = transactions(0, 6)
    scorer.add_rows(rows, features_of(rows), np.zeros(6), "v1", 100)
    # tx-00002 re-scored after an at-least-once replay: its newer row counts.
    replay = transactions(2, 1)
    scorer.add_rows(replay, features_of(replay) + 0.5, np.zeros(1), "v1", 200)
    scorer.write(*scorer.take())
    for detector in ("a", "b"):  # every detector logs every label
        other = FeatureLog(log_url, LOG_SPEC, detector)
        other.add_labels([label(i, i % 2, labelled_ms=START_MS + 7 * DAY_MS) for i in (1, 2, 3, 9)])
        other.write(*other.take())
    rows_path, labels_path = scorer.spark_path("rows"), scorer.spark_path("labels")
    # Spark is handed the URL's scheme (file:///...) or the plain path, as it was configured.
    assert rows_path.startswith("file:///") == log_url.startswith("file://")
    assert labels_path.startswith("file:///") == log_url.startswith("file://")
    table = read_window(spark, rows_path, labels_path, ["index", "double"], 10)
    assert table["transaction_id"].tolist() == [
        "tx-00001",
        "tx-00002",
        "tx-00003",
    ]  # tx-00009 was never scored
    assert table["label"].tolist() == [1, 0, 1]
    assert table["index"].tolist() == [1.0, 2.5, 3.0]
    # With the schema of the newest files (what the worker passes: a day pruned while Spark lists
    # the log can otherwise leave it no footer to infer a schema from), the same window.
    newest = tuple(scorer.spark_url(scorer.files(kind)[-1].path) for kind in ("rows", "labels"))
    same = read_window(spark, rows_path, labels_path, ["index", "double"], 10, newest)  # type: ignore[arg-type]
    assert same.equals(table)


FIVE_HOURS_MS = 5 * 3_600_000


def multi_day_log(log_url: str) -> FeatureLog:
    """Two scorers' rows over five event days (tx-i at i x 5 h) and labels from two detectors.

    Replays (a newer row; a tie on scored_ms, broken by detector), a relabel (the later
    labelled_ms wins), a label without labelled_ms (loses to any with one), a label value other
    than 0/1, labels without a row, rows without a label.
    """

    def txs(indices: list[int]) -> list[Transaction]:
        return [
            Transaction(f"tx-{i:05d}", START_MS + i * FIVE_HOURS_MS, card_id=f"card-{i % 3}", amount=float(i))
            for i in indices
        ]

    def labelled(i: int, value: int, labelled_ms: int | None) -> Label:
        return Label(f"tx-{i:05d}", START_MS + i * FIVE_HOURS_MS, value, labelled_ms=labelled_ms)

    a, b = FeatureLog(log_url, LOG_SPEC, "a"), FeatureLog(log_url, LOG_SPEC, "b")
    first, second = txs(list(range(12))), txs(list(range(12, 22)))
    a.add_rows(first, features_of(first), np.zeros(12), "v1", 100)
    b.add_rows(second, features_of(second), np.zeros(10), "v1", 100)
    b.add_rows(txs([3]), features_of(txs([3])) + 0.5, np.zeros(1), "v1", 200)  # the newer row
    a.add_rows(txs([14]), features_of(txs([14])) + 0.25, np.zeros(1), "v1", 100)  # tie: a before b
    plain = [labelled(i, i % 2, 1_000) for i in range(24) if i not in (5, 7, 9, 16)]  # 22, 23: no row
    a.add_labels([*plain, labelled(5, 0, 1_000), labelled(7, 1, None), labelled(9, 2, 1_000)])
    b.add_labels([labelled(5, 1, 2_000), labelled(7, 0, 500)])
    for log in (a, b):
        log.write(*log.take())
    return a


def arrow_window(
    log: FeatureLog, window_rows: int, listing: tuple[list[Any], list[Any]] | None = None
) -> pd.DataFrame:
    """read_window_arrow over `listing` (the log's files now, when not given), as run_job calls it."""
    row_files, label_files = listing or (log.files("rows"), log.files("labels"))
    return read_window_arrow(log, row_files, label_files, ["index", "double"], window_rows)


def test_the_arrow_window_applies_the_join_rules(log_url: str) -> None:
    log = multi_day_log(log_url)
    table = arrow_window(log, 100)
    ids = [int(name[3:]) for name in table["transaction_id"]]
    assert ids == [i for i in range(22) if i not in (9, 16)]  # 9: label 2; 16: no label; 22, 23: no row
    by_id = dict(zip(ids, zip(table["label"], table["index"], strict=True), strict=True))
    assert by_id[3] == (1, 3.5) and by_id[14] == (0, 14.25)  # the newer row; the tie goes to a
    assert by_id[5][0] == 1 and by_id[7][0] == 0  # the later labelled_ms; unset loses
    assert table["label"].dtype == np.int64 and list(table.columns[:4]) == [
        "transaction_id",
        "event_time_ms",
        "card_id",
        "label",
    ]
    assert table["event_time_ms"].is_monotonic_increasing
    newest = arrow_window(log, 5)
    assert [int(name[3:]) for name in newest["transaction_id"]] == [17, 18, 19, 20, 21]


def test_the_arrow_window_reads_only_the_days_it_needs(log_url: str, tmp_path: Path) -> None:
    log = multi_day_log(log_url)
    oldest = log.files("rows")[0]
    assert oldest.day == "2026-01-01"
    Path(oldest.path).write_bytes(b"not parquet")  # only a read of the oldest day can fail
    assert len(arrow_window(log, 5)) == 5  # the newest day suffices
    with pytest.raises(Exception, match=r"(?i)parquet"):
        arrow_window(log, 100)
    # A file gone between the listing and the read (its day pruned meanwhile) is skipped: of the
    # oldest day, only tx-00003's newer row (scorer b's file) is left.
    listing = (log.files("rows"), log.files("labels"))
    Path(oldest.path).unlink()
    table = arrow_window(log, 100, listing)
    assert [int(name[3:]) for name in table["transaction_id"]] == [
        3,
        *(i for i in range(5, 22) if i not in (9, 16)),
    ]


@pytest.mark.spark
@pytest.mark.parametrize("window_rows", [3, 11, 100])
def test_the_arrow_and_spark_windows_are_the_same(log_url: str, spark: Any, window_rows: int) -> None:
    log = multi_day_log(log_url)
    expected = read_window(
        spark, log.spark_path("rows"), log.spark_path("labels"), ["index", "double"], window_rows
    )
    assert len(expected) == min(window_rows, 20)
    pd.testing.assert_frame_equal(arrow_window(log, window_rows), expected)


def test_policy_is_due_every_n_labels_or_after_the_interval_with_new_labels() -> None:
    policy = RetrainPolicy(every_labels=100, every_seconds=None, now=0.0)
    policy.observe(99)
    assert not policy.due(1e9)
    policy.observe(1)
    assert policy.due(1.0)
    policy.started(1.0)
    assert not policy.due(2.0)

    timed = RetrainPolicy(every_labels=100, every_seconds=30.0, now=0.0)
    assert not timed.due(60.0)  # no new labels: nothing to learn from
    timed.observe(1)
    assert not timed.due(29.0)
    assert timed.due(30.0)


def test_drift_starts_a_retraining_once_sustained_and_then_waits_out_the_cooldown() -> None:
    trigger = DriftTrigger(after_s=60.0, cooldown_s=600.0)
    assert not trigger.due(1000.0, None)  # no alarm
    assert not trigger.due(1059.0, 1000.0)  # an alarm, not yet sustained
    assert trigger.due(1060.0, 1000.0)
    trigger.started(1060.0)
    assert not trigger.due(1600.0, 1000.0)  # still drifting, inside the cooldown
    assert trigger.due(1660.0, 1000.0)
    assert not DriftTrigger(after_s=None, cooldown_s=600.0).due(1e9, 0.0)  # off by default


class AmountOnly:
    has_card = has_terminal = has_location = has_country = False
    passthrough: ClassVar[list[str]] = []


def test_the_holder_keeps_when_the_drift_alarm_began() -> None:
    spec = FeatureSpec.from_config(FeaturesConfig(), AmountOnly())
    holder = ModelHolder(RuleModel(900.0, spec.names), spec)
    holder.note_drift(["amount"], 10.0)
    holder.note_drift(["log_amount", "amount"], 20.0)
    assert holder.drifting_since == 10.0 and holder.drifting == ["log_amount", "amount"]
    holder.note_drift([], 30.0)
    assert holder.drifting_since is None and holder.drifting == []
    holder.note_drift(["amount"], 40.0)
    assert holder.drifting_since == 40.0


def test_trainer_lock_is_held_by_one_detector_at_a_time(tmp_path: Path) -> None:
    first = TrainerLock(tmp_path / "trainer.lock")
    second = TrainerLock(tmp_path / "trainer.lock")

    assert first.try_acquire("detector-a")
    assert not second.try_acquire("detector-b")
    assert second.holder() == "detector-a"
    first.release()
    assert second.try_acquire("detector-b")
    assert not first.try_acquire("detector-a")
    second.release()


def test_control_message_has_the_documented_fields_and_no_nan() -> None:
    message = control_message(
        MODEL_PUBLISHED,
        trainer="t-1",
        version="v4",
        metrics={"average_precision": 0.8, "roc_auc": math.nan},
        champion_metrics={"average_precision": 0.6},
        champion_version="v3",
        metric="average_precision",
        rows={"holdout": 400},
    )

    assert {"schema", "type", "version", "metrics", "champion_metrics", "at_ms", "trainer"} <= set(message)
    assert message["schema"] == 1 and message["type"] == "model_published" and message["version"] == "v4"
    assert message["metrics"]["roc_auc"] is None
    assert (
        outcome_summary(message) == "v4 published: average_precision 0.8000 vs v3 0.6000 on 400 held-out rows"
    )
    failed = control_message(RETRAIN_FAILED, trainer="t-1", error="boom", champion_version="v3")
    assert outcome_summary(failed) == "retraining failed (boom); v3 keeps serving"


# -- the window and champion/challenger -----------------------------------------------------------


def test_split_window_is_time_ordered_with_the_newest_rows_held_out() -> None:
    split = split_window(1000, 0.2)
    train, valid, holdout = split.masks()

    assert split.counts == {"window": 1000, "train": 640, "valid": 160, "holdout": 200}
    assert train[:640].all() and not train[640:].any()
    assert valid[640:800].all() and holdout[800:].all()
    with pytest.raises(RetrainFailed, match="too few"):
        split_window(2, 0.5)


def test_decide_needs_more_than_the_minimum_improvement() -> None:
    assert decide("average_precision", 0.8, 0.6, 0.0, "v1")[0]
    assert not decide("average_precision", 0.6, 0.6, 0.0, "v1")[0]
    accepted, reason = decide("average_precision", 0.65, 0.6, 0.1, "v1")
    assert not accepted and reason == "average_precision 0.6500 vs v1 0.6000: not better by more than 0.1"
    assert decide("roc_auc", 0.7, math.nan, 0.0, "v1")[0]


class ConstantModel:
    version = "v1"
    threshold = 0.5
    feature_names: ClassVar[list[str]] = ["amount", "noise"]

    def score(self, X: np.ndarray) -> np.ndarray:
        return np.full(len(X), 0.2)


def learnable_table(rows: int = 2000, fraud_in_holdout: bool = True) -> pd.DataFrame:
    rng = np.random.default_rng(3)
    amount = rng.uniform(0, 1000, rows)
    labels = (amount >= 900).astype(np.int64)
    if not fraud_in_holdout:
        labels[int(rows * 0.8) :] = 0
    return pd.DataFrame(
        {
            "transaction_id": [f"tx-{i:05d}" for i in range(rows)],
            "event_time_ms": START_MS + np.arange(rows) * 1000,
            "card_id": [f"card-{i % 50}" for i in range(rows)],
            "label": labels,
            "amount": amount.astype(np.float32),
            "noise": rng.normal(size=rows).astype(np.float32),
        }
    )


@pytest.fixture
def contest_config(config: FraudkitConfig) -> FraudkitConfig:
    return overridden(
        config,
        {
            "retrain.epochs": 2,
            "train.batch_size": 128,
            "train.learning_rate": 0.01,
            "train.hidden_sizes": [16],
            # this table is 10% fraud, so a good model rightly flags ~10% of it
            "retrain.max_flagged_share": 0.5,
        },
    )


def test_a_better_challenger_wins_on_the_holdout(contest_config: FraudkitConfig) -> None:
    contest = run_contest(learnable_table(), ["amount", "noise"], contest_config, ConstantModel())

    assert contest.accepted
    assert contest.split.counts["holdout"] == 400
    assert contest.champion_metrics["average_precision"] == pytest.approx(
        contest.champion_metrics["frauds"] / 400
    )
    assert contest.challenger_metrics["average_precision"] > 0.8
    assert contest.challenger_metrics["rows"] == 400
    assert contest.fit.metrics["epochs_run"] == 2


def test_a_challenger_short_of_the_minimum_improvement_is_rejected(contest_config: FraudkitConfig) -> None:
    config = overridden(contest_config, {"retrain.min_improvement": 10.0})

    contest = run_contest(learnable_table(), ["amount", "noise"], config, ConstantModel())

    assert not contest.accepted
    assert "not better by more than 10" in contest.reason


def test_a_challenger_that_flags_too_much_traffic_is_rejected(contest_config: FraudkitConfig) -> None:
    config = overridden(contest_config, {"retrain.max_flagged_share": 0.001})

    contest = run_contest(learnable_table(), ["amount", "noise"], config, ConstantModel())

    assert not contest.accepted
    assert contest.challenger_metrics["flagged_share"] > 0.001
    assert "of the holdout (> retrain.max_flagged_share 0.1%)" in contest.reason


def test_a_diverging_training_fails(contest_config: FraudkitConfig) -> None:
    config = overridden(contest_config, {"train.learning_rate": 1e30})

    with pytest.raises(RetrainFailed, match="training diverged: the loss is nan at epoch 1/2"):
        run_contest(learnable_table(), ["amount", "noise"], config, ConstantModel())


def test_a_holdout_without_fraud_cannot_judge(contest_config: FraudkitConfig) -> None:
    with pytest.raises(RetrainFailed, match=r"400 most recent labelled rows .* hold 0 fraud"):
        run_contest(
            learnable_table(fraud_in_holdout=False), ["amount", "noise"], contest_config, ConstantModel()
        )


# -- the retraining process handle ----------------------------------------------------------------


def wait_result(job: RetrainJob, timeout_s: float = 20.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        result = job.poll()
        if result is not None:
            return result
        time.sleep(0.05)
    raise AssertionError("the job did not finish")


SPEC = {"names": ["amount"], "version": 1}


def launch_script(config: FraudkitConfig, code: str, champion: str = "v3") -> RetrainJob:
    """A retraining job whose process is `python -c code` (JOB_DIR is its sys.argv[1])."""
    return RetrainJob.launch(config, SPEC, champion, "t-1", command=[sys.executable, "-c", code])


def test_job_returns_the_result_the_process_wrote(config: FraudkitConfig) -> None:
    writer = (
        "import json, pathlib, sys; job = json.loads(pathlib.Path(sys.argv[1], 'job.json').read_text()); "
        "pathlib.Path(sys.argv[1], 'result.json').write_text(json.dumps("
        "{'outcome': 'rejected', 'version': 'v9', 'champion_version': job['champion_version']}))"
    )
    job = launch_script(config, writer)

    result = wait_result(job)

    assert (
        result["outcome"] == "rejected" and result["version"] == "v9" and result["champion_version"] == "v3"
    )
    assert result["seconds"] > 0
    assert not job.directory.exists()


@pytest.mark.skipif(not hasattr(os, "SCHED_IDLE"), reason="SCHED_IDLE is Linux's")
def test_the_detector_lowers_the_workers_priority_as_it_starts(config: FraudkitConfig) -> None:
    # The command never lowers its own priority: what it reports is what the detector set.
    report = (
        "import json, os, pathlib, sys, time; time.sleep(0.5); "
        "pathlib.Path(sys.argv[1], 'result.json').write_text(json.dumps({'outcome': 'rejected', "
        "'policy': os.sched_getscheduler(0), 'nice': os.getpriority(os.PRIO_PROCESS, 0)}))"
    )
    job = launch_script(config, report)

    result = wait_result(job)

    assert result["policy"] == os.SCHED_IDLE and result["nice"] >= 10


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="CPU affinity is Linux's")
def test_the_detector_keeps_the_worker_on_retrain_worker_cpus(config: FraudkitConfig) -> None:
    cpu = min(os.sched_getaffinity(0))
    report = (
        "import json, os, pathlib, sys, time; time.sleep(0.5); "
        "pathlib.Path(sys.argv[1], 'result.json').write_text(json.dumps({'outcome': 'rejected', "
        "'cpus': sorted(os.sched_getaffinity(0))}))"
    )
    job = launch_script(overridden(config, {"retrain.worker_cpus": [cpu]}), report)

    assert wait_result(job)["cpus"] == [cpu]


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="CPU affinity is Linux's")
def test_cpus_the_machine_does_not_have_leave_the_worker_where_it_is_and_say_why(
    config: FraudkitConfig,
) -> None:
    job = launch_script(overridden(config, {"retrain.worker_cpus": [4095]}), "import time; time.sleep(0.2)")

    wait_result(job)

    assert job.warning is not None and "cannot run on CPUs [4095]" in job.warning


def test_retrain_worker_cpus_are_distinct_cpu_numbers() -> None:
    for bad in ([0, 0], [-1]):
        with pytest.raises(ConfigError, match=r"retrain\.worker_cpus: .*distinct CPU numbers"):
            load_config(None, {"retrain.worker_cpus": bad}, environ={})


class FakeProcessClock:
    """Wall clock, CPU time and sleep of a process whose work costs what `work` says."""

    def __init__(self) -> None:
        self.wall = 0.0
        self.cpu = 0.0
        self.slept: list[float] = []

    def work(self, cpu_s: float) -> None:
        self.wall += cpu_s
        self.cpu += cpu_s

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.wall += seconds

    def budget(self, share: float) -> CpuBudget:
        return CpuBudget(share, lambda: self.wall, lambda: self.cpu, self.sleep)

    def steps(self, budget: CpuBudget, count: int, cpu_s: float) -> None:
        """`count` steps of work, each followed by the budget's pace()."""
        for _ in range(count):
            self.work(cpu_s)
            budget.pace()


def test_a_cpu_budget_holds_steady_work_to_its_share() -> None:
    clock = FakeProcessClock()
    budget = clock.budget(0.25)

    clock.steps(budget, 1000, 0.004)

    assert clock.cpu / clock.wall == pytest.approx(0.25, rel=0.02)
    assert budget.slept_s == pytest.approx(sum(clock.slept))


def test_a_cpu_budget_does_not_bank_idle_time_for_a_burst_later() -> None:
    clock = FakeProcessClock()
    budget = clock.budget(0.2)
    clock.wall += 30.0  # waiting on the JVM or a file: no CPU used
    budget.pace()

    clock.work(0.5)
    budget.pace()

    # Only the small burst allowance is credited: the rest of the 0.5 s is paid for at once.
    assert clock.slept[-1] == pytest.approx((0.5 - BUDGET_BURST_S) / 0.2)


def test_a_full_cpu_budget_never_sleeps() -> None:
    clock = FakeProcessClock()
    budget = clock.budget(1.0)

    clock.steps(budget, 100, 0.1)

    assert clock.slept == []


def test_a_cpu_budget_paces_imports_while_active(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "fraudkit_paced_module.py").write_text("VALUE = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    clock = FakeProcessClock()
    budget = clock.budget(0.5)
    clock.work(1.0)  # what the process used before the import: it is over its share

    with budget.active():
        import fraudkit_paced_module  # noqa: F401

    assert clock.slept, "the import did not go through the budget"
    assert budget._finder not in sys.meta_path


def test_a_crashed_process_is_a_failure_with_its_output(config: FraudkitConfig) -> None:
    crash = "import sys; print('spark exploded'); sys.exit(3)"
    job = launch_script(config, crash)

    result = wait_result(job)

    assert result["outcome"] == "failed"
    assert result["error"] == "the retraining process exited with code 3 without a result: spark exploded"


def test_a_job_past_its_timeout_is_killed_and_fails(config: FraudkitConfig) -> None:
    config = overridden(config, {"retrain.job_timeout_s": 0.5})
    job = launch_script(config, "import time; time.sleep(60)")

    result = wait_result(job)

    assert result == {"outcome": "failed", "error": "timed out after 0.5s", "seconds": result["seconds"]}
    assert job.process.returncode is not None


class Announcements:
    """Stands in for the announcement producer: keeps what would have been produced."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []


def stopping_trainer(
    config: FraudkitConfig, monkeypatch: pytest.MonkeyPatch, worker: str
) -> tuple[RetrainExtension, RetrainJob, Announcements, list[str], list[dict[str, Any]]]:
    """A trainer's background thread running one job of `worker` (Python code), with no broker."""
    announced = Announcements()
    monkeypatch.setattr(extension, "announce", lambda producer, config, event: producer.events.append(event))
    outcomes: list[dict[str, Any]] = []
    logs: list[str] = []
    trainer = RetrainExtension(config, on_outcome=outcomes.append)
    spec = FeatureSpec.from_config(FeaturesConfig(), AmountOnly())
    trainer.holder = ModelHolder(RuleModel(900.0, spec.names), spec)
    trainer.instance_id, trainer.log = "t-1", logs.append
    trainer._producer = announced  # type: ignore[assignment]
    job = launch_script(config, worker, champion="rules")
    trainer._job = job
    trainer._thread = threading.Thread(target=trainer._work, daemon=True)
    trainer._thread.start()
    return trainer, job, announced, logs, outcomes


def stop(trainer: RetrainExtension) -> None:
    """What on_stop does to the background thread (the rest of it closes Kafka clients)."""
    assert trainer._thread is not None
    trainer._tasks.put(extension._STOP)
    trainer._thread.join(30)
    assert not trainer._thread.is_alive()


def test_a_retraining_running_at_stop_is_cancelled_not_failed(
    config: FraudkitConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    trainer, job, announced, logs, outcomes = stopping_trainer(
        config, monkeypatch, "import time; time.sleep(60)"
    )
    time.sleep(0.5)
    stop(trainer)

    assert job.process.returncode is not None and not job.directory.exists()
    stats = trainer.stats
    assert (stats.cancelled, stats.failed, stats.published, stats.rejected) == (1, 0, 0, 0)
    assert [event["type"] for event in outcomes] == [RETRAIN_CANCELLED]
    assert re.fullmatch(r"cancelled at stop after \d+s", outcomes[0]["reason"])
    assert trainer.holder.retrain_outcomes == {"cancelled": 1}
    assert logs == [f"retraining: retraining {outcomes[0]['reason']}; nothing was published"]
    assert announced.events == []  # nothing was decided: other detectors have nothing to count


def test_a_retraining_that_ended_just_before_the_stop_keeps_its_outcome(
    config: FraudkitConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    crash = "import sys; print('spark exploded'); sys.exit(3)"
    trainer, job, announced, logs, outcomes = stopping_trainer(config, monkeypatch, crash)
    job.process.wait(20)
    stop(trainer)

    assert (trainer.stats.failed, trainer.stats.cancelled) == (1, 0)
    assert [event["type"] for event in announced.events] == [RETRAIN_FAILED]
    reason = "the retraining process exited with code 3 without a result: spark exploded"
    assert outcomes[0]["error"] == reason
    # The failure's reason is in the detector's log.
    assert logs == [f"retraining: retraining failed ({reason}); rules keeps serving"]


# -- the command line ---------------------------------------------------------------------------


def test_detect_rejects_an_unknown_role_before_connecting(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from fraudkit.cli import app

    result = CliRunner().invoke(
        app, ["detect", "--role", "boss", "--set", "kafka.common.bootstrap.servers=127.0.0.1:1"]
    )

    assert result.exit_code == 2
    assert "retrain.role: must be 'all', 'scorer' or 'trainer' (command line)" in result.output


def test_retrain_extensions_follow_retrain_enabled(config: FraudkitConfig) -> None:
    from fraudkit.retrain.extension import RetrainExtension, retrain_extensions

    extensions = retrain_extensions(config)
    assert len(extensions) == 1 and isinstance(extensions[0], RetrainExtension)
    assert retrain_extensions(overridden(config, {"retrain.enabled": False})) == []
