"""Throughput and latency of `fraudkit detect` against a naive one-at-a-time detector, same run.

Run: .venv/bin/python benchmarks/bench_detect.py [--transactions 300000] [--naive 3000]
     [--rate 5000] [--latency-seconds 20] [--warmup 60000] [--memory-customers 5000] [--memory-days 35] [--skip-latency] [--skip-memory]
     [--profile detect-profile.txt]

Runs every broker-bound phase once per engine (--engines, default kafka,tansu: a fresh local Apache
Kafka, then a fresh Tansu), each with a temporary registry holding
an MLP ([64, 32] hidden units, random weights, the full simulator feature spec, threshold at the
99th percentile of its scores so ~1% of verdicts are fraud and get reason codes).

1. Throughput: --transactions simulated transactions are pre-loaded into a 6-partition topic, then
   one detector (run_detect, MLP, full features, at-least-once) consumes them all; throughput is
   over its processing time.
2. Naive: a fresh consumer group reads the same messages one at a time: poll one,
   schema.decode_transaction, amount rule, produce one (to the fraud/legit branch), commit it.
   Twice: with the detector's guarantee (wait for the produced message's ack, synchronous commit;
   --naive messages) and fire-and-forget (asynchronous commit, no ack wait; 10 x --naive messages).
   Ratio = 1 / 2, for each (target: at least 4x the fire-and-forget loop).
   Pass-through: a fresh group consumes the same messages in batches and produces them unchanged
   (no decode, features, model); the ceiling of any consume -> produce loop on this broker and
   machine. Ratio = 1 / pass-through (target: at least 0.25).
3. Latency: first the broker alone (the same paced producer -> a plain consumer, produced ->
   consumed), then the detector as a subprocess (`python -m fraudkit detect --json`) while another
   process produces at --rate tx/s (produced_ms stamped at produce time). Three figures for the
   detector, each over the same measured verdicts:
   * produced -> verdict written by the broker: the verdicts topic is created with
     message.timestamp.type=LogAppendTime, so each verdict's timestamp is when the broker wrote it
     (its acknowledgement follows at once): the issue's "produced -> verdict acknowledged", exact,
     at no cost to the detector;
   * the detector's own figure (its latency histogram): it ends a batch's latency when it sees
     its producer queue empty, an upper bound (success callbacks per message, to end it exactly,
     cost ~12% of the throughput: measured);
   * produced -> verdict read back by a client (a plain consumer of the verdicts, as the baseline's).
   Each measured stream follows a warm-up of --warmup transactions without produced_ms through the
   same pipe, sent and answered (consumed; verdicts on the topic) before the measured ones start,
   and one record in every partition of the output topics (the fraud branch gets ~1% of the
   warm-up, the dead-letter topic none). Why: on this machine the broker's first writes to freshly
   created partitions stall it for ~0.5 s (request handlers in OffsetIndex.append on the new index
   files; gone with the broker's data on tmpfs), and a fresh broker JVM is still compiling the
   detector's request paths in its first seconds (C2 compiler threads at 14% of a core during the
   first measured stream). Both are a fresh broker's costs, not the detector's; a production
   broker is warm. The default, 60,000 (12 s at 5,000 tx/s): after 20,000 the machine was still
   85-95% busy for the first ~2.5 s of the measured stream, the broker JVM alone at ~1.2 cores
   (per-process CPU from /proc every 50 ms), and that stretch set the 1-partition p99 (measured
   per verdict with LogAppendTime on the transactions topic too). `--warmup 0` measures from the
   first write. On Tansu a longer warm-up is also a longer history, which its fetches pay for.
4. Memory per active card: OnlineFeatures over --memory-days simulated days of --memory-customers
   customers (35 days fill the longest, 30-day window), expired at the last event time; tracemalloc
   of the state divided by the number of cards in state.
"""

from __future__ import annotations

import argparse
import gc
import json
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
import tracemalloc
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from _detector_log import DetectorLog
from _engines import add_engines_argument, broker_cpu_seconds, chosen_engines, local_broker
from _topics import ready_messages, warm_partitions
from confluent_kafka import TIMESTAMP_LOG_APPEND_TIME

