"""Running a detector: load the model, wait for Kafka, create the topics and clients, run the loop."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from fraudkit.config import FraudkitConfig
from fraudkit.detect.holder import ModelHolder, Scorer
from fraudkit.detect.hooks import DetectExtension, LogCallback
from fraudkit.detect.loop import DetectClients, DetectLoop, StatusCallback
from fraudkit.detect.settings import DetectOptions, DetectSettings, DetectSummary
from fraudkit.errors import BrokerError, ModelError
from fraudkit.features import FeatureSpec

if TYPE_CHECKING:
    from fraudkit.observability.detect_telemetry import DetectTelemetry

FIRST_CONNECT_S = 1.0


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
    settings = DetectSettings.resolve(config, options)
    loop = DetectLoop(
        config,
        settings,
        holder,
        open_clients(config, settings),
        stop_event or threading.Event(),
        on_status,
        log,
        extensions,
        telemetry,
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
        last_error = [exc.reason]
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
            last_error[0] = exc.reason
    raise BrokerError(
        f"cannot reach Kafka at {servers} within kafka.connect_timeout_s={total:g}s (last error: {last_error[0]})"
    )


def _is_rules(model: Scorer) -> bool:
    return model.version == "rules"


def producer_settings(settings: DetectSettings) -> dict[str, Any]:
    """The detector's own producer settings on top of kafka.producer."""
    values: dict[str, Any] = {
        # Success is proven by an empty producer queue (see AckCommitter.settle): a Python callback
        # for every acknowledged message would cost ~10% of the throughput. Only failures call back.
        "delivery.report.only.error": True,
        "client.id": settings.client_id,
        # A batch's outputs are produced at once: a long linger would only delay them.
        "linger.ms": settings.output_linger_ms,
    }
    if settings.exactly_once:
        values["transactional.id"] = settings.transactional_id
        values["enable.idempotence"] = True
    return values


def open_clients(config: FraudkitConfig, settings: DetectSettings) -> DetectClients:
    """The detector's consumer, producer and labels consumer."""
    from fraudkit.stream import kafka

    # Every client reports to one watch: a lost cluster ends the loop after kafka.connect_timeout_s.
    watch = kafka.BrokerWatch(config)
    consumer = kafka.make_consumer(
        config, settings.group_id, error_cb=watch.on_error, **{"client.id": settings.client_id}
    )
    producer = kafka.make_producer(config, error_cb=watch.on_error, **producer_settings(settings))
    # Labels are not latency-critical: few, large fetches spare the broker.
    labels = kafka.make_consumer(
        config,
        f"{settings.group_id}-labels",
        error_cb=watch.on_error,
        **{"fetch.wait.max.ms": 200, "fetch.min.bytes": 1_048_576},
    )
    return DetectClients(consumer, producer, labels, watch)
