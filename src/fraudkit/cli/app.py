"""The typer application, its single error boundary, and what every command uses (consoles, config loading).

Shared options live in `cli/options.py`.
"""

from __future__ import annotations

import os
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from typer.core import TyperGroup

from fraudkit import __version__
from fraudkit.config import FraudkitConfig, load_config, parse_set_options
from fraudkit.errors import FraudkitError
from fraudkit.redact import mask_secrets
from fraudkit.textsafe import printable

console = Console()
err_console = Console(stderr=True)


class FraudkitGroup(TyperGroup):
    """Root command group: the one place where FraudkitError becomes a message and an exit code."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except FraudkitError as exc:
            if _show_traceback(ctx):
                err_console.print(traceback.format_exc(), markup=False, highlight=False)
            # Messages may quote a setting or a URL: no secret leaves through an error line.
            for line in mask_secrets(str(exc)).splitlines() or [type(exc).__name__]:
                err_console.print(f"error: {printable(line)}", markup=False, highlight=False, soft_wrap=True)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            err_console.print("interrupted", markup=False)
            raise typer.Exit(130) from None


def _show_traceback(ctx: typer.Context) -> bool:
    root = ctx.find_root()
    return bool((root.obj or {}).get("traceback")) or os.environ.get("FRAUDKIT_TRACEBACK") == "1"


app = typer.Typer(
    cls=FraudkitGroup,
    help="Real-time payment-fraud detection on Kafka.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"fraudkit {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    ctx: typer.Context,
    show_traceback: Annotated[
        bool, typer.Option("--traceback", help="Show the full stack trace of errors.")
    ] = False,
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit."),
    ] = False,
) -> None:
    """fraudkit: simulate, train, detect and retrain live on Kafka, from one terminal."""
    ctx.obj = {"traceback": show_traceback}


def event_log(config: FraudkitConfig, component: str, instance_id: str) -> Any:
    """The command's log writer (log.format): rich text lines on stderr, or JSON lines on stderr."""
    from fraudkit.observability.logs import EventLog
    from fraudkit.textsafe import printable

    def text(message: str) -> None:
        # Log lines quote control-topic fields and broker messages: text from outside.
        err_console.print(printable(message), markup=False, highlight=False, soft_wrap=True)

    return EventLog(component, instance_id, config.log.format, stream=sys.stderr, text_writer=text)


def load(config_path: Path | None, set_options: list[str] | None = None, **flags: Any) -> FraudkitConfig:
    """Load config with precedence defaults < YAML < env < --set < explicit flags (dotted keys).

    Flags left unset (None) are not overrides; paths pass as text, like the same setting in YAML.
    """
    overrides = parse_set_options(set_options or [])
    overrides.update(
        {
            key.replace("__", "."): str(value) if isinstance(value, Path) else value
            for key, value in flags.items()
            if value is not None
        }
    )
    return load_config(config_path, overrides)


class Every:
    """`due()` is true at most once per `seconds`, the first time one interval after the start."""

    def __init__(self, seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.seconds = seconds
        self.clock = clock
        self.last = clock()

    def due(self) -> bool:
        """True (and the interval starts again) once `seconds` have passed since the last time."""
        now = self.clock()
        if now - self.last < self.seconds:
            return False
        self.last = now
        return True


def echo_json(data: Any) -> None:
    """A command's --json output: one compact JSON object on stdout."""
    import orjson

    typer.echo(orjson.dumps(data).decode())


def stdout_is_terminal() -> bool:
    """True when stdout is an interactive terminal (live panels only make sense there)."""
    return sys.stdout.isatty()
