"""Broker engines for the benchmarks: each broker-bound figure is printed for Apache Kafka and Tansu."""

from __future__ import annotations

import argparse
import contextlib
import os
from collections.abc import Iterator

from fraudkit.stream.broker import (
    ENGINES,
    RunningBroker,
    default_cache_dir,
    engine_version,
    install_kafka,
    running_cluster,
)


def add_engines_argument(parser: argparse.ArgumentParser) -> None:
    """--engines kafka,tansu (default both, Apache Kafka first)."""
    parser.add_argument(
        "--engines",
        default=",".join(ENGINES),
        help="broker engines to measure on, comma-separated (default: kafka,tansu)",
    )


def chosen_engines(args: argparse.Namespace) -> list[str]:
    """The engines named by --engines, validated."""
    names = [name.strip() for name in args.engines.split(",") if name.strip()]
    for name in names:
        if name not in ENGINES:
            raise SystemExit(f"--engines: unknown engine {name!r} (choose from {', '.join(ENGINES)})")
    return names


@contextlib.contextmanager
def local_broker(engine: str) -> Iterator[RunningBroker]:
    """A fresh single-node broker of the engine (Apache Kafka's jars installed first if needed)."""
    if engine == "kafka":
        install_kafka(default_cache_dir())
    print(f"--- broker: {engine_version(engine)}", flush=True)
    with running_cluster(engine, timeout_s=120) as handle:
        yield handle


def broker_cpu_seconds(handle: RunningBroker) -> float | None:
    """CPU seconds the broker process has used so far (Linux /proc), for context."""
    process = handle.processes[0]
    if process is None:
        return None
    try:
        with open(f"/proc/{process.pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None
