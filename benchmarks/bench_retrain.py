"""Live retraining: detector latency while a retraining runs, and time from the N-th label to the new model.

Run: .venv/bin/python benchmarks/bench_retrain.py [--rate 5000] [--labels 100000]
     [--max-retrain-seconds 400] [--keep DIR]

Starts its own embedded broker and a temporary registry holding v1 (a [64, 32] MLP with random
weights normalised on the stream, so a trained challenger beats it). One detector runs as a
subprocess (`python -m fraudkit detect --json --quiet`, retrain.role all, retrain.every_labels =
retrain.window_rows = --labels, an empty label buffer) while this process produces simulated
transactions at --rate per second (produced_ms stamped at produce time), produces each one's label
2 s later, and reads the verdicts back.

1. Baseline: from 5 s after the start until the --labels-th label. Labels flow and are joined and
   written to the buffer, but nothing retrains yet.
2. Retraining: the --labels-th labelled row triggers the retraining process (Spark reads the window
   of --labels rows, PyTorch trains retrain.epochs epochs, champion/challenger on the newest 20%,
   registry, announcement, swap). Transactions and labels keep flowing at the same rates until the
   new model's first verdict plus 5 s (or --max-retrain-seconds).

Printed: p50/p99/max of the detector's own produced -> verdict latency (verdict_ms - produced_ms)
over the baseline and over the verdicts created while the retraining process ran (from its
requested_ms to its announcement's at_ms), their ratio (target <= 2x), throughput in both, and the
time from producing the --labels-th label to the first verdict by the new model (label join and
buffer flush, trigger, Spark start-up, read, training, evaluation, registry, announcement, swap).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import orjson

from fraudkit import kafka
from fraudkit.broker import running_broker
from fraudkit.config import FraudkitConfig, SimulateConfig, load_config
from fraudkit.features import FeatureSpec, OnlineFeatures, frame_to_labels, frame_to_transactions
from fraudkit.model import LoadedModel, Normalisation, build_mlp, state_to_numpy
from fraudkit.registry import Registry
from fraudkit.schema import Label, Transaction, encode
from fraudkit.simulate import simulate_dataset

LABEL_LAG_S = 2.0
DAY_MS = 86_400_000


class SimulatorFields:
    """The simulator's layout: every field the feature spec can use."""

    has_card = True
    has_terminal = True
    has_location = True
    has_country = True
    passthrough: ClassVar[list[str]] = []


def bench_config(bootstrap: str, workdir: Path, **overrides: Any) -> FraudkitConfig:
    """An isolated config: fresh topics and groups on the benchmark's broker, everything under workdir."""
    suffix = uuid.uuid4().hex[:8]
    values: dict[str, Any] = {
        "kafka.common.bootstrap.servers": bootstrap,
        "topics.transactions": f"bench-tx-{suffix}",
        "topics.legit": f"bench-tx-{suffix}.legit",
        "topics.fraud": f"bench-tx-{suffix}.fraud",
        "topics.verdicts": f"bench-verdicts-{suffix}",
        "topics.labels": f"bench-labels-{suffix}",
        "topics.dead_letter": f"bench-tx-{suffix}.dead-letter",
        "topics.control": f"bench-control-{suffix}",
        "detect.group_id": f"bench-detect-{suffix}",
        "detect.transactional_id": f"bench-detect-{suffix}",
        "detect.quiet": True,
        "registry.path": str(workdir / "models"),
        "retrain.buffer_path": str(workdir / "labels"),
    }
    values.update(overrides)
    return load_config(None, values, environ={})


def simulated(count: int, seed: int = 42) -> tuple[list[Transaction], list[Label]]:
    """At least `count` simulated transactions in event order, and their labels."""
    customers = 5000
    days = max(1, int(count / (customers * 1.55)) + 1)
    frame = simulate_dataset(
        SimulateConfig(customers=customers, terminals=2 * customers, days=days, seed=seed)
    )
    frame = frame.iloc[:count]
    return frame_to_transactions(frame), frame_to_labels(frame)


def publish_random_mlp(config: FraudkitConfig, spec: FeatureSpec, sample: list[Transaction]) -> str:
    """v1: random weights normalised on the sample, threshold at its 99th percentile."""
    import torch

    torch.manual_seed(0)
    X = OnlineFeatures(spec).transform(sample)
    normalisation = Normalisation.fit(X)
    state = state_to_numpy(build_mlp(len(spec.names), [64, 32]).state_dict())
    candidate = LoadedModel.from_state(state, spec.names, normalisation, 0.5, [64, 32])
    threshold = float(np.quantile(candidate.score(X), 0.99))
    return Registry(config.registry.path).publish(
        state,
        feature_names=spec.names,
        hidden_sizes=[64, 32],
        normalisation=normalisation,
        threshold=threshold,
        feature_spec=spec.to_dict(),
        trainer="bench_retrain",
    )


