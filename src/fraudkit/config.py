"""Typed configuration: defaults < YAML file < FRAUDKIT_* env vars < CLI flags, validated once."""

from __future__ import annotations

import copy
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from fraudkit.errors import ConfigError
from fraudkit.redact import MASK as MASK
from fraudkit.redact import is_secret_key as is_secret_key
from fraudkit.redact import mask_secrets as mask_secrets
from fraudkit.redact import masked
from fraudkit.schema import MAX_EVENT_MS, MIN_EVENT_MS
from fraudkit.timefmt import iso_ms

# Older name of mask_secrets, still imported by callers outside the library (tests/conftest.py).
mask_url = mask_secrets

KafkaValue = str | int | float | bool
ENV_PREFIX = "FRAUDKIT_"
DEFAULT_CONFIG_FILE = Path("configs/default.yaml")
# Upper bounds that keep a typo (1e17, 2000000000) from overflowing a 64-bit millisecond
# timestamp, a wait, or memory; each is far beyond any real use.
MAX_WAIT_S = 86_400.0
MAX_DURATION_S = 366 * 86_400.0
MAX_BATCH_SIZE = 1_000_000
MAX_SIMULATED_ENTITIES = 10_000_000
_TOPIC_NAME = re.compile(r"^[A-Za-z0-9._-]{1,249}$")


class Section(BaseModel):
    """Base for every config section: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def _default_common() -> dict[str, KafkaValue]:
    return {"bootstrap.servers": "127.0.0.1:9092"}


class KafkaConfig(Section):
    """librdkafka settings passed through verbatim, plus fraudkit's connection behaviour."""

    common: dict[str, KafkaValue] = Field(default_factory=_default_common)
    producer: dict[str, KafkaValue] = Field(default_factory=dict)
    consumer: dict[str, KafkaValue] = Field(default_factory=dict)
    connect_timeout_s: float = Field(30.0, gt=0, le=MAX_WAIT_S)
    close_timeout_s: float = Field(10.0, gt=0, le=MAX_WAIT_S)

    @property
    def bootstrap_servers(self) -> str:
        """The bootstrap.servers value, for messages."""
        return str(self.common.get("bootstrap.servers", "localhost:9092"))


class TopicsConfig(Section):
    """Topic names, partition counts and retention."""

    transactions: str = "transactions"
    legit: str = "transactions.legit"
    fraud: str = "transactions.fraud"
    verdicts: str = "verdicts"
    labels: str = "labels"
    dead_letter: str = "transactions.dead-letter"
    control: str = "fraudkit.control"
    transactions_partitions: int = Field(6, gt=0, le=10_000)
    partitions: int = Field(3, gt=0, le=10_000)
    replication_factor: int = Field(1, gt=0, le=32_767)
    # Production sizes (docs/scaling.md): every topic is re-read after an outage (transactions from
    # the committed offsets, labels from the last terminal-label snapshot), so both cover the
    # longest outage tolerated, a week: as long as the label delay. The card-state changelog keeps
    # a card as long as its longest window can use it (30 days) plus a margin.
    retention_ms: int = Field(7 * 86_400_000, gt=0)
    labels_retention_ms: int = Field(7 * 86_400_000, gt=0)
    changelog_retention_ms: int = Field(35 * 86_400_000, gt=0)

    @field_validator("transactions", "legit", "fraud", "verdicts", "labels", "dead_letter", "control")
    @classmethod
    def _legal_topic_name(cls, value: str) -> str:
        # Kafka's own rule (kafka.common.internals.Topic.validate): the broker refuses anything else.
        if value in (".", "..") or not _TOPIC_NAME.match(value):
            raise ValueError(
                f"{value!r} is not a Kafka topic name (1 to 249 of a-z A-Z 0-9 . _ -, not '.' or '..')"
            )
        return value


class BrokerConfig(Section):
    """The local broker of `fraudkit broker` and the demo: Apache Kafka (KRaft) or Tansu."""

    engine: Literal["auto", "kafka", "tansu"] = "auto"
    port: int = Field(9092, gt=0, lt=65536)
    brokers: int = Field(1, ge=1, le=3)
    state_dir: Path = Path(".fraudkit/broker")
    cache_dir: Path | None = None
    heap_mb: int = Field(512, ge=128, le=65536)
    start_timeout_s: float = Field(60.0, gt=0, le=MAX_WAIT_S)


