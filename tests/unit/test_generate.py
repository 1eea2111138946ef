"""Pacing with a fake clock, delayed labels, encoding and the verdict read-back, without a broker."""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import orjson
import pandas as pd
import pytest
from typer.testing import CliRunner

from fraudkit.cli import app
from fraudkit.config import FraudkitConfig
from fraudkit.errors import DataError
from fraudkit.generate import (
    MAX_BATCH,
    GenerateSummary,
    Generator,
    LabelScheduler,
    VerdictTracker,
    chunk_from_frame,
    status_panel,
    transaction_message,
)
from fraudkit.latency import LatencyHistogram
from fraudkit.stream.ratelimit import RatePacer, SpeedupPacer, UnlimitedPacer, bounded_wait, make_pacer

T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z
HOUR_MS = 3_600_000


class FakeClock:
    """Monotonic seconds that only move when the code under test sleeps."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


class FakeProducer:
    """Records produced messages in order; delivery always succeeds."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, dict[str, Any], str]] = []
        self.flushed = 0

    def produce(self, topic: str, value: bytes, key: str, on_delivery: Any = None) -> None:
        self.messages.append((topic, orjson.loads(value), key))

    def poll(self, timeout: float = 0) -> int:
        return 0

    def flush(self, timeout: float = 0) -> int:
        self.flushed += 1
        return 0

    def on(self, topic: str) -> list[dict[str, Any]]:
        return [value for name, value, _ in self.messages if name == topic]


def frame(rows: int, step_ms: int = HOUR_MS, cards: int = 5, fraud_every: int = 7) -> pd.DataFrame:
    """A tiny canonical frame: one transaction every step_ms, cards in rotation."""
    index = np.arange(rows)
    return pd.DataFrame(
        {
            "transaction_id": [f"tx{i:05d}" for i in index],
            "event_time_ms": T0 + index * step_ms,
            "card_id": [f"card{i % cards}" for i in index],
            "customer_id": [f"cust{i % cards}" for i in index],
            "terminal_id": [f"term{i % 3}" for i in index],
            "amount": 10.0 + index,
            "currency": "EUR",
            "merchant_category": "5411",
            "country": "FR",
            "lat": 48.85,
            "lon": 2.35,
            "label": (index % fraud_every == 0).astype(int),
            "fraud_scenario": ["card_testing" if i % fraud_every == 0 else "" for i in index],
        }
    )


def generator(
    config: FraudkitConfig, clock: FakeClock | None = None, stop: threading.Event | None = None
) -> tuple[Generator, FakeProducer]:
    clock = clock or FakeClock()
    producer = FakeProducer()
    settings = config.generate
    pacer = make_pacer(settings.rate, settings.speedup, clock)
    gen = Generator(
        config,
        producer,  # type: ignore[arg-type]
        None,
        pacer,
        stop or threading.Event(),
        clock=clock,
        wall_ms=lambda: int(clock() * 1000),
        sleep=clock.sleep,
    )
    return gen, producer


def settings(config: FraudkitConfig, **generate: Any) -> FraudkitConfig:
    for key, value in generate.items():
        setattr(config.generate, key, value)  # validated on assignment
    return config


# ---- pacing -------------------------------------------------------------------------------------


def test_rate_pacer_sends_on_an_absolute_schedule() -> None:
    clock = FakeClock()
    pacer = RatePacer(100.0, clock)
    times = list(range(1000))
    assert pacer.due(times, 0, 1000) == 1  # the first message goes at once
    pacer.record(1)
    assert pacer.due(times, 1, 1000) == 0
    assert pacer.wait_s(times, 1) == pytest.approx(0.01)
    clock.now += 0.5
    assert pacer.due(times, 1, 1000) == 50  # 51 due by t=0.5, one already sent
    assert pacer.due(times, 1, 20) == 20  # limit respected
    assert pacer.due(times, 990, 1000) == 10  # and what is left in the chunk
    pacer.record(50)
    assert pacer.wait_s(times, 51) == pytest.approx(0.01)


def test_rate_pacer_caps_the_catch_up_burst_after_a_stall() -> None:
    clock = FakeClock()
    pacer = RatePacer(100.0, clock, max_backlog_s=1.0)
    times = list(range(10_000))
    pacer.record(pacer.due(times, 0, 10_000))
    clock.now += 30.0
    burst = pacer.due(times, 1, 10_000)
    assert burst == 100
    pacer.record(burst)
    assert pacer.due(times, 101, 10_000) == 0
    clock.now += 0.1
    assert pacer.due(times, 101, 10_000) == 10