class VerdictReader(threading.Thread):
    """Reads verdicts back: (verdict_ms, produced_ms, model_version) of each."""

    def __init__(self, config: FraudkitConfig) -> None:
        super().__init__(daemon=True)
        self.config = config
        self.stop = threading.Event()
        self.rows: list[tuple[int, int, str]] = []

    def run(self) -> None:
        topic = self.config.topics.verdicts
        reader = kafka.make_reader(self.config, **{"fetch.wait.max.ms": 5})
        partitions = sorted(reader.list_topics(topic, timeout=10).topics[topic].partitions)
        reader.assign([kafka.TopicPartition(topic, p, kafka.OFFSET_BEGINNING) for p in partitions])
        while not self.stop.is_set():
            for message in reader.consume(2000, 0.05):
                if message.error() is None:
                    verdict = orjson.loads(message.value())
                    self.rows.append(
                        (verdict["verdict_ms"], verdict["produced_ms"], verdict["model_version"])
                    )
        reader.close()


def read_control(config: FraudkitConfig) -> list[dict[str, Any]]:
    topic = config.topics.control
    reader = kafka.make_reader(config)
    partitions = sorted(reader.list_topics(topic, timeout=10).topics[topic].partitions)
    reader.assign([kafka.TopicPartition(topic, p, kafka.OFFSET_BEGINNING) for p in partitions])
    events = [orjson.loads(m.value()) for m in reader.consume(100, 2.0) if m.error() is None]
    reader.close()
    return events


def percentiles(latencies: list[int]) -> dict[str, float]:
    if not latencies:
        return {"count": 0}
    values = np.asarray(latencies)
    p50, p99 = np.percentile(values, [50, 99])
    return {"count": int(values.size), "p50": float(p50), "p99": float(p99), "max": float(values.max())}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rate", type=float, default=5000.0)
    parser.add_argument(
        "--labels", type=int, default=100_000, help="N: labelled rows that trigger, and the window"
    )
    parser.add_argument("--max-retrain-seconds", type=float, default=400.0)
    parser.add_argument("--keep", type=Path, help="keep the registry and label buffer in this directory")
    args = parser.parse_args()
    print(f"cpus: {os.cpu_count()}, load average: {os.getloadavg()}", flush=True)
    with tempfile.TemporaryDirectory() as tmp, running_broker() as bootstrap:
        workdir = args.keep or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        run(bootstrap, workdir, args)
    print(f"load average at the end: {os.getloadavg()}")


def run(bootstrap: str, workdir: Path, args: argparse.Namespace) -> None:
    config = bench_config(
        bootstrap,
        workdir,
        **{
            "retrain.enabled": True,
            "retrain.role": "all",
            "retrain.every_labels": args.labels,
            "retrain.window_rows": args.labels,
        },
    )
    spec = FeatureSpec.from_config(config.features, SimulatorFields())
    stream_size = max(200_000, args.labels + 50_000)
    print(f"simulating {stream_size:,} transactions ...", flush=True)
    stream, stream_labels = simulated(stream_size)
    version = publish_random_mlp(config, spec, stream[:20_000])
    kafka.ensure_topics(config)
    config_path = workdir / "detect.yaml"
    config_path.write_text(json.dumps(config.model_dump(mode="json")))
    detector = subprocess.Popen(
        [sys.executable, "-m", "fraudkit", "detect", "--json", "--quiet", "--instance-id", "bench"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "FRAUDKIT_CONFIG": str(config_path)},
        text=True,
        cwd=workdir,
    )
    verdicts = VerdictReader(config)
    verdicts.start()
    time.sleep(8)  # the detector starts, joins its group and gets partitions
    print(
        f"v1 = {version}; producing {args.rate:,.0f} tx/s and their labels 2 s later; the {args.labels:,}th "
        "label triggers the retraining ...",
        flush=True,
    )
    producer = kafka.make_producer(config, **{"linger.ms": 1})
    span_ms = stream[-1].event_time_ms - stream[0].event_time_ms + DAY_MS
    pending_labels: list[tuple[float, Label]] = []
    labels_sent = 0
    nth_label_at: float | None = None
    clock_start = time.perf_counter()
    baseline_from_ms = time.time_ns() // 1_000_000 + 5000
    index = 0
    new_model_at: float | None = None
    while True:
        now = time.perf_counter()
        if nth_label_at is not None:
            if new_model_at is None and any(v[2] != version for v in verdicts.rows[-200:]):
                new_model_at = now
                print("the new model serves", flush=True)
            if new_model_at is not None and now - new_model_at >= 5.0:
                break
            if time.time() - nth_label_at >= args.max_retrain_seconds:
                print("gave up waiting for a new model", flush=True)
                break
        due = int((now - clock_start) * args.rate)
        while index < due:
            cycle, position = divmod(index, len(stream))
            base = stream[position]
            tx = dataclasses.replace(
                base,
                transaction_id=f"{base.transaction_id}-{cycle}",
                event_time_ms=base.event_time_ms + cycle * span_ms,
                produced_ms=time.time_ns() // 1_000_000,
            )
            kafka.produce(producer, config.topics.transactions, encode(tx), key=tx.card_id)
            label = dataclasses.replace(
                stream_labels[position], transaction_id=tx.transaction_id, event_time_ms=tx.event_time_ms
            )
            pending_labels.append((now + LABEL_LAG_S, label))
            index += 1
        ready = 0
        while ready < len(pending_labels) and pending_labels[ready][0] <= now:
            ready += 1
        for _, label in pending_labels[:ready]:
            kafka.produce(producer, config.topics.labels, encode(label), key=label.card_id)
            labels_sent += 1
            if labels_sent == args.labels:
                nth_label_at = time.time()
                print(f"{args.labels:,}th label produced", flush=True)
        del pending_labels[:ready]
        producer.poll(0)
        time.sleep(0.002)
    kafka.flush(producer, 60)
    achieved = index / (time.perf_counter() - clock_start)
    time.sleep(2)
    detector.send_signal(signal.SIGTERM)
    out, err = detector.communicate(timeout=120)
    verdicts.stop.set()
    verdicts.join(10)
    if detector.returncode != 0:
        print(f"detector failed ({detector.returncode}): {err[-3000:]}")
        return
    summary = json.loads(out.strip().splitlines()[-1])
    baseline_window = None
    if nth_label_at is not None:
        baseline_window = (baseline_from_ms, int(nth_label_at * 1000))
    report(config, args, summary, verdicts.rows, baseline_window, nth_label_at, achieved, err)


