"""RunBounds: one stop vocabulary for every streaming loop."""

from __future__ import annotations

from fraudkit.stream.bounds import RunBounds


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_duration_counts_from_restart() -> None:
    clock = Clock()
    bounds = RunBounds(duration_s=5, clock=clock)
    clock.now += 10
    bounds.restart()
    assert bounds.reached() is None
    clock.now += 5
    assert bounds.reached() == "duration"


def test_max_messages_and_remaining() -> None:
    bounds = RunBounds(max_messages=10, clock=Clock())
    assert bounds.remaining_messages(500) == 10
    bounds.count(7)
    assert bounds.remaining_messages(500) == 3 and bounds.reached() is None
    bounds.count(3)
    assert bounds.remaining_messages(500) == 0 and bounds.reached() == "max_messages"


def test_idle_gets_the_join_grace_while_no_partition_is_owned() -> None:
    clock = Clock()
    bounds = RunBounds(until_idle_s=2, join_grace_s=10, clock=clock)
    bounds.assigned(False)
    clock.now += 11
    assert bounds.reached() is None  # 11 s idle, less 10 s of grace
    clock.now += 1.5
    assert bounds.reached() == "idle"
    bounds.assigned(True)
    clock.now += 1.9
    assert bounds.reached() is None
    bounds.count(1)
    clock.now += 2
    assert bounds.reached() == "idle"
