"""Live retraining: detector latency while a retraining runs, and time from the N-th label to the new model.

Run: .venv/bin/python benchmarks/bench_retrain.py [--rate 5000] [--labels 100000] [--partitions 1]
     [--max-retrain-seconds 400] [--warmup-seconds 30] [--keep DIR] [--no-warm-topics]
     [--window-reader spark|arrow] [--worker-cpus 1] [--detector-cpus 0]

Starts its own broker per engine (--engines, default kafka,tansu) and a temporary registry holding
v1 (a [64, 32] MLP with random weights, normalised and thresholded at the 99th percentile on the
features the detector will compute for the stream, labels fed 2 s behind as live, so ~1% of its
verdicts are fraud, as in production, and a trained challenger beats it). One detector runs as a
subprocess (`python -m fraudkit detect --json --quiet`, retrain.role all, retrain.every_labels =
retrain.window_rows = --labels, an empty feature log, retrain.worker_cpu_share as configured: the
default, or FRAUDKIT_RETRAIN__WORKER_CPU_SHARE) while another process produces simulated
transactions at --rate per second (produced_ms stamped at produce time) and each one's label 2 s
later, with the project's producer settings. Topics have --partitions partitions (1, as the latency
run of bench_detect.py: Tansu's fetch cost grows with partitions x history). The first
--warmup-seconds send transactions without labels, not measured: a fresh broker JVM used ~100% of
a core for its first ~25 s of this stream (per-process CPU from /proc), a fresh broker's cost, not
the detector's (bench_detect.py warms up the same way).

1. Baseline: from 5 s after the start until the --labels-th label. Scored rows and labels flow
   into the feature log, but nothing retrains yet.
2. Retraining: the --labels-th logged label triggers the retraining process (Spark, or pyarrow with --window-reader arrow, joins the
   window of --labels rows, PyTorch trains retrain.epochs epochs, champion/challenger on the newest 20%,
   registry, announcement, swap). Transactions and labels keep flowing at the same rates until the
   new model serves plus 5 s (or --max-retrain-seconds).

Verdicts are read back after the run (reading them during it would load the broker). Printed:
p50/p99/max of produced -> verdict created (verdict_ms - produced_ms) over the baseline and over
the verdicts created while the retraining process ran (from its requested_ms to its
announcement's at_ms), their ratio (target <= 1.5x), throughput in both, and the time from producing
the --labels-th label to the first verdict by the new model (feature-log flush, trigger,
Spark start-up, read, training, evaluation, registry, announcement, swap).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, ClassVar

import msgspec
import numpy as np
import orjson
from _detector_log import DetectorLog
from _engines import add_engines_argument, chosen_engines, local_broker
from _topics import warm_partitions

from fraudkit.config import FraudkitConfig, SimulateConfig, load_config
from fraudkit.data.simulate import simulate_dataset
from fraudkit.features import FeatureSpec, OnlineFeatures, frame_to_labels, frame_to_transactions
from fraudkit.model.network import LoadedModel, Normalisation, build_mlp, state_to_numpy
from fraudkit.model.registry import Registry
from fraudkit.schema import Label, Transaction, encode
from fraudkit.stream import kafka

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
        "retrain.feature_log_url": str(workdir / "feature-log"),
        # Labels come 2 s after their transactions here: write the log often so the trigger sees them.
        "retrain.feature_log_flush_s": 1.0,
        "state.snapshot_url": str(workdir / "state"),
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


def live_features(spec: FeatureSpec, stream: list[Transaction], labels: list[Label], lag: int) -> np.ndarray:
    """The features the detector computes for `stream`: each label observed `lag` transactions after its own.

    The terminals' fraud-rate features come from the labels: computed without them (as a plain
    transform would), a random v1 thresholded at their 99th percentile flagged 58% of the verdicts
    live (measured), and the detector spent its time explaining them.
    """
    features = OnlineFeatures(spec)
    chunks = []
    for start in range(0, len(stream), lag):
        chunks.append(features.transform(stream[start : start + lag]))
        features.observe_labels(labels[start : start + lag])
    return np.concatenate(chunks)


def publish_random_mlp(config: FraudkitConfig, spec: FeatureSpec, X: np.ndarray) -> str:
    """v1: random weights normalised on the features X, threshold at their 99th percentile (~1% fraud)."""
    import torch

    torch.manual_seed(0)
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


def reader_from_beginning(config: FraudkitConfig, topic: str) -> kafka.Consumer:
    """A reader assigned every partition of `topic` from its first message."""
    reader = kafka.make_reader(config)
    partitions = sorted(reader.list_topics(topic, timeout=10).topics[topic].partitions)
    reader.assign([kafka.TopicPartition(topic, p, kafka.OFFSET_BEGINNING) for p in partitions])
    return reader


def read_verdicts(config: FraudkitConfig) -> list[tuple[int, int, str, bool]]:
    """After the run: (verdict_ms, produced_ms, model_version, fraud) of every verdict in the topic."""
    reader = reader_from_beginning(config, config.topics.verdicts)
    rows: list[tuple[int, int, str, bool]] = []
    quiet_since = time.monotonic()
    while time.monotonic() - quiet_since < 3.0:
        messages = reader.consume(5000, 0.5)
        if messages:
            quiet_since = time.monotonic()
        for message in messages:
            if message.error() is None:
                verdict = orjson.loads(message.value())
                rows.append(
                    (
                        verdict["verdict_ms"],
                        verdict["produced_ms"],
                        verdict["model_version"],
                        verdict["decision"] == "fraud",
                    )
                )
    reader.close()
    return rows


def stream_producer(
    config: FraudkitConfig,
    rate: float,
    stream_size: int,
    labels_n: int,
    warmup_s: float,
    stop: Any,
    started_at: Any,
    nth_label_at: Any,
    results: Any,
) -> None:
    """Transactions at `rate` (produced_ms stamped at produce time), each one's label LABEL_LAG_S later.

    Runs in its own process, with the project's producer settings, as `fraudkit generate` would;
    records when the labels_n-th label was produced; stops when `stop` is set. The first
    `warmup_s` seconds send transactions without labels (nothing counts towards the trigger);
    `started_at` is their end.
    """
    stream, stream_labels = simulated(stream_size)
    producer = kafka.make_producer(config)
    span_ms = stream[-1].event_time_ms - stream[0].event_time_ms + DAY_MS
    pending_labels: list[tuple[float, Label]] = []
    labels_sent = 0
    clock_start = time.perf_counter()
    warm_until = clock_start + warmup_s
    index = 0
    while not stop.is_set():
        now = time.perf_counter()
        warming = now < warm_until
        if not warming and not started_at.value:
            started_at.value = time.time()
        due = int((now - clock_start) * rate)
        while index < due:
            cycle, position = divmod(index, len(stream))
            base = stream[position]
            tx = msgspec.structs.replace(
                base,
                transaction_id=f"{base.transaction_id}-{cycle}",
                event_time_ms=base.event_time_ms + cycle * span_ms,
                produced_ms=time.time_ns() // 1_000_000,
            )
            kafka.produce(producer, config.topics.transactions, encode(tx), key=tx.card_id)
            label = dataclasses.replace(
                stream_labels[position], transaction_id=tx.transaction_id, event_time_ms=tx.event_time_ms
            )
            if not warming:
                pending_labels.append((now + LABEL_LAG_S, label))
            index += 1
        ready = 0
        while ready < len(pending_labels) and pending_labels[ready][0] <= now:
            ready += 1
        for _, label in pending_labels[:ready]:
            kafka.produce(producer, config.topics.labels, encode(label), key=label.card_id)
            labels_sent += 1
            if labels_sent == labels_n:
                nth_label_at.value = time.time()
        del pending_labels[:ready]
        producer.poll(0)
        time.sleep(0.001)
    kafka.flush(producer, 60)
    results.put(index / (time.perf_counter() - clock_start))


def read_control(config: FraudkitConfig) -> list[dict[str, Any]]:
    reader = reader_from_beginning(config, config.topics.control)
    events = [
        orjson.loads(m.value()) for m in reader.consume(100, 2.0) if m.error() is None and not m.headers()
    ]
    reader.close()
    return events


def cpu_list(text: str) -> list[int]:
    """'0,2' -> [0, 2]."""
    return [int(item) for item in text.split(",") if item.strip()]


def percentiles(latencies: list[int]) -> dict[str, float]:
    if not latencies:
        return {"count": 0}
    values = np.asarray(latencies)
    p50, p99 = np.percentile(values, [50, 99])
    return {"count": int(values.size), "p50": float(p50), "p99": float(p99), "max": float(values.max())}


@dataclasses.dataclass
class Pass:
    """One run's outcome; times are wall-clock seconds."""

    started_at: float
    stopped_at: float
    nth_label_at: float
    achieved: float
    summary: dict[str, Any]
    rows: list[tuple[int, int, str, bool]]
    log: str
    events: list[dict[str, Any]]

    def latencies(self, start_s: float, end_s: float) -> dict[str, float]:
        """Percentiles of produced -> verdict created, for verdicts created in [start_s, end_s) of the run."""
        low, high = (self.started_at + start_s) * 1000, (self.started_at + end_s) * 1000
        return percentiles([v - p for v, p, _, _ in self.rows if low <= v < high])

    def fraud_share(self) -> float:
        """The share of verdicts that were fraud (each one explained, and on the fraud branch)."""
        return sum(fraud for *_, fraud in self.rows) / max(len(self.rows), 1)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rate", type=float, default=5000.0)
    parser.add_argument(
        "--labels", type=int, default=100_000, help="N: labelled rows that trigger, and the window"
    )
    parser.add_argument("--max-retrain-seconds", type=float, default=400.0)
    parser.add_argument(
        "--warmup-seconds",
        type=float,
        default=30.0,
        help="transactions without labels at --rate for this long before the measured stream "
        "(its verdicts are not measured; 0: none)",
    )
    parser.add_argument(
        "--partitions", type=int, default=1, help="partitions of every topic (as bench_detect's latency run)"
    )
    parser.add_argument("--keep", type=Path, help="keep the registry and feature log in this directory")
    parser.add_argument(
        "--no-warm-topics",
        dest="warm_topics",
        action="store_false",
        help="do not write one record to each partition of the control, fraud and dead-letter topics "
        "before a pass (their first write then stalls the broker inside the run)",
    )
    parser.add_argument(
        "--window-reader",
        choices=["spark", "arrow"],
        default="spark",
        help="retrain.window_reader of the detector (spark: the default; arrow: pyarrow in the worker, no JVM)",
    )
    parser.add_argument(
        "--worker-cpus",
        type=cpu_list,
        default=[],
        help="retrain.worker_cpus of the detector, e.g. 1 (default: the retraining may run on any CPU)",
    )
    parser.add_argument(
        "--detector-cpus",
        type=cpu_list,
        default=[],
        help="CPUs the detector process runs on in both passes, e.g. 0 (as taskset -c would; default: any)",
    )
    add_engines_argument(parser)
    args = parser.parse_args()
    print(f"cpus: {os.cpu_count()}, load average: {os.getloadavg()}", flush=True)
    for engine in chosen_engines(args):
        with tempfile.TemporaryDirectory() as tmp:
            workdir = (args.keep or Path(tmp)) / engine
            print(f"== pass 1 on {engine}: the N-th label triggers a retraining", flush=True)
            with local_broker(engine) as handle:
                retraining = run(handle.bootstrap_servers, workdir / "retraining", args, control_for_s=None)
            if retraining is None:
                continue
            length = retraining.stopped_at - retraining.started_at
            print(
                f"== pass 2 on {engine} (control): the same stream for the same {length:.0f} s, no retraining",
                flush=True,
            )
            with local_broker(engine) as handle:
                control = run(handle.bootstrap_servers, workdir / "control", args, control_for_s=length)
            if control is not None:
                report(args, retraining, control)
    print(f"load average at the end: {os.getloadavg()}")


