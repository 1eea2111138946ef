"""The demo's terminal dashboard and closing summary (rich renderables only; no logic)."""

from __future__ import annotations

from typing import Any

from rich.console import Group, RenderableType
from rich.panel import Panel
from rich.table import Table

from fraudkit.demo import DemoState, DemoSummary
from fraudkit.textsafe import for_terminal
from fraudkit.timefmt import ms_text


def _reasons(verdict: dict[str, Any]) -> str:
    parts = []
    for reason in verdict.get("reasons") or []:
        value = reason.get("value")
        shown = f"{value:.3g}" if isinstance(value, int | float) else str(value)
        parts.append(f"{reason.get('feature')}={shown}")
    return for_terminal(", ".join(parts) or "-")


def recent_frauds_table(state: DemoState) -> Table:
    """The latest fraud verdicts with their reason codes."""
    table = Table(title="latest fraud verdicts", expand=True, title_justify="left")
    table.add_column("transaction", overflow="fold", max_width=18)
    table.add_column("card")
    table.add_column("amount", justify="right")
    table.add_column("country")
    table.add_column("score", justify="right")
    table.add_column("model")
    table.add_column("reasons", overflow="fold")
    for verdict in list(state.recent_frauds):
        amount = verdict.get("amount")
        table.add_row(
            for_terminal(verdict.get("transaction_id", ""), 18),
            for_terminal(verdict.get("card_id", "")),
            f"{amount:,.2f}" if isinstance(amount, int | float) else "-",
            for_terminal(verdict.get("country") or "-"),
            _figure(verdict.get("score"), 3),
            for_terminal(verdict.get("model_version", "")),
            _reasons(verdict),
            style="red",
        )
    return table


def retrain_table(state: DemoState) -> Table:
    """Each live retraining's outcome and figures."""
    table = Table(title="live retraining", expand=True, title_justify="left")
    table.add_column("outcome")
    table.add_column("version")
    table.add_column("challenger", justify="right")
    table.add_column("champion", justify="right")
    table.add_column("detail", overflow="fold")
    for event in state.retrain_events[-5:]:
        metrics = _mapping(event.get("metrics"))
        champion = _mapping(event.get("champion_metrics"))
        metric = str(event.get("metric") or "average_precision")
        table.add_row(
            for_terminal(str(event.get("type", "")).replace("model_", "").replace("retrain_", "")),
            for_terminal(event.get("version") or "-"),
            _figure(metrics.get(metric)),
            _figure(champion.get(metric)),
            for_terminal(event.get("error") or f"{metric} on {event.get('holdout_rows', '?')} held-out rows"),
        )
    if not state.retrain_events:
        table.add_row("waiting for labels", "-", "-", "-", "-")
    return table


def _mapping(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _figure(value: Any, digits: int = 4) -> str:
    return f"{value:.{digits}f}" if isinstance(value, int | float) else "-"


def dashboard(state: DemoState) -> RenderableType:
    """The whole live dashboard."""
    from fraudkit.detect.status import render_panel
    from fraudkit.generate import status_panel

    broker = f"{state.broker_engine} at {state.bootstrap}" if state.bootstrap else "-"
    header = f"[bold]fraudkit demo[/] · {state.stage} · broker {broker}"
    panels = Table.grid(expand=True, padding=(0, 1))
    panels.add_column(ratio=1)
    panels.add_column(ratio=1)
    client = status_panel(state.client) if state.client is not None else Panel("waiting", title="client")
    detector = (
        render_panel(state.detector) if state.detector is not None else Panel("waiting", title="detector")
    )
    panels.add_row(client, detector)
    return Group(header, panels, retrain_table(state), recent_frauds_table(state))


def summary_view(summary: DemoSummary) -> RenderableType:
    """The closing summary: what went wrong first, in plain words, then the figures."""
    from rich.text import Text

    if not summary.problems:
        verdict = Text(f"every one of the {summary.sent:,} transactions sent got its verdict", style="green")
        return Group(verdict, summary_table(summary))
    lines = [Text("THE DEMO DID NOT KEEP UP", style="bold red")]
    lines += [Text(f"- {problem}", style="red") for problem in summary.problems]
    lines.append(Text("The figures below describe only the transactions that got a verdict.", style="red"))
    return Group(*lines, summary_table(summary))


def summary_table(summary: DemoSummary) -> Table:
    """The closing figures."""

    def pct(value: float | None) -> str:
        return "-" if value is None else f"{value:.1%}"

    def ms(name: str) -> str:
        return ms_text(summary.latency_ms.get(name), ",.1f")

    table = Table(title="demo summary", title_justify="left", show_header=False)
    table.add_column(style="bold")
    table.add_column(justify="right")
    table.add_row("transactions sent", f"{summary.sent:,}")
    table.add_row("verdicts", f"{summary.verdicts:,}")
    table.add_row("missing (no verdict)", f"{summary.missing:,}", style="red" if summary.missing else None)
    table.add_row(
        "largest detector backlog",
        f"{summary.max_lag:,} ({summary.max_lag / summary.rate:,.1f}s of traffic)" if summary.rate else "-",
    )
    table.add_row("broker", f"{summary.broker_engine} at {summary.bootstrap}")
    table.add_row("frauds sent", f"{summary.frauds_sent:,}")
    table.add_row("frauds caught", f"{summary.caught:,}")
    table.add_row("frauds missed", f"{summary.missed:,}")
    table.add_row("false alarms", f"{summary.false_alarms:,}")
    table.add_row("precision", pct(summary.precision))
    table.add_row("recall", pct(summary.recall))
    table.add_row("latency p50 / p99", f"{ms('p50')} / {ms('p99')}")
    table.add_row("detector throughput", f"{summary.detector_throughput_per_s:,.0f} tx/s")
    table.add_row(
        "models trained", f"{summary.models_trained} ({', '.join(v for v in summary.model_versions if v)})"
    )
    outcomes = [str(event.get("type", "")) for event in summary.retrains]
    table.add_row("live retrains", ", ".join(outcomes) or "none")
    table.add_row("elapsed", f"{summary.duration_s:,.0f} s")
    return table
