"""`fraudkit tail`: topics as live rich tables, or JSON lines for jq."""

from __future__ import annotations

import math
import os
import sys
from typing import Annotated

import typer

from fraudkit.cli.app import app, console, err_console, load, stdout_is_terminal
from fraudkit.cli.options import ConfigOption, SetOption, json_flag
from fraudkit.errors import ConfigError


@app.command("tail")
def tail(
    topics: Annotated[
        list[str] | None,
        typer.Argument(
            help="Topics to read; config names (verdicts, labels, transactions, fraud, legit, "
            "dead-letter, control) also work. Default: the verdicts topic.",
            show_default=False,
        ),
    ] = None,
    from_beginning: Annotated[
        bool,
        typer.Option("--from-beginning/--latest", help="Start at the oldest message, or only show new ones."),
    ] = False,
    limit: Annotated[
        int | None, typer.Option("--limit", min=1, help="Stop after showing N messages.")
    ] = None,
    fraud_only: Annotated[
        bool,
        typer.Option("--fraud-only", help="Only fraud verdicts, fraud-branch transactions, fraud labels."),
    ] = False,
    card: Annotated[str | None, typer.Option("--card", help="Only messages about this card_id.")] = None,
    min_score: Annotated[
        float | None,
        typer.Option("--min-score", help="Only messages with a score >= X (verdicts, branches)."),
    ] = None,
    json_output: Annotated[
        bool, json_flag("One JSON object per line (topic, partition, offset, key, value).")
    ] = False,
    follow: Annotated[
        bool, typer.Option("--follow/--no-follow", help="Keep waiting for new messages, or stop at the end.")
    ] = True,
    stats: Annotated[
        bool, typer.Option("--stats", help="Show fraud rate and live precision/recall (tail labels too).")
    ] = False,
    rows: Annotated[
        int | None, typer.Option("--rows", min=1, help="Rows per table (default: fit the terminal).")
    ] = None,
    config: ConfigOption = None,
    set_: SetOption = None,
) -> None:
    """Show messages of topics as live tables; never commits offsets (exit 3 for an unknown topic)."""
    from fraudkit.signals import stop_on_signals
    from fraudkit.tail import TailOptions, run_tail

    if min_score is not None and not math.isfinite(min_score):
        raise ConfigError("--min-score: expected a finite number")
    cfg = load(config, set_)
    options = TailOptions(
        topics=list(topics or ["verdicts"]),
        from_beginning=from_beginning,
        limit=limit,
        fraud_only=fraud_only,
        card=card,
        min_score=min_score,
        follow=follow,
        stats=stats,
        rows=rows,
    )
    if follow and not json_output and not stdout_is_terminal():
        err_console.print(
            "stdout is not a terminal: the table is printed when tail stops (use --json to stream)"
        )
    with stop_on_signals() as stop:
        try:
            run_tail(cfg, options, console=console, json_out=sys.stdout if json_output else None, stop=stop)
        except BrokenPipeError:
            # `fraudkit tail --json | head` closed the pipe: stop quietly, like other Unix tools.
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
