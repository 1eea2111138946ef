"""`fraudkit detect`: the scoring loop with a live panel, quiet log lines or a JSON summary."""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Annotated

import typer

from fraudkit.cli.app import app, console, echo_json, event_log, load, stdout_is_terminal
from fraudkit.cli.options import (
    ConfigOption,
    FinalJsonOption,
    LogFormatOption,
    MetricsPortOption,
    SetOption,
    batch_size_flag,
    duration_flag,
    model_flag,
    until_idle_flag,
)
from fraudkit.textsafe import for_terminal, printable
from fraudkit.timefmt import ms_text

if TYPE_CHECKING:
    from fraudkit.detect import DetectSummary
    from fraudkit.detect.status import DetectStatus

# Quiet mode (containers, pipes): one status line this often.
LOG_EVERY_S = 5.0


@app.command("detect")
def detect(
    model: Annotated[str | None, model_flag("current, a version such as v3, or rules.")] = None,
    duration: Annotated[float | None, duration_flag()] = None,
    max_transactions: Annotated[
        int | None, typer.Option("--max-transactions", help="Stop after consuming this many messages.")
    ] = None,
    until_idle: Annotated[
        float | None, until_idle_flag("Stop after this many seconds without a new transaction.")
    ] = None,
    exactly_once: Annotated[
        bool | None,
        typer.Option(
            "--exactly-once/--at-least-once",
            help="Kafka transactions (read-process-write) instead of commit-after-delivery.",
            show_default=False,
        ),
    ] = None,
    batch_size: Annotated[int | None, batch_size_flag("Messages consumed and scored together.")] = None,
    group_id: Annotated[
        str | None, typer.Option("--group-id", help="Consumer group of the detectors.")
    ] = None,
    instance_id: Annotated[
        str | None,
        typer.Option(
            "--instance-id",
            help="This detector's name in verdicts and its transactional id (default: hostname-pid).",
        ),
    ] = None,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="No live panel: one log line every few seconds.")
    ] = False,
    json_output: FinalJsonOption = False,
    role: Annotated[
        str | None,
        typer.Option(
            "--role",
            help="Live retraining role: all (retrain if no other detector does), scorer (only swap) "
            "or trainer (the one that retrains). See docs/retraining.md.",
        ),
    ] = None,
    retrain: Annotated[
        bool | None,
        typer.Option("--retrain/--no-retrain", help="Live retraining on or off.", show_default=False),
    ] = None,
    log_format: LogFormatOption = None,
    metrics_port: MetricsPortOption = None,
    config: ConfigOption = None,
    set_: SetOption = None,
) -> None:
    """Score transactions as they arrive: verdicts, fraud/legit branches, dead letters."""
    from fraudkit.detect import default_instance_id, run_detect
    from fraudkit.detect.status import format_log_line, render_panel, status_fields
    from fraudkit.observability.detect_telemetry import DetectTelemetry
    from fraudkit.observability.runtime import serving
    from fraudkit.retrain.extension import retrain_extensions
    from fraudkit.rules.live import rules_extensions
    from fraudkit.signals import stop_on_signals

    cfg = load(
        config,
        set_,
        detect__model=model,
        detect__exactly_once=exactly_once,
        detect__batch_size=batch_size,
        detect__group_id=group_id,
        detect__quiet=True if quiet else None,
        retrain__role=role,
        retrain__enabled=retrain,
        log__format=log_format,
        metrics__port=metrics_port,
    )
    instance = instance_id or default_instance_id()
    log = event_log(cfg, "detect", instance)
    telemetry = DetectTelemetry(cfg, instance)

    live_panel = stdout_is_terminal() and not json_output and not cfg.detect.quiet
    with stop_on_signals() as stop, serving(cfg, telemetry.registry, telemetry.health, log):
        run = functools.partial(
            run_detect,
            cfg,
            duration_s=duration,
            max_transactions=max_transactions,
            until_idle_s=until_idle,
            instance_id=instance,
            stop_event=stop,
            on_log=log,
            extensions=[*rules_extensions(cfg), *retrain_extensions(cfg)],
            telemetry=telemetry,
        )
        if live_panel:
            from rich.live import Live

            with Live(console=console, refresh_per_second=4, transient=False) as live:
                summary = run(on_status=lambda status: live.update(render_panel(status)))
        else:

            def log_status(status: DetectStatus) -> None:
                log.status(format_log_line(status), status_fields(status))

            # One status per line: its rate and p99 cover the whole time since the previous line
            # (with 1 s statuses and every fifth logged, a line showed only its last second).
            summary = run(on_status=log_status, status_interval_s=LOG_EVERY_S)
    if json_output:
        echo_json(summary.to_dict())
    else:
        _print_summary(summary)


def _print_summary(summary: DetectSummary) -> None:
    latency = summary.latency_ms

    def ms(name: str) -> str:
        return ms_text(latency.get(name), "g")

    console.print(
        f"detector {for_terminal(summary.detector)}: {summary.consumed:,} consumed, {summary.verdicts:,} verdicts "
        f"({summary.fraud:,} fraud), {summary.dead_letters:,} dead letters, "
        f"{summary.throughput_per_s:,.0f} tx/s; latency p50 {ms('p50')}, p95 {ms('p95')}, p99 {ms('p99')}; "
        f"model {for_terminal(summary.model_version)}, {summary.retrains} retrains; "
        f"stopped: {for_terminal(summary.stopped_because)}",
        highlight=False,
    )
    if summary.last_retrain and summary.last_retrain.get("summary"):
        console.print(
            f"last retraining: {printable(summary.last_retrain['summary'])}", highlight=False, markup=False
        )
