"""Durable detector state on a real broker: kill -9, restarts and partition moves lose no card state."""

from __future__ import annotations

import json
import signal
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from tests.integration.test_detect import (
    SimulatorFields,
    detector_process,
    read_topic,
    verdict_counter,
    wait_for,
    write_config_file,
)

from fraudkit.config import FeaturesConfig, FraudkitConfig
from fraudkit.detect import DetectSummary, run_detect
from fraudkit.features import FeatureSpec
from fraudkit.model.network import Normalisation
from fraudkit.model.registry import Registry
from fraudkit.schema import Label, Transaction, encode
from fraudkit.state.store import changelog_topic
from fraudkit.stream import kafka

pytestmark = pytest.mark.kafka

START_MS = 1_767_225_600_000
TOTAL = 3600


def publish_one_unit(config: FraudkitConfig, weights: dict[str, float]) -> str:
    """Publish a one-unit model that scores a weighted sum of the named features."""
    spec = FeatureSpec.from_config(FeaturesConfig(), SimulatorFields())
    assert set(weights) <= set(spec.names), sorted(set(weights) - set(spec.names))
    width = len(spec.names)
    layer = np.zeros((1, width), dtype=np.float32)
    for name, weight in weights.items():
        layer[0, spec.names.index(name)] = weight
    state = {
        "hidden.0.weight": layer,
        "hidden.0.bias": np.full(1, 4.0, dtype=np.float32),  # keeps the ReLU unit in its linear part
        "output.weight": np.ones((1, 1), dtype=np.float32),
        "output.bias": np.array([-5.0], dtype=np.float32),
    }
    return Registry(config.registry.path).publish(
        state,
        feature_names=spec.names,
        hidden_sizes=[1],
        normalisation=Normalisation(np.zeros(width), np.ones(width)),
        threshold=0.5,
        feature_spec=spec.to_dict(),
    )


# The score moves with every card window (counts and means): lost card state changes it.
CARD_WEIGHTS = {
    "card_count_1h": 0.3,
    "card_count_24h": 0.05,
    "card_count_168h": 0.01,
    "card_mean_amount_24h": 0.002,
    "card_mean_amount_720h": -0.001,
    "card_log_seconds_since_prev": -0.05,
    "card_new_terminal": 0.4,
}


def card_transaction(index: int) -> Transaction:
    # 23 cards, a row every 90 s: each card sees ~1.6 rows an hour, so every window is busy.
    return Transaction(
        transaction_id=f"tx-{index:06d}",
        event_time_ms=START_MS + index * 90_000,
        card_id=f"card-{index % 23:03d}",
        amount=float((index * 37) % 400) + 0.25,
        customer_id=f"cust-{index % 23:03d}",
        terminal_id=f"term-{(index * 7) % 13:03d}",
        currency="EUR",
        merchant_category="grocery",
        country="DE",
        lat=48.1,
        lon=11.6,
    )


@pytest.fixture
def state_config(kafka_config: FraudkitConfig, tmp_path: Path) -> FraudkitConfig:
    config = kafka_config.model_copy(
        update={"state": kafka_config.state.model_copy(update={"snapshot_url": str(tmp_path / "state")})}
    )
    publish_one_unit(config, CARD_WEIGHTS)
    kafka.ensure_topics(config)
    return config


def feed(config: FraudkitConfig, first: int, last: int, pause_every: int = 100) -> None:
    producer = kafka.make_producer(config)
    for index in range(first, last):
        tx = card_transaction(index)
        kafka.produce(producer, config.topics.transactions, encode(tx), key=tx.card_id)
        if index % pause_every == pause_every - 1:
            producer.poll(0)
            time.sleep(0.05)
    kafka.flush(producer)


def scores_by_detector(
    config: FraudkitConfig, isolation: str = "read_uncommitted"
) -> dict[str, dict[str, list[float]]]:
    found: dict[str, dict[str, list[float]]] = {}
    for message in read_topic(config, config.topics.verdicts, isolation):
        verdict = orjson.loads(message.value())
        found.setdefault(verdict["detector"], {}).setdefault(verdict["transaction_id"], []).append(
            verdict["score"]
        )
    return found


