"""`fraudkit dashboard`: the live web page over the sink's database, with analyst review."""

from __future__ import annotations

from typing import Annotated

import typer

from fraudkit.cli.app import app, err_console, load
from fraudkit.cli.options import ConfigOption, SetOption, url_flag


@app.command("dashboard")
def dashboard(
    host: Annotated[
        str | None, typer.Option("--host", help="Address to listen on (dashboard.host, default 127.0.0.1).")
    ] = None,
    port: Annotated[
        int | None, typer.Option("--port", min=0, max=65535, help="Port (dashboard.port).")
    ] = None,
    url: Annotated[str | None, url_flag("Database URL of the sink (sink.url).")] = None,
    config: ConfigOption = None,
    set_: SetOption = None,
) -> None:
    """Serve the live dashboard until Ctrl-C; analysts confirm or reject fraud with dashboard.review_token."""
    from fraudkit.dashboard.server import serve_dashboard
    from fraudkit.signals import stop_on_signals

    cfg = load(config, set_, dashboard__host=host, dashboard__port=port, sink__url=url)

    def log(message: str) -> None:
        err_console.print(message, markup=False, highlight=False, soft_wrap=True)

    with stop_on_signals() as stop:
        serve_dashboard(cfg, stop, log)