from fraudkit.config import FraudkitConfig, SimulateConfig, load_config
from fraudkit.data.simulate import simulate_dataset
from fraudkit.detect import run_detect
from fraudkit.features import FeatureSpec, OnlineFeatures, frame_to_transactions
from fraudkit.model.network import LoadedModel, Normalisation, build_mlp, state_to_numpy
from fraudkit.model.registry import Registry
from fraudkit.observability.drift import training_reference
from fraudkit.schema import InvalidMessage, Transaction, decode_transaction, encode
from fraudkit.stream import kafka

# The latency phase's stream: its first WARMUP transactions only fill the model's normalisation
# sample (the simulator's first days), the rest are produced.
WARMUP = 20_000
LATENCY_SEED = 7
# The latency runs' warm-up: how long the producer waits for its warm-up to be consumed.
WARMUP_WAIT_S = 120.0


class SimulatorFields:
    """The simulator's layout: every field the feature spec can use."""

    has_card = True
    has_terminal = True
    has_location = True
    has_country = True
    passthrough: ClassVar[list[str]] = []


def bench_config(bootstrap: str, workdir: Path, **overrides: Any) -> FraudkitConfig:
    """An isolated config: fresh topics and groups on the benchmark's broker."""
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
        "registry.path": str(workdir / "models"),
        "detect.quiet": True,
        # Live retraining has its own benchmark; this one measures scoring alone.
        "retrain.enabled": False,
        # Durable state is on, as by default (benchmarks/bench_state.py measures its cost).
        "state.snapshot_url": str(workdir / "state"),
    }
    values.update(overrides)
    return load_config(None, values, environ={})


def simulated_transactions(count: int, customers: int = 5000, seed: int = 42) -> list[Transaction]:
    """At least `count` simulated transactions in event order (about 1.6 per customer per day)."""
    days = max(1, int(count / (customers * 1.55)) + 1)
    frame = simulate_dataset(
        SimulateConfig(customers=customers, terminals=customers * 2, days=days, seed=seed)
    )
    return frame_to_transactions(frame.iloc[:count])


def publish_mlp(
    config: FraudkitConfig, sample: list[Transaction], trainer: str = "bench_detect", drift: bool = False
) -> str:
    """A [64, 32] MLP with random weights, normalised on the sample, threshold at its 99th percentile.

    The sample should be the stream the detector will see, so that ~1% of its verdicts are fraud.
    With `drift`, the manifest also gets the drift reference of that sample.
    """
    import torch

    torch.manual_seed(0)
    spec = FeatureSpec.from_config(config.features, SimulatorFields())
    features = OnlineFeatures(spec).transform(sample)
    normalisation = Normalisation.fit(features)
    state = state_to_numpy(build_mlp(len(spec.names), [64, 32]).state_dict())
    candidate = LoadedModel.from_state(state, spec.names, normalisation, 0.5, [64, 32])
    threshold = float(np.quantile(candidate.score(features), 0.99))
    return Registry(config.registry.path).publish(
        state,
        feature_names=spec.names,
        hidden_sizes=[64, 32],
        normalisation=normalisation,
        threshold=threshold,
        feature_spec=spec.to_dict(),
        trainer=trainer,
        drift_reference=(
            training_reference(features, spec.names, candidate.score, config.drift.bins) if drift else None
        ),
    )


def preload(config: FraudkitConfig, transactions: list[Transaction]) -> None:
    """Produce every transaction (produced_ms = now) and wait for all acknowledgements."""
    producer = kafka.make_producer(config)
    topic = config.topics.transactions
    now_ms = int(time.time() * 1000)
    for tx in transactions:
        tx.produced_ms = now_ms
        kafka.produce(producer, topic, encode(tx), key=tx.card_id)
    kafka.flush(producer, 120)