def reference_scores(config: FraudkitConfig) -> dict[str, float]:
    """One uninterrupted detector over the whole topic: its own group, verdicts topic and no state."""
    reference = config.model_copy(
        update={
            "detect": config.detect.model_copy(update={"group_id": config.detect.group_id + "-reference"}),
            "topics": config.topics.model_copy(update={"verdicts": config.topics.verdicts + ".reference"}),
            "state": config.state.model_copy(update={"enabled": False}),
        }
    )
    summary = run_detect(reference, until_idle_s=3, instance_id="reference")
    assert summary.consumed == TOTAL
    scores = {
        orjson.loads(m.value())["transaction_id"]: orjson.loads(m.value())["score"]
        for m in read_topic(reference, reference.topics.verdicts)
    }
    assert len(scores) == TOTAL
    return scores


def assert_scores_equal(after: dict[str, list[float]], reference: dict[str, float], skip: set[str]) -> int:
    compared = 0
    differing = []
    for transaction_id, scores in after.items():
        if transaction_id in skip:
            continue
        compared += 1
        if any(abs(score - reference[transaction_id]) > 1e-6 for score in scores):
            differing.append((transaction_id, scores, reference[transaction_id]))
    assert not differing, f"{len(differing)} of {compared} scores differ, e.g. {differing[:3]}"
    return compared


def kill_mid_stream(config: FraudkitConfig, config_path: Path, args: tuple[str, ...]) -> None:
    """Start a detector process, feed until it has scored ~1/3 of the stream, kill -9 it, feed the rest."""
    detector = detector_process(config_path, *args)
    try:
        feed(config, 0, 100)
        with verdict_counter(config) as count:
            wait_for(lambda: count() > 0, 60, "the detector's first verdict")
            feeder = threading.Thread(target=feed, args=(config, 100, TOTAL))
            feeder.start()
            wait_for(lambda: count() >= 1200, 60, "the first verdicts")
        detector.send_signal(signal.SIGKILL)
        detector.wait(10)
        feeder.join(60)
    finally:
        if detector.poll() is None:
            detector.kill()
    assert detector.returncode == -signal.SIGKILL


@pytest.mark.slow
@pytest.mark.parametrize("commit_interval_ms", [0.0, 250.0])
def test_kill_9_and_restart_scores_equal_an_uninterrupted_detector(
    state_config: FraudkitConfig, tmp_path: Path, commit_interval_ms: float
) -> None:
    # 0: each batch's changed cards are written with it (the default); 250: once per interval.
    config = state_config.model_copy(
        update={"state": state_config.state.model_copy(update={"commit_interval_ms": commit_interval_ms})}
    )
    config_path = write_config_file(config, tmp_path / "config.yaml")
    kill_mid_stream(config, config_path, ("--batch-size", "100", "--instance-id", "victim"))
    restarted = detector_process(config_path, "--until-idle", "3", "--instance-id", "survivor")
    out, err = restarted.communicate(timeout=120)
    assert restarted.returncode == 0, err
    summary = json.loads(out)
    state = summary["state"]
    assert state["restored_cards"] == 23 and state["restores"] >= 1, state
    assert state["changelog_topic"] == changelog_topic(config)
    assert state["invalid_records"] == 0

    by_detector = scores_by_detector(config)
    victim, survivor = by_detector["victim"], by_detector["survivor"]
    assert set(victim) | set(survivor) == {f"tx-{i:06d}" for i in range(TOTAL)}
    replayed = set(victim) & set(survivor)  # scored before the kill, offsets not yet committed
    # Of those, the rows whose card state had been sealed into the changelog are kept out of the
    # windows (scored against a state that holds them: duplicates); the rows after the last seal
    # are new to the restored state and must score exactly like the reference.
    assert 0 <= state["replayed_rows"] <= len(replayed)
    if config.state.commit_interval_ms == 0:
        assert state["replayed_rows"] == len(replayed)  # every batch's state went out with it
    reference = reference_scores(config)
    compared = assert_scores_equal(survivor, reference, replayed)
    assert compared >= 1000
    unsealed_equal = sum(all(abs(score - reference[tx]) <= 1e-6 for score in survivor[tx]) for tx in replayed)
    assert unsealed_equal >= len(replayed) - state["replayed_rows"]
    print(f"kill -9: {compared} scores after the restart equal the reference; {len(replayed)} replayed")