def report(
    config: FraudkitConfig,
    args: argparse.Namespace,
    summary: dict[str, Any],
    rows: list[tuple[int, int, str]],
    baseline_window: tuple[int, int] | None,
    nth_label_at: float | None,
    achieved: float,
    log: str,
) -> None:
    print(
        f"achieved rate {achieved:,.0f} tx/s; detector consumed {summary['consumed']:,}, retrains {summary['retrains']}"
    )
    events = read_control(config)
    retrain_lines = [
        line
        for line in log.splitlines()
        if line.startswith(("retraining", "label buffer", "model v", "now serving"))
    ]
    print("detector log (retraining):\n  " + "\n  ".join(retrain_lines[-8:]))
    if not events or baseline_window is None:
        print("no retraining outcome was announced")
        return
    event = events[0]
    print(
        f"outcome: {event['type']} {event.get('version')} — {event.get('reason') or event.get('error')}; "
        f"process {event.get('seconds')}s, timings {event.get('timings')}"
    )
    job_window = (int(event["requested_ms"]), int(event["at_ms"]))
    baseline = percentiles([v - p for v, p, _ in rows if baseline_window[0] <= v < baseline_window[1]])
    during = percentiles([v - p for v, p, _ in rows if job_window[0] <= v < job_window[1]])
    rate_during = during["count"] / max((job_window[1] - job_window[0]) / 1000, 1e-9)
    rate_base = baseline["count"] / max((baseline_window[1] - baseline_window[0]) / 1000, 1e-9)
    print(
        f"latency produced -> verdict created, no retraining: p50 {baseline.get('p50')} ms, "
        f"p99 {baseline.get('p99')} ms, max {baseline.get('max')} ms over {baseline['count']:,} verdicts "
        f"({rate_base:,.0f}/s)"
    )
    print(
        f"latency produced -> verdict created, while retraining ran ({(job_window[1] - job_window[0]) / 1000:.1f}s): "
        f"p50 {during.get('p50')} ms, p99 {during.get('p99')} ms, max {during.get('max')} ms over "
        f"{during['count']:,} verdicts ({rate_during:,.0f}/s)"
    )
    if baseline.get("p99") and during.get("p99"):
        print(f"p99 ratio retraining / baseline: {during['p99'] / baseline['p99']:.2f}x (target <= 2x)")
    new_version = event.get("version") if event["type"] == "model_published" else None
    if new_version and nth_label_at is not None:
        first_new = min((v for v, _, m in rows if m == new_version), default=None)
        if first_new is not None:
            print(
                f"time from the {args.labels:,}th label to the first verdict by {new_version} "
                f"(window {event.get('rows', {}).get('window', 0):,} labelled rows): "
                f"{first_new / 1000 - nth_label_at:.1f}s"
            )


if __name__ == "__main__":
    main()
