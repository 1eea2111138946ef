"""Producer of transactions and delayed labels at a set rate, and the client's read-back of verdicts."""

from __future__ import annotations

import collections
import queue
import random
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

from fraudkit.config import FraudkitConfig
from fraudkit.errors import BrokerError, DataError
from fraudkit.latency import LatencyHistogram
from fraudkit.schema import CANONICAL_COLUMNS, SCHEMA_VERSION, Label
from fraudkit.stream.bounds import RunBounds, StopReason
from fraudkit.stream.ratelimit import Pacer, bounded_wait, make_pacer
from fraudkit.timefmt import ms_text, utc_text

if TYPE_CHECKING:
    import pandas

    from fraudkit.stream.kafka import BrokerWatch, Consumer, Producer

# Canonical columns (docs/architecture.md); any other column of a frame is a numeric passthrough.
REQUIRED_COLUMNS = ("transaction_id", "event_time_ms", "amount", "label")
# Replay frames are cut into chunks of this many rows so list conversion stays incremental.
REPLAY_CHUNK_ROWS = 50_000
# Messages handed to the producer between two looks at the clock, verdicts and stop requests.
MAX_BATCH = 2_000
STATUS_INTERVAL_S = 0.25
FLUSH_TIMEOUT_S = 60.0
# The recent rate shown live is measured over this many seconds.
RECENT_RATE_WINDOW_S = 2.0
# While no broker answers, one "waiting for Kafka" line this often.
OUTAGE_LOG_EVERY_S = 2.0
# The final flush waits in slices this long, looking at the broker watch in between.
FLUSH_SLICE_S = 0.5


# --------------------------------------------------------------------------------------------
# Source frames → plain Python column lists (converted once per chunk, never per row)


@dataclass(slots=True)
class Chunk:
    """One source frame as Python lists, ready for fast per-row encoding."""

    transaction_id: list[str]
    event_time_ms: list[int]
    card_id: list[str]
    customer_id: list[str | None]
    terminal_id: list[str | None]
    amount: list[float]
    currency: list[str | None]
    merchant_category: list[str | None]
    country: list[str | None]
    lat: list[float | None]
    lon: list[float | None]
    label: list[int]
    fraud_scenario: list[str | None]
    extra: list[tuple[str, list[float | None]]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.transaction_id)


def _nullable(frame: pandas.DataFrame, name: str) -> list[Any]:
    if name not in frame.columns:
        return [None] * len(frame)
    return _series_list(frame[name])


def _series_list(column: pandas.Series) -> list[Any]:
    """Values as Python objects with every kind of missing value (NaN, NA, NaT) as None."""
    if column.isna().any():
        return list(column.astype(object).where(column.notna(), None).tolist())
    return list(column.tolist())


def _strings(frame: pandas.DataFrame, name: str) -> list[str | None]:
    values = _nullable(frame, name)
    if values and not all(isinstance(v, str) or v is None for v in values):
        values = [None if v is None else str(v) for v in values]
    return values


def chunk_from_frame(frame: pandas.DataFrame) -> Chunk:
    """Convert a canonical frame to column lists; DataError names a missing or bad column."""
    missing = [name for name in REQUIRED_COLUMNS if name not in frame.columns]
    if missing:
        raise DataError(f"source frame lacks required column(s): {', '.join(missing)}")
    for name in ("transaction_id", "event_time_ms", "amount", "label"):
        nulls = frame[name].isna()
        if nulls.any():
            row = int(nulls.to_numpy().nonzero()[0][0])
            raise DataError(f"source frame: {name} is null at row {row}")
    try:
        event_times = [int(v) for v in frame["event_time_ms"].astype("int64").tolist()]
        amounts = [float(v) for v in frame["amount"].astype("float64").tolist()]
        labels = [int(v) for v in frame["label"].astype("int64").tolist()]
    except (TypeError, ValueError) as exc:
        raise DataError(f"source frame: non-numeric event_time_ms, amount or label ({exc})") from None
    bad = [v for v in set(labels) if v not in (0, 1)]
    if bad:
        raise DataError(f"source frame: label must be 0 or 1, found {bad[0]!r}")
    transaction_ids = [str(v) for v in _strings(frame, "transaction_id")]
    cards = _strings(frame, "card_id")
    # Datasets without cards (e.g. creditcard) still need a key; each transaction is its own card.
    card_ids = [tid if card is None else card for card, tid in zip(cards, transaction_ids, strict=True)]
    passthrough = [name for name in frame.columns if name not in CANONICAL_COLUMNS]
    extra = []
    for name in passthrough:
        try:
            values = frame[name].astype("float64")
        except (TypeError, ValueError):
            raise DataError(f"source frame: passthrough column {name!r} is not numeric") from None
        extra.append((str(name), _series_list(values)))
    return Chunk(
        transaction_id=transaction_ids,
        event_time_ms=event_times,
        card_id=card_ids,
        customer_id=_strings(frame, "customer_id"),
        terminal_id=_strings(frame, "terminal_id"),
        amount=amounts,
        currency=_strings(frame, "currency"),
        merchant_category=_strings(frame, "merchant_category"),
        country=_strings(frame, "country"),
        lat=_nullable(frame, "lat"),
        lon=_nullable(frame, "lon"),
        label=labels,
        fraud_scenario=_strings(frame, "fraud_scenario"),
        extra=extra,
    )