def test_speedup_pacer_follows_scaled_event_time() -> None:
    clock = FakeClock()
    pacer = SpeedupPacer(10.0, clock)
    times = [T0, T0 + 1000, T0 + 2000, T0 + 10_000]
    assert pacer.due(times, 0, 10) == 1
    assert pacer.wait_s(times, 1) == pytest.approx(0.1)
    clock.now += 0.25  # 2.5 s of event time
    assert pacer.due(times, 1, 10) == 2
    assert pacer.due(times, 1, 1) == 1
    assert pacer.wait_s(times, 3) == pytest.approx(0.75)


def test_unlimited_pacer_and_factory() -> None:
    assert UnlimitedPacer().due([1, 2, 3], 1, 10) == 2
    assert isinstance(make_pacer(None, None), UnlimitedPacer)
    assert isinstance(make_pacer(500.0, None), RatePacer)
    assert isinstance(make_pacer(500.0, 60.0), SpeedupPacer)
    assert bounded_wait(0.0) == 0.001 and bounded_wait(9.0) == 0.05
    with pytest.raises(ValueError):
        RatePacer(0.0)


@pytest.mark.parametrize("rate", [100.0, 1000.0, 20_000.0])
def test_generator_holds_the_rate_on_a_fake_clock(config: FraudkitConfig, rate: float) -> None:
    count = int(rate * 3)
    config = settings(config, rate=rate, count=count, read_verdicts=False)
    clock = FakeClock()
    gen, producer = generator(config, clock)
    summary = gen.run([chunk_from_frame(frame(count, step_ms=10))])
    assert summary.sent == count == len(producer.on(config.topics.transactions))
    assert summary.stop_reason == "max_messages"
    # count messages span (count - 1) / rate seconds on the schedule.
    assert summary.producing_s == pytest.approx((count - 1) / rate, rel=0.01)
    assert summary.rate_per_s == pytest.approx(rate, rel=0.01)


def test_duration_bounds_a_run(config: FraudkitConfig) -> None:
    config = settings(config, rate=200.0, duration_s=2.0, read_verdicts=False)
    clock = FakeClock()
    gen, _ = generator(config, clock)
    summary = gen.run([chunk_from_frame(frame(5000, step_ms=10))])
    assert summary.stop_reason == "duration"
    assert 399 <= summary.sent <= 401


def test_count_is_exact_across_chunks_and_batches(config: FraudkitConfig) -> None:
    count = MAX_BATCH + 123
    config = settings(config, rate=None, count=count, read_verdicts=False)
    gen, producer = generator(config)
    chunks = [chunk_from_frame(frame(1500, step_ms=10)) for _ in range(3)]
    summary = gen.run(chunks)
    assert summary.sent == count == len(producer.on(config.topics.transactions))
    assert summary.stop_reason == "max_messages"


def test_a_finite_source_ends_the_run(config: FraudkitConfig) -> None:
    config = settings(config, rate=None, read_verdicts=False)
    gen, producer = generator(config)
    summary = gen.run([chunk_from_frame(frame(700, step_ms=10)) for _ in range(2)])
    assert summary.stop_reason == "end_of_source"
    assert summary.sent == 1400 == len(producer.on(config.topics.transactions))


def test_a_count_met_exactly_at_the_end_of_a_chunk_stops_there(config: FraudkitConfig) -> None:
    config = settings(config, rate=None, count=700, read_verdicts=False)
    gen, _ = generator(config)
    taken: list[int] = []

    def chunks() -> Any:
        for index in range(3):
            taken.append(index)
            yield chunk_from_frame(frame(700, step_ms=10))

    summary = gen.run(chunks())
    assert (summary.sent, summary.stop_reason, taken) == (700, "max_messages", [0])


def test_stop_event_ends_the_run_and_flushes(config: FraudkitConfig) -> None:
    config = settings(config, rate=1000.0, read_verdicts=False)
    clock = FakeClock()
    stop = threading.Event()
    gen, producer = generator(config, clock, stop)

    def chunks() -> Any:
        for _ in range(1000):
            if clock.now > 101.0:
                stop.set()
            yield chunk_from_frame(frame(100, step_ms=10))

    summary = gen.run(chunks())
    assert summary.stop_reason == "stopped"
    assert producer.flushed == 1
    assert summary.sent == len(producer.on(config.topics.transactions))
    assert 1000 <= summary.sent <= 1200


# ---- messages -----------------------------------------------------------------------------------