@pytest.mark.slow
def test_exactly_once_crash_keeps_state_and_outputs_consistent(
    state_config: FraudkitConfig, tmp_path: Path
) -> None:
    config = state_config
    config_path = write_config_file(config, tmp_path / "config.yaml")
    args = ("--exactly-once", "--batch-size", "100", "--instance-id", "eos")
    kill_mid_stream(config, config_path, args)
    # The same instance id fences the killed producer: its open transaction (outputs and state) aborts.
    restarted = detector_process(config_path, *args, "--until-idle", "3")
    out, err = restarted.communicate(timeout=120)
    assert restarted.returncode == 0, err
    state = json.loads(out)["state"]
    assert state["restored_cards"] == 23
    assert state["replayed_rows"] == 0  # committed state and committed offsets are one transaction
    verdicts = scores_by_detector(config, "read_committed")["eos"]
    assert set(verdicts) == {f"tx-{i:06d}" for i in range(TOTAL)}
    assert max(len(scores) for scores in verdicts.values()) == 1
    # Every committed verdict, before and after the crash, is the uninterrupted detector's.
    assert assert_scores_equal(verdicts, reference_scores(config), set()) == TOTAL


def group_members_with_partitions(config: FraudkitConfig) -> int:
    """Members of the detectors' group that own at least one transactions partition right now."""
    admin = kafka.make_admin(config)
    group = config.detect.group_id
    try:
        description = admin.describe_consumer_groups([group], request_timeout=10)[group].result(timeout=10)
    except kafka.KafkaException:
        return 0
    topic = config.topics.transactions
    return sum(
        1
        for member in description.members
        if member.assignment and any(tp.topic == topic for tp in member.assignment.topic_partitions)
    )


