"""The scoring loop: a short list of stage calls per turn.

    while bounds not reached:  extensions.between_batches(); holder.swap()
                               messages = committer.next_messages()
                               committer.submit(score_batch(messages))   # outputs.route inside
                               labels.poll(after_batch); tick (expiry, status)

Delivery guarantees live in the committer chosen once per run (detect/commit.py): at-least-once
commits offsets after the outputs are acknowledged; exactly-once puts each batch in a Kafka
transaction. Live retraining, rules and telemetry plug in through `DetectExtension` hooks and
`ModelHolder.offer()`; a new model is installed by `ModelHolder.swap()` between batches, never
during one.
"""

from __future__ import annotations

import gc
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from fraudkit.config import FraudkitConfig
from fraudkit.detect.commit import AckCommitter, Committer, TransactionalCommitter
from fraudkit.detect.holder import ModelHolder
from fraudkit.detect.hooks import DetectContext, DetectExtension, LogCallback
from fraudkit.detect.labels import LabelFeed
from fraudkit.detect.meter import StatusCallback, StatusMeter
from fraudkit.detect.notices import FarAheadNotice, OutageNotice, partition_lag
from fraudkit.detect.outputs import OutputRouter
from fraudkit.detect.scoring import ScoredBatch, score_batch
from fraudkit.detect.settings import DetectSettings, DetectSummary
from fraudkit.detect.status import DetectStatus, LiveQuality
from fraudkit.errors import BrokerError
from fraudkit.stream.bounds import RunBounds, StopReason
from fraudkit.stream.clock import StreamClock

if TYPE_CHECKING:
    from fraudkit.observability.detect_telemetry import DetectTelemetry
    from fraudkit.stream.kafka import BrokerWatch, Consumer, KafkaError, Message, Producer, TopicPartition

EXPIRE_EVERY_S = 5.0
# An expiry sweep runs in slices of about this much time between batches (OnlineFeatures.expire_step),
# so a large feature state never stalls the stream for a whole sweep.
EXPIRE_SLICE_S = 0.002


@dataclass
class DetectClients:
    """The Kafka clients of one detector (passed in, so tests can hand it fakes)."""

    consumer: Consumer
    producer: Producer
    labels: Consumer
    watch: BrokerWatch


