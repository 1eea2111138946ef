"""The only importer of confluent_kafka: client factories, broker readiness, topic admin, delivery."""

from __future__ import annotations

import contextlib
import logging
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from confluent_kafka import (
    OFFSET_BEGINNING,
    OFFSET_END,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, NewTopic

from fraudkit.config import FraudkitConfig, KafkaValue
from fraudkit.errors import BrokerError, ConfigError

__all__ = [
    "OFFSET_BEGINNING",
    "OFFSET_END",
    "BrokerWatch",
    "Consumer",
    "DeliveryTracker",
    "KafkaError",
    "KafkaException",
    "Message",
    "Producer",
    "TopicPartition",
    "abandoned_clients",
    "all_topic_names",
    "check_client_settings",
    "close_producer",
    "close_within",
    "commit_within",
    "consumer_settings",
    "ensure_topics",
    "list_topics",
    "make_admin",
    "make_consumer",
    "make_producer",
    "make_reader",
    "produce",
    "producer_settings",
    "wait_for_broker",
]

# Defaults that suit both Tansu and Apache Kafka; anything in the YAML overrides them.
PRODUCER_DEFAULTS: dict[str, KafkaValue] = {
    # Fewer, larger record batches: the embedded broker (Tansu) pays per stored batch on every
    # fetch, so at 5,000 tx/s 10 ms kept the end-to-end p99 flat where 5 ms let it grow.
    "linger.ms": 10,
    "batch.num.messages": 10000,
    "queue.buffering.max.messages": 500000,
    "compression.type": "lz4",
    "enable.idempotence": False,
    "acks": "all",
}
CONSUMER_DEFAULTS: dict[str, KafkaValue] = {
    "enable.auto.commit": False,
    "enable.auto.offset.store": False,
    "auto.offset.reset": "earliest",
    "session.timeout.ms": 6000,
    "heartbeat.interval.ms": 1000,
    "fetch.wait.max.ms": 10,
    "queued.min.messages": 20000,
    # librdkafka's default (1000 ms) pauses a partition's prefetch for a whole second once its local
    # queue is full, which starves a fast consumer of a backlog (a 13% idle detector, measured).
    "fetch.queue.backoff.ms": 10,
}


def _settings(
    config: FraudkitConfig, role: Mapping[str, KafkaValue], extra: Mapping[str, Any]
) -> dict[str, Any]:
    settings: dict[str, Any] = {}
    settings.update(config.kafka.common)
    settings.update(role)
    settings.update({k: v for k, v in extra.items() if v is not None})
    return settings


def producer_settings(config: FraudkitConfig, **extra: Any) -> dict[str, Any]:
    """The librdkafka settings of `make_producer`: defaults < kafka.common < kafka.producer < extra."""
    return _settings(config, {**PRODUCER_DEFAULTS, **config.kafka.producer}, _dotted(extra))


# Group settings that belong to the broker under the KIP-848 protocol (group.protocol=consumer):
# librdkafka refuses a consumer that sets them, so our defaults for them are dropped there.
CLASSIC_GROUP_ONLY = ("session.timeout.ms", "heartbeat.interval.ms", "partition.assignment.strategy")


def consumer_settings(config: FraudkitConfig, group_id: str, **extra: Any) -> dict[str, Any]:
    """The librdkafka settings of `make_consumer`."""
    chosen = {**config.kafka.common, **config.kafka.consumer, **_dotted(extra)}
    defaults = dict(CONSUMER_DEFAULTS)
    if str(chosen.get("group.protocol", "classic")) == "consumer":
        for key in CLASSIC_GROUP_ONLY:
            defaults.pop(key, None)
    role = {**defaults, **config.kafka.consumer, "group.id": group_id}
    return _settings(config, role, _dotted(extra))


def make_producer(config: FraudkitConfig, **extra: Any) -> Producer:
    """A producer from kafka.common + kafka.producer (+ per-call overrides such as transactional.id).

    Pass `error_cb=watch.on_error` to let a BrokerWatch see the client's broker errors.
    """
    return _create(Producer, producer_settings(config, **extra), config)


def make_consumer(config: FraudkitConfig, group_id: str, **extra: Any) -> Consumer:
    """A consumer group member that never auto-commits: callers commit after delivery."""
    return _create(Consumer, consumer_settings(config, group_id, **extra), config)


def make_reader(config: FraudkitConfig, **extra: Any) -> Consumer:
    """A consumer for assign()-based reading that never commits and joins no real group."""
    role = {
        **CONSUMER_DEFAULTS,
        **config.kafka.consumer,
        "group.id": f"fraudkit-reader-{uuid.uuid4().hex[:12]}",
        "enable.auto.commit": False,
    }
    return _create(Consumer, _settings(config, role, _dotted(extra)), config)


def read_whole_topic(config: FraudkitConfig, topic: str, client_id: str, offset: int) -> Consumer:
    """A reader assigned every partition of `topic` at `offset` (OFFSET_BEGINNING or OFFSET_END).

    A topic that does not exist yet gives a reader with no partitions.
    """
    reader = make_reader(config, **{"client.id": client_id})
    try:
        metadata = reader.list_topics(topic, timeout=10)
    except KafkaException as exc:
        close_within(reader, config.kafka.close_timeout_s, f"reader of {topic}", KAFKA_LOGGER.warning)
        raise BrokerError(f"cannot read metadata of topic {topic!r}: {exc}") from None
    partitions = sorted(metadata.topics[topic].partitions) if topic in metadata.topics else []
    reader.assign([TopicPartition(topic, p, offset) for p in partitions])
    return reader


def make_admin(config: FraudkitConfig) -> AdminClient:
    """An admin client from kafka.common."""
    return _create(AdminClient, dict(config.kafka.common), config)


# confluent-kafka's callback settings keep their underscores.
CALLBACK_SETTINGS = frozenset({"error_cb", "stats_cb", "throttle_cb", "oauth_cb", "on_commit", "logger"})


def _dotted(extra: Mapping[str, Any]) -> dict[str, Any]:
    """Python keyword overrides use underscores; librdkafka names use dots."""
    return {
        (key if key in CALLBACK_SETTINGS else key.replace("_", ".")): value for key, value in extra.items()
    }


# librdkafka logs connection churn (e.g. "%3|...|FAIL|... Connection refused") straight to stderr;
# fraudkit reports broker problems itself (wait_for_broker, delivery errors), so route those lines
# to a logger that stays silent unless the application configures it.
LIBRDKAFKA_LOGGER = logging.getLogger("fraudkit.librdkafka")
LIBRDKAFKA_LOGGER.addHandler(logging.NullHandler())
LIBRDKAFKA_LOGGER.propagate = False


def _create(
    factory: Callable[[dict[str, Any]], Any], settings: dict[str, Any], config: FraudkitConfig
) -> Any:
    settings.setdefault("logger", LIBRDKAFKA_LOGGER)
    try:
        return factory(settings)
    except KafkaException as exc:
        raise _settings_error(exc.args[0].str(), config) from None
    except (TypeError, ValueError) as exc:
        raise _settings_error(str(exc), config) from None


_PROPERTY_IN_MESSAGE = re.compile(r'property:? "([^"]+)"')
# librdkafka reports some settings under their canonical name.
_ALIASES = {
    "request.required.acks": "acks",
    "queue.buffering.max.ms": "linger.ms",
    "compression.codec": "compression.type",
    "metadata.broker.list": "bootstrap.servers",
    "message.send.max.retries": "retries",
    "max.in.flight.requests.per.connection": "max.in.flight",
}


def _settings_error(message: str, config: FraudkitConfig) -> ConfigError:
    """A librdkafka refusal of a setting as a ConfigError naming the key where it was set."""
    match = _PROPERTY_IN_MESSAGE.search(message)
    if match is None:
        return ConfigError(f"invalid Kafka client settings: {message}")
    names = {match.group(1), _ALIASES.get(match.group(1), match.group(1))}
    sections = [
        f"kafka.{section}.{name}"
        for section in ("common", "producer", "consumer")
        for name in sorted(names)
        if name in getattr(config.kafka, section)
    ]
    return ConfigError(f"{' / '.join(sections) or match.group(1)}: {message}")


def check_client_settings(config: FraudkitConfig) -> None:
    """ConfigError (exit 2) at once for a setting librdkafka refuses, whichever client it is for.

    Builds a producer and a consumer config without bootstrap.servers, so nothing connects:
    a typo in kafka.producer must not wait for the broker (or be retried as if it were down).
    """
    for factory, settings in (
        (Producer, producer_settings(config)),
        (Consumer, consumer_settings(config, "fraudkit-settings-check")),
    ):
        settings.pop("bootstrap.servers", None)
        client = _create(factory, settings, config)
        if isinstance(client, Consumer):
            client.close()


class MetadataProbe:
    """A bare admin client for one bootstrap address, asking whether a broker answers metadata."""

    def __init__(self, bootstrap_servers: str) -> None:
        settings: dict[str, Any] = {"bootstrap.servers": bootstrap_servers, "logger": LIBRDKAFKA_LOGGER}
        self.admin = AdminClient(settings)

    def answers(self, timeout_s: float) -> tuple[bool, str]:
        """(True, "") if a metadata request lists a broker, else (False, the reason)."""
        count, reason = self.broker_count(timeout_s)
        return count > 0, reason

    def broker_count(self, timeout_s: float) -> tuple[int, str]:
        """How many brokers a metadata request lists (0 with the reason when none answer)."""
        try:
            brokers = len(self.admin.list_topics(timeout=timeout_s).brokers)
        except KafkaException as exc:
            return 0, exc.args[0].str()
        return brokers, "" if brokers else "no brokers in metadata"


def wait_for_broker(
    config: FraudkitConfig,
    timeout_s: float | None = None,
    on_retry: Callable[[float, str], None] | None = None,
) -> list[str]:
    """Block until a metadata request succeeds; raise BrokerError after the timeout. Returns topics."""
    timeout_s = config.kafka.connect_timeout_s if timeout_s is None else timeout_s
    check_client_settings(config)
    deadline = time.monotonic() + timeout_s
    admin = make_admin(config)
    delay = 0.25
    last_error = "no response"
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        try:
            metadata = admin.list_topics(timeout=max(0.1, min(remaining, 5.0)))
            if metadata.brokers:
                return sorted(metadata.topics)
            last_error = "no brokers in metadata"
        except KafkaException as exc:
            last_error = exc.args[0].str() if exc.args else str(exc)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        if on_retry is not None:
            on_retry(remaining, last_error)
        time.sleep(min(delay, remaining))
        delay = min(delay * 2, 2.0)
    raise BrokerError(
        f"cannot reach Kafka at {config.kafka.bootstrap_servers} ({last_error}; gave up after {timeout_s:g}s)",
        reason=last_error,
    )


def list_topics(config: FraudkitConfig, timeout_s: float = 10.0) -> dict[str, int]:
    """Existing topic names with their partition counts (internal topics left out)."""
    topics = _topic_metadata(config, make_admin(config), timeout_s)
    return {name: len(topic.partitions) for name, topic in topics.items() if not name.startswith("__")}


def _topic_metadata(config: FraudkitConfig, admin: AdminClient, timeout_s: float) -> dict[str, Any]:
    try:
        return dict(admin.list_topics(timeout=timeout_s).topics)
    except KafkaException as exc:
        reason = exc.args[0].str()
        raise BrokerError(
            f"cannot reach Kafka at {config.kafka.bootstrap_servers} ({reason})", reason=reason
        ) from None


def all_topic_names(config: FraudkitConfig) -> list[str]:
    """Every topic fraudkit's pipeline uses, by config name."""
    t = config.topics
    return [t.transactions, t.legit, t.fraud, t.verdicts, t.labels, t.dead_letter, t.control]


def ensure_topics(
    config: FraudkitConfig, names: Iterable[str] | None = None, timeout_s: float = 15.0
) -> list[str]:
    """Create missing topics with the configured partitions and retention; return those created."""
    wanted = list(all_topic_names(config) if names is None else names)
    existing = list_topics(config, timeout_s)
    missing = [name for name in dict.fromkeys(wanted) if name not in existing]
    if not missing:
        return []
    topics_config = config.topics
    new_topics = [
        NewTopic(
            name,
            num_partitions=(
                topics_config.transactions_partitions
                if name == topics_config.transactions
                else topics_config.partitions
            ),
            replication_factor=topics_config.replication_factor,
            config=_topic_settings(config, name),
        )
        for name in missing
    ]
    admin = make_admin(config)  # must outlive the futures, or librdkafka cancels them
    futures = admin.create_topics(new_topics, request_timeout=timeout_s)
    for name, future in futures.items():
        try:
            future.result(timeout=timeout_s)
        except KafkaException as exc:
            error = exc.args[0]
            if error.code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise BrokerError(
                    f"cannot create topic {name!r}: {error.str()}", reason=error.str()
                ) from None
    _wait_for_topics(config, missing, timeout_s)
    return missing


def _topic_settings(config: FraudkitConfig, name: str) -> dict[str, str]:
    topics = config.topics
    if name == topics.labels:
        return {"retention.ms": str(topics.labels_retention_ms)}
    return {"retention.ms": str(topics.retention_ms)}


def ensure_changelog(config: FraudkitConfig, name: str, partitions: int, timeout_s: float = 15.0) -> bool:
    """Create the compacted card-state changelog with `partitions` partitions; True if created.

    BrokerError if it exists with another partition count: a changelog must be co-partitioned with
    the topic whose state it holds (partition p's state in partition p).
    """
    existing = list_topics(config, timeout_s)
    if name in existing:
        if existing[name] != partitions:
            raise BrokerError(
                f"changelog topic {name!r} has {existing[name]} partitions, but its source topic has "
                f"{partitions}: delete it (its state is rebuilt from scratch) or set state.changelog_topic"
            )
        return False
    settings = {
        # compact keeps each card's latest state; delete drops cards idle longer than any window.
        "cleanup.policy": "compact,delete",
        "retention.ms": str(config.topics.changelog_retention_ms),
        "min.compaction.lag.ms": "0",
        "segment.ms": str(min(config.topics.changelog_retention_ms, 86_400_000)),
    }
    topic = NewTopic(
        name,
        num_partitions=partitions,
        replication_factor=config.topics.replication_factor,
        config=settings,
    )
    admin = make_admin(config)
    future = admin.create_topics([topic], request_timeout=timeout_s)[name]
    try:
        future.result(timeout=timeout_s)
    except KafkaException as exc:
        error = exc.args[0]
        if error.code() != KafkaError.TOPIC_ALREADY_EXISTS:
            raise BrokerError(f"cannot create topic {name!r}: {error.str()}") from None
    _wait_for_topics(config, [name], timeout_s)
    return True


def _wait_for_topics(config: FraudkitConfig, names: list[str], timeout_s: float) -> None:
    """Until every partition of the topics has a leader: Apache Kafka answers "not leader for
    partition" to watermark and offset requests for a moment after it created a topic."""
    deadline = time.monotonic() + timeout_s
    admin = make_admin(config)
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        topics = _topic_metadata(config, admin, max(0.1, min(remaining, 5.0)))
        if all(name in topics and _has_leaders(topics[name]) for name in names):
            return
        time.sleep(0.1)
    raise BrokerError(f"topics {names} were not visible after {timeout_s:g}s")


def _has_leaders(topic: Any) -> bool:
    partitions = topic.partitions.values()
    return (
        topic.error is None
        and bool(partitions)
        and all(p.leader >= 0 and p.error is None for p in partitions)
    )


def produce(
    producer: Producer,
    topic: str,
    value: bytes,
    key: bytes | str | None = None,
    headers: list[tuple[str, str | bytes | None]] | None = None,
    on_delivery: Callable[[KafkaError | None, Message], None] | None = None,
) -> None:
    """Produce one message; a full local queue is drained with poll() and retried, never dropped."""
    while True:
        try:
            producer.produce(topic, value, key, headers=headers, on_delivery=on_delivery)
            return
        except BufferError:
            producer.poll(0.05)


@dataclass
class DeliveryTracker:
    """Counts acknowledged and failed deliveries so callers commit only after all succeed."""

    delivered: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)

    def callback(self, error: KafkaError | None, message: Message) -> None:
        """on_delivery callback for Producer.produce."""
        if error is None:
            self.delivered += 1
        else:
            self.failed += 1
            if len(self.errors) < 10:
                self.errors.append(f"{message.topic()}: {error.str()}")

    def check(self) -> None:
        """Raise BrokerError if any delivery failed since the last reset."""
        if self.failed:
            raise BrokerError(f"{self.failed} message(s) were not delivered: {'; '.join(self.errors)}")


