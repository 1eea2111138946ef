"""`fraudkit generate` against the session's broker: rate, keys, labels, flush on stop, verdicts."""

from __future__ import annotations

import itertools
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from fraudkit.cli import app
from fraudkit.config import FraudkitConfig, config_as_dict
from fraudkit.generate import run_generate
from fraudkit.stream.kafka import (
    TopicPartition,
    ensure_topics,
    high_watermarks,
    make_producer,
    make_reader,
    produce,
)

pytestmark = pytest.mark.kafka

T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z
MINUTE_MS = 60_000


def frame(rows: int, step_ms: int = MINUTE_MS, cards: int = 40, first: int = 0) -> pd.DataFrame:
    """A canonical frame: one transaction every step_ms, cards in rotation, every 7th is fraud."""
    index = np.arange(first, first + rows)
    return pd.DataFrame(
        {
            "transaction_id": [f"tx{i:07d}" for i in index],
            "event_time_ms": T0 + index * step_ms,
            "card_id": [f"card{i % cards}" for i in index],
            "customer_id": [f"cust{i % cards}" for i in index],
            "terminal_id": [f"term{i % 11}" for i in index],
            "amount": 5.0 + (index % 50),
            "currency": "EUR",
            "merchant_category": "5812",
            "country": "DE",
            "lat": 52.5,
            "lon": 13.4,
            "label": (index % 7 == 0).astype(int),
            "fraud_scenario": ["stolen_card" if i % 7 == 0 else "" for i in index],
        }
    )


def endless_frames(rows: int = 1000) -> Iterator[pd.DataFrame]:
    for part in itertools.count():
        yield frame(rows, first=part * rows)


def consume_all(config: FraudkitConfig, topic: str, idle_s: float = 1.0) -> list[dict[str, Any]]:
    """Every message of a topic, partition by partition in offset order, until it stays quiet."""
    reader = make_reader(config)
    try:
        partitions = reader.list_topics(topic, timeout=10).topics[topic].partitions
        reader.assign([TopicPartition(topic, partition, 0) for partition in partitions])
        records: list[dict[str, Any]] = []
        quiet_since = time.monotonic()
        while time.monotonic() - quiet_since < idle_s:
            messages = reader.consume(10_000, timeout=0.2)
            for message in messages:
                assert message.error() is None, message.error()
                key = message.key().decode() if message.key() is not None else None
                records.append(
                    {"partition": message.partition(), "key": key, **orjson.loads(message.value())}
                )
            if messages:
                quiet_since = time.monotonic()
        return records
    finally:
        reader.close()


def configured(config: FraudkitConfig, **generate: Any) -> FraudkitConfig:
    for key, value in {"read_verdicts": False, **generate}.items():
        setattr(config.generate, key, value)
    return config


def test_rate_is_held_loosely_and_nothing_is_lost(kafka_config: FraudkitConfig) -> None:
    config = configured(kafka_config, rate=500.0, count=1000)
    summary = run_generate(config, source=[frame(2000)])
    assert summary.sent == 1000 and summary.stop_reason == "max_messages"
    assert 400 <= summary.rate_per_s <= 600
    assert len(consume_all(config, config.topics.transactions)) == 1000


def test_one_card_stays_on_one_partition_in_order(kafka_config: FraudkitConfig) -> None:
    config = configured(kafka_config, rate=None)
    source = frame(3000)
    summary = run_generate(config, source=[source.iloc[:1700], source.iloc[1700:]])
    assert summary.sent == 3000 and summary.stop_reason == "end_of_source"
    records = consume_all(config, config.topics.transactions)
    assert len(records) == 3000
    by_card: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        assert record["key"] == record["card_id"]
        assert "label" not in record and record["schema"] == 1
        by_card.setdefault(record["card_id"], []).append(record)
    assert len(by_card) == 40
    for card_id, card_records in by_card.items():
        assert len({r["partition"] for r in card_records}) == 1, card_id
        expected = source.loc[source["card_id"] == card_id, "transaction_id"].tolist()
        assert [r["transaction_id"] for r in card_records] == expected
    assert len({r["partition"] for r in records}) == config.topics.transactions_partitions


