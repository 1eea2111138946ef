"""The detector's durable state: `StateExtension` changelogs card state and restores it on assignment.

The shape of Kafka Streams' and Quix Streams' changelogged stores:

* **write**: the changed cards' state is produced to a compacted changelog topic co-partitioned
  with the transactions topic (card state of transactions partition p goes to changelog partition
  p, keyed by card id), by the loop's own producer, before the offsets it covers are committed.
  At-least-once: once per `state.commit_interval_ms`, each card changed since the last write once
  (as Kafka Streams' record cache flushes at each commit), and the commit waits for these
  acknowledgements too. Exactly-once: inside each batch's Kafka transaction (state and outputs
  commit or abort together).
* **restore**: when a partition is assigned, its changelog partition is read to its end
  (read_committed, with a deadline) before any of its messages is processed, whoever owned it
  before. Cards restored from batches that were never committed are put in the replay guard
  (`fraudkit.state.replay`), so the re-delivered rows are not counted twice.
* **revoke**: a revoked partition's cards are parked; re-assigned to us in the same rebalance
  they are kept as they are, otherwise dropped (the next owner restores them).

Terminal labels are snapshotted (`fraudkit.state.snapshot`); the restore of a partition does not
wait for them. The choice and its sizes are written down in docs/scaling.md.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from fraudkit.config import FraudkitConfig
from fraudkit.detect import DetectContext, DetectExtension
from fraudkit.errors import BrokerError, DataError
from fraudkit.features.spec import NEVER_MS
from fraudkit.schema import Label, Transaction
from fraudkit.state.codec import InvalidStateRecord, decode_card, encode_card, spec_fingerprint
from fraudkit.state.replay import GuardedFeatures
from fraudkit.state.snapshot import TerminalSnapshots

if TYPE_CHECKING:
    from fraudkit.features.online import OnlineFeatures
    from fraudkit.stream.kafka import Consumer, Message, Producer

RESTORE_BATCH = 10_000
MAX_REASONS_LOGGED = 5


def changelog_topic(config: FraudkitConfig) -> str:
    """The card-state changelog's name: state.changelog_topic, or `<transactions>.state-changelog`."""
    return config.state.changelog_topic or f"{config.topics.transactions}.state-changelog"


