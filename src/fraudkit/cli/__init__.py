"""Command-line interface: thin typer commands over the library."""

from __future__ import annotations

# Importing each module registers its commands on `app`.
from fraudkit.cli import broker as _broker  # noqa: F401
from fraudkit.cli import configcmd as _configcmd  # noqa: F401
from fraudkit.cli import dashboard as _dashboard  # noqa: F401
from fraudkit.cli import data as _data  # noqa: F401
from fraudkit.cli import demo as _demo  # noqa: F401
from fraudkit.cli import detect as _detect  # noqa: F401
from fraudkit.cli import generate as _generate  # noqa: F401
from fraudkit.cli import models as _models  # noqa: F401
from fraudkit.cli import rules as _rules  # noqa: F401
from fraudkit.cli import sinkcmd as _sinkcmd  # noqa: F401
from fraudkit.cli import tail as _tail  # noqa: F401
from fraudkit.cli.app import app

__all__ = ["app", "main"]


def main() -> None:
    """Console-script entry point."""
    app(prog_name="fraudkit")
