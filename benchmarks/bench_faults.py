"""The pause a stopped broker causes: exactly-once detection on a three-node Apache Kafka cluster.

Run: .venv/bin/python benchmarks/bench_faults.py [--rate 5000] [--seconds 40] [--kill] [--model rules]

One local Apache Kafka cluster of three nodes (KRaft, each node broker and controller; replication 3,
min.insync.replicas 2), two phases on fresh topics in the same run:

1. baseline: a paced producer (its own process, idempotent) sends --rate tx/s for --seconds to a
   `fraudkit detect --exactly-once` subprocess; this process reads the verdicts back with
   isolation.level=read_committed.
2. fault: the same, and node 2 is stopped (SIGTERM, or SIGKILL with --kill) a quarter of the way in
   and started again half way, beside the stream.

Printed per phase: verdicts, lost (inputs without a committed verdict) and duplicated (extra
committed verdicts), whether the detector stayed up, the longest gap between two consecutive
verdicts read back (the pause) and when it began relative to the node stop, and the p99 of
produced -> verdict read back before the stop, during the outage and after the restart (the
baseline is cut at the same moments).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from _detector_log import DetectorLog
from _engines import local_broker

from fraudkit.config import FraudkitConfig, load_config
from fraudkit.schema import Transaction, encode
from fraudkit.stream import kafka
from fraudkit.stream.broker import RunningBroker

STOPPED_NODE = 1  # index: the second node (node id 2)
START_MS = 1_767_225_600_000  # 2026-01-01


def phase_config(bootstrap: str, workdir: Path) -> FraudkitConfig:
    suffix = uuid.uuid4().hex[:8]
    values: dict[str, Any] = {
        "kafka.common.bootstrap.servers": bootstrap,
        "kafka.connect_timeout_s": 60,
        "topics.transactions": f"faults-tx-{suffix}",
        "topics.legit": f"faults-tx-{suffix}.legit",
        "topics.fraud": f"faults-tx-{suffix}.fraud",
        "topics.verdicts": f"faults-verdicts-{suffix}",
        "topics.labels": f"faults-labels-{suffix}",
        "topics.dead_letter": f"faults-tx-{suffix}.dead-letter",
        "topics.control": f"faults-control-{suffix}",
        "topics.replication_factor": 3,
        "detect.group_id": f"faults-detect-{suffix}",
        "detect.transactional_id": f"faults-detect-{suffix}",
        "registry.path": str(workdir / "models"),
        "retrain.enabled": False,
    }
    return load_config(None, values, environ={})


def paced_producer(config: FraudkitConfig, total: int, rate: float, results: Any) -> None:
    """Send `total` transactions at `rate` per second (produced_ms at send time), idempotently."""
    producer = kafka.make_producer(config, **{"enable.idempotence": True})
    topic = config.topics.transactions
    started = time.perf_counter()
    for index in range(total):
        delay = started + index / rate - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        tx = Transaction(
            transaction_id=f"tx-{index:08d}",
            event_time_ms=START_MS + index * 10,
            card_id=f"card-{index % 5000:05d}",
            amount=float(index % 1000),
            terminal_id=f"term-{index % 800:04d}",
            country="DE",
            produced_ms=time.time_ns() // 1_000_000,
        )
        kafka.produce(producer, topic, encode(tx), key=tx.card_id)
        producer.poll(0)
    kafka.flush(producer, 120)
    results.put(time.perf_counter() - started)


def detector_process(config: FraudkitConfig, workdir: Path, model: str) -> subprocess.Popen[str]:
    path = workdir / f"{config.detect.group_id}.yaml"
    path.write_text(orjson.dumps(config.model_dump(mode="json")).decode())
    env = {**os.environ, "FRAUDKIT_CONFIG": str(path)}
    command = [sys.executable, "-m", "fraudkit", "detect", "--exactly-once", "--model", model, "--quiet"]
    return subprocess.Popen(
        [*command, "--json", "--instance-id", config.detect.group_id],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        text=True,
    )


def p99(values: list[float]) -> str:
    return f"{np.percentile(values, 99):,.0f} ms" if values else "-"


def run_phase(
    cluster: RunningBroker, workdir: Path, rate: float, seconds: float, model: str, fault: bool, kill: bool
) -> None:
    name = "fault" if fault else "baseline"
    config = phase_config(cluster.bootstrap_servers, workdir)
    kafka.ensure_topics(config)
    detector = detector_process(config, workdir, model)
    log = DetectorLog(detector)
    if not log.wait_for_partitions(120):
        return
    reader = kafka.make_reader(config, **{"isolation.level": "read_committed"})
    topic = config.topics.verdicts
    partitions = sorted(reader.list_topics(topic, timeout=10).topics[topic].partitions)
    reader.assign([kafka.TopicPartition(topic, p, kafka.OFFSET_BEGINNING) for p in partitions])
    total = int(rate * seconds)
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    producer = context.Process(target=paced_producer, args=(config, total, rate, results))
    started = time.monotonic()
    producer.start()
    stop_at, start_at = started + seconds / 4, started + seconds / 2
    events: dict[str, float] = {}

    def outage() -> None:
        time.sleep(max(0.0, stop_at - time.monotonic()))
        events["stop"] = time.monotonic()
        if fault:
            cluster.stop_node(STOPPED_NODE, kill=kill)
        events["stopped"] = time.monotonic()
        time.sleep(max(0.0, start_at - time.monotonic()))
        events["start"] = time.monotonic()
        if fault:
            cluster.start_node(STOPPED_NODE, timeout_s=180)
        events["started"] = time.monotonic()

    faults = threading.Thread(target=outage, daemon=True)
    faults.start()
    arrivals: list[float] = []
    latencies: list[tuple[float, float]] = []  # (produced, monotonic; latency ms)
    ids: Counter[str] = Counter()
    offset = time.time() - time.monotonic()  # wall = monotonic + offset, for produced_ms
    deadline = started + seconds * 4 + 180
    while time.monotonic() < deadline:
        messages = reader.consume(5000, 0.05)
        now = time.monotonic()
        for message in messages:
            if message.error() is not None:
                continue
            verdict = orjson.loads(message.value())
            ids[verdict["transaction_id"]] += 1
            arrivals.append(now)
            produced = verdict["produced_ms"] / 1000.0 - offset
            latencies.append((produced, (now - produced) * 1000.0))
        if len(ids) >= total and not faults.is_alive():
            break
    producer.join(60)
    faults.join(200)
    stayed_up = detector.poll() is None
    detector.send_signal(signal.SIGTERM)
    try:
        detector.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        detector.kill()
    kafka.close_within(reader, 10, "verdict reader")
    lost = total - len(ids)
    duplicated = sum(count - 1 for count in ids.values())
    gaps = np.diff(np.asarray(arrivals)) if len(arrivals) > 1 else np.zeros(1)
    longest = int(np.argmax(gaps))
    pause_s = float(gaps[longest])
    pause_from = arrivals[longest] - events["stop"] if arrivals else 0.0
    before = [lat for produced, lat in latencies if produced < events["stop"]]
    during = [lat for produced, lat in latencies if events["stop"] <= produced < events["started"]]
    after = [lat for produced, lat in latencies if produced >= events["started"]]
    what = ("killed" if kill else "stopped") if fault else "(no node stopped)"
    print(
        f"{name}: {total:,} tx at {rate:,.0f} tx/s for {seconds:g}s, node 2 {what}"
        + (
            f" at {events['stop'] - started:.1f}s (took {events['stopped'] - events['stop']:.1f}s), "
            f"back at {events['started'] - started:.1f}s"
            if fault
            else ""
        ),
        flush=True,
    )
    print(
        f"  verdicts {len(ids):,}, lost {lost:,}, duplicated {duplicated:,}, detector stayed up: {stayed_up}",
        flush=True,
    )
    print(
        f"  longest gap between verdicts (the pause): {pause_s * 1000:,.0f} ms, "
        f"starting {pause_from:+.1f}s from the {'stop' if fault else 'same moment'}",
        flush=True,
    )
    print(
        f"  p99 produced -> verdict read back: before {p99(before)}, during the outage {p99(during)}, "
        f"after the restart {p99(after)}",
        flush=True,
    )
    if not stayed_up:
        print("  detector log:", *log.lines[-8:], sep="\n    ")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=5000.0, help="transactions per second")
    parser.add_argument("--seconds", type=float, default=40.0, help="length of each phase")
    parser.add_argument("--kill", action="store_true", help="SIGKILL the node instead of SIGTERM")
    parser.add_argument("--model", default="rules", help="the detector's --model (default rules)")
    parser.add_argument("--skip-baseline", action="store_true")
    args = parser.parse_args()
    print("--- cluster: three nodes, replication 3, min.insync.replicas 2", flush=True)
    print(f"--- detector: --exactly-once --model {args.model}", flush=True)
    with (
        tempfile.TemporaryDirectory(prefix="bench-faults-") as folder,
        local_broker("kafka", brokers=3, timeout_s=180) as cluster,
    ):
        workdir = Path(folder)
        if not args.skip_baseline:
            run_phase(cluster, workdir, args.rate, args.seconds, args.model, fault=False, kill=args.kill)
        run_phase(cluster, workdir, args.rate, args.seconds, args.model, fault=True, kill=args.kill)


if __name__ == "__main__":
    main()
