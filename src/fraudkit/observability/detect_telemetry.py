"""The detector's metrics, probes and drift alarms: a `DetectExtension` plus a few loop hooks.

Hot-path cost per batch: one attribute store (heartbeat), a score histogram (searchsorted +
bincount) and the drift binning of the features (one vectorised comparison). Everything else is
read at scrape time from figures the loop keeps anyway, or refreshed with the status (once per
status interval, on the loop's thread, so nothing the loop mutates is iterated by the server).
"""

from __future__ import annotations

import re
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from fraudkit.config import FraudkitConfig
from fraudkit.detect import DetectContext, DetectExtension
from fraudkit.observability import prometheus as prom
from fraudkit.observability.drift import SCORE, DriftMonitor, DriftReport, monitor_for
from fraudkit.observability.health import Health

if TYPE_CHECKING:
    from fraudkit.detect import DetectSummary, ModelHolder
    from fraudkit.detect.status import DetectStatus
    from fraudkit.latency import LatencyHistogram
    from fraudkit.schema import Transaction

MAX_REASONS = 32
# The keys of ModelHolder.retrain_outcomes: the retraining event types less "model_" / "retrain_".
RETRAIN_OUTCOMES = ("published", "rejected", "failed", "cancelled")
READY_CONDITIONS = ("model_loaded", "partitions_assigned", "state_restored")
_REASON_CHARS = re.compile(r"[^a-z0-9_.]+")


def dead_letter_reason(error: str) -> str:
    """A bounded label for a dead-letter reason: the field or check before the first colon."""
    head = error.split(":", 1)[0].strip().lower()
    label = _REASON_CHARS.sub("_", head).strip("_")[:40]
    return label or "other"


