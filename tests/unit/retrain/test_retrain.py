"""Live retraining logic: label join, the Parquet buffer, triggers, the trainer lock, champion/challenger."""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import pytest

from fraudkit.config import FraudkitConfig
from fraudkit.retrain.buffer import (
    BUFFER_KEY_COLUMNS,
    LabelBuffer,
    LabelledBlock,
    ScoredRows,
    buffer_directory,
)
from fraudkit.retrain.extension import (
    MODEL_PUBLISHED,
    RETRAIN_FAILED,
    RetrainJob,
    RetrainPolicy,
    TrainerLock,
    control_message,
    outcome_summary,
)
from fraudkit.retrain.worker import RetrainFailed, decide, run_contest, split_window
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


# -- ScoredRows --------------------------------------------------------------------------------


def test_join_returns_the_scored_rows_of_labelled_transactions_once() -> None:
    scored = ScoredRows(capacity=1000)
    first = transactions(0, 10)
    second = transactions(10, 10)
    scored.add(first, features_of(first), np.linspace(0, 0.9, 10), "v1", 111)
    scored.add(second, features_of(second), np.full(10, 0.5), "v2", 222)

    block = scored.join([label(3, 1, START_MS + 99), label(15, 0), label(99, 1)])

    assert block is not None
    assert block.transaction_id == ["tx-00003", "tx-00015"]
    np.testing.assert_array_equal(block.features, [[3, 6], [15, 30]])
    assert block.label.tolist() == [1, 0]
    assert block.model_version == ["v1", "v2"]
    assert block.scored_ms.tolist() == [111, 222]
    assert block.labelled_ms.tolist() == [START_MS + 99, -1]
    assert block.card_id == ["card-3", "card-1"]
    np.testing.assert_allclose(block.score, [0.3, 0.5], rtol=1e-6)
    assert (scored.matched, scored.unmatched) == (2, 1)
    # A second label for the same transaction finds nothing left to join.
    assert scored.join([label(3, 1)]) is None
    assert scored.unmatched == 2
    assert len(scored) == 18


def test_scored_rows_forget_the_oldest_batches_beyond_capacity() -> None:
    scored = ScoredRows(capacity=25)
    for start in (0, 10, 20):
        batch = transactions(start, 10)
        scored.add(batch, features_of(batch), np.zeros(10), "v1", 1)

    assert len(scored) == 20
    assert scored.forgotten == 10
    assert scored.join([label(5, 1)]) is None
    block = scored.join([label(15, 1), label(25, 0)])
    assert block is not None and block.transaction_id == ["tx-00015", "tx-00025"]


def test_a_rescored_transaction_joins_its_newest_row_and_survives_eviction_of_the_old_one() -> None:
    scored = ScoredRows(capacity=15)
    batch = transactions(0, 10)
    scored.add(batch, features_of(batch), np.zeros(10), "v1", 1)
    replay = transactions(5, 1)
    scored.add(replay, features_of(replay) + 100, np.ones(1), "v2", 2)
    filler = transactions(100, 10)
    scored.add(filler, features_of(filler), np.zeros(10), "v2", 3)  # evicts the first batch

    block = scored.join([label(5, 1)])

    assert block is not None
    assert block.model_version == ["v2"]
    np.testing.assert_array_equal(block.features, [[105, 110]])


def test_a_different_feature_width_starts_afresh() -> None:
    scored = ScoredRows(capacity=100)
    batch = transactions(0, 5)
    scored.add(batch, features_of(batch), np.zeros(5), "v1", 1)
    wider = transactions(5, 5)
    scored.add(wider, np.zeros((5, 3), dtype=np.float32), np.zeros(5), "v2", 2)

    assert len(scored) == 5
    assert scored.join([label(0, 1)]) is None
    block = scored.join([label(6, 1)])
    assert block is not None and block.features.shape == (1, 3)


# -- LabelBuffer -------------------------------------------------------------------------------


