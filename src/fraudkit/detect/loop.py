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

import contextlib
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
from orjson import loads as orjson_loads

from fraudkit.config import FraudkitConfig
from fraudkit.detect.codec import dead_letter, decode_batch, encode_verdicts, too_large
from fraudkit.detect.status import DetectStatus, LatencyHistogram, LiveQuality
from fraudkit.errors import BrokerError, ConfigError, ModelError
from fraudkit.features import FeatureSpec, OnlineFeatures
from fraudkit.schema import InvalidMessage, Label, Transaction, decode_label
from fraudkit.stream.clock import StreamClock

if TYPE_CHECKING:
    from fraudkit.observability.detect_telemetry import DetectTelemetry
    from fraudkit.rules.language import ActiveRules
    from fraudkit.stream.kafka import Consumer, KafkaError, Message, Producer, TopicPartition

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
# An exactly-once batch whose outputs the broker refuses as too large is aborted and produced
# again with those messages dead-lettered; this bounds the retries of one batch.
MAX_REFUSAL_RETRIES = 3


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
        self.retrain_outcomes: dict[str, int] = {}  # published / rejected / failed, for metrics
        self._pending: tuple[Scorer, FeatureSpec] | None = None
        self._lock = threading.Lock()
        # Rules applied after scoring; installed between batches by RulesExtension (fraudkit.rules.live).
        self.rules: ActiveRules | None = None

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
                kind = str(outcome.get("type", "")).removeprefix("model_").removeprefix("retrain_")
                self.retrain_outcomes[kind] = self.retrain_outcomes.get(kind, 0) + 1


@dataclass
class DetectContext:
    """What an extension gets at start: the config, the model holder and the loop's identity."""

    config: FraudkitConfig
    holder: ModelHolder
    instance_id: str
    stop: threading.Event
    log: LogCallback
    # The run's summary (extensions may fill `summary.state`) and the next offset of each labels
    # partition consumed so far (what a terminal-label snapshot covers).
    summary: DetectSummary | None = None
    label_positions: dict[int, int] = field(default_factory=dict)


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

    def restore_labels(self, features: OnlineFeatures, partitions: list[int]) -> dict[int, int] | None:
        """Before the labels consumer starts: load saved label state; return where to resume per partition."""
        return None

    def on_assign(self, consumer: Consumer, partitions: list[int]) -> None:
        """Partitions of the transactions topic just assigned, before any of their messages is processed."""

    def on_revoke(self, partitions: list[int], lost: bool) -> None:
        """Partitions taken away, after their last batch was settled (not settled when `lost`)."""

    def on_batch_produce(
        self,
        producer: Producer,
        transactions: Sequence[Transaction],
        sources: Sequence[Message],
        on_delivery: Callable[..., None],
    ) -> None:
        """While a batch's outputs are produced (inside its transaction in exactly-once mode), before
        its offsets are committed; `sources[i]` is the message transactions[i] came from."""

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
    state: dict[str, Any] = field(default_factory=dict)  # durable state figures (fraudkit.state)

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
            "state": dict(self.state),
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
    from fraudkit.data.datasets import load_mapping

    mapping: Any = load_mapping(config.data.dataset)  # duck-typed DatasetFields
    return FeatureSpec.from_config(config.features, mapping)


def load_holder(config: FraudkitConfig, model: str) -> ModelHolder:
    """Load `current`, a version such as `v3`, or `rules`, with the feature spec it was trained on."""
    max_cards = config.detect.max_card_state
    if model == "rules":
        from fraudkit.model.network import RuleModel

        spec = stream_spec(config)
        return ModelHolder(RuleModel(config.detect.amount_rule_threshold, spec.names), spec, max_cards)
    from fraudkit.model.registry import Registry

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
    telemetry: DetectTelemetry | None = None,
) -> DetectSummary:
    """Run the detector until a bound is reached or `stop_event` is set; return its summary.

    `telemetry` (fraudkit.observability) gets the loop's figures for metrics, probes and drift.
    """
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
    from fraudkit.stream import kafka

    wait_for_kafka(config, log)
    topics = config.topics
    kafka.ensure_topics(
        config,
        [topics.transactions, topics.legit, topics.fraud, topics.verdicts, topics.labels, topics.dead_letter],
    )
    if config.state.enabled:
        from fraudkit.state.store import StateExtension

        # First: it installs the features the other extensions see and restores before they run.
        extensions = [StateExtension(config), *extensions]
    if telemetry is not None:
        extensions = [*extensions, telemetry]
    loop = _DetectLoop(
        config, holder, options, stop_event or threading.Event(), on_status, log, extensions, telemetry
    )
    return loop.run()


