"""The scoring loop: consume transactions in batches, decode, compute features, score, branch, verdict.

Delivery guarantees:

* at-least-once (default): the offsets of a batch are committed only after every output of that
  batch (branch copy, verdict, dead letter) is acknowledged by the broker. Commits never block the
  loop: before each batch is produced, the offsets of all earlier batches are committed if the
  producer has nothing outstanding; the loop waits only when too much is unsettled.
* exactly-once (`--exactly-once`): each batch is one Kafka transaction holding its outputs and its
  input offsets (read-process-write with the consumer group metadata, KIP-447).

Live retraining plugs in through `DetectExtension` hooks and `ModelHolder.offer()`; a new model is
installed by `ModelHolder.swap()` between batches, never during one.
"""

from __future__ import annotations

import gc
import os
import re
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from fraudkit.config import FraudkitConfig
from fraudkit.detect_codec import decode_batch, encode_verdicts
from fraudkit.detect_status import DetectStatus, LatencyHistogram, LiveQuality
from fraudkit.errors import BrokerError, ConfigError, ModelError
from fraudkit.features import FeatureSpec, OnlineFeatures
from fraudkit.schema import InvalidMessage, Label, Transaction, decode_label

if TYPE_CHECKING:
    from fraudkit.kafka import Consumer, KafkaError, Message, Producer, TopicPartition

StatusCallback = Callable[[DetectStatus], None]
LogCallback = Callable[[str], None]

# Fraud rows are explained (a backward pass); cap the cost of a pathological all-fraud batch.
MAX_EXPLAINED_PER_BATCH = 500
EXPIRE_EVERY_S = 5.0
# --until-idle waits this much longer while the detector owns no partitions (joining, rebalancing),
# so a slow group join is not mistaken for an empty topic.
JOIN_GRACE_S = 10.0
FIRST_CONNECT_S = 1.0
LABELS_PER_POLL = 5000
# At-least-once commits never wait for acknowledgements while these bounds hold (see _settle).
MAX_UNSETTLED_BATCHES = 20
MAX_UNSETTLED_S = 1.0
# While outputs await acknowledgement, the loop alternates between the consumer and the producer's
# delivery reports in slices this long.
ACK_POLL_S = 0.001


class Scorer(Protocol):
    """What the loop needs of a model: `LoadedModel` and `RuleModel` both fit."""

    version: str
    threshold: float
    feature_names: list[str]

    def score(self, X: np.ndarray) -> np.ndarray:
        """Fraud probabilities of feature rows."""
        ...

    def explain(self, X_rows: np.ndarray, k: int = 3) -> list[list[dict[str, Any]]]:
        """Top-k reason codes per row."""
        ...


class ModelHolder:
    """The serving model and its online feature state.

    Any thread may `offer()` a replacement (a retrainer, a control-topic listener); the loop calls
    `swap()` between batches, so a batch is always scored by one model. A model with the same
    feature spec keeps the feature state; a different spec starts fresh state.
    """

    def __init__(self, model: Scorer, spec: FeatureSpec, max_cards: int | None = None) -> None:
        if list(model.feature_names) != spec.names:
            raise ModelError(f"model {model.version}: its feature names do not match the feature spec")
        self.model = model
        self.spec = spec
        self.max_cards = max_cards
        self.features = OnlineFeatures(spec, max_cards=max_cards)
        self.versions: list[str] = [model.version]
        self.swaps = 0
        self.retrains = 0
        self.last_retrain: dict[str, Any] | None = None
        self._pending: tuple[Scorer, FeatureSpec] | None = None
        self._lock = threading.Lock()

    def offer(self, model: Scorer, spec: FeatureSpec | None = None) -> None:
        """Queue a model to serve from the next batch on (thread-safe; the latest offer wins)."""
        spec = spec or self.spec
        if list(model.feature_names) != spec.names:
            raise ModelError(f"model {model.version}: its feature names do not match the feature spec")
        with self._lock:
            self._pending = (model, spec)

    def swap(self) -> str | None:
        """Install the offered model, if any; returns its version. Called by the loop between batches."""
        if self._pending is None:
            return None
        with self._lock:
            pending, self._pending = self._pending, None
        if pending is None:
            return None
        model, spec = pending
        if spec.to_dict() != self.spec.to_dict():
            self.features = OnlineFeatures(spec, max_cards=self.max_cards)
            self.spec = spec
        self.model = model
        self.swaps += 1
        if model.version not in self.versions:
            self.versions.append(model.version)
        return model.version

    def record_retrain(self, outcome: dict[str, Any] | None = None) -> None:
        """Count one retraining run (whatever its outcome) for status and summary; keep the last outcome."""
        with self._lock:
            self.retrains += 1
            if outcome is not None:
                self.last_retrain = dict(outcome)


@dataclass
class DetectContext:
    """What an extension gets at start: the config, the model holder and the loop's identity."""

    config: FraudkitConfig
    holder: ModelHolder
    instance_id: str
    stop: threading.Event
    log: LogCallback