@pytest.mark.parametrize(
    ("delay_s", "flush_labels", "expected"),
    [(2 * 3600.0, False, 96), (2 * 3600.0, True, 120), (0.0, False, 120)],
)
def test_labels_follow_the_event_time_delay(
    kafka_config: FraudkitConfig, delay_s: float, flush_labels: bool, expected: int
) -> None:
    # 120 transactions five minutes apart: the stream ends at minute 595, so with a two-hour delay
    # only those up to minute 475 (96 of them) are due unless the rest are flushed.
    config = configured(kafka_config, rate=None, label_delay_s=delay_s, flush_labels=flush_labels)
    source = frame(120, step_ms=5 * MINUTE_MS)
    summary = run_generate(config, source=[source])
    labels = consume_all(config, config.topics.labels)
    assert summary.labels_sent == len(labels) == expected
    assert summary.labels_pending == 120 - expected
    assert sorted(label["transaction_id"] for label in labels) == source["transaction_id"].tolist()[:expected]
    truth = dict(zip(source["transaction_id"], source["label"], strict=True))
    for label in labels:
        assert label["label"] == truth[label["transaction_id"]]
        assert label["key"] == label["card_id"]
        assert label["labelled_ms"] == label["event_time_ms"] + int(delay_s * 1000)
    assert sum(label["label"] for label in labels) == sum(truth[label["transaction_id"]] for label in labels)


def test_label_fraction_thins_the_labels(kafka_config: FraudkitConfig) -> None:
    config = configured(kafka_config, rate=None, label_delay_s=0.0, label_fraction=0.5, seed=3)
    source = frame(400)
    summary = run_generate(config, source=[source])
    labels = consume_all(config, config.topics.labels)
    assert summary.labels_sent == len(labels) and summary.labels_pending == 0
    assert 140 <= len(labels) <= 260
    assert {label["transaction_id"] for label in labels} < set(source["transaction_id"])


def test_stop_event_flushes_everything(kafka_config: FraudkitConfig) -> None:
    config = configured(kafka_config, rate=3000.0, label_delay_s=0.0)
    stop = threading.Event()
    result: dict[str, Any] = {}
    worker = threading.Thread(
        target=lambda: result.update(summary=run_generate(config, stop, source=endless_frames()))
    )
    worker.start()
    time.sleep(1.5)
    stop.set()  # what SIGINT/SIGTERM do through signals.stop_on_signals
    worker.join(30)
    assert not worker.is_alive()
    summary = result["summary"]
    assert summary.stop_reason == "stopped" and summary.sent > 500
    assert len(consume_all(config, config.topics.transactions)) == summary.sent
    assert len(consume_all(config, config.topics.labels)) == summary.labels_sent == summary.sent


def fake_detector(config: FraudkitConfig, stop: threading.Event, flagged: set[str]) -> None:
    """Answer every transaction with a verdict: fraud exactly for the ids in `flagged`."""
    reader = make_reader(config)
    producer = make_producer(config)
    topic = config.topics.transactions
    try:
        partitions = reader.list_topics(topic, timeout=10).topics[topic].partitions
        reader.assign([TopicPartition(topic, partition, 0) for partition in partitions])
        while not stop.is_set():
            for message in reader.consume(1000, timeout=0.05):
                tx = orjson.loads(message.value())
                decision = "fraud" if tx["transaction_id"] in flagged else "legit"
                verdict = {
                    "schema": 1,
                    "transaction_id": tx["transaction_id"],
                    "card_id": tx["card_id"],
                    "decision": decision,
                    "score": 0.9 if decision == "fraud" else 0.1,
                    "event_time_ms": tx["event_time_ms"],
                    "produced_ms": tx["produced_ms"],
                }
                produce(producer, config.topics.verdicts, orjson.dumps(verdict), tx["card_id"])
            producer.poll(0)
        producer.flush(10)
    finally:
        reader.close()


