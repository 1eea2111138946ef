"""The detector against the session's broker: branching, verdicts, dead letters, delivery guarantees."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import orjson
import pytest
from typer.testing import CliRunner

from fraudkit.cli import app
from fraudkit.config import FeaturesConfig, FraudkitConfig
from fraudkit.detect import DetectSummary, run_detect
from fraudkit.detect.status import DetectStatus
from fraudkit.features import FeatureSpec
from fraudkit.model.network import Normalisation
from fraudkit.model.registry import Registry
from fraudkit.schema import Label, Transaction, encode
from fraudkit.stream import kafka
from fraudkit.stream.broker import free_port, start_cluster

pytestmark = pytest.mark.kafka
runner = CliRunner()

START_MS = 1_767_225_600_000  # 2026-01-01
CUTOFF = 500.0  # the test model flags exactly the amounts >= this


class SimulatorFields:
    has_card = True
    has_terminal = True
    has_location = True
    has_country = True
    passthrough: ClassVar[list[str]] = []


def publish_amount_model(config: FraudkitConfig, cutoff: float = CUTOFF) -> str:
    """An MLP over the full spec whose fraud probability is >= 0.5 exactly when amount >= cutoff."""
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
    return Registry(config.registry.path).publish(
        state,
        feature_names=spec.names,
        hidden_sizes=[4],
        normalisation=Normalisation(np.zeros(width), np.ones(width)),
        threshold=0.5,
        feature_spec=spec.to_dict(),
    )


def transaction(index: int, amount: float | None = None) -> Transaction:
    return Transaction(
        transaction_id=f"tx-{index:06d}",
        event_time_ms=START_MS + index * 1000,
        card_id=f"card-{index % 37:03d}",
        amount=float(index % 1000) if amount is None else amount,
        customer_id=f"cust-{index % 37:03d}",
        terminal_id=f"term-{index % 11:03d}",
        currency="EUR",
        merchant_category="grocery",
        country="DE",
        lat=48.1,
        lon=11.6,
        produced_ms=int(time.time() * 1000),
    )


def produce_transactions(config: FraudkitConfig, transactions: list[Transaction]) -> None:
    producer = kafka.make_producer(config)
    for tx in transactions:
        kafka.produce(producer, config.topics.transactions, encode(tx), key=tx.card_id)
    kafka.flush(producer)


def produce_raw(config: FraudkitConfig, values: list[bytes], key: str = "card-bad") -> None:
    producer = kafka.make_producer(config)
    for value in values:
        kafka.produce(producer, config.topics.transactions, value, key=key)
    kafka.flush(producer)


def read_topic(config: FraudkitConfig, topic: str, isolation: str = "read_uncommitted") -> list[Any]:
    """Every message of a topic (all partitions, from the beginning), read until 1.5 s pass without one.

    Not bounded by ListOffsets: Tansu 0.6 answers it with the last batch's base offset + 1.
    """
    reader = kafka.make_reader(config, **{"isolation.level": isolation})
    metadata = reader.list_topics(topic, timeout=10)
    partitions = sorted(metadata.topics[topic].partitions)
    reader.assign([kafka.TopicPartition(topic, p, kafka.OFFSET_BEGINNING) for p in partitions])
    messages: list[Any] = []
    last_message = time.monotonic()
    try:
        while time.monotonic() - last_message < 1.5:
            for message in reader.consume(1000, 0.2):
                if message.error() is None:
                    messages.append(message)
                    last_message = time.monotonic()
    finally:
        reader.close()
    return messages


class TopicCounter:
    """Counts a topic's messages as they arrive (a reader from the beginning of every partition)."""

    def __init__(self, config: FraudkitConfig, topic: str) -> None:
        self.reader = kafka.make_reader(config)
        metadata = self.reader.list_topics(topic, timeout=10)
        partitions = sorted(metadata.topics[topic].partitions)
        self.reader.assign([kafka.TopicPartition(topic, p, kafka.OFFSET_BEGINNING) for p in partitions])
        self.count = 0

    def __call__(self) -> int:
        self.count += sum(1 for m in self.reader.consume(10_000, 0.1) if m.error() is None)
        return self.count

    def close(self) -> None:
        self.reader.close()