def flush(producer: Producer, timeout_s: float = 30.0) -> None:
    """Flush the producer; raise BrokerError if messages remain undelivered."""
    remaining = producer.flush(timeout_s)
    if remaining:
        raise BrokerError(f"{remaining} message(s) still undelivered after {timeout_s:g}s")


# What a request answers for the seconds a leader election or a coordinator move takes (a node
# died or came back): the same request then succeeds against the new leader or coordinator.
TRANSIENT_ERROR_CODES = frozenset(
    {
        KafkaError.NOT_LEADER_FOR_PARTITION,
        KafkaError.LEADER_NOT_AVAILABLE,
        KafkaError.FENCED_LEADER_EPOCH,
        KafkaError.UNKNOWN_LEADER_EPOCH,
        KafkaError.OFFSET_NOT_AVAILABLE,
        KafkaError.NOT_ENOUGH_REPLICAS,
        KafkaError.REQUEST_TIMED_OUT,
        KafkaError.NOT_COORDINATOR,
        KafkaError.COORDINATOR_NOT_AVAILABLE,
        KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
        KafkaError._WAIT_COORD,
        KafkaError._TRANSPORT,
        KafkaError._TIMED_OUT,
    }
)
RETRY_PAUSE_S = 0.25
Result = TypeVar("Result")