def naive_detector(config: FraudkitConfig, count: int, guaranteed: bool) -> float:
    """One message at a time: poll one, decode, amount rule, produce one, commit it. Returns tx/s.

    guaranteed: wait for the produced message's acknowledgement, then commit synchronously (the
    detector's at-least-once guarantee, one message at a time). Otherwise fire and forget: produce,
    serve callbacks, asynchronous commit (faster, but a crash can lose messages).
    """
    mode = "guaranteed" if guaranteed else "async"
    consumer = kafka.make_consumer(config, f"{config.detect.group_id}-naive-{mode}")
    producer = kafka.make_producer(config)
    consumer.subscribe([config.topics.transactions])
    threshold = config.detect.amount_rule_threshold
    done = 0
    started: float | None = None
    while done < count:
        message = consumer.poll(1.0)
        if message is None or message.error() is not None:
            continue
        if started is None:
            started = time.perf_counter()
        try:
            tx = decode_transaction(message.value())
        except InvalidMessage:
            continue
        topic = config.topics.fraud if tx.amount > threshold else config.topics.legit
        kafka.produce(producer, topic, message.value(), key=message.key())
        if guaranteed:
            kafka.flush(producer)
            consumer.commit(message=message, asynchronous=False)
        else:
            producer.poll(0)
            consumer.commit(message=message, asynchronous=True)
        done += 1
    producer.flush(60)
    elapsed = time.perf_counter() - (started or time.perf_counter())
    consumer.close()
    return done / elapsed if elapsed > 0 else 0.0


def pass_through(config: FraudkitConfig, count: int) -> float:
    """The ceiling of any consume -> produce loop: batches in, the same bytes out, no processing.

    A fresh group reads the pre-loaded topic in batches of detect.batch_size and produces every
    message unchanged to the legit branch (no decode, features, model or encode), serving delivery
    callbacks between batches and committing asynchronously; the producer is flushed at the end and
    its time counted. Returns tx/s.
    """
    consumer = kafka.make_consumer(config, f"{config.detect.group_id}-pass-through")
    producer = kafka.make_producer(config)
    consumer.subscribe([config.topics.transactions])
    topic = config.topics.legit
    batch_size = config.detect.batch_size
    done = 0
    started: float | None = None
    while done < count:
        messages = consumer.consume(batch_size, 1.0)
        if not messages:
            continue
        if started is None:
            started = time.perf_counter()
        for message in messages:
            if message.error() is None:
                kafka.produce(producer, topic, message.value(), key=message.key())
                done += 1
        producer.poll(0)
        consumer.commit(asynchronous=True)
    producer.flush(60)
    elapsed = time.perf_counter() - (started or time.perf_counter())
    consumer.close()
    return done / elapsed if elapsed > 0 else 0.0


def throughput(
    bootstrap: str,
    workdir: Path,
    count: int,
    naive_count: int,
    profile: Path | None = None,
    broker_cpu: Callable[[], float | None] = lambda: None,
) -> None:
    config = bench_config(bootstrap, workdir)
    print(f"simulating {count:,} transactions ...", flush=True)
    transactions = simulated_transactions(count)
    version = publish_mlp(config, transactions)
    kafka.ensure_topics(config)
    started = time.perf_counter()
    preload(config, transactions)
    print(
        f"pre-loaded {len(transactions):,} in {time.perf_counter() - started:.1f}s; model {version}",
        flush=True,
    )

    if profile is not None:
        from pyinstrument import Profiler

        profiler = Profiler(interval=0.002)
        profiler.start()
    cpu_started, broker_started = time.process_time(), broker_cpu()
    summary = run_detect(config, max_transactions=len(transactions), until_idle_s=30)
    # CPU of this process (the detector and its librdkafka threads; the bench is idle meanwhile):
    # on a shared machine a steadier figure of the detector's cost than its wall-clock rate.
    cpu_s, broker_ended = time.process_time() - cpu_started, broker_cpu()
    if profile is not None:
        profiler.stop()
        profile.write_text(profiler.output_text(unicode=False, color=False, show_all=False))
        print(f"profile of the detector pass written to {profile}", flush=True)
    fast = summary.throughput_per_s
    print(
        f"detector (MLP {version}, full features, batches of {config.detect.batch_size}): "
        f"{summary.consumed:,} transactions in {summary.processing_s:.2f}s = {fast:,.0f} tx/s; "
        f"{summary.fraud:,} fraud verdicts",
        flush=True,
    )
    broker_text = (
        f"; the broker {broker_ended - broker_started:.2f}s"
        if broker_started is not None and broker_ended is not None
        else ""
    )
    print(
        f"detector process CPU over its pass (start and idle end included): {cpu_s:.2f}s = "
        f"{cpu_s / max(summary.consumed, 1) * 1e6:.1f} us per transaction{broker_text}",
        flush=True,
    )
    naive = naive_detector(config, min(naive_count, len(transactions)), guaranteed=True)
    print(
        f"naive detector, one at a time with the same guarantee (produce, wait for the ack, commit): "
        f"{naive:,.0f} tx/s -> ratio {fast / naive:.1f}x",
        flush=True,
    )
    loose = naive_detector(config, min(naive_count * 10, len(transactions)), guaranteed=False)
    print(
        f"naive detector, fire and forget (produce, asynchronous commit, no delivery guarantee): "
        f"{loose:,.0f} tx/s -> ratio {fast / loose:.1f}x (target >= 4x)",
        flush=True,
    )
    ceiling = pass_through(config, len(transactions))
    print(
        f"pass-through, batches of {config.detect.batch_size} consumed and produced unchanged, no "
        f"processing: {ceiling:,.0f} tx/s -> detector / pass-through {fast / ceiling:.2f} (target >= 0.25)",
        flush=True,
    )