def wait_for_kafka(config: FraudkitConfig, log: LogCallback) -> None:
    """Wait up to kafka.connect_timeout_s for the broker, saying so within a second; BrokerError after."""
    from fraudkit.stream import kafka

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


def _too_large(kafka: Any, error: KafkaError) -> bool:
    """Whether a produce error means "this message is too large" (the producer's or the broker's limit)."""
    return error.code() in (
        kafka.KafkaError.MSG_SIZE_TOO_LARGE,
        kafka.KafkaError.RECORD_LIST_TOO_LARGE,
        kafka.KafkaError.INVALID_MSG_SIZE,
    )


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
    # Messages (by index) whose outputs the broker refused as too large: dead-lettered instead.
    refused: dict[int, str] = field(default_factory=dict)


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
        telemetry: DetectTelemetry | None = None,
    ) -> None:
        from fraudkit.stream import kafka

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
        self.clock = StreamClock(int(self.detect.max_future_skew_s * 1000))
        self._reported_ahead = 0
        self.max_message_bytes = self.detect.max_message_bytes
        # Outputs the broker refused as too large (topic, key, value), waiting to be dead-lettered.
        self.refused_outputs: list[tuple[str, bytes | None, bytes | None, str]] = []
        # At-least-once: the batches produced but not yet committed (to find a refused output's source).
        self.unsettled: list[_Batch] = []
        self.notes: list[str] = []
        self.delivery_timeout_s = max(30.0, config.kafka.connect_timeout_s)
        self.consumer: Consumer = kafka.make_consumer(
            config, self.detect.group_id, **{"client.id": f"fraudkit-detect-{self.instance_id}"}
        )
        self.producer: Producer = kafka.make_producer(config, **self._producer_settings())
        self.labels_consumer: Consumer | None = None
        self.label_positions: dict[int, int] = {}
        self.labels_catch_up: list[int] = []
        self.in_transaction = False
        self.closing = False
        self.telemetry = telemetry
        if telemetry is not None:
            telemetry.bind(self.summary, self.latency, holder)

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
            **{"fetch.wait.max.ms": 200, "fetch.min.bytes": 1_048_576},
        )
        topic = self.topics.labels
        try:
            metadata = consumer.list_topics(topic, timeout=10)
        except kafka.KafkaException as exc:
            consumer.close()
            raise BrokerError(f"cannot read metadata of topic {topic!r}: {exc}") from None
        partitions = sorted(metadata.topics[topic].partitions) if topic in metadata.topics else []
        start = kafka.OFFSET_BEGINNING if self.options.labels_from_beginning else kafka.OFFSET_END
        # Every detector reads every label: terminal fraud rates need all of them, and the labels
        # topic is partitioned independently of the transactions this detector owns. Nothing is
        # committed: the feature state lives in memory, so a restart re-reads what is retained.
        offsets: dict[int, int] | None = None
        for extension in self.extensions:
            offsets = extension.restore_labels(self.holder.features, partitions) or offsets
        self.label_positions.update(offsets or {})
        # Read to the end before the first batch only where we know where we start from.
        self.labels_catch_up = partitions if (offsets or self.options.labels_from_beginning) else []
        consumer.assign([kafka.TopicPartition(topic, p, (offsets or {}).get(p, start)) for p in partitions])
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
            context = DetectContext(
                self.config,
                self.holder,
                self.instance_id,
                self.stop,
                self.log,
                self.summary,
                self.label_positions,
            )
            for extension in self.extensions:
                extension.on_start(context)
            self._catch_up_labels()
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
                if now >= next_expire and self.clock.now_ms is not None:
                    self.holder.features.expire(self.clock.now_ms)
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
        try:
            if self.in_transaction:
                self._abort_quietly()
            elif not failed:
                self._settle(block=True)
        finally:
            self.closing = True
            # Closing after a broker failure must not mask that failure.
            with contextlib.suppress(Exception):
                self.consumer.close()
            if self.labels_consumer is not None:
                with contextlib.suppress(Exception):
                    self.labels_consumer.close()
            self.producer.flush(5.0 if failed else self.delivery_timeout_s)
            for extension in self.extensions:
                extension.on_stop()

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
                self.unsettled.append(batch)
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
        if self.telemetry is not None:
            self.telemetry.batch_processed(done - batch_started, batch.bad if batch is not None else ())

    def _score(self, messages: list[Message]) -> _Batch | None:
        consumed_ms = _now_ms()
        usable: list[Message] = []
        values: list[bytes | None] = []
        offsets: dict[int, int] = {}
        oversized: list[tuple[Message, str]] = []
        max_bytes = self.max_message_bytes
        message: Any
        for message in messages:
            error = message.error()
            if error is None:
                offsets[message.partition()] = message.offset() + 1
                value = message.value()
                key = message.key()
                # The key travels with every copy: it counts towards the limit too.
                size = 0 if value is None else len(value)
                if key is not None:
                    size += len(key)
                if size > max_bytes:
                    oversized.append((message, too_large(size, max_bytes)))
                    continue
                usable.append(message)
                values.append(value)
            else:
                self._consumer_error(error)
        if not usable and not oversized:
            return None
        transactions, good, bad = decode_batch(values, max_bytes)
        for message, reason in oversized:
            bad.append((len(usable), reason))
            usable.append(message)
        holder = self.holder
        model = holder.model
        rule_outcome = None
        if transactions:
            features = holder.features.transform(transactions)
            scores_array = np.asarray(model.score(features), dtype=np.float64)
            fraud_array = scores_array >= model.threshold
            if holder.rules is not None:
                rule_outcome = holder.rules.apply(transactions, features, holder.spec.names, fraud_array)
                if rule_outcome is not None:
                    fraud_array = rule_outcome.fraud
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
            clock = self.clock
            clock.observe([tx.event_time_ms for tx in transactions])
            if clock.ignored_ahead > self._reported_ahead:
                self._report_ahead()
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
            rule_outcome,
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
        refused = batch.refused
        headers: list[tuple[str, str | bytes | None]]
        message: Any
        for index, bad_error in batch.bad:
            self._dead_letter(messages[index], bad_error)
        for index, reason in refused.items():
            self._dead_letter(messages[index], reason, excerpt=True)
        kafka_exception = self.kafka.KafkaException
        for position, (transaction, score, fraud, verdict) in enumerate(
            zip(batch.transactions, batch.scores, batch.frauds, batch.verdicts, strict=True)
        ):
            index = batch.good[position]
            if refused and index in refused:
                continue
            message = messages[index]
            headers = [("score", f"{score:.6f}"), ("model_version", version)]
            branch = fraud_topic if fraud else legit_topic
            try:
                try:
                    produce(branch, message.value(), message.key(), headers=headers, on_delivery=failed)
                except BufferError:
                    self._send(branch, message.value(), message.key(), headers)
            except kafka_exception as exc:
                self._output_refused(message, branch, exc)
            try:
                try:
                    produce(verdict_topic, verdict, transaction.card_id, on_delivery=failed)
                except BufferError:
                    self._send(verdict_topic, verdict, transaction.card_id, None)
            except kafka_exception as exc:
                self._output_refused(message, verdict_topic, exc)
        if batch.transactions:
            sources = [messages[index] for index in batch.good]
            for extension in self.extensions:
                extension.on_batch_produce(self.producer, batch.transactions, sources, failed)

    def _send(self, topic: str, value: bytes | None, key: Any, headers: Any) -> None:
        while True:
            try:
                self.producer.produce(topic, value, key, headers=headers, on_delivery=self._delivery_failed)
                return
            except BufferError:
                # The local queue is full: serve delivery reports until there is room, never drop.
                self.producer.poll(0.05)

    def _dead_letter(self, message: Any, reason: str, excerpt: bool = False) -> None:
        """Produce the bounded dead letter of a consumed message (an excerpt if it is too large)."""
        source = (message.topic() or "", message.partition(), message.offset())
        value, key, headers = dead_letter(
            message.value(), message.key(), reason, source, self.max_message_bytes, excerpt
        )
        try:
            self._send(self.topics.dead_letter, value, key, headers)
        except self.kafka.KafkaException as exc:
            if excerpt or not _too_large(self.kafka, exc.args[0]):
                raise BrokerError(
                    f"cannot produce to {self.topics.dead_letter}: {exc.args[0].str()}"
                ) from None
            # Smaller than max_message_bytes but over the producer's own message.max.bytes.
            value, key, headers = dead_letter(message.value(), message.key(), reason, source, excerpt=True)
            try:
                self._send(self.topics.dead_letter, value, key, headers)
            except self.kafka.KafkaException as again:
                raise BrokerError(
                    f"cannot produce to {self.topics.dead_letter}: {again.args[0].str()}"
                ) from None

    def _output_refused(self, message: Any, topic: str, exc: Exception) -> None:
        """The producer refused an output at once: too large goes to dead letter, the rest is fatal."""
        error = exc.args[0]
        if not _too_large(self.kafka, error):
            raise BrokerError(f"cannot produce to {topic}: {error.str()}") from None
        self.summary.dead_letters += 1
        self._dead_letter(message, f"cannot copy to {topic}: {error.str()}", excerpt=True)

    def _delivery_failed(self, error: KafkaError | None, message: Message) -> None:
        if error is None:
            return
        topic = message.topic() or ""
        if topic != self.topics.dead_letter and _too_large(self.kafka, error):
            # The broker's limit is below ours: dead-letter the message instead (see _settle).
            self.refused_outputs.append((topic, message.key(), message.value(), error.str()))
            return
        self.delivery_failures += 1
        if len(self.delivery_errors) < 5:
            self.delivery_errors.append(f"{topic}: {error.str()}")

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
        summary.verdicts += len(batch.transactions) - len(batch.refused)
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

    def _wait_delivered(self) -> None:
        deadline = time.monotonic() + self.delivery_timeout_s
        while True:
            remaining = self.producer.flush(0.5)
            if remaining == 0:
                self._all_delivered()
                if not self.refused_outputs or self.options.exactly_once:
                    break
                # Dead letters for what the broker refused, then wait for those too.
                self._dead_letter_refused()
                continue
            if time.monotonic() >= deadline:
                raise BrokerError(
                    f"{remaining} output message(s) not acknowledged after {self.delivery_timeout_s:g}s; "
                    "offsets were not committed, a restart re-processes the batch"
                )
        self._check_deliveries()

    def _dead_letter_refused(self) -> None:
        """Dead-letter (as excerpts) the sources of the outputs the broker refused as too large."""
        refused, self.refused_outputs = self.refused_outputs, []
        done: set[int] = set()  # a message's branch copy and verdict may both be refused: one letter
        for topic, key, value, error in refused:
            source = self._source_of(self.unsettled, topic, key, value)
            reason = f"the broker refused the copy to {topic}: {error}"
            if source is not None:
                if id(source) in done:
                    continue
                done.add(id(source))
                self.summary.dead_letters += 1
                self._dead_letter(source, reason, excerpt=True)
            else:
                # Not found among the unsettled batches (cannot happen unless they were revoked):
                # keep what the output itself says.
                self.summary.dead_letters += 1
                excerpt_value, excerpt_key, headers = dead_letter(
                    value, key, reason, (topic, -1, -1), excerpt=True
                )
                self._send(self.topics.dead_letter, excerpt_value, excerpt_key, headers)

    def _source_of(self, batches: list[_Batch], topic: str, key: bytes | None, value: bytes | None) -> Any:
        """The consumed message an output was made from, among the unsettled batches (rare: linear)."""
        transaction_id = None
        if topic == self.topics.verdicts and value is not None:
            with contextlib.suppress(Exception):
                transaction_id = orjson_loads(value).get("transaction_id")
        for batch in reversed(batches):
            for position, index in enumerate(batch.good):
                message: Any = batch.messages[index]
                if transaction_id is not None:
                    if batch.transactions[position].transaction_id == transaction_id:
                        return message
                elif message.key() == key and message.value() == value:
                    return message
        return None

    def _refused_sources(self, batch: _Batch) -> dict[int, str]:
        """Exactly-once: which messages of `batch` had an output refused as too large, and why."""
        refused, self.refused_outputs = self.refused_outputs, []
        found: dict[int, str] = {}
        for topic, key, value, error in refused:
            source = self._source_of([batch], topic, key, value)
            if source is not None:
                index = next(i for i, message in enumerate(batch.messages) if message is source)
                found[index] = f"the broker refused the copy to {topic}: {error}"
        return found

    def _check_deliveries(self) -> None:
        if self.delivery_failures:
            raise BrokerError(
                f"{self.delivery_failures} output message(s) could not be delivered "
                f"({'; '.join(self.delivery_errors)}); offsets were not committed"
            )

    def _settle(self, block: bool) -> None:
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
            self._wait_delivered()
        else:
            self.producer.poll(0)
            if len(self.producer) > 0:
                return
            self._all_delivered()
            if self.refused_outputs:
                self._dead_letter_refused()
                return  # committed once those dead letters are acknowledged
            self._check_deliveries()
        offsets, self.pending = self.pending, None
        self.pending_batches = 0
        self.unsettled = []
        topic = self.topics.transactions
        partitions = [self.kafka.TopicPartition(topic, p, o) for p, o in offsets.items()]
        try:
            if block:
                self.consumer.commit(offsets=partitions, asynchronous=False)
            else:
                self.consumer.commit(offsets=partitions, asynchronous=True)
        except self.kafka.KafkaException as exc:
            # A commit refused because of a rebalance only means re-processing (at-least-once).
            self._note(f"offset commit failed ({exc.args[0].str()}); those transactions may be scored again")

    def _produce_transaction(self, batch: _Batch) -> None:
        for attempt in range(MAX_REFUSAL_RETRIES + 1):
            try:
                self._try_transaction(batch)
                return
            except self.kafka.KafkaException as exc:
                error = exc.args[0]
                if error.txn_requires_abort():
                    self._abort_quietly()
                self.in_transaction = False
                refused = self._refused_sources(batch) if self.refused_outputs else {}
                if refused and error.txn_requires_abort() and attempt < MAX_REFUSAL_RETRIES:
                    # The broker refused some outputs as too large: the whole transaction was
                    # aborted; produce it again with those messages dead-lettered instead.
                    self.summary.dead_letters += len(refused)
                    batch.refused.update(refused)
                    self.delivery_failures = 0
                    self.delivery_errors = []
                    continue
                raise BrokerError(
                    f"transaction failed ({error.str()}); the batch was aborted and will be re-processed "
                    "after a restart"
                ) from None

    def _try_transaction(self, batch: _Batch) -> None:
        producer = self.producer
        self._transaction_call("begin a transaction", producer.begin_transaction)
        self.in_transaction = True
        self._produce(batch)
        topic = self.topics.transactions
        offsets = [self.kafka.TopicPartition(topic, p, o) for p, o in batch.offsets.items()]
        producer.send_offsets_to_transaction(
            offsets, self.consumer.consumer_group_metadata(), self.delivery_timeout_s
        )
        self._commit_transaction()
        self.in_transaction = False
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

    def _abort_quietly(self) -> None:
        try:
            self.producer.abort_transaction(self.delivery_timeout_s)
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
        for extension in self.extensions:
            extension.on_assign(consumer, [p.partition for p in partitions])
        self.last_activity = time.monotonic()
        if self.telemetry is not None:
            self.telemetry.assigned(sorted(self.assigned))
        self.log(f"assigned partitions {sorted(self.assigned)} of {self.topics.transactions}")

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Settle the batches in flight while these partitions are still ours, so the next owner
        # starts exactly after them.
        self._settle(block=True)
        self.assigned.difference_update(p.partition for p in partitions)
        for extension in self.extensions:
            extension.on_revoke([p.partition for p in partitions], False)
        self.last_activity = time.monotonic()
        if not self.closing:
            self.log(f"revoked partitions {sorted(p.partition for p in partitions)} (rebalance)")

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # The partitions already belong to someone else: a commit would be refused. The outputs
        # still go out; the new owner re-processes from the last commit (at-least-once).
        self.producer.flush(self.delivery_timeout_s)
        self._all_delivered()
        self.pending = None
        self.unsettled = []
        self.assigned.difference_update(p.partition for p in partitions)
        for extension in self.extensions:
            extension.on_revoke([p.partition for p in partitions], True)
        self.last_activity = time.monotonic()
        self._note(f"lost partitions {sorted(p.partition for p in partitions)} (session timed out)")

    def _report_ahead(self) -> None:
        """Say (at 1, 10, 100, ... occurrences) that far-ahead event times were kept off the clock."""
        count = self.clock.ignored_ahead
        if count >= max(1, 10 * self._reported_ahead):
            self._note(
                f"{count:,} transaction(s) dated more than detect.max_future_skew_s="
                f"{self.detect.max_future_skew_s:g}s ahead of the stream were scored but did not "
                "advance its clock"
            )
            self._reported_ahead = count

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

    def _catch_up_labels(self) -> None:
        """Before the first batch, read the labels topic to its end (deadline: the delivery timeout).

        Otherwise a (re)started detector would score its first batches before it had read labels
        an uninterrupted detector already knew: terminal fraud rates, and so verdicts, would differ.
        """
        consumer = self.labels_consumer
        if consumer is None or not self.labels_catch_up:
            return
        kafka = self.kafka
        topic = self.topics.labels
        try:
            ends = {
                p: consumer.get_watermark_offsets(kafka.TopicPartition(topic, p), timeout=10)[1]
                for p in self.labels_catch_up
            }
        except kafka.KafkaException as exc:
            self._note(f"cannot read the end offsets of {topic} ({exc.args[0].str()}); not catching up")
            return
        deadline = time.monotonic() + self.delivery_timeout_s
        positions = self.label_positions
        while any(end > 0 and positions.get(p, -1) < end for p, end in ends.items()):
            if time.monotonic() >= deadline or self.stop.is_set():
                self._note(
                    f"{topic} not read to its end within {self.delivery_timeout_s:g}s; scoring starts anyway"
                )
                return
            self._poll_labels(timeout_s=0.2)

    def _poll_labels(self, timeout_s: float = 0.0) -> None:
        consumer = self.labels_consumer
        if consumer is None:
            return
        messages = consumer.consume(LABELS_PER_POLL, timeout_s)
        if not messages:
            return
        labels: list[Label] = []
        positions = self.label_positions
        message: Any
        for message in messages:
            if message.error() is not None:
                continue
            positions[message.partition()] = message.offset() + 1
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

    def _partition_lag(self) -> dict[int, int] | None:
        """Messages behind the end of each assigned partition (None without partitions or on error)."""
        if not self.assigned:
            return None
        kafka = self.kafka
        topic = self.topics.transactions
        try:
            positions = self.consumer.position(
                [kafka.TopicPartition(topic, p) for p in sorted(self.assigned)]
            )
            lag: dict[int, int] = {}
            for position in positions:
                _, high = self.consumer.get_watermark_offsets(position, cached=True)
                if position.offset >= 0 and high >= 0:
                    lag[position.partition] = max(0, high - position.offset)
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
        partition_lag = self._partition_lag()
        status = DetectStatus(
            detector=self.instance_id,
            elapsed_s=now - self.started,
            consumed=summary.consumed,
            verdicts=summary.verdicts,
            fraud=summary.fraud,
            dead_letters=summary.dead_letters,
            rate_per_s=(summary.consumed - self._status_consumed) / interval,
            lag=None if partition_lag is None else sum(partition_lag.values()),
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
            drift=self.telemetry.drift_check() if self.telemetry is not None else {},
            state=dict(summary.state),
        )
        if self.telemetry is not None:
            self.telemetry.observe_status(status, partition_lag or {})
        return status

    def _notes(self) -> list[str]:
        notes = list(self.notes)
        last_retrain = self.holder.last_retrain
        if last_retrain and last_retrain.get("summary"):
            notes.append(f"last retraining: {last_retrain['summary']}")
        return notes

    def _emit_status(self, now: float) -> None:
        if self.on_status is not None or self.telemetry is not None:
            status = self.status(now)
            if self.on_status is not None:
                self.on_status(status)
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