class SparkConfig(Section):
    """Spark session settings: local by default, or a cluster master URL."""

    master: str = "local[2]"
    driver_memory: str = "2g"
    shuffle_partitions: int = Field(8, gt=0)
    conf: dict[str, str] = Field(default_factory=dict)
    log_file: str | None = None


class ScenarioRates(Section):
    """Per-scenario fraud rates of the simulator (`*_per_day` scale with the world: per 1,000
    terminals for terminals, per 1,000 customers otherwise)."""

    large_amount: float = Field(0.0006, ge=0, le=1)
    compromised_terminals_per_day: float = Field(0.09, ge=0)
    terminal_compromise_days: int = Field(21, gt=0)
    terminal_fraud_fraction: float = Field(0.5, ge=0, le=1)
    compromised_cards_per_day: float = Field(0.2, ge=0)
    card_compromise_days: int = Field(14, gt=0)
    card_fraud_fraction: float = Field(0.33, ge=0, lt=1)
    card_testing_bursts_per_day: float = Field(0.09, ge=0)
    impossible_travel_per_day: float = Field(0.4, ge=0)


class SimulateConfig(Section):
    """The synthetic world of `fraudkit simulate`."""

    customers: int = Field(5000, gt=0, le=MAX_SIMULATED_ENTITIES)
    terminals: int = Field(10000, gt=0, le=MAX_SIMULATED_ENTITIES)
    days: int = Field(90, gt=0, le=36_525)
    start_date: str = "2026-01-01"
    seed: int = 42
    format: Literal["parquet", "csv"] = "parquet"
    out: Path = Path("data/transactions.parquet")
    daily_transactions: float = Field(1.6, gt=0, le=1000)
    trips_per_day: float = Field(2.0, ge=0, le=1000)
    scenarios: ScenarioRates = Field(default_factory=ScenarioRates)

    @field_validator("start_date")
    @classmethod
    def _inside_accepted_event_times(cls, value: str, info: ValidationInfo) -> str:
        # Every reader (schema.check_event_time, datasets) accepts 2000-01-01 to 2100-01-01 only:
        # a dataset outside that range would be written and then refused by everything.
        try:
            start_ms = iso_ms(value)
        except ValueError:
            return value  # simulate.parse_start names the format problem
        days = info.data.get("days") or 0
        if start_ms < MIN_EVENT_MS or start_ms + days * 86_400_000 > MAX_EVENT_MS:
            raise ValueError(
                f"{value} + {days} days is outside the event times readers accept (2000-01-01 to 2100-01-01)"
            )
        return value


class DataConfig(Section):
    """Where datasets live and which column mapping reads them."""

    dataset: str = "fraudkit"
    path: Path = Path("data/transactions.parquet")
    history_path: Path = Path("data/history.parquet")
    stream_path: Path = Path("data/stream.parquet")


class SplitConfig(Section):
    """`fraudkit split`: by event time into history and stream parts."""

    train_fraction: float = Field(0.7, gt=0, lt=1)
    at: str | None = None


class FeaturesConfig(Section):
    """Feature windows and the label delay."""

    label_delay_days: float = Field(7.0, ge=0, le=MAX_DURATION_S / 86400)
    card_windows_hours: list[float] = Field(default_factory=lambda: [1.0, 24.0, 168.0, 720.0])
    terminal_windows_days: list[float] = Field(default_factory=lambda: [1.0, 7.0, 30.0])
    relative_amount_window_hours: float = Field(168.0, gt=0)

    @field_validator("card_windows_hours", "terminal_windows_days")
    @classmethod
    def _positive_windows(cls, value: list[float]) -> list[float]:
        if not value or any(w <= 0 for w in value):
            raise ValueError("must be a non-empty list of values > 0")
        return value


class ThresholdConfig(Section):
    """How the decision threshold is chosen on validation data."""

    mode: Literal["precision", "budget"] = "precision"
    target_precision: float = Field(0.5, gt=0, le=1)
    cards_per_day: int = Field(100, gt=0)


