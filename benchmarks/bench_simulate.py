"""Speed of the simulator: about a million transactions, batch and stream, against a same-run baseline.

Run: .venv/bin/python benchmarks/bench_simulate.py [--customers 10000] [--terminals 20000] [--days 63]
     [--repeat 3] [--stream-days 30]

1. Batch: `simulate_dataset` of the given world (the defaults give ~1.0 million transactions),
   best of --repeat runs, then `write_dataset` to Parquet and CSV in a temporary folder.
2. Stream: the first --stream-days chunks of `stream_transactions` for the default world.
3. Baseline: building a frame of the same size and column types from plain random numbers and
   pre-made strings (no world, no scenarios); the ratio says what the simulation itself costs.
The issue's bar: 1 million transactions simulated in under a minute.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from fraudkit.config import SimulateConfig
from fraudkit.data.simulate import simulate_dataset, stream_transactions, write_dataset


def baseline_frame(rows: int) -> pd.DataFrame:
    """A frame shaped like the canonical one from random numbers: the floor of any generator."""
    import pyarrow as pa

    rng = np.random.default_rng(0)
    ids = pa.array([f"id-{i:07d}" for i in range(20_000)])
    pick = pa.array(rng.integers(0, 20_000, rows))
    table = pa.table(
        {
            "transaction_id": pa.array(np.arange(rows)).cast(pa.string()),
            "event_time_ms": np.sort(rng.integers(0, 86_400_000 * 63, rows)),
            "card_id": ids.take(pick),
            "customer_id": ids.take(pick),
            "terminal_id": ids.take(pick),
            "amount": rng.lognormal(3.5, 0.8, rows),
            "currency": ids.take(pick),
            "merchant_category": ids.take(pick),
            "country": ids.take(pick),
            "lat": rng.uniform(-90, 90, rows),
            "lon": rng.uniform(-180, 180, rows),
            "label": (rng.random(rows) < 0.004).astype(np.int64),
            "fraud_scenario": ids.take(pick),
        }
    )
    return table.to_pandas()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=10_000)
    parser.add_argument("--terminals", type=int, default=20_000)
    parser.add_argument("--days", type=int, default=63)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--stream-days", type=int, default=30)
    args = parser.parse_args()

    config = SimulateConfig(customers=args.customers, terminals=args.terminals, days=args.days)
    timings = []
    frame = pd.DataFrame()
    for _ in range(args.repeat):
        started = time.perf_counter()
        frame = simulate_dataset(config)
        timings.append(time.perf_counter() - started)
    best = min(timings)
    rows = len(frame)
    print(f"world: {args.customers:,} customers, {args.terminals:,} terminals, {args.days} days")
    print(f"batch: {rows:,} transactions ({frame['label'].sum():,} frauds, {frame['label'].mean():.3%})")
    print(f"  simulate: best {best:.2f} s of {args.repeat} -> {rows / best:,.0f} transactions/s")
    print(f"  per million transactions: {best / rows * 1e6:.2f} s (issue's bar: < 60 s)")

    with tempfile.TemporaryDirectory() as folder:
        for file_format in ("parquet", "csv"):
            started = time.perf_counter()
            path = write_dataset(frame, Path(folder) / f"tx.{file_format}", file_format)  # type: ignore[arg-type]
            elapsed = time.perf_counter() - started
            print(f"  write {file_format}: {elapsed:.2f} s, {path.stat().st_size / 1e6:.1f} MB")

    stream = stream_transactions(SimulateConfig())
    started = time.perf_counter()
    streamed = sum(len(next(stream)) for _ in range(args.stream_days))
    elapsed = time.perf_counter() - started
    print(
        f"stream (default world): {args.stream_days} days, {streamed:,} transactions in {elapsed:.2f} s "
        f"-> {streamed / elapsed:,.0f} transactions/s"
    )

    started = time.perf_counter()
    baseline_frame(rows)
    floor = time.perf_counter() - started
    print(
        f"baseline (random columns, same shape): {floor:.2f} s; simulation costs {best / floor:.1f}x the baseline"
    )


if __name__ == "__main__":
    main()
