"""Keeping re-processed rows out of the windows after an at-least-once restart.

The changelog may hold state from batches whose offsets were never committed (the detector died
between producing and committing): the group re-delivers those rows. Each restored card in that
region carries the `(event_time_ms, transaction_id)` of the last row folded into it; a re-delivered
row at or before it is scored again (its verdict is a duplicate) but not counted a second time.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from fraudkit.features.online import OnlineFeatures
from fraudkit.schema import Transaction


class GuardedFeatures(OnlineFeatures):
    """OnlineFeatures with a replay guard: card id → the last applied (event time, transaction id).

    While the guard is empty (the normal case) `transform` is the plain one. A card leaves the guard
    at its first row past its key.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.replay_guard: dict[str | None, tuple[int, str]] = {}
        self.replayed_rows = 0
        # Stream time per assigned partition (Kafka Streams' per-task stream time): see expire.
        self.partition_times: dict[int, int] = {}
        self.assigned: set[int] = set()

    def expire(self, now_ms: int) -> None:
        """Expire by the slowest assigned partition's stream time, never by the detector's fastest.

        A detector that takes over a partition with a backlog scores rows days (of event time)
        behind its other partitions; expiring by its overall clock would drop card rows and
        terminal labels those rows still need, and their features would differ from an
        uninterrupted owner's. Holding expiry back to the slowest partition only keeps state longer.
        """
        super().expire(self._expiry_time(now_ms))

    def expire_step(self, now_ms: int, budget_s: float) -> bool:
        """`expire` in slices (the loop's way), by the same slowest-partition time."""
        return super().expire_step(self._expiry_time(now_ms), budget_s)

    def _expiry_time(self, now_ms: int) -> int:
        times = [self.partition_times[p] for p in self.assigned if p in self.partition_times]
        return min(now_ms, min(times)) if times else now_ms

    def transform(self, transactions: Sequence[Transaction], dtype: Any = np.float32) -> np.ndarray:
        guard = self.replay_guard
        if not guard:
            return super().transform(transactions, dtype)
        fresh: list[int] = []
        replayed: list[int] = []
        for index, tx in enumerate(transactions):
            key = guard.get(tx.card_id)
            if key is None:
                fresh.append(index)
            elif (tx.event_time_ms, tx.transaction_id) <= key:
                replayed.append(index)
            else:
                del guard[tx.card_id]
                fresh.append(index)
        if not replayed:
            return super().transform(transactions, dtype)
        self.replayed_rows += len(replayed)
        out = np.empty((len(transactions), self.width), dtype=dtype)
        if fresh:
            out[fresh] = super().transform([transactions[i] for i in fresh], dtype)
        # Scored against a copy of the state, which already holds the row: a duplicate verdict.
        rows = [transactions[i] for i in replayed]
        scratch = self.scratch_copy({tx.card_id for tx in rows})
        out[replayed] = scratch.transform(rows, dtype)
        return out

    def guard(self, entries: Iterable[tuple[str | None, tuple[int, str]]]) -> None:
        """Add restored cards whose last applied rows may be re-delivered."""
        self.replay_guard.update(entries)

    def drop_cards(self, card_ids: Iterable[str | None]) -> int:
        ids = list(card_ids)
        for card_id in ids:
            self.replay_guard.pop(card_id, None)
        return super().drop_cards(ids)
