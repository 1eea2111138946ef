"""`fraudkit config show`."""

from __future__ import annotations

import typer

from fraudkit.cli.app import app, load
from fraudkit.cli.options import ConfigOption, SetOption
from fraudkit.config import dump_yaml

config_app = typer.Typer(help="Inspect the merged configuration.", no_args_is_help=True)
app.add_typer(config_app, name="config")


@config_app.command("show")
def show(config: ConfigOption = None, set_: SetOption = None) -> None:
    """Print the merged config (defaults < YAML < env < flags) with secrets masked."""
    typer.echo(dump_yaml(load(config, set_)), nl=False)
