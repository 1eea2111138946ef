"""Detector throughput with metrics, probes and drift on vs off, in the same run.

Run: .venv/bin/python benchmarks/bench_metrics.py [--transactions 100000] [--rounds 2]

Starts its own Apache Kafka broker, pre-loads --transactions simulated transactions once, then runs
the detector over all of them (a fresh consumer group each time) alternately without telemetry
and with it: `DetectTelemetry` (score histogram, drift window over every feature and the score,
against a drift reference in the model's manifest), the HTTP server, and a scraper reading
/metrics every --scrape-interval seconds (1 s by default, 15x Prometheus' usual 15 s). The scraper
is a separate process, as Prometheus is: only serving the scrape is the detector's work. Prints
each run, then the cost three ways:
- the per-batch hooks, timed directly on one real batch;
- the periodic work (one /metrics exposition per scrape, one drift check per status interval), timed
  directly on the telemetry of the last "on" run;
- end to end: the median over rounds of each round's on/off throughput ratio, and the process's
  CPU seconds per transaction (all its threads; the broker is another process), on against off.
  Wall-clock throughput on a shared 2-core machine swings by 10-20% from run to run, so a single
  best-against-best figure says little; CPU per transaction is the steadier of the two.
"""

from __future__ import annotations

import argparse
import inspect
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _engines import local_broker
from bench_detect import bench_config, preload, publish_mlp, simulated_transactions

from fraudkit.config import FraudkitConfig
from fraudkit.detect import run_detect
from fraudkit.observability.detect_telemetry import DetectTelemetry
from fraudkit.observability.server import ObservabilityServer
from fraudkit.schema import Transaction
from fraudkit.stream import kafka
from fraudkit.stream.broker import free_port

# The scraper process: GET url every interval seconds until stdin closes, then print how many.
SCRAPER = """
import select, sys, urllib.request
url, interval = sys.argv[1], float(sys.argv[2])
scrapes = 0
while not select.select([sys.stdin], [], [], interval)[0]:
    with urllib.request.urlopen(url, timeout=5) as response:
        response.read()
    scrapes += 1
print(scrapes)
"""


def publish_mlp_with_reference(config: FraudkitConfig, sample: list[Transaction]) -> str:
    """bench_detect's random [64, 32] MLP, plus the drift reference of its own stream."""
    return publish_mlp(config, sample, trainer="bench_metrics", drift=True)


@dataclass
class RunResult:
    throughput_per_s: float
    cpu_us_per_tx: float
    telemetry: DetectTelemetry | None = None


