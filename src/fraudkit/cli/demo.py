"""`fraudkit demo`: the whole pipeline on a local broker (or the configured Kafka), in one terminal."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from fraudkit.cli.app import app, console, echo_json, err_console, load, stdout_is_terminal
from fraudkit.cli.options import (
    ConfigOption,
    RateOption,
    SetOption,
    SummaryJsonOption,
    duration_flag,
    seed_flag,
)
from fraudkit.textsafe import printable

# Without a terminal (CI, pipes) the dashboard becomes one progress line this often.
LOG_EVERY_S = 10.0


@app.command("demo")
def demo(
    duration: Annotated[
        float | None, duration_flag("Seconds of streaming after the first model is trained.")
    ] = None,
    rate: RateOption = None,
    seed: Annotated[int | None, seed_flag("Seed of the simulated world.")] = None,
    workdir: Annotated[Path | None, typer.Option("--workdir", help="Where data and models go.")] = None,
    json_output: SummaryJsonOption = False,
    config: ConfigOption = None,
    set_: SetOption = None,
) -> None:
    """Simulate, split, train, then generate and detect side by side with live retraining."""
    from fraudkit.demo import DemoState, run_demo
    from fraudkit.demo_view import dashboard, summary_view
    from fraudkit.signals import stop_on_signals

    cfg = load(
        config, set_, demo__duration_s=duration, demo__rate=rate, demo__seed=seed, demo__workdir=workdir
    )
    with stop_on_signals() as stop:
        if stdout_is_terminal() and not json_output:
            from rich.live import Live

            # The whole dashboard from the first frame (empty panels say "waiting"), redrawn in place;
            # nothing else writes to the terminal meanwhile (Spark's JVM writes to its log file).
            with Live(dashboard(DemoState()), console=console, refresh_per_second=4, transient=False) as live:
                summary = run_demo(cfg, stop_event=stop, on_update=lambda s: live.update(dashboard(s)))
        else:
            last_time = [0.0]
            last_stage = [""]

            def progress(state: DemoState) -> None:
                now = time.monotonic()
                if state.stage != last_stage[0] or now - last_time[0] >= LOG_EVERY_S:
                    last_time[0], last_stage[0] = now, state.stage
                    line = state.stage
                    if state.client is not None:
                        line += f" | sent {state.client.sent:,}, verdicts {state.client.verdicts:,}"
                    if state.client is not None and state.client.latency_ms.get("p99") is not None:
                        line += f", client p99 {state.client.latency_ms['p99']:,.0f} ms"
                    if state.detector is not None and state.detector.lag is not None:
                        line += f", detector backlog {state.detector.lag:,}"
                    if state.detector is not None and state.detector.latency_ms.get("p99") is not None:
                        line += f", detector p99 {state.detector.latency_ms['p99']:,.0f} ms"
                    if state.retrain_events:
                        line += f" | retrains: {', '.join(e.get('type', '') for e in state.retrain_events)}"
                    err_console.print(printable(line), markup=False, highlight=False)

            summary = run_demo(cfg, stop_event=stop, on_update=progress)
    if json_output:
        echo_json(summary.to_dict())
    else:
        console.print(summary_view(summary))
    # After the figures: a run that left transactions unanswered or fell behind exits with code 7.
    summary.raise_if_incomplete()
