"""The metric catalogue of fraudkit and the helpers its collectors share.

Every metric is built at scrape time by a custom collector from figures the loops keep anyway
(cumulative counts, the latency histogram, the serving model), so the hot path pays nothing for
most of them; the score distribution and batch durations are binned per batch with numpy
(`BulkHistogram`), never per message. `CATALOGUE` is the single list of names, types and labels:
docs/operations.md and the Grafana dashboard test read it.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

Kind = Literal["counter", "gauge", "histogram"]

LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BATCH_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
SCORE_BUCKETS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99)


@dataclass(frozen=True)
class MetricSpec:
    """One metric: its full name (counters with `_total`), type, labels and help text."""

    name: str
    kind: Kind
    help: str
    labels: tuple[str, ...] = ()

    @property
    def family_name(self) -> str:
        """The name prometheus_client's families take (counters without `_total`)."""
        return self.name.removesuffix("_total") if self.kind == "counter" else self.name

    def series_names(self) -> set[str]:
        """Names of the series this metric exposes (histograms: _bucket, _sum, _count)."""
        if self.kind == "histogram":
            return {f"{self.name}_bucket", f"{self.name}_sum", f"{self.name}_count"}
        return {self.name}

    def family(self) -> Any:
        """An empty metric family to add samples to."""
        labels = list(self.labels)
        if self.kind == "counter":
            return CounterMetricFamily(self.family_name, self.help, labels=labels)
        if self.kind == "gauge":
            return GaugeMetricFamily(self.name, self.help, labels=labels)
        return HistogramMetricFamily(self.name, self.help, labels=labels)


def _specs(*specs: MetricSpec) -> dict[str, MetricSpec]:
    return {spec.name: spec for spec in specs}


