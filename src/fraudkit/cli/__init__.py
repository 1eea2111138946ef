"""Command-line interface: thin typer commands over the library."""

from __future__ import annotations

import contextlib
import os
import sys

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
    try:
        app(prog_name="fraudkit")
    except SystemExit as exc:
        _exit_at_once_if_clients_were_abandoned(exc.code)
        raise


def _exit_at_once_if_clients_were_abandoned(code: object) -> None:
    """Skip the interpreter's clean-up when a Kafka client's close was abandoned (kafka.close_within).

    Destroying such a client at exit repeats the close that blocked (librdkafka issue 4519), so the
    process would hang after its last message; the work is settled by now, only the exit is left.
    """
    kafka = sys.modules.get("fraudkit.stream.kafka")  # never imported by commands that use no broker
    if kafka is None or not kafka.abandoned_clients():
        return
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code if isinstance(code, int) else (0 if code is None else 1))
