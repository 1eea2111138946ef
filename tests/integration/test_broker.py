"""Local brokers (Apache Kafka and Tansu): lifecycle commands, a round trip, and the Kafka
behaviour fraudkit relies on (retention, KIP-848 groups under the new protocol, static membership)."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import make_config
from fraudkit.cli import app
from fraudkit.config import FraudkitConfig
from fraudkit.state.store import changelog_topic
from fraudkit.stream.broker import BrokerManager, free_port, port_in_use, process_start_ticks
from fraudkit.stream.kafka import (
    OFFSET_BEGINNING,
    DeliveryTracker,
    TopicPartition,
    all_topic_names,
    ensure_changelog,
    ensure_topics,
    flush,
    list_topics,
    make_admin,
    make_consumer,
    make_producer,
    make_reader,
    produce,
)

pytestmark = pytest.mark.kafka
runner = CliRunner()


def requires_kafka(broker_engine: str) -> None:
    """These tests pin Apache Kafka's behaviour; the suite's main engine is Apache Kafka in CI."""
    if broker_engine != "kafka":
        pytest.skip("pins Apache Kafka behaviour (FRAUDKIT_TEST_BROKER=tansu runs the fallback)")


@pytest.mark.tansu
def test_broker_start_status_stop(tmp_path: Path, broker_engine: str) -> None:
    port = free_port()
    args = ["--set", f"broker.state_dir={tmp_path}"]
    started = runner.invoke(app, ["broker", "start", "--engine", broker_engine, "--port", str(port), *args])
    try:
        assert started.exit_code == 0, started.output + started.stderr
        assert f"127.0.0.1:{port}" in started.output
        assert port_in_use(port)
        status = runner.invoke(app, ["broker", "status", *args])
        assert status.exit_code == 0 and "running" in status.output
        expected = "Apache Kafka 4.1.1" if broker_engine == "kafka" else "Tansu"
        assert expected in status.output
        again = runner.invoke(app, ["broker", "start", "--engine", broker_engine, "--port", str(port), *args])
        assert again.exit_code == 3 and "already running" in again.stderr
    finally:
        stopped = runner.invoke(app, ["broker", "stop", *args])
    assert stopped.exit_code == 0 and "stopped" in stopped.output
    deadline = time.monotonic() + 10
    while port_in_use(port) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not port_in_use(port)
    assert BrokerManager(tmp_path).status() is None


@pytest.mark.slow
def test_three_broker_cluster_replicates_and_survives_one_node(tmp_path: Path, broker_engine: str) -> None:
    from fraudkit.stream.broker import running_cluster

    requires_kafka(broker_engine)
    with running_cluster("kafka", brokers=3, timeout_s=120) as cluster:
        config = make_config(
            tmp_path,
            {
                "kafka.common.bootstrap.servers": cluster.bootstrap_servers,
                "topics.replication_factor": 3,
                "kafka.producer.enable.idempotence": True,
            },
        )
        topic = config.topics.transactions
        ensure_topics(config, [topic])
        metadata = make_reader(config).list_topics(topic, timeout=10)
        for partition in metadata.topics[topic].partitions.values():
            assert len(partition.replicas) == 3 and len(partition.isrs) == 3
        cluster.stop_node(1)
        producer = make_producer(config)
        tracker = DeliveryTracker()
        for i in range(300):
            produce(producer, topic, f"{i}".encode(), key=f"k{i % 5}", on_delivery=tracker.callback)
        flush(producer, 60)
        tracker.check()
        assert tracker.delivered == 300  # acks=all with min.insync.replicas=2: two of three suffice
        cluster.start_node(1, timeout_s=120)


def test_missing_java_is_a_clear_exit_3(tmp_path: Path) -> None:
    env = {"PATH": str(tmp_path), "JAVA_HOME": str(tmp_path / "nojava")}
    result = runner.invoke(
        app, ["broker", "start", "--engine", "kafka", "--set", f"broker.state_dir={tmp_path}"], env=env
    )
    assert result.exit_code == 3
    assert "Apache Kafka needs Java 17" in result.stderr
    assert "Traceback" not in result.output + result.stderr


def test_install_without_maven_is_a_clear_exit_3(tmp_path: Path) -> None:
    env = {"PATH": str(tmp_path)}
    result = runner.invoke(app, ["broker", "install", "--set", f"broker.cache_dir={tmp_path}"], env=env)
    assert result.exit_code == 3
    assert "needs Maven" in result.stderr


def test_start_without_installed_jars_names_the_install_step(tmp_path: Path) -> None:
    result = runner.invoke(
        app,
        [
            "broker",
            "start",
            "--engine",
            "kafka",
            "--set",
            f"broker.state_dir={tmp_path}",
            "--set",
            f"broker.cache_dir={tmp_path / 'empty'}",
        ],
    )
    assert result.exit_code == 3
    assert "run `fraudkit broker install`" in result.stderr


def _write_state(state_dir: Path, pid: int, argv: list[str], ticks: int, engine: str = "kafka") -> None:
    state_dir.mkdir(parents=True, exist_ok=True)
    record = {
        "engine": engine,
        "ports": [free_port()],
        "processes": [{"pid": pid, "argv": argv, "start_ticks": ticks}],
        "started_at": time.time(),
    }
    (state_dir / "broker.json").write_text(json.dumps(record))


@pytest.mark.parametrize("pid", [-1, 0, 1])
def test_stop_refuses_a_state_file_naming_a_process_group_or_init(tmp_path: Path, pid: int) -> None:
    _write_state(tmp_path, pid, ["java", "kafka.Kafka"], 1)
    result = runner.invoke(app, ["broker", "stop", "--set", f"broker.state_dir={tmp_path}"])
    assert result.exit_code == 3
    assert "refusing to signal anything" in result.stderr


def test_stop_leaves_alone_a_process_it_did_not_start(tmp_path: Path) -> None:
    # A live process of ours, recorded with its true pid, argv and start time, but not running the
    # broker command this state directory would run: stop must not signal it.
    java = subprocess.Popen(["sleep", "60"])
    try:
        ticks = process_start_ticks(java.pid)
        assert ticks is not None
        _write_state(tmp_path, java.pid, ["sleep", "60"], ticks)
        result = runner.invoke(app, ["broker", "stop", "--set", f"broker.state_dir={tmp_path}"])
        assert result.exit_code == 0 and "not running" in result.output
        time.sleep(0.2)
        assert java.poll() is None
        # Our own pid is never a broker either.
        _write_state(tmp_path, os.getpid(), ["python"], process_start_ticks(os.getpid()) or 0)
        assert BrokerManager(tmp_path).status() is None
    finally:
        java.kill()
        java.wait(10)


def test_stop_refuses_a_recycled_pid(tmp_path: Path) -> None:
    other = subprocess.Popen(["sleep", "60"])
    try:
        ticks = process_start_ticks(other.pid)
        assert ticks is not None
        _write_state(tmp_path, other.pid, ["sleep", "60"], ticks + 1)  # a different start time
        manager = BrokerManager(tmp_path)
        state = manager.read_state()
        assert state is not None and not manager.is_ours(state, 0)
        assert manager.stop() is None
        assert other.poll() is None
    finally:
        other.kill()
        other.wait(10)


def test_broker_refuses_a_port_in_use(kafka_bootstrap: str, tmp_path: Path) -> None:
    port = kafka_bootstrap.rsplit(":", 1)[1]
    result = runner.invoke(app, ["broker", "start", "--port", port, "--set", f"broker.state_dir={tmp_path}"])
    assert result.exit_code == 3
    assert f"port {port} is already in use" in result.stderr


def test_stop_only_stops_what_it_started(kafka_bootstrap: str, tmp_path: Path) -> None:
    result = runner.invoke(app, ["broker", "stop", "--set", f"broker.state_dir={tmp_path}"])
    assert result.exit_code == 0 and "not running" in result.output
    assert port_in_use(int(kafka_bootstrap.rsplit(":", 1)[1]))


def test_topics_created_with_configured_partitions(kafka_config: FraudkitConfig) -> None:
    created = ensure_topics(kafka_config)
    assert kafka_config.topics.transactions in created
    topics = list_topics(kafka_config)
    assert topics[kafka_config.topics.transactions] == 3
    assert topics[kafka_config.topics.verdicts] == 2
    assert ensure_topics(kafka_config) == []


@pytest.mark.tansu
def test_produce_consume_round_trip(kafka_config: FraudkitConfig) -> None:
    topic = kafka_config.topics.transactions
    ensure_topics(kafka_config, [topic])
    producer = make_producer(kafka_config)
    tracker = DeliveryTracker()
    for i in range(500):
        produce(
            producer,
            topic,
            f'{{"n": {i}}}'.encode(),
            key=f"card-{i % 7}",
            on_delivery=tracker.callback,
        )
    flush(producer)
    tracker.check()
    assert tracker.delivered == 500
    consumer = make_consumer(kafka_config, kafka_config.detect.group_id)
    consumer.subscribe([topic])
    seen: dict[str, list[int]] = {}
    deadline = time.monotonic() + 30
    total = 0
    while total < 500 and time.monotonic() < deadline:
        for message in consumer.consume(1000, 0.5):
            assert message.error() is None
            seen.setdefault(message.key().decode(), []).append(int(message.value()[6:-1]))
            total += 1
    consumer.close()
    assert total == 500
    for key, values in seen.items():
        assert values == sorted(values), f"order broken for {key}"


def test_retention_is_enforced(kafka_bootstrap: str, tmp_path: Path, broker_engine: str) -> None:
    requires_kafka(broker_engine)  # Tansu does not enforce retention (README)
    config = make_config(
        tmp_path, {"kafka.common.bootstrap.servers": kafka_bootstrap, "topics.retention_ms": 1000}
    )
    topic = config.topics.verdicts  # the labels topic has its own retention (topics.labels_retention_ms)
    ensure_topics(config, [topic])
    producer = make_producer(config)
    for i in range(100):
        produce(producer, topic, f"{i}".encode(), key="k")
    flush(producer)
    reader = make_reader(config)
    partitions = [TopicPartition(topic, p) for p in range(config.topics.partitions)]
    try:
        # The broker checks retention every 2 s, its first check 30 s after it started.
        deadline = time.monotonic() + 90
        marks: list[tuple[int, int]] = []
        while time.monotonic() < deadline:
            marks = [reader.get_watermark_offsets(tp, timeout=10) for tp in partitions]
            if sum(high for _, high in marks) == 100 and all(low == high for low, high in marks):
                break
            time.sleep(0.5)
        assert sum(high for _, high in marks) == 100
        assert all(low == high for low, high in marks), f"records past retention.ms still stored: {marks}"
        reader.assign([TopicPartition(topic, tp.partition, OFFSET_BEGINNING) for tp in partitions])
        assert [m for m in reader.consume(100, 2.0) if m.error() is None] == []
    finally:
        reader.close()


def topic_settings(config: FraudkitConfig, topics: list[str]) -> dict[str, dict[str, str]]:
    """Each topic's effective settings as the broker reports them (DescribeConfigs)."""
    from confluent_kafka.admin import ConfigResource, ResourceType

    admin = make_admin(config)
    futures = admin.describe_configs(
        [ConfigResource(ResourceType.TOPIC, t) for t in topics], request_timeout=15
    )
    return {
        resource.name: {name: str(entry.value) for name, entry in future.result(timeout=15).items()}
        for resource, future in futures.items()
    }


