"""The embedded broker: lifecycle commands and a produce/consume round trip."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fraudkit.broker import BrokerManager, free_port, port_in_use
from fraudkit.cli import app
from fraudkit.config import FraudkitConfig
from fraudkit.kafka import (
    DeliveryTracker,
    ensure_topics,
    flush,
    list_topics,
    make_consumer,
    make_producer,
    produce,
)

pytestmark = pytest.mark.kafka
runner = CliRunner()


def test_broker_start_status_stop(tmp_path: Path) -> None:
    port = free_port()
    args = ["--set", f"broker.state_dir={tmp_path}"]
    started = runner.invoke(app, ["broker", "start", "--port", str(port), *args])
    try:
        assert started.exit_code == 0, started.output + started.stderr
        assert f"127.0.0.1:{port}" in started.output
        assert port_in_use(port)
        status = runner.invoke(app, ["broker", "status", *args])
        assert status.exit_code == 0 and "running" in status.output
        again = runner.invoke(app, ["broker", "start", "--port", str(port), *args])
        assert again.exit_code == 3 and "already running" in again.stderr
    finally:
        stopped = runner.invoke(app, ["broker", "stop", *args])
    assert stopped.exit_code == 0 and "stopped" in stopped.output
    deadline = time.monotonic() + 5
    while port_in_use(port) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not port_in_use(port)
    assert BrokerManager(tmp_path).status() is None


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