def paced_producer(
    config: FraudkitConfig,
    count: int,
    seed: int,
    rate: float,
    results: Any,
    warmup: int = 0,
    go: Any = None,
) -> None:
    """Produce `count` simulated transactions at `rate` per second, produced_ms stamped at send time.

    With `warmup`, first that many transactions of the same stream without produced_ms (they count
    in no latency), then "warm" on `results`, and the measured ones once `go` is set.
    Simulates them itself (the same seed gives the parent's warm-up sample) rather than receiving
    them: pickling a large list to a spawned process takes longer than the detector's idle limit.
    """
    transactions = simulated_transactions(count + warmup + WARMUP, seed=seed)[WARMUP:]
    producer = kafka.make_producer(config)  # the project's producer settings, as `fraudkit generate`
    topic = config.topics.transactions

    def paced(batch: list[Transaction], stamp: bool) -> float:
        started = time.perf_counter()
        for index, tx in enumerate(batch):
            delay = started + index / rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            tx.produced_ms = time.time_ns() // 1_000_000 if stamp else None
            kafka.produce(producer, topic, encode(tx), key=tx.card_id)
            producer.poll(0)
        kafka.flush(producer, 60)
        return time.perf_counter() - started

    if warmup:
        paced(transactions[:warmup], stamp=False)
        results.put("warm")
        if not go.wait(WARMUP_WAIT_S):
            results.put("no go")
            return
    measured = transactions[warmup:]
    results.put(len(measured) / paced(measured, stamp=True))


