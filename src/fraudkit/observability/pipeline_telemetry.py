"""Metrics and probes of `generate` and `sink`, exported from the summaries their loops report."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from fraudkit.config import FraudkitConfig
from fraudkit.observability import prometheus as prom
from fraudkit.observability.health import Health

if TYPE_CHECKING:
    from fraudkit.generate import GenerateSummary
    from fraudkit.storage.sink import SinkSummary


class GenerateTelemetry:
    """`fraudkit generate`: fed by its status callback (a snapshot every status interval)."""

    def __init__(self, config: FraudkitConfig, instance_id: str, registry: Any = None) -> None:
        self.instance_id = instance_id
        self.registry = registry if registry is not None else prom.new_registry()
        self.health = Health(config.metrics.stall_after_s, ("producing",))
        self.snapshot: GenerateSummary | None = None
        self.registry.register(self)

    def update(self, summary: GenerateSummary) -> None:
        """A status snapshot of the generator (its loop turned)."""
        self.snapshot = summary
        self.health.tick()
        if summary.phase != "starting":
            self.health.set("producing", summary.phase in ("producing", "flushing", "waiting for verdicts"))

    def collect(self) -> Iterator[Any]:
        """Every metric family, built now."""
        specs = prom.GENERATE
        yield prom.build_info("generate", self.instance_id)
        status = self.snapshot
        if status is None:
            return
        for name, value in (
            ("fraudkit_generate_sent_total", status.sent),
            ("fraudkit_generate_frauds_sent_total", status.frauds_sent),
            ("fraudkit_generate_labels_sent_total", status.labels_sent),
            ("fraudkit_generate_pending_labels", status.labels_pending),
        ):
            yield from prom.simple(specs[name], value)
        if not status.read_verdicts:
            return
        yield from prom.simple(specs["fraudkit_generate_verdicts_received_total"], status.verdicts)
        yield from prom.simple(specs["fraudkit_generate_unmatched_verdicts_total"], status.unmatched)
        yield from prom.simple(specs["fraudkit_generate_pending_verdicts"], status.pending)
        yield from prom.labelled(
            specs["fraudkit_generate_outcomes_total"],
            [((k,), v) for k, v in sorted(status.confusion.items())],
        )
        latency = status.latency_ms or {}
        yield from prom.labelled(
            specs["fraudkit_generate_verdict_latency_seconds"],
            [
                ((quantile,), None if latency.get(key) is None else float(latency[key] or 0) / 1000.0)
                for quantile, key in (("0.5", "p50"), ("0.95", "p95"), ("0.99", "p99"))
            ],
        )


class SinkTelemetry:
    """`fraudkit sink`: fed after every committed batch and on every turn of its loop."""

    def __init__(self, config: FraudkitConfig, instance_id: str, registry: Any = None) -> None:
        self.instance_id = instance_id
        self.registry = registry if registry is not None else prom.new_registry()
        self.health = Health(config.metrics.stall_after_s, ("partitions_assigned",))
        self.summary: SinkSummary | None = None
        self.last_batch_unix: float | None = None
        self.registry.register(self)

    def batch(self, summary: SinkSummary) -> None:
        """A batch was written and committed."""
        self.summary = summary
        self.last_batch_unix = time.time()

    def tick(self, summary: SinkSummary, assigned: bool) -> None:
        """The loop turned; `assigned` once the group gave this sink its partitions."""
        self.summary = summary
        self.health.tick()
        if assigned:
            self.health.set("partitions_assigned", True)

    def collect(self) -> Iterator[Any]:
        """Every metric family, built now."""
        specs = prom.SINK
        yield prom.build_info("sink", self.instance_id)
        summary = self.summary
        if summary is None:
            return
        for name, value in (
            ("fraudkit_sink_messages_total", summary.messages),
            ("fraudkit_sink_verdicts_total", summary.verdicts),
            ("fraudkit_sink_rows_inserted_total", summary.inserted),
            ("fraudkit_sink_duplicates_total", summary.duplicates),
            ("fraudkit_sink_labels_total", summary.labels),
            ("fraudkit_sink_invalid_total", summary.invalid),
            ("fraudkit_sink_batches_total", summary.batches),
            ("fraudkit_sink_database_retries_total", summary.database_retries),
            ("fraudkit_sink_commit_failures_total", summary.commit_failures),
        ):
            yield from prom.simple(specs[name], value)
        yield from prom.simple(specs["fraudkit_sink_last_batch_timestamp_seconds"], self.last_batch_unix)
