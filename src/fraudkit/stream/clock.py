"""The detector's stream clock: the event time up to which feature state may be expired.

Kafka Streams takes the largest timestamp seen (plus a grace period) and Flink a bounded
out-of-orderness watermark; both let one message dated far ahead drag the clock with it. Here
that message would make `OnlineFeatures.expire()` drop every card and terminal label and ignore
every later label: one poison message would wipe the detector's memory. So the clock advances
only to event times the stream corroborates:

* a `reference` time: the 90th percentile of a sliding sample of recent event times (a few per
  batch), which fewer than a tenth of the recent messages cannot move, however far ahead;
* the clock is the largest event time of a batch that is at most `max_future_skew_ms` ahead of
  that reference (the reference itself when none is), and it never goes back;
* until `MIN_SAMPLES` event times were seen the clock does not move, so a stream that *starts*
  with an outlier is not dated by it.

While the newest tenth of the sample spans less than the skew this is exactly "the largest event
time seen"; on a sparser stream it trails that by at most the newest tenth's span. An outlier
still gets its verdict (its features are computed normally), is counted in `ignored_ahead`, and
does not move the clock at all. Expiring later than necessary is always safe (state lives a
little longer), so a lagging reference costs memory, never data. See docs/scaling.md.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence

# Event times kept for the reference, and how many of each batch (evenly spaced) join them.
WINDOW_SAMPLES = 256
SAMPLES_PER_BATCH = 32
MIN_SAMPLES = 16
REFERENCE_QUANTILE = 0.9


class StreamClock:
    """A monotonic event-time clock that a minority of far-ahead event times cannot advance."""

    def __init__(self, max_future_skew_ms: int) -> None:
        self.max_future_skew_ms = max_future_skew_ms
        self.now_ms: int | None = None
        self.ignored_ahead = 0
        self._samples: deque[int] = deque(maxlen=WINDOW_SAMPLES)

    @property
    def reference_ms(self) -> int | None:
        """The REFERENCE_QUANTILE of the recent sample (None before any event time)."""
        if not self._samples:
            return None
        ordered = sorted(self._samples)
        return ordered[int(REFERENCE_QUANTILE * (len(ordered) - 1))]

    def observe(self, event_times: Sequence[int]) -> int | None:
        """Take one batch's event times (in any order); return the clock after them."""
        count = len(event_times)
        if not count:
            return self.now_ms
        step = max(1, count // SAMPLES_PER_BATCH)
        self._samples.extend(event_times[::step][:SAMPLES_PER_BATCH])
        if len(self._samples) < MIN_SAMPLES:
            return self.now_ms
        reference = self.reference_ms
        assert reference is not None
        limit = reference + self.max_future_skew_ms
        latest = max(event_times)
        if latest > limit:
            self.ignored_ahead += sum(1 for t in event_times if t > limit)
            latest = max((t for t in event_times if t <= limit), default=reference)
            latest = max(latest, reference)
        if self.now_ms is None or latest > self.now_ms:
            self.now_ms = latest
        return self.now_ms
