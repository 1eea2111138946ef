"""`fraudkit broker start|status|stop`: the embedded Kafka-compatible broker."""

from __future__ import annotations

from typing import Annotated

import typer

from fraudkit.broker import BrokerManager, run_foreground
from fraudkit.cli.app import ConfigOption, SetOption, app, console, load

broker_app = typer.Typer(help="Run the embedded Kafka-compatible broker (Tansu).", no_args_is_help=True)
app.add_typer(broker_app, name="broker")

PortOption = Annotated[int | None, typer.Option("--port", help="Port on 127.0.0.1 (default: broker.port).")]


@broker_app.command("start")
def start(
    port: PortOption = None,
    foreground: Annotated[bool, typer.Option("--foreground", help="Stay attached until Ctrl-C.")] = False,
    config: ConfigOption = None,
    set_: SetOption = None,
) -> None:
    """Start the embedded broker and wait until it answers."""
    cfg = load(config, set_, broker__port=port)
    if foreground:
        console.print(f"embedded broker on 127.0.0.1:{cfg.broker.port} (Ctrl-C stops it)")
        raise typer.Exit(run_foreground(cfg.broker.port, cfg.broker.start_timeout_s))
    state = BrokerManager(cfg.broker.state_dir).start(cfg.broker.port, cfg.broker.start_timeout_s)
    console.print(f"embedded broker running: pid {state.pid}, bootstrap.servers={state.bootstrap_servers}")


@broker_app.command("status")
def status(config: ConfigOption = None, set_: SetOption = None) -> None:
    """Show whether the embedded broker is running (exit 3 if not)."""
    cfg = load(config, set_)
    state = BrokerManager(cfg.broker.state_dir).status()
    if state is None:
        console.print("embedded broker: not running")
        raise typer.Exit(3)
    console.print(f"embedded broker: running, pid {state.pid}, bootstrap.servers={state.bootstrap_servers}")


@broker_app.command("stop")
def stop(config: ConfigOption = None, set_: SetOption = None) -> None:
    """Stop the embedded broker started by `broker start` (and nothing else)."""
    cfg = load(config, set_)
    state = BrokerManager(cfg.broker.state_dir).stop()
    if state is None:
        console.print("embedded broker: not running")
    else:
        console.print(f"embedded broker stopped (pid {state.pid})")
