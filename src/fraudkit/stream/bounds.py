"""When a streaming loop stops: one object for duration, message count, idleness and the first-assignment
grace, shared by detect, sink, generate and tail (cf. Quix Streams' runtracker).

Every loop reports why it stopped with one vocabulary, `StopReason`:
`stopped` (SIGINT/SIGTERM or a stop event), `duration`, `max_messages`, `idle` (nothing new for
`until_idle_s`), `end_of_source` (a finite input ran out) and `no_assignment` (never got a
partition while waiting for one).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

StopReason = Literal["stopped", "duration", "max_messages", "idle", "end_of_source", "no_assignment"]
STOP_REASONS: tuple[StopReason, ...] = (
    "stopped",
    "duration",
    "max_messages",
    "idle",
    "end_of_source",
    "no_assignment",
)

# --until-idle waits this much longer while the loop owns no partitions (joining, rebalancing),
# so a slow group join is not mistaken for an empty topic.
JOIN_GRACE_S = 10.0


@dataclass
class RunBounds:
    """The bounds of one run, checked between batches; `reached()` names the first one met.

    `count(n)` adds processed messages, `active()` marks activity (a message, an assignment),
    `assigned(bool)` says whether the loop owns partitions (the idle clock gets `join_grace_s`
    more while it does not).
    """

    duration_s: float | None = None
    max_messages: int | None = None
    until_idle_s: float | None = None
    join_grace_s: float = JOIN_GRACE_S
    clock: Callable[[], float] = field(default=time.monotonic, repr=False)
    started: float = field(init=False)
    last_activity: float = field(init=False)
    messages: int = field(init=False, default=0)
    owns_partitions: bool = field(init=False, default=True)

    def __post_init__(self) -> None:
        self.started = self._now()
        self.last_activity = self.started

    def _now(self) -> float:
        return self.clock()

    def restart(self) -> None:
        """Start the clocks now (set-up before the loop is neither duration nor idleness)."""
        self.started = self._now()
        self.last_activity = self.started

    def count(self, messages: int) -> None:
        """Record processed messages (an activity)."""
        if messages:
            self.messages += messages
            self.last_activity = self._now()

    def active(self) -> None:
        """Record an activity that is not a message (e.g. a partition assignment)."""
        self.last_activity = self._now()

    def assigned(self, owns_partitions: bool) -> None:
        """Whether the loop owns partitions now; an assignment change is an activity."""
        self.owns_partitions = owns_partitions
        self.last_activity = self._now()

    def remaining_messages(self, limit: int) -> int:
        """`limit`, or fewer if max_messages leaves fewer to take."""
        if self.max_messages is None:
            return limit
        return max(0, min(limit, self.max_messages - self.messages))

    def idle_s(self) -> float:
        """Seconds without activity, less the join grace while no partitions are owned."""
        return self._now() - self.last_activity - (0.0 if self.owns_partitions else self.join_grace_s)

    def reached(self) -> StopReason | None:
        """The first bound met now, or None to go on."""
        now = self._now()
        if self.duration_s is not None and now - self.started >= self.duration_s:
            return "duration"
        if self.max_messages is not None and self.messages >= self.max_messages:
            return "max_messages"
        if self.until_idle_s is not None and self.idle_s() >= self.until_idle_s:
            return "idle"
        return None