DAY_MS = 86_400_000


def test_created_topics_have_the_production_retention_and_a_compacted_changelog(
    kafka_bootstrap: str, tmp_path: Path, broker_engine: str
) -> None:
    requires_kafka(broker_engine)  # DescribeConfigs of topic settings is pinned on Apache Kafka
    config = make_config(tmp_path, {"kafka.common.bootstrap.servers": kafka_bootstrap})
    topics = config.topics
    # The production defaults (docs/scaling.md): a week for what is re-read after an outage, 35
    # days of card state. make_config overrides names and partitions only.
    assert (topics.retention_ms, topics.labels_retention_ms) == (7 * DAY_MS, 7 * DAY_MS)
    assert topics.changelog_retention_ms == 35 * DAY_MS
    created = ensure_topics(config)
    assert sorted(created) == sorted(all_topic_names(config))
    changelog = changelog_topic(config)
    assert ensure_changelog(config, changelog, topics.transactions_partitions)
    settings = topic_settings(config, [*created, changelog])
    retention = {name: int(values["retention.ms"]) for name, values in settings.items()}
    assert retention == {
        topics.transactions: 7 * DAY_MS,
        topics.legit: 7 * DAY_MS,
        topics.fraud: 7 * DAY_MS,
        topics.verdicts: 7 * DAY_MS,
        topics.labels: 7 * DAY_MS,
        topics.dead_letter: 7 * DAY_MS,
        topics.control: 7 * DAY_MS,
        changelog: 35 * DAY_MS,
    }
    assert settings[changelog]["cleanup.policy"] == "compact,delete"
    assert settings[changelog]["min.compaction.lag.ms"] == "0"
    assert settings[changelog]["segment.ms"] == str(DAY_MS)  # closed segments can be compacted daily
    assert {settings[name]["cleanup.policy"] for name in created} == {"delete"}
    assert list_topics(config)[changelog] == topics.transactions_partitions  # co-partitioned


