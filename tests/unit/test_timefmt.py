"""timefmt: the one place instants and latencies become text, and ISO text becomes epoch ms."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from fraudkit.timefmt import DAYS, MINUTES, SHORT, datetime_ms, iso_ms, ms_text, utc_text

JAN_15 = 1_768_435_200_000  # 2026-01-15T00:00:00Z


def test_iso_text_is_utc_unless_it_says_otherwise() -> None:
    assert iso_ms("2026-01-15") == JAN_15
    assert iso_ms(" 2026-01-15T06:00 ") == JAN_15 + 6 * 3_600_000
    assert iso_ms("2026-01-15T06:00:00Z") == JAN_15 + 6 * 3_600_000
    assert iso_ms("2026-01-15T07:00:00+01:00") == JAN_15 + 6 * 3_600_000
    assert datetime_ms(datetime(2026, 1, 15)) == JAN_15
    assert datetime_ms(datetime(2026, 1, 15, 1, tzinfo=timezone(timedelta(hours=1)))) == JAN_15
    assert datetime_ms(datetime(2026, 1, 15, tzinfo=UTC)) == JAN_15
    with pytest.raises(ValueError):
        iso_ms("15/01/2026")


def test_instants_and_latencies_as_text() -> None:
    instant = JAN_15 + 6 * 3_600_000 + 5 * 60_000 + 7_900
    assert utc_text(instant) == "2026-01-15 06:05:07"
    assert utc_text(instant, MINUTES) == "2026-01-15 06:05"
    assert utc_text(instant, DAYS) == "2026-01-15"
    assert utc_text(instant, SHORT) == "01-15 06:05:07"
    assert utc_text(None) == "-"
    assert ms_text(12_345.6) == "12,346 ms"
    assert ms_text(12.25, ",.1f") == "12.2 ms"
    assert ms_text(1234.0, "g") == "1234 ms"
    assert ms_text(7.0, unit="") == "7"
    assert ms_text(None) == "-"


def test_one_latency_histogram_exact_below_a_minute_and_three_digits_above() -> None:
    from fraudkit.latency import LatencyHistogram

    histogram = LatencyHistogram(exact_up_to_ms=1000)
    histogram.add([5, 5, 7, -3])
    histogram.record(123_456.7)
    assert histogram.total == 5
    assert histogram.summary() == {"p50": 5.0, "p95": 123_000.0, "p99": 123_000.0, "max": 123_000.0}
    assert histogram.percentile(20) == 0.0  # the negative latency counts as 0
    other = LatencyHistogram(exact_up_to_ms=1000)
    other.add([999])
    histogram.merge(other)
    assert histogram.total == 6 and histogram.percentile(80) == 999.0
    histogram.reset()
    assert histogram.summary(with_max=False) == {"p50": None, "p95": None, "p99": None}