def test_a_partition_moved_to_a_second_detector_keeps_its_cards_features(
    state_config: FraudkitConfig,
) -> None:
    config = state_config
    summaries: dict[str, DetectSummary] = {}
    first_stop = threading.Event()

    def run(name: str, stop: threading.Event | None = None) -> None:
        summaries[name] = run_detect(config, until_idle_s=4, instance_id=name, stop_event=stop)

    feed(config, 0, TOTAL // 2)
    first = threading.Thread(target=run, args=("first", first_stop))
    first.start()
    with verdict_counter(config) as count:
        wait_for(lambda: count() >= TOTAL // 2, 60, "the first half's verdicts")
    # A second detector joins: the group moves some partitions (and their cards) to it. The second
    # half is produced once both own partitions, so the first cannot have read it all before.
    second = threading.Thread(target=run, args=("second",))
    second.start()
    wait_for(lambda: group_members_with_partitions(config) >= 2, 90, "both detectors owning partitions")
    feeder = threading.Thread(target=feed, args=(config, TOTAL // 2, TOTAL))
    feeder.start()
    feeder.join(60)
    second.join(120)
    first.join(120)
    assert not first.is_alive() and not second.is_alive()
    moved = summaries["second"].state
    assert moved["restored_cards"] > 0, moved
    by_detector = scores_by_detector(config)
    assert by_detector.get("second"), "the second detector got no partition"
    duplicated = set(by_detector["first"]) & set(by_detector["second"])
    reference = reference_scores(config)
    compared = sum(
        assert_scores_equal(by_detector[name], reference, duplicated) for name in ("first", "second")
    )
    assert compared >= TOTAL - len(duplicated)


# -- terminal labels outlive the labels topic's retention --------------------------------------

DAY_MS = 86_400_000
OLD_LABELS = 1500
NEW_LABELS = 200
SCORED = 1000


# The score moves with every terminal window (fraud rates and counts): lost labels change it.
TERMINAL_WEIGHTS = {
    **{f"terminal_fraud_rate_{days}d": 3.0 for days in (1, 7, 30)},
    **{f"terminal_count_{days}d": 0.01 for days in (1, 7, 30)},
}


def terminal_label(index: int, new: bool) -> Label:
    """Old labels: event days 0 to 8, a fraud rate per terminal; new ones (after the loss): days 1 to 4."""
    terminal = index % 13
    if new:
        event_time, fraud = START_MS + DAY_MS + index * 1_200_000, index % 3 == 0
    else:
        event_time, fraud = START_MS + index * 480_000, (index // 13) % (2 + terminal % 5) == 0
    return Label(
        transaction_id=f"{'new' if new else 'old'}-{index:05d}",
        event_time_ms=event_time,
        label=int(fraud),
        terminal_id=f"term-{terminal:03d}",
    )


def terminal_transaction(index: int) -> Transaction:
    # From event day 7 on, a row every 6 minutes: with the 7-day label delay, days 0 to 4 of labels count.
    return Transaction(
        transaction_id=f"tx-{index:06d}",
        event_time_ms=START_MS + 7 * DAY_MS + index * 360_000,
        card_id=f"card-{index % 23:03d}",
        amount=float((index * 37) % 400) + 0.25,
        terminal_id=f"term-{(index * 7) % 13:03d}",
        country="DE",
        lat=48.1,
        lon=11.6,
    )


def produce_all(config: FraudkitConfig, topic: str, records: list[Any], key: str) -> None:
    producer = kafka.make_producer(config)
    for record in records:
        kafka.produce(producer, topic, encode(record), key=getattr(record, key))
    kafka.flush(producer)


def set_retention(config: FraudkitConfig, topic: str, retention_ms: int) -> None:
    from confluent_kafka.admin import AlterConfigOpType, ConfigEntry, ConfigResource, ResourceType

    entry = ConfigEntry("retention.ms", str(retention_ms), incremental_operation=AlterConfigOpType.SET)
    resource = ConfigResource(ResourceType.TOPIC, topic, incremental_configs=[entry])
    admin = kafka.make_admin(config)
    for future in admin.incremental_alter_configs([resource]).values():
        future.result(timeout=15)


def wait_until_deleted(
    config: FraudkitConfig, topic: str, records: int, timeout_s: float = 90
) -> list[tuple[int, int]]:
    """Until the broker has deleted every record of the topic (low == high watermark everywhere)."""
    reader = kafka.make_reader(config)
    partitions = [kafka.TopicPartition(topic, p) for p in range(kafka.list_topics(config)[topic])]
    marks: list[tuple[int, int]] = []
    try:
        # Apache Kafka checks retention every 2 s here (stream/broker.py), first 30 s after its start.
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            marks = [reader.get_watermark_offsets(tp, timeout=10, cached=False) for tp in partitions]
            if sum(high for _, high in marks) == records and all(low == high for low, high in marks):
                break
            time.sleep(0.5)
    finally:
        reader.close()
    return marks


def with_updates(config: FraudkitConfig, **sections: dict[str, Any]) -> FraudkitConfig:
    return config.model_copy(
        update={name: getattr(config, name).model_copy(update=values) for name, values in sections.items()}
    )


def test_terminal_labels_survive_the_labels_topics_retention(
    kafka_config: FraudkitConfig, tmp_path: Path
) -> None:
    """A detector restarted after the broker deleted every label it had read scores as one that never lost them.

    The labels' retention is shortened only after the first detector has read them and written its
    snapshot at stop (a short retention from the start would race that read).
    """
    config = with_updates(kafka_config, state={"snapshot_url": str(tmp_path / "state")})
    publish_one_unit(config, TERMINAL_WEIGHTS)
    kafka.ensure_topics(config)
    # The reference reads the same labels from a copy the broker keeps.
    reference = with_updates(
        config,
        detect={"group_id": config.detect.group_id + "-reference"},
        topics={"verdicts": config.topics.verdicts + ".reference", "labels": config.topics.labels + ".kept"},
        state={"enabled": False},
    )
    kafka.ensure_topics(reference, [reference.topics.verdicts, reference.topics.labels])
    old = [terminal_label(i, new=False) for i in range(OLD_LABELS)]
    assert 0 < sum(label.label for label in old) < OLD_LABELS
    for labels_config in (config, reference):
        produce_all(labels_config, labels_config.topics.labels, old, "terminal_id")
    first_half = [terminal_transaction(i) for i in range(SCORED // 2)]
    produce_all(config, config.topics.transactions, first_half, "card_id")

    before = run_detect(config, until_idle_s=3, instance_id="before")
    assert before.consumed == SCORED // 2 and before.labels == OLD_LABELS
    assert before.state["snapshots_written"] >= 1 and before.state["terminal_labels_restored"] == 0

    set_retention(config, config.topics.labels, 1000)
    marks = wait_until_deleted(config, config.topics.labels, OLD_LABELS)
    assert sum(high for _, high in marks) == OLD_LABELS
    assert all(low == high for low, high in marks), f"labels still on the broker: {marks}"
    assert all(low > 0 for low, _ in marks), marks  # every partition lost labels
    set_retention(config, config.topics.labels, 7 * DAY_MS)
    # Labels newer than the snapshot are still on the topic: the restart must resume exactly there.
    new = [terminal_label(i, new=True) for i in range(NEW_LABELS)]
    for labels_config in (config, reference):
        produce_all(labels_config, labels_config.topics.labels, new, "terminal_id")
    second_half = [terminal_transaction(i) for i in range(SCORED // 2, SCORED)]
    produce_all(config, config.topics.transactions, second_half, "card_id")

    logged: list[str] = []
    restarted = run_detect(config, until_idle_s=3, instance_id="after", on_log=logged.append)
    assert restarted.state["terminal_labels_restored"] == OLD_LABELS, restarted.state
    assert any(f"restored {OLD_LABELS:,} terminal labels from" in line for line in logged), logged
    assert restarted.labels == NEW_LABELS  # resumed at the snapshot's offsets: none twice, none missed
    assert restarted.consumed == SCORED // 2
    after = scores_by_detector(config)["after"]
    assert set(after) == {tx.transaction_id for tx in second_half}
    assert max(len(scores) for scores in after.values()) == 1

    # The reference never lost a label; a cold detector (no snapshot: it re-reads what the topic
    # still holds) shows that the comparison depends on the lost ones. Both score the whole stream.
    cold = with_updates(
        config,
        detect={"group_id": config.detect.group_id + "-cold"},
        topics={"verdicts": config.topics.verdicts + ".cold"},
        state={"enabled": False},
    )
    kafka.ensure_topics(cold, [cold.topics.verdicts])
    summaries: dict[str, DetectSummary] = {}

    def run(name: str, settings: FraudkitConfig) -> None:
        summaries[name] = run_detect(settings, until_idle_s=3, instance_id=name)

    runs = [threading.Thread(target=run, args=item) for item in (("reference", reference), ("cold", cold))]
    for thread in runs:
        thread.start()
    for thread in runs:
        thread.join(120)
    assert summaries["reference"].consumed == SCORED == summaries["cold"].consumed
    assert summaries["reference"].labels == OLD_LABELS + NEW_LABELS
    assert summaries["cold"].labels == NEW_LABELS
    expected = scores_by_detector(reference)["reference"]
    assert assert_scores_equal(after, {t: s[0] for t, s in expected.items()}, set()) == SCORED // 2
    cold_scores = scores_by_detector(cold)["cold"]
    differing = sum(1 for t in after if abs(cold_scores[t][0] - expected[t][0]) > 1e-6)
    assert differing > 0.9 * len(after), f"only {differing} of {len(after)} scores need the lost labels"