def joined_block(start: int, count: int) -> LabelledBlock:
    scored = ScoredRows(capacity=10_000)
    batch = transactions(start, count)
    scored.add(batch, features_of(batch), np.full(count, 0.25), "v1", 5)
    block = scored.join([label(i, i % 2) for i in range(start, start + count)])
    assert block is not None
    return block


def test_buffer_files_round_trip_and_are_shared_by_detectors(tmp_path: Path) -> None:
    spec = {"names": ["index", "double"], "version": 1}
    first = LabelBuffer.for_spec(tmp_path, spec, "host-1", max_rows=1000)
    second = LabelBuffer.for_spec(tmp_path, spec, "host/2", max_rows=1000)
    first.write(joined_block(0, 30))
    second.write(joined_block(30, 20))
    (first.directory / ".half-written.parquet.tmp").write_bytes(b"partial")

    assert first.directory == buffer_directory(tmp_path, spec)
    assert [item.detector for item in first.files()] == ["host-1", "host_2"]
    assert [item.rows for item in first.files()] == [30, 20]
    assert second.rows() == 50
    frame = first.read_frame()
    assert list(frame.columns) == [*BUFFER_KEY_COLUMNS, "index", "double"]
    assert frame["transaction_id"].tolist() == [f"tx-{i:05d}" for i in range(50)]
    assert frame["label"].tolist() == [i % 2 for i in range(50)]
    assert frame["double"].tolist() == [2.0 * i for i in range(50)]
    assert frame["detector"].tolist() == ["host-1"] * 30 + ["host/2"] * 20
    assert frame["labelled_ms"].isna().all()
    assert json.loads((first.directory / "spec.json").read_text()) == spec


def test_buffer_deletes_the_oldest_files_beyond_max_rows(tmp_path: Path) -> None:
    buffer = LabelBuffer(tmp_path / "b", ["index", "double"], "d", max_rows=50)
    for start in (0, 20, 40):
        buffer.write(joined_block(start, 20))
        time.sleep(0.002)

    assert buffer.rows() == 40
    assert buffer.deleted_files == 1
    assert buffer.read_frame()["transaction_id"].iloc[0] == "tx-00020"


def test_buffer_refuses_feature_names_that_clash_with_its_columns(tmp_path: Path) -> None:
    from fraudkit.errors import DataError

    with pytest.raises(DataError, match="label"):
        LabelBuffer(tmp_path, ["amount", "label"], "d", 10)


# -- policy, lock, messages ---------------------------------------------------------------------


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


def test_job_returns_the_result_the_process_wrote(config: FraudkitConfig) -> None:
    writer = (
        "import json, pathlib, sys; job = json.loads(pathlib.Path(sys.argv[1], 'job.json').read_text()); "
        "pathlib.Path(sys.argv[1], 'result.json').write_text(json.dumps("
        "{'outcome': 'rejected', 'version': 'v9', 'champion_version': job['champion_version']}))"
    )
    job = RetrainJob.launch(config, SPEC, "v3", "t-1", command=[sys.executable, "-c", writer])

    result = wait_result(job)

    assert (
        result["outcome"] == "rejected" and result["version"] == "v9" and result["champion_version"] == "v3"
    )
    assert result["seconds"] > 0
    assert not job.directory.exists()


def test_a_crashed_process_is_a_failure_with_its_output(config: FraudkitConfig) -> None:
    crash = "import sys; print('spark exploded'); sys.exit(3)"
    job = RetrainJob.launch(config, SPEC, "v3", "t-1", command=[sys.executable, "-c", crash])

    result = wait_result(job)

    assert result["outcome"] == "failed"
    assert result["error"] == "the retraining process exited with code 3 without a result: spark exploded"


def test_a_job_past_its_timeout_is_killed_and_fails(config: FraudkitConfig) -> None:
    config = overridden(config, {"retrain.job_timeout_s": 0.5})
    job = RetrainJob.launch(
        config, SPEC, "v3", "t-1", command=[sys.executable, "-c", "import time; time.sleep(60)"]
    )

    result = wait_result(job)

    assert result == {"outcome": "failed", "error": "timed out after 0.5s", "seconds": result["seconds"]}
    assert job.process.returncode is not None


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