def verdicts_by_id(config: FraudkitConfig, isolation: str = "read_uncommitted") -> Counter[str]:
    return Counter(
        orjson.loads(m.value())["transaction_id"]
        for m in read_topic(config, config.topics.verdicts, isolation)
    )


def headers_of(message: Any) -> dict[str, str]:
    return {key: value.decode() for key, value in message.headers() or []}


def write_config_file(config: FraudkitConfig, path: Path) -> Path:
    # JSON is YAML: the subprocess reads exactly this config.
    path.write_text(json.dumps(config.model_dump(mode="json")))
    return path


def detector_process(config_path: Path, *args: str, stderr: Any = subprocess.PIPE) -> subprocess.Popen[str]:
    """`fraudkit detect` as a subprocess; pass a file as `stderr` to read what it logged while it
    runs (communicate() reads a pipe only once the process has exited)."""
    env = {**os.environ, "FRAUDKIT_CONFIG": str(config_path)}
    return subprocess.Popen(
        [sys.executable, "-m", "fraudkit", "detect", "--quiet", "--json", *args],
        stdout=subprocess.PIPE,
        stderr=stderr,
        env=env,
        text=True,
    )


def wait_for(predicate: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


@contextmanager
def verdict_counter(config: FraudkitConfig) -> Iterator[TopicCounter]:
    counter = TopicCounter(config, config.topics.verdicts)
    try:
        yield counter
    finally:
        counter.close()


@pytest.fixture
def detect_config(kafka_config: FraudkitConfig) -> FraudkitConfig:
    publish_amount_model(kafka_config)
    kafka.ensure_topics(kafka_config)
    return kafka_config


@pytest.mark.tansu
def test_branching_and_verdict_contents(detect_config: FraudkitConfig) -> None:
    config = detect_config
    transactions = [transaction(i) for i in range(1200)]
    produce_transactions(config, transactions)

    summary = run_detect(config, until_idle_s=2, instance_id="detector-a")

    expected_fraud = {tx.transaction_id for tx in transactions if tx.amount >= CUTOFF}
    assert summary.consumed == 1200
    assert summary.verdicts == 1200
    assert summary.fraud == len(expected_fraud) == 500
    assert summary.dead_letters == 0
    assert summary.model_version == "v1"
    assert summary.latency_ms["p50"] is not None

    verdicts = {}
    for message in read_topic(config, config.topics.verdicts):
        verdict = orjson.loads(message.value())
        assert message.key().decode() == verdict["card_id"]
        verdicts[verdict["transaction_id"]] = verdict
    assert set(verdicts) == {tx.transaction_id for tx in transactions}
    by_id = {tx.transaction_id: tx for tx in transactions}
    for transaction_id, verdict in verdicts.items():
        tx = by_id[transaction_id]
        fraud = transaction_id in expected_fraud
        assert verdict["schema"] == 1
        assert verdict["decision"] == ("fraud" if fraud else "legit")
        assert (verdict["score"] >= 0.5) == fraud
        assert verdict["threshold"] == 0.5
        assert verdict["model_version"] == "v1"
        assert verdict["detector"] == "detector-a"
        for field in (
            "card_id",
            "terminal_id",
            "event_time_ms",
            "produced_ms",
            "amount",
            "currency",
            "country",
        ):
            assert verdict[field] == getattr(tx, field), field
        assert verdict["merchant_category"] == "grocery"
        assert verdict["produced_ms"] <= verdict["consumed_ms"] <= verdict["verdict_ms"]
        if fraud:
            assert 1 <= len(verdict["reasons"]) <= 3
            top = verdict["reasons"][0]
            assert top["feature"] == "amount" and top["value"] == tx.amount and top["contribution"] > 0
        else:
            assert verdict["reasons"] == []

    fraud_messages = read_topic(config, config.topics.fraud)
    legit_messages = read_topic(config, config.topics.legit)
    assert len(fraud_messages) == 500 and len(legit_messages) == 700
    raw = {tx.transaction_id: encode(tx) for tx in transactions}
    for messages, decision in ((fraud_messages, "fraud"), (legit_messages, "legit")):
        for message in messages:
            transaction_id = orjson.loads(message.value())["transaction_id"]
            assert verdicts[transaction_id]["decision"] == decision
            assert message.value() == raw[transaction_id]  # the original bytes
            assert message.key().decode() == by_id[transaction_id].card_id
            headers = headers_of(message)
            assert headers["model_version"] == "v1"
            assert float(headers["score"]) == pytest.approx(verdicts[transaction_id]["score"], abs=1e-6)


def test_dead_letters_are_routed_and_the_detector_keeps_going(detect_config: FraudkitConfig) -> None:
    config = detect_config
    good = [transaction(i) for i in range(300)]
    missing_field = orjson.dumps(
        {"schema": 1, "transaction_id": "no-card", "event_time_ms": START_MS, "amount": 1.0}
    )
    mistyped = orjson.dumps(
        {"schema": 1, "transaction_id": "typed", "event_time_ms": START_MS, "card_id": "c", "amount": "12"}
    )
    absurd = encode(transaction(9999, amount=5e9))
    bad = [b"{not json", missing_field, mistyped, absurd]
    produce_transactions(config, good[:150])
    produce_raw(config, bad)
    produce_transactions(config, good[150:])

    summary = run_detect(config, until_idle_s=2)

    assert summary.dead_letters == 4
    assert summary.verdicts == 300
    assert set(verdicts_by_id(config)) == {tx.transaction_id for tx in good}
    letters = read_topic(config, config.topics.dead_letter)
    assert sorted(m.value() for m in letters) == sorted(bad)
    errors = {}
    for message in letters:
        headers = headers_of(message)
        assert headers["source_topic"] == config.topics.transactions
        assert message.key() == b"card-bad"
        assert int(headers["source_partition"]) in range(3)
        assert int(headers["source_offset"]) >= 0
        errors[message.value()] = headers["error"]
    assert errors[b"{not json"].startswith("not valid JSON")
    assert errors[missing_field] == "card_id: missing"
    assert errors[mistyped] == "amount: expected a number, got str"
    assert errors[absurd].startswith("amount: 5000000000.0 is absurdly large")
    # The dead letters' offsets were committed with the rest: a second run has nothing to do.
    again = run_detect(config, until_idle_s=1)
    assert again.consumed == 0


def big_message_topic(config: FraudkitConfig) -> FraudkitConfig:
    """The config with a fresh transactions topic that accepts 4 MB messages (Apache Kafka's
    broker default is about 1 MB; a broker that ignores the setting keeps its own limit)."""
    from confluent_kafka.admin import NewTopic

    topic = f"{config.topics.transactions}-big"
    admin = kafka.make_admin(config)
    futures = admin.create_topics(
        [NewTopic(topic, num_partitions=3, replication_factor=1, config={"max.message.bytes": "4194304"})]
    )
    for future in futures.values():
        future.result(timeout=15)
    return config.model_copy(update={"topics": config.topics.model_copy(update={"transactions": topic})})


@pytest.mark.parametrize("exactly_once", [False, True], ids=["at-least-once", "exactly-once"])
def test_oversized_and_out_of_range_messages_are_dead_lettered_and_never_stop_the_detector(
    detect_config: FraudkitConfig, exactly_once: bool
) -> None:
    config = big_message_topic(detect_config)
    good = [transaction(i) for i in range(200)]
    huge_field = orjson.dumps({**transaction(9001).to_dict(), "merchant_category": "m" * 1_500_000})
    not_json = b"\x00garbage" * 200_000  # 2 MB
    absurd_time = orjson.dumps({**transaction(9002).to_dict(), "produced_ms": 1e300})
    boolean_schema = orjson.dumps({**transaction(9003).to_dict(), "schema": True})
    producer = kafka.make_producer(config, **{"message.max.bytes": 4_000_000})
    for tx in good[:100]:
        kafka.produce(producer, config.topics.transactions, encode(tx), key=tx.card_id)
    tracker = kafka.DeliveryTracker()
    for value in (huge_field, not_json, absurd_time, boolean_schema):
        kafka.produce(
            producer, config.topics.transactions, value, key="card-bad", on_delivery=tracker.callback
        )
    for tx in good[100:]:
        kafka.produce(producer, config.topics.transactions, encode(tx), key=tx.card_id)
    kafka.flush(producer)
    tracker.check()  # the broker took all four: the detector has to deal with them

    summary = run_detect(config, until_idle_s=2, exactly_once=exactly_once)

    assert summary.verdicts == 200 and summary.dead_letters == 4
    isolation = "read_committed" if exactly_once else "read_uncommitted"
    assert set(verdicts_by_id(config, isolation)) == {tx.transaction_id for tx in good}
    letters = {
        headers_of(m)["source_offset"]: m for m in read_topic(config, config.topics.dead_letter, isolation)
    }
    assert len(letters) == 4
    by_error = {headers_of(m)["error"].split(":")[0]: m for m in letters.values()}
    assert set(by_error) == {
        f"message of {len(huge_field) + len(b'card-bad'):,} bytes is larger than detect.max_message_bytes (1,000,000)".split(
            ":"
        )[0],
        f"message of {len(not_json) + len(b'card-bad'):,} bytes is larger than detect.max_message_bytes (1,000,000)".split(
            ":"
        )[0],
        "produced_ms",
        "schema",
    }
    for message in letters.values():
        headers = headers_of(message)
        assert headers["source_topic"] == config.topics.transactions
        if headers.get("truncated") == "true":
            assert len(message.value()) == 4096
            assert int(headers["original_bytes"]) in (len(huge_field), len(not_json))
        else:
            assert message.value() in (absurd_time, boolean_schema)
    assert headers_of(by_error["produced_ms"])["error"].startswith("produced_ms: 1e+300 is out of range")
    assert headers_of(by_error["schema"])["error"] == "schema: expected an integer version, got bool"
    # Committed past all of them: a restart has nothing left to do (no crash loop).
    again = run_detect(config, until_idle_s=1, exactly_once=exactly_once)
    assert again.consumed == 0


def test_json_summary_from_the_cli(detect_config: FraudkitConfig, tmp_path: Path) -> None:
    produce_transactions(detect_config, [transaction(i) for i in range(200)])
    config_path = write_config_file(detect_config, tmp_path / "config.yaml")
    result = runner.invoke(app, ["detect", "--config", str(config_path), "--json", "--until-idle", "2"])
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["consumed"] == 200 and summary["verdicts"] == 200 and summary["fraud"] == 0
    assert summary["dead_letters"] == 0 and summary["retrains"] == 0
    assert summary["model_version"] == "v1"
    assert summary["throughput_per_s"] > 0
    assert set(summary["latency_ms"]) == {"p50", "p95", "p99", "max"}
    assert summary["stopped_because"] == "idle"


def test_bounds_max_transactions(detect_config: FraudkitConfig) -> None:
    produce_transactions(detect_config, [transaction(i) for i in range(500)])
    first = run_detect(detect_config, max_transactions=120, until_idle_s=5)
    assert first.consumed == 120 and first.stopped_because == "max_messages"
    rest = run_detect(detect_config, until_idle_s=2)
    assert rest.consumed == 380  # committed exactly after the first 120


def test_live_quality_from_labels(detect_config: FraudkitConfig) -> None:
    config = detect_config
    statuses: list[DetectStatus] = []
    stop = threading.Event()
    result: list[DetectSummary] = []
    worker = threading.Thread(
        target=lambda: result.append(
            run_detect(config, stop_event=stop, on_status=statuses.append, status_interval_s=0.2)
        )
    )
    worker.start()
    try:
        transactions = [transaction(i, amount=i * 2.5) for i in range(400)]
        produce_transactions(config, transactions)
        with verdict_counter(config) as count:
            wait_for(lambda: count() >= 400, 30, "400 verdicts")
        # The truth: amounts >= 800 are fraud (80), the model flags >= 500 (200): precision 0.4, recall 1.
        producer = kafka.make_producer(config)
        for tx in transactions:
            label = Label(
                tx.transaction_id, tx.event_time_ms, int(tx.amount >= 800), tx.card_id, tx.terminal_id
            )
            kafka.produce(producer, config.topics.labels, encode(label), key=tx.card_id)
        kafka.flush(producer)
        wait_for(lambda: bool(statuses) and statuses[-1].labels >= 400, 30, "400 labels")
    finally:
        stop.set()
        worker.join(30)
    summary = result[0]
    figures = summary.quality["v1"]
    assert figures["labelled"] == 400 and figures["frauds"] == 80 and figures["flagged"] == 200
    assert figures["precision"] == pytest.approx(80 / 200)
    assert figures["recall"] == pytest.approx(1.0)
    assert figures["average_precision"] == pytest.approx(1.0)
    assert summary.stopped_because == "stopped"


def test_two_detectors_in_one_group_share_partitions(detect_config: FraudkitConfig) -> None:
    config = detect_config
    summaries: dict[str, DetectSummary] = {}
    assigned: dict[str, list[int]] = {"one": [], "two": []}
    stop = threading.Event()

    def run(name: str) -> None:
        def on_status(status: DetectStatus) -> None:
            assigned[name] = status.partitions

        summaries[name] = run_detect(
            config, stop_event=stop, instance_id=name, on_status=on_status, status_interval_s=0.2
        )

    threads = [threading.Thread(target=run, args=(name,)) for name in ("one", "two")]
    for thread in threads:
        thread.start()
    try:
        wait_for(
            lambda: (
                bool(assigned["one"])
                and bool(assigned["two"])
                and len(assigned["one"] + assigned["two"]) == 3
            ),
            40,
            "both detectors to own partitions",
        )
        assert not set(assigned["one"]) & set(assigned["two"])
        transactions = [transaction(i) for i in range(1500)]
        produce_transactions(config, transactions)
        with verdict_counter(config) as count:
            wait_for(lambda: count() >= 1500, 40, "1500 verdicts")
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
    verdicts = [orjson.loads(m.value()) for m in read_topic(config, config.topics.verdicts)]
    assert {v["transaction_id"] for v in verdicts} == {tx.transaction_id for tx in transactions}
    by_detector = Counter(v["detector"] for v in verdicts)
    assert by_detector["one"] > 0 and by_detector["two"] > 0
    assert summaries["one"].verdicts + summaries["two"].verdicts == len(verdicts)
    # Keyed by card: each card was scored by exactly one detector.
    owners: dict[str, set[str]] = {}
    for verdict in verdicts:
        owners.setdefault(verdict["card_id"], set()).add(verdict["detector"])
    assert all(len(names) == 1 for names in owners.values())


@pytest.fixture
def stream(detect_config: FraudkitConfig) -> Iterator[tuple[FraudkitConfig, threading.Thread, list[str]]]:
    """A feeder thread: 100 transactions, then (once a detector answers) 3500 more over ~3.5 s."""
    config = detect_config
    produced: list[str] = []

    def feed() -> None:
        producer = kafka.make_producer(config)
        with verdict_counter(config) as count:
            for index in range(3600):
                tx = transaction(index)
                kafka.produce(producer, config.topics.transactions, encode(tx), key=tx.card_id)
                produced.append(tx.transaction_id)
                if index == 99:
                    kafka.flush(producer)
                    # Hold the stream until the detector is up, so that it is killed mid-stream.
                    wait_for(lambda: count() > 0, 60, "the detector's first verdict")
                elif index % 100 == 99:
                    producer.poll(0)
                    time.sleep(0.1)
        kafka.flush(producer)

    thread = threading.Thread(target=feed)
    yield config, thread, produced
    thread.join(60)


@pytest.mark.slow
def test_kill_9_and_restart_leaves_no_transaction_without_a_verdict(
    stream: tuple[FraudkitConfig, threading.Thread, list[str]], tmp_path: Path
) -> None:
    config, feeder, produced = stream
    config_path = write_config_file(config, tmp_path / "config.yaml")
    detector = detector_process(config_path, "--batch-size", "200", "--instance-id", "victim")
    try:
        feeder.start()
        with verdict_counter(config) as count:
            wait_for(lambda: count() >= 600, 60, "the first verdicts")
        detector.send_signal(signal.SIGKILL)
        detector.wait(10)
    finally:
        if detector.poll() is None:
            detector.kill()
    assert detector.returncode == -signal.SIGKILL
    feeder.join(60)
    restarted = detector_process(config_path, "--until-idle", "3", "--instance-id", "survivor")
    out, err = restarted.communicate(timeout=120)
    assert restarted.returncode == 0, err
    verdicts = verdicts_by_id(config)
    assert set(produced) <= set(verdicts), f"{len(set(produced) - set(verdicts))} transactions lost"
    assert len(produced) == 3600
    assert json.loads(out)["consumed"] < 3600  # the restart resumed from committed offsets


@pytest.mark.slow
def test_exactly_once_run_and_clean_restart_give_exactly_one_verdict(
    stream: tuple[FraudkitConfig, threading.Thread, list[str]], tmp_path: Path
) -> None:
    config, feeder, produced = stream
    config_path = write_config_file(config, tmp_path / "config.yaml")
    args = ("--exactly-once", "--batch-size", "200", "--instance-id", "eos")
    detector = detector_process(config_path, *args)
    try:
        feeder.start()
        with verdict_counter(config) as count:
            wait_for(lambda: count() >= 600, 60, "the first verdicts")
        detector.send_signal(signal.SIGTERM)  # mid-stream: finish the batch, commit, leave
        out, err = detector.communicate(timeout=60)
    finally:
        if detector.poll() is None:
            detector.kill()
    assert detector.returncode == 0, err
    first = json.loads(out)
    assert first["exactly_once"] is True and first["stopped_because"] == "stopped"
    feeder.join(60)
    restarted = detector_process(config_path, *args, "--until-idle", "3")
    out, err = restarted.communicate(timeout=120)
    assert restarted.returncode == 0, err
    assert first["consumed"] + json.loads(out)["consumed"] == 3600
    verdicts = verdicts_by_id(config, "read_committed")
    assert set(verdicts) == set(produced)
    assert max(verdicts.values()) == 1
    # The transactional offset commits cover every input message.
    committed = kafka.make_consumer(config, config.detect.group_id).committed(
        [kafka.TopicPartition(config.topics.transactions, p) for p in range(3)], timeout=10
    )
    per_partition = Counter(m.partition() for m in read_topic(config, config.topics.transactions))
    assert {tp.partition: tp.offset for tp in committed} == dict(per_partition)


@pytest.mark.slow
def test_exactly_once_kill_9_and_restart_loses_nothing(
    stream: tuple[FraudkitConfig, threading.Thread, list[str]], tmp_path: Path, broker_engine: str
) -> None:
    config, feeder, produced = stream
    config_path = write_config_file(config, tmp_path / "config.yaml")
    args = ("--exactly-once", "--batch-size", "200", "--instance-id", "eos-victim")
    detector = detector_process(config_path, *args)
    try:
        feeder.start()
        with verdict_counter(config) as count:
            wait_for(lambda: count() >= 600, 60, "the first verdicts")
        detector.send_signal(signal.SIGKILL)
        detector.wait(10)
    finally:
        if detector.poll() is None:
            detector.kill()
    feeder.join(60)
    # The same instance id fences the killed producer and aborts its open transaction.
    restarted = detector_process(config_path, *args, "--until-idle", "3")
    _, err = restarted.communicate(timeout=120)
    assert restarted.returncode == 0, err
    verdicts = verdicts_by_id(config, "read_committed")
    assert set(verdicts) == set(produced)
    duplicated = sum(count - 1 for count in verdicts.values())
    print(f"exactly-once after kill -9 on {broker_engine}: {duplicated} duplicated verdicts")
    if broker_engine == "kafka":
        # read_committed hides the batch whose transaction the restart aborted: no duplicate at all.
        assert duplicated == 0
        for branch in (config.topics.fraud, config.topics.legit):
            ids = [
                json.loads(m.value())["transaction_id"] for m in read_topic(config, branch, "read_committed")
            ]
            assert len(ids) == len(set(ids)), f"duplicates on {branch}"
    else:
        # Tansu 0.6 serves aborted records (docs/scaling.md): at most the batch open at the kill.
        assert duplicated <= 200


def unreachable(config: FraudkitConfig, timeout_s: float) -> int:
    """Point the config at a port nobody listens on; returns the port."""
    port = free_port()
    config.kafka.common["bootstrap.servers"] = f"127.0.0.1:{port}"
    config.kafka.connect_timeout_s = timeout_s
    return port


def test_exits_3_when_kafka_never_comes(config: FraudkitConfig, tmp_path: Path) -> None:
    port = unreachable(config, 2.5)
    publish_amount_model(config)
    config_path = write_config_file(config, tmp_path / "config.yaml")
    started = time.monotonic()
    result = runner.invoke(app, ["detect", "--config", str(config_path), "--quiet", "--until-idle", "1"])
    assert result.exit_code == 3
    assert f"waiting for Kafka at 127.0.0.1:{port}" in result.stderr
    assert (
        f"error: cannot reach Kafka at 127.0.0.1:{port} within kafka.connect_timeout_s=2.5s" in result.stderr
    )
    assert time.monotonic() - started < 15


@pytest.mark.slow
def test_waits_for_a_broker_that_comes_up_late(config: FraudkitConfig, broker_engine: str) -> None:
    port = unreachable(config, 30)
    publish_amount_model(config)
    logs: list[str] = []
    result: list[DetectSummary] = []
    worker = threading.Thread(
        target=lambda: result.append(run_detect(config, until_idle_s=2, on_log=logs.append))
    )
    worker.start()
    broker = None
    try:
        time.sleep(2)  # the detector is waiting by now (the message is covered by the exit-3 test)
        broker = start_cluster(broker_engine, port)
        worker.join(60)
        assert result, "the detector did not finish"
        assert result[0].stopped_because == "idle"
        # The detector created its topics once the broker answered.
        assert config.topics.verdicts in kafka.list_topics(config)
    finally:
        if broker is not None:
            broker.stop()


def test_transactions_hide_aborted_records_and_fence_zombies(
    kafka_config: FraudkitConfig, broker_engine: str
) -> None:
    """Pins the broker's transaction behaviour that exactly-once relies on (docs/scaling.md)."""
    config = kafka_config
    source, sink = config.topics.transactions, config.topics.verdicts
    kafka.ensure_topics(config, [source, sink])
    produce_raw(config, [b"input"])
    consumer = kafka.make_consumer(config, config.detect.group_id)
    consumer.subscribe([source])
    wait_for(lambda: bool([m for m in consumer.consume(10, 0.2) if m.error() is None]), 30, "the input")
    metadata = consumer.consumer_group_metadata()
    source_partition = kafka.TopicPartition(source, 0)

    def committed() -> int:
        return consumer.committed([source_partition], timeout=10)[0].offset

    producer = kafka.make_producer(config, **{"transactional.id": "pinned", "enable.idempotence": True})
    producer.init_transactions(10)
    producer.begin_transaction()
    producer.produce(sink, b"aborted", b"k")
    producer.flush(10)
    assert read_topic(config, sink, "read_committed") == []  # an open transaction stays hidden
    producer.send_offsets_to_transaction([kafka.TopicPartition(source, 0, 1)], metadata, 10)
    producer.abort_transaction(10)
    assert committed() < 0  # offsets of an aborted transaction are not committed
    producer.begin_transaction()
    producer.produce(sink, b"committed", b"k")
    producer.send_offsets_to_transaction([kafka.TopicPartition(source, 0, 1)], metadata, 10)
    producer.commit_transaction(10)
    assert committed() == 1
    visible = sorted(m.value() for m in read_topic(config, sink, "read_committed"))
    # Apache Kafka shows only b"committed"; Tansu 0.6 does not filter aborted records.
    assert visible == ([b"committed"] if broker_engine == "kafka" else [b"aborted", b"committed"])
    assert sorted(m.value() for m in read_topic(config, sink, "read_uncommitted")) == [
        b"aborted",
        b"committed",
    ]
    newer = kafka.make_producer(config, **{"transactional.id": "pinned", "enable.idempotence": True})
    newer.init_transactions(10)
    with pytest.raises(kafka.KafkaException, match="fenced"):
        producer.begin_transaction()
        producer.produce(sink, b"zombie", b"k")
        producer.commit_transaction(10)
    consumer.close()