class DetectExtension:
    """Hooks into the scoring loop, all called on the loop's thread; keep them fast (hand heavy work off).

    Arrays passed to hooks belong to the loop: copy what you keep.
    """

    def on_start(self, context: DetectContext) -> None:
        """Before the first batch."""

    def between_batches(self) -> None:
        """Before each consume, just before `ModelHolder.swap()` (e.g. poll a control topic)."""

    def on_batch_scored(
        self,
        features: np.ndarray,
        transactions: Sequence[Transaction],
        scores: np.ndarray,
        model_version: str,
    ) -> None:
        """After a batch was scored (features row i belongs to transactions[i])."""

    def on_labels(self, labels: Sequence[Label]) -> None:
        """Labels just consumed from the labels topic (already applied to the feature state)."""

    def on_stop(self) -> None:
        """After the loop ended and the last batch was committed."""


@dataclass
class DetectSummary:
    """The final figures of a detector run (`--json` prints `to_dict()`)."""

    detector: str
    consumed: int = 0
    verdicts: int = 0
    fraud: int = 0
    dead_letters: int = 0
    labels: int = 0
    invalid_labels: int = 0
    processing_s: float = 0.0
    elapsed_s: float = 0.0
    latency_ms: dict[str, float | None] = field(default_factory=dict)
    model_version: str = ""
    model_versions: list[str] = field(default_factory=list)
    model_swaps: int = 0
    retrains: int = 0
    last_retrain: dict[str, Any] | None = None
    quality: dict[str, dict[str, Any]] = field(default_factory=dict)
    exactly_once: bool = False
    stopped_because: str = ""

    @property
    def legit(self) -> int:
        """Verdicts that let the transaction through."""
        return self.verdicts - self.fraud

    @property
    def throughput_per_s(self) -> float:
        """Transactions per second from the first consumed batch to the last processed one."""
        return self.consumed / self.processing_s if self.processing_s > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        """Plain data for JSON."""
        return {
            "consumed": self.consumed,
            "verdicts": self.verdicts,
            "fraud": self.fraud,
            "legit": self.legit,
            "dead_letters": self.dead_letters,
            "throughput_per_s": round(self.throughput_per_s, 1),
            "processing_s": round(self.processing_s, 3),
            "elapsed_s": round(self.elapsed_s, 3),
            "latency_ms": self.latency_ms,
            "model_version": self.model_version,
            "model_versions": self.model_versions,
            "model_swaps": self.model_swaps,
            "retrains": self.retrains,
            "last_retrain": self.last_retrain,
            "labels": self.labels,
            "invalid_labels": self.invalid_labels,
            "quality": self.quality,
            "detector": self.detector,
            "exactly_once": self.exactly_once,
            "stopped_because": self.stopped_because,
        }