def one_run(config: FraudkitConfig, count: int, metrics: bool, scrape_interval_s: float) -> RunResult:
    config = config.model_copy(deep=True)
    config.detect.group_id = f"bench-metrics-{uuid.uuid4().hex[:8]}"
    if not metrics:
        cpu_started = time.process_time()
        summary = run_detect(config, max_transactions=count, until_idle_s=30)
        cpu_s = time.process_time() - cpu_started
        return RunResult(summary.throughput_per_s, 1e6 * cpu_s / max(1, summary.consumed))
    telemetry = DetectTelemetry(config, "bench")
    server = ObservabilityServer(telemetry.registry, telemetry.health, "127.0.0.1", free_port())
    scraper = subprocess.Popen(
        [sys.executable, "-c", SCRAPER, f"{server.url}/metrics", str(scrape_interval_s)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    cpu_started = time.process_time()
    try:
        summary = run_detect(config, max_transactions=count, until_idle_s=30, telemetry=telemetry)
        cpu_s = time.process_time() - cpu_started
    finally:
        try:
            scrapes, _ = scraper.communicate("", timeout=10)  # closing its stdin stops it
        except subprocess.TimeoutExpired:
            scraper.kill()
            scrapes, _ = scraper.communicate()
        server.stop()
    drift = telemetry.drift_report
    print(
        f"    ({scrapes.strip()} scrapes; drift window {drift.rows:,} rows, {len(drift.features)} features)"
    )
    return RunResult(summary.throughput_per_s, 1e6 * cpu_s / max(1, summary.consumed), telemetry)


def periodic_cost_s(telemetry: DetectTelemetry) -> tuple[float, float]:
    """Seconds one /metrics exposition and one drift check take (median of 30), on the loop's real figures."""
    from prometheus_client import generate_latest

    def median_of(work: Any) -> float:
        times = []
        for _ in range(30):
            started = time.perf_counter()
            work()
            times.append(time.perf_counter() - started)
        return statistics.median(times)

    return median_of(lambda: generate_latest(telemetry.registry)), median_of(telemetry.drift_check)


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
    parser.add_argument("--scrape-interval", type=float, default=1.0, help="seconds between scrapes")
    args = parser.parse_args()
    scrape_interval_s = args.scrape_interval
    with tempfile.TemporaryDirectory() as tmp, local_broker("kafka") as handle:
        config = bench_config(handle.bootstrap_servers, Path(tmp))
        transactions = simulated_transactions(args.transactions)
        version = publish_mlp_with_reference(config, transactions)
        kafka.ensure_topics(config)
        preload(config, transactions)
        print(f"pre-loaded {len(transactions):,} transactions; model {version} (with a drift reference)")
        results: dict[bool, list[RunResult]] = {False: [], True: []}
        for round_number in range(args.rounds):
            # Alternate which goes first, so that a trend in the machine's speed favours neither.
            order = (False, True) if round_number % 2 == 0 else (True, False)
            for metrics in order:
                result = one_run(config, len(transactions), metrics, scrape_interval_s)
                if metrics and results[True]:
                    results[True][-1].telemetry = None  # only the last run's is timed: free the rest
                results[metrics].append(result)
                label = "on " if metrics else "off"
                print(
                    f"round {round_number + 1}, metrics {label}: {result.throughput_per_s:,.0f} tx/s, "
                    f"{result.cpu_us_per_tx:.1f} CPU µs/tx",
                    flush=True,
                )
        off, on = results[False], results[True]
        best_off = max(r.throughput_per_s for r in off)
        hooks = hook_cost_per_batch(config, transactions, config.detect.batch_size)
        batch_s = config.detect.batch_size / best_off
        print(
            f"telemetry hooks per {config.detect.batch_size}-row batch: {hooks * 1000:.3f} ms against "
            f"{batch_s * 1000:.1f} ms per batch at the best 'off' rate = {100.0 * hooks / batch_s:.2f}%"
        )
        last_telemetry = on[-1].telemetry
        assert last_telemetry is not None
        scrape_s, drift_s = periodic_cost_s(last_telemetry)
        status_interval_s = inspect.signature(run_detect).parameters["status_interval_s"].default
        periodic = scrape_s / scrape_interval_s + drift_s / status_interval_s
        print(
            f"periodic work: one scrape {scrape_s * 1000:.2f} ms every {scrape_interval_s:g} s, one drift "
            f"check {drift_s * 1000:.2f} ms every {status_interval_s:g} s = {100.0 * periodic:.2f}% of a core"
        )
        ratios = [b.throughput_per_s / a.throughput_per_s for a, b in zip(off, on, strict=True)]
        cpu_off = statistics.median(r.cpu_us_per_tx for r in off)
        cpu_on = statistics.median(r.cpu_us_per_tx for r in on)
        print(
            f"end to end: median on/off throughput ratio over {len(ratios)} rounds "
            f"{statistics.median(ratios):.3f} (cost {100.0 * (1 - statistics.median(ratios)):+.1f}%; "
            f"rounds {', '.join(f'{r:.3f}' for r in ratios)})"
        )
        print(
            f"end to end: median CPU per transaction off {cpu_off:.1f} µs, on {cpu_on:.1f} µs: "
            f"metrics cost {100.0 * (cpu_on - cpu_off) / cpu_off:+.1f}% of the detector's CPU"
        )


if __name__ == "__main__":
    main()
