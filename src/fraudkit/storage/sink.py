"""`fraudkit sink`: verdicts (and their delayed labels) from Kafka into a SQL database.

Each consumed batch is written in one database transaction; the Kafka offsets of the batch are
committed only after that transaction commits. A crash between the two re-delivers the batch,
which the idempotent write (ON CONFLICT on transaction_id) turns into a no-op.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, TypeVar

import orjson

from fraudkit.config import FraudkitConfig
from fraudkit.errors import BrokerError, DatabaseError
from fraudkit.schema import MAX_EPOCH_MS, MAX_TEXT_CHARS, InvalidMessage, decode_json, decode_label
from fraudkit.storage.database import (
    LABEL_ROW_FIELDS,
    VERDICT_FIELDS,
    Database,
    DatabaseUnavailable,
    WriteResult,
    open_database,
)
from fraudkit.stream import kafka
from fraudkit.stream.bounds import RunBounds, StopReason

T = TypeVar("T")
EventCallback = Callable[[str], None]

# reasons is JSON of a few {feature, value, contribution} entries: anything much larger is not one.
MAX_REASONS_BYTES = 16_384
# The dead-letter table keeps this much of a message that could not be written.
DEAD_LETTER_EXCERPT_CHARS = 4096
_TEXT_FIELDS = ("card_id", "terminal_id", "currency", "country", "merchant_category", "decision")
_TEXT_FIELDS_EXTRA = ("model_version", "detector")
_FLOAT_FIELDS = ("amount", "score", "threshold")
_INT_FIELDS = ("event_time_ms", "produced_ms", "consumed_ms", "verdict_ms")


@dataclass
class SinkOptions:
    """Bounds of one sink run; all None means run until SIGINT/SIGTERM."""

    until_idle_s: float | None = None
    max_messages: int | None = None
    duration_s: float | None = None

    def bounds(self, clock: Callable[[], float] = time.monotonic) -> RunBounds:
        """The run's bounds, started now; the idle clock waits for the first assignment.

        Until then only the no-assignment deadline of `_check_assignment` applies (an infinite
        join grace), so a slow group join is an error that names it, never an "idle" stop.
        """
        bounds = RunBounds(
            duration_s=self.duration_s,
            max_messages=self.max_messages,
            until_idle_s=self.until_idle_s,
            join_grace_s=math.inf,
            clock=clock,
        )
        bounds.assigned(False)
        return bounds


@dataclass
class SinkSummary:
    """What a sink run did (printed as text or --json)."""

    database: str
    table: str
    messages: int = 0
    verdicts: int = 0
    inserted: int = 0
    duplicates: int = 0
    labels: int = 0
    invalid: int = 0
    dead_letters: int = 0
    batches: int = 0
    database_retries: int = 0
    commit_failures: int = 0
    uncommitted: int = 0
    elapsed_s: float = 0.0
    stopped_by: str = ""
    invalid_examples: list[str] = field(default_factory=list)

    @property
    def rows_per_s(self) -> float:
        """Verdict and label rows handled per second of the run."""
        return (self.verdicts + self.labels) / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        """Plain data for --json."""
        data = asdict(self)
        data["rows_per_s"] = round(self.rows_per_s, 1)
        data["elapsed_s"] = round(self.elapsed_s, 3)
        return data


class _Stopped(Exception):
    """Raised inside the retry loop when a stop was requested while the database was down."""


def storable_text(value: str, name: str) -> str:
    """A text value every supported database stores: bounded, and without NUL (PostgreSQL refuses it)."""
    if len(value) > MAX_TEXT_CHARS:
        raise InvalidMessage(f"{name}: {len(value)} characters is longer than the limit of {MAX_TEXT_CHARS}")
    if "\x00" in value:
        raise InvalidMessage(f"{name}: contains a NUL character")
    return value


def _text(value: Any, name: str) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        return storable_text(value, name)
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    raise InvalidMessage(f"{name}: expected text, got {type(value).__name__}")


def _float(value: Any, name: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidMessage(f"{name}: expected a number, got {type(value).__name__}")
    return float(value) if math.isfinite(value) else None


def _int(value: Any, name: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidMessage(f"{name}: expected epoch milliseconds, got {type(value).__name__}")
    # Epoch milliseconds; the range also keeps SQLite's and PostgreSQL's 64-bit integers safe.
    if not -MAX_EPOCH_MS <= value <= MAX_EPOCH_MS:
        raise InvalidMessage(f"{name}: {value!r} is out of range")
    return int(value)


def verdict_row(data: dict[str, Any]) -> tuple[Any, ...]:
    """A fraud_predictions row (VERDICT_FIELDS order) from a decoded verdict; InvalidMessage names the field."""
    transaction_id = data.get("transaction_id")
    if isinstance(transaction_id, int) and not isinstance(transaction_id, bool):
        transaction_id = str(transaction_id)
    if not isinstance(transaction_id, str) or not transaction_id:
        raise InvalidMessage("transaction_id: missing")
    values: dict[str, Any] = {"transaction_id": storable_text(transaction_id, "transaction_id")}
    for name in (*_TEXT_FIELDS, *_TEXT_FIELDS_EXTRA):
        values[name] = _text(data.get(name), name)
    for name in _FLOAT_FIELDS:
        values[name] = _float(data.get(name), name)
    for name in _INT_FIELDS:
        values[name] = _int(data.get(name), name)
    reasons = data.get("reasons")
    if reasons is not None and not isinstance(reasons, list):
        raise InvalidMessage(f"reasons: expected a list, got {type(reasons).__name__}")
    encoded = None if reasons is None else orjson.dumps(reasons)
    if encoded is not None:
        if len(encoded) > MAX_REASONS_BYTES:
            raise InvalidMessage(
                f"reasons: {len(encoded):,} bytes is more than the limit of {MAX_REASONS_BYTES:,}"
            )
        if b"\\u0000" in encoded:  # PostgreSQL's JSONB refuses NUL in strings
            raise InvalidMessage("reasons: contains a NUL character")
    values["reasons"] = None if encoded is None else encoded.decode()
    return tuple(values[name] for name in VERDICT_FIELDS)


def label_row(raw: bytes | None) -> tuple[Any, ...]:
    """A fraud_labels row (LABEL_ROW_FIELDS order) from a label message."""
    label = decode_label(raw)
    for name in ("transaction_id", "card_id", "terminal_id", "fraud_scenario"):
        text = getattr(label, name)
        if text is not None:
            storable_text(text, name)
    values = {
        "transaction_id": label.transaction_id,
        "event_time_ms": label.event_time_ms,
        "label": label.label,
        "card_id": label.card_id,
        "terminal_id": label.terminal_id,
        "labelled_ms": label.labelled_ms,
        "fraud_scenario": label.fraud_scenario,
    }
    return tuple(values[name] for name in LABEL_ROW_FIELDS)


def dead_letter_row(message: Any, reason: str) -> tuple[Any, ...]:
    """A dead-letter table row (DEAD_LETTER_FIELDS order): source offset, reason, a storable excerpt."""
    raw = message.value()
    excerpt = None
    if raw is not None:
        excerpt = raw[: DEAD_LETTER_EXCERPT_CHARS * 4].decode("utf-8", "replace")[:DEAD_LETTER_EXCERPT_CHARS]
        excerpt = excerpt.replace("\x00", "\ufffd")
    return (
        message.topic() or "",
        message.partition(),
        message.offset(),
        reason.replace("\x00", "\ufffd")[:1000],
        None if raw is None else len(raw),
        excerpt,
    )


def with_retry(
    action: Callable[[], T],
    retry_max_s: float,
    stop: threading.Event,
    on_retry: Callable[[DatabaseError, float], None] | None = None,
    first_delay_s: float = 0.25,
    max_delay_s: float = 5.0,
) -> T:
    """Run action, retrying DatabaseUnavailable with exponential backoff for up to retry_max_s.

    Gives up with DatabaseError after retry_max_s; raises _Stopped if `stop` is set while waiting.
    """
    started = time.monotonic()
    delay = first_delay_s
    while True:
        try:
            return action()
        except DatabaseUnavailable as exc:
            elapsed = time.monotonic() - started
            if elapsed >= retry_max_s:
                # Still "unavailable": callers must not mistake it for a refused row.
                raise DatabaseUnavailable(f"{exc} (gave up after {elapsed:.1f}s of retries)") from None
            wait = min(delay, retry_max_s - elapsed)
            if on_retry is not None:
                on_retry(exc, wait)
            if stop.wait(wait):
                raise _Stopped from None
            delay = min(delay * 2, max_delay_s)


class SinkRunner:
    """One sink run: a consumer-group member writing batches to a Database."""

    def __init__(
        self,
        config: FraudkitConfig,
        options: SinkOptions,
        stop: threading.Event | None = None,
        on_event: EventCallback | None = None,
        on_batch: Callable[[SinkSummary], None] | None = None,
        database: Database | None = None,
        consumer: Any = None,
        on_tick: Callable[[SinkSummary, bool], None] | None = None,
    ) -> None:
        self.config = config
        self.options = options
        self.stop = stop or threading.Event()
        self.on_event = on_event or (lambda message: None)
        self.on_batch = on_batch
        self.on_tick = on_tick  # every turn of the loop: (summary, partitions assigned), for probes
        self.database = database or open_database(
            config.sink.url,
            config.sink.table,
            config.sink.labels_table,
            dead_letter_table=config.sink.dead_letter_table,
        )
        self._consumer = consumer
        # Set for the consumer this runner makes: a lost cluster ends the run after connect_timeout_s.
        self.watch: kafka.BrokerWatch | None = None
        self.summary = SinkSummary(database=self.database.url.describe(), table=self.database.table)
        self.bounds = options.bounds()

    # -- set-up ----------------------------------------------------------------------------------
    def _topics(self) -> list[str]:
        topics = [self.config.topics.verdicts]
        if self.config.sink.labels:
            topics.append(self.config.topics.labels)
        return topics

    def _on_assign(self, consumer: Any, partitions: list[Any]) -> None:
        # Only the first assignment starts the idle clock; a rebalance later is not activity.
        if not self.bounds.owns_partitions:
            self.bounds.assigned(True)

    def _on_retry(self, exc: DatabaseError, wait: float) -> None:
        self.summary.database_retries += 1
        self.on_event(f"{exc}; retrying in {wait:.1f}s")

    def _open(self) -> Any:
        with_retry(self.database.ensure_schema, self.config.sink.retry_max_s, self.stop, self._on_retry)
        if self._consumer is not None:
            return self._consumer
        kafka.ensure_topics(self.config, self._topics())
        self.watch = kafka.BrokerWatch(self.config)
        consumer = kafka.make_consumer(self.config, self.config.sink.group_id, error_cb=self.watch.on_error)
        consumer.subscribe(self._topics(), on_assign=self._on_assign)
        return consumer

    # -- the loop --------------------------------------------------------------------------------
    def run(self) -> SinkSummary:
        """Consume, write and commit until a bound is reached or stop is set."""
        started = time.monotonic()
        self.bounds = self.options.bounds()
        consumer = None
        try:
            consumer = self._open()
            if self._consumer is not None:
                self.bounds.assigned(True)
            self.summary.stopped_by = self._loop(consumer)
        except _Stopped:
            self.summary.stopped_by = "stopped"
        finally:
            self.summary.elapsed_s = time.monotonic() - started
            if consumer is not None:
                # Closing must not hide the run's own error, nor hang on a lost broker.
                kafka.close_within(
                    consumer, self.config.kafka.close_timeout_s, "Kafka consumer", self.on_event
                )
            self.database.close()
        return self.summary

    def _check_assignment(self) -> None:
        """BrokerError when --until-idle waited past its deadline for a first partition assignment."""
        bounds = self.bounds
        if bounds.until_idle_s is None or bounds.owns_partitions:
            return
        waited = bounds.clock() - bounds.started
        if waited > self.config.kafka.connect_timeout_s + bounds.until_idle_s:
            raise BrokerError(
                f"consumer group {self.config.sink.group_id} got no partition assignment from "
                f"{self.config.kafka.bootstrap_servers} within {waited:.0f}s"
            )

    def _loop(self, consumer: Any) -> StopReason:
        bounds = self.bounds
        batch_size = self.config.sink.batch_size
        timeout = self.config.sink.poll_timeout_s
        if bounds.until_idle_s is not None:
            timeout = min(timeout, max(bounds.until_idle_s / 2, 0.05))
        while not self.stop.is_set():
            if self.on_tick is not None:
                self.on_tick(self.summary, bounds.owns_partitions)
            reason = bounds.reached()
            if reason:
                return reason
            if self.watch is not None:
                self.watch.check()
            self._check_assignment()
            try:
                messages = consumer.consume(
                    num_messages=bounds.remaining_messages(batch_size), timeout=timeout
                )
            except kafka.KafkaException as exc:
                raise BrokerError(f"consuming {', '.join(self._topics())} failed: {exc}") from None
            if messages:
                self._process(consumer, messages)
        return "stopped"

    def _process(self, consumer: Any, messages: Sequence[Any]) -> None:
        verdicts: list[tuple[Any, ...]] = []
        labels: list[tuple[Any, ...]] = []
        # Where each row came from, for the dead-letter table if the database refuses it.
        verdict_sources: list[Any] = []
        label_sources: list[Any] = []
        dead_letters: list[tuple[Any, ...]] = []
        offsets: dict[tuple[str, int], int] = {}
        consumed = 0
        for message in messages:
            error = message.error()
            if error is not None:
                if error.code() == kafka.KafkaError._PARTITION_EOF:
                    continue
                if error.fatal():
                    raise BrokerError(f"Kafka consumer failed: {error.str()}")
                self.on_event(f"Kafka: {error.str()}")
                continue
            consumed += 1
            topic = message.topic()
            offsets[(topic, message.partition())] = message.offset() + 1
            try:
                if topic == self.config.topics.verdicts:
                    verdicts.append(verdict_row(decode_json(message.value())))
                    verdict_sources.append(message)
                else:
                    labels.append(label_row(message.value()))
                    label_sources.append(message)
            except InvalidMessage as exc:
                self.summary.invalid += 1
                if len(self.summary.invalid_examples) < 5:
                    self.summary.invalid_examples.append(
                        f"{topic}[{message.partition()}]@{message.offset()}: {exc}"
                    )
                dead_letters.append(dead_letter_row(message, str(exc)))
        if not consumed:
            return
        result = WriteResult()
        try:
            if verdicts or labels:
                try:
                    result = self._retrying(lambda: self.database.write_batch(verdicts, labels))
                except DatabaseUnavailable:
                    raise
                except DatabaseError as exc:
                    # Refused, not unreachable: some row is bad in a way validation did not catch.
                    # Write what can be written; the rows refused alone become dead letters.
                    result, refused = self._isolate(
                        list(zip(verdicts, verdict_sources, strict=True)),
                        list(zip(labels, label_sources, strict=True)),
                        exc,
                    )
                    dead_letters.extend(refused)
            if dead_letters:
                self._retrying(lambda: self.database.write_dead_letters(dead_letters))
        except _Stopped:
            self.summary.uncommitted += consumed
            raise
        except DatabaseError as exc:
            # Nothing of this batch is committed to Kafka, so the next run reads it again.
            raise type(exc)(
                f"{exc}; {consumed} message(s) of the last batch stay uncommitted in Kafka "
                "and will be written by the next run"
            ) from None
        self._commit(consumer, offsets, consumed)
        summary = self.summary
        summary.messages += consumed
        self.bounds.count(consumed)
        summary.verdicts += len(verdicts)
        summary.inserted += result.inserted
        summary.duplicates += result.duplicates
        summary.labels += len(labels)
        summary.dead_letters += len(dead_letters)
        summary.batches += 1
        if self.on_batch is not None:
            self.on_batch(summary)

    def _retrying(self, action: Callable[[], T]) -> T:
        return with_retry(action, self.config.sink.retry_max_s, self.stop, self._on_retry)

    def _isolate(
        self,
        verdicts: list[tuple[tuple[Any, ...], Any]],
        labels: list[tuple[tuple[Any, ...], Any]],
        first_error: DatabaseError,
    ) -> tuple[WriteResult, list[tuple[Any, ...]]]:
        """Write a refused batch by halves until each refused row stands alone; those are returned.

        A batch whose every row is refused on its own is not a poison row but a database that
        refuses everything (permissions, a changed table): that raises the first error.
        """
        total = WriteResult()
        refused: list[tuple[Any, ...]] = []
        pending: list[tuple[list[Any], list[Any]]] = [(verdicts, labels)]
        while pending:
            part_verdicts, part_labels = pending.pop()
            verdict_rows = [row for row, _ in part_verdicts]
            label_rows = [row for row, _ in part_labels]
            try:
                result = self._retrying(
                    lambda v=verdict_rows, labelled=label_rows: self.database.write_batch(v, labelled)  # type: ignore[misc]
                )
            except DatabaseUnavailable:
                raise
            except DatabaseError as exc:
                rows = len(part_verdicts) + len(part_labels)
                if rows == 1:
                    (_, source) = (part_verdicts or part_labels)[0]
                    refused.append(dead_letter_row(source, f"the database refused the row: {exc}"))
                    continue
                # Each part is strictly smaller: verdicts apart from labels, then halves.
                if part_verdicts and part_labels:
                    pending += [(part_verdicts, []), ([], part_labels)]
                elif part_verdicts:
                    middle = len(part_verdicts) // 2
                    pending += [(part_verdicts[:middle], []), (part_verdicts[middle:], [])]
                else:
                    middle = len(part_labels) // 2
                    pending += [([], part_labels[:middle]), ([], part_labels[middle:])]
                continue
            total.inserted += result.inserted
            total.duplicates += result.duplicates
            total.labels += result.labels
        if len(refused) == len(verdicts) + len(labels) > 1:
            raise first_error
        self.on_event(
            f"{len(refused)} row(s) refused by the database went to {self.database.dead_letter_table}"
        )
        return total, refused

    def _commit(self, consumer: Any, offsets: dict[tuple[str, int], int], consumed: int) -> None:
        partitions = [kafka.TopicPartition(topic, part, offset) for (topic, part), offset in offsets.items()]
        try:
            kafka.commit_within(consumer, partitions, self.config.kafka.close_timeout_s)
        except (kafka.KafkaException, BrokerError) as exc:
            # The rows are in the database; a re-delivery after this failure is a harmless no-op.
            self.summary.commit_failures += 1
            detail = exc.args[0].str() if isinstance(exc, kafka.KafkaException) and exc.args else exc
            self.on_event(f"committing Kafka offsets failed ({detail})")


def run_sink(
    config: FraudkitConfig,
    options: SinkOptions,
    stop: threading.Event | None = None,
    on_event: EventCallback | None = None,
    on_batch: Callable[[SinkSummary], None] | None = None,
    on_tick: Callable[[SinkSummary, bool], None] | None = None,
) -> SinkSummary:
    """Consume verdicts (and labels) into sink.url until a bound or a stop; return the summary."""
    return SinkRunner(config, options, stop, on_event, on_batch, on_tick=on_tick).run()