def bare_pipe(config: FraudkitConfig, rate: float, seconds: float, warmup: int) -> np.ndarray:
    """The broker's own floor: the same producer → a plain consumer, no detector. Latencies in ms.

    The `warmup` messages (no produced_ms) are consumed first; the measured ones follow.
    """
    kafka.ensure_topics(config, [config.topics.transactions])
    consumer = kafka.make_consumer(config, config.detect.group_id)
    consumer.subscribe([config.topics.transactions])
    deadline = time.monotonic() + 60
    while not consumer.assignment() and time.monotonic() < deadline:
        consumer.poll(0.1)
    total = int(rate * seconds)
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    go = context.Event()
    producer = context.Process(
        target=paced_producer, args=(config, total, LATENCY_SEED, rate, results, warmup, go)
    )
    producer.start()
    latencies: list[int] = []
    warmed = 0
    if not warmup:
        go.set()
    deadline = time.monotonic() + seconds * 10 + WARMUP_WAIT_S + 120
    while len(latencies) < total and time.monotonic() < deadline:
        for message in ready_messages(consumer):
            if message.error() is None:
                produced_ms = json.loads(message.value()).get("produced_ms")
                if produced_ms is None:
                    warmed += 1
                    if warmed >= warmup:
                        go.set()
                else:
                    latencies.append(time.time_ns() // 1_000_000 - produced_ms)
    outcome = [results.get(timeout=60) for _ in range(2 if warmup else 1)]
    producer.join(30)
    consumer.close()
    if "no go" in outcome:
        print("baseline: the warm-up was not consumed in time", flush=True)
    return np.asarray(latencies)


def verdicts_with_append_time(config: FraudkitConfig) -> None:
    """Create the verdicts topic as ensure_topics would, but stamped by the broker (LogAppendTime):
    each verdict's timestamp is then the moment the broker wrote it, just before acknowledging it."""
    from confluent_kafka.admin import NewTopic

    topics = config.topics
    settings = {**kafka._topic_settings(config, topics.verdicts), "message.timestamp.type": "LogAppendTime"}
    new = NewTopic(topics.verdicts, topics.partitions, topics.replication_factor, config=settings)
    admin = kafka.make_admin(config)
    for future in admin.create_topics([new], request_timeout=30).values():
        try:
            future.result(timeout=30)
        except kafka.KafkaException as exc:  # an engine without LogAppendTime: ensure_topics creates it
            print(
                f"verdicts topic with LogAppendTime refused ({exc.args[0].str()}); created plainly",
                flush=True,
            )


class VerdictReader:
    """A client of the verdicts (a group of its own, from the start): counts the warm-up's verdicts and
    times the measured ones, produced_ms -> read here (what a client waiting for its verdict sees)."""

    def __init__(self, config: FraudkitConfig) -> None:
        self.consumer = kafka.make_consumer(config, f"{config.detect.group_id}-verdict-reader")
        self.consumer.subscribe([config.topics.verdicts])
        self.warm = 0
        self.latencies: list[int] = []
        self.appended: list[int] = []  # produced_ms -> the broker's LogAppendTime of the verdict

    def read_until(self, done: Callable[[], bool], deadline: float) -> bool:
        """Read until done() or the deadline (monotonic); returns done()."""
        consumer = self.consumer
        while not done() and time.monotonic() < deadline:
            for message in ready_messages(consumer):
                if message.error() is not None or message.headers():
                    continue  # the partitions' warm-up records carry a header
                produced_ms = json.loads(message.value()).get("produced_ms")
                if produced_ms is None:
                    self.warm += 1
                else:
                    self.latencies.append(time.time_ns() // 1_000_000 - produced_ms)
                    kind, stamp = message.timestamp()
                    if kind == TIMESTAMP_LOG_APPEND_TIME:
                        self.appended.append(stamp - produced_ms)
        return done()

    def close(self) -> None:
        self.consumer.close()


def latency(
    bootstrap: str, workdir: Path, rate: float, seconds: float, overrides: dict[str, Any], warmup: int
) -> None:
    config = bench_config(bootstrap, workdir, **overrides)
    partitions = config.topics.transactions_partitions
    if warmup:
        print(
            f"warm-up: {warmup:,} transactions without produced_ms through each pipe before its "
            "measured stream (the broker's first writes to fresh partitions stall; --warmup 0 measures "
            "them too)",
            flush=True,
        )
    floor = bare_pipe(bench_config(bootstrap, workdir, **overrides), rate, seconds, warmup)
    if floor.size:
        p50, p99 = np.percentile(floor, [50, 99])
        print(
            f"baseline, the broker alone ({partitions} partition(s), same producer, a plain consumer, "
            f"no detector): produced -> consumed p50 {p50:.0f} ms, p99 {p99:.0f} ms ({floor.size:,} messages)",
            flush=True,
        )
    total = int(rate * seconds)
    publish_mlp(config, simulated_transactions(total + WARMUP, seed=LATENCY_SEED))
    verdicts_with_append_time(config)
    kafka.ensure_topics(config)
    if warmup:
        # The warm-up transactions reach every partition of the verdicts and legit topics, but the
        # fraud branch gets ~1% of them and the dead-letter topic none. The changelog is left
        # alone: the detector restores state from it.
        topics = config.topics
        warm_partitions(config, [topics.legit, topics.fraud, topics.verdicts, topics.dead_letter])
    config_path = workdir / "latency.yaml"
    config_path.write_text(json.dumps(config.model_dump(mode="json")))
    env = {**os.environ, "FRAUDKIT_CONFIG": str(config_path)}
    detector = subprocess.Popen(
        [sys.executable, "-m", "fraudkit", "detect", "--json", "--quiet", "--until-idle", "10"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        text=True,
    )
    log = DetectorLog(detector)
    # Produce only once the detector has joined its group and owns the partitions.
    if not log.wait_for_partitions():
        return
    time.sleep(1)
    print(
        f"producing {total:,} transactions at {rate:,.0f}/s to {config.topics.transactions_partitions} "
        f"partitions (producer linger.ms {kafka.producer_settings(config).get('linger.ms')}, detector "
        f"fetch.wait.max.ms {kafka.consumer_settings(config, config.detect.group_id).get('fetch.wait.max.ms')}) ...",
        flush=True,
    )
    # The producer gets a process of its own, as `fraudkit generate` would be.
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    go = context.Event()
    producer = context.Process(
        target=paced_producer, args=(config, total, LATENCY_SEED, rate, results, warmup, go)
    )
    reader = VerdictReader(config)
    producer.start()
    if warmup:
        if not reader.read_until(lambda: reader.warm >= warmup, time.monotonic() + WARMUP_WAIT_S / 2):
            print(f"detector: only {reader.warm:,} of the warm-up's verdicts came in time")
        results.get(timeout=60)  # "warm": the producer's warm-up was flushed
    go.set()
    reader.read_until(lambda: len(reader.latencies) >= total, time.monotonic() + seconds * 10 + 120)
    reader.close()
    achieved = results.get(timeout=120)
    if achieved == "no go":
        print("detector: the producer gave up waiting after its warm-up")
        achieved = 0.0
    producer.join(30)
    assert detector.stdout is not None
    out = detector.stdout.read()  # one JSON line, printed when --until-idle stops it
    detector.wait(120)
    if detector.returncode != 0:
        print(f"detector failed ({detector.returncode}):", *log.lines[-10:], sep="\n  ")
        return
    summary = json.loads(out.strip().splitlines()[-1])
    print(
        f"achieved rate {achieved:,.0f} tx/s; detector consumed {summary['consumed']:,}, "
        f"verdicts {summary['verdicts']:,} (warm-up included; its {warmup:,} count in no latency)",
        flush=True,
    )
    delivered = summary["latency_ms"]
    print(
        f"detector, {partitions} partition(s): latency produced -> verdict delivered (acknowledged by the "
        f"broker), the measured verdicts: p50 {delivered['p50']} ms, p95 {delivered['p95']} ms, "
        f"p99 {delivered['p99']} ms, max {delivered['max']} ms"
    )
    floor_p99 = max(float(np.percentile(floor, 99)), 1.0) if floor.size else None
    if floor_p99 is not None and delivered["p99"] is not None:
        print(f"  p99 over the broker-alone p99: {delivered['p99'] / floor_p99:.2f}x (target <= 2x)")
    for what, values in (
        ("written by the broker (its LogAppendTime; the acknowledgement follows)", reader.appended),
        ("read back by a client (the verdicts topic, a plain consumer as the baseline's)", reader.latencies),
    ):
        print_percentiles(
            f"detector, {partitions} partition(s): produced -> verdict {what}", values, floor_p99
        )
    windows = [line for line in log.lines if "consumed=" in line and "rate=0/s" not in line]
    print("detector status lines (p99 over the interval since the previous line):", *windows, sep="\n  ")


def print_percentiles(label: str, values: list[int], floor_p99: float | None) -> None:
    """p50/p95/p99/max of latencies in ms, and the p99 over the broker-alone p99 (nothing without values)."""
    if not values:
        return
    array = np.asarray(values)
    p50, p95, p99 = np.percentile(array, [50, 95, 99])
    print(
        f"{label}, {array.size:,} verdicts: p50 {p50:.0f} ms, p95 {p95:.0f} ms, p99 {p99:.0f} ms, "
        f"max {array.max():.0f} ms"
    )
    if floor_p99 is not None:
        print(f"  p99 over the broker-alone p99: {p99 / floor_p99:.2f}x (target <= 2x)")


def latency_runs(bootstrap: str, workdir: Path, args: argparse.Namespace, overrides: dict[str, Any]) -> None:
    """One latency run per --latency-partitions count."""
    for count in args.latency_partitions.split(","):
        overrides_for_count = {"topics.transactions_partitions": int(count), **overrides}
        latency(bootstrap, workdir, args.rate, args.latency_seconds, overrides_for_count, args.warmup)


def memory_per_card(customers: int, days: int) -> None:
    """Bytes of feature state per card after `days` of simulated traffic (30 days fills every window)."""
    frame = simulate_dataset(SimulateConfig(customers=customers, terminals=customers * 2, days=days, seed=3))
    transactions = frame_to_transactions(frame)
    spec = FeatureSpec.from_config(load_config(None, {}, environ={}).features, SimulatorFields())
    gc.collect()
    tracemalloc.start()
    features = OnlineFeatures(spec)
    before = tracemalloc.get_traced_memory()[0]
    for start in range(0, len(transactions), 2000):
        features.transform(transactions[start : start + 2000])
    features.expire(transactions[-1].event_time_ms)
    gc.collect()
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    in_state = features.state_counts()["cards"]
    per_card = (after - before) / max(in_state, 1)
    print(
        f"memory: {days} days, {len(transactions):,} transactions, {in_state:,} cards in state "
        f"({len(transactions) / max(in_state, 1) / days:.1f} tx per card per day), "
        f"{(after - before) / 1e6:.1f} MB traced = {per_card:,.0f} bytes per active card "
        f"(OnlineFeatures.memory_bytes estimate: {features.memory_bytes() / max(in_state, 1):,.0f} B/card)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--transactions", type=int, default=300_000)
    parser.add_argument("--naive", type=int, default=3_000)
    parser.add_argument("--rate", type=float, default=5000.0)
    parser.add_argument("--latency-seconds", type=float, default=20.0)
    parser.add_argument(
        "--latency-partitions",
        default="1,6",
        help="transactions-topic partitions of the latency runs, comma-separated (default 1,6)",
    )
    parser.add_argument(
        "--warmup",
        type=int,
        default=60_000,
        help="latency runs: transactions sent (and answered) before each measured stream, without "
        "produced_ms (default 60000, 12 s at 5,000 tx/s; 0 = measure from the first write to the "
        "fresh topics)",
    )
    parser.add_argument("--memory-customers", type=int, default=5_000)
    parser.add_argument("--memory-days", type=int, default=35)
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--skip-latency", action="store_true")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument(
        "--profile",
        type=Path,
        default=None,
        help="write a pyinstrument profile of the throughput phase's detector pass to this file",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="config override for the latency phase, e.g. kafka.producer.linger.ms=10 (repeatable)",
    )
    add_engines_argument(parser)
    args = parser.parse_args()
    overrides: dict[str, Any] = {}
    for item in args.set:
        key, _, value = item.partition("=")
        overrides[key] = int(value) if value.lstrip("-").isdigit() else value
    print(f"cpus: {os.cpu_count()}, load average: {os.getloadavg()}")
    for engine in chosen_engines(args):
        with tempfile.TemporaryDirectory() as tmp, local_broker(engine) as handle:
            bootstrap = handle.bootstrap_servers
            workdir = Path(tmp)
            for skip, phase, run in (
                (
                    args.skip_throughput,
                    "throughput",
                    lambda bootstrap=bootstrap, workdir=workdir: throughput(
                        bootstrap,
                        workdir,
                        args.transactions,
                        args.naive,
                        args.profile,
                        lambda handle=handle: broker_cpu_seconds(handle),
                    ),
                ),
                (
                    args.skip_latency,
                    "latency",
                    lambda bootstrap=bootstrap, workdir=workdir: latency_runs(
                        bootstrap, workdir, args, overrides
                    ),
                ),
            ):
                if skip:
                    continue
                cpu_before, wall_before = broker_cpu_seconds(handle), time.perf_counter()
                run()
                cpu_after = broker_cpu_seconds(handle)
                if cpu_before is not None and cpu_after is not None:
                    share = (cpu_after - cpu_before) / (time.perf_counter() - wall_before)
                    print(f"{engine} broker during the {phase} phase: {share:.0%} of one core")
    if not args.skip_memory:
        memory_per_card(args.memory_customers, args.memory_days)
    print(f"load average at the end: {os.getloadavg()}")


if __name__ == "__main__":
    main()