class StateExtension(DetectExtension):
    """Changelogged card state and terminal-label snapshots for one detector (see the module doc)."""

    def __init__(self, config: FraudkitConfig) -> None:
        self.config = config
        self.topic = changelog_topic(config)
        self.snapshots = TerminalSnapshots(config.state.snapshot_url, config.topics.labels)
        self.partition_cards: dict[int, set[str | None]] = {}
        self.parked: set[int] = set()
        self.figures: dict[str, Any] = {
            "changelog_topic": self.topic,
            "restores": 0,
            "restored_cards": 0,
            "restore_records": 0,
            "restore_s": 0.0,
            "restore_cards_per_s": None,
            "restoring": None,
            "replay_guarded_cards": 0,
            "replayed_rows": 0,
            "invalid_records": 0,
            "changelog_records": 0,
            "terminal_labels_restored": 0,
            "snapshots_written": 0,
        }
        self.context: DetectContext | None = None
        self._fingerprint = 0
        self._next_snapshot = 0.0
        self._features: GuardedFeatures | None = None
        self._reasons_logged = 0
        self._early_log: list[str] = []
        # Cards changed since the last seal: card id -> (its last transaction, that row's message).
        self._dirty: dict[str | None, tuple[Transaction, Any]] = {}
        # The cards a started seal writes (begin_seal), and how many of them seal_step has taken.
        self._sealing: list[str | None] = []
        self._sealed_upto = 0

    # -- set-up -------------------------------------------------------------------------------

    def restore_labels(self, features: OnlineFeatures, partitions: list[int]) -> dict[int, int] | None:
        try:
            snapshot = self.snapshots.load(features.spec)
        except DataError as exc:
            self._log(f"{exc}; terminal labels are re-read from what the labels topic still holds")
            return None
        if snapshot is None:
            return None
        observe = features.observe_label
        for terminal_id, event_time, label in zip(
            snapshot.terminals, snapshot.times, snapshot.labels, strict=True
        ):
            observe(Label("", event_time, label, terminal_id=terminal_id))
        self.figures["terminal_labels_restored"] = len(snapshot.times)
        self._log(
            f"restored {len(snapshot.times):,} terminal labels from {self.snapshots.path}; "
            f"labels resume at offsets {dict(sorted(snapshot.offsets.items()))}"
        )
        return snapshot.offsets

    def on_start(self, context: DetectContext) -> None:
        from fraudkit.stream import kafka

        self.context = context
        for message in self._early_log:
            context.log(message)
        self._early_log = []
        if context.summary is not None:
            context.summary.state = self.figures  # the same dict: status and summary see it live
        partitions = kafka.list_topics(self.config).get(self.config.topics.transactions)
        if partitions is None:
            raise BrokerError(f"topic {self.config.topics.transactions!r} does not exist")
        kafka.ensure_changelog(self.config, self.topic, partitions)
        self._install(context)
        self._next_snapshot = time.monotonic() + self.config.state.snapshot_interval_s

    def _install(self, context: DetectContext) -> None:
        """Give the holder guarded features (state so far kept: terminal labels loaded already)."""
        holder = context.holder
        current = holder.features
        if isinstance(current, GuardedFeatures):
            self._features = current
        else:
            guarded = GuardedFeatures(holder.spec, max_cards=holder.max_cards)
            for terminal_id, times, flags in list(current.export_terminal_labels()):
                for event_time, flag in zip(times, flags, strict=True):
                    guarded.observe_label(Label("", event_time, flag, terminal_id=terminal_id))
            for card_id in current.card_ids():
                state = current.export_card(card_id)
                if state is not None:
                    guarded.import_card(card_id, state)
            holder.features = guarded
            self._features = guarded
        self._fingerprint = spec_fingerprint(holder.spec)

    def _current(self) -> GuardedFeatures:
        """The serving features; after a swap to another spec, guarded features for the new one."""
        assert self.context is not None and self._features is not None
        if self.context.holder.features is not self._features:
            self._install(self.context)
            self.partition_cards = {}
            self._dirty = {}  # state of the old spec: a restore under the new one skips it anyway
        return self._features

    # -- restore on assignment ----------------------------------------------------------------

    def on_assign(self, consumer: Consumer, partitions: list[int]) -> None:
        if self.context is None:
            return
        features = self._current()
        kept = [p for p in partitions if p in self.parked]
        for p in self.parked - set(partitions):
            features.drop_cards(self.partition_cards.pop(p, set()))
            features.partition_times.pop(p, None)
        self.parked = set()
        features.assigned.update(partitions)
        todo = [p for p in partitions if p not in kept]
        if todo and features.spec.use_card:
            self._restore(consumer, features, todo)

    def _restore(self, consumer: Consumer, features: GuardedFeatures, partitions: list[int]) -> None:
        from fraudkit.stream import kafka

        started = time.monotonic()
        deadline = started + self.config.state.restore_timeout_s
        committed = _committed(consumer, self.config.topics.transactions, partitions)
        reader = kafka.make_reader(
            self.config,
            **{
                "isolation.level": "read_committed",
                "enable.partition.eof": True,
                "fetch.max.bytes": 52_428_800,
                # The end of a partition is known from an empty fetch: do not let the broker sit on it.
                "fetch.wait.max.ms": 10,
            },
        )
        window_count = len(features.spec.card_windows_ms)
        cards = 0
        try:
            latest = self._read_partitions(reader, partitions, deadline)
            for partition in partitions:
                guarded: list[tuple[str | None, tuple[int, str]]] = []
                owned = self.partition_cards.setdefault(partition, set())
                for card_id, value in latest.get(partition, {}).items():
                    try:
                        record = decode_card(value, window_count)
                    except InvalidStateRecord as reason:
                        self._invalid(partition, card_id, str(reason))
                        continue
                    if record.fingerprint != self._fingerprint:
                        continue  # state of another feature spec: this one starts the card afresh
                    try:
                        features.import_card(card_id, record.state)
                    except ValueError as reason:
                        self._invalid(partition, card_id, str(reason))
                        continue
                    owned.add(card_id)
                    cards += 1
                    # Until the partition's first batch, its stream time is where its state stands.
                    last_time = record.state[0]
                    if last_time > features.partition_times.get(partition, NEVER_MS):
                        features.partition_times[partition] = last_time
                    if record.source_offset >= committed.get(partition, 0):
                        guarded.append((card_id, record.applied))
                features.guard(guarded)
                self.figures["replay_guarded_cards"] += len(guarded)
        finally:
            reader.close()
            self.figures["restoring"] = None
        seconds = time.monotonic() - started
        figures = self.figures
        figures["restores"] += 1
        figures["restored_cards"] += cards
        figures["restore_s"] = round(figures["restore_s"] + seconds, 3)
        figures["restore_cards_per_s"] = round(cards / seconds, 1) if seconds > 0 else None
        self._log(f"restored {cards:,} cards of partitions {partitions} from {self.topic} in {seconds:.2f}s")

    def _read_partitions(
        self, reader: Consumer, partitions: list[int], deadline: float
    ) -> dict[int, dict[str | None, bytes]]:
        """The latest value per card of each changelog partition, all read at once (tombstones remove)."""
        from fraudkit.stream import kafka

        latest: dict[int, dict[str | None, bytes]] = {p: {} for p in partitions}
        todo: dict[int, int] = {}  # partition -> high watermark
        starts = []
        for partition in partitions:
            tp = kafka.TopicPartition(self.topic, partition)
            try:
                low, high = kafka.watermarks(reader, tp, deadline)
            except kafka.KafkaException as exc:
                raise BrokerError(
                    f"cannot read the offsets of {self.topic}[{partition}]: {exc.args[0].str()}"
                ) from None
            if high > low:
                todo[partition] = high
                starts.append(kafka.TopicPartition(self.topic, partition, low))
        if not todo:
            return latest
        self.figures["restoring"] = sorted(todo)
        reader.assign(starts)
        message: Any
        while todo:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise BrokerError(
                    f"restoring {self.topic} partitions {sorted(todo)} took longer than "
                    f"state.restore_timeout_s={self.config.state.restore_timeout_s:g}s"
                )
            for message in reader.consume(RESTORE_BATCH, min(remaining, 0.5)):
                partition = message.partition()
                error = message.error()
                if error is not None:
                    if error.code() == kafka.KafkaError._PARTITION_EOF:
                        todo.pop(partition, None)
                        continue
                    if kafka.is_transient(error):
                        continue  # a leader moved: librdkafka fetches from the new one by itself
                    raise BrokerError(f"cannot read {self.topic}[{partition}]: {error.str()}")
                key = message.key()
                card_id = None if key is None else key.decode("utf-8", "replace")
                value = message.value()
                if value is None:
                    latest[partition].pop(card_id, None)
                else:
                    latest[partition][card_id] = value
                self.figures["restore_records"] += 1
                if partition in todo and message.offset() + 1 >= todo[partition]:
                    todo.pop(partition)
        return latest

    def _invalid(self, partition: int, card_id: str | None, reason: str) -> None:
        self.figures["invalid_records"] += 1
        if self._reasons_logged < MAX_REASONS_LOGGED:
            self._reasons_logged += 1
            self._log(
                f"skipped the state record of card {card_id!r} in {self.topic}[{partition}]: {reason} "
                "(the card starts afresh)"
            )

    def on_revoke(self, partitions: list[int], lost: bool) -> None:
        if self._features is None:
            return
        self._features.assigned.difference_update(partitions)
        if lost:
            # Someone else owns them now and may have moved on: never reuse what we hold.
            for p in partitions:
                self._features.drop_cards(self.partition_cards.pop(p, set()))
                self._features.partition_times.pop(p, None)
            gone = set(partitions)
            self._dirty = {c: e for c, e in self._dirty.items() if e[1].partition() not in gone}
        else:
            self.parked.update(partitions)

    # -- write with each batch ----------------------------------------------------------------

    def on_batch_produce(
        self,
        producer: Producer,
        transactions: Sequence[Transaction],
        sources: Sequence[Message],
        on_delivery: Callable[..., None],
    ) -> None:
        """Note the cards this batch changed (their last row, offset order); `on_seal` writes them."""
        if self._features is None:
            return
        features = self._current()  # a model with another feature spec brings new features
        if not features.spec.use_card:
            return
        last: dict[str | None, tuple[Transaction, Any]] = {}
        for tx, message in zip(transactions, sources, strict=True):
            last[tx.card_id] = (tx, message)
        guard = features.replay_guard
        dirty = self._dirty
        partition_times = features.partition_times
        for card_id, entry in last.items():
            partition = entry[1].partition()
            event_time = entry[0].event_time_ms
            if event_time > partition_times.get(partition, NEVER_MS):
                partition_times[partition] = event_time
            if card_id in guard:
                continue  # every row of it in this batch was a replay: its state did not change
            dirty[card_id] = entry
        self.figures["replayed_rows"] = features.replayed_rows

    def on_seal(self, producer: Producer, on_delivery: Callable[..., None]) -> None:
        """Write each card changed since the last seal once, with its state as of now."""
        self.begin_seal()
        self.seal_step(producer, on_delivery, float("inf"))

    def begin_seal(self) -> None:
        """Mark the cards changed so far; `seal_step` writes them (those still unwritten included)."""
        self._sealing = list(self._dirty)
        self._sealed_upto = 0

    def seal_step(self, producer: Producer, on_delivery: Callable[..., None], budget_s: float) -> bool:
        """Write the marked cards for about budget_s, each with its state and last row as of now.

        A card changed again by a later batch is written with that batch's state and row (and is
        then clean); a card dropped since (revoked partition, new feature spec) is skipped.
        """
        cards = self._sealing
        if self._features is None or not cards:
            self._sealing = []
            return True
        features = self._current()
        if not features.spec.use_card:
            self._sealing = []
            return True
        dirty = self._dirty
        export = features.export_card
        fingerprint = self._fingerprint
        topic = self.topic
        partition_cards = self.partition_cards
        produce = producer.produce
        clock = time.perf_counter
        give_up_at = clock() + budget_s
        index = self._sealed_upto
        end = len(cards)
        written = 0
        while index < end:
            card_id = cards[index]
            index += 1
            entry = dirty.pop(card_id, None)
            if entry is None:
                continue  # written meanwhile (by a full seal) or dropped
            state = export(card_id)
            if state is not None:  # None: expired since
                tx, message = entry
                partition = message.partition()
                value = encode_card(
                    fingerprint, message.offset(), (tx.event_time_ms, tx.transaction_id), state
                )
                key = None if card_id is None else card_id.encode()
                while True:
                    try:
                        produce(topic, value, key, partition=partition, on_delivery=on_delivery)
                        break
                    except BufferError:
                        producer.poll(0.05)
                owned = partition_cards.get(partition)
                if owned is None:
                    owned = partition_cards[partition] = set()
                owned.add(card_id)
                written += 1
            if not index & 31 and clock() >= give_up_at:
                break
        self.figures["changelog_records"] += written
        self._sealed_upto = index
        if index < end:
            return False
        self._sealing = []
        return True

    # -- snapshots ----------------------------------------------------------------------------

    def between_batches(self) -> None:
        now = time.monotonic()
        if now >= self._next_snapshot:
            self._next_snapshot = now + self.config.state.snapshot_interval_s
            self._snapshot()

    def on_stop(self) -> None:
        if self.context is not None:
            self._snapshot()

    def _snapshot(self) -> None:
        context = self.context
        if context is None or not context.holder.features.spec.use_terminal:
            return
        try:
            self.snapshots.write(
                context.holder.features, dict(context.label_positions), time.time_ns() // 1_000_000
            )
        except OSError as exc:
            self._log(f"cannot write the terminal-label snapshot {self.snapshots.path}: {exc}")
            return
        self.figures["snapshots_written"] += 1

    def _log(self, message: str) -> None:
        if self.context is not None:
            self.context.log(message)
        else:
            self._early_log.append(message)  # before on_start (restore_labels): logged there


def _committed(consumer: Consumer, topic: str, partitions: list[int]) -> dict[int, int]:
    """The group's committed offset per partition (0 where none)."""
    from fraudkit.stream import kafka

    wanted = [kafka.TopicPartition(topic, p) for p in partitions]
    try:
        offsets = kafka.retry_transient(
            lambda timeout_s: consumer.committed(wanted, timeout=timeout_s), time.monotonic() + 10
        )
    except kafka.KafkaException as exc:
        raise BrokerError(f"cannot read the committed offsets of {topic}: {exc.args[0].str()}") from None
    return {tp.partition: max(tp.offset, 0) for tp in offsets}