COMMON = _specs(
    MetricSpec(
        "fraudkit_build_info",
        "gauge",
        "Always 1: the fraudkit version, command and instance id.",
        ("version", "component", "instance_id"),
    ),
)
DETECT = _specs(
    MetricSpec("fraudkit_detect_consumed_total", "counter", "Messages consumed from the transactions topic."),
    MetricSpec("fraudkit_detect_verdicts_total", "counter", "Verdicts produced, by decision.", ("decision",)),
    MetricSpec(
        "fraudkit_detect_dead_letters_total",
        "counter",
        "Messages sent to the dead-letter topic, by reason (the field or check that failed).",
        ("reason",),
    ),
    MetricSpec("fraudkit_detect_labels_total", "counter", "Labels consumed (applied to the feature state)."),
    MetricSpec(
        "fraudkit_detect_invalid_labels_total", "counter", "Label messages that could not be decoded."
    ),
    MetricSpec("fraudkit_detect_model_swaps_total", "counter", "Hot swaps to another model version."),
    MetricSpec(
        "fraudkit_detect_retrains_total",
        "counter",
        "Retraining outcomes seen by this detector (published, rejected, failed; cancelled: killed at its stop).",
        ("outcome",),
    ),
    MetricSpec(
        "fraudkit_detect_drift_alarms_total",
        "counter",
        "Times a column's PSI crossed drift.psi_threshold.",
        ("feature",),
    ),
    MetricSpec(
        "fraudkit_detect_consumer_lag_messages",
        "gauge",
        "Messages behind the end of each assigned transactions partition.",
        ("partition",),
    ),
    MetricSpec("fraudkit_detect_assigned_partitions", "gauge", "Transactions partitions this detector owns."),
    MetricSpec(
        "fraudkit_detect_model_serving",
        "gauge",
        "1 for the model version serving now (older versions are not exported).",
        ("model_version",),
    ),
    MetricSpec(
        "fraudkit_detect_state_entries",
        "gauge",
        "Entries in the online feature state (cards, terminals, terminal_labels).",
        ("kind",),
    ),
    MetricSpec(
        "fraudkit_detect_state_restored",
        "gauge",
        "1 once the feature state is usable (the loop runs; labels keep warming it).",
    ),
    MetricSpec("fraudkit_detect_ready", "gauge", "1 when /readyz answers 200."),
    MetricSpec(
        "fraudkit_detect_live_precision_ratio",
        "gauge",
        "Precision at the threshold over the labelled verdicts of the live window.",
        ("model_version",),
    ),
    MetricSpec(
        "fraudkit_detect_live_recall_ratio",
        "gauge",
        "Recall at the threshold over the labelled verdicts of the live window.",
        ("model_version",),
    ),
    MetricSpec(
        "fraudkit_detect_live_average_precision_ratio",
        "gauge",
        "Average precision of the scores over the labelled verdicts of the live window.",
        ("model_version",),
    ),
    MetricSpec(
        "fraudkit_detect_live_labelled_verdicts",
        "gauge",
        "Labelled verdicts in the live quality window.",
        ("model_version",),
    ),
    MetricSpec(
        "fraudkit_feature_drift_psi",
        "gauge",
        "Population stability index of a feature: live window against the training distribution.",
        ("feature",),
    ),
    MetricSpec(
        "fraudkit_score_drift_psi",
        "gauge",
        "Population stability index of the fraud score: live window against training.",
        ("model_version",),
    ),
    MetricSpec("fraudkit_drift_window_rows", "gauge", "Live rows in the drift window."),
    MetricSpec(
        "fraudkit_detect_last_batch_timestamp_seconds", "gauge", "Unix time of the last processed batch."
    ),
    MetricSpec(
        "fraudkit_detect_batch_duration_seconds",
        "histogram",
        "Time to decode, score, produce and account one batch.",
    ),
    MetricSpec(
        "fraudkit_detect_end_to_end_latency_seconds",
        "histogram",
        "Transaction produced (produced_ms) to its verdict acknowledged by the broker.",
    ),
    MetricSpec(
        "fraudkit_detect_fraud_score",
        "histogram",
        "Fraud probability of scored transactions.",
        ("model_version",),
    ),
)
GENERATE = _specs(
    MetricSpec("fraudkit_generate_sent_total", "counter", "Transactions produced."),
    MetricSpec("fraudkit_generate_frauds_sent_total", "counter", "Produced transactions that are fraud."),
    MetricSpec("fraudkit_generate_labels_sent_total", "counter", "Labels produced."),
    MetricSpec(
        "fraudkit_generate_verdicts_received_total",
        "counter",
        "Verdicts read back that matched a sent transaction.",
    ),
    MetricSpec(
        "fraudkit_generate_unmatched_verdicts_total",
        "counter",
        "Verdicts read back for transactions this run did not send (or forgot).",
    ),
    MetricSpec(
        "fraudkit_generate_outcomes_total",
        "counter",
        "The client's confusion counts of matched verdicts (tp, fp, tn, fn).",
        ("outcome",),
    ),
    MetricSpec("fraudkit_generate_pending_verdicts", "gauge", "Sent transactions still without a verdict."),
    MetricSpec("fraudkit_generate_pending_labels", "gauge", "Labels waiting for their delay."),
    MetricSpec(
        "fraudkit_generate_verdict_latency_seconds",
        "gauge",
        "Produced to verdict read back, percentiles over the run.",
        ("quantile",),
    ),
)
SINK = _specs(
    MetricSpec("fraudkit_sink_messages_total", "counter", "Messages consumed and committed."),
    MetricSpec("fraudkit_sink_verdicts_total", "counter", "Verdict rows written (new or already stored)."),
    MetricSpec("fraudkit_sink_rows_inserted_total", "counter", "Verdict rows that were new."),
    MetricSpec("fraudkit_sink_duplicates_total", "counter", "Verdict rows already stored (re-deliveries)."),
    MetricSpec("fraudkit_sink_labels_total", "counter", "Label rows written."),
    MetricSpec("fraudkit_sink_invalid_total", "counter", "Messages skipped as invalid."),
    MetricSpec("fraudkit_sink_batches_total", "counter", "Database transactions committed."),
    MetricSpec("fraudkit_sink_database_retries_total", "counter", "Retries of an unavailable database."),
    MetricSpec("fraudkit_sink_commit_failures_total", "counter", "Kafka offset commits that failed."),
    MetricSpec("fraudkit_sink_last_batch_timestamp_seconds", "gauge", "Unix time of the last written batch."),
)
CATALOGUE: dict[str, MetricSpec] = {**COMMON, **DETECT, **GENERATE, **SINK}


def series_names(specs: Iterable[MetricSpec] | None = None) -> set[str]:
    """Every series name the catalogue (or the given specs) can expose."""
    return set().union(*(spec.series_names() for spec in (specs or CATALOGUE.values())))


def histogram_buckets(counts: np.ndarray, bounds: Sequence[float]) -> list[tuple[str, float]]:
    """Cumulative (le, count) pairs for per-bin counts (len(bounds) + 1 bins, the last one +Inf)."""
    cumulative = np.cumsum(counts)
    pairs = [(_le(bound), float(cumulative[i])) for i, bound in enumerate(bounds)]
    pairs.append(("+Inf", float(cumulative[-1])))
    return pairs


