"""The detector's figures over time: batch times, end-to-end latency (whole run and since the last
status), and the status snapshots the panel, the log line and the telemetry read."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from fraudkit.detect.holder import ModelHolder
from fraudkit.detect.settings import DetectSettings, DetectSummary
from fraudkit.detect.status import DetectStatus, LiveQuality
from fraudkit.latency import LatencyHistogram

if TYPE_CHECKING:
    from fraudkit.observability.detect_telemetry import DetectTelemetry

StatusCallback = Callable[[DetectStatus], None]
LagCallback = Callable[[], "dict[int, int] | None"]


class StatusMeter:
    """Measures the loop and emits a `DetectStatus` every `status_interval_s`."""

    def __init__(
        self,
        settings: DetectSettings,
        summary: DetectSummary,
        holder: ModelHolder,
        quality: LiveQuality,
        on_status: StatusCallback | None,
        telemetry: DetectTelemetry | None,
    ) -> None:
        self.settings = settings
        self.summary = summary
        self.holder = holder
        self.quality = quality
        self.on_status = on_status
        self.telemetry = telemetry
        self.latency = LatencyHistogram()
        self.recent_latency = LatencyHistogram()
        self.started = self.status_at = self.last_batch_at = time.monotonic()
        self.first_batch_at: float | None = None
        self.status_consumed = 0
        self.batch_times: list[float] = []

    def start(self) -> None:
        """The run starts now."""
        self.started = self.status_at = self.last_batch_at = time.monotonic()

    def batch(self, started: float, done: float) -> None:
        """One batch was processed between these two moments."""
        if self.first_batch_at is None:
            self.first_batch_at = started
        self.last_batch_at = done
        self.batch_times.append(done - started)

    def record_latency(self, produced_ms: list[int], delivered_ms: int) -> None:
        """End-to-end latencies: from each transaction's produced_ms to its verdict's delivery."""
        if produced_ms:
            latencies = np.subtract(delivered_ms, produced_ms)
            self.latency.add(latencies)
            self.recent_latency.add(latencies)

    def snapshot(
        self, now: float, assigned: set[int], lag: dict[int, int] | None, notes: list[str]
    ) -> DetectStatus:
        """The loop's status now."""
        interval = max(now - self.status_at, 1e-9)
        summary = self.summary
        holder = self.holder
        times = self.batch_times
        batch_ms = 1000.0 * sum(times) / len(times) if times else None
        latency = self.recent_latency.summary() if self.recent_latency.total else self.latency.summary()
        last_retrain = holder.last_retrain
        if last_retrain and last_retrain.get("summary"):
            notes = [*notes, f"last retraining: {last_retrain['summary']}"]
        telemetry = self.telemetry
        status = DetectStatus(
            detector=self.settings.instance_id,
            elapsed_s=now - self.started,
            consumed=summary.consumed,
            verdicts=summary.verdicts,
            fraud=summary.fraud,
            dead_letters=summary.dead_letters,
            rate_per_s=(summary.consumed - self.status_consumed) / interval,
            lag=None if lag is None else sum(lag.values()),
            batch_ms=batch_ms,
            latency_ms=latency,
            model_version=holder.model.version,
            model_swaps=holder.swaps,
            retrains=holder.retrains,
            labels=summary.labels,
            quality=self.quality.figures(),
            partitions=sorted(assigned),
            cards=holder.features.state_counts()["cards"],
            exactly_once=self.settings.exactly_once,
            notes=notes,
            drift=telemetry.drift_check() if telemetry is not None else {},
            state=dict(summary.state),
        )
        if telemetry is not None:
            telemetry.observe_status(status, lag or {})
        return status

    def due(self, now: float) -> bool:
        """Whether a status is due."""
        return now - self.status_at >= self.settings.status_interval_s

    def emitted(self, now: float) -> None:
        """A status was just emitted (or skipped): the recent figures start again."""
        self.status_at = now
        self.status_consumed = self.summary.consumed
        self.batch_times = []
        self.recent_latency.reset()

    def finalise(self, now: float) -> None:
        """Fill the summary's closing figures."""
        summary = self.summary
        holder = self.holder
        summary.elapsed_s = now - self.started
        if self.first_batch_at is not None:
            summary.processing_s = self.last_batch_at - self.first_batch_at
        summary.latency_ms = self.latency.summary()
        summary.model_version = holder.model.version
        summary.model_versions = list(holder.versions)
        summary.model_swaps = holder.swaps
        summary.retrains = holder.retrains
        summary.last_retrain = holder.last_retrain
        summary.quality = {version: vars(figures) for version, figures in self.quality.figures().items()}
