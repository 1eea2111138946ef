"""`fraudkit sink` (verdicts into SQL) and `fraudkit report` (what the sink stored)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from fraudkit.cli.app import Every, app, console, err_console, event_log, load, stdout_is_terminal
from fraudkit.cli.options import (
    ConfigOption,
    LogFormatOption,
    MetricsPortOption,
    SetOption,
    SummaryJsonOption,
    batch_size_flag,
    duration_flag,
    json_flag,
    until_idle_flag,
    url_flag,
)

UrlOption = Annotated[
    str | None, url_flag("Database URL: sqlite:///file.db or postgresql://user:pw@host/db (sink.url).")
]
# JSON logs: one status event this often.
LOG_EVERY_S = 5.0
TableOption = Annotated[str | None, typer.Option("--table", help="Predictions table (sink.table).")]


@app.command("sink")
def sink(
    url: UrlOption = None,
    table: TableOption = None,
    until_idle: Annotated[
        float | None, until_idle_flag("Stop after this many seconds without a message.", min=0)
    ] = None,
    max_messages: Annotated[
        int | None, typer.Option("--max-messages", min=1, help="Stop after this many messages.")
    ] = None,
    duration: Annotated[float | None, duration_flag(min=0)] = None,
    labels: Annotated[
        bool | None,
        typer.Option(
            "--labels/--no-labels", help="Also consume the labels topic (sink.labels).", show_default=False
        ),
    ] = None,
    batch_size: Annotated[int | None, batch_size_flag("Rows per transaction.", min=1)] = None,
    json_output: SummaryJsonOption = False,
    log_format: LogFormatOption = None,
    metrics_port: MetricsPortOption = None,
    config: ConfigOption = None,
    set_: SetOption = None,
) -> None:
    """Write verdicts (and labels) to fraud_predictions; offsets committed after each database commit."""
    from fraudkit.observability.pipeline_telemetry import SinkTelemetry
    from fraudkit.observability.runtime import process_instance_id, serving
    from fraudkit.signals import stop_on_signals
    from fraudkit.storage.sink import SinkOptions, SinkSummary, run_sink

    cfg = load(
        config,
        set_,
        sink__url=url,
        sink__table=table,
        sink__labels=labels,
        sink__batch_size=batch_size,
        log__format=log_format,
        metrics__port=metrics_port,
    )
    options = SinkOptions(until_idle_s=until_idle, max_messages=max_messages, duration_s=duration)
    instance = process_instance_id()
    log = event_log(cfg, "sink", instance)
    telemetry = SinkTelemetry(cfg, instance)
    status_line = Every(LOG_EVERY_S)

    def warn(message: str) -> None:
        log(f"warning: {message}")

    status = (
        console.status("sink: waiting for verdicts…") if stdout_is_terminal() and not json_output else None
    )

    def progress(summary: SinkSummary) -> None:
        telemetry.batch(summary)
        if log.format == "json" and status_line.due():
            log.status(f"sink: {summary.verdicts} verdicts, {summary.labels} labels", summary.to_dict())
        if status is not None:
            status.update(
                f"sink: {summary.verdicts:,} verdicts ({summary.inserted:,} new), "
                f"{summary.labels:,} labels, {summary.batches:,} batches"
            )

    with stop_on_signals() as stop, serving(cfg, telemetry.registry, telemetry.health, log):
        if status is not None:
            status.start()
        try:
            summary = run_sink(
                cfg, options, stop=stop, on_event=warn, on_batch=progress, on_tick=telemetry.tick
            )
        finally:
            if status is not None:
                status.stop()
    if json_output:
        typer.echo(json.dumps(summary.to_dict()))
        return
    console.print(
        f"sink: {summary.verdicts:,} verdicts ({summary.inserted:,} new, {summary.duplicates:,} already stored), "
        f"{summary.labels:,} labels, {summary.invalid:,} invalid skipped, "
        f"{summary.dead_letters:,} dead letters in {summary.elapsed_s:.1f}s "
        f"({summary.rows_per_s:,.0f} rows/s) → {summary.table} in {summary.database}; "
        f"stopped by {summary.stopped_by}",
        markup=False,
        highlight=False,
        soft_wrap=True,
    )
    for example in summary.invalid_examples:
        warn(f"invalid message {example}")


@app.command("report")
def report(
    url: UrlOption = None,
    table: TableOption = None,
    bucket: Annotated[
        str | None, typer.Option("--bucket", help="Time buckets: hour, day or auto (report.bucket).")
    ] = None,
    top: Annotated[int | None, typer.Option("--top", min=1, help="Rows of the top-N tables.")] = None,
    watch: Annotated[bool, typer.Option("--watch", help="Refresh live until Ctrl-C.")] = False,
    refresh: Annotated[
        float | None, typer.Option("--refresh", min=0.1, help="Seconds between --watch refreshes.")
    ] = None,
    html: Annotated[
        Path | None, typer.Option("--html", help="Also write one self-contained HTML file with charts.")
    ] = None,
    json_output: Annotated[bool, json_flag("Print the figures as one JSON object.")] = False,
    config: ConfigOption = None,
    set_: SetOption = None,
) -> None:
    """Fraud report from the sink's database: counts over time, precision/recall, top risks, latency."""
    from fraudkit.storage.report import ReportOptions, build_report, render_report, watch_report, write_html

    cfg = load(
        config,
        set_,
        sink__url=url,
        sink__table=table,
        report__bucket=bucket,
        report__top=top,
        report__refresh_s=refresh,
    )
    options = ReportOptions(bucket=cfg.report.bucket, top=cfg.report.top)
    if watch:
        from fraudkit.signals import stop_on_signals

        with stop_on_signals() as stop:
            watch_report(cfg, options, console, stop, cfg.report.refresh_s)
        return
    data = build_report(cfg, options)
    if html is not None:
        write_html(data, html)
        err_console.print(f"wrote {html}", markup=False, highlight=False)
    if json_output:
        typer.echo(json.dumps(data.to_dict()))
    elif html is None:
        console.print(render_report(data, options))
