"""What one detector run is: its options, the settings resolved once from them and the config, and
the summary it ends with."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fraudkit.config import FraudkitConfig, TopicsConfig
from fraudkit.errors import ConfigError


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


@dataclass(frozen=True)
class DetectSettings:
    """Everything the loop and its stages read, resolved once (config.detect + options + topics)."""

    instance_id: str
    exactly_once: bool
    topics: TopicsConfig
    group_id: str
    transactional_id: str
    batch_size: int
    poll_timeout_s: float
    reasons: int
    max_message_bytes: int
    max_future_skew_s: float
    output_linger_ms: float
    recent_verdicts: int
    quality_window: int
    status_interval_s: float
    labels_from_beginning: bool
    delivery_timeout_s: float
    close_timeout_s: float
    seal_interval_s: float
    duration_s: float | None
    max_transactions: int | None
    until_idle_s: float | None

    @classmethod
    def resolve(cls, config: FraudkitConfig, options: DetectOptions) -> DetectSettings:
        """The settings of one run: options win over config.detect where both say something."""
        detect = config.detect
        return cls(
            instance_id=options.instance_id,
            exactly_once=options.exactly_once,
            topics=config.topics,
            group_id=detect.group_id,
            transactional_id=f"{detect.transactional_id}-{options.instance_id}",
            batch_size=detect.batch_size,
            poll_timeout_s=detect.poll_timeout_s,
            reasons=detect.reasons,
            max_message_bytes=detect.max_message_bytes,
            max_future_skew_s=detect.max_future_skew_s,
            output_linger_ms=detect.output_linger_ms,
            recent_verdicts=detect.recent_verdicts,
            quality_window=detect.quality_window,
            status_interval_s=options.status_interval_s,
            labels_from_beginning=options.labels_from_beginning,
            # A delivery, commit or transaction waits at least this long before it is a failure.
            delivery_timeout_s=max(30.0, config.kafka.connect_timeout_s),
            close_timeout_s=config.kafka.close_timeout_s,
            # At-least-once: how often durable state is written (and the offsets it covers
            # committed); without state every batch is sealed at once, as nothing waits for it.
            seal_interval_s=config.state.commit_interval_ms / 1000 if config.state.enabled else 0.0,
            duration_s=options.duration_s,
            max_transactions=options.max_transactions,
            until_idle_s=options.until_idle_s,
        )

    @property
    def client_id(self) -> str:
        """client.id of this detector's clients."""
        return f"fraudkit-detect-{self.instance_id}"
