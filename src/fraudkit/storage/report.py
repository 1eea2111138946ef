"""`fraudkit report`: what the sink stored, as terminal tables (optionally live) or one HTML file."""

from __future__ import annotations

import base64
import html
import io
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from rich.console import Console, Group, RenderableType
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from fraudkit.config import FraudkitConfig
from fraudkit.errors import DatabaseError, DataError
from fraudkit.numfmt import ratio_text
from fraudkit.storage.database import Database, open_database, quote_table
from fraudkit.textsafe import printable
from fraudkit.timefmt import DAYS, MINUTES, ms_text, utc_text

HOUR_MS = 3_600_000
DAY_MS = 86_400_000
# Scores are binned this finely for the precision-recall curve; the histogram merges bins.
SCORE_BINS = 1000
HISTOGRAM_BINS = 50
FLAGGED = "CASE WHEN decision = 'fraud' THEN 1 ELSE 0 END"
LABELLED_FRAUD = "CASE WHEN label = 1 THEN 1 ELSE 0 END"


@dataclass
class ReportOptions:
    """What to compute: time bucket size, table lengths, how many buckets the terminal shows."""

    bucket: Literal["auto", "hour", "day"] = "auto"
    top: int = 10
    max_buckets: int = 48


@dataclass
class Bucket:
    """Verdict and fraud counts of one time bucket (event time, UTC)."""

    start_ms: int
    verdicts: int
    flagged: int
    labelled: int
    labelled_fraud: int

    @property
    def flag_rate(self) -> float:
        """Share of verdicts that said fraud."""
        return self.flagged / self.verdicts if self.verdicts else 0.0


@dataclass
class Quality:
    """Confusion counts of the stored decisions against the labels known so far."""

    tp: int = 0
    fp: int = 0
    fn: int = 0
    tn: int = 0

    @property
    def precision(self) -> float | None:
        """TP / (TP + FP), None without any flagged labelled verdict."""
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else None

    @property
    def recall(self) -> float | None:
        """TP / (TP + FN), None without any labelled fraud."""
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else None

    @property
    def f1(self) -> float | None:
        """Harmonic mean of precision and recall."""
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p is not None and r is not None and p + r > 0 else None


@dataclass
class Breakdown:
    """Counts for one value of a dimension (country, merchant category, model version, scenario)."""

    name: str
    verdicts: int
    flagged: int
    labelled_fraud: int
    caught: int
    flagged_amount: float

    @property
    def flag_rate(self) -> float:
        """Share of this group's verdicts that said fraud."""
        return self.flagged / self.verdicts if self.verdicts else 0.0


@dataclass
class RiskyEntity:
    """A card or terminal with its flagged verdicts."""

    entity_id: str
    verdicts: int
    flagged: int
    max_score: float | None
    flagged_amount: float
    labelled_fraud: int


@dataclass
class Latency:
    """Percentiles (ms) of one latency of the pipeline."""

    name: str
    count: int
    p50: float | None
    p90: float | None
    p99: float | None
    max: float | None


