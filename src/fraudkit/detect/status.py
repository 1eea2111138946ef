"""What the detector reports while it runs: latency histograms, live label quality, status panel."""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from fraudkit.model.metrics import average_precision
from fraudkit.textsafe import for_terminal, printable

if TYPE_CHECKING:
    from rich.console import RenderableType

# Latencies are whole milliseconds (both ends are epoch ms); anything slower lands in the last bin.


@dataclass
class QualityFigures:
    """Live precision/recall/average precision of one model version over its recent labelled verdicts."""

    labelled: int
    frauds: int
    flagged: int
    precision: float | None
    recall: float | None
    average_precision: float | None


class LiveQuality:
    """Matches arriving labels to recent verdict scores and keeps a sliding window per model version.

    Scores, decisions and versions of the last `capacity` verdicts live in ring arrays; transaction
    ids map to their sequence number in two generations of dicts of about `capacity / 2` each, so
    remembering costs one dict insert per verdict, lookups and evictions are O(1) and memory is
    bounded. A label whose verdict was forgotten (or scored elsewhere) is ignored.
    """

    def __init__(self, capacity: int = 200_000, window: int = 5000) -> None:
        self.capacity = max(2, capacity)
        self.window = max(1, window)
        self._scores = np.zeros(self.capacity, dtype=np.float64)
        self._frauds = np.zeros(self.capacity, dtype=bool)
        self._version_codes = np.zeros(self.capacity, dtype=np.int32)
        self._versions: list[str] = []
        self._sequence = 0  # verdicts remembered so far; verdict n lives in slot n % capacity
        self._generation_start = 0
        self._current: dict[str, int] = {}
        self._previous: dict[str, int] = {}
        self._windows: dict[str, deque[tuple[float, bool, int]]] = {}
        self.matched = 0
        self.unmatched = 0

    def remember(
        self, transaction_ids: Sequence[str], scores: Sequence[float], frauds: Sequence[bool], version: str
    ) -> None:
        """Keep a batch's scores and decisions until their labels arrive."""
        count = len(transaction_ids)
        if count == 0:
            return
        capacity = self.capacity
        if count > capacity:  # only the newest `capacity` can be kept
            transaction_ids, scores, frauds = (
                transaction_ids[-capacity:],
                scores[-capacity:],
                frauds[-capacity:],
            )
            self._sequence += count - capacity
            count = capacity
        if version not in self._versions:
            self._versions.append(version)
        start = self._sequence
        first = start % capacity
        target: slice | np.ndarray = (
            slice(first, first + count)
            if first + count <= capacity
            else np.arange(start, start + count) % capacity  # wraps around the ring's end
        )
        self._scores[target] = scores
        self._frauds[target] = frauds
        self._version_codes[target] = self._versions.index(version)
        self._current.update(zip(transaction_ids, range(start, start + count), strict=True))
        self._sequence = start + count
        if self._sequence - self._generation_start >= capacity // 2:
            self._previous = self._current
            self._current = {}
            self._generation_start = self._sequence

    def observe(self, transaction_id: str, label: int) -> bool:
        """Match one label; True if its verdict was known."""
        sequence = self._current.pop(transaction_id, None)
        if sequence is None:
            sequence = self._previous.pop(transaction_id, None)
        if sequence is None or self._sequence - sequence > self.capacity:
            self.unmatched += 1
            return False
        slot = sequence % self.capacity
        version = self._versions[int(self._version_codes[slot])]
        window = self._windows.get(version)
        if window is None:
            window = self._windows[version] = deque(maxlen=self.window)
        window.append((float(self._scores[slot]), bool(self._frauds[slot]), 1 if label else 0))
        self.matched += 1
        return True

    def observe_many(self, labels: Iterable[tuple[str, int]]) -> int:
        """Match many (transaction_id, label) pairs; returns how many matched."""
        return sum(self.observe(transaction_id, label) for transaction_id, label in labels)

    def figures(self) -> dict[str, QualityFigures]:
        """Figures per model version, over each version's window."""
        result = {}
        for version, window in self._windows.items():
            if not window:
                continue
            scores = np.fromiter((s for s, _, _ in window), dtype=np.float64, count=len(window))
            flagged = np.fromiter((f for _, f, _ in window), dtype=bool, count=len(window))
            truth = np.fromiter((y for _, _, y in window), dtype=np.int64, count=len(window))
            frauds = int(truth.sum())
            flagged_count = int(flagged.sum())
            caught = int((flagged & (truth == 1)).sum())
            ap = average_precision(truth, scores) if frauds else math.nan
            result[version] = QualityFigures(
                labelled=len(window),
                frauds=frauds,
                flagged=flagged_count,
                precision=caught / flagged_count if flagged_count else None,
                recall=caught / frauds if frauds else None,
                average_precision=None if math.isnan(ap) else ap,
            )
        return result

    @property
    def remembered(self) -> int:
        """Verdicts currently waiting for a label."""
        return len(self._current) + len(self._previous)