def test_transaction_messages_are_keyed_by_card_and_carry_no_label(config: FraudkitConfig) -> None:
    config = settings(config, rate=None, read_verdicts=False)
    gen, producer = generator(config)
    gen.run([chunk_from_frame(frame(10))])
    topic, first, key = producer.messages[0]
    assert topic == config.topics.transactions and key == "card0"
    assert first == {
        "schema": 1,
        "transaction_id": "tx00000",
        "event_time_ms": T0,
        "produced_ms": 100_000,
        "card_id": "card0",
        "customer_id": "cust0",
        "terminal_id": "term0",
        "amount": 10.0,
        "currency": "EUR",
        "merchant_category": "5411",
        "country": "FR",
        "lat": 48.85,
        "lon": 2.35,
    }
    keys = [key for name, _, key in producer.messages if name == config.topics.transactions]
    assert keys == [f"card{i % 5}" for i in range(10)]


def test_missing_values_become_null_and_passthrough_goes_to_extra() -> None:
    data = frame(3).drop(columns=["customer_id", "currency"])
    data["card_id"] = ["c1", None, "c3"]
    data["lat"] = [1.0, np.nan, 3.0]
    data["V1"] = [0.5, np.nan, -1.25]
    data["V2"] = [1.0, 2.0, 3.0]
    chunk = chunk_from_frame(data)
    second = transaction_message(chunk, 1, 5)
    assert second["customer_id"] is None and second["currency"] is None and second["lat"] is None
    assert second["card_id"] == "tx00001"  # no card: the transaction is its own card
    assert second["extra"] == {"V2": 2.0}
    assert transaction_message(chunk, 2, 5)["extra"] == {"V1": -1.25, "V2": 3.0}
    assert "label" not in second and "fraud_scenario" not in second


def test_bad_frames_name_the_column() -> None:
    with pytest.raises(DataError, match="label"):
        chunk_from_frame(frame(3).drop(columns=["label"]))
    bad = frame(3)
    bad["event_time_ms"] = bad["event_time_ms"].astype("float64")
    bad.loc[2, "event_time_ms"] = np.nan
    with pytest.raises(DataError, match="event_time_ms is null at row 2"):
        chunk_from_frame(bad)
    bad = frame(3)
    bad["label"] = [0, 2, 1]
    with pytest.raises(DataError, match="label must be 0 or 1"):
        chunk_from_frame(bad)


# ---- labels -------------------------------------------------------------------------------------


def test_labels_wait_for_the_delay_in_event_time(config: FraudkitConfig) -> None:
    config = settings(config, rate=None, label_delay_s=6 * 3600, read_verdicts=False)
    gen, producer = generator(config)
    summary = gen.run([chunk_from_frame(frame(48))])
    stream_time = None
    labels = []
    for topic, value, key in producer.messages:
        if topic == config.topics.transactions:
            stream_time = value["event_time_ms"]
        else:
            # Published only once the stream's event time has passed the transaction's + delay.
            assert stream_time is not None
            assert stream_time >= value["event_time_ms"] + 6 * HOUR_MS
            assert value["labelled_ms"] == value["event_time_ms"] + 6 * HOUR_MS
            assert key == value["card_id"]
            labels.append(value)
    # The last six hours' labels are not due when the stream ends (no --flush-labels).
    assert [label["transaction_id"] for label in labels] == [f"tx{i:05d}" for i in range(42)]
    assert summary.labels_sent == 42 and summary.labels_pending == 6
    assert labels[0]["label"] == 1 and labels[0]["fraud_scenario"] == "card_testing"
    assert labels[1]["label"] == 0


def test_flush_labels_publishes_the_rest_at_the_end(config: FraudkitConfig) -> None:
    config = settings(config, rate=None, label_delay_s=6 * 3600, flush_labels=True, read_verdicts=False)
    gen, producer = generator(config)
    summary = gen.run([chunk_from_frame(frame(48))])
    assert summary.labels_sent == 48 and summary.labels_pending == 0
    assert len(producer.on(config.topics.labels)) == 48


def test_zero_delay_publishes_each_label_right_after_its_transaction(config: FraudkitConfig) -> None:
    config = settings(config, rate=10.0, label_delay_s=0, read_verdicts=False)
    gen, producer = generator(config)
    gen.run([chunk_from_frame(frame(20))])
    sequence = [
        (topic == config.topics.labels, value["transaction_id"]) for topic, value, _ in producer.messages
    ]
    expected = [(is_label, f"tx{i:05d}") for i in range(20) for is_label in (False, True)]
    assert sequence == expected