def transaction_message(chunk: Chunk, row: int, produced_ms: int) -> dict[str, Any]:
    """The wire dict of one transaction (schema version 1); the label never rides along."""
    message: dict[str, Any] = {
        "schema": SCHEMA_VERSION,
        "transaction_id": chunk.transaction_id[row],
        "event_time_ms": chunk.event_time_ms[row],
        "produced_ms": produced_ms,
        "card_id": chunk.card_id[row],
        "customer_id": chunk.customer_id[row],
        "terminal_id": chunk.terminal_id[row],
        "amount": chunk.amount[row],
        "currency": chunk.currency[row],
        "merchant_category": chunk.merchant_category[row],
        "country": chunk.country[row],
        "lat": chunk.lat[row],
        "lon": chunk.lon[row],
    }
    if chunk.extra:
        extra = {name: values[row] for name, values in chunk.extra if values[row] is not None}
        if extra:
            message["extra"] = extra
    return message


# --------------------------------------------------------------------------------------------
# Delayed labels


@dataclass(slots=True)
class PendingLabel:
    """A label waiting for the stream's event time to reach its due time."""

    due_ms: int
    transaction_id: str
    event_time_ms: int
    label: int
    card_id: str
    terminal_id: str | None
    fraud_scenario: str | None

    def message(self) -> dict[str, Any]:
        """The wire dict; labelled_ms is the event time at which the truth became known."""
        return Label(
            transaction_id=self.transaction_id,
            event_time_ms=self.event_time_ms,
            label=self.label,
            card_id=self.card_id,
            terminal_id=self.terminal_id,
            labelled_ms=self.due_ms,
            fraud_scenario=self.fraud_scenario,
        ).to_dict()


class LabelScheduler:
    """Holds labels until the stream's event time passes event_time + delay; thins them (seeded).

    Labels queue in production order. With a constant delay that is due order too, so a deque is
    enough; should a source be slightly out of order, a label is released late, never early.
    """

    def __init__(self, delay_s: float, fraction: float, seed: int) -> None:
        self.delay_ms = round(delay_s * 1000)
        self.fraction = fraction
        self.random = random.Random(seed)
        self.pending: collections.deque[PendingLabel] = collections.deque()

    def offer(
        self,
        transaction_id: str,
        event_time_ms: int,
        label: int,
        card_id: str,
        terminal_id: str | None,
        fraud_scenario: str | None,
    ) -> None:
        """Queue the label of a transaction just sent, unless thinning drops it."""
        if self.fraction < 1.0 and not self.random.random() < self.fraction:
            return
        self.pending.append(
            PendingLabel(
                event_time_ms + self.delay_ms,
                transaction_id,
                event_time_ms,
                label,
                card_id,
                terminal_id,
                fraud_scenario,
            )
        )

    def release(self, stream_time_ms: int) -> list[PendingLabel]:
        """Labels whose due time the stream's event time has reached, in order."""
        released = []
        pending = self.pending
        while pending and pending[0].due_ms <= stream_time_ms:
            released.append(pending.popleft())
        return released

    def drain(self) -> list[PendingLabel]:
        """Every label still pending (for --flush-labels at the end of a run)."""
        released = list(self.pending)
        self.pending.clear()
        return released

    def __len__(self) -> int:
        return len(self.pending)


# --------------------------------------------------------------------------------------------
# The client's view of verdicts