def _le(bound: float) -> str:
    return repr(float(bound))


class BulkHistogram:
    """Histogram bins per label set, observed a whole batch at a time (searchsorted + bincount)."""

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = np.asarray(bounds, dtype=np.float64)
        self._counts: dict[tuple[str, ...], np.ndarray] = {}
        self._sums: dict[tuple[str, ...], float] = {}
        self._lock = threading.Lock()

    def observe_many(self, values: np.ndarray | Sequence[float], labels: tuple[str, ...] = ()) -> None:
        """Count a batch of values (a value equal to a bound belongs to that bound's bucket, as `le` says)."""
        array = np.asarray(values, dtype=np.float64)
        if array.size == 0:
            return
        binned = np.bincount(np.searchsorted(self.bounds, array, side="left"), minlength=self.bounds.size + 1)
        total = float(array.sum())
        with self._lock:
            counts = self._counts.get(labels)
            if counts is None:
                self._counts[labels] = binned.astype(np.int64)
                self._sums[labels] = total
            else:
                counts += binned
                self._sums[labels] += total

    def observe(self, value: float, labels: tuple[str, ...] = ()) -> None:
        """Count one value."""
        self.observe_many(np.asarray([value]), labels)

    def add_to(self, family: Any) -> Any:
        """Add a sample per label set to a HistogramMetricFamily."""
        with self._lock:
            items = [(labels, counts.copy(), self._sums[labels]) for labels, counts in self._counts.items()]
        for labels, counts, total in items:
            family.add_metric(list(labels), histogram_buckets(counts, self.bounds.tolist()), total)
        return family


def latency_family(
    spec: MetricSpec,
    counts_ms: np.ndarray,
    bounds_s: Sequence[float],
    coarse: Mapping[int, int] | None = None,
) -> Any:
    """A histogram family from whole-millisecond bin counts and the coarse buckets past them
    (fraudkit.latency.LatencyHistogram's `counts` and `coarse`)."""
    counts = np.asarray(counts_ms)
    coarse = coarse or {}
    cumulative = np.cumsum(counts)
    total = float(cumulative[-1]) if cumulative.size else 0.0
    last = counts.size - 1

    def at_or_below(bound_s: float) -> float:
        limit_ms = math.floor(bound_s * 1000)
        exact = float(cumulative[min(last, limit_ms)]) if cumulative.size else 0.0
        return exact + float(sum(n for value, n in coarse.items() if value <= limit_ms))

    buckets = [(_le(b), at_or_below(b)) for b in bounds_s]
    buckets.append(("+Inf", total + float(sum(coarse.values()))))
    # Whole milliseconds times their counts, in exact integers. Not np.dot: on float64 that is a
    # BLAS call, which OpenBLAS splits across threads for a vector this long (60,000 bins), and its
    # worker then spins for about 0.1 s of CPU: measured as 80 ms of CPU per scrape, 13% of the
    # detector's CPU at one scrape a second (benchmarks/bench_metrics.py).
    sum_s = (
        int(np.multiply(counts.astype(np.int64, copy=False), np.arange(counts.size, dtype=np.int64)).sum())
        / 1000.0
    )
    sum_s += sum(value * n for value, n in coarse.items()) / 1000.0
    family = spec.family()
    family.add_metric([], buckets, sum_s)
    return family


def build_info(component: str, instance_id: str) -> Metric:
    """fraudkit_build_info{version, component, instance_id} 1."""
    from fraudkit import __version__

    family = COMMON["fraudkit_build_info"].family()
    family.add_metric([__version__, component, instance_id], 1.0)
    return family


def simple(spec: MetricSpec, value: float | None, labels: Sequence[str] = ()) -> Iterator[Any]:
    """One family with one sample (nothing when the value is unknown)."""
    if value is None:
        return
    family = spec.family()
    family.add_metric(list(labels), float(value))
    yield family


def labelled(spec: MetricSpec, values: Iterable[tuple[Sequence[str], float | None]]) -> Iterator[Any]:
    """One family with a sample per label set (unknown values skipped)."""
    family = spec.family()
    for labels, value in values:
        if value is not None:
            family.add_metric(list(labels), float(value))
    yield family


def new_registry() -> Any:
    """A registry of its own (not the process-global one), so tests and benchmarks can run several."""
    from prometheus_client import CollectorRegistry

    return CollectorRegistry(auto_describe=False)
