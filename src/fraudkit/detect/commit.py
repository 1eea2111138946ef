"""Two ways to commit a batch, one protocol (chosen once per run):

* `AckCommitter` (at-least-once, the default): a batch's offsets are committed only after every
  output of it (branch copy, verdict, dead letter) and the durable state it changed (sealed once
  per `state.commit_interval_ms`, see `DetectExtension.on_seal`) are acknowledged. Commits never
  block the loop: before each batch is produced, the offsets of the sealed batches are committed if
  the producer has nothing outstanding; the loop waits only when too much is unsettled.
* `TransactionalCommitter` (`--exactly-once`): each batch is one Kafka transaction holding its
  outputs and its input offsets (read-process-write with the consumer group metadata, KIP-447).

Ack tracking is kept apart from transactions, as Faust keeps consumer acks apart from producer
transactions.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from fraudkit.detect.outputs import OutputRouter
from fraudkit.detect.scoring import ScoredBatch, now_ms
from fraudkit.detect.settings import DetectSettings
from fraudkit.errors import BrokerError

if TYPE_CHECKING:
    from fraudkit.stream.kafka import BrokerWatch, Consumer, Message, Producer

LatencyCallback = Callable[[list[int], int], None]
NoteCallback = Callable[[str], None]

# At-least-once commits never wait for acknowledgements while these bounds hold (see settle): as
# many messages as this many full batches (detect.batch_size), and this long. Counted in messages,
# not batches: at a moderate rate batches are small, and a count of 20 of them forced a wait for
# acknowledgements every ~200 ms at 5,000 tx/s (measured), before state.commit_interval_ms was due.
MAX_UNSETTLED_BATCHES = 20
MAX_UNSETTLED_S = 1.0
# A seal's durable state (the changed cards, ~15 ms for 1,000 at 5,000 tx/s on the project's
# machine) is produced in slices about this long between batches, so arriving messages never wait
# for a whole seal.
SEAL_SLICE_S = 0.002
# While outputs await acknowledgement, the loop alternates between the consumer and the producer's
# delivery reports in slices this long.
ACK_POLL_S = 0.001
# An exactly-once batch whose outputs the broker refuses as too large is aborted and produced
# again with those messages dead-lettered; this bounds the retries of one batch.
MAX_REFUSAL_RETRIES = 3


class Committer(Protocol):
    """How a scored batch's outputs and offsets reach Kafka."""

    def start(self) -> None:
        """Before the first batch."""

    def next_messages(self, limit: int) -> list[Message]:
        """The next messages (up to limit), serving acknowledgements while outputs are in flight."""
        ...

    def submit(self, batch: ScoredBatch) -> None:
        """Produce the batch's outputs; its offsets are committed when they are delivered."""

    def settle(self, block: bool) -> None:
        """Commit what is delivered (waiting for everything with block=True)."""

    def on_revoke(self) -> None:
        """Partitions are about to move: settle what is in flight while they are still ours."""

    def on_lost(self) -> None:
        """Partitions already moved: outputs still go out, offsets cannot be committed."""

    def close(self, failed: bool, close_by: float) -> None:
        """End of the run: settle (or abort what is open after a failure), by close_by (monotonic)."""

    def forget(self) -> None:
        """Drop what is not committed yet: it is re-read after a restart (closing, partitions lost)."""


def _first_then_fetched(consumer: Consumer, first: list[Message], limit: int) -> list[Message]:
    # Block only for the first message, then take what is already fetched: big batches under
    # load, no added wait at low rates.
    if not first or limit <= 1:
        return first
    return first + consumer.consume(limit - 1, 0)


class _CommitterBase:
    """What both committers hold: the clients, the router, the settings and the loop's callbacks."""

    def __init__(
        self,
        consumer: Consumer,
        producer: Producer,
        router: OutputRouter,
        settings: DetectSettings,
        record_latency: LatencyCallback,
        note: NoteCallback,
        watch: BrokerWatch,
        stop: threading.Event,
    ) -> None:
        from fraudkit.stream import kafka

        self.kafka = kafka
        self.consumer = consumer
        self.producer = producer
        self.router = router
        self.settings = settings
        self.record_latency = record_latency
        self.note = note
        self.watch = watch
        self.stop = stop
        self._init_state()

    def _init_state(self) -> None:
        """Each committer's own bookkeeping, set up at construction."""


