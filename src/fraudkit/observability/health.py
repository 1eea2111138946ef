"""Liveness and readiness of a long-running command, read by /healthz and /readyz."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from typing import Any


class Health:
    """A loop's heartbeat and its readiness conditions (thread-safe: the loop writes, the server reads).

    Live: the loop turned within `stall_after_s` (before the loop's first turn, starting counts as
    alive: the wait for the broker has its own deadline). Ready: every required condition is met.
    """

    def __init__(
        self,
        stall_after_s: float,
        conditions: Iterable[str] = (),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stall_after_s = stall_after_s
        self.clock = clock
        self.started = clock()
        self.last_tick: float | None = None
        self._conditions = dict.fromkeys(conditions, False)
        self._lock = threading.Lock()

    def tick(self, now: float | None = None) -> None:
        """The loop turned (one attribute store: cheap enough for every iteration)."""
        self.last_tick = self.clock() if now is None else now

    def require(self, *names: str) -> None:
        """Add conditions that must be met before the process is ready."""
        with self._lock:
            for name in names:
                self._conditions.setdefault(name, False)

    def set(self, name: str, met: bool = True) -> None:
        """Mark a condition met (or not)."""
        with self._lock:
            self._conditions[name] = met

    def live(self) -> tuple[bool, dict[str, Any]]:
        """Whether the loop is turning, with the seconds since it last did."""
        now = self.clock()
        if self.last_tick is None:
            return True, {"status": "starting", "seconds_since_start": round(now - self.started, 3)}
        since = now - self.last_tick
        ok = since <= self.stall_after_s
        return ok, {
            "status": "ok" if ok else "stalled",
            "seconds_since_last_tick": round(since, 3),
            "stall_after_s": self.stall_after_s,
        }

    def ready(self) -> tuple[bool, dict[str, Any]]:
        """Whether every condition is met, with each condition's state."""
        with self._lock:
            conditions = dict(self._conditions)
        live, _ = self.live()
        ok = live and all(conditions.values())
        return ok, {"status": "ready" if ok else "not ready", "live": live, "conditions": conditions}
