"""Throughput and memory of OnlineFeatures on a realistic synthetic stream.

Run: .venv/bin/python benchmarks/bench_features.py [--cards 5000 --days 40 --per-day 2 --batch 1000]

Prints transactions/s of ``transform`` (labels excluded), labels/s of ``observe_label`` (one call
per label, as the detector does), all together, a baseline loop that only touches each
transaction (same run, for the ratio) and the memory the state holds per active card
(tracemalloc, in a separate pass). Times are CPU seconds of this process (``process_time``), the
best of ``--repeat`` runs, which keeps other processes' load out of the figures as far as possible.
"""

from __future__ import annotations

import argparse
import gc
import math
import time
import tracemalloc
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from fraudkit.config import FeaturesConfig
from fraudkit.features import FeatureSpec, OnlineFeatures
from fraudkit.schema import Label, Transaction

START_MS = 1_735_689_600_000  # 2025-01-01
DAY_MS = 86_400_000
COUNTRIES = ["FR", "DE", "ES", "IT", "GB", "US", "NL", "BE", "PT", "PL"]


@dataclass
class FullMapping:
    has_card: bool = True
    has_terminal: bool = True
    has_location: bool = True
    has_country: bool = True
    has_merchant: bool = True
    passthrough: list[str] = field(default_factory=list)


def synthetic_stream(
    cards: int, terminals: int, days: int, per_day: float, seed: int
) -> dict[str, np.ndarray]:
    """Columns of a time-ordered stream: each card shops near home at a few terminals, rarely abroad."""
    rng = np.random.default_rng(seed)
    n = int(cards * days * per_day)
    card = rng.integers(0, cards, n)
    times = np.sort(rng.integers(START_MS, START_MS + days * DAY_MS, n))
    home = rng.integers(0, len(COUNTRIES), cards)
    abroad = rng.random(n) < 0.02
    country = np.where(abroad, rng.integers(0, len(COUNTRIES), n), home[card])
    # Each card favours ~10 terminals; terminal ids are spread so terminals see many cards.
    terminal = (card * 7919 + rng.integers(0, 10, n) * 104_729) % terminals
    home_lat = rng.uniform(36, 60, cards)
    home_lon = rng.uniform(-9, 25, cards)
    lat = home_lat[card] + rng.normal(0, 0.2, n) + abroad * rng.normal(0, 8, n)
    lon = home_lon[card] + rng.normal(0, 0.2, n) + abroad * rng.normal(0, 8, n)
    amount = np.round(rng.lognormal(3.5, 1.0, n), 2)
    label = (rng.random(n) < 0.01).astype(np.int64)
    return {
        "card": card,
        "time": times,
        "country": country,
        "terminal": terminal,
        "lat": np.clip(lat, -90, 90),
        "lon": np.clip(lon, -180, 180),
        "amount": amount,
        "label": label,
    }


def batches(stream: dict[str, np.ndarray], size: int) -> Iterator[tuple[list[Transaction], list[Label]]]:
    """Transaction batches as a decoder would build them, with the labels of that batch's rows."""
    card = [f"card-{c}" for c in stream["card"].tolist()]
    terminal = [f"term-{t}" for t in stream["terminal"].tolist()]
    country = [COUNTRIES[c] for c in stream["country"].tolist()]
    times = stream["time"].tolist()
    amount = stream["amount"].tolist()
    lat = stream["lat"].tolist()
    lon = stream["lon"].tolist()
    label = stream["label"].tolist()
    for start in range(0, len(times), size):
        rows = range(start, min(start + size, len(times)))
        txs = [
            Transaction(
                transaction_id=f"tx-{i}",
                event_time_ms=times[i],
                card_id=card[i],
                amount=amount[i],
                terminal_id=terminal[i],
                country=country[i],
                lat=lat[i],
                lon=lon[i],
            )
            for i in rows
        ]
        labels = [
            Label(transaction_id=f"tx-{i}", event_time_ms=times[i], label=label[i], terminal_id=terminal[i])
            for i in rows
        ]
        yield txs, labels