@dataclass
class Report:
    """Everything the terminal and HTML reports show."""

    database: str
    table: str
    generated_ms: int
    verdicts: int = 0
    flagged: int = 0
    labelled: int = 0
    labelled_fraud: int = 0
    first_event_ms: int | None = None
    last_event_ms: int | None = None
    bucket: Literal["hour", "day"] = "hour"
    buckets: list[Bucket] = field(default_factory=list)
    quality: Quality = field(default_factory=Quality)
    by_scenario: list[Breakdown] = field(default_factory=list)
    by_country: list[Breakdown] = field(default_factory=list)
    by_merchant_category: list[Breakdown] = field(default_factory=list)
    by_model: list[Breakdown] = field(default_factory=list)
    top_cards: list[RiskyEntity] = field(default_factory=list)
    top_terminals: list[RiskyEntity] = field(default_factory=list)
    latencies: list[Latency] = field(default_factory=list)
    # score_bins[i] = (legit labelled, fraud labelled, unlabelled) for scores in [i, i+1) / SCORE_BINS
    score_bins: list[tuple[int, int, int]] = field(default_factory=list)

    def pr_curve(self) -> tuple[list[float], list[float], list[float]]:
        """Precision, recall and threshold at each score-bin edge, from high threshold to low."""
        total_fraud = sum(fraud for _, fraud, _ in self.score_bins)
        precision: list[float] = []
        recall: list[float] = []
        thresholds: list[float] = []
        if not total_fraud:
            return precision, recall, thresholds
        tp = fp = 0
        for index in range(len(self.score_bins) - 1, -1, -1):
            legit, fraud, _ = self.score_bins[index]
            tp += fraud
            fp += legit
            if fraud or legit:
                precision.append(tp / (tp + fp))
                recall.append(tp / total_fraud)
                thresholds.append(index / SCORE_BINS)
        return precision, recall, thresholds

    def average_precision(self) -> float | None:
        """Step-wise average precision of the score over the labelled verdicts (bin resolution)."""
        precision, recall, _ = self.pr_curve()
        if not precision:
            return None
        previous = 0.0
        total = 0.0
        for p, r in zip(precision, recall, strict=True):
            total += (r - previous) * p
            previous = r
        return total

    def histogram(self, bins: int = HISTOGRAM_BINS) -> list[tuple[int, int, int]]:
        """score_bins merged into `bins` equal-width bins."""
        merged = [[0, 0, 0] for _ in range(bins)]
        width = max(1, len(self.score_bins) // bins)
        for index, counts in enumerate(self.score_bins):
            target = merged[min(bins - 1, index // width)]
            for k in range(3):
                target[k] += counts[k]
        return [(a, b, c) for a, b, c in merged]

    def to_dict(self) -> dict[str, Any]:
        """Plain data for --json (score bins left out; precision/recall included)."""
        data = asdict(self)
        data.pop("score_bins")
        data["quality"].update(
            precision=self.quality.precision, recall=self.quality.recall, f1=self.quality.f1
        )
        data["average_precision"] = self.average_precision()
        return data


# -- reading the database ------------------------------------------------------------------------


def _count(value: Any) -> int:
    return int(value or 0)


def _breakdown_rows(rows: Sequence[tuple[Any, ...]]) -> list[Breakdown]:
    return [
        Breakdown(
            name="(none)" if row[0] is None or row[0] == "" else str(row[0]),
            verdicts=_count(row[1]),
            flagged=_count(row[2]),
            labelled_fraud=_count(row[3]),
            caught=_count(row[4]),
            flagged_amount=float(row[5] or 0.0),
        )
        for row in rows
    ]


def read_report(database: Database, options: ReportOptions) -> Report:
    """Query the predictions table and return the report's figures."""
    table = quote_table(database.table)
    if not database.table_exists(database.table):
        raise DatabaseError(
            f"table {database.table} not found in {database.url.describe()} (has `fraudkit sink` run?)"
        )
    report = Report(database.url.describe(), database.table, int(time.time() * 1000))
    (row,) = database.query(
        f"SELECT COUNT(*), SUM({FLAGGED}), SUM(CASE WHEN label IS NOT NULL THEN 1 ELSE 0 END), "
        f"SUM({LABELLED_FRAUD}), MIN(event_time_ms), MAX(event_time_ms), "
        "SUM(CASE WHEN label = 1 AND decision = 'fraud' THEN 1 ELSE 0 END), "
        "SUM(CASE WHEN label = 0 AND decision = 'fraud' THEN 1 ELSE 0 END), "
        "SUM(CASE WHEN label = 1 AND decision <> 'fraud' THEN 1 ELSE 0 END), "
        "SUM(CASE WHEN label = 0 AND decision <> 'fraud' THEN 1 ELSE 0 END) "
        f"FROM {table}"
    )
    report.verdicts, report.flagged, report.labelled, report.labelled_fraud = map(_count, row[:4])
    report.first_event_ms = None if row[4] is None else int(row[4])
    report.last_event_ms = None if row[5] is None else int(row[5])
    report.quality = Quality(*map(_count, row[6:10]))
    span = (report.last_event_ms or 0) - (report.first_event_ms or 0)
    report.bucket = options.bucket if options.bucket != "auto" else ("hour" if span <= 2 * DAY_MS else "day")
    size = HOUR_MS if report.bucket == "hour" else DAY_MS
    report.buckets = [
        Bucket(int(start), _count(n), _count(flagged), _count(labelled), _count(fraud))
        for start, n, flagged, labelled, fraud in database.query(
            f"SELECT (event_time_ms / {size}) * {size} AS bucket, COUNT(*), SUM({FLAGGED}), "
            f"SUM(CASE WHEN label IS NOT NULL THEN 1 ELSE 0 END), SUM({LABELLED_FRAUD}) "
            f"FROM {table} WHERE event_time_ms IS NOT NULL GROUP BY 1 ORDER BY 1"
        )
    ]
    columns = (
        f"COUNT(*), SUM({FLAGGED}), SUM({LABELLED_FRAUD}), "
        "SUM(CASE WHEN label = 1 AND decision = 'fraud' THEN 1 ELSE 0 END), "
        "SUM(CASE WHEN decision = 'fraud' THEN amount ELSE 0 END)"
    )
    report.by_scenario = _breakdown_rows(
        database.query(
            f"SELECT fraud_scenario, {columns} FROM {table} WHERE label = 1 GROUP BY 1 ORDER BY 2 DESC, 1"
        )
    )
    for attribute, column in (
        ("by_country", "country"),
        ("by_merchant_category", "merchant_category"),
        ("by_model", "model_version"),
    ):
        rows = database.query(
            f"SELECT {column}, {columns} FROM {table} GROUP BY 1 ORDER BY 3 DESC, 2 DESC, 1 LIMIT {int(options.top)}"
        )
        setattr(report, attribute, _breakdown_rows(rows))
    for attribute, column in (("top_cards", "card_id"), ("top_terminals", "terminal_id")):
        rows = database.query(
            f"SELECT {column}, COUNT(*), SUM({FLAGGED}), MAX(score), "
            f"SUM(CASE WHEN decision = 'fraud' THEN amount ELSE 0 END), SUM({LABELLED_FRAUD}) "
            f"FROM {table} WHERE {column} IS NOT NULL GROUP BY 1 "
            f"HAVING SUM({FLAGGED}) > 0 OR SUM({LABELLED_FRAUD}) > 0 "
            f"ORDER BY 3 DESC, 4 DESC, 1 LIMIT {int(options.top)}"
        )
        setattr(
            report,
            attribute,
            [
                RiskyEntity(
                    str(r[0]),
                    _count(r[1]),
                    _count(r[2]),
                    None if r[3] is None else float(r[3]),
                    float(r[4] or 0.0),
                    _count(r[5]),
                )
                for r in rows
            ],
        )
    report.latencies = [
        _latency(database, name, start, end)
        for name, start, end in (
            ("produced → verdict", "produced_ms", "verdict_ms"),
            ("consumed → verdict", "consumed_ms", "verdict_ms"),
            ("verdict → database", "verdict_ms", "written_ms"),
        )
    ]
    bins = [[0, 0, 0] for _ in range(SCORE_BINS)]
    for index, label, count in database.query(
        f"SELECT {database.score_bin(SCORE_BINS)}, COALESCE(label, -1), COUNT(*) FROM {table} "
        "WHERE score IS NOT NULL GROUP BY 1, 2"
    ):
        slot = {0: 0, 1: 1}.get(int(label), 2)
        bins[int(index)][slot] += _count(count)
    report.score_bins = [(a, b, c) for a, b, c in bins]
    return report


def _latency(database: Database, name: str, start: str, end: str) -> Latency:
    where = f"{start} IS NOT NULL AND {end} IS NOT NULL"
    (count,) = database.query(f"SELECT COUNT(*) FROM {quote_table(database.table)} WHERE {where}")[0]
    p50, p90, p99, top = database.percentiles(f"{end} - {start}", where, [0.5, 0.9, 0.99, 1.0])
    return Latency(name, _count(count), p50, p90, p99, top)


def build_report(config: FraudkitConfig, options: ReportOptions) -> Report:
    """Open sink.url read-only, read the report, close."""
    with open_database(config.sink.url, config.sink.table, config.sink.labels_table, read_only=True) as db:
        return read_report(db, options)


# -- terminal rendering --------------------------------------------------------------------------


def _time(ms: int | None, bucket: str = "minute") -> str:
    return utc_text(ms, DAYS if bucket == "day" else MINUTES)


def _percent(part: int, whole: int) -> str:
    return f"{100 * part / whole:.2f}%" if whole else "-"


def _ms(value: float | None) -> str:
    return ms_text(value, unit="")  # the column header names the unit


def _bar(value: float, peak: float, width: int = 20) -> str:
    return "█" * max(0, round(width * value / peak)) if peak > 0 else ""


def _breakdown_table(title: str, rows: list[Breakdown], heading: str) -> Table:
    table = Table(title=title, title_justify="left", expand=False)
    for name in (heading, "verdicts", "flagged", "flag rate", "labelled fraud", "caught"):
        table.add_column(name, justify="left" if name == heading else "right")
    for row in rows:
        table.add_row(
            Text(printable(row.name)),
            f"{row.verdicts:,}",
            f"{row.flagged:,}",
            _percent(row.flagged, row.verdicts),
            f"{row.labelled_fraud:,}",
            f"{row.caught:,}",
        )
    return table


def _entity_table(title: str, rows: list[RiskyEntity], heading: str) -> Table:
    table = Table(title=title, title_justify="left")
    for name in (heading, "verdicts", "flagged", "max score", "flagged amount", "labelled fraud"):
        table.add_column(name, justify="left" if name == heading else "right")
    for row in rows:
        table.add_row(
            Text(printable(row.entity_id)),
            f"{row.verdicts:,}",
            f"{row.flagged:,}",
            ratio_text(row.max_score),
            f"{row.flagged_amount:,.2f}",
            f"{row.labelled_fraud:,}",
            style="red" if row.labelled_fraud else None,
        )
    return table


def render_report(report: Report, options: ReportOptions | None = None) -> RenderableType:
    """The report as rich renderables (header, time buckets, quality, breakdowns, top lists, latency)."""
    options = options or ReportOptions()
    quality = report.quality
    header = Text()
    header.append(printable(report.table), style="bold")
    header.append(f" in {printable(report.database)}\n")
    header.append(f"{report.verdicts:,} verdicts · {report.flagged:,} flagged as fraud ")
    header.append(f"({_percent(report.flagged, report.verdicts)})", style="bold red")
    header.append(f" · {report.labelled:,} labelled, {report.labelled_fraud:,} of them fraud\n")
    header.append(
        f"event time {_time(report.first_event_ms)} → {_time(report.last_event_ms)} UTC · "
        f"generated {_time(report.generated_ms)} UTC"
    )
    parts: list[RenderableType] = [Panel(header, title="fraudkit report", title_align="left")]
    if not report.verdicts:
        parts.append(Text("no verdicts stored yet: run `fraudkit sink` while `fraudkit detect` runs"))
        return Group(*parts)

    shown = report.buckets[-options.max_buckets :]
    over_time = Table(
        title=f"Verdicts per {report.bucket} (event time, UTC"
        + (f", last {len(shown)} of {len(report.buckets)}" if len(shown) < len(report.buckets) else "")
        + ")",
        title_justify="left",
    )
    for name in (report.bucket, "verdicts", "flagged", "flag rate", "labelled fraud", ""):
        over_time.add_column(name, justify="left" if name in (report.bucket, "") else "right")
    peak = max((b.flag_rate for b in shown), default=0.0)
    for bucket in shown:
        over_time.add_row(
            _time(bucket.start_ms, report.bucket),
            f"{bucket.verdicts:,}",
            f"{bucket.flagged:,}",
            _percent(bucket.flagged, bucket.verdicts),
            f"{bucket.labelled_fraud:,}",
            Text(_bar(bucket.flag_rate, peak), style="red"),
        )
    parts.append(over_time)

    quality_table = Table(title="Decisions against known labels", title_justify="left")
    for name in ("labelled", "TP", "FP", "FN", "TN", "precision", "recall", "F1", "avg precision"):
        quality_table.add_column(name, justify="right")
    quality_table.add_row(
        f"{report.labelled:,}",
        f"{quality.tp:,}",
        f"{quality.fp:,}",
        f"{quality.fn:,}",
        f"{quality.tn:,}",
        ratio_text(quality.precision),
        ratio_text(quality.recall),
        ratio_text(quality.f1),
        ratio_text(report.average_precision()),
    )
    parts.append(quality_table)
    if report.by_scenario:
        scenario = Table(title="Labelled fraud by scenario", title_justify="left")
        for name in ("scenario", "labelled fraud", "caught", "recall"):
            scenario.add_column(name, justify="left" if name == "scenario" else "right")
        for row in report.by_scenario:
            scenario.add_row(
                Text(printable(row.name)),
                f"{row.verdicts:,}",
                f"{row.caught:,}",
                _percent(row.caught, row.verdicts),
            )
        parts.append(scenario)
    parts.append(_breakdown_table("By country", report.by_country, "country"))
    parts.append(_breakdown_table("By merchant category", report.by_merchant_category, "merchant category"))
    parts.append(_breakdown_table("By model version", report.by_model, "model"))
    parts.append(_entity_table("Top risky cards", report.top_cards, "card"))
    parts.append(_entity_table("Top risky terminals", report.top_terminals, "terminal"))
    latency = Table(title="Latency (ms)", title_justify="left")
    for name in ("between", "n", "p50", "p90", "p99", "max"):
        latency.add_column(name, justify="left" if name == "between" else "right")
    for timing in report.latencies:
        latency.add_row(
            timing.name,
            f"{timing.count:,}",
            _ms(timing.p50),
            _ms(timing.p90),
            _ms(timing.p99),
            _ms(timing.max),
        )
    parts.append(latency)
    return Group(*parts)


def watch_report(
    config: FraudkitConfig,
    options: ReportOptions,
    console: Console,
    stop: threading.Event,
    refresh_s: float,
    on_refresh: Callable[[Report], None] | None = None,
) -> Report | None:
    """Re-read and redraw the report every refresh_s until stop is set; returns the last report."""
    from rich.live import Live

    last: Report | None = None
    with Live(console=console, auto_refresh=False, transient=False) as live:
        while True:
            last = build_report(config, options)
            live.update(render_report(last, options), refresh=True)
            if on_refresh is not None:
                on_refresh(last)
            if stop.wait(refresh_s):
                break
    return last


# -- HTML ----------------------------------------------------------------------------------------


def _png(figure: Any) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _charts(report: Report) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure  # Figure (not pyplot) keeps no global state

    charts: dict[str, str] = {}
    figure = Figure(figsize=(6, 4.5))
    axes = figure.subplots()
    precision, recall, _ = report.pr_curve()
    if precision:
        axes.step(recall, precision, where="post", color="#c0392b", label="score")
        quality = report.quality
        if quality.precision is not None and quality.recall is not None:
            axes.plot([quality.recall], [quality.precision], "o", color="black", label="stored decisions")
        axes.legend(loc="lower left")
    else:
        axes.text(0.5, 0.5, "no labelled fraud yet", ha="center", va="center")
    ap = report.average_precision()
    axes.set(
        xlabel="recall",
        ylabel="precision",
        xlim=(0, 1.02),
        ylim=(0, 1.02),
        title="Precision-recall curve" + (f" (AP {ap:.3f})" if ap is not None else ""),
    )
    charts["pr-curve"] = _png(figure)

    figure = Figure(figsize=(8, 4))
    axes = figure.subplots()
    if report.buckets:
        times: list[Any] = [datetime.fromtimestamp(b.start_ms / 1000, tz=UTC) for b in report.buckets]
        axes.plot(
            times,
            [100 * b.flag_rate for b in report.buckets],
            marker=".",
            color="#c0392b",
            label="flagged by the model",
        )
        labelled = [
            (t, 100 * b.labelled_fraud / b.labelled)
            for t, b in zip(times, report.buckets, strict=True)
            if b.labelled
        ]
        if labelled:
            axes.plot(
                [t for t, _ in labelled],
                [r for _, r in labelled],
                marker=".",
                color="#2c3e50",
                label="fraud among labelled",
            )
        axes.legend(loc="upper left")
        figure.autofmt_xdate()
    else:
        axes.text(0.5, 0.5, "no verdicts", ha="center", va="center")
    axes.set(ylabel="% of verdicts", title=f"Fraud rate per {report.bucket} (event time, UTC)")
    charts["fraud-rate"] = _png(figure)

    figure = Figure(figsize=(8, 4))
    axes = figure.subplots()
    histogram = report.histogram()
    edges = [i / len(histogram) for i in range(len(histogram))]
    width = 1 / len(histogram)
    bottom = [0] * len(histogram)
    for slot, name, color in (
        (0, "legit (labelled)", "#7f8c8d"),
        (2, "unlabelled", "#bdc3c7"),
        (1, "fraud (labelled)", "#c0392b"),
    ):
        heights = [counts[slot] for counts in histogram]
        axes.bar(edges, heights, width=width, bottom=bottom, align="edge", color=color, label=name)
        bottom = [b + h for b, h in zip(bottom, heights, strict=True)]
    if any(bottom):
        axes.set_yscale("log")
    axes.legend(loc="upper center")
    axes.set(xlabel="score", ylabel="verdicts", xlim=(0, 1), title="Score histogram")
    charts["score-histogram"] = _png(figure)
    return charts


_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.9em; }
th, td { border-bottom: 1px solid #ddd; padding: 0.25em 0.8em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
h1 { font-size: 1.4em; } h2 { font-size: 1.1em; margin-top: 1.5em; }
.fraud { color: #c0392b; font-weight: bold; }
img { max-width: 100%; border: 1px solid #eee; margin-right: 1em; }
"""


def _html_table(headings: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in headings)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(cell))}</td>" for cell in row) + "</tr>" for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def render_html(report: Report) -> str:
    """The report as one self-contained HTML page (charts embedded as base64 PNG)."""
    charts = _charts(report)
    quality = report.quality
    sections = [
        f"<h1>fraudkit report: {html.escape(report.table)}</h1>",
        f"<p>{html.escape(report.database)}<br>{report.verdicts:,} verdicts, "
        f'<span class="fraud">{report.flagged:,} flagged ({_percent(report.flagged, report.verdicts)})</span>, '
        f"{report.labelled:,} labelled ({report.labelled_fraud:,} fraud). Event time "
        f"{_time(report.first_event_ms)} → {_time(report.last_event_ms)} UTC; generated "
        f"{_time(report.generated_ms)} UTC.</p>",
        "<h2>Charts</h2>",
        f'<img id="chart-pr-curve" alt="Precision-recall curve" src="data:image/png;base64,{charts["pr-curve"]}">',
        f'<img id="chart-fraud-rate" alt="Fraud rate over time" src="data:image/png;base64,{charts["fraud-rate"]}">',
        f'<img id="chart-score-histogram" alt="Score histogram" src="data:image/png;base64,{charts["score-histogram"]}">',
        "<h2>Decisions against known labels</h2>",
        _html_table(
            ("labelled", "TP", "FP", "FN", "TN", "precision", "recall", "F1", "avg precision"),
            [
                (
                    report.labelled,
                    quality.tp,
                    quality.fp,
                    quality.fn,
                    quality.tn,
                    ratio_text(quality.precision),
                    ratio_text(quality.recall),
                    ratio_text(quality.f1),
                    ratio_text(report.average_precision()),
                )
            ],
        ),
        f"<h2>Verdicts per {report.bucket} (event time, UTC)</h2>",
        _html_table(
            (report.bucket, "verdicts", "flagged", "flag rate", "labelled fraud"),
            [
                (
                    _time(b.start_ms, report.bucket),
                    b.verdicts,
                    b.flagged,
                    _percent(b.flagged, b.verdicts),
                    b.labelled_fraud,
                )
                for b in report.buckets
            ],
        ),
        "<h2>Labelled fraud by scenario</h2>",
        _html_table(
            ("scenario", "labelled fraud", "caught", "recall"),
            [(r.name, r.verdicts, r.caught, _percent(r.caught, r.verdicts)) for r in report.by_scenario],
        ),
    ]
    for title, rows, heading in (
        ("By country", report.by_country, "country"),
        ("By merchant category", report.by_merchant_category, "merchant category"),
        ("By model version", report.by_model, "model"),
    ):
        sections.append(f"<h2>{title}</h2>")
        sections.append(
            _html_table(
                (heading, "verdicts", "flagged", "flag rate", "labelled fraud", "caught"),
                [
                    (
                        r.name,
                        r.verdicts,
                        r.flagged,
                        _percent(r.flagged, r.verdicts),
                        r.labelled_fraud,
                        r.caught,
                    )
                    for r in rows
                ],
            )
        )
    for title, entities, heading in (
        ("Top risky cards", report.top_cards, "card"),
        ("Top risky terminals", report.top_terminals, "terminal"),
    ):
        sections.append(f"<h2>{title}</h2>")
        sections.append(
            _html_table(
                (heading, "verdicts", "flagged", "max score", "flagged amount", "labelled fraud"),
                [
                    (
                        e.entity_id,
                        e.verdicts,
                        e.flagged,
                        ratio_text(e.max_score),
                        f"{e.flagged_amount:,.2f}",
                        e.labelled_fraud,
                    )
                    for e in entities
                ],
            )
        )
    sections.append("<h2>Latency (ms)</h2>")
    sections.append(
        _html_table(
            ("between", "n", "p50", "p90", "p99", "max"),
            [(r.name, r.count, _ms(r.p50), _ms(r.p90), _ms(r.p99), _ms(r.max)) for r in report.latencies],
        )
    )
    body = "\n".join(sections)
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>fraudkit report: {html.escape(report.table)}</title><style>{_CSS}</style></head>"
        f"<body>\n{body}\n</body></html>\n"
    )


def write_html(report: Report, path: Path) -> Path:
    """Write the HTML report to path; DataError if the file cannot be written."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(render_html(report), encoding="utf-8")
    except OSError as exc:
        raise DataError(f"cannot write the HTML report to {path}: {exc.strerror}") from None
    return path