def run(bootstrap: str, workdir: Path, args: argparse.Namespace, control_for_s: float | None) -> Pass | None:
    """One pass on a fresh broker: a retraining at the N-th label, or (control) none for control_for_s."""
    workdir.mkdir(parents=True, exist_ok=True)
    config = bench_config(
        bootstrap,
        workdir,
        **{
            "retrain.enabled": True,
            "retrain.role": "all",
            # The control pass never reaches its trigger: same feature log, no retraining.
            "retrain.every_labels": args.labels if control_for_s is None else 10**9,
            "retrain.window_rows": args.labels,
            "retrain.window_reader": args.window_reader,
            # The simulated stream runs ~0.65 event days per second at 5,000 tx/s: with the default
            # 45-day horizon the log pruned the newest day a slow (paced) Spark read had listed
            # (PATH_NOT_FOUND, measured). A live stream's days pass in real time.
            "retrain.feature_log_horizon_days": 3650.0,
            "retrain.worker_cpus": args.worker_cpus,
            "topics.transactions_partitions": args.partitions,
            "topics.partitions": args.partitions,
        },
    )
    spec = FeatureSpec.from_config(config.features, SimulatorFields())
    stream_size = max(200_000, int(args.warmup_seconds * args.rate) + args.labels + 50_000)
    print(f"simulating {stream_size:,} transactions ...", flush=True)
    stream, labels = simulated(stream_size)
    version = publish_random_mlp(
        config, spec, live_features(spec, stream, labels, int(args.rate * LABEL_LAG_S))
    )
    del labels
    del stream
    kafka.ensure_topics(config)
    if args.warm_topics:
        # The control topic's first write is the retraining's first announcement: that stall
        # would land inside pass 1's measured window only. The detector reads the control topic
        # from its end, so it never sees these records.
        topics = config.topics
        warm_partitions(config, [topics.control, topics.fraud, topics.dead_letter])
    config_path = workdir / "detect.yaml"
    config_path.write_text(json.dumps(config.model_dump(mode="json")))
    detector = subprocess.Popen(
        [sys.executable, "-m", "fraudkit", "detect", "--json", "--quiet", "--instance-id", "bench"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "FRAUDKIT_CONFIG": str(config_path)},
        text=True,
        cwd=workdir,
        preexec_fn=(lambda: os.sched_setaffinity(0, args.detector_cpus)) if args.detector_cpus else None,
    )
    log = DetectorLog(detector, "now serving model")
    if not log.wait_for_partitions():
        return None
    print(
        f"v1 = {version}; producing {args.rate:,.0f} tx/s to {args.partitions} partition(s) and their labels "
        f"{LABEL_LAG_S:g} s later (a separate process); the {args.labels:,}th label triggers the retraining ...",
        flush=True,
    )
    context = multiprocessing.get_context("spawn")
    stop = context.Event()
    started_at = context.Value("d", 0.0)
    nth_label_at = context.Value("d", 0.0)
    results = context.Queue()
    producer = context.Process(
        target=stream_producer,
        args=(
            config,
            args.rate,
            stream_size,
            args.labels,
            args.warmup_seconds,
            stop,
            started_at,
            nth_label_at,
            results,
        ),
    )
    producer.start()
    while not nth_label_at.value and producer.is_alive():
        time.sleep(0.2)
    print(f"{args.labels:,}th label produced", flush=True)
    if control_for_s is not None:
        time.sleep(max(0.0, started_at.value + control_for_s - time.time()))
    elif log.seen["now serving model"].wait(args.max_retrain_seconds):
        print("the new model serves", flush=True)
        time.sleep(5.0)
    else:
        print("no new model within --max-retrain-seconds", flush=True)
    stopped_at = time.time()
    stop.set()
    achieved = results.get(timeout=120)
    producer.join(30)
    time.sleep(2)
    detector.send_signal(signal.SIGTERM)
    out, _ = detector.communicate(timeout=120)
    if detector.returncode != 0:
        print(f"detector failed ({detector.returncode}):", *log.lines[-20:], sep="\n  ")
        return None
    return Pass(
        started_at=started_at.value,
        stopped_at=stopped_at,
        nth_label_at=nth_label_at.value,
        achieved=achieved,
        summary=json.loads(out.strip().splitlines()[-1]),
        rows=read_verdicts(config),
        log="\n".join(log.lines),
        events=read_control(config),
    )


