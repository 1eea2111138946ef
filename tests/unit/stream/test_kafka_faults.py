"""Broker loss and close deadlines: BrokerWatch, close_within, commit_within, close_producer (no broker)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from typing import Any

import pytest
from tests.unit.detect.test_detect import FakeError
from tests.unit.test_generate import FakeClock, FakeProducer, frame

from fraudkit.config import FraudkitConfig
from fraudkit.errors import BrokerError
from fraudkit.generate import Generator, chunk_from_frame
from fraudkit.stream import kafka
from fraudkit.stream.ratelimit import make_pacer

REFUSED = "127.0.0.1:9092/bootstrap: Connect to ipv4#127.0.0.1:9092 failed: Connection refused"


class Probe:
    """A metadata probe whose answer the test sets; counts the calls."""

    def __init__(self, answers: bool = False) -> None:
        self.answers = answers
        self.calls = 0

    def __call__(self, timeout_s: float) -> bool:
        self.calls += 1
        return self.answers


def watch(
    config: FraudkitConfig, clock: FakeClock, probe: Probe, timeout_s: float = 10.0
) -> kafka.BrokerWatch:
    config.kafka.connect_timeout_s = timeout_s
    return kafka.BrokerWatch(config, probe=probe, clock=clock)


def test_watch_is_quiet_until_every_broker_is_reported_down(config: FraudkitConfig) -> None:
    clock, probe = FakeClock(), Probe()
    broker_watch = watch(config, clock, probe)
    broker_watch.on_error(
        kafka.KafkaError(kafka.KafkaError._TRANSPORT, REFUSED)
    )  # one connection: not an outage
    assert broker_watch.check() is None
    assert probe.calls == 0
    broker_watch.on_error(kafka.KafkaError(kafka.KafkaError._ALL_BROKERS_DOWN, "1/1 brokers are down"))
    clock.now += 4
    assert broker_watch.check() == pytest.approx(4.0)
    assert broker_watch.lost


def test_watch_raises_after_the_timeout_naming_the_cluster_and_reason(config: FraudkitConfig) -> None:
    clock, probe = FakeClock(), Probe()
    broker_watch = watch(config, clock, probe, timeout_s=10)
    broker_watch.on_error(kafka.KafkaError(kafka.KafkaError._ALL_BROKERS_DOWN, "1/1 brokers are down"))
    broker_watch.on_error(kafka.KafkaError(kafka.KafkaError._TRANSPORT, REFUSED))
    clock.now += 9.5
    assert broker_watch.check() == pytest.approx(9.5)
    clock.now += 0.5
    with pytest.raises(BrokerError) as raised:
        broker_watch.check()
    assert str(raised.value) == (
        "lost Kafka at 127.0.0.1:9092: no broker answered for 10s "
        "(last error: Connect to ipv4#127.0.0.1:9092 failed: Connection refused)"
    )


def test_a_broker_that_answers_again_ends_the_outage(config: FraudkitConfig) -> None:
    clock, probe = FakeClock(), Probe()
    broker_watch = watch(config, clock, probe, timeout_s=10)
    broker_watch.on_error(kafka.KafkaError(kafka.KafkaError._ALL_BROKERS_DOWN, "1/1 brokers are down"))
    clock.now += 8
    assert broker_watch.check() == pytest.approx(8.0)
    probe.answers = True
    clock.now += 1
    assert broker_watch.check() is None
    assert not broker_watch.lost
    clock.now += 60  # the old outage does not count any more
    assert broker_watch.check() is None


def test_the_probe_runs_about_once_a_second_during_an_outage(config: FraudkitConfig) -> None:
    clock, probe = FakeClock(), Probe()
    broker_watch = watch(config, clock, probe, timeout_s=100)
    broker_watch.on_error(kafka.KafkaError(kafka.KafkaError._ALL_BROKERS_DOWN, "1/1 brokers are down"))
    for _ in range(50):  # 5 s of a loop checking every 0.1 s
        broker_watch.check()
        clock.now += 0.1
    assert probe.calls == 5


class BlockingClient:
    """A client whose close()/commit() blocks until released, like librdkafka's close with no broker."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.closed = False

    def close(self) -> None:
        self.release.wait(30)
        self.closed = True

    def commit(self, offsets: Any = None, asynchronous: bool = True) -> None:
        self.release.wait(30)


def test_close_within_gives_up_at_the_deadline_with_a_warning() -> None:
    client = BlockingClient()
    warnings: list[str] = []
    started = time.monotonic()
    assert kafka.close_within(client, 0.6, "detector's consumer", warnings.append) is False
    assert 0.55 <= time.monotonic() - started < 2.0
    assert warnings == ["closing the detector's consumer took over 0.6s (is Kafka reachable?); abandoned it"]
    client.release.set()