def test_topics_take_their_retention_from_the_config(
    kafka_bootstrap: str, tmp_path: Path, broker_engine: str
) -> None:
    requires_kafka(broker_engine)
    values = {"topics.retention_ms": 3_600_000, "topics.labels_retention_ms": DAY_MS}
    config = make_config(
        tmp_path,
        {
            "kafka.common.bootstrap.servers": kafka_bootstrap,
            **values,
            "topics.changelog_retention_ms": 7 * DAY_MS,
        },
    )
    topics = config.topics
    ensure_topics(config, [topics.transactions, topics.labels])
    changelog = changelog_topic(config)
    ensure_changelog(config, changelog, topics.transactions_partitions)
    settings = topic_settings(config, [topics.transactions, topics.labels, changelog])
    assert {name: int(s["retention.ms"]) for name, s in settings.items()} == {
        topics.transactions: 3_600_000,
        topics.labels: DAY_MS,
        changelog: 7 * DAY_MS,
    }
    assert settings[changelog]["cleanup.policy"] == "compact,delete"


# Measured on Apache Kafka 4.1.1 under load (2 cores): the first member owned its partitions in
# 0.7-1.3 s. Sharing them takes up to two heartbeats (group.consumer.heartbeat.interval.ms = 5 s):
# the first member learns it must give partitions up on its next heartbeat, and the second gets
# them on its own next heartbeat after that. Measured 5.0-5.3 s mostly, 10.0 s once in CI, so the
# bound is two intervals plus about 3 s.
KIP848_HEARTBEAT_S = 5.0
KIP848_FIRST_JOIN_S = 4.0
KIP848_REBALANCE_S = 2 * KIP848_HEARTBEAT_S + 3.0