def report(args: argparse.Namespace, retraining: Pass, control: Pass) -> None:
    summary = retraining.summary
    print(
        f"achieved rate {retraining.achieved:,.0f} tx/s (control {control.achieved:,.0f}); detector consumed "
        f"{summary['consumed']:,}, retrains {summary['retrains']}"
    )
    retrain_lines = [
        line
        for line in retraining.log.splitlines()
        if line.startswith(("retraining", "feature log", "model v", "now serving"))
    ]
    print("detector log (retraining):\n  " + "\n  ".join(retrain_lines[-8:]))
    if not retraining.events:
        print("no retraining outcome was announced")
        return
    event = retraining.events[0]
    print(
        f"outcome: {event['type']} {event.get('version')} — {event.get('reason') or event.get('error')}; "
        f"process {event.get('seconds')}s, timings {event.get('timings')}"
    )
    job = (
        event["requested_ms"] / 1000 - retraining.started_at,
        event["at_ms"] / 1000 - retraining.started_at,
    )
    nth = retraining.nth_label_at - retraining.started_at
    before = retraining.latencies(5.0, nth)
    during = retraining.latencies(*job)
    same_seconds = control.latencies(*job)

    def line(name: str, figures: dict[str, float], seconds: float) -> str:
        return (
            f"{name}: p50 {figures.get('p50')} ms, p99 {figures.get('p99')} ms, max {figures.get('max')} ms over "
            f"{figures['count']:,} verdicts ({figures['count'] / max(seconds, 1e-9):,.0f}/s)"
        )

    print(
        f"fraud verdicts: {retraining.fraud_share():.2%} of the retraining pass's, "
        f"{control.fraud_share():.2%} of the control's"
    )
    print("latency produced -> verdict created:")
    print("  " + line(f"before the N-th label (s 5-{nth:.0f})", before, nth - 5.0))
    # Neither pass retrains yet: a difference here is the passes' order or the machine, not retraining.
    control_before = control.latencies(5.0, nth)
    print("  " + line(f"control pass, the same seconds (s 5-{nth:.0f})", control_before, nth - 5.0))
    print("  " + line(f"while the retraining ran (s {job[0]:.0f}-{job[1]:.0f})", during, job[1] - job[0]))
    print("  " + line("control pass over the same seconds, no retraining", same_seconds, job[1] - job[0]))
    step = 5.0
    cells = []
    second = job[0]
    while second < job[1]:
        end = min(second + step, job[1])
        ours, theirs = retraining.latencies(second, end), control.latencies(second, end)
        cells.append(f"s {second:.0f}-{end:.0f}: {ours.get('p99', '-')} / {theirs.get('p99', '-')}")
        second = end
    print("  p99 ms per 5 s while retraining / control: " + "; ".join(cells))
    if during.get("p99") and same_seconds.get("p99"):
        print(
            "p99 while retraining / p99 of the control over the same seconds: "
            f"{during['p99'] / same_seconds['p99']:.2f}x (target <= 1.5x)"
        )
    if during.get("p99") and before.get("p99"):
        print(
            f"p99 while retraining / p99 before the N-th label: {during['p99'] / before['p99']:.2f}x "
            "(this one includes the embedded broker's slow-down with topic history; the control does not)"
        )
    new_version = event.get("version") if event["type"] == "model_published" else None
    if new_version:
        first_new = min((v for v, _, m, _ in retraining.rows if m == new_version), default=None)
        if first_new is not None:
            print(
                f"time from the {args.labels:,}th label to the first verdict by {new_version} "
                f"(window {event.get('rows', {}).get('window', 0):,} labelled rows): "
                f"{first_new / 1000 - retraining.nth_label_at:.1f}s"
            )


if __name__ == "__main__":
    main()