def is_transient(error: KafkaError) -> bool:
    """Whether the same request may succeed in a moment (never for a fatal error, nor for one that
    needs the transaction aborted first)."""
    if error.fatal() or error.txn_requires_abort():
        return False
    return error.retriable() or error.code() in TRANSIENT_ERROR_CODES


def retry_transient(call: Callable[[float], Result], deadline: float) -> Result:
    """call(timeout_s) again after transient errors until it succeeds or the monotonic deadline
    passes; a lasting error, or the last transient one at the deadline, is raised as it came."""
    while True:
        try:
            return call(max(0.1, deadline - time.monotonic()))
        except KafkaException as exc:
            if not is_transient(exc.args[0]) or time.monotonic() + RETRY_PAUSE_S >= deadline:
                raise
            time.sleep(RETRY_PAUSE_S)


def watermarks(reader: Consumer, tp: TopicPartition, deadline: float) -> tuple[int, int]:
    """Low and high offsets of a partition, retried through a leader election until the deadline."""
    return retry_transient(lambda timeout_s: reader.get_watermark_offsets(tp, timeout=timeout_s), deadline)


def topic_watermarks(reader: Consumer, topic: str, timeout_s: float) -> dict[int, tuple[int, int]]:
    """Low and high offsets per partition of a topic, read with `reader` and retried through a
    leader election until timeout_s; empty for a topic the broker does not know."""
    deadline = time.monotonic() + timeout_s
    metadata = reader.list_topics(topic, timeout=timeout_s)
    found = metadata.topics.get(topic)
    if found is None or found.error is not None:
        return {}
    return {
        partition: watermarks(reader, TopicPartition(topic, partition), deadline)
        for partition in found.partitions
    }


