"""`fraudkit generate`: transactions at a set rate, delayed labels, verdicts read back."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Literal

import typer

from fraudkit.cli.app import Every, app, console, echo_json, event_log, load, stdout_is_terminal
from fraudkit.cli.options import (
    ConfigOption,
    FinalJsonOption,
    LogFormatOption,
    MetricsPortOption,
    RateOption,
    SetOption,
    dataset_flag,
    duration_flag,
    seed_flag,
)
from fraudkit.errors import ConfigError

# JSON logs: one status event this often.
LOG_EVERY_S = 5.0


@app.command("generate")
def generate(
    source: Annotated[
        str | None,
        typer.Option("--source", help="simulator (endless, seeded) or replay (a dataset file)."),
    ] = None,
    replay: Annotated[
        Path | None,
        typer.Option("--replay", help="Replay this dataset file in event order (implies --source replay)."),
    ] = None,
    dataset: Annotated[
        str | None, dataset_flag("Column mapping of the replay file (default: data.dataset).")
    ] = None,
    rate: RateOption = None,
    max_rate: Annotated[bool, typer.Option("--max-rate", help="No rate limit: as fast as possible.")] = False,
    speedup: Annotated[
        float | None,
        typer.Option("--speedup", help="Pace by event time, this many times faster than real time."),
    ] = None,
    count: Annotated[int | None, typer.Option("--count", help="Stop after this many transactions.")] = None,
    duration: Annotated[float | None, duration_flag()] = None,
    seed: Annotated[int | None, seed_flag("Seed of the simulator and label thinning.")] = None,
    label_delay: Annotated[
        float | None, typer.Option("--label-delay", help="Seconds of event time before a label is published.")
    ] = None,
    label_fraction: Annotated[
        float | None, typer.Option("--label-fraction", help="Share of transactions whose label is published.")
    ] = None,
    flush_labels: Annotated[
        bool,
        typer.Option("--flush-labels", help="At the end, also publish labels whose delay has not passed."),
    ] = False,
    no_verdicts: Annotated[bool, typer.Option("--no-verdicts", help="Do not read verdicts back.")] = False,
    verdict_wait: Annotated[
        float | None,
        typer.Option("--verdict-wait", help="Seconds to wait for outstanding verdicts after producing."),
    ] = None,
    json_output: FinalJsonOption = False,
    log_format: LogFormatOption = None,
    metrics_port: MetricsPortOption = None,
    config: ConfigOption = None,
    set_: SetOption = None,
) -> None:
    """Produce transactions (and their delayed labels) and show the client's view of the verdicts."""
    from fraudkit.generate import GenerateSummary, run_generate, status_panel
    from fraudkit.observability.pipeline_telemetry import GenerateTelemetry
    from fraudkit.observability.runtime import process_instance_id, serving
    from fraudkit.signals import stop_on_signals

    if max_rate and rate is not None:
        raise ConfigError("--rate and --max-rate exclude each other")
    if speedup is not None and (rate is not None or max_rate):
        raise ConfigError("--speedup paces by event time; it excludes --rate and --max-rate")
    source_name: Literal["simulator", "replay"] | None = None
    if source is not None:
        if source not in ("simulator", "replay"):
            raise ConfigError(f"--source: expected simulator or replay, got {source!r}")
        source_name = "replay" if source == "replay" else "simulator"
    if replay is not None:
        if source_name == "simulator":
            raise ConfigError("--replay needs --source replay (or no --source)")
        source_name = "replay"
    cfg = load(
        config,
        set_,
        generate__source=source_name,
        generate__replay_path=replay,
        data__dataset=dataset,
        generate__rate=rate,
        generate__speedup=speedup,
        generate__count=count,
        generate__duration_s=duration,
        generate__seed=seed,
        generate__label_delay_s=label_delay,
        generate__label_fraction=label_fraction,
        generate__flush_labels=True if flush_labels else None,
        generate__read_verdicts=False if no_verdicts else None,
        generate__verdict_wait_s=verdict_wait,
        log__format=log_format,
        metrics__port=metrics_port,
    )
    if max_rate:
        cfg.generate.rate = None
    instance = process_instance_id()
    log = event_log(cfg, "generate", instance)
    telemetry = GenerateTelemetry(cfg, instance)
    status_line = Every(LOG_EVERY_S)

    def observe(status: GenerateSummary) -> None:
        telemetry.update(status)
        # JSON logs get a status event every few seconds (text mode keeps its panel or silence).
        if log.format == "json" and status_line.due():
            log.status(f"generate: sent={status.sent} phase={status.phase}", asdict(status))

    live_panel = not json_output and stdout_is_terminal()
    with stop_on_signals() as stop, serving(cfg, telemetry.registry, telemetry.health, log):
        if live_panel:
            from rich.live import Live

            first = GenerateSummary(read_verdicts=cfg.generate.read_verdicts, target_rate=cfg.generate.rate)
            with Live(status_panel(first), console=console, refresh_per_second=4, transient=True) as live:

                def show(status: GenerateSummary) -> None:
                    observe(status)
                    live.update(status_panel(status))

                summary = run_generate(cfg, stop, on_status=show, on_log=log)
        else:
            summary = run_generate(cfg, stop, on_status=observe, on_log=log)
    if json_output:
        echo_json(summary.to_dict())
    else:
        console.print(status_panel(summary))