class DetectTelemetry(DetectExtension):
    """Prometheus metrics, health and drift of one detector (one registry per instance)."""

    def __init__(
        self, config: FraudkitConfig, instance_id: str, registry: Any = None, health: Health | None = None
    ) -> None:
        self.config = config
        self.instance_id = instance_id
        self.registry = registry if registry is not None else prom.new_registry()
        self.health = health or Health(config.metrics.stall_after_s)
        self.health.require(*READY_CONDITIONS)
        self.scores = prom.BulkHistogram(prom.SCORE_BUCKETS)
        self.batch_seconds = prom.BulkHistogram(prom.BATCH_BUCKETS_S)
        self.dead_letters: Counter[str] = Counter()
        self.drift_alarms: Counter[str] = Counter()
        self.partition_lag: dict[int, int] = {}
        self.assigned_partitions = 0
        self.quality: dict[str, Any] = {}
        self.drift: DriftMonitor | None = None
        self.drift_report = DriftReport(threshold=config.drift.psi_threshold)
        self.last_batch_unix: float | None = None
        self.log: Any = lambda message: None
        self._summary: DetectSummary | None = None
        self._latency: LatencyHistogram | None = None
        self._holder: ModelHolder | None = None
        self._drift_version: str | None = None
        self.registry.register(_DetectCollector(self))

    # -- loop hooks (fraudkit.detect.loop calls these on the loop's thread) ------------------------

    def bind(self, summary: DetectSummary, latency: LatencyHistogram, holder: ModelHolder) -> None:
        """The loop's cumulative figures, read at scrape time."""
        self._summary = summary
        self._latency = latency
        self._holder = holder
        self.health.set("model_loaded", True)

    def assigned(self, partitions: Sequence[int]) -> None:
        """An assignment arrived (an empty one too: a detector beyond the partition count is a standby)."""
        self.assigned_partitions = len(partitions)
        self.health.set("partitions_assigned", True)

    def batch_processed(self, seconds: float, bad: Iterable[tuple[int, str]]) -> None:
        """One batch done: its duration and its dead letters' reasons."""
        self.batch_seconds.observe(seconds)
        self.last_batch_unix = time.time()
        for _, error in bad:
            reason = dead_letter_reason(error)
            if reason not in self.dead_letters and len(self.dead_letters) >= MAX_REASONS:
                reason = "other"
            self.dead_letters[reason] += 1

    def drift_check(self) -> dict[str, Any]:
        """Recompute PSI over the window, log threshold crossings; figures for the status panel."""
        monitor = self.drift
        holder = self._holder
        if monitor is None:
            self.drift_report = DriftReport(threshold=self.config.drift.psi_threshold)
            if holder is not None:
                holder.note_drift([], time.monotonic())
            return {}
        report = monitor.report()
        self.drift_report = report
        if holder is not None:
            holder.note_drift(report.drifted, time.monotonic())
        for column, change, value in monitor.alarms(report):
            if change == "drifted":
                self.drift_alarms[column] += 1
                self.log(
                    f"{column} drifted: PSI {value:.2f} over the last {report.rows:,} rows "
                    f"(threshold {report.threshold:g}, model {report.model_version})"
                )
            else:
                self.log(f"{column} back within range: PSI {value:.2f} over the last {report.rows:,} rows")
        return report.to_dict() if report.features or report.score is not None else {}

    def observe_status(self, status: DetectStatus, partition_lag: Mapping[int, int]) -> None:
        """Keep the status-time figures (lag per partition, live quality) for the next scrapes."""
        self.partition_lag = dict(partition_lag)
        self.quality = dict(status.quality)
        self.assigned_partitions = len(status.partitions)

    # -- extension hooks --------------------------------------------------------------------

    def on_start(self, context: DetectContext) -> None:
        """The loop is about to run: the model is loaded and the in-memory state is usable."""
        self.log = context.log
        self._holder = context.holder
        self.health.set("model_loaded", True)
        # The feature state lives in memory and is rebuilt from the labels topic while serving:
        # there is no blocking restore phase to wait for (see docs/operations.md).
        self.health.set("state_restored", True)
        self.health.tick()

    def between_batches(self) -> None:
        """The loop turned."""
        self.health.tick()

    def on_batch_scored(
        self,
        features: np.ndarray,
        transactions: Sequence[Transaction],
        scores: np.ndarray,
        model_version: str,
    ) -> None:
        """Score histogram and drift window, batch-wise."""
        self.scores.observe_many(scores, (model_version,))
        if model_version != self._drift_version:
            self._use_model(model_version)
        if self.drift is not None:
            self.drift.add(features, scores)

    def on_stop(self) -> None:
        """A stopped detector is not ready."""
        self.health.set("partitions_assigned", False)

    def _use_model(self, version: str) -> None:
        """A new model serves: its own training distribution is the reference from now on."""
        self._drift_version = version
        holder = self._holder
        model = holder.model if holder is not None else None
        if model is None or model.version != version:
            self.drift = None
            return
        self.drift = monitor_for(model, self.config.drift)

    # -- scrape side --------------------------------------------------------------------------

    def collect(self) -> Iterator[Any]:
        """Every metric family, built now (called by the HTTP server's thread)."""
        specs = prom.DETECT
        yield prom.build_info("detect", self.instance_id)
        summary = self._summary
        if summary is not None:
            yield from prom.simple(specs["fraudkit_detect_consumed_total"], summary.consumed)
            yield from prom.labelled(
                specs["fraudkit_detect_verdicts_total"],
                [(("fraud",), summary.fraud), (("legit",), summary.verdicts - summary.fraud)],
            )
            yield from prom.simple(specs["fraudkit_detect_labels_total"], summary.labels)
            yield from prom.simple(specs["fraudkit_detect_invalid_labels_total"], summary.invalid_labels)
        yield from prom.labelled(
            specs["fraudkit_detect_dead_letters_total"],
            [((r,), n) for r, n in dict(self.dead_letters).items()],
        )
        holder = self._holder
        if holder is not None:
            yield from prom.simple(specs["fraudkit_detect_model_swaps_total"], holder.swaps)
            outcomes = dict(getattr(holder, "retrain_outcomes", {}))
            yield from prom.labelled(
                specs["fraudkit_detect_retrains_total"],
                [((name,), outcomes.get(name, 0)) for name in RETRAIN_OUTCOMES],
            )
            yield from prom.simple(specs["fraudkit_detect_model_serving"], 1, (holder.model.version,))
            counts = holder.features.state_counts()
            yield from prom.labelled(
                specs["fraudkit_detect_state_entries"],
                [((kind,), counts.get(kind)) for kind in ("cards", "terminals", "terminal_labels")],
            )
        yield from prom.labelled(
            specs["fraudkit_detect_drift_alarms_total"],
            [((c,), n) for c, n in dict(self.drift_alarms).items()],
        )
        yield from prom.labelled(
            specs["fraudkit_detect_consumer_lag_messages"],
            [((str(p),), lag) for p, lag in sorted(self.partition_lag.items())],
        )
        yield from prom.simple(specs["fraudkit_detect_assigned_partitions"], self.assigned_partitions)
        conditions = self.health.ready()[1]["conditions"]
        yield from prom.simple(specs["fraudkit_detect_state_restored"], float(conditions["state_restored"]))
        yield from prom.simple(specs["fraudkit_detect_ready"], float(self.health.ready()[0]))
        yield from self._quality_families(specs)
        yield from self._drift_families(specs)
        yield from prom.simple(specs["fraudkit_detect_last_batch_timestamp_seconds"], self.last_batch_unix)
        yield self.batch_seconds.add_to(specs["fraudkit_detect_batch_duration_seconds"].family())
        if self._latency is not None:
            yield prom.latency_family(
                specs["fraudkit_detect_end_to_end_latency_seconds"],
                self._latency.counts,
                prom.LATENCY_BUCKETS_S,
                self._latency.coarse,
            )
        yield self.scores.add_to(specs["fraudkit_detect_fraud_score"].family())

    def _quality_families(self, specs: Mapping[str, prom.MetricSpec]) -> Iterator[Any]:
        quality = self.quality
        for name, attribute in (
            ("fraudkit_detect_live_precision_ratio", "precision"),
            ("fraudkit_detect_live_recall_ratio", "recall"),
            ("fraudkit_detect_live_average_precision_ratio", "average_precision"),
            ("fraudkit_detect_live_labelled_verdicts", "labelled"),
        ):
            yield from prom.labelled(
                specs[name], [((version,), getattr(f, attribute)) for version, f in quality.items()]
            )

    def _drift_families(self, specs: Mapping[str, prom.MetricSpec]) -> Iterator[Any]:
        report = self.drift_report
        yield from prom.labelled(
            specs["fraudkit_feature_drift_psi"], [((name,), value) for name, value in report.features.items()]
        )
        yield from prom.labelled(
            specs["fraudkit_score_drift_psi"], [((report.model_version or "",), report.score)]
        )
        yield from prom.simple(specs["fraudkit_drift_window_rows"], report.rows)


class _DetectCollector:
    """The registry's view of a DetectTelemetry."""

    def __init__(self, telemetry: DetectTelemetry) -> None:
        self.telemetry = telemetry

    def collect(self) -> Iterator[Any]:
        yield from self.telemetry.collect()


__all__ = ["READY_CONDITIONS", "SCORE", "DetectTelemetry", "dead_letter_reason"]