@dataclass
class DetectStatus:
    """A snapshot of a running detector, for the live panel, quiet log lines and embedders."""

    detector: str
    elapsed_s: float
    consumed: int
    verdicts: int
    fraud: int
    dead_letters: int
    rate_per_s: float
    lag: int | None
    batch_ms: float | None
    latency_ms: dict[str, float | None]
    model_version: str
    model_swaps: int
    retrains: int
    labels: int
    quality: dict[str, QualityFigures]
    partitions: list[int]
    cards: int
    exactly_once: bool
    notes: list[str] = field(default_factory=list)
    drift: dict[str, Any] = field(default_factory=dict)  # DriftReport.to_dict() once the window is full
    state: dict[str, Any] = field(
        default_factory=dict
    )  # durable state: restores, restored cards (state_text)

    @property
    def fraud_rate(self) -> float:
        """Share of verdicts that were fraud decisions."""
        return self.fraud / self.verdicts if self.verdicts else 0.0

    def to_dict(self) -> dict[str, Any]:
        """Plain data (e.g. for JSON logs)."""
        data = asdict(self)
        data["fraud_rate"] = self.fraud_rate
        return data


def _number(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def format_log_line(status: DetectStatus) -> str:
    """One line for --quiet / container logs."""
    latency = status.latency_ms
    quality = status.quality.get(status.model_version)
    quality_text = (
        f" precision={_ratio(quality.precision)} recall={_ratio(quality.recall)} "
        f"ap={_ratio(quality.average_precision)} labelled={quality.labelled}"
        if quality
        else ""
    )
    drifted = status.drift.get("drifted") or []
    drift_text = f" drifted={','.join(drifted)}" if drifted else ""
    return (
        f"detect {status.detector}: consumed={status.consumed} rate={status.rate_per_s:,.0f}/s "
        f"lag={'-' if status.lag is None else status.lag} fraud={status.fraud} "
        f"({status.fraud_rate:.2%}) dead_letters={status.dead_letters} "
        f"p99={_number(latency.get('p99'), 0)}ms model={printable(status.model_version)} "
        f"retrains={status.retrains}{quality_text}{drift_text}"
    )


def status_fields(status: DetectStatus) -> dict[str, Any]:
    """The numbers of a status as flat JSON-log fields (quality of the serving model, worst drift)."""
    quality = status.quality.get(status.model_version)
    fields: dict[str, Any] = {
        "consumed": status.consumed,
        "verdicts": status.verdicts,
        "fraud": status.fraud,
        "fraud_rate": round(status.fraud_rate, 6),
        "dead_letters": status.dead_letters,
        "rate_per_s": round(status.rate_per_s, 1),
        "lag": status.lag,
        "batch_ms": None if status.batch_ms is None else round(status.batch_ms, 3),
        "latency_ms": status.latency_ms,
        "model_version": status.model_version,
        "model_swaps": status.model_swaps,
        "retrains": status.retrains,
        "labels": status.labels,
        "partitions": status.partitions,
        "cards": status.cards,
    }
    if quality is not None:
        fields.update(
            precision=quality.precision,
            recall=quality.recall,
            average_precision=quality.average_precision,
            labelled=quality.labelled,
        )
    if status.drift:
        fields["drift"] = status.drift
    if status.state:
        fields["state"] = status.state
    return fields


def state_text(state: dict[str, Any]) -> str:
    """The panel's durable-state line: restore progress, restored cards, changelog writes."""
    restoring = state.get("restoring")
    progress = (
        f"restoring partitions {restoring} ({state.get('restore_records', 0):,} records read) · "
        if restoring is not None
        else ""
    )
    return (
        f"state: {progress}{state.get('restored_cards', 0):,} cards restored in "
        f"{state.get('restores', 0)} restore(s), {state.get('restore_s', 0.0):.2f}s · "
        f"{state.get('changelog_records', 0):,} changelog records · "
        f"{state.get('terminal_labels_restored', 0):,} terminal labels from snapshot"
    )


def _drift_text(drift: dict[str, Any]) -> str:
    """The panel's drift line: the worst columns by PSI, drifted ones marked."""
    values = dict(drift.get("features") or {})
    if drift.get("score") is not None:
        values["score"] = drift["score"]
    drifted = set(drift.get("drifted") or [])
    worst = sorted(values.items(), key=lambda item: -item[1])[:4]
    text = ", ".join(f"{name} {value:.2f}{' !' if name in drifted else ''}" for name, value in worst)
    return f"{text} (over {drift.get('rows', 0):,} rows, alarm > {drift.get('threshold')})"


def render_panel(status: DetectStatus) -> RenderableType:
    """The live rich panel of `fraudkit detect`."""
    from rich.console import Group
    from rich.panel import Panel
    from rich.table import Table
    from rich.text import Text

    overview = Table.grid(padding=(0, 2))
    overview.add_column(style="bold")
    overview.add_column(justify="right")
    overview.add_column(style="bold")
    overview.add_column(justify="right")
    latency = status.latency_ms
    overview.add_row("consumed", f"{status.consumed:,}", "rate", f"{status.rate_per_s:,.0f} tx/s")
    overview.add_row(
        "verdicts", f"{status.verdicts:,}", "lag", "-" if status.lag is None else f"{status.lag:,}"
    )
    overview.add_row(
        "fraud",
        f"{status.fraud:,} ({status.fraud_rate:.2%})",
        "batch",
        f"{_number(status.batch_ms)} ms",
    )
    overview.add_row(
        "dead letters",
        f"{status.dead_letters:,}",
        "latency p50/p99",
        f"{_number(latency.get('p50'), 0)} / {_number(latency.get('p99'), 0)} ms",
    )
    overview.add_row(
        "model",
        for_terminal(status.model_version),
        "swaps / retrains",
        f"{status.model_swaps} / {status.retrains}",
    )
    overview.add_row(
        "partitions",
        ",".join(str(p) for p in status.partitions) or "-",
        "cards in state",
        f"{status.cards:,}",
    )
    quality = Table(title="live quality from labels (sliding window)", expand=False, title_justify="left")
    for column in ("model", "labelled", "frauds", "flagged", "precision", "recall", "avg precision"):
        quality.add_column(column, justify="right" if column != "model" else "left")
    for version, figures in status.quality.items():
        quality.add_row(
            for_terminal(version),
            f"{figures.labelled:,}",
            f"{figures.frauds:,}",
            f"{figures.flagged:,}",
            _ratio(figures.precision),
            _ratio(figures.recall),
            _ratio(figures.average_precision),
        )
    if not status.quality:
        quality.add_row("-", "waiting for labels", "", "", "", "", "")
    parts: list[RenderableType] = [overview, quality]
    if status.drift:
        drifted = bool(status.drift.get("drifted"))
        parts.append(
            Text(
                f"drift PSI: {_drift_text(status.drift)}",
                style="bold red" if drifted else "green",
            )
        )
    if status.state:
        parts.append(Text(state_text(status.state), style="cyan"))
    parts.extend(Text(printable(note), style="yellow") for note in status.notes[-3:])
    mode = "exactly-once" if status.exactly_once else "at-least-once"
    return Panel(
        Group(*parts),
        title=f"fraudkit detect · {for_terminal(status.detector)} · {mode} · {status.elapsed_s:,.0f}s",
        border_style="cyan",
    )