@dataclass
class _Span:
    """Batches produced but not committed: the offsets to commit for them and the batches themselves."""

    offsets: dict[int, int]
    batches: list[ScoredBatch]
    since: float  # monotonic time the first of them was produced
    messages: int = 0

    def add(self, batch: ScoredBatch) -> None:
        self.offsets.update(batch.offsets)
        self.batches.append(batch)
        self.messages += len(batch.messages)

    def merge(self, later: _Span) -> None:
        """Take in a span produced after this one (its offsets are the later ones; `since` stays)."""
        self.offsets.update(later.offsets)
        self.batches.extend(later.batches)
        self.messages += later.messages


class AckCommitter(_CommitterBase):
    """At-least-once: commit offsets after the outputs' acknowledgements, without blocking the loop.

    Batches go through three spans. *Open*: produced since the last seal. At a seal (every
    `seal_interval_s`, or when a commit must happen now) the open span becomes *sealing*:
    extensions produce what must be durable with its offsets (`DetectExtension.begin_seal` and
    `seal_step`: the changed cards' state), in slices of SEAL_SLICE_S between batches (all at once
    when the commit must happen now). Then it is *sealed*: its offsets are committed once
    everything produced is acknowledged. Slices run only between batches, so each card is written
    with its state as of then, which may include later batches' rows (a restore ahead of the
    committed offsets guards against counting their replay twice: fraudkit.state.replay).
    """

    def _init_state(self) -> None:
        self.open: _Span | None = None
        self.sealing: _Span | None = None
        self.sealed: _Span | None = None
        self.max_unsettled_messages = MAX_UNSETTLED_BATCHES * self.settings.batch_size
        self.last_seal = time.monotonic()
        # produced_ms of the batches whose verdicts are not yet known to be acknowledged: the
        # end-to-end latency ends when the loop sees the producer queue empty (an upper bound).
        self.undelivered: list[list[int]] = []

    @property
    def unsettled(self) -> list[ScoredBatch]:
        """The batches produced but not yet committed (to find a refused output's source)."""
        return [batch for span in (self.sealed, self.sealing, self.open) if span for batch in span.batches]

    def start(self) -> None:
        """Nothing to prepare."""

    def next_messages(self, limit: int) -> list[Message]:
        """The next message, serving delivery reports as they arrive while outputs are in flight.

        Waiting on the consumer alone would leave acknowledgements unread until the next message
        arrives: commits would lag and the measured latency (which ends at the delivery report)
        would include that wait.
        """
        consumer = self.consumer
        producer = self.producer
        deadline = time.monotonic() + self.settings.poll_timeout_s
        first: list[Message] = []
        while len(producer) > 0 or self.sealing is not None:
            first = consumer.consume(1, 0)
            if first:
                return _first_then_fetched(consumer, first, limit)
            if self.sealing is not None:
                self._seal_step()  # nothing to score: write the next slice of the seal
                producer.poll(0)
            else:
                producer.poll(ACK_POLL_S)  # returns as soon as a delivery report was served
            if time.monotonic() >= deadline:
                return []
        self.settle(block=False)  # commit (and time) what was acknowledged meanwhile
        first = consumer.consume(1, max(0.0, deadline - time.monotonic()))
        return _first_then_fetched(consumer, first, limit)

    def submit(self, batch: ScoredBatch) -> None:
        """Commit what earlier batches got acknowledged, then produce this one's outputs.

        No seal before the routing: the feature state already holds this batch's rows.
        """
        self._commit_sealed(block=False)
        self.router.route(batch)
        self.undelivered.append(batch.produced_ms)
        if self.open is None:
            self.open = _Span({}, [], time.monotonic())
        self.open.add(batch)
        self._advance_seal(at_once=False)

    def _advance_seal(self, at_once: bool) -> None:
        """Seal the open batches when due, all at once when `at_once` or past the bound; else write
        the next slice of a seal in progress."""
        if at_once or self._overdue():
            if self.open is not None or self.sealing is not None:
                self._seal(at_once=True)
        elif self.open is not None and time.monotonic() - self.last_seal >= self.settings.seal_interval_s:
            self._seal()
        elif self.sealing is not None:
            self._seal_step()

    def _seal(self, at_once: bool = False) -> None:
        """The open batches become the sealing span (a seal still in progress is finished first)."""
        self.last_seal = time.monotonic()
        if self.sealing is not None:
            self._seal_step(float("inf"))
        span, self.open = self.open, None
        if span is None:
            return
        self.sealing = span
        self.router.begin_seal()
        self._seal_step(float("inf") if at_once else SEAL_SLICE_S)

    def _seal_step(self, budget_s: float = SEAL_SLICE_S) -> None:
        """Produce the next slice of the sealing span's durable state; once all of it is, it is sealed."""
        span = self.sealing
        if span is None or not self.router.seal_step(budget_s):
            return
        self.sealing = None
        if self.sealed is None:
            self.sealed = span
        else:
            self.sealed.merge(span)

    def _overdue(self) -> bool:
        spans = [span for span in (self.sealed, self.sealing, self.open) if span is not None]
        if not spans:
            return False
        messages = sum(span.messages for span in spans)
        return messages >= self.max_unsettled_messages or time.monotonic() - spans[0].since >= MAX_UNSETTLED_S

    def all_delivered(self) -> None:
        """The producer queue was just seen empty: every verdict produced so far is delivered now."""
        if self.undelivered:
            delivered_ms = now_ms()
            for produced_ms in self.undelivered:
                self.record_latency(produced_ms, delivered_ms)
            self.undelivered = []

    def wait_delivered(self, close_by: float | None = None) -> bool:
        """Block until every output is acknowledged (True); False if a stop came first (outside close).

        Dead letters for outputs the broker refused are produced and waited for too.
        """
        timeout_s = self.settings.delivery_timeout_s
        deadline = time.monotonic() + timeout_s
        if close_by is not None:
            deadline = min(deadline, close_by)
        while True:
            remaining = self.producer.flush(0.5)
            if remaining == 0:
                self.all_delivered()
                if not self.router.refused_outputs:
                    break
                self.router.dead_letter_refused(self.unsettled)
                continue
            self.watch.check()  # a lost cluster fails sooner than the delivery timeout
            if close_by is None and self.stop.is_set():
                return False  # the close settles what it can within kafka.close_timeout_s
            if time.monotonic() >= deadline:
                within = (
                    f"within kafka.close_timeout_s={self.settings.close_timeout_s:g}s while stopping"
                    if close_by is not None
                    else f"after {timeout_s:g}s"
                )
                raise BrokerError(
                    f"{remaining:,} output message(s) not acknowledged {within}; offsets were not "
                    "committed, a restart re-processes the batch"
                )
        self.router.check_deliveries()
        return True

    def settle(self, block: bool, close_by: float | None = None) -> None:
        """Commit the offsets of the batches produced so far once all their outputs are acknowledged.

        Called between batches: seals the open batches when the interval is up (always with
        `block`). Without `block` this never waits: it commits only if nothing is outstanding right
        now, so acknowledgements arrive while the next batch is scored. Past MAX_UNSETTLED_BATCHES
        or MAX_UNSETTLED_S it waits, which bounds what a crash makes the group re-process.
        """
        self._advance_seal(at_once=block)
        self._commit_sealed(block, close_by)

    def _commit_sealed(self, block: bool, close_by: float | None = None) -> None:
        if self.sealed is None:
            # Nothing to commit yet, but verdicts of open batches may be acknowledged already: their
            # latency ends now, not at the next seal.
            if self.undelivered:
                self.producer.poll(0)
                if len(self.producer) == 0:
                    self.all_delivered()
            return
        if block or self._overdue():
            if not self.wait_delivered(close_by):
                return
        else:
            self.producer.poll(0)
            if len(self.producer) > 0:
                return
            self.all_delivered()
            if self.router.refused_outputs:
                self.router.dead_letter_refused(self.unsettled)
                return  # committed once those dead letters are acknowledged
            self.router.check_deliveries()
        offsets = self.sealed.offsets
        self.sealed = None
        topic = self.settings.topics.transactions
        partitions = [self.kafka.TopicPartition(topic, p, o) for p, o in offsets.items()]
        try:
            # Asynchronous even when blocking (at a revoke and at the close): the outputs are
            # acknowledged already, which is what the commit must wait for. librdkafka holds a new
            # assignment until outstanding commits are answered, and the consumer's close waits for
            # them; a synchronous commit there instead could wait on the group (under KIP-848, while
            # a rebalance was pending) until kafka.close_timeout_s: measured in bench_production_month.
            self.consumer.commit(offsets=partitions, asynchronous=True)
        except self.kafka.KafkaException as exc:
            # A commit refused because of a rebalance only means re-processing (at-least-once).
            self.note(f"offset commit failed ({exc.args[0].str()}); those transactions may be scored again")

    def on_revoke(self) -> None:
        """Settle the batches in flight, so the next owner starts exactly after them."""
        self.settle(block=True)

    def on_lost(self) -> None:
        """The partitions already belong to someone else: a commit would be refused."""
        self.producer.flush(self.settings.delivery_timeout_s)
        self.all_delivered()
        self.open = self.sealing = self.sealed = None

    def close(self, failed: bool, close_by: float) -> None:
        """Settle everything on a clean stop (by close_by); after a failure nothing more is committed."""
        if not failed:
            self.settle(block=True, close_by=close_by)

    def forget(self) -> None:
        """Drop the uncommitted batches: the group re-processes them after a restart."""
        self.open = self.sealing = self.sealed = None