@dataclass
class DetectOptions:
    """Run bounds and modes of one detector run."""

    duration_s: float | None = None
    max_transactions: int | None = None
    until_idle_s: float | None = None
    exactly_once: bool = False
    instance_id: str = ""
    status_interval_s: float = 1.0
    labels_from_beginning: bool = True
    torch_threads: int | None = 1

    def validate(self) -> None:
        """ConfigError for bounds that make no sense."""
        for name in ("duration_s", "until_idle_s", "max_transactions"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                flag = {"duration_s": "--duration", "until_idle_s": "--until-idle"}.get(
                    name, "--max-transactions"
                )
                raise ConfigError(f"{flag}: must be > 0 (got {value})")


def default_instance_id() -> str:
    """hostname-pid: unique per process, readable in verdicts."""
    return f"{socket.gethostname()}-{os.getpid()}"


def stream_spec(config: FraudkitConfig) -> FeatureSpec:
    """The feature spec for the configured dataset's fields (used by `--model rules`)."""
    from fraudkit.datasets import load_mapping

    mapping: Any = load_mapping(config.data.dataset)  # duck-typed DatasetFields
    return FeatureSpec.from_config(config.features, mapping)


def load_holder(config: FraudkitConfig, model: str) -> ModelHolder:
    """Load `current`, a version such as `v3`, or `rules`, with the feature spec it was trained on."""
    max_cards = config.detect.max_card_state
    if model == "rules":
        from fraudkit.model import RuleModel

        spec = stream_spec(config)
        return ModelHolder(RuleModel(config.detect.amount_rule_threshold, spec.names), spec, max_cards)
    from fraudkit.registry import Registry

    loaded = Registry(config.registry.path).load(model)
    stored_spec = loaded.manifest.get("feature_spec")
    spec = FeatureSpec.from_dict(stored_spec) if stored_spec else stream_spec(config)
    if spec.names != list(loaded.feature_names):
        raise ModelError(
            f"model {loaded.version}: its feature names do not match its feature spec "
            f"({len(loaded.feature_names)} vs {len(spec.names)} features)"
        )
    return ModelHolder(loaded, spec, max_cards)


def run_detect(
    config: FraudkitConfig,
    *,
    model: str | None = None,
    duration_s: float | None = None,
    max_transactions: int | None = None,
    until_idle_s: float | None = None,
    exactly_once: bool | None = None,
    instance_id: str | None = None,
    stop_event: threading.Event | None = None,
    on_status: StatusCallback | None = None,
    on_log: LogCallback | None = None,
    status_interval_s: float = 1.0,
    extensions: Sequence[DetectExtension] = (),
    holder: ModelHolder | None = None,
    torch_threads: int | None = 1,
) -> DetectSummary:
    """Run the detector until a bound is reached or `stop_event` is set; return its summary."""
    options = DetectOptions(
        duration_s=duration_s,
        max_transactions=max_transactions,
        until_idle_s=until_idle_s,
        exactly_once=config.detect.exactly_once if exactly_once is None else exactly_once,
        instance_id=instance_id or default_instance_id(),
        status_interval_s=status_interval_s,
        labels_from_beginning=config.detect.warm_labels,
        torch_threads=torch_threads,
    )
    options.validate()
    # A missing or corrupt model is reported before waiting for a broker that may never come.
    holder = holder or load_holder(config, model or config.detect.model)
    if options.torch_threads is not None and not _is_rules(holder.model):
        import torch

        # One intra-op thread: batches are small and the other core serves librdkafka and the broker.
        torch.set_num_threads(options.torch_threads)
    log = on_log or (lambda _message: None)
    from fraudkit import kafka

    wait_for_kafka(config, log)
    topics = config.topics
    kafka.ensure_topics(
        config,
        [topics.transactions, topics.legit, topics.fraud, topics.verdicts, topics.labels, topics.dead_letter],
    )
    loop = _DetectLoop(config, holder, options, stop_event or threading.Event(), on_status, log, extensions)
    return loop.run()


def wait_for_kafka(config: FraudkitConfig, log: LogCallback) -> None:
    """Wait up to kafka.connect_timeout_s for the broker, saying so within a second; BrokerError after."""
    from fraudkit import kafka

    servers = config.kafka.bootstrap_servers
    total = config.kafka.connect_timeout_s
    deadline = time.monotonic() + total
    try:
        # A short first attempt, so that a missing broker is reported at once, not after a 5 s probe.
        kafka.wait_for_broker(config, timeout_s=min(FIRST_CONNECT_S, total))
        return
    except BrokerError as exc:
        last_error = [_reason(exc)]
    remaining = deadline - time.monotonic()
    if remaining > 0:
        log(f"waiting for Kafka at {servers} (retrying with backoff, giving up in {remaining:.0f}s)")

        def waiting(left: float, error: str) -> None:
            last_error[0] = error
            log(f"still waiting for Kafka at {servers} ({error}); giving up in {left:.0f}s")

        try:
            kafka.wait_for_broker(config, timeout_s=remaining, on_retry=waiting)
            log(f"connected to Kafka at {servers}")
            return
        except BrokerError as exc:
            last_error[0] = _reason(exc)
    raise BrokerError(
        f"cannot reach Kafka at {servers} within kafka.connect_timeout_s={total:g}s (last error: {last_error[0]})"
    )


def _reason(error: BrokerError) -> str:
    """The librdkafka reason inside kafka.wait_for_broker's message."""
    match = re.search(r"\((.*); gave up after", str(error))
    return match.group(1) if match else str(error)


def _is_rules(model: Scorer) -> bool:
    return model.version == "rules"


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass
class _Batch:
    """One consumed batch, scored and encoded, ready to be produced."""

    messages: list[Message]
    offsets: dict[int, int]
    transactions: list[Transaction]
    good: list[int]
    bad: list[tuple[int, str]]
    scores: list[float]
    frauds: list[bool]
    verdicts: list[bytes]
    model_version: str
    verdict_ms: int
    produced_ms: list[int]  # of the transactions that carry one: end-to-end latency starts there


class _DetectLoop:
    """One detector process's consume → score → produce → commit cycle."""

    def __init__(
        self,
        config: FraudkitConfig,
        holder: ModelHolder,
        options: DetectOptions,
        stop: threading.Event,
        on_status: StatusCallback | None,
        log: LogCallback,
        extensions: Sequence[DetectExtension],
    ) -> None:
        from fraudkit import kafka

        self.kafka = kafka
        self.config = config
        self.holder = holder
        self.options = options
        self.stop = stop
        self.on_status = on_status
        self.log = log
        self.extensions = list(extensions)
        self.topics = config.topics
        self.detect = config.detect
        self.instance_id = options.instance_id
        self.summary = DetectSummary(detector=self.instance_id, exactly_once=options.exactly_once)
        self.latency = LatencyHistogram()
        self.recent_latency = LatencyHistogram()
        self.quality = LiveQuality(self.detect.recent_verdicts, self.detect.quality_window)
        self.assigned: set[int] = set()
        self.pending: dict[int, int] | None = None
        self.pending_batches = 0
        self.pending_since = 0.0
        # produced_ms of the batches whose verdicts are not yet known to be acknowledged: the
        # end-to-end latency ends when the loop sees the producer queue empty (an upper bound).
        self.undelivered: list[list[int]] = []
        self.delivery_errors: list[str] = []
        self.delivery_failures = 0
        self.max_event_ms: int | None = None
        self.notes: list[str] = []
        self.delivery_timeout_s = max(30.0, config.kafka.connect_timeout_s)
        # Every client reports to one watch: a lost cluster ends the loop after kafka.connect_timeout_s.
        self.watch = kafka.BrokerWatch(config)
        self.outage_logged = False
        self.consumer: Consumer = kafka.make_consumer(
            config,
            self.detect.group_id,
            error_cb=self.watch.on_error,
            **{"client.id": f"fraudkit-detect-{self.instance_id}"},
        )
        self.producer: Producer = kafka.make_producer(
            config, error_cb=self.watch.on_error, **self._producer_settings()
        )
        self.labels_consumer: Consumer | None = None
        self.in_transaction = False
        self.closing = False

    # -- set-up -------------------------------------------------------------------------------

    def _producer_settings(self) -> dict[str, Any]:
        settings: dict[str, Any] = {
            # Success is proven by an empty producer queue (see _settle): a Python callback for every
            # acknowledged message would cost ~10% of the throughput. Only failures call back.
            "delivery.report.only.error": True,
            "client.id": f"fraudkit-detect-{self.instance_id}",
        }
        # A batch's outputs are produced at once: a long linger would only delay them.
        settings["linger.ms"] = self.detect.output_linger_ms
        if self.options.exactly_once:
            settings["transactional.id"] = f"{self.detect.transactional_id}-{self.instance_id}"
            settings["enable.idempotence"] = True
        return settings

    def _open_labels(self) -> None:
        kafka = self.kafka
        # Labels are not latency-critical: few, large fetches spare the broker (and the embedded
        # broker pays for every fetch in proportion to the partition's history).
        consumer = kafka.make_consumer(
            self.config,
            f"{self.detect.group_id}-labels",
            error_cb=self.watch.on_error,
            **{"fetch.wait.max.ms": 200, "fetch.min.bytes": 1_048_576},
        )
        topic = self.topics.labels
        try:
            metadata = consumer.list_topics(topic, timeout=10)
        except kafka.KafkaException as exc:
            kafka.close_within(consumer, self.config.kafka.close_timeout_s, "labels consumer", self.log)
            raise BrokerError(f"cannot read metadata of topic {topic!r}: {exc}") from None
        partitions = sorted(metadata.topics[topic].partitions) if topic in metadata.topics else []
        start = kafka.OFFSET_BEGINNING if self.options.labels_from_beginning else kafka.OFFSET_END
        # Every detector reads every label: terminal fraud rates need all of them, and the labels
        # topic is partitioned independently of the transactions this detector owns. Nothing is
        # committed: the feature state lives in memory, so a restart re-reads what is retained.
        consumer.assign([kafka.TopicPartition(topic, p, start) for p in partitions])
        self.labels_consumer = consumer

    # -- the loop -----------------------------------------------------------------------------

    def run(self) -> DetectSummary:
        options = self.options
        started = time.monotonic()
        self.started = started
        deadline = started + options.duration_s if options.duration_s else None
        remaining = options.max_transactions
        self.last_activity = started
        self.first_batch_at: float | None = None
        self.last_batch_at = started
        self._status_at = started
        self._status_consumed = 0
        self._batch_times: list[float] = []
        next_expire = started + EXPIRE_EVERY_S
        gc_thresholds = gc.get_threshold()
        failed = False
        try:
            self._open_labels()
            self.consumer.subscribe(
                [self.topics.transactions],
                on_assign=self._on_assign,
                on_revoke=self._on_revoke,
                on_lost=self._on_lost,
            )
            if options.exactly_once:
                self._transaction_call(
                    "initialise transactions", self.producer.init_transactions, self.delivery_timeout_s
                )
            context = DetectContext(self.config, self.holder, self.instance_id, self.stop, self.log)
            for extension in self.extensions:
                extension.on_start(context)
            # Long-lived state (model, feature state) is frozen out of the collector, and young
            # collections run less often: the hot loop makes many short-lived containers, few cycles.
            gc.collect()
            gc.freeze()
            gc.set_threshold(max(gc_thresholds[0], 20_000), gc_thresholds[1], gc_thresholds[2])
            reason = "stopped"
            # Idle time counts from here: set-up (the collection above) is not idleness.
            self.last_activity = max(self.last_activity, time.monotonic())
            while True:
                if self.stop.is_set():
                    reason = "stopped"
                    break
                now = time.monotonic()
                if deadline is not None and now >= deadline:
                    reason = "duration"
                    break
                if remaining is not None and remaining <= 0:
                    reason = "max_transactions"
                    break
                if options.until_idle_s is not None and self._idle_s(now) >= options.until_idle_s:
                    reason = "idle"
                    break
                self._check_broker()
                for extension in self.extensions:
                    extension.between_batches()
                swapped = self.holder.swap()
                if swapped is not None:
                    self._note(f"now serving model {swapped}")
                limit = (
                    self.detect.batch_size if remaining is None else min(self.detect.batch_size, remaining)
                )
                messages = self._consume(limit)
                if messages:
                    self._process(messages)
                    if remaining is not None:
                        remaining -= len(messages)
                else:
                    # Nothing new: commit what is acknowledged so offsets do not wait for traffic.
                    self._settle(block=False)
                self._poll_labels()
                now = time.monotonic()
                if now >= next_expire and self.max_event_ms is not None:
                    self.holder.features.expire(self.max_event_ms)
                    next_expire = now + EXPIRE_EVERY_S
                if now - self._status_at >= options.status_interval_s:
                    self._emit_status(now)
            self.summary.stopped_because = reason
        except BaseException:
            failed = True
            raise
        finally:
            gc.unfreeze()
            gc.set_threshold(*gc_thresholds)
            self._close(failed)
        self._finalise(time.monotonic())
        return self.summary

    def _close(self, failed: bool) -> None:
        """Settle, commit and close within kafka.close_timeout_s, whatever state the broker is in."""
        kafka = self.kafka
        close_by = time.monotonic() + self.config.kafka.close_timeout_s
        if failed and self.watch.lost:
            # Nothing can be committed or acknowledged without a broker: do not wait for one.
            close_by = time.monotonic()

        def left() -> float:
            return close_by - time.monotonic()

        try:
            if self.in_transaction:
                self._abort_quietly(max(kafka.MIN_CLOSE_S, left()))
            elif not failed:
                self._settle(block=True, close_by=close_by)
        finally:
            self.closing = True
            # What is not committed by now stays uncommitted (re-read after a restart): a revoke
            # during close must not wait for it again. Closing must not mask the run's own error.
            self.pending = None
            kafka.close_within(self.consumer, left(), "detector's consumer", self.log)
            if self.labels_consumer is not None:
                kafka.close_within(self.labels_consumer, left(), "labels consumer", self.log)
            kafka.close_producer(self.producer, left(), "detector's producer", self.log)
            for extension in self.extensions:
                extension.on_stop()

    def _check_broker(self) -> None:
        """Raise BrokerError once no broker has answered for kafka.connect_timeout_s; say so when it starts."""
        down = self.watch.check()
        if down is None:
            if self.outage_logged:
                self._note(f"Kafka at {self.watch.servers} answers again")
                self.outage_logged = False
            return
        if not self.outage_logged:
            self.outage_logged = True
            self._note(
                f"no broker of {self.watch.servers} answers; waiting, giving up in "
                f"{max(0.0, self.watch.timeout_s - down):.0f}s"
            )

    def _consume(self, limit: int) -> list[Message]:
        # Block only for the first message, then take what is already fetched: big batches under
        # load, no added wait at low rates.
        first = self._wait_for_first()
        if not first or limit <= 1:
            return first
        return first + self.consumer.consume(limit - 1, 0)

    def _wait_for_first(self) -> list[Message]:
        """The next message, serving delivery reports as they arrive while outputs are in flight.

        Waiting on the consumer alone would leave acknowledgements unread until the next message
        arrives: commits would lag and the measured latency (which ends at the delivery report)
        would include that wait.
        """
        consumer = self.consumer
        producer = self.producer
        timeout = self.detect.poll_timeout_s
        if self.options.exactly_once:
            return consumer.consume(1, timeout)
        deadline = time.monotonic() + timeout
        while len(producer) > 0:
            first = consumer.consume(1, 0)
            if first:
                return first
            producer.poll(ACK_POLL_S)  # returns as soon as a delivery report was served
            if time.monotonic() >= deadline:
                return []
        self._settle(block=False)  # commit (and time) what was acknowledged meanwhile
        return consumer.consume(1, max(0.0, deadline - time.monotonic()))

    # -- one batch ----------------------------------------------------------------------------

    def _process(self, messages: list[Message]) -> None:
        batch_started = time.monotonic()
        if self.first_batch_at is None:
            self.first_batch_at = batch_started
        self.last_activity = batch_started
        batch = self._score(messages)
        if batch is not None:
            if self.options.exactly_once:
                self._produce_transaction(batch)
            else:
                self._settle(block=False)
                self._produce(batch)
                self.undelivered.append(batch.produced_ms)
                if self.pending is None:
                    self.pending = dict(batch.offsets)
                    self.pending_batches = 1
                    self.pending_since = batch_started
                else:
                    self.pending.update(batch.offsets)
                    self.pending_batches += 1
            self._account(batch)
        done = time.monotonic()
        self.last_batch_at = done
        self._batch_times.append(done - batch_started)

    def _score(self, messages: list[Message]) -> _Batch | None:
        consumed_ms = _now_ms()
        usable: list[Message] = []
        values: list[bytes | None] = []
        offsets: dict[int, int] = {}
        message: Any
        for message in messages:
            error = message.error()
            if error is None:
                usable.append(message)
                values.append(message.value())
                offsets[message.partition()] = message.offset() + 1
            else:
                self._consumer_error(error)
        if not usable:
            return None
        transactions, good, bad = decode_batch(values)
        holder = self.holder
        model = holder.model
        if transactions:
            features = holder.features.transform(transactions)
            scores_array = np.asarray(model.score(features), dtype=np.float64)
            fraud_array = scores_array >= model.threshold
            reasons: dict[int, list[dict[str, Any]]] = {}
            flagged = np.flatnonzero(fraud_array)
            if flagged.size and self.detect.reasons > 0:
                explained = flagged[:MAX_EXPLAINED_PER_BATCH]
                codes = model.explain(features[explained], self.detect.reasons)
                reasons = dict(zip(explained.tolist(), codes, strict=True))
            for extension in self.extensions:
                extension.on_batch_scored(features, transactions, scores_array, model.version)
            scores = scores_array.tolist()
            frauds = fraud_array.tolist()
            batch_max_event = max(tx.event_time_ms for tx in transactions)
            if self.max_event_ms is None or batch_max_event > self.max_event_ms:
                self.max_event_ms = batch_max_event
        else:
            scores, frauds, reasons = [], [], {}
        verdict_ms = _now_ms()
        verdicts = encode_verdicts(
            transactions,
            scores,
            frauds,
            reasons,
            model.threshold,
            model.version,
            consumed_ms,
            verdict_ms,
            self.instance_id,
        )
        produced_ms = [
            produced for produced in (tx.produced_ms for tx in transactions) if produced is not None
        ]
        return _Batch(
            usable,
            offsets,
            transactions,
            good,
            bad,
            scores,
            frauds,
            verdicts,
            model.version,
            verdict_ms,
            produced_ms,
        )

    def _produce(self, batch: _Batch) -> None:
        topics = self.topics
        fraud_topic = topics.fraud
        legit_topic = topics.legit
        verdict_topic = topics.verdicts
        produce = self.producer.produce
        failed = self._delivery_failed
        messages = batch.messages
        version = batch.model_version.encode()
        headers: list[tuple[str, str | bytes | None]]
        message: Any
        for index, bad_error in batch.bad:
            message = messages[index]
            headers = [
                ("error", bad_error),
                ("source_topic", message.topic() or ""),
                ("source_partition", str(message.partition())),
                ("source_offset", str(message.offset())),
            ]
            self._send(topics.dead_letter, message.value(), message.key(), headers)
        for position, (transaction, score, fraud, verdict) in enumerate(
            zip(batch.transactions, batch.scores, batch.frauds, batch.verdicts, strict=True)
        ):
            message = messages[batch.good[position]]
            headers = [("score", f"{score:.6f}"), ("model_version", version)]
            try:
                produce(
                    fraud_topic if fraud else legit_topic,
                    message.value(),
                    message.key(),
                    headers=headers,
                    on_delivery=failed,
                )
            except BufferError:
                self._send(fraud_topic if fraud else legit_topic, message.value(), message.key(), headers)
            try:
                produce(verdict_topic, verdict, transaction.card_id, on_delivery=failed)
            except BufferError:
                self._send(verdict_topic, verdict, transaction.card_id, None)

    def _send(self, topic: str, value: bytes | None, key: Any, headers: Any) -> None:
        while True:
            try:
                self.producer.produce(topic, value, key, headers=headers, on_delivery=self._delivery_failed)
                return
            except BufferError:
                # The local queue is full: serve delivery reports until there is room, never drop.
                self.producer.poll(0.05)

    def _delivery_failed(self, error: KafkaError | None, message: Message) -> None:
        if error is None:
            return
        self.delivery_failures += 1
        if len(self.delivery_errors) < 5:
            self.delivery_errors.append(f"{message.topic()}: {error.str()}")

    def _record_latency(self, produced_ms: list[int], delivered_ms: int) -> None:
        if produced_ms:
            latencies = np.subtract(delivered_ms, produced_ms)
            self.latency.add(latencies)
            self.recent_latency.add(latencies)

    def _all_delivered(self) -> None:
        """The producer queue was just seen empty: every verdict produced so far is delivered now."""
        if self.undelivered:
            delivered_ms = _now_ms()
            for produced_ms in self.undelivered:
                self._record_latency(produced_ms, delivered_ms)
            self.undelivered = []

    def _account(self, batch: _Batch) -> None:
        summary = self.summary
        summary.consumed += len(batch.messages)
        summary.verdicts += len(batch.transactions)
        summary.fraud += sum(batch.frauds)
        summary.dead_letters += len(batch.bad)
        if self.options.exactly_once:
            # The verdicts became visible when the transaction committed, just now.
            self._record_latency(batch.produced_ms, _now_ms())
        if batch.transactions:
            self.quality.remember(
                [tx.transaction_id for tx in batch.transactions],
                batch.scores,
                batch.frauds,
                batch.model_version,
            )

    # -- delivery, commits and transactions ---------------------------------------------------

    def _wait_delivered(self, close_by: float | None = None) -> bool:
        """Wait until every output is acknowledged (True); False if a stop came first (outside close)."""
        deadline = time.monotonic() + self.delivery_timeout_s
        if close_by is not None:
            deadline = min(deadline, close_by)
        while True:
            remaining = self.producer.flush(0.5)
            if remaining == 0:
                self._all_delivered()
                break
            self.watch.check()  # a lost cluster fails sooner than the delivery timeout
            if close_by is None and self.stop.is_set():
                return False  # _close settles what it can within kafka.close_timeout_s
            if time.monotonic() >= deadline:
                within = (
                    f"within kafka.close_timeout_s={self.config.kafka.close_timeout_s:g}s while stopping"
                    if close_by is not None
                    else f"after {self.delivery_timeout_s:g}s"
                )
                raise BrokerError(
                    f"{remaining:,} output message(s) not acknowledged {within}; "
                    "offsets were not committed, a restart re-processes the batch"
                )
        self._check_deliveries()
        return True

    def _check_deliveries(self) -> None:
        if self.delivery_failures:
            raise BrokerError(
                f"{self.delivery_failures} output message(s) could not be delivered "
                f"({'; '.join(self.delivery_errors)}); offsets were not committed"
            )

    def _settle(self, block: bool, close_by: float | None = None) -> None:
        """Commit the offsets of the batches produced so far once all their outputs are acknowledged.

        Without `block` this never waits: it commits only if nothing is outstanding right now, so
        acknowledgements arrive while the next batch is scored. Past MAX_UNSETTLED_BATCHES or
        MAX_UNSETTLED_S it waits, which bounds what a crash makes the group re-process.
        """
        if self.pending is None:
            return
        overdue = (
            self.pending_batches >= MAX_UNSETTLED_BATCHES
            or time.monotonic() - self.pending_since >= MAX_UNSETTLED_S
        )
        if block or overdue:
            if not self._wait_delivered(close_by):
                return
        else:
            self.producer.poll(0)
            if len(self.producer) > 0:
                return
            self._all_delivered()
            self._check_deliveries()
        offsets, self.pending = self.pending, None
        self.pending_batches = 0
        topic = self.topics.transactions
        partitions = [self.kafka.TopicPartition(topic, p, o) for p, o in offsets.items()]
        try:
            if block:
                commit_s = self.delivery_timeout_s if close_by is None else close_by - time.monotonic()
                self.kafka.commit_within(self.consumer, partitions, commit_s)
            else:
                self.consumer.commit(offsets=partitions, asynchronous=True)
        except self.kafka.KafkaException as exc:
            # A commit refused because of a rebalance only means re-processing (at-least-once).
            self._note(f"offset commit failed ({exc.args[0].str()}); those transactions may be scored again")

    def _produce_transaction(self, batch: _Batch) -> None:
        producer = self.producer
        self._transaction_call("begin a transaction", producer.begin_transaction)
        self.in_transaction = True
        try:
            self._produce(batch)
            topic = self.topics.transactions
            offsets = [self.kafka.TopicPartition(topic, p, o) for p, o in batch.offsets.items()]
            producer.send_offsets_to_transaction(
                offsets, self.consumer.consumer_group_metadata(), self.delivery_timeout_s
            )
            self._commit_transaction()
            self.in_transaction = False
        except self.kafka.KafkaException as exc:
            error = exc.args[0]
            if error.txn_requires_abort():
                self._abort_quietly()
            self.in_transaction = False
            raise BrokerError(
                f"transaction failed ({error.str()}); the batch was aborted and will be re-processed "
                "after a restart"
            ) from None
        if self.delivery_failures:
            raise BrokerError(
                f"{self.delivery_failures} output message(s) failed inside a committed transaction: "
                f"{'; '.join(self.delivery_errors)}"
            )

    def _commit_transaction(self) -> None:
        deadline = time.monotonic() + self.delivery_timeout_s
        while True:
            try:
                self.producer.commit_transaction(self.delivery_timeout_s)
                return
            except self.kafka.KafkaException as exc:
                error = exc.args[0]
                if error.retriable() and time.monotonic() < deadline:
                    continue
                raise

    def _abort_quietly(self, timeout_s: float | None = None) -> None:
        try:
            self.producer.abort_transaction(self.delivery_timeout_s if timeout_s is None else timeout_s)
        except self.kafka.KafkaException as exc:
            self.log(f"aborting the transaction failed too: {exc.args[0].str()}")

    def _transaction_call(self, what: str, call: Callable[..., Any], *args: Any) -> None:
        try:
            call(*args)
        except self.kafka.KafkaException as exc:
            error = exc.args[0]
            hint = ""
            if error.code() == self.kafka.KafkaError._FENCED:
                hint = "; another detector uses the same transactional id: give each its own --instance-id"
            raise BrokerError(f"cannot {what}: {error.str()}{hint}") from None

    # -- rebalances and errors ----------------------------------------------------------------

    def _idle_s(self, now: float) -> float:
        """Seconds without a transaction, not counting the join grace while no partitions are ours."""
        return now - self.last_activity - (0.0 if self.assigned else JOIN_GRACE_S)

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.assigned.update(p.partition for p in partitions)
        self.last_activity = time.monotonic()
        self.log(f"assigned partitions {sorted(self.assigned)} of {self.topics.transactions}")

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Settle the batches in flight while these partitions are still ours, so the next owner
        # starts exactly after them (when closing, _close has settled what it could).
        if not self.closing:
            self._settle(block=True)
        self.assigned.difference_update(p.partition for p in partitions)
        self.last_activity = time.monotonic()
        if not self.closing:
            self.log(f"revoked partitions {sorted(p.partition for p in partitions)} (rebalance)")

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # The partitions already belong to someone else: a commit would be refused. The outputs
        # still go out; the new owner re-processes from the last commit (at-least-once). While
        # closing (possibly in an abandoned close thread) _close has flushed what it could.
        if not self.closing:
            self.producer.flush(self.delivery_timeout_s)
            self._all_delivered()
        self.pending = None
        self.assigned.difference_update(p.partition for p in partitions)
        self.last_activity = time.monotonic()
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

    # -- labels -------------------------------------------------------------------------------

    def _poll_labels(self) -> None:
        consumer = self.labels_consumer
        if consumer is None:
            return
        messages = consumer.consume(LABELS_PER_POLL, 0)
        if not messages:
            return
        labels: list[Label] = []
        for message in messages:
            if message.error() is not None:
                continue
            try:
                labels.append(decode_label(message.value()))
            except InvalidMessage:
                self.summary.invalid_labels += 1
        if not labels:
            return
        features = self.holder.features
        observe = self.quality.observe
        for label in labels:
            features.observe_label(label)
            observe(label.transaction_id, label.label)
        self.summary.labels += len(labels)
        for extension in self.extensions:
            extension.on_labels(labels)

    # -- status and summary -------------------------------------------------------------------

    def _lag(self) -> int | None:
        if not self.assigned:
            return None
        kafka = self.kafka
        topic = self.topics.transactions
        try:
            positions = self.consumer.position(
                [kafka.TopicPartition(topic, p) for p in sorted(self.assigned)]
            )
            lag = 0
            for position in positions:
                _, high = self.consumer.get_watermark_offsets(position, cached=True)
                if position.offset >= 0 and high >= 0:
                    lag += max(0, high - position.offset)
            return lag
        except kafka.KafkaException:
            return None

    def status(self, now: float | None = None) -> DetectStatus:
        """A snapshot of the running loop."""
        now = time.monotonic() if now is None else now
        interval = max(now - self._status_at, 1e-9)
        summary = self.summary
        batch_ms = 1000.0 * sum(self._batch_times) / len(self._batch_times) if self._batch_times else None
        latency = self.recent_latency.summary() if self.recent_latency.total else self.latency.summary()
        return DetectStatus(
            detector=self.instance_id,
            elapsed_s=now - self.started,
            consumed=summary.consumed,
            verdicts=summary.verdicts,
            fraud=summary.fraud,
            dead_letters=summary.dead_letters,
            rate_per_s=(summary.consumed - self._status_consumed) / interval,
            lag=self._lag(),
            batch_ms=batch_ms,
            latency_ms=latency,
            model_version=self.holder.model.version,
            model_swaps=self.holder.swaps,
            retrains=self.holder.retrains,
            labels=summary.labels,
            quality=self.quality.figures(),
            partitions=sorted(self.assigned),
            cards=self.holder.features.state_counts()["cards"],
            exactly_once=self.options.exactly_once,
            notes=self._notes(),
        )

    def _notes(self) -> list[str]:
        notes = list(self.notes)
        last_retrain = self.holder.last_retrain
        if last_retrain and last_retrain.get("summary"):
            notes.append(f"last retraining: {last_retrain['summary']}")
        return notes

    def _emit_status(self, now: float) -> None:
        if self.on_status is not None:
            self.on_status(self.status(now))
        self._status_at = now
        self._status_consumed = self.summary.consumed
        self._batch_times = []
        self.recent_latency.reset()

    def _finalise(self, now: float) -> None:
        summary = self.summary
        summary.elapsed_s = now - self.started
        if self.first_batch_at is not None:
            summary.processing_s = self.last_batch_at - self.first_batch_at
        summary.latency_ms = self.latency.summary()
        summary.model_version = self.holder.model.version
        summary.model_versions = list(self.holder.versions)
        summary.model_swaps = self.holder.swaps
        summary.retrains = self.holder.retrains
        summary.last_retrain = self.holder.last_retrain
        summary.quality = {version: vars(figures) for version, figures in self.quality.figures().items()}
        if self.on_status is not None:
            self.on_status(self.status(now))