def _assigned(consumer: object, deadline_s: float) -> tuple[float, set[int]]:
    started = time.monotonic()
    while time.monotonic() - started < deadline_s:
        consumer.poll(0.1)  # type: ignore[attr-defined]
        partitions = {tp.partition for tp in consumer.assignment()}  # type: ignore[attr-defined]
        if partitions:
            return time.monotonic() - started, partitions
    return deadline_s, set()


def _group_type(config: FraudkitConfig, group_id: str) -> tuple[object, int]:
    """The group's protocol type and member count, as the broker describes it."""
    admin = make_admin(config)  # held while the future runs: a dropped client never answers it
    description = admin.describe_consumer_groups([group_id])[group_id].result(timeout=10)
    return description.type, len(description.members)


def test_kip848_consumer_group_protocol_joins_quickly(
    kafka_config: FraudkitConfig, broker_engine: str
) -> None:
    from confluent_kafka import ConsumerGroupType

    requires_kafka(broker_engine)
    config = kafka_config
    topic = config.topics.transactions
    group_id = config.detect.group_id
    ensure_topics(config, [topic])
    first = make_consumer(config, group_id, **{"group.protocol": "consumer"})
    second = make_consumer(config, group_id, **{"group.protocol": "consumer"})
    try:
        first.subscribe([topic])
        took, alone = _assigned(first, 15)
        assert alone == {0, 1, 2}
        assert took < KIP848_FIRST_JOIN_S, f"the first member took {took:.1f}s to get its partitions"
        # The broker runs the group under the new protocol (a classic group would say CLASSIC).
        assert _group_type(config, group_id) == (ConsumerGroupType.CONSUMER, 1)
        second.subscribe([topic])
        # Both members poll: the first must give partitions up before the second can have them.
        started = time.monotonic()
        deadline = started + KIP848_REBALANCE_S + 5
        mine: set[int] = alone
        theirs: set[int] = set()
        while time.monotonic() < deadline:
            first.poll(0.1)
            second.poll(0.1)
            mine = {tp.partition for tp in first.assignment()}
            theirs = {tp.partition for tp in second.assignment()}
            if mine and theirs and not mine & theirs and mine | theirs == {0, 1, 2}:
                break
        rebalanced = time.monotonic() - started
        assert mine and theirs and not mine & theirs and mine | theirs == {0, 1, 2}
        assert rebalanced < KIP848_REBALANCE_S, f"sharing the partitions took {rebalanced:.1f}s"
        assert _group_type(config, group_id) == (ConsumerGroupType.CONSUMER, 2)
    finally:
        first.close()
        second.close()