class TransactionalCommitter(_CommitterBase):
    """Exactly-once: each batch's outputs and offsets in one Kafka transaction."""

    def _init_state(self) -> None:
        self.in_transaction = False

    def start(self) -> None:
        """Initialise transactions (fences a dead predecessor with the same transactional id)."""
        self._call(
            "initialise transactions", self.producer.init_transactions, self.settings.delivery_timeout_s
        )

    def next_messages(self, limit: int) -> list[Message]:
        """The next messages: nothing is in flight between transactions."""
        first = self.consumer.consume(1, self.settings.poll_timeout_s)
        return _first_then_fetched(self.consumer, first, limit)

    def submit(self, batch: ScoredBatch) -> None:
        """Produce and commit the batch in one transaction (again without refused outputs if needed)."""
        for attempt in range(MAX_REFUSAL_RETRIES + 1):
            try:
                self._transaction(batch)
                break
            except self.kafka.KafkaException as exc:
                error = exc.args[0]
                if error.txn_requires_abort():
                    self.abort_quietly()
                self.in_transaction = False
                router = self.router
                refused = router.refused_sources(batch) if router.refused_outputs else {}
                if refused and error.txn_requires_abort() and attempt < MAX_REFUSAL_RETRIES:
                    # The broker refused some outputs as too large: the whole transaction was
                    # aborted; produce it again with those messages dead-lettered instead.
                    router.summary.dead_letters += len(refused)
                    batch.refused.update(refused)
                    router.forget_failures()
                    continue
                raise BrokerError(
                    f"transaction failed ({error.str()}); the batch was aborted and will be re-processed "
                    "after a restart"
                ) from None
        # The verdicts became visible when the transaction committed, just now.
        self.record_latency(batch.produced_ms, now_ms())

    def _transaction(self, batch: ScoredBatch) -> None:
        producer = self.producer
        self._call("begin a transaction", producer.begin_transaction)
        self.in_transaction = True
        self.router.route(batch)
        self.router.seal()
        topic = self.settings.topics.transactions
        offsets = [self.kafka.TopicPartition(topic, p, o) for p, o in batch.offsets.items()]
        group = self.consumer.consumer_group_metadata()
        # Retriable while the group coordinator moves (a node stopped): librdkafka says call again.
        self.kafka.retry_transient(
            lambda timeout_s: producer.send_offsets_to_transaction(offsets, group, timeout_s),
            time.monotonic() + self.settings.delivery_timeout_s,
        )
        self._commit()
        self.in_transaction = False
        router = self.router
        if router.delivery_failures:
            raise BrokerError(
                f"{router.delivery_failures} output message(s) failed inside a committed transaction: "
                f"{'; '.join(router.delivery_errors)}"
            )

    def _commit(self) -> None:
        # Retriable (a timeout, the coordinator moving): librdkafka says call commit_transaction
        # again; an error that needs an abort, or a fatal one, is raised to submit().
        producer = self.producer
        self.kafka.retry_transient(
            lambda timeout_s: producer.commit_transaction(timeout_s),
            time.monotonic() + self.settings.delivery_timeout_s,
        )

    def abort_quietly(self, timeout_s: float | None = None) -> None:
        """Abort the open transaction; a failure to abort is logged, not raised."""
        try:
            self.producer.abort_transaction(
                self.settings.delivery_timeout_s if timeout_s is None else timeout_s
            )
        except self.kafka.KafkaException as exc:
            self.note(f"aborting the transaction failed too: {exc.args[0].str()}")

    def _call(self, what: str, call: Callable[..., Any], *args: Any) -> None:
        try:
            call(*args)
        except self.kafka.KafkaException as exc:
            error = exc.args[0]
            hint = ""
            if error.code() == self.kafka.KafkaError._FENCED:
                hint = "; another detector uses the same transactional id: give each its own --instance-id"
            raise BrokerError(f"cannot {what}: {error.str()}{hint}") from None

    def settle(self, block: bool) -> None:
        """Nothing to settle: each batch committed with its transaction."""

    def on_revoke(self) -> None:
        """Nothing in flight between transactions."""

    def on_lost(self) -> None:
        """Outputs of committed transactions are delivered; wait for them."""
        self.producer.flush(self.settings.delivery_timeout_s)

    def close(self, failed: bool, close_by: float) -> None:
        """Abort a transaction left open by a failure (by close_by)."""
        if self.in_transaction:
            self.abort_quietly(max(self.kafka.MIN_CLOSE_S, close_by - time.monotonic()))

    def forget(self) -> None:
        """Nothing uncommitted outlives a transaction."""
