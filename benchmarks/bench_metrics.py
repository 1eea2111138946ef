"""Detector throughput with metrics, probes and drift on vs off, in the same run.

Run: .venv/bin/python benchmarks/bench_metrics.py [--transactions 100000] [--rounds 2]

Starts its own Apache Kafka broker, pre-loads --transactions simulated transactions once, then runs
the detector over all of them (a fresh consumer group each time) alternately without telemetry
and with it: `DetectTelemetry` (score histogram, drift window over every feature and the score,
against a drift reference in the model's manifest), the HTTP server, and a scraper reading
/metrics every second. Prints each run and the cost of the best "on" against the best "off".
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import urllib.request
import uuid
from pathlib import Path

from _engines import local_broker
from bench_detect import bench_config, preload, publish_mlp, simulated_transactions

from fraudkit.config import FraudkitConfig
from fraudkit.detect import run_detect
from fraudkit.observability.detect_telemetry import DetectTelemetry
from fraudkit.observability.server import ObservabilityServer
from fraudkit.schema import Transaction
from fraudkit.stream import kafka
from fraudkit.stream.broker import free_port


def publish_mlp_with_reference(config: FraudkitConfig, sample: list[Transaction]) -> str:
    """bench_detect's random [64, 32] MLP, plus the drift reference of its own stream."""
    return publish_mlp(config, sample, trainer="bench_metrics", drift=True)


def one_run(config: FraudkitConfig, count: int, metrics: bool) -> float:
    config = config.model_copy(deep=True)
    config.detect.group_id = f"bench-metrics-{uuid.uuid4().hex[:8]}"
    if not metrics:
        summary = run_detect(config, max_transactions=count, until_idle_s=30)
        return summary.throughput_per_s
    telemetry = DetectTelemetry(config, "bench")
    server = ObservabilityServer(telemetry.registry, telemetry.health, "127.0.0.1", free_port())
    done = threading.Event()
    scrapes = [0]

    def scrape() -> None:
        while not done.wait(1.0):
            with urllib.request.urlopen(f"{server.url}/metrics", timeout=5) as response:
                response.read()
            scrapes[0] += 1

    scraper = threading.Thread(target=scrape, daemon=True)
    scraper.start()
    try:
        summary = run_detect(config, max_transactions=count, until_idle_s=30, telemetry=telemetry)
    finally:
        done.set()
        scraper.join(10)
        server.stop()
    drift = telemetry.drift_report
    print(f"    ({scrapes[0]} scrapes; drift window {drift.rows:,} rows, {len(drift.features)} features)")
    return summary.throughput_per_s


def hook_cost_per_batch(config: FraudkitConfig, transactions: list[Transaction], batch: int) -> float:
    """Seconds the telemetry's per-batch hooks take on one real batch (features, scores), best of 50."""
    import time

    from fraudkit.detect import load_holder

    holder = load_holder(config, "current")
    telemetry = DetectTelemetry(config, "hooks")
    features = holder.features.transform(transactions[:batch])
    scores = holder.model.score(features)
    telemetry._holder = holder
    best = float("inf")
    for _ in range(50):
        started = time.perf_counter()
        telemetry.between_batches()
        telemetry.on_batch_scored(features, transactions[:batch], scores, holder.model.version)
        telemetry.batch_processed(0.01, ())
        best = min(best, time.perf_counter() - started)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--transactions", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, local_broker("kafka") as handle:
        config = bench_config(handle.bootstrap_servers, Path(tmp))
        transactions = simulated_transactions(args.transactions)
        version = publish_mlp_with_reference(config, transactions)
        kafka.ensure_topics(config)
        preload(config, transactions)
        print(f"pre-loaded {len(transactions):,} transactions; model {version} (with a drift reference)")
        results: dict[bool, list[float]] = {False: [], True: []}
        for round_number in range(args.rounds):
            for metrics in (False, True):
                rate = one_run(config, len(transactions), metrics)
                results[metrics].append(rate)
                label = "on " if metrics else "off"
                print(f"round {round_number + 1}, metrics {label}: {rate:,.0f} tx/s", flush=True)
        best_off, best_on = max(results[False]), max(results[True])
        hooks = hook_cost_per_batch(config, transactions, config.detect.batch_size)
        batch_s = config.detect.batch_size / best_off
        print(
            f"telemetry hooks per {config.detect.batch_size}-row batch: {hooks * 1000:.3f} ms against "
            f"{batch_s * 1000:.1f} ms per batch at the best 'off' rate = {100.0 * hooks / batch_s:.2f}% "
            "(the end-to-end comparison that follows is noisier than that on a shared machine)"
        )
        print(
            f"best off {best_off:,.0f} tx/s, best on {best_on:,.0f} tx/s: "
            f"metrics cost {100.0 * (best_off - best_on) / best_off:+.1f}% of throughput"
        )


if __name__ == "__main__":
    main()
