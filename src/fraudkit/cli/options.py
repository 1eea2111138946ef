"""Options that several commands share: one declaration each, so a flag means the same everywhere.

Options with the same help everywhere are ready-made `Annotated` types (`ConfigOption`). Those
whose help says what the flag does for one command are factories of the `typer.Option` part:
`duration: Annotated[float | None, duration_flag("Stop after ...")] = None`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        help="YAML config file (default: $FRAUDKIT_CONFIG, else configs/default.yaml).",
        show_default=False,
    ),
]
SetOption = Annotated[
    list[str] | None,
    typer.Option("--set", help="Override any setting: --set detect.batch_size=500 (repeatable)."),
]
LogFormatOption = Annotated[
    str | None,
    typer.Option(
        "--log-format",
        help="Log lines on stderr: text, or json (one object per line) (log.format).",
        show_default=False,
    ),
]
MetricsPortOption = Annotated[
    int | None,
    typer.Option(
        "--metrics-port",
        min=0,
        max=65535,
        help="Serve /metrics, /healthz and /readyz on this port (metrics.port; 0: off).",
        show_default=False,
    ),
]
RateOption = Annotated[float | None, typer.Option("--rate", help="Transactions per second.")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print the result as one JSON object.")]
SummaryJsonOption = Annotated[bool, typer.Option("--json", help="Print the summary as one JSON object.")]
FinalJsonOption = Annotated[bool, typer.Option("--json", help="Print the final summary as one JSON object.")]


def json_flag(help: str) -> Any:
    """`--json` with this command's wording of what it prints."""
    return typer.Option("--json", help=help)


def duration_flag(help: str = "Stop after this many seconds.", min: float | None = None) -> Any:
    """`--duration` in seconds."""
    return typer.Option("--duration", min=min, help=help)


def until_idle_flag(help: str, min: float | None = None) -> Any:
    """`--until-idle` in seconds without new input."""
    return typer.Option("--until-idle", min=min, help=help)


def batch_size_flag(help: str, min: int | None = None) -> Any:
    """`--batch-size`."""
    return typer.Option("--batch-size", min=min, help=help)


def seed_flag(help: str) -> Any:
    """`--seed` of whatever this command draws at random."""
    return typer.Option("--seed", help=help)


def dataset_flag(help: str, show_default: bool = True) -> Any:
    """`--dataset`: the column mapping of the command's input."""
    return typer.Option("--dataset", help=help, show_default=show_default)


def url_flag(help: str) -> Any:
    """`--url` of the sink's database."""
    return typer.Option("--url", help=help)


def model_flag(help: str) -> Any:
    """`--model`: a registry version (or rules)."""
    return typer.Option("--model", help=help)
