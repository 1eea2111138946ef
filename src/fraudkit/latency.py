"""One latency histogram for the detector and the client (generate): exact 1-ms bins up to a minute,
three significant digits above it; constant memory, nearest-rank percentiles."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

EXACT_UP_TO_MS = 60_000


def _coarse_bucket(value_ms: int) -> int:
    """Three significant digits (a latency of a minute or more needs no finer bins)."""
    digits = int(math.log10(value_ms)) + 1
    step = 10 ** (digits - 3)
    return (value_ms // step) * step


class LatencyHistogram:
    """Percentiles of millisecond latencies: exact below `exact_up_to_ms`, three digits above."""

    def __init__(self, exact_up_to_ms: int = EXACT_UP_TO_MS) -> None:
        self.exact_up_to_ms = exact_up_to_ms
        self.counts = np.zeros(exact_up_to_ms + 1, dtype=np.int64)
        self.coarse: dict[int, int] = {}
        self.total = 0

    def add(self, latencies_ms: Sequence[int] | np.ndarray) -> None:
        """Count a batch of latencies (negative ones, from clock skew, count as 0)."""
        values = np.asarray(latencies_ms, dtype=np.int64)
        if values.size == 0:
            return
        np.clip(values, 0, None, out=values)
        high = values > self.exact_up_to_ms
        if high.any():
            for value in values[high].tolist():
                bucket = _coarse_bucket(int(value))
                self.coarse[bucket] = self.coarse.get(bucket, 0) + 1
            values = values[~high]
        if values.size:
            # bincount over the batch's range only: cheap for the narrow spread of one batch.
            low = int(values.min())
            binned = np.bincount(values - low)
            self.counts[low : low + binned.size] += binned
        self.total += int(np.asarray(latencies_ms).size)

    def record(self, value_ms: float) -> None:
        """Count one latency (rounded to the millisecond)."""
        self.add([round(value_ms)])

    def merge(self, other: LatencyHistogram) -> None:
        """Add another histogram's counts (same exact range)."""
        self.counts += other.counts
        for bucket, count in other.coarse.items():
            self.coarse[bucket] = self.coarse.get(bucket, 0) + count
        self.total += other.total

    def reset(self) -> None:
        """Forget everything (used for the panel's recent window)."""
        self.counts[:] = 0
        self.coarse.clear()
        self.total = 0

    def _at_rank(self, rank: int, cumulative: np.ndarray) -> float:
        exact = int(cumulative[-1])
        if rank <= exact:
            return float(np.searchsorted(cumulative, rank))
        seen = exact
        for bucket in sorted(self.coarse):
            seen += self.coarse[bucket]
            if seen >= rank:
                return float(bucket)
        return float(max(self.coarse))

    def percentile(self, q: float) -> float | None:
        """The q-th percentile (0-100) in ms: the smallest latency with at least q% at or below it."""
        if self.total == 0:
            return None
        return self._at_rank(max(1, math.ceil(self.total * q / 100.0)), np.cumsum(self.counts))

    def summary(self, with_max: bool = True) -> dict[str, float | None]:
        """p50, p95, p99 (and max) in ms, None without data."""
        names = ("p50", "p95", "p99", "max") if with_max else ("p50", "p95", "p99")
        if self.total == 0:
            return dict.fromkeys(names)
        cumulative = np.cumsum(self.counts)
        result: dict[str, float | None] = {}
        for name, q in (("p50", 50.0), ("p95", 95.0), ("p99", 99.0)):
            result[name] = self._at_rank(max(1, math.ceil(self.total * q / 100.0)), cumulative)
        if with_max:
            result["max"] = float(max(self.coarse)) if self.coarse else float(np.flatnonzero(self.counts)[-1])
        return result
