"""Batch pacing on an absolute schedule: how many messages are due now, and how long to wait."""

from __future__ import annotations

import bisect
import math
import time
from collections.abc import Callable, Sequence
from typing import Protocol

Clock = Callable[[], float]

# Waits shorter than a millisecond only spin: librdkafka timeouts are whole milliseconds.
MIN_WAIT_S = 0.001
# Never wait longer than this in one go, so stop requests and verdicts are served promptly.
MAX_WAIT_S = 0.05


class Pacer(Protocol):
    """Decides how many of the next messages may be sent now."""

    def due(self, event_times: Sequence[int], start: int, limit: int) -> int:
        """How many messages from event_times[start:] are due now (at most limit)."""
        ...

    def record(self, sent: int) -> None:
        """Account for messages just sent."""
        ...

    def wait_s(self, event_times: Sequence[int], start: int) -> float:
        """Seconds until event_times[start] becomes due (0 if it is due already)."""
        ...


class UnlimitedPacer:
    """No limit: everything is due at once."""

    def due(self, event_times: Sequence[int], start: int, limit: int) -> int:
        """Everything left, up to limit."""
        return max(0, min(limit, len(event_times) - start))

    def record(self, sent: int) -> None:
        """Nothing to account for."""

    def wait_s(self, event_times: Sequence[int], start: int) -> float:
        """Never wait."""
        return 0.0


class RatePacer:
    """A fixed rate: message n (from 0) is due at start + n / rate, on an absolute schedule.

    The absolute schedule means short stalls are made up by a larger next batch, so the average
    rate stays exact; the debt is capped at `max_backlog_s` of messages so a long stall (a slow
    source, a suspended laptop) does not end in an unbounded burst.
    """

    def __init__(self, rate: float, clock: Clock = time.monotonic, max_backlog_s: float = 1.0) -> None:
        if rate <= 0 or not math.isfinite(rate):
            raise ValueError(f"rate must be a positive number, got {rate!r}")
        self.rate = rate
        self.clock = clock
        self.max_backlog = max(1, math.ceil(rate * max_backlog_s))
        self.started: float | None = None
        self.sent = 0

    def _allowed_total(self) -> int:
        now = self.clock()
        if self.started is None:
            self.started = now
        # The epsilon keeps float noise from holding back a message due exactly now.
        allowed = math.floor((now - self.started) * self.rate + 1e-6) + 1
        if allowed - self.sent > self.max_backlog:
            # Forgive the debt beyond the cap by moving the schedule's origin forward.
            self.started = now - (self.sent + self.max_backlog - 1) / self.rate
            allowed = self.sent + self.max_backlog
        return allowed

    def due(self, event_times: Sequence[int], start: int, limit: int) -> int:
        """Messages due by now that have not been sent, up to limit and what is left."""
        return max(0, min(limit, len(event_times) - start, self._allowed_total() - self.sent))

    def record(self, sent: int) -> None:
        """Count messages sent."""
        self.sent += sent

    def wait_s(self, event_times: Sequence[int], start: int) -> float:
        """Seconds until the next message is due."""
        if self.started is None:
            return 0.0
        next_due = self.started + self.sent / self.rate
        return max(0.0, next_due - self.clock())


class SpeedupPacer:
    """Replay in scaled event time: an event is due `speedup` times faster than it happened."""

    def __init__(self, speedup: float, clock: Clock = time.monotonic) -> None:
        if speedup <= 0 or not math.isfinite(speedup):
            raise ValueError(f"speedup must be a positive number, got {speedup!r}")
        self.speedup = speedup
        self.clock = clock
        self.started: float | None = None
        self.first_event_ms: int | None = None

    def _anchor(self, event_times: Sequence[int], start: int) -> None:
        if self.started is None and start < len(event_times):
            self.started = self.clock()
            self.first_event_ms = int(event_times[start])

    def _event_horizon_ms(self) -> float:
        assert self.started is not None and self.first_event_ms is not None
        return self.first_event_ms + (self.clock() - self.started) * 1000.0 * self.speedup

    def due(self, event_times: Sequence[int], start: int, limit: int) -> int:
        """Events whose scaled time has come, up to limit (event_times must be sorted)."""
        self._anchor(event_times, start)
        if self.started is None:
            return 0
        end = min(len(event_times), start + limit)
        return bisect.bisect_right(event_times, self._event_horizon_ms(), start, end) - start

    def record(self, sent: int) -> None:
        """Nothing to account for: the schedule follows the events themselves."""

    def wait_s(self, event_times: Sequence[int], start: int) -> float:
        """Wall seconds until event_times[start] is due."""
        self._anchor(event_times, start)
        if self.started is None:
            return 0.0
        ahead_ms = event_times[start] - self._event_horizon_ms()
        return max(0.0, ahead_ms / 1000.0 / self.speedup)


def make_pacer(rate: float | None, speedup: float | None, clock: Clock = time.monotonic) -> Pacer:
    """The pacer for a run: speedup (event-time replay) wins over a fixed rate; neither is unlimited."""
    if speedup is not None:
        return SpeedupPacer(speedup, clock)
    if rate is not None:
        return RatePacer(rate, clock)
    return UnlimitedPacer()


def bounded_wait(seconds: float) -> float:
    """A wait clamped to [MIN_WAIT_S, MAX_WAIT_S]."""
    return min(MAX_WAIT_S, max(MIN_WAIT_S, seconds))