def test_close_within_returns_true_once_closed_and_reports_a_failing_close() -> None:
    client = BlockingClient()
    client.release.set()
    assert kafka.close_within(client, 5, "reader", lambda message: None) is True
    assert client.closed

    class Broken:
        def close(self) -> None:
            raise RuntimeError("Consumer closed")

    warnings: list[str] = []
    assert kafka.close_within(Broken(), 5, "reader", warnings.append) is False
    assert warnings == ["closing the reader failed: Consumer closed"]


def test_commit_within_raises_a_broker_error_at_the_deadline() -> None:
    client = BlockingClient()
    started = time.monotonic()
    with pytest.raises(BrokerError, match=r"committing offsets took over 0\.6s; they stay uncommitted"):
        kafka.commit_within(client, [], 0.6)
    assert time.monotonic() - started < 2.0
    client.release.set()


class StuckProducer(FakeProducer):
    """A producer whose queue never drains (no broker)."""

    def __init__(self, queued: int) -> None:
        super().__init__()
        self.queued = queued
        self.purged = False

    def __len__(self) -> int:
        return self.queued + len(self.messages)

    def flush(self, timeout: float = 0) -> int:
        time.sleep(min(timeout, 0.01))
        return len(self)

    def purge(self, in_queue: bool = True, in_flight: bool = True, blocking: bool = True) -> None:
        self.purged = True


def test_close_producer_drops_what_it_cannot_deliver_and_says_how_much() -> None:
    producer = StuckProducer(queued=1234)
    warnings: list[str] = []
    assert kafka.close_producer(producer, 0.5, "generator's producer", warnings.append) == 1234
    assert producer.purged
    assert warnings == [
        "the generator's producer still held 1,234 undelivered message(s) after 0.5s; dropped them"
    ]


def test_generator_says_what_it_waits_for_and_gives_up_after_the_timeout(config: FraudkitConfig) -> None:
    config.generate.rate = 100.0
    clock = FakeClock()
    producer = StuckProducer(queued=0)
    broker_watch = watch(config, clock, Probe(answers=False), timeout_s=10)
    lines: list[str] = []
    gen = Generator(
        config,
        producer,  # type: ignore[arg-type]
        None,
        make_pacer(100.0, None, clock),
        threading.Event(),
        clock=clock,
        wall_ms=lambda: int(clock() * 1000),
        sleep=clock.sleep,
        watch=broker_watch,
        on_log=lines.append,
    )
    broker_watch.on_error(kafka.KafkaError(kafka.KafkaError._ALL_BROKERS_DOWN, "1/1 brokers are down"))
    with pytest.raises(BrokerError, match=r"^lost Kafka at 127\.0\.0\.1:9092: no broker answered for 10s"):
        gen.run([chunk_from_frame(frame(5000, step_ms=10))])
    waiting = [line for line in lines if line.startswith("waiting for Kafka at 127.0.0.1:9092: ")]
    # One line every 2 s of the 10 s outage, each with the growing queue.
    assert 4 <= len(waiting) <= 6, lines
    assert waiting[0].startswith("waiting for Kafka at 127.0.0.1:9092: ")
    assert "messages queued, retrying (no broker answered for " in waiting[-1]
    queued = [int(line.split(": ")[1].split(" ")[0].replace(",", "")) for line in waiting]
    assert queued == sorted(queued) and queued[-1] > queued[0] > 0