class VerdictTracker:
    """Matches verdicts to sent transactions by id: latency, confusion matrix, pending count."""

    def __init__(self, max_pending: int) -> None:
        self.max_pending = max_pending
        # OrderedDict: evicting the oldest stays O(1) even after many out-of-order pops.
        self.pending: collections.OrderedDict[str, tuple[int, int]] = collections.OrderedDict()
        self.latency = LatencyHistogram()
        self.confusion = {"tp": 0, "fp": 0, "tn": 0, "fn": 0}
        self.matched = 0
        self.unmatched = 0
        self.expired = 0

    def sent(self, transaction_id: str, produced_ms: int, label: int) -> None:
        """Remember a transaction until its verdict arrives (oldest forgotten beyond the bound)."""
        pending = self.pending
        pending[transaction_id] = (produced_ms, label)
        if len(pending) > self.max_pending:
            pending.popitem(last=False)
            self.expired += 1

    def verdict(self, raw: bytes | None, received_ms: float) -> None:
        """Account for one verdict message; unknown, duplicate or unreadable ones count as unmatched."""
        try:
            data = orjson.loads(raw) if raw is not None else None
            transaction_id = data.get("transaction_id") if isinstance(data, dict) else None
        except orjson.JSONDecodeError:
            transaction_id = None
        sent = self.pending.pop(str(transaction_id), None) if transaction_id is not None else None
        if sent is None:
            self.unmatched += 1
            return
        assert isinstance(data, dict)
        produced_ms, label = sent
        self.matched += 1
        self.latency.record(received_ms - produced_ms)
        flagged = data.get("decision") == "fraud"
        key = ("tp" if label else "fp") if flagged else ("fn" if label else "tn")
        self.confusion[key] += 1


# --------------------------------------------------------------------------------------------
# Status and summary