def high_watermarks(
    config: FraudkitConfig, topic: str, timeout_s: float = 10.0
) -> dict[int, tuple[int, int]]:
    """Low and high offsets per partition of a topic."""
    reader = make_reader(config)
    try:
        offsets = topic_watermarks(reader, topic, timeout_s)
        if not offsets:  # a topic has at least one partition
            raise BrokerError(f"unknown topic {topic!r}")
        return offsets
    finally:
        close_within(reader, timeout_s, "watermark reader")


# ---------------------------------------------------------------------------------------------
# Broker loss and deadlines on closing (see docs/scaling.md, "Broker faults")

KAFKA_LOGGER = logging.getLogger("fraudkit.stream.kafka")
# While librdkafka reports every broker down, a metadata request checks this often whether one is back.
PROBE_EVERY_S = 1.0
PROBE_TIMEOUT_S = 1.0
# Each client still gets this long when an earlier step of a shutdown used up the whole budget.
MIN_CLOSE_S = 0.5
# Clients whose close was abandoned: kept referenced, since destroying one repeats the blocking close.
_ABANDONED: list[Any] = []


class BrokerWatch:
    """Knows whether any broker still answers, and raises BrokerError once none has for too long.

    librdkafka retries a lost connection forever and never fails a consume, a poll or a flush for it:
    it only reports `_ALL_BROKERS_DOWN` (once, when the last connection drops) to the `error_cb` of
    each client. Clients made with `error_cb=watch.on_error` report here; the loop calls `check()` between
    batches. While every broker is down, `check()` asks for metadata about once a second, so a broker
    that comes back ends the outage; after `timeout_s` without an answer it raises.
    """

    def __init__(
        self,
        config: FraudkitConfig,
        timeout_s: float | None = None,
        probe: Callable[[float], bool] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.servers = config.kafka.bootstrap_servers
        self.timeout_s = config.kafka.connect_timeout_s if timeout_s is None else timeout_s
        self.clock = clock
        self.down_since: float | None = None
        self.last_error = ""
        self._probed_at = -float("inf")
        self._config = config
        self._probe = probe
        self._admin: AdminClient | None = None

    def on_error(self, error: KafkaError) -> None:
        """librdkafka's error_cb: an outage starts when it reports every broker down."""
        code = error.code()
        if code == KafkaError._ALL_BROKERS_DOWN:
            if self.down_since is None:
                self.down_since = self.clock()
        elif code in (KafkaError._TRANSPORT, KafkaError._RESOLVE, KafkaError._TIMED_OUT):
            # Says why the brokers are down: "Connect to ipv4#127.0.0.1:9092 failed: Connection refused".
            self.last_error = error.str()
        elif error.fatal():
            self.last_error = error.str()

    @property
    def lost(self) -> bool:
        """True while every broker is believed down."""
        return self.down_since is not None

    def down_for(self) -> float:
        """Seconds since the outage began (0 when none)."""
        return 0.0 if self.down_since is None else self.clock() - self.down_since

    def check(self) -> float | None:
        """None if a broker answers; else seconds without one. BrokerError once that reaches timeout_s."""
        if self.down_since is None:
            return None
        now = self.clock()
        if now - self._probed_at >= PROBE_EVERY_S:
            self._probed_at = now
            if self._answers():
                self.down_since = None
                return None
            now = self.clock()
        down = now - self.down_since
        if down >= self.timeout_s:
            raise BrokerError(self.lost_message(down))
        return down

    def lost_message(self, down_s: float | None = None) -> str:
        """The error a loop stops with: which cluster, for how long, and librdkafka's last reason."""
        down = self.down_for() if down_s is None else down_s
        reason = _short_reason(self.last_error)
        return f"lost Kafka at {self.servers}: no broker answered for {down:.0f}s" + (
            f" (last error: {reason})" if reason else ""
        )

    def _answers(self) -> bool:
        if self._probe is not None:
            return self._probe(PROBE_TIMEOUT_S)
        if self._admin is None:
            self._admin = make_admin(self._config)
        try:
            return bool(self._admin.list_topics(timeout=PROBE_TIMEOUT_S).brokers)
        except KafkaException:
            return False


def _short_reason(text: str) -> str:
    """librdkafka's "host:port/bootstrap: Connect to ... failed: ..." without its broker-name prefix."""
    head, separator, rest = text.partition(": ")
    return rest if separator and "/" in head else text


def close_within(
    client: Any, deadline_s: float, what: str = "Kafka client", warn: Callable[[str], None] | None = None
) -> bool:
    """Close a client in a daemon thread, abandoning it after deadline_s with a warning; True if it closed.

    A consumer's close() leaves its group and can block while no broker answers (librdkafka issue
    4519); librdkafka's own timeouts do not bound it. An abandoned close goes on in the background
    and ends with the process. Nothing is lost by abandoning it: callers commit only delivered work.
    """
    finished = threading.Event()
    failure: list[BaseException] = []

    def close() -> None:
        try:
            client.close()
        except BaseException as exc:  # reported below, in the caller's thread
            failure.append(exc)
        finally:
            finished.set()

    threading.Thread(target=close, name=f"fraudkit-close-{what}", daemon=True).start()
    report = warn or KAFKA_LOGGER.warning
    deadline_s = max(MIN_CLOSE_S, deadline_s)
    if not finished.wait(deadline_s):
        _ABANDONED.append(client)
        report(f"closing the {what} took over {deadline_s:.1f}s (is Kafka reachable?); abandoned it")
        return False
    if failure:
        report(f"closing the {what} failed: {failure[0]}")
        return False
    return True


def abandoned_clients() -> int:
    """How many clients' close was abandoned in this process (the CLI then exits without clean-up)."""
    return len(_ABANDONED)


def commit_within(consumer: Any, offsets: list[TopicPartition], deadline_s: float) -> None:
    """A synchronous offset commit that gives up after deadline_s (BrokerError); KafkaException as is.

    librdkafka's synchronous commit has no timeout of its own: it waits for the group coordinator.
    """
    finished = threading.Event()
    failure: list[BaseException] = []

    def commit() -> None:
        try:
            consumer.commit(offsets=offsets, asynchronous=False)
        except BaseException as exc:
            failure.append(exc)
        finally:
            finished.set()

    threading.Thread(target=commit, name="fraudkit-commit", daemon=True).start()
    deadline_s = max(MIN_CLOSE_S, deadline_s)
    if not finished.wait(deadline_s):
        raise BrokerError(f"committing offsets took over {deadline_s:.1f}s; they stay uncommitted")
    if failure:
        raise failure[0]


def close_producer(
    producer: Any, deadline_s: float, what: str = "producer", warn: Callable[[str], None] | None = None
) -> int:
    """Flush within deadline_s, then drop what is still queued; returns how many messages were dropped.

    Dropping them keeps the producer's destruction from waiting on a broker that is gone; callers
    have not committed the inputs of those messages, so nothing is lost for good.
    """
    deadline_s = max(MIN_CLOSE_S, deadline_s)
    remaining = int(producer.flush(deadline_s))
    if remaining:
        (warn or KAFKA_LOGGER.warning)(
            f"the {what} still held {remaining:,} undelivered message(s) after {deadline_s:.1f}s; dropped them"
        )
        with contextlib.suppress(KafkaException, RuntimeError, NotImplementedError):
            producer.purge(in_queue=True, in_flight=True, blocking=False)
            producer.poll(0)
    return remaining
