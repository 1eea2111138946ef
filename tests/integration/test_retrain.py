"""Live retraining against the session's broker, with the real retraining process (Spark + PyTorch).

The stream is learnable on purpose (fraud exactly when amount >= 900) and the first model scores
everything alike, so a trained challenger beats it; `min_improvement` and a diverging learning rate
make the rejected and failed outcomes deterministic.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import orjson
import pytest

from fraudkit.config import FeaturesConfig, FraudkitConfig
from fraudkit.detect import DetectSummary, run_detect
from fraudkit.features import FeatureSpec, OnlineFeatures
from fraudkit.model.network import Normalisation
from fraudkit.model.registry import Registry
from fraudkit.observability.detect_telemetry import DetectTelemetry
from fraudkit.observability.drift import training_reference
from fraudkit.retrain.extension import RetrainExtension
from fraudkit.retrain.feature_log import FeatureLog
from fraudkit.schema import Label, Transaction, encode
from fraudkit.stream import kafka

pytestmark = [pytest.mark.kafka, pytest.mark.spark, pytest.mark.slow]

START_MS = 1_767_225_600_000  # 2026-01-01
FRAUD_FROM = 900.0


class SimulatorFields:
    has_card = True
    has_terminal = True
    has_location = True
    has_country = True
    passthrough: ClassVar[list[str]] = []


def overridden(config: FraudkitConfig, overrides: dict[str, Any]) -> FraudkitConfig:
    data = config.model_dump(mode="json")
    for dotted, value in overrides.items():
        *parents, leaf = dotted.split(".")
        node = data
        for part in parents:
            node = node[part]
        node[leaf] = value
    return FraudkitConfig.model_validate(data)


def publish_indifferent_model(config: FraudkitConfig, drift_reference: dict[str, Any] | None = None) -> str:
    """v1: the full simulator feature spec, the same score (0.12) for every transaction."""
    spec = FeatureSpec.from_config(FeaturesConfig(), SimulatorFields())
    width = len(spec.names)
    state = {
        "hidden.0.weight": np.zeros((4, width), dtype=np.float32),
        "hidden.0.bias": np.zeros(4, dtype=np.float32),
        "output.weight": np.zeros((1, 4), dtype=np.float32),
        "output.bias": np.array([-2.0], dtype=np.float32),
    }
    return Registry(config.registry.path).publish(
        state,
        feature_names=spec.names,
        hidden_sizes=[4],
        normalisation=Normalisation(np.zeros(width), np.ones(width)),
        threshold=0.5,
        feature_spec=spec.to_dict(),
        drift_reference=drift_reference,
    )


def amount_of(index: int) -> float:
    return float((index * 7919) % 1000)


def transaction(index: int, amount_scale: float = 1.0) -> Transaction:
    return Transaction(
        transaction_id=f"tx-{index:06d}",
        event_time_ms=START_MS + index * 1000,
        card_id=f"card-{index % 37:03d}",
        amount=amount_of(index) * amount_scale,
        customer_id=f"cust-{index % 37:03d}",
        terminal_id=f"term-{index % 11:03d}",
        currency="EUR",
        merchant_category="grocery",
        country="DE",
        lat=48.1,
        lon=11.6,
        produced_ms=int(time.time() * 1000),
    )


def truth(index: int) -> Label:
    tx = transaction(index)
    return Label(
        transaction_id=tx.transaction_id,
        event_time_ms=tx.event_time_ms,
        label=int(tx.amount >= FRAUD_FROM),
        card_id=tx.card_id,
        terminal_id=tx.terminal_id,
        labelled_ms=tx.event_time_ms + 7 * 86_400_000,
    )


def produce(config: FraudkitConfig, topic: str, records: list[Any]) -> None:
    producer = kafka.make_producer(config)
    for record in records:
        kafka.produce(producer, topic, encode(record), key=record.card_id)
    kafka.flush(producer)


def read_all(config: FraudkitConfig, topic: str, quiet_s: float = 1.0) -> list[dict[str, Any]]:
    """Every message of a topic from the beginning, read until `quiet_s` pass without one."""
    reader = kafka.make_reader(config)
    metadata = reader.list_topics(topic, timeout=10)
    partitions = sorted(metadata.topics[topic].partitions)
    reader.assign([kafka.TopicPartition(topic, p, kafka.OFFSET_BEGINNING) for p in partitions])
    values: list[dict[str, Any]] = []
    last = time.monotonic()
    try:
        while time.monotonic() - last < quiet_s:
            for message in reader.consume(1000, 0.2):
                if message.error() is None:
                    values.append(orjson.loads(message.value()))
                    last = time.monotonic()
    finally:
        reader.close()
    return values


class VerdictWatch:
    """Counts verdicts as they arrive (a reader from the beginning of every partition)."""

    def __init__(self, config: FraudkitConfig) -> None:
        topic = config.topics.verdicts
        self.reader = kafka.make_reader(config)
        metadata = self.reader.list_topics(topic, timeout=10)
        partitions = sorted(metadata.topics[topic].partitions)
        self.reader.assign([kafka.TopicPartition(topic, p, kafka.OFFSET_BEGINNING) for p in partitions])
        self.verdicts: list[dict[str, Any]] = []

    def count(self) -> int:
        for message in self.reader.consume(10_000, 0.1):
            if message.error() is None:
                self.verdicts.append(orjson.loads(message.value()))
        return len(self.verdicts)

    def close(self) -> None:
        self.reader.close()


def wait_for(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout_s:g}s waiting for {what}")


@dataclass
class Detector:
    """A detector running in a thread with a retraining extension."""

    extension: RetrainExtension
    thread: threading.Thread
    stop: threading.Event
    logs: list[str] = field(default_factory=list)
    result: dict[str, Any] = field(default_factory=dict)

    @property
    def summary(self) -> DetectSummary:
        self.thread.join(60)
        assert not self.thread.is_alive(), "the detector did not stop"
        if "error" in self.result:
            raise self.result["error"]
        return self.result["summary"]


@contextmanager
def detector(
    config: FraudkitConfig, instance_id: str, telemetry: DetectTelemetry | None = None
) -> Iterator[Detector]:
    extension = RetrainExtension(config)
    stop = threading.Event()
    running = Detector(extension, threading.Thread(), stop)

    def work() -> None:
        try:
            running.result["summary"] = run_detect(
                config,
                stop_event=stop,
                instance_id=instance_id,
                extensions=[extension],
                on_log=running.logs.append,
                telemetry=telemetry,
            )
        except BaseException as exc:
            running.result["error"] = exc

    running.thread = threading.Thread(target=work, name=f"detect-{instance_id}", daemon=True)
    running.thread.start()
    try:
        yield running
    finally:
        stop.set()
        running.thread.join(60)


RETRAIN_OVERRIDES: dict[str, Any] = {
    "retrain.every_labels": 2000,
    "retrain.epochs": 2,
    "train.batch_size": 128,
    "train.learning_rate": 0.01,
    "train.hidden_sizes": [16],
    # 10% of this stream is fraud, so a good challenger rightly flags ~10% of it
    "retrain.max_flagged_share": 0.5,
    "detect.batch_size": 500,
    "detect.quiet": True,
    "retrain.feature_log_flush_s": 0.5,
    # Full speed: these tests are about what a retraining does, not how it shares the machine
    # (the better-challenger test below runs within a budget).
    "retrain.worker_cpu_share": 1.0,
}


@pytest.fixture
def retrain_config(kafka_config: FraudkitConfig) -> FraudkitConfig:
    config = overridden(kafka_config, RETRAIN_OVERRIDES)
    publish_indifferent_model(config)
    kafka.ensure_topics(config)
    return config


def score_then_label(config: FraudkitConfig, watch: VerdictWatch, indices: range) -> None:
    """Produce transactions, wait for their verdicts, then produce their labels (labels come later)."""
    already = watch.count()
    produce(config, config.topics.transactions, [transaction(i) for i in indices])
    wait_for(lambda: watch.count() >= already + len(indices), 60, f"{len(indices)} verdicts")
    produce(config, config.topics.labels, [truth(i) for i in indices])


def control_events(config: FraudkitConfig) -> list[dict[str, Any]]:
    return read_all(config, config.topics.control)


@pytest.mark.parametrize("window_reader", ["spark", "arrow"])
def test_a_better_challenger_is_published_and_swapped_in_without_a_gap(
    retrain_config: FraudkitConfig, window_reader: str
) -> None:
    config = overridden(
        retrain_config, {"retrain.window_reader": window_reader, "retrain.worker_cpu_share": 0.5}
    )
    watch = VerdictWatch(config)
    keep_producing = threading.Event()
    produced: list[int] = []

    def stream(start: int) -> None:
        producer = kafka.make_producer(config)
        index = start
        while keep_producing.is_set():
            for i in range(index, index + 20):
                kafka.produce(
                    producer, config.topics.transactions, encode(transaction(i)), key=f"card-{i % 37:03d}"
                )
            kafka.flush(producer)
            produced.extend(range(index, index + 20))
            index += 20
            time.sleep(0.1)

    with detector(config, "trainer-a") as running:
        score_then_label(config, watch, range(2000))
        # Transactions keep coming while the challenger trains and is swapped in.
        keep_producing.set()
        streamer = threading.Thread(target=stream, args=(10_000,), daemon=True)
        streamer.start()
        wait_for(lambda: running.extension.stats.last is not None, 150, "a retraining outcome")
        assert running.extension.stats.published == 1, running.extension.stats.last
        wait_for(lambda: watch.count() > 0 and watch.verdicts[-1]["model_version"] == "v2", 30, "v2 verdicts")
        time.sleep(1.0)
        keep_producing.clear()
        streamer.join(10)
        total = 2000 + len(produced)
        wait_for(lambda: watch.count() >= total, 60, "every verdict")
    summary = running.summary
    watch.close()

    stats = running.extension.stats
    assert (stats.jobs, stats.published, stats.rejected, stats.failed) == (1, 1, 0, 0), stats.last
    event = stats.last
    assert event is not None and event["type"] == "model_published" and event["version"] == "v2"
    assert event["rows"] == {"window": 2000, "train": 1280, "valid": 320, "holdout": 400}
    assert event["metrics"]["average_precision"] > event["champion_metrics"]["average_precision"]
    assert event["champion_version"] == "v1"
    assert ("spark_start_s" in event["timings"]) == (window_reader == "spark")  # the reader asked for
    assert event["timings"]["paced_s"] > 0  # it kept within its CPU budget
    assert summary.model_versions == ["v1", "v2"]
    assert summary.retrains == 1 and summary.last_retrain is not None
    assert summary.last_retrain["version"] == "v2"

    registry = Registry(config.registry.path)
    assert registry.current_version() == "v2"
    manifest = registry.show("v2")
    assert manifest["status"] == "published"
    assert manifest["training"]["champion_version"] == "v1"
    assert manifest["metrics"]["average_precision"] == pytest.approx(event["metrics"]["average_precision"])

    # Every transaction has exactly one verdict across the switch, and the switch happens once.
    ids = Counter(v["transaction_id"] for v in watch.verdicts)
    expected = {transaction(i).transaction_id for i in [*range(2000), *produced]}
    assert set(ids) == expected
    assert max(ids.values()) == 1
    versions = [
        v["model_version"]
        for v in sorted(watch.verdicts, key=lambda v: (v["verdict_ms"], v["model_version"]))
    ]
    switch = versions.index("v2")
    assert set(versions[:switch]) == {"v1"} and set(versions[switch:]) == {"v2"}
    assert switch >= 2000 and len(versions) - switch > 0

    announcements = control_events(config)
    assert [(a["type"], a["version"], a["trainer"]) for a in announcements] == [
        ("model_published", "v2", "trainer-a")
    ]
    assert announcements[0]["metrics"]["average_precision"] == pytest.approx(
        event["metrics"]["average_precision"]
    )


def test_a_challenger_that_is_not_better_is_recorded_as_rejected(retrain_config: FraudkitConfig) -> None:
    config = overridden(retrain_config, {"retrain.min_improvement": 10.0})
    watch = VerdictWatch(config)
    with detector(config, "trainer-r") as running:
        score_then_label(config, watch, range(2000))
        wait_for(
            lambda: running.extension.stats.jobs > 0 and running.extension.stats.last is not None,
            150,
            "an outcome",
        )
        score_then_label(config, watch, range(5000, 5300))
    summary = running.summary
    watch.close()

    event = running.extension.stats.last
    assert event is not None and event["type"] == "model_rejected", event
    assert event["version"] == "v2"
    assert "not better by more than 10" in event["reason"]
    assert 0 < event["champion_metrics"]["average_precision"] < event["metrics"]["average_precision"]
    registry = Registry(config.registry.path)
    assert registry.current_version() == "v1"
    manifest = registry.show("v2")
    assert manifest["status"] == "rejected"
    assert manifest["reason"] == event["reason"]
    assert manifest["training"]["champion_metrics"]["average_precision"] == pytest.approx(
        event["champion_metrics"]["average_precision"]
    )
    assert summary.model_versions == ["v1"] and summary.retrains == 1
    assert {v["model_version"] for v in watch.verdicts} == {"v1"}
    assert len(watch.verdicts) == 2300
    assert [a["type"] for a in control_events(config)] == ["model_rejected"]


def test_a_diverging_training_run_fails_and_the_current_model_keeps_serving(
    retrain_config: FraudkitConfig,
) -> None:
    config = overridden(retrain_config, {"train.learning_rate": 1e30})
    watch = VerdictWatch(config)
    with detector(config, "trainer-f") as running:
        score_then_label(config, watch, range(2000))
        wait_for(lambda: running.extension.stats.last is not None, 150, "an outcome")
        score_then_label(config, watch, range(5000, 5300))
    summary = running.summary
    watch.close()

    stats = running.extension.stats
    assert (stats.jobs, stats.failed, stats.published) == (1, 1, 0)
    event = stats.last
    assert event is not None and event["type"] == "retrain_failed"
    assert event["error"].startswith("training diverged: the loss is nan at epoch 1/2")
    assert event["version"] is None
    assert any(
        "retraining failed (training diverged" in line and "v1 keeps serving" in line for line in running.logs
    )
    assert Registry(config.registry.path).versions() == ["v1"]
    assert summary.model_versions == ["v1"] and summary.retrains == 1
    assert summary.last_retrain is not None and summary.last_retrain["type"] == "retrain_failed"
    assert {v["model_version"] for v in watch.verdicts} == {"v1"} and len(watch.verdicts) == 2300
    assert [a["type"] for a in control_events(config)] == ["retrain_failed"]


def test_a_label_arriving_after_its_detector_restarted_reaches_the_next_retraining(
    retrain_config: FraudkitConfig,
) -> None:
    config = retrain_config
    watch = VerdictWatch(config)
    with detector(config, "before-restart") as first:
        produce(config, config.topics.transactions, [transaction(i) for i in range(2000)])
        wait_for(lambda: watch.count() >= 2000, 60, "2000 verdicts")
    assert first.summary.verdicts == 2000 and first.summary.labels == 0
    spec = Registry(config.registry.path).load("v1").manifest["feature_spec"]
    feature_log = FeatureLog(config.retrain.feature_log_url, spec, "reader")
    assert sum(item.rows for item in feature_log.files("rows")) == 2000  # flushed at stop
    assert {item.detector for item in feature_log.files("rows")} == {"before-restart"}
    assert feature_log.files("labels") == []

    # The chargebacks come once the detector that scored their transactions is gone.
    with detector(config, "after-restart") as second:
        wait_for(lambda: any("feature log" in line for line in second.logs), 30, "the feature log to open")
        produce(config, config.topics.labels, [truth(i) for i in range(2000)])
        wait_for(lambda: second.extension.stats.last is not None, 150, "a retraining outcome")
        # The loop installs an offered model between batches; with no traffic left, wait for that turn.
        published = second.extension.stats.last["type"] == "model_published"
        wait_for(lambda: not published or "v2" in second.extension.holder.versions, 30, "v2 to be swapped in")
    summary = second.summary
    watch.close()

    assert any("2,000 scored rows in" in line for line in second.logs)
    event = second.extension.stats.last
    assert event is not None and event["type"] == "model_published", event
    assert event["rows"]["window"] == 2000  # every label found the row another detector logged
    assert event["buffer"]["logged_rows"] == 2000 and event["buffer"]["logged_labels"] == 2000
    assert summary.verdicts == 0 and summary.labels == 2000
    assert summary.model_versions == ["v1", "v2"]
    assert Registry(config.registry.path).current_version() == "v2"


def test_two_detectors_swap_on_one_announcement(retrain_config: FraudkitConfig) -> None:
    trainer_config = overridden(retrain_config, {"retrain.role": "trainer", "retrain.every_labels": 3000})
    scorer_config = overridden(trainer_config, {"retrain.role": "scorer"})
    watch = VerdictWatch(retrain_config)
    with detector(trainer_config, "trainer-t") as trainer, detector(scorer_config, "scorer-s") as scorer:
        wait_for(
            lambda: sum(1 for line in trainer.logs + scorer.logs if "assigned partitions" in line) >= 2,
            30,
            "both detectors to get partitions",
        )
        time.sleep(3)  # let the group settle
        score_then_label(retrain_config, watch, range(3000))
        wait_for(lambda: trainer.extension.stats.last is not None, 150, "an outcome")
        assert trainer.extension.stats.last["type"] == "model_published", trainer.extension.stats.last
        wait_for(lambda: scorer.extension.stats.published == 1, 30, "the scorer to hear the announcement")
        time.sleep(1.0)
        before = watch.count()
        produce(
            retrain_config, retrain_config.topics.transactions, [transaction(i) for i in range(8000, 8600)]
        )
        wait_for(lambda: watch.count() >= before + 600, 60, "verdicts after the swap")
    trainer_summary, scorer_summary = trainer.summary, scorer.summary
    watch.close()

    assert trainer.extension.stats.jobs == 1 and scorer.extension.stats.jobs == 0
    # The trainer joined the labels to both detectors' logged rows and trained on all of them.
    assert trainer.extension.stats.last["rows"]["window"] == 3000
    assert scorer.extension.stats.swaps_announced == 1
    assert trainer_summary.model_versions == ["v1", "v2"] and scorer_summary.model_versions == ["v1", "v2"]
    after = [v for v in watch.verdicts if v["transaction_id"] >= "tx-008000"]
    assert len(after) == 600
    assert {v["model_version"] for v in after} == {"v2"}
    assert {v["detector"] for v in after} == {"trainer-t", "scorer-s"}
    # Both detectors logged their scored rows into the one shared feature log, and every label.
    spec = Registry(retrain_config.registry.path).load("v1").manifest["feature_spec"]
    feature_log = FeatureLog(retrain_config.retrain.feature_log_url, spec, "reader")
    logged = Counter()
    for item in feature_log.files("rows"):
        logged[item.detector] += item.rows
    assert set(logged) == {"trainer-t", "scorer-s"}
    assert sum(logged.values()) == 3600
    labels_by_detector = Counter()
    for item in feature_log.files("labels"):
        labels_by_detector[item.detector] += item.rows
    assert labels_by_detector == {"trainer-t": 3000, "scorer-s": 3000}
    assert [a["type"] for a in control_events(retrain_config)] == ["model_published"]


def test_sustained_drift_starts_a_retraining_from_the_logged_labels(kafka_config: FraudkitConfig) -> None:
    # Labels alone never start one here (every_labels is out of reach): only the drift trigger can.
    config = overridden(
        kafka_config,
        {
            **RETRAIN_OVERRIDES,
            "retrain.every_labels": 10**9,
            "drift.retrain_after_s": 1.0,
            "drift.window_rows": 1000,
            "drift.min_rows": 500,
        },
    )
    spec = FeatureSpec.from_config(FeaturesConfig(), SimulatorFields())
    training = OnlineFeatures(spec).transform([transaction(i) for i in range(100_000, 104_000)])
    reference = training_reference(training, spec.names, None, bins=10)
    # Card and terminal windows fill up as this short stream starts: watch the amount features only.
    reference["features"] = {k: v for k, v in reference["features"].items() if k in ("amount", "log_amount")}
    publish_indifferent_model(config, drift_reference=reference)
    kafka.ensure_topics(config)
    watch = VerdictWatch(config)
    telemetry = DetectTelemetry(config, "trainer-d")
    with detector(config, "trainer-d", telemetry) as running:
        stats = running.extension.stats
        score_then_label(config, watch, range(2000))
        wait_for(lambda: stats.buffer_rows >= 2000, 60, "the labels in the feature log")
        assert stats.jobs == 0 and not [line for line in running.logs if "drifted" in line]
        # The same stream with amounts five times larger: the amount features drift.
        produce(config, config.topics.transactions, [transaction(i, 5.0) for i in range(2000, 4000)])
        wait_for(lambda: stats.last is not None, 180, "a retraining outcome")
    running.summary  # noqa: B018 (joins the detector, raising its error if it failed)
    watch.close()
    assert (stats.jobs, stats.drift_triggered) == (1, 1), stats.last
    assert stats.last is not None and stats.last["type"] in ("model_published", "model_rejected"), stats.last
    alarm = next(i for i, line in enumerate(running.logs) if line.startswith("amount drifted: PSI"))
    started = next(i for i, line in enumerate(running.logs) if line.startswith("retraining started after"))
    assert started > alarm
    assert "amount" in running.logs[started] and "drifted for" in running.logs[started]
    assert "drift.retrain_after_s" in running.logs[started]
