"""`fraudkit broker install|start|status|stop`: a local Apache Kafka (KRaft) or Tansu broker."""

from __future__ import annotations

from typing import Annotated

import typer

from fraudkit.cli.app import app, console, load
from fraudkit.cli.options import ConfigOption, SetOption
from fraudkit.stream.broker import (
    KAFKA_VERSION,
    BrokerManager,
    engine_version,
    install_kafka,
    manager_for,
    resolve_engine,
    run_foreground,
)

broker_app = typer.Typer(
    help="Run a local broker: Apache Kafka (KRaft) or the embedded Tansu.", no_args_is_help=True
)
app.add_typer(broker_app, name="broker")

PortOption = Annotated[int | None, typer.Option("--port", help="Port on 127.0.0.1 (default: broker.port).")]
EngineOption = Annotated[
    str | None,
    typer.Option("--engine", help="kafka, tansu or auto (default: broker.engine).", show_default=False),
]
BrokersOption = Annotated[
    int | None,
    typer.Option("--brokers", help="Nodes of a local Apache Kafka cluster, 1-3 (default: broker.brokers)."),
]


@broker_app.command("install")
def install(config: ConfigOption = None, set_: SetOption = None) -> None:
    """Fetch the pinned Apache Kafka jars with Maven into broker.cache_dir and verify them."""
    cfg = load(config, set_)
    libs = install_kafka(manager_for(cfg).cache_dir)
    console.print(f"Apache Kafka {KAFKA_VERSION} installed and verified in {libs}", markup=False)


@broker_app.command("start")
def start(
    port: PortOption = None,
    engine: EngineOption = None,
    brokers: BrokersOption = None,
    foreground: Annotated[bool, typer.Option("--foreground", help="Stay attached until Ctrl-C.")] = False,
    config: ConfigOption = None,
    set_: SetOption = None,
) -> None:
    """Start a local broker and wait until it answers."""
    cfg = load(config, set_, broker__port=port, broker__engine=engine, broker__brokers=brokers)
    manager = manager_for(cfg)
    chosen = resolve_engine(cfg.broker.engine, manager.cache_dir)
    if foreground:
        console.print(
            f"{engine_version(chosen)} on 127.0.0.1:{cfg.broker.port} (Ctrl-C stops it)", markup=False
        )
        raise typer.Exit(
            run_foreground(
                cfg.broker.port, chosen, cfg.broker.brokers, cfg.broker.start_timeout_s, manager.cache_dir
            )
        )
    state = manager.start(
        cfg.broker.port, chosen, cfg.broker.brokers, cfg.broker.start_timeout_s, cfg.broker.heap_mb
    )
    pids = ", ".join(str(p.pid) for p in state.processes)
    console.print(
        f"{engine_version(state.engine)} running: pid {pids}, bootstrap.servers={state.bootstrap_servers}",
        markup=False,
    )


@broker_app.command("status")
def status(config: ConfigOption = None, set_: SetOption = None) -> None:
    """Show whether the local broker is running, and which engine (exit 3 if not running)."""
    cfg = load(config, set_)
    state = manager_for(cfg).status()
    if state is None:
        console.print("local broker: not running")
        raise typer.Exit(3)
    pids = ", ".join(str(p.pid) for p in state.processes)
    console.print(
        f"local broker: running, {engine_version(state.engine)}, pid {pids}, "
        f"bootstrap.servers={state.bootstrap_servers}",
        markup=False,
    )


@broker_app.command("stop")
def stop(config: ConfigOption = None, set_: SetOption = None) -> None:
    """Stop the broker started by `broker start` (and nothing else)."""
    cfg = load(config, set_)
    manager: BrokerManager = manager_for(cfg)
    state = manager.stop()
    if state is None:
        console.print("local broker: not running")
    else:
        pids = ", ".join(str(p.pid) for p in state.processes)
        console.print(f"local broker stopped ({engine_version(state.engine)}, pid {pids})", markup=False)