class DetectLoop:
    """One detector process's consume → score → produce → commit cycle."""

    def __init__(
        self,
        config: FraudkitConfig,
        settings: DetectSettings,
        holder: ModelHolder,
        clients: DetectClients,
        stop: threading.Event,
        on_status: StatusCallback | None,
        log: LogCallback,
        extensions: Sequence[DetectExtension],
        telemetry: DetectTelemetry | None = None,
    ) -> None:
        from fraudkit.stream import kafka

        self.kafka = kafka
        self.config = config
        self.settings = settings
        self.topics = settings.topics
        self.holder = holder
        self.consumer = clients.consumer
        self.producer = clients.producer
        self.stop = stop
        self.on_status = on_status
        self.log = log
        self.extensions = list(extensions)
        self.telemetry = telemetry
        self.summary = DetectSummary(detector=settings.instance_id, exactly_once=settings.exactly_once)
        self.quality = LiveQuality(settings.recent_verdicts, settings.quality_window)
        self.meter = StatusMeter(settings, self.summary, holder, self.quality, on_status, telemetry)
        self.latency = self.meter.latency
        self.bounds = RunBounds(settings.duration_s, settings.max_transactions, settings.until_idle_s)
        self.clock = StreamClock(int(settings.max_future_skew_s * 1000))
        self.assigned: set[int] = set()
        self.notes: list[str] = []
        self.closing = False
        self.watch = clients.watch
        self.outage = OutageNotice(self.watch, self._note)
        self.far_ahead = FarAheadNotice(self.clock, settings.max_future_skew_s, self._note)
        self.router = OutputRouter(self.producer, settings, self.summary, self.extensions)
        committer_class = TransactionalCommitter if settings.exactly_once else AckCommitter
        self.committer: Committer = committer_class(
            self.consumer,
            self.producer,
            self.router,
            settings,
            self.meter.record_latency,
            self._note,
            self.watch,
            stop,
        )
        self.labels = LabelFeed(clients.labels, settings, holder, self.quality, self.summary, self.extensions)
        self.labels_consumer = clients.labels
        self._next_expire = time.monotonic() + EXPIRE_EVERY_S
        self._gc_thresholds = gc.get_threshold()
        if telemetry is not None:
            telemetry.bind(self.summary, self.latency, holder)

    # -- the loop -----------------------------------------------------------------------------

    def run(self) -> DetectSummary:
        """Run until a bound is reached or stop is set; return the summary."""
        failed = False
        try:
            self._start()
            while (reason := self._stop_reason()) is None:
                self._between_batches()
                messages = self.committer.next_messages(
                    self.bounds.remaining_messages(self.settings.batch_size)
                )
                if messages:
                    self._process(messages)
                else:
                    # Nothing new: commit what is acknowledged so offsets do not wait for traffic.
                    self.committer.settle(block=False)
                self.labels.poll(after_batch=len(messages))
                self._tick()
            self.summary.stopped_because = reason
        except BaseException:
            failed = True
            raise
        finally:
            self._close(failed)
        self._finalise(time.monotonic())
        return self.summary

    def _start(self) -> None:
        self.meter.start()
        self.bounds.restart()
        self.labels.open()
        self.consumer.subscribe(
            [self.topics.transactions],
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_lost,
        )
        self.committer.start()
        context = DetectContext(
            self.config,
            self.holder,
            self.settings.instance_id,
            self.stop,
            self.log,
            self.summary,
            self.labels.positions,
        )
        for extension in self.extensions:
            extension.on_start(context)
        self.labels.catch_up(self.stop, self._note)
        # Long-lived state (model, feature state) is frozen out of the collector, and young
        # collections run less often: the hot loop makes many short-lived containers, few cycles.
        gc.collect()
        gc.freeze()
        gc.set_threshold(max(self._gc_thresholds[0], 20_000), *self._gc_thresholds[1:])
        # Idle time counts from here: set-up (the collection above) is not idleness. No partition is
        # ours before the group's first assignment: the idle clock gets the join grace until then.
        self.bounds.assigned(bool(self.assigned))

    def _stop_reason(self) -> StopReason | None:
        if self.stop.is_set():
            return "stopped"
        return self.bounds.reached()

    def _between_batches(self) -> None:
        self.outage.check()
        for extension in self.extensions:
            extension.between_batches()
        swapped = self.holder.swap()
        if swapped is not None:
            self._note(f"now serving model {swapped}")

    def _process(self, messages: list[Message]) -> None:
        batch_started = time.monotonic()
        self.bounds.count(len(messages))
        batch = score_batch(
            messages,
            self.holder,
            self.settings,
            self.clock,
            self.extensions,
            self._consumer_error,
        )
        if batch is not None:
            self.far_ahead.check()
            self.committer.submit(batch)
            self._account(batch)
        done = time.monotonic()
        self.meter.batch(batch_started, done)
        if self.telemetry is not None:
            self.telemetry.batch_processed(done - batch_started, batch.bad if batch is not None else ())

    def _tick(self) -> None:
        now = time.monotonic()
        if (
            now >= self._next_expire
            and self.clock.now_ms is not None
            and self.holder.features.expire_step(self.clock.now_ms, EXPIRE_SLICE_S)
        ):
            self._next_expire = now + EXPIRE_EVERY_S
            # The state that survived the sweep is long-lived: out of the collector's scans.
            gc.freeze()
        if self.meter.due(now):
            self._emit_status(now)

    def _close(self, failed: bool) -> None:
        """Settle, commit and close within kafka.close_timeout_s, whatever state the broker is in."""
        kafka = self.kafka
        gc.unfreeze()
        gc.set_threshold(*self._gc_thresholds)
        close_by = time.monotonic() + self.config.kafka.close_timeout_s
        if failed and self.watch.lost:
            # Nothing can be committed or acknowledged without a broker: do not wait for one.
            close_by = time.monotonic()

        def left() -> float:
            return close_by - time.monotonic()

        try:
            self.committer.close(failed, close_by)
        finally:
            self.closing = True
            # What is not committed by now stays uncommitted (re-read after a restart): a revoke
            # during close must not wait for it again. Closing must not mask the run's own error.
            self.committer.forget()
            kafka.close_within(self.consumer, left(), "detector's consumer", self.log)
            kafka.close_within(self.labels_consumer, left(), "labels consumer", self.log)
            kafka.close_producer(self.producer, left(), "detector's producer", self.log)
            for extension in self.extensions:
                extension.on_stop()

    def _account(self, batch: ScoredBatch) -> None:
        summary = self.summary
        summary.consumed += len(batch.messages)
        summary.verdicts += len(batch.transactions) - len(batch.refused)
        summary.fraud += sum(batch.frauds)
        summary.dead_letters += len(batch.bad)
        if batch.transactions:
            self.quality.remember(
                [tx.transaction_id for tx in batch.transactions],
                batch.scores,
                batch.frauds,
                batch.model_version,
            )

    # -- rebalances and errors ----------------------------------------------------------------

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.assigned.update(p.partition for p in partitions)
        for extension in self.extensions:
            extension.on_assign(consumer, [p.partition for p in partitions])
        self.bounds.assigned(bool(self.assigned))
        if self.telemetry is not None:
            self.telemetry.assigned(sorted(self.assigned))
        self.log(f"assigned partitions {sorted(self.assigned)} of {self.topics.transactions}")

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Settle the batches in flight while these partitions are still ours, so the next owner
        # starts exactly after them (when closing, _close has settled what it could).
        if not self.closing:
            self.committer.on_revoke()
        self.assigned.difference_update(p.partition for p in partitions)
        for extension in self.extensions:
            extension.on_revoke([p.partition for p in partitions], False)
        self.bounds.assigned(bool(self.assigned))
        if not self.closing:
            self.log(f"revoked partitions {sorted(p.partition for p in partitions)} (rebalance)")

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # The partitions already belong to someone else: a commit would be refused. The outputs
        # still go out; the new owner re-processes from the last commit (at-least-once). While
        # closing (possibly in an abandoned close thread) _close has flushed what it could.
        if self.closing:
            self.committer.forget()
        else:
            self.committer.on_lost()
        self.assigned.difference_update(p.partition for p in partitions)
        for extension in self.extensions:
            extension.on_revoke([p.partition for p in partitions], True)
        self.bounds.assigned(bool(self.assigned))
        if not self.closing:
            self._note(f"lost partitions {sorted(p.partition for p in partitions)} (session timed out)")

    def _note(self, message: str) -> None:
        """Log a message and keep it for the status panel."""
        self.log(message)
        self.notes.append(message)
        del self.notes[:-5]

    def _consumer_error(self, error: KafkaError) -> None:
        if error.code() == self.kafka.KafkaError._PARTITION_EOF:
            return
        if error.fatal():
            raise BrokerError(f"consumer failed: {error.str()}")
        self._note(f"consumer: {error.str()}")

    # -- status and summary -------------------------------------------------------------------

    def status(self, now: float | None = None) -> DetectStatus:
        """A snapshot of the running loop."""
        now = time.monotonic() if now is None else now
        return self.meter.snapshot(
            now,
            self.assigned,
            partition_lag(self.consumer, self.topics.transactions, self.assigned),
            list(self.notes),
        )

    def _emit_status(self, now: float) -> None:
        if self.on_status is not None or self.telemetry is not None:
            status = self.status(now)
            if self.on_status is not None:
                self.on_status(status)
        self.meter.emitted(now)

    def _finalise(self, now: float) -> None:
        self.meter.finalise(now)
        if self.on_status is not None:
            self.on_status(self.status(now))
