"""Command-line interface: thin typer commands over the library."""

from __future__ import annotations

from fraudkit.cli import broker as _broker  # noqa: F401  (registers commands)
from fraudkit.cli import configcmd as _configcmd  # noqa: F401
from fraudkit.cli.app import app

__all__ = ["app", "main"]


def main() -> None:
    """Console-script entry point."""
    app(prog_name="fraudkit")