def run(
    spec: FeatureSpec, prepared: list[tuple[list[Transaction], list[Label]]], expire_every: int
) -> dict[str, float]:
    """Feed batches in order; labels are released once event time passes event_time + label_delay."""
    online = OnlineFeatures(spec)
    pending: list[Label] = []
    transform_s = label_s = expire_s = 0.0
    rows = labels_seen = 0
    for number, (txs, labels) in enumerate(prepared):
        now = txs[0].event_time_ms
        release = [label for label in pending if label.event_time_ms + spec.label_delay_ms <= now]
        if release:
            pending = [label for label in pending if label.event_time_ms + spec.label_delay_ms > now]
            started = time.process_time()
            for label in release:
                online.observe_label(label)
            label_s += time.process_time() - started
            labels_seen += len(release)
        started = time.process_time()
        online.transform(txs)
        transform_s += time.process_time() - started
        rows += len(txs)
        pending += labels
        if expire_every and number % expire_every == 0:
            started = time.process_time()
            online.expire(txs[-1].event_time_ms)
            expire_s += time.process_time() - started
    return {
        "rows": rows,
        "labels": labels_seen,
        "transform_s": transform_s,
        "label_s": label_s,
        "expire_s": expire_s,
        "cards": online.state_counts()["cards"],
        "estimate_bytes": online.memory_bytes(),
    }


def baseline(prepared: list[tuple[list[Transaction], list[Label]]]) -> float:
    """Seconds for a loop that reads each transaction and emits two floats (the floor of any transform)."""
    started = time.process_time()
    for txs, _ in prepared:
        values: list[float] = []
        out = values.append
        for tx in txs:
            out(tx.amount)
            out(math.log1p(tx.amount))
        np.array(values, dtype=np.float32)
    return time.process_time() - started


def memory_per_card(spec: FeatureSpec, stream: dict[str, np.ndarray], batch: int) -> tuple[float, int]:
    """Traced bytes the state holds per active card after the whole stream (batches built inside the trace)."""
    gc.collect()
    tracemalloc.start()
    online = OnlineFeatures(spec)
    before = tracemalloc.get_traced_memory()[0]
    last = 0
    for txs, labels in batches(stream, batch):
        online.transform(txs)
        for label in labels:
            online.observe_label(label)
        last = txs[-1].event_time_ms
        del txs, labels
    online.expire(last)
    gc.collect()
    held = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    cards = online.state_counts()["cards"]
    return held / max(cards, 1), cards


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cards", type=int, default=5000)
    parser.add_argument("--terminals", type=int, default=2000)
    parser.add_argument("--days", type=int, default=40)
    parser.add_argument("--per-day", type=float, default=2.0, help="transactions per card per day")
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--expire-every", type=int, default=100, help="batches between expire() calls")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--repeat", type=int, default=3, help="runs; the fastest is reported")
    args = parser.parse_args()

    spec = FeatureSpec.from_config(FeaturesConfig(), FullMapping())
    stream = synthetic_stream(args.cards, args.terminals, args.days, args.per_day, args.seed)
    prepared = list(batches(stream, args.batch))
    print(
        f"{len(stream['time']):,} transactions, {args.cards:,} cards, {args.terminals:,} terminals, "
        f"{args.days} days, {len(spec.names)} features, batches of {args.batch}"
    )
    base_s = min(baseline(prepared) for _ in range(args.repeat))
    result = min(
        (run(spec, prepared, args.expire_every) for _ in range(args.repeat)), key=lambda r: r["transform_s"]
    )
    rows = result["rows"]
    tx_rate = rows / result["transform_s"]
    print(f"transform:        {tx_rate:>12,.0f} transactions/s  ({result['transform_s']:.2f} s)")
    print(
        f"observe_label:    {result['labels'] / result['label_s']:>12,.0f} labels/s        ({result['label_s']:.2f} s)"
    )
    both = result["transform_s"] + result["label_s"] + result["expire_s"]
    print(f"all together:     {rows / both:>12,.0f} transactions/s  (transform + labels + expire)")
    print(
        f"baseline loop:    {rows / base_s:>12,.0f} transactions/s  (transform costs {result['transform_s'] / base_s:.1f}x the baseline)"
    )
    per_card, cards = memory_per_card(spec, stream, args.batch)
    print(
        f"memory:           {per_card:>12,.0f} bytes per active card (tracemalloc, {cards:,} cards, terminal labels included)"
    )
    print(
        f"memory estimate:  {result['estimate_bytes'] / max(result['cards'], 1):>12,.0f} bytes per active card (OnlineFeatures.memory_bytes)"
    )


if __name__ == "__main__":
    main()