def test_static_membership_keeps_partitions_across_a_quick_restart(
    kafka_config: FraudkitConfig, broker_engine: str
) -> None:
    requires_kafka(broker_engine)
    config = kafka_config
    topic = config.topics.transactions
    ensure_topics(config, [topic])
    revoked: list[str] = []

    def member(instance: str) -> object:
        consumer = make_consumer(
            config, config.detect.group_id, **{"group.instance.id": instance, "session.timeout.ms": 30000}
        )
        consumer.subscribe([topic], on_revoke=lambda _c, parts: revoked.append(instance) if parts else None)
        return consumer

    stays, restarts = member("stays"), member("restarts")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        stays.poll(0.1)  # type: ignore[attr-defined]
        restarts.poll(0.1)  # type: ignore[attr-defined]
        a = {tp.partition for tp in stays.assignment()}  # type: ignore[attr-defined]
        b = {tp.partition for tp in restarts.assignment()}  # type: ignore[attr-defined]
        if a and b and a | b == {0, 1, 2}:
            break
    assert a and b and a | b == {0, 1, 2}
    revoked.clear()
    # A static member leaves no group on close: its partitions wait for it for session.timeout.ms.
    restarts.close()  # type: ignore[attr-defined]
    again = member("restarts")
    _, back = _assigned(again, 20)
    for _ in range(20):
        stays.poll(0.1)  # type: ignore[attr-defined]
    assert back == b
    assert {tp.partition for tp in stays.assignment()} == a  # type: ignore[attr-defined]
    assert "stays" not in revoked
    stays.close()  # type: ignore[attr-defined]
    again.close()  # type: ignore[attr-defined]
