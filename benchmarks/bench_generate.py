"""Achieved vs target rate of `fraudkit generate`, and its maximum rate with no limit.

Run: .venv/bin/python benchmarks/bench_generate.py [--seconds 3] [--rates 100 1000 5000 20000]
     [--max-count 300000] [--source memory|simulator]

Starts its own broker per engine (--engines, default kafka,tansu). Each paced run lasts --seconds
(duration-bounded, labels with the default 7-day event-time delay, verdict read-back only with
--verdicts) and
prints achieved/target. The unlimited run sends --max-count transactions as fast as possible.
`memory` cycles pre-built canonical frames so only encoding and producing are measured;
`simulator` uses fraudkit.data.simulate's endless stream (when that module is installed).

Baseline, the broker alone, on the same broker in the same run: the same --max-count transactions,
encoded as `generate` encodes them before the clock starts, handed by a bare confluent-kafka
producer (the project's producer settings) to a fresh topic as fast as it takes them. The ratio
generate / bare producer is printed twice: counting until the last message is handed to the
client, and until the final flush has every message acknowledged.
"""

from __future__ import annotations

import argparse
import itertools
import time
import uuid
from collections.abc import Iterator

import numpy as np
import orjson
import pandas as pd
from _engines import add_engines_argument, chosen_engines, local_broker

from fraudkit.config import FraudkitConfig, load_config
from fraudkit.generate import chunk_from_frame, open_source, run_generate, transaction_message
from fraudkit.stream import kafka

START_MS = 1_767_225_600_000  # 2026-01-01
DAY_MS = 86_400_000


def memory_frames(rows: int = 50_000, seed: int = 1) -> Iterator[pd.DataFrame]:
    """Pre-built days of canonical transactions, replayed with shifted ids and times forever."""
    rng = np.random.default_rng(seed)
    base = pd.DataFrame(
        {
            "event_time_ms": np.sort(rng.integers(0, DAY_MS, rows)),
            "card_id": [f"card{c}" for c in rng.integers(0, 5000, rows)],
            "customer_id": [f"cust{c}" for c in rng.integers(0, 5000, rows)],
            "terminal_id": [f"term{t}" for t in rng.integers(0, 10000, rows)],
            "amount": np.round(rng.lognormal(3.5, 1.0, rows), 2),
            "currency": "EUR",
            "merchant_category": "5411",
            "country": "FR",
            "lat": rng.uniform(40, 50, rows),
            "lon": rng.uniform(0, 10, rows),
            "label": (rng.random(rows) < 0.01).astype(np.int64),
            "fraud_scenario": "",
        }
    )
    for day in itertools.count():
        frame = base.copy()
        frame["event_time_ms"] += START_MS + day * DAY_MS
        frame.insert(0, "transaction_id", [f"d{day}-{i}" for i in range(rows)])
        yield frame


def bench_config(bootstrap: str, tag: str, verdicts: bool) -> FraudkitConfig:
    suffix = f"{tag}-{uuid.uuid4().hex[:8]}"
    return load_config(
        None,
        {
            "kafka.common.bootstrap.servers": bootstrap,
            "topics.transactions": f"bench-tx-{suffix}",
            "topics.labels": f"bench-labels-{suffix}",
            "topics.verdicts": f"bench-verdicts-{suffix}",
            "generate.read_verdicts": verdicts,
            "generate.verdict_wait_s": 0.0,
        },
        environ={},
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rates", type=float, nargs="+", default=[100.0, 1000.0, 5000.0, 20000.0])
    parser.add_argument("--max-count", type=int, default=300_000)
    parser.add_argument("--source", choices=["memory", "simulator"], default="memory")
    parser.add_argument("--verdicts", action="store_true", help="Also run the (idle) verdict read-back.")
    add_engines_argument(parser)
    args = parser.parse_args()

    for engine in chosen_engines(args):
        with local_broker(engine) as handle:
            run_rates(handle.bootstrap_servers, args)


def run_rates(bootstrap: str, args: argparse.Namespace) -> None:
    """Every paced rate, then the unlimited run, on one broker."""
    print(f"broker at {bootstrap}; source: {args.source}")
    print(f"{'target/s':>10} {'achieved/s':>11} {'ratio':>7} {'sent':>9} {'seconds':>8}")
    for rate in args.rates:
        config = bench_config(bootstrap, f"r{int(rate)}", args.verdicts)
        config.generate.rate = rate
        config.generate.duration_s = args.seconds
        source = memory_frames() if args.source == "memory" else None
        summary = run_generate(config, source=source)
        print(
            f"{rate:>10,.0f} {summary.rate_per_s:>11,.0f} {summary.rate_per_s / rate:>7.3f} "
            f"{summary.sent:>9,} {summary.producing_s:>8.2f}"
        )
    config = bench_config(bootstrap, "max", args.verdicts)
    config.generate.rate = None
    config.generate.count = args.max_count
    source = memory_frames() if args.source == "memory" else None
    started = time.monotonic()
    summary = run_generate(config, source=source)
    total = time.monotonic() - started
    flushed = summary.sent / summary.duration_s
    print(
        f"{'no limit':>10} {summary.rate_per_s:>11,.0f} {'':>7} {summary.sent:>9,} "
        f"{summary.producing_s:>8.2f}  (incl. final flush: {flushed:,.0f}/s; "
        f"incl. start-up too: {summary.sent / total:,.0f}/s)"
    )
    if summary.labels_sent:
        print(f"(generate also sent {summary.labels_sent:,} labels; the bare producer sends none)")
    bare, bare_flushed, sent = bare_producer(bench_config(bootstrap, "bare", False), args)
    print(
        f"baseline, the broker alone: a bare producer sent the same {sent:,} encoded transactions at "
        f"{bare:,.0f}/s ({bare_flushed:,.0f}/s incl. its final flush)"
    )
    print(
        f"ratio generate / bare producer: {summary.rate_per_s / bare:.2f} handed over, "
        f"{flushed / bare_flushed:.2f} incl. the final flush"
    )


def encoded_transactions(config: FraudkitConfig, args: argparse.Namespace) -> list[tuple[bytes, str]]:
    """--max-count (value, key) pairs of the chosen source, encoded as `generate` encodes them."""
    frames = memory_frames() if args.source == "memory" else open_source(config)
    produced_ms = time.time_ns() // 1_000_000
    messages: list[tuple[bytes, str]] = []
    for frame in frames:
        chunk = chunk_from_frame(frame)
        for row in range(min(len(chunk), args.max_count - len(messages))):
            messages.append((orjson.dumps(transaction_message(chunk, row, produced_ms)), chunk.card_id[row]))
        if len(messages) >= args.max_count:
            break
    return messages


def bare_producer(config: FraudkitConfig, args: argparse.Namespace) -> tuple[float, float, int]:
    """Messages/s of a bare producer handed pre-encoded transactions: until handed over, incl. flush."""
    messages = encoded_transactions(config, args)
    topic = config.topics.transactions
    kafka.ensure_topics(config, [topic])
    producer = kafka.make_producer(config, delivery_report_only_error=True)
    tracker = kafka.DeliveryTracker()  # called for failures only, as generate's callback
    started = time.perf_counter()
    for value, key in messages:
        kafka.produce(producer, topic, value, key, on_delivery=tracker.callback)
    handed = time.perf_counter() - started
    kafka.flush(producer, 120)
    flushed = time.perf_counter() - started
    tracker.check()
    return len(messages) / handed, len(messages) / flushed, len(messages)


if __name__ == "__main__":
    main()