def test_verdicts_are_matched_to_sent_transactions(kafka_config: FraudkitConfig) -> None:
    config = configured(kafka_config, rate=1000.0, read_verdicts=True, verdict_wait_s=15.0)
    ensure_topics(config, [config.topics.transactions, config.topics.verdicts])
    # A stale verdict from "an earlier run" must not be read: the client starts at the end.
    stale = make_producer(config)
    produce(stale, config.topics.verdicts, orjson.dumps({"transaction_id": "tx0000001", "decision": "fraud"}))
    stale.flush(10)
    source = frame(600)
    flagged = {tid for i, tid in enumerate(source["transaction_id"]) if i % 3 == 0}
    stop = threading.Event()
    detector = threading.Thread(target=fake_detector, args=(config, stop, flagged))
    detector.start()
    statuses: list[Any] = []
    try:
        summary = run_generate(config, source=[source], on_status=statuses.append)
    finally:
        stop.set()
        detector.join(30)
    labels = dict(zip(source["transaction_id"], source["label"], strict=True))
    expected = {"tp": 0, "fp": 0, "tn": 0, "fn": 0}
    for tid, label in labels.items():
        key = ("tp" if label else "fp") if tid in flagged else ("fn" if label else "tn")
        expected[key] += 1
    assert summary.verdicts == 600 and summary.pending == 0 and summary.unmatched == 0
    assert summary.confusion == expected
    assert all(value is not None and value >= 0 for value in summary.latency_ms.values())
    assert summary.latency_ms["p50"] <= summary.latency_ms["p95"] <= summary.latency_ms["p99"]
    assert statuses and statuses[-1].phase == "done"
    assert any(status.phase == "producing" for status in statuses)


def write_config(config: FraudkitConfig, tmp_path: Path) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config_as_dict(config, mask_secrets=False)))
    return path


def test_cli_json_summary_from_the_simulator(kafka_config: FraudkitConfig, tmp_path: Path) -> None:
    arguments = ["generate", "--config", str(write_config(kafka_config, tmp_path)), "--count", "50"]
    arguments += ["--max-rate", "--label-delay", "0", "--verdict-wait", "0.3", "--json"]
    result = CliRunner().invoke(app, arguments)
    assert result.exit_code == 0, result.output + result.stderr
    summary = orjson.loads(result.stdout)
    assert summary["source"] == "simulator"
    assert summary["sent"] == 50 and summary["labels_sent"] == 50
    assert summary["verdicts"] == 0 and summary["pending"] == 50
    assert summary["target_rate"] is None and summary["stop_reason"] == "max_messages"
    assert summary["latency_ms"] == {"p50": None, "p95": None, "p99": None}
    assert summary["confusion"] == {"tp": 0, "fp": 0, "tn": 0, "fn": 0}
    assert summary["duration_s"] >= 0.3 and summary["rate_per_s"] > 0
    transactions = consume_all(kafka_config, kafka_config.topics.transactions)
    assert len(transactions) == 50
    assert all(tx["card_id"].startswith("card-") and "label" not in tx for tx in transactions)


def test_replay_keeps_event_order(kafka_config: FraudkitConfig, tmp_path: Path) -> None:
    from fraudkit.config import SimulateConfig
    from fraudkit.data.simulate import simulate_dataset, write_dataset

    dataset = simulate_dataset(SimulateConfig(days=1, customers=100, terminals=200, seed=5))
    path = write_dataset(dataset, tmp_path / "stream.parquet", "parquet")
    config = configured(kafka_config, source="replay", replay_path=path, rate=None, label_delay_s=0.0)
    summary = run_generate(config)
    assert summary.source == "replay" and summary.stop_reason == "end_of_source"
    assert summary.sent == summary.labels_sent == len(dataset)
    records = consume_all(config, config.topics.transactions)
    assert len(records) == len(dataset)
    for partition in {r["partition"] for r in records}:
        times = [r["event_time_ms"] for r in records if r["partition"] == partition]
        assert times == sorted(times)
    assert sorted(r["transaction_id"] for r in records) == sorted(dataset["transaction_id"])


def test_sigint_stops_the_cli_cleanly_and_loses_nothing(kafka_config: FraudkitConfig, tmp_path: Path) -> None:
    command = [
        sys.executable,
        "-m",
        "fraudkit",
        "generate",
        "--config",
        str(write_config(kafka_config, tmp_path)),
    ]
    command += ["--rate", "2000", "--label-delay", "0", "--no-verdicts", "--json"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while not _has_messages(kafka_config, kafka_config.topics.transactions):
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "generate produced nothing"
            time.sleep(0.2)
        time.sleep(0.5)
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, stderr.decode()
    summary = orjson.loads(stdout)
    assert summary["stop_reason"] == "stopped" and summary["sent"] > 0
    assert len(consume_all(kafka_config, kafka_config.topics.transactions)) == summary["sent"]
    assert len(consume_all(kafka_config, kafka_config.topics.labels)) == summary["labels_sent"]


def _has_messages(config: FraudkitConfig, topic: str) -> bool:
    from fraudkit.stream.kafka import list_topics

    if topic not in list_topics(config):
        return False
    return any(high > low for low, high in high_watermarks(config, topic).values())