class TrainConfig(Section):
    """The MLP and its time-based training protocol."""

    hidden_sizes: list[int] = Field(default_factory=lambda: [64, 32])
    dropout: float = Field(0.1, ge=0, lt=1)
    epochs: int = Field(20, gt=0)
    learning_rate: float = Field(0.001, gt=0)
    batch_size: int = Field(1024, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    patience: int = Field(3, gt=0)
    seed: int = 7
    train_from: str | None = None
    train_to: str | None = None
    valid_days: float = Field(14.0, gt=0)
    pos_weight: float | None = Field(None, gt=0)
    threads: int = Field(1, gt=0)
    threshold: ThresholdConfig = Field(default_factory=ThresholdConfig)

    @field_validator("hidden_sizes")
    @classmethod
    def _sane_layers(cls, value: list[int]) -> list[int]:
        # The same limits as fraudkit.model.network.MAX_LAYER_WIDTH / MAX_HIDDEN_LAYERS (kept literal so
        # that reading the config does not import numpy).
        if len(value) > 64 or any(not 1 <= size <= 65_536 for size in value):
            raise ValueError("must be at most 64 layer widths, each from 1 to 65536")
        return value


class RegistryConfig(Section):
    """The versioned model registry."""

    path: Path = Path("models")


class EvaluateConfig(Section):
    """`fraudkit evaluate` settings."""

    top_k: int = Field(100, gt=0)
    amount_rule_threshold: float = Field(900.0, gt=0)


class GenerateConfig(Section):
    """`fraudkit generate`: the transaction source, its rate and the client's view."""

    source: Literal["simulator", "replay"] = "simulator"
    replay_path: Path | None = None
    rate: float | None = Field(1000.0, gt=0, le=10_000_000)
    speedup: float | None = Field(None, gt=0, le=1e9)
    count: int | None = Field(None, gt=0)
    duration_s: float | None = Field(None, gt=0, le=MAX_DURATION_S)
    seed: int = 42
    label_delay_s: float = Field(7 * 86400.0, ge=0, le=MAX_DURATION_S)
    label_fraction: float = Field(1.0, ge=0, le=1)
    read_verdicts: bool = True
    verdict_group_id: str = "fraudkit-generate-client"
    verdict_wait_s: float = Field(5.0, ge=0, le=MAX_WAIT_S)
    flush_labels: bool = False
    max_pending: int = Field(500_000, gt=0)


class DetectConfig(Section):
    """`fraudkit detect`: the scoring loop."""

    group_id: str = "fraudkit-detect"
    batch_size: int = Field(2000, gt=0, le=MAX_BATCH_SIZE)
    poll_timeout_s: float = Field(0.05, gt=0, le=60)
    output_linger_ms: float = Field(1.0, ge=0, le=300_000)
    model: str = "current"
    exactly_once: bool = False
    transactional_id: str = "fraudkit-detect"
    reasons: int = Field(3, ge=0)
    max_card_state: int = Field(2_000_000, gt=0)
    amount_rule_threshold: float = Field(900.0, gt=0)
    quiet: bool = False
    recent_verdicts: int = Field(200_000, gt=0)
    quality_window: int = Field(5000, gt=0)
    warm_labels: bool = True
    rules_file: Path | None = None
    follow_rules: bool = True
    # Kafka's own default limits are about 1 MB (librdkafka message.max.bytes 1,000,000, broker
    # 1,048,588); a message over this is dead-lettered as an excerpt, never copied whole.
    max_message_bytes: int = Field(1_000_000, ge=16_384, le=100_000_000)
    max_future_skew_s: float = Field(3600.0, gt=0)


class StateConfig(Section):
    """Durable detector state: the card-state changelog and terminal-label snapshots (docs/scaling.md)."""

    enabled: bool = True
    changelog_topic: str = ""
    restore_timeout_s: float = Field(300.0, gt=0, le=MAX_WAIT_S)
    # At-least-once: changed cards are written to the changelog, and the offsets they cover
    # committed, at most this often (each card once per interval, as Kafka Streams' record cache
    # with commit.interval.ms); 0 writes with every batch. Exactly-once writes inside each batch's
    # transaction. At most 1 s: the committer waits for acknowledgements beyond that anyway.
    commit_interval_ms: float = Field(250.0, ge=0, le=1000)
    snapshot_url: str = ".fraudkit/state"
    snapshot_interval_s: float = Field(300.0, gt=0, le=MAX_DURATION_S)

    @field_validator("changelog_topic")
    @classmethod
    def _legal_changelog_name(cls, value: str) -> str:
        if value and (value in (".", "..") or not _TOPIC_NAME.match(value)):
            raise ValueError(f"{value!r} is not a Kafka topic name (1 to 249 of a-z A-Z 0-9 . _ -)")
        return value


class RetrainConfig(Section):
    """Live retraining: triggers, the feature log and champion/challenger."""

    enabled: bool = True
    role: Literal["all", "scorer", "trainer"] = "all"
    every_labels: int = Field(20000, gt=0)
    every_seconds: float | None = Field(None, gt=0, le=MAX_DURATION_S)
    window_rows: int = Field(200_000, gt=0)
    window_reader: Literal["spark", "arrow"] = "spark"
    holdout_fraction: float = Field(0.2, gt=0, lt=1)
    metric: Literal["average_precision", "roc_auc"] = "average_precision"
    min_improvement: float = 0.0
    max_flagged_share: float = Field(0.05, gt=0, le=1)
    buffer_path: Path = Path(".fraudkit/labels")
    epochs: int = Field(5, gt=0)
    feature_log_url: str = ".fraudkit/feature-log"
    feature_log_flush_batches: int = Field(50, gt=0)
    feature_log_flush_s: float = Field(30.0, gt=0, le=MAX_DURATION_S)
    feature_log_horizon_days: float = Field(45.0, gt=0, le=36_525)
    worker_threads: int = Field(1, gt=0)
    worker_cpus: list[int] = Field(default_factory=list)
    worker_cpu_share: float = Field(0.2, gt=0, le=1)
    job_timeout_s: float = Field(1800.0, gt=0, le=MAX_WAIT_S)

    @field_validator("worker_cpus")
    @classmethod
    def _distinct_cpus(cls, value: list[int]) -> list[int]:
        if any(cpu < 0 for cpu in value) or len(set(value)) != len(value):
            raise ValueError("must be distinct CPU numbers (0 or more)")
        return value


class SinkConfig(Section):
    """`fraudkit sink`: verdicts into a SQL database."""

    url: str = "sqlite:///fraudkit.db"
    group_id: str = "fraudkit-sink"
    batch_size: int = Field(5000, gt=0, le=MAX_BATCH_SIZE)
    retry_max_s: float = Field(30.0, gt=0, le=MAX_WAIT_S)
    table: str = "fraud_predictions"
    labels_table: str = "fraud_labels"
    dead_letter_table: str = "fraud_dead_letters"
    labels: bool = True
    poll_timeout_s: float = Field(0.5, gt=0, le=60)


class ReportConfig(Section):
    """`fraudkit report`: the terminal/HTML report over the sink's database."""

    bucket: Literal["auto", "hour", "day"] = "auto"
    top: int = Field(10, gt=0)
    refresh_s: float = Field(2.0, gt=0, le=MAX_WAIT_S)


class DashboardConfig(Section):
    """`fraudkit dashboard`: the live web page over the sink's database, and analyst review."""

    host: str = "127.0.0.1"
    port: int = Field(8050, ge=0, lt=65536)
    review_token: str | None = None
    refresh_s: float = Field(2.0, gt=0)
    verdicts: int = Field(50, gt=0, le=1000)
    minutes: int = Field(30, gt=0, le=1440)

    @field_validator("review_token")
    @classmethod
    def _long_token(cls, value: str | None) -> str | None:
        if value is not None and len(value) < 16:
            raise ValueError("must be at least 16 characters (or null to disable reviews)")
        return value


class DemoConfig(Section):
    """`fraudkit demo`: the one-command showcase."""

    duration_s: float = Field(180.0, gt=0, le=MAX_DURATION_S)
    rate: float = Field(1000.0, gt=0, le=10_000_000)
    seed: int = 42
    workdir: Path = Path(".fraudkit/demo")


class MetricsConfig(Section):
    """The HTTP endpoint of `detect`, `generate` and `sink`: Prometheus /metrics, /healthz, /readyz."""

    port: int | None = Field(None, ge=0, lt=65536)
    host: str = "127.0.0.1"
    stall_after_s: float = Field(30.0, gt=0)


class LogConfig(Section):
    """How the long-running commands write their log lines (stderr)."""

    format: Literal["text", "json"] = "text"


class DriftConfig(Section):
    """Label-free drift alarms: live feature and score distributions against the training ones."""

    enabled: bool = True
    bins: int = Field(10, ge=2, le=100)
    window_rows: int = Field(10_000, gt=0)
    min_rows: int = Field(1000, gt=0)
    psi_threshold: float = Field(0.25, gt=0)
    # A drift alarm (any column over psi_threshold) that lasts this long starts a retraining on the
    # trainer, from the labels in the feature log; None: alarms only. At most one such retraining
    # per retrain_cooldown_s (the new model's reference may take a while to be matched).
    retrain_after_s: float | None = Field(None, gt=0, le=MAX_DURATION_S)
    retrain_cooldown_s: float = Field(3600.0, gt=0, le=MAX_DURATION_S)


class FraudkitConfig(Section):
    """The whole merged configuration."""

    kafka: KafkaConfig = Field(default_factory=KafkaConfig)
    topics: TopicsConfig = Field(default_factory=TopicsConfig)
    broker: BrokerConfig = Field(default_factory=BrokerConfig)
    spark: SparkConfig = Field(default_factory=SparkConfig)
    simulate: SimulateConfig = Field(default_factory=SimulateConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    split: SplitConfig = Field(default_factory=SplitConfig)
    features: FeaturesConfig = Field(default_factory=FeaturesConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    registry: RegistryConfig = Field(default_factory=RegistryConfig)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    generate: GenerateConfig = Field(default_factory=GenerateConfig)
    detect: DetectConfig = Field(default_factory=DetectConfig)
    retrain: RetrainConfig = Field(default_factory=RetrainConfig)
    state: StateConfig = Field(default_factory=StateConfig)
    sink: SinkConfig = Field(default_factory=SinkConfig)
    report: ReportConfig = Field(default_factory=ReportConfig)
    dashboard: DashboardConfig = Field(default_factory=DashboardConfig)
    demo: DemoConfig = Field(default_factory=DemoConfig)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    log: LogConfig = Field(default_factory=LogConfig)
    drift: DriftConfig = Field(default_factory=DriftConfig)


# Keys of these dicts are librdkafka property names, which contain dots; env vars spell them
# with underscores (FRAUDKIT_KAFKA__COMMON__BOOTSTRAP_SERVERS).
_PASSTHROUGH_PATHS = {("kafka", "common"), ("kafka", "producer"), ("kafka", "consumer")}


def _deep_merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _set_path(target: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    node = target
    for part in path[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[path[-1]] = value


def _record_sources(data: Any, prefix: tuple[str, ...], source: str, sources: dict[str, str]) -> None:
    if isinstance(data, Mapping) and prefix not in _PASSTHROUGH_PATHS:
        for key, value in data.items():
            _record_sources(value, (*prefix, str(key)), source, sources)
    elif isinstance(data, Mapping):
        for key in data:
            sources[".".join((*prefix, str(key)))] = source
    else:
        sources[".".join(prefix)] = source


# Config and dataset mappings are a few kilobytes; anything this big is not one.
MAX_YAML_BYTES = 4 * 1024 * 1024


class _NoAliasLoader(yaml.SafeLoader):
    """SafeLoader that refuses aliases (*name): nested aliases expand exponentially ("billion
    laughs": 630 bytes took 24 s and 580 MB), and fraudkit's files never need them."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(
                None, None, "aliases (*name) are not allowed in fraudkit's YAML files", event.start_mark
            )
        return super().compose_node(parent, index)


def load_yaml_text(text: str) -> Any:
    """Parse YAML like yaml.safe_load, but without aliases (yaml.YAMLError otherwise)."""
    return yaml.load(text, Loader=_NoAliasLoader)


def read_yaml_file(path: Path, what: str = "config file") -> Any:
    """The parsed YAML of `path`; ConfigError naming the file for anything unreadable or malformed."""
    try:
        with path.open("rb") as handle:
            raw = handle.read(MAX_YAML_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError(f"{what} not found: {path}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc.strerror}") from None
    if len(raw) > MAX_YAML_BYTES:
        raise ConfigError(f"{path}: not a {what}: larger than {MAX_YAML_BYTES // (1024 * 1024)} MiB")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not a UTF-8 YAML file (byte {exc.start} is not UTF-8)") from None
    try:
        return load_yaml_text(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"invalid YAML in {path}{where}: {getattr(exc, 'problem', exc)}") from None


def _read_yaml(path: Path) -> dict[str, Any]:
    data = read_yaml_file(path)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    return data


def _env_overrides(environ: Mapping[str, str]) -> list[tuple[tuple[str, ...], Any, str]]:
    overrides = []
    for name, raw in sorted(environ.items()):
        if not name.startswith(ENV_PREFIX) or name == "FRAUDKIT_CONFIG" or "__" not in name:
            continue
        parts = [p.lower() for p in name[len(ENV_PREFIX) :].split("__")]
        if len(parts) >= 3 and (parts[0], parts[1]) in _PASSTHROUGH_PATHS:
            parts = [parts[0], parts[1], ".".join(parts[2:]).replace("_", ".")]
        overrides.append((tuple(parts), parse_scalar(raw), f"env {name}"))
    return overrides


def parse_scalar(raw: str) -> Any:
    """Parse a string from an env var or `--set` the way YAML would (ints, floats, bools, lists)."""
    try:
        return load_yaml_text(raw) if raw.strip() else raw
    except yaml.YAMLError:
        return raw


def _format_errors(error: ValidationError, sources: Mapping[str, str]) -> str:
    lines = []
    for item in error.errors():
        loc = tuple(str(part) for part in item["loc"])
        path = ".".join(loc)
        message = item["msg"]
        if item["type"] == "extra_forbidden":
            message = "unknown key"
        elif message.startswith("Value error, "):
            message = message[len("Value error, ") :]
        message = (
            message.replace("Input should be greater than or equal to", "must be >=")
            .replace("Input should be greater than", "must be >")
            .replace("Input should be less than or equal to", "must be <=")
            .replace("Input should be less than", "must be <")
            .replace("Input should be", "must be")
        )
        source = _source_for(loc, sources)
        lines.append(f"{path}: {message} ({source})")
    return "\n".join(lines)


def _source_for(loc: tuple[str, ...], sources: Mapping[str, str]) -> str:
    for end in range(len(loc), 0, -1):
        key = ".".join(loc[:end])
        if key in sources:
            return sources[key]
    prefix = ".".join(loc) + "."
    for key, source in sources.items():
        if key.startswith(prefix):
            return source
    return "defaults"


def resolve_config_path(explicit: Path | str | None, environ: Mapping[str, str]) -> Path | None:
    """The YAML file to read: --config, else $FRAUDKIT_CONFIG, else configs/default.yaml if present."""
    if explicit:
        return Path(explicit)
    if environ.get("FRAUDKIT_CONFIG"):
        return Path(environ["FRAUDKIT_CONFIG"])
    return DEFAULT_CONFIG_FILE if DEFAULT_CONFIG_FILE.is_file() else None


def load_config(
    path: Path | str | None = None,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> FraudkitConfig:
    """Merge defaults, the YAML file, FRAUDKIT_* env vars and flag overrides (dotted keys)."""
    environ = os.environ if environ is None else environ
    config_path = resolve_config_path(path, environ)
    data: dict[str, Any] = {}
    sources: dict[str, str] = {}
    if config_path is not None:
        file_data = _read_yaml(config_path)
        data = _deep_merge(data, file_data)
        _record_sources(file_data, (), str(config_path), sources)
    for key_path, value, source in _env_overrides(environ):
        _set_path(data, key_path, value)
        sources[".".join(key_path)] = source
    for dotted, value in (overrides or {}).items():
        if value is None:
            continue
        key_path = _split_override(dotted)
        _set_path(data, key_path, value)
        sources[".".join(key_path)] = "command line"
    try:
        return FraudkitConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc, sources)) from None


def _split_override(dotted: str) -> tuple[str, ...]:
    parts = dotted.split(".")
    if len(parts) >= 3 and (parts[0], parts[1]) in _PASSTHROUGH_PATHS:
        return (parts[0], parts[1], ".".join(parts[2:]))
    return tuple(parts)


def parse_set_options(options: list[str]) -> dict[str, Any]:
    """Turn repeated `--set section.key=value` flags into overrides."""
    result: dict[str, Any] = {}
    for option in options:
        key, sep, raw = option.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {option!r}: expected section.key=value")
        result[key.strip()] = parse_scalar(raw)
    return result


def config_as_dict(config: FraudkitConfig, mask_secrets: bool = True) -> dict[str, Any]:
    """The merged config as plain data, secrets masked unless asked otherwise."""
    data = config.model_dump(mode="json")
    return masked(data) if mask_secrets else data


def dump_yaml(config: FraudkitConfig) -> str:
    """The merged config as YAML with secrets masked (what `config show` prints)."""
    return yaml.safe_dump(config_as_dict(config), sort_keys=False, default_flow_style=False)