def test_label_fraction_thins_with_a_seed() -> None:
    def kept(seed: int) -> list[str]:
        scheduler = LabelScheduler(0.0, 0.3, seed)
        for i in range(2000):
            scheduler.offer(f"tx{i}", T0 + i, 0, "card", None, None)
        return [label.transaction_id for label in scheduler.release(T0 + 10_000)]

    first = kept(42)
    assert 500 < len(first) < 700
    assert kept(42) == first
    assert kept(43) != first
    scheduler = LabelScheduler(0.0, 0.0, 1)
    scheduler.offer("tx", T0, 1, "card", None, None)
    assert len(scheduler) == 0


# ---- verdicts -----------------------------------------------------------------------------------


def verdict(transaction_id: str, decision: str) -> bytes:
    return orjson.dumps({"schema": 1, "transaction_id": transaction_id, "decision": decision})


def test_verdicts_are_matched_into_latency_and_confusion() -> None:
    tracker = VerdictTracker(max_pending=100)
    for i, label in enumerate([1, 1, 0, 0, 0]):
        tracker.sent(f"tx{i}", 1000, label)
    tracker.verdict(verdict("tx0", "fraud"), 1010)  # tp
    tracker.verdict(verdict("tx1", "legit"), 1020)  # fn
    tracker.verdict(verdict("tx2", "fraud"), 1030)  # fp
    tracker.verdict(verdict("tx3", "legit"), 1040)  # tn
    tracker.verdict(verdict("tx3", "legit"), 1040)  # duplicate
    tracker.verdict(verdict("other", "fraud"), 1040)  # not ours
    tracker.verdict(b"{not json", 1040)
    assert tracker.confusion == {"tp": 1, "fp": 1, "tn": 1, "fn": 1}
    assert tracker.matched == 4 and tracker.unmatched == 3
    assert list(tracker.pending) == ["tx4"]
    assert tracker.latency.summary(with_max=False) == {"p50": 20.0, "p95": 40.0, "p99": 40.0}


def test_pending_transactions_are_bounded() -> None:
    tracker = VerdictTracker(max_pending=3)
    for i in range(5):
        tracker.sent(f"tx{i}", 0, 0)
    assert list(tracker.pending) == ["tx2", "tx3", "tx4"] and tracker.expired == 2


def test_latency_percentiles() -> None:
    histogram = LatencyHistogram()
    assert histogram.percentile(50) is None
    for value in range(1, 101):
        histogram.record(value)
    assert histogram.summary(with_max=False) == {"p50": 50.0, "p95": 95.0, "p99": 99.0}
    histogram.record(123_456)
    histogram.record(-3)  # clock skew between machines: clamped
    assert histogram.percentile(100) == 123_000.0  # three significant digits past a minute
    assert histogram.percentile(0.5) == 0.0


def test_summary_json_and_panel() -> None:
    summary = GenerateSummary(
        phase="done", sent=10, verdicts=4, target_rate=100.0, stop_reason="max_messages"
    )
    data = summary.to_dict()
    for key in (
        "sent",
        "verdicts",
        "pending",
        "labels_sent",
        "rate_per_s",
        "latency_ms",
        "confusion",
        "duration_s",
    ):
        assert key in data
    assert set(data["latency_ms"]) == {"p50", "p95", "p99"}
    assert set(data["confusion"]) == {"tp", "fp", "tn", "fn"}
    orjson.dumps(data)
    from rich.console import Console

    console = Console(width=100, record=True)
    console.print(status_panel(summary))
    text = console.export_text()
    assert "max_messages" in text and "10" in text


# ---- CLI ---------------------------------------------------------------------------------------

runner = CliRunner()


def test_cli_rejects_conflicting_rate_options() -> None:
    result = runner.invoke(app, ["generate", "--rate", "10", "--max-rate"])
    assert result.exit_code == 2 and "exclude each other" in result.stderr
    result = runner.invoke(app, ["generate", "--speedup", "10", "--rate", "5"])
    assert result.exit_code == 2 and "--speedup" in result.stderr


def test_cli_exits_3_when_kafka_is_unreachable() -> None:
    result = runner.invoke(
        app,
        [
            "generate",
            "--count",
            "1",
            "--set",
            "kafka.common.bootstrap.servers=127.0.0.1:1",
            "--set",
            "kafka.connect_timeout_s=0.5",
        ],
    )
    assert result.exit_code == 3
    assert "cannot reach Kafka at 127.0.0.1:1" in result.stderr


def test_source_errors_surface_from_the_prefetch_thread() -> None:
    from fraudkit.generate import _prefetch

    good = frame(3)
    with pytest.raises(DataError, match="amount"):
        list(_prefetch([good, good.drop(columns=["amount"])], threading.Event()))
    assert [len(chunk) for chunk in _prefetch([good, good], threading.Event())] == [3, 3]