@pytest.mark.parametrize("abandoned", [False, True])
def test_the_cli_skips_interpreter_clean_up_only_after_an_abandoned_close(abandoned: bool) -> None:
    # Destroying a client whose close was abandoned repeats the blocking close: the process must not.
    script = (
        "import atexit, sys\n"
        "atexit.register(lambda: print('clean-up ran', flush=True))\n"
        "from fraudkit.stream import kafka\n"
        f"if {abandoned}: kafka._ABANDONED.append(object())\n"
        "sys.argv = ['fraudkit', '--version']\n"
        "from fraudkit.cli import main\n"
        "main()\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, env=os.environ.copy()
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("fraudkit ")
    assert ("clean-up ran" in result.stdout) is (not abandoned)


def failing_then(errors: list[FakeError], answer: Any) -> tuple[Any, list[float]]:
    """A call that raises each error in turn, then answers; records the timeouts it was given."""
    timeouts: list[float] = []

    def call(timeout_s: float) -> Any:
        timeouts.append(timeout_s)
        if errors:
            raise kafka.KafkaException(errors.pop(0))
        return answer

    return call, timeouts


def test_retry_transient_calls_again_through_a_leader_election() -> None:
    errors = [
        FakeError(kafka.KafkaError.NOT_LEADER_FOR_PARTITION, "Not leader for partition"),
        FakeError(kafka.KafkaError.LEADER_NOT_AVAILABLE, "Leader not available"),
    ]
    call, timeouts = failing_then(errors, (0, 42))
    assert kafka.retry_transient(call, time.monotonic() + 10) == (0, 42)
    assert len(timeouts) == 3
    assert all(0 < t <= 10 for t in timeouts) and timeouts == sorted(timeouts, reverse=True)


@pytest.mark.parametrize(
    "error",
    [
        FakeError(kafka.KafkaError.TOPIC_AUTHORIZATION_FAILED, "Topic authorization failed"),
        FakeError(kafka.KafkaError.NOT_LEADER_FOR_PARTITION, "Not leader for partition", fatal=True),
        FakeError(kafka.KafkaError._TIMED_OUT, "Timed out", abort=True),
    ],
    ids=["lasting", "fatal", "needs-abort"],
)
def test_retry_transient_raises_a_lasting_error_at_once(error: FakeError) -> None:
    call, timeouts = failing_then([error], None)
    with pytest.raises(kafka.KafkaException) as raised:
        kafka.retry_transient(call, time.monotonic() + 10)
    assert raised.value.args[0] is error
    assert len(timeouts) == 1


def test_retry_transient_gives_up_at_its_deadline_with_the_last_error() -> None:
    errors = [FakeError(kafka.KafkaError.NOT_LEADER_FOR_PARTITION, "Not leader") for _ in range(100)]
    call, timeouts = failing_then(list(errors), None)
    started = time.monotonic()
    with pytest.raises(kafka.KafkaException) as raised:
        kafka.retry_transient(call, started + 1.0)
    assert time.monotonic() - started < 1.0 + kafka.RETRY_PAUSE_S
    assert raised.value.args[0] is errors[len(timeouts) - 1]
    assert 2 <= len(timeouts) < 100


class ElectingReader:
    """A consumer whose watermark reads fail `refusals` times (a leader election), then answer."""

    def __init__(self, topic: str, partitions: int, refusals: int) -> None:
        self.topic, self.partitions, self.refusals = topic, partitions, refusals
        self.calls = 0
        self.assigned: list[tuple[str, int, int]] = []

    def list_topics(self, topic: str | None = None, timeout: float = -1) -> Any:
        partitions = dict.fromkeys(range(self.partitions))
        return type(
            "Metadata",
            (),
            {"topics": {self.topic: type("Topic", (), {"partitions": partitions, "error": None})}},
        )

    def get_watermark_offsets(self, tp: Any, timeout: float = -1, cached: bool = False) -> tuple[int, int]:
        self.calls += 1
        if self.refusals:
            self.refusals -= 1
            raise kafka.KafkaException(FakeError(kafka.KafkaError.NOT_LEADER_FOR_PARTITION, "Not leader"))
        return 3, 10 + tp.partition

    def assign(self, partitions: list[Any]) -> None:
        self.assigned = [(tp.topic, tp.partition, tp.offset) for tp in partitions]

    def close(self, timeout: float = -1) -> None:
        """Nothing to close."""


def test_generate_reads_the_verdicts_end_through_a_leader_election() -> None:
    from fraudkit.generate import _assign_at_end

    reader = ElectingReader("verdicts", 2, refusals=2)
    _assign_at_end(reader, "verdicts", timeout_s=10)  # type: ignore[arg-type]
    assert reader.assigned == [("verdicts", 0, 10), ("verdicts", 1, 11)]
    assert reader.calls == 4


def test_generate_names_the_topic_when_the_election_outlasts_its_deadline() -> None:
    from fraudkit.generate import _assign_at_end

    reader = ElectingReader("verdicts", 1, refusals=10**6)
    with pytest.raises(BrokerError, match="cannot read topic 'verdicts': Not leader"):
        _assign_at_end(reader, "verdicts", timeout_s=0.6)  # type: ignore[arg-type]
    assert 2 <= reader.calls < 10


def test_tail_starts_through_a_leader_election(
    config: FraudkitConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fraudkit.tail import Tail, TailOptions

    topic = config.topics.verdicts
    reader = ElectingReader(topic, 2, refusals=1)
    monkeypatch.setattr(kafka, "list_topics", lambda config, timeout_s: {topic: 2})
    monkeypatch.setattr(kafka, "make_reader", lambda config, **settings: reader)
    tail = Tail(config, TailOptions([topic], from_beginning=True))
    tail.open()
    assert reader.assigned == [(topic, 0, 3), (topic, 1, 3)]
    assert tail._ends == {(topic, 0): 10, (topic, 1): 11}