@dataclass
class GenerateSummary:
    """A snapshot of a run (live status) or its final summary; `to_dict()` is the --json form."""

    phase: str = "starting"
    source: str = "simulator"
    target_rate: float | None = None
    speedup: float | None = None
    sent: int = 0
    frauds_sent: int = 0
    labels_sent: int = 0
    labels_pending: int = 0
    read_verdicts: bool = True
    verdicts: int = 0
    pending: int = 0
    unmatched: int = 0
    expired: int = 0
    rate_per_s: float = 0.0
    recent_rate_per_s: float = 0.0
    latency_ms: dict[str, float | None] = field(
        default_factory=lambda: {"p50": None, "p95": None, "p99": None}
    )
    confusion: dict[str, int] = field(default_factory=lambda: {"tp": 0, "fp": 0, "tn": 0, "fn": 0})
    producing_s: float = 0.0
    duration_s: float = 0.0
    first_event_ms: int | None = None
    stream_time_ms: int | None = None
    stop_reason: StopReason | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able data."""
        data = asdict(self)
        for key in ("rate_per_s", "recent_rate_per_s", "producing_s", "duration_s"):
            data[key] = round(data[key], 3)
        return data


# --------------------------------------------------------------------------------------------
# The run


def _prefetch(
    frames: Iterable[pandas.DataFrame],
    stop: threading.Event,
    abort: threading.Event | None = None,
    depth: int = 2,
) -> Iterator[Chunk]:
    """Convert source frames to chunks in a background thread so the next one is ready on time.

    Ends early (without error) when `abort` is set while waiting for a slow source.
    """
    done = object()
    items: queue.Queue[Any] = queue.Queue(maxsize=depth)

    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                items.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        try:
            for frame in frames:
                if not put(chunk_from_frame(frame)):
                    return
            put(done)
        except BaseException as exc:
            put(exc)

    thread = threading.Thread(target=work, name="fraudkit-generate-source", daemon=True)
    thread.start()
    try:
        while True:
            try:
                item = items.get(timeout=0.1)
            except queue.Empty:
                if (abort is not None and abort.is_set()) or (not thread.is_alive() and items.empty()):
                    return
                continue
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()


def open_source(config: FraudkitConfig) -> Iterator[pandas.DataFrame]:
    """The configured source: the endless seeded simulator, or a dataset file replayed in event order."""
    settings = config.generate
    if settings.source == "simulator":
        from fraudkit.data.simulate import stream_transactions

        yield from stream_transactions(config.simulate.model_copy(update={"seed": settings.seed}))
        return
    path = settings.replay_path or config.data.stream_path
    if not path.exists():
        raise DataError(f"replay file not found: {path} (set generate.replay_path or --replay)")
    from fraudkit.data.datasets import load_frame, load_mapping

    frame = load_frame(path, load_mapping(config.data.dataset))
    if not frame["event_time_ms"].is_monotonic_increasing:
        frame = frame.sort_values(["event_time_ms", "transaction_id"], kind="stable")
    for start in range(0, len(frame), REPLAY_CHUNK_ROWS):
        yield frame.iloc[start : start + REPLAY_CHUNK_ROWS]


def _wall_ms() -> int:
    return time.time_ns() // 1_000_000


class Generator:
    """The producing loop; works with any producer/consumer that has the few methods it calls."""

    def __init__(
        self,
        config: FraudkitConfig,
        producer: Producer,
        verdict_consumer: Consumer | None,
        pacer: Pacer,
        stop: threading.Event,
        on_status: Callable[[GenerateSummary], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_ms: Callable[[], int] = _wall_ms,
        sleep: Callable[[float], None] = time.sleep,
        watch: BrokerWatch | None = None,
        on_log: Callable[[str], None] | None = None,
    ) -> None:
        settings = config.generate
        self.settings = settings
        self.transactions_topic = config.topics.transactions
        self.labels_topic = config.topics.labels
        self.producer = producer
        self.consumer = verdict_consumer
        self.pacer = pacer
        self.stop = stop
        self.on_status = on_status
        self.clock = clock
        self.wall_ms = wall_ms
        self.sleep = sleep
        self.labels = LabelScheduler(settings.label_delay_s, settings.label_fraction, settings.seed)
        self.verdicts = VerdictTracker(settings.max_pending) if verdict_consumer is not None else None
        self.failed = 0
        self.errors: list[str] = []
        self.status = GenerateSummary(
            source=settings.source,
            target_rate=None if settings.speedup is not None else settings.rate,
            speedup=settings.speedup,
            read_verdicts=verdict_consumer is not None,
        )
        self.started = 0.0
        self.producing_ended: float | None = None
        self.next_status = 0.0
        self.rate_samples: collections.deque[tuple[float, int]] = collections.deque()
        self.watch = watch
        self.servers = config.kafka.bootstrap_servers
        self.close_timeout_s = config.kafka.close_timeout_s
        self.log = on_log or (lambda _message: None)
        self.next_outage_log = 0.0
        self.in_outage = False

    # -- delivery -----------------------------------------------------------------------------

    def _on_delivery(self, error: Any, message: Any) -> None:
        # Only failures are reported (delivery.report.only.error): success costs no Python call.
        if error is not None:
            self.failed += 1
            if len(self.errors) < 5:
                self.errors.append(f"{message.topic()}: {error.str()}")

    def _produce(self, topic: str, value: bytes, key: str) -> None:
        producer = self.producer
        while True:
            try:
                producer.produce(topic, value, key, on_delivery=self._on_delivery)
                return
            except BufferError:
                # A full local queue: serve delivery reports and retry, never drop.
                producer.poll(0.05)
                self._check_broker(self.clock())

    # -- the loop -----------------------------------------------------------------------------

    def run(self, chunks: Iterable[Chunk]) -> GenerateSummary:
        """Produce until the source ends, count/duration is reached or stop is set; then flush."""
        self.started = self.clock()
        self.next_status = self.started
        bounds = RunBounds(
            duration_s=self.settings.duration_s, max_messages=self.settings.count, clock=self.clock
        )
        for chunk in chunks:
            if self.status.phase != "producing":
                # The clock starts with the first chunk, so the source's start-up is not counted.
                self.status.phase = "producing"
                self.started = self.clock()
                bounds.restart()
            self._send_chunk(chunk, bounds)
            if self.status.stop_reason is not None:
                break
        if self.status.stop_reason is None:
            self.status.stop_reason = "stopped" if self.stop.is_set() else "end_of_source"
        self.producing_ended = self.clock()
        self._finish_producing()
        self._wait_for_verdicts()
        self.status.phase = "done"
        return self._snapshot()

    def _send_chunk(self, chunk: Chunk, bounds: RunBounds) -> None:
        times = chunk.event_time_ms
        row, rows = 0, len(chunk)
        while row < rows:
            if self.stop.is_set():
                self.status.stop_reason = "stopped"
                return
            reason = bounds.reached()
            if reason is not None:
                self.status.stop_reason = reason
                return
            now = self.clock()
            due = self.pacer.due(times, row, bounds.remaining_messages(MAX_BATCH))
            if due == 0:
                self._idle(bounded_wait(self.pacer.wait_s(times, row)))
                continue
            self._send_rows(chunk, row, due)
            self.pacer.record(due)
            row += due
            bounds.count(due)
            self._serve(now)
        # The count may end exactly with the chunk: say so rather than wait for the next one.
        if bounds.remaining_messages(1) == 0:
            self.status.stop_reason = "max_messages"

    def _send_rows(self, chunk: Chunk, start: int, count: int) -> None:
        produced_ms = self.wall_ms()
        topic = self.transactions_topic
        dumps = orjson.dumps
        produce = self.producer.produce
        on_delivery = self._on_delivery
        offer = self.labels.offer
        tracker = self.verdicts
        frauds = 0
        end = start + count
        for row in range(start, end):
            transaction_id = chunk.transaction_id[row]
            card_id = chunk.card_id[row]
            label = chunk.label[row]
            if tracker is not None:
                # Recorded before producing, so even an instant verdict finds its transaction.
                tracker.sent(transaction_id, produced_ms, label)
            value = dumps(transaction_message(chunk, row, produced_ms))
            try:
                produce(topic, value, card_id, on_delivery=on_delivery)
            except BufferError:
                self._produce(topic, value, card_id)
            offer(
                transaction_id,
                chunk.event_time_ms[row],
                label,
                card_id,
                chunk.terminal_id[row],
                chunk.fraud_scenario[row],
            )
            frauds += label
        status = self.status
        status.sent += count
        status.frauds_sent += frauds
        batch_time = max(chunk.event_time_ms[start:end])
        if status.first_event_ms is None:
            status.first_event_ms = chunk.event_time_ms[start]
        if status.stream_time_ms is None or batch_time > status.stream_time_ms:
            status.stream_time_ms = batch_time
        self._publish_labels(self.labels.release(status.stream_time_ms))

    def _publish_labels(self, labels: Sequence[PendingLabel]) -> None:
        dumps = orjson.dumps
        topic = self.labels_topic
        for pending in labels:
            self._produce(topic, dumps(pending.message()), pending.card_id)
        self.status.labels_sent += len(labels)

    def _idle(self, wait_s: float) -> None:
        """Wait for the next message to fall due, reading verdicts meanwhile."""
        self.producer.poll(0)
        if self.consumer is not None:
            self._read_verdicts(wait_s)
        else:
            self.sleep(wait_s)
        now = self.clock()
        self._check_broker(now)
        self._maybe_status(now)

    def _serve(self, now: float) -> None:
        self.producer.poll(0)
        if self.consumer is not None:
            self._read_verdicts(0)
        self._check_broker(now)
        self._maybe_status(now)

    def _check_broker(self, now: float) -> None:
        """Say what is waiting while no broker answers; BrokerError after kafka.connect_timeout_s."""
        if self.watch is None:
            return
        down = self.watch.check()
        if down is None:
            if self.in_outage:
                self.in_outage = False
                self.log(
                    f"Kafka at {self.watch.servers} answers again; {len(self.producer):,} messages queued"
                )
            return
        self.in_outage = True
        if now >= self.next_outage_log:
            self.next_outage_log = now + OUTAGE_LOG_EVERY_S
            self.log(
                f"waiting for Kafka at {self.watch.servers}: {len(self.producer):,} messages queued, "
                f"retrying (no broker answered for {down:.0f}s; giving up in "
                f"{max(0.0, self.watch.timeout_s - down):.0f}s)"
            )

    def _read_verdicts(self, timeout_s: float) -> None:
        assert self.consumer is not None and self.verdicts is not None
        messages = self.consumer.consume(10_000, timeout=timeout_s)
        if not messages:
            return
        received_ms = time.time() * 1000.0
        verdict = self.verdicts.verdict
        for message in messages:
            if message.error() is None:
                verdict(message.value(), received_ms)

    def _finish_producing(self) -> None:
        """Flush every message; release labels per the end-of-run policy; fail loudly on loss."""
        self.status.phase = "flushing"
        self._emit_status()
        if self.settings.flush_labels:
            self._publish_labels(self.labels.drain())
        # A stop request (SIGTERM) bounds the flush by kafka.close_timeout_s: the process must leave.
        flush_s = min(FLUSH_TIMEOUT_S, self.close_timeout_s) if self.stop.is_set() else FLUSH_TIMEOUT_S
        deadline = self.clock() + flush_s
        while True:
            remaining = self.producer.flush(FLUSH_SLICE_S)
            now = self.clock()
            if not remaining or now >= deadline:
                break
            self._check_broker(now)
            self._maybe_status(now)
        if remaining:
            raise BrokerError(
                f"{remaining:,} message(s) still undelivered to {self.servers} after {flush_s:g}s"
                + (
                    "; stopped while Kafka was unreachable"
                    if self.watch is not None and self.watch.lost
                    else ""
                )
            )
        if self.failed:
            raise BrokerError(f"{self.failed} message(s) were not delivered: {'; '.join(self.errors)}")

    def _wait_for_verdicts(self) -> None:
        if self.consumer is None or self.verdicts is None:
            return
        self.status.phase = "waiting for verdicts"
        deadline = self.clock() + self.settings.verdict_wait_s
        while self.verdicts.pending and self.clock() < deadline:
            self._read_verdicts(min(0.1, max(0.001, deadline - self.clock())))
            self._maybe_status(self.clock())

    # -- status -------------------------------------------------------------------------------

    def _maybe_status(self, now: float) -> None:
        if now >= self.next_status:
            self.next_status = now + STATUS_INTERVAL_S
            self._emit_status()

    def _emit_status(self) -> None:
        if self.on_status is not None:
            self.on_status(self._snapshot())

    def _snapshot(self) -> GenerateSummary:
        now = self.clock()
        status = self.status
        status.labels_pending = len(self.labels)
        status.duration_s = now - self.started
        status.producing_s = (self.producing_ended or now) - self.started
        status.rate_per_s = status.sent / status.producing_s if status.producing_s > 0 else 0.0
        samples = self.rate_samples
        samples.append((now, status.sent))
        while len(samples) > 2 and now - samples[1][0] >= RECENT_RATE_WINDOW_S:
            samples.popleft()
        first_time, first_sent = samples[0]
        if self.producing_ended is not None:
            status.recent_rate_per_s = 0.0
        elif now > first_time:
            status.recent_rate_per_s = (status.sent - first_sent) / (now - first_time)
        tracker = self.verdicts
        if tracker is not None:
            status.verdicts = tracker.matched
            status.pending = len(tracker.pending)
            status.unmatched = tracker.unmatched
            status.expired = tracker.expired
            status.latency_ms = tracker.latency.summary(with_max=False)
            status.confusion = dict(tracker.confusion)
        snapshot = GenerateSummary(**asdict(status))
        return snapshot


def _assign_at_end(consumer: Consumer, topic: str, timeout_s: float = 10.0) -> None:
    """Read the topic from its current end: only verdicts for this run's transactions matter.

    The end offsets are retried through a leader election (a node restarting) until timeout_s.
    """
    from fraudkit.stream.kafka import KafkaException, TopicPartition, topic_watermarks

    try:
        offsets = topic_watermarks(consumer, topic, timeout_s)
        assignment = [TopicPartition(topic, p, high) for p, (_, high) in sorted(offsets.items())]
    except KafkaException as exc:
        raise BrokerError(f"cannot read topic {topic!r}: {exc.args[0].str()}") from None
    consumer.assign(assignment)


def run_generate(
    config: FraudkitConfig,
    stop_event: threading.Event | None = None,
    on_status: Callable[[GenerateSummary], None] | None = None,
    source: Iterable[pandas.DataFrame] | None = None,
    on_log: Callable[[str], None] | None = None,
) -> GenerateSummary:
    """Produce transactions and delayed labels per config.generate, read verdicts back, summarise.

    `source` overrides the configured one with any iterable of canonical frames. The run ends at
    generate.count, generate.duration_s, the end of a finite source, or when stop_event is set;
    every produced message is flushed before returning.
    """
    from fraudkit.stream.kafka import (
        BrokerWatch,
        close_producer,
        close_within,
        ensure_topics,
        make_consumer,
        make_producer,
        wait_for_broker,
    )

    settings = config.generate
    stop = stop_event or threading.Event()
    log = on_log or (lambda _message: None)
    servers = config.kafka.bootstrap_servers
    wait_for_broker(
        config,
        on_retry=lambda left, error: log(
            f"waiting for Kafka at {servers} ({error}); giving up in {left:.0f}s"
        ),
    )
    topics = [config.topics.transactions, config.topics.labels]
    if settings.read_verdicts:
        topics.append(config.topics.verdicts)
    ensure_topics(config, topics)
    frames = open_source(config) if source is None else source
    watch = BrokerWatch(config)
    producer = make_producer(config, error_cb=watch.on_error, delivery_report_only_error=True)
    consumer = None
    if settings.read_verdicts:
        consumer = make_consumer(config, settings.verdict_group_id, error_cb=watch.on_error)
    source_stop = threading.Event()
    close_timeout_s = config.kafka.close_timeout_s
    try:
        if consumer is not None:
            _assign_at_end(consumer, config.topics.verdicts)
        generator = Generator(
            config,
            producer,
            consumer,
            make_pacer(settings.rate, settings.speedup),
            stop,
            on_status,
            watch=watch,
            on_log=log,
        )
        if source is not None:
            generator.status.source = "custom"
        summary = generator.run(_prefetch(frames, source_stop, abort=stop))
        if on_status is not None:
            on_status(summary)
        return summary
    finally:
        source_stop.set()
        close_by = time.monotonic() + close_timeout_s
        if consumer is not None:
            close_within(consumer, close_timeout_s, "verdict reader", log)
        # Everything was flushed on success; after a failure what is left is dropped, not waited for.
        flush_s = 0.0 if watch.lost else close_by - time.monotonic()
        close_producer(producer, flush_s, "generator's producer", log)


# --------------------------------------------------------------------------------------------
# Rendering (rich is imported lazily: the library never prints, callers render this)


def status_panel(summary: GenerateSummary) -> Any:
    """A rich renderable of a status snapshot or final summary (for live panels and the demo)."""
    from rich.panel import Panel
    from rich.table import Table

    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold")
    table.add_column()
    if summary.speedup is not None:
        target = f"event time x{summary.speedup:g}"
    elif summary.target_rate is not None:
        target = f"target {summary.target_rate:,.0f}/s"
    else:
        target = "no limit"
    rate = summary.recent_rate_per_s if summary.phase == "producing" else summary.rate_per_s
    table.add_row("sent", f"{summary.sent:,} ({summary.frauds_sent:,} fraud)")
    table.add_row("rate", f"{rate:,.0f}/s ({target})")
    table.add_row("labels", f"{summary.labels_sent:,} sent, {summary.labels_pending:,} waiting for delay")
    if summary.stream_time_ms is not None:
        table.add_row("event time", f"{utc_text(summary.stream_time_ms)} UTC")
    if summary.read_verdicts:
        table.add_row(
            "verdicts",
            f"{summary.verdicts:,} received, {summary.pending:,} pending"
            + (f", {summary.unmatched:,} unmatched" if summary.unmatched else ""),
        )
        latency = summary.latency_ms
        table.add_row(
            "latency",
            f"p50 {ms_text(latency['p50'])}  p95 {ms_text(latency['p95'])}  p99 {ms_text(latency['p99'])}",
        )
        c = summary.confusion
        precision = c["tp"] / (c["tp"] + c["fp"]) if c["tp"] + c["fp"] else None
        recall = c["tp"] / (c["tp"] + c["fn"]) if c["tp"] + c["fn"] else None
        table.add_row("flagged", f"fraud {c['tp']:,} (true)  legit {c['fp']:,} (false alarm)")
        table.add_row("passed", f"legit {c['tn']:,} (true)  fraud {c['fn']:,} (missed)")
        table.add_row(
            "precision / recall",
            ("-" if precision is None else f"{precision:.1%}")
            + " / "
            + ("-" if recall is None else f"{recall:.1%}"),
        )
    else:
        table.add_row("verdicts", "not read (--no-verdicts)")
    title = f"fraudkit generate · {summary.phase}"
    if summary.stop_reason and summary.phase == "done":
        title += f" ({summary.stop_reason})"
    return Panel(table, title=title, subtitle=f"{summary.duration_s:,.1f} s", expand=False)


__all__ = [
    "Chunk",
    "GenerateSummary",
    "Generator",
    "LabelScheduler",
    "VerdictTracker",
    "chunk_from_frame",
    "open_source",
    "run_generate",
    "status_panel",
    "transaction_message",
]
