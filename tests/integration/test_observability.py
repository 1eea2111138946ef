"""A detector on the real broker, watched the way Prometheus and Kubernetes watch it.

/metrics counters move with the stream, the model-serving gauge follows a hot swap announced on
the control topic, /readyz turns 200 only after the partition assignment, a shifted stream
raises the drift alarm, and the CLI's JSON logs parse line by line.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from fraudkit.config import FeaturesConfig, FraudkitConfig
from fraudkit.detect import DetectSummary, run_detect
from fraudkit.features import FeatureSpec, OnlineFeatures
from fraudkit.model.network import LoadedModel, Normalisation
from fraudkit.model.registry import Registry
from fraudkit.observability.detect_telemetry import DetectTelemetry
from fraudkit.observability.drift import training_reference
from fraudkit.observability.logs import EventLog
from fraudkit.observability.server import ObservabilityServer
from fraudkit.retrain.extension import MODEL_PUBLISHED, RetrainExtension, announce, control_message
from fraudkit.schema import Transaction, encode
from fraudkit.stream import kafka
from fraudkit.stream.broker import free_port

pytestmark = pytest.mark.kafka

START_MS = 1_767_225_600_000  # 2026-01-01


class SimulatorFields:
    has_card = True
    has_terminal = True
    has_location = True
    has_country = True
    passthrough: ClassVar[list[str]] = []


def transaction(index: int, amount_scale: float = 1.0) -> Transaction:
    return Transaction(
        transaction_id=f"tx-{index:06d}",
        event_time_ms=START_MS + index * 1000,
        card_id=f"card-{index % 37:03d}",
        amount=float((index * 7919) % 300) * amount_scale,
        customer_id=f"cust-{index % 37:03d}",
        terminal_id=f"term-{index % 11:03d}",
        currency="EUR",
        merchant_category="grocery",
        country="DE",
        lat=48.1,
        lon=11.6,
        produced_ms=int(time.time() * 1000),
    )


def publish_amount_model(config: FraudkitConfig, cutoff: float) -> str:
    """An MLP flagging amount >= cutoff, with the drift reference of the unshifted stream."""
    spec = FeatureSpec.from_config(FeaturesConfig(), SimulatorFields())
    width = len(spec.names)
    hidden = np.zeros((4, width), dtype=np.float32)
    hidden[0, spec.names.index("amount")] = 1.0
    state = {
        "hidden.0.weight": hidden,
        "hidden.0.bias": np.zeros(4, dtype=np.float32),
        "output.weight": np.array([[0.1, 0.0, 0.0, 0.0]], dtype=np.float32),
        "output.bias": np.array([-0.1 * cutoff], dtype=np.float32),
    }
    normalisation = Normalisation(np.zeros(width), np.ones(width))
    served = LoadedModel.from_state(state, spec.names, normalisation, 0.5, [4])
    training = OnlineFeatures(spec).transform([transaction(i) for i in range(100_000, 104_000)])
    reference = training_reference(training, spec.names, served.score, bins=10)
    # Card and terminal windows fill up as this short test stream starts (not stationary): the
    # alarm is checked on the amount features and the score only.
    reference["features"] = {k: v for k, v in reference["features"].items() if k in ("amount", "log_amount")}
    return Registry(config.registry.path).publish(
        state,
        feature_names=spec.names,
        hidden_sizes=[4],
        normalisation=normalisation,
        threshold=0.5,
        feature_spec=spec.to_dict(),
        drift_reference=reference,
    )


def produce(config: FraudkitConfig, values: list[tuple[bytes, str]]) -> None:
    producer = kafka.make_producer(config)
    for value, key in values:
        kafka.produce(producer, config.topics.transactions, value, key=key)
    kafka.flush(producer)


def produce_transactions(config: FraudkitConfig, transactions: list[Transaction]) -> None:
    produce(config, [(encode(tx), tx.card_id) for tx in transactions])


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def scrape(url: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    status, body = get(f"{url}/metrics")
    assert status == 200
    series: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            series.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
    return series


def value(series: dict[str, list[tuple[dict[str, str], float]]], name: str, **labels: str) -> float | None:
    for sample_labels, sample_value in series.get(name, []):
        if all(sample_labels.get(k) == v for k, v in labels.items()):
            return sample_value
    return None


def wait_for(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout_s:g}s waiting for {what}")


@dataclass
class Running:
    url: str
    logs: list[str]
    json_logs: io.StringIO
    thread: threading.Thread
    result: dict[str, Any] = field(default_factory=dict)
    ready_answers: list[tuple[int, dict[str, Any]]] = field(default_factory=list)

    @property
    def summary(self) -> DetectSummary:
        self.thread.join(60)
        assert not self.thread.is_alive(), "the detector did not stop"
        if "error" in self.result:
            raise self.result["error"]
        return self.result["summary"]


@contextmanager
def watched_detector(config: FraudkitConfig, instance_id: str) -> Iterator[Running]:
    """A detector thread (scorer role: swaps on announcements, never trains) behind a metrics server."""
    telemetry = DetectTelemetry(config, instance_id)
    server = ObservabilityServer(telemetry.registry, telemetry.health, "127.0.0.1", free_port())
    stop = threading.Event()
    json_logs = io.StringIO()
    event_log = EventLog("detect", instance_id, "json", stream=json_logs)
    logs: list[str] = []

    def log(message: str) -> None:
        logs.append(message)
        event_log(message)

    running = Running(server.url, logs, json_logs, threading.Thread())

    def work() -> None:
        try:
            running.result["summary"] = run_detect(
                config,
                stop_event=stop,
                instance_id=instance_id,
                extensions=[RetrainExtension(config)],
                on_log=log,
                status_interval_s=0.2,
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
        server.stop()


@pytest.fixture
def watched_config(kafka_config: FraudkitConfig) -> FraudkitConfig:
    config = kafka_config.model_copy(deep=True)
    config.retrain.role = "scorer"
    config.drift.window_rows = 1000
    config.drift.min_rows = 500
    config.detect.batch_size = 200
    publish_amount_model(config, cutoff=250.0)
    kafka.ensure_topics(config)
    return config


def settled(series: dict[str, list[tuple[dict[str, str], float]]]) -> bool:
    return (
        value(series, "fraudkit_detect_consumed_total") == 1502
        and value(series, "fraudkit_detect_end_to_end_latency_seconds_count") == 1500
    )


def test_metrics_move_readiness_follows_assignment_and_the_gauge_follows_a_hot_swap(
    watched_config: FraudkitConfig,
) -> None:
    config = watched_config
    with watched_detector(config, "watched-0") as running:

        def ready() -> bool:
            status, body = get(f"{running.url}/readyz")
            running.ready_answers.append((status, json.loads(body)))
            return status == 200

        wait_for(ready, 60, "/readyz to answer 200")
        first_status, first_body = running.ready_answers[0]
        assert first_status == 503 and first_body["conditions"]["partitions_assigned"] is False
        assert any(line.startswith("assigned partitions") for line in running.logs)
        assert get(f"{running.url}/healthz")[0] == 200

        normal = [transaction(i) for i in range(1500)]
        produce_transactions(config, normal)
        produce(config, [(b"not json", "card-bad"), (b'{"schema": 1}', "card-bad")])
        # Latency is observed when the broker acknowledges a verdict, a moment after consuming.
        wait_for(lambda: settled(scrape(running.url)), 60, "1502 consumed and 1500 verdicts acknowledged")
        series = scrape(running.url)
        frauds = sum(tx.amount >= 250.0 for tx in normal)
        assert value(series, "fraudkit_detect_verdicts_total", decision="fraud") == frauds
        assert value(series, "fraudkit_detect_verdicts_total", decision="legit") == 1500 - frauds
        assert value(series, "fraudkit_detect_dead_letters_total", reason="not_valid_json") == 1
        assert sum(v for _, v in series["fraudkit_detect_dead_letters_total"]) == 2
        assert value(series, "fraudkit_detect_model_serving", model_version="v1") == 1
        assert value(series, "fraudkit_detect_fraud_score_count", model_version="v1") == 1500
        assert value(series, "fraudkit_detect_batch_duration_seconds_count") >= 1  # type: ignore[operator]
        assert value(series, "fraudkit_detect_end_to_end_latency_seconds_count") == 1500
        assert value(series, "fraudkit_detect_state_entries", kind="cards") == 37
        assert value(series, "fraudkit_detect_ready") == 1
        wait_for(
            lambda: (
                sum(v for _, v in scrape(running.url).get("fraudkit_detect_consumer_lag_messages", [])) == 0
            ),
            10,
            "the lag gauges to reach 0",
        )
        # The unshifted stream matches the model's training distribution: no alarm.
        wait_for(
            lambda: (value(scrape(running.url), "fraudkit_drift_window_rows") or 0) >= 1000,
            10,
            "a full window",
        )
        assert value(scrape(running.url), "fraudkit_feature_drift_psi", feature="amount") < 0.25  # type: ignore[operator]
        assert not [line for line in running.logs if "drifted" in line]

        # Drift: amounts five times larger than in training.
        produce_transactions(config, [transaction(i, amount_scale=5.0) for i in range(1500, 3000)])
        wait_for(
            lambda: any(line.startswith("amount drifted: PSI") for line in running.logs), 30, "the alarm"
        )
        series = scrape(running.url)
        assert value(series, "fraudkit_feature_drift_psi", feature="amount") > 0.25  # type: ignore[operator]
        assert value(series, "fraudkit_detect_drift_alarms_total", feature="amount") == 1

        # Hot swap: v2 is published and announced on the control topic.
        version = publish_amount_model(config, cutoff=100.0)
        assert version == "v2"
        producer = kafka.make_producer(config)
        announce(producer, config, control_message(MODEL_PUBLISHED, trainer="test", version=version))

        def serving_v2() -> bool:
            produce_transactions(config, [transaction(9000 + int(time.time() * 1000) % 100_000)])
            samples = scrape(running.url)["fraudkit_detect_model_serving"]
            return samples == [({"model_version": "v2"}, 1.0)]

        wait_for(serving_v2, 30, "the model-serving gauge to show v2 only")
        series = scrape(running.url)
        assert value(series, "fraudkit_detect_model_swaps_total") == 1
        assert value(series, "fraudkit_detect_consumed_total") > 3002  # type: ignore[operator]
    summary = running.summary
    assert summary.model_versions == ["v1", "v2"]
    records = [json.loads(line) for line in running.json_logs.getvalue().splitlines()]
    assert {"partitions_assigned", "drift_alarm", "model_swapped"} <= {r["event"] for r in records}
    alarm = next(r for r in records if r["event"] == "drift_alarm")
    assert alarm["feature"] == "amount" and alarm["psi"] > 0.25 and alarm["instance"] == "watched-0"


def write_config_file(config: FraudkitConfig, path: Path) -> Path:
    path.write_text(json.dumps(config.model_dump(mode="json")))  # JSON is YAML
    return path


def test_the_cli_serves_probes_and_writes_json_logs(watched_config: FraudkitConfig, tmp_path: Path) -> None:
    port = free_port()
    config_path = write_config_file(watched_config, tmp_path / "config.yaml")
    env = {**os.environ, "FRAUDKIT_CONFIG": str(config_path)}
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "fraudkit",
            "detect",
            "--quiet",
            "--no-retrain",
            "--until-idle",
            "4",
            "--log-format",
            "json",
            "--metrics-port",
            str(port),
            "--instance-id",
            "cli-0",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:

        def answers_ready() -> bool:
            try:
                return get(f"{url}/readyz")[0] == 200
            except OSError:
                return False

        wait_for(answers_ready, 60, "the CLI detector's /readyz")
        produce_transactions(watched_config, [transaction(i) for i in range(300)])
        wait_for(lambda: value(scrape(url), "fraudkit_detect_consumed_total") == 300, 60, "300 consumed")
        stdout, stderr = process.communicate(timeout=90)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate(10)
    assert process.returncode == 0, stderr
    records = [json.loads(line) for line in stderr.splitlines()]  # every line is one JSON object
    assert records and all({"ts", "level", "event", "instance", "message"} <= set(r) for r in records)
    assert {r["instance"] for r in records} == {"cli-0"}
    events = [r["event"] for r in records]
    assert "metrics_listening" in events and "partitions_assigned" in events
    assert "detector cli-0: 300 consumed" in stdout
