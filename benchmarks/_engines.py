"""Broker engines for the benchmarks: each broker-bound figure is printed for Apache Kafka and Tansu."""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import threading
from collections.abc import Iterator
from types import FrameType

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
def local_broker(engine: str, brokers: int = 1, timeout_s: float = 120.0) -> Iterator[RunningBroker]:
    """A fresh local broker (or cluster) of the engine (Apache Kafka's jars installed first if needed).

    SIGTERM and SIGINT of the script stop this broker before the script exits: the broker runs in
    a session of its own, so a benchmark killed without this left it running.
    """
    if engine == "kafka":
        install_kafka(default_cache_dir())
    print(f"--- broker: {engine_version(engine)}", flush=True)
    with _signals_unwind() as stopping, running_cluster(engine, brokers, timeout_s) as handle:
        try:
            yield handle
        finally:
            stopping.set()


@contextlib.contextmanager
def _signals_unwind() -> Iterator[threading.Event]:
    """Turn SIGTERM/SIGINT into an exception, so that the enclosing with-blocks' finally clauses run.

    SIGINT raises KeyboardInterrupt (as by default), SIGTERM SystemExit(143). Once the yielded
    event is set (the broker is being stopped) signals wait: a second Ctrl-C cannot cut the stop
    short, and a signal that came during a normal stop is delivered again afterwards.
    """
    stopping = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stopping
        return
    deferred: list[int] = []

    def handler(signum: int, frame: FrameType | None) -> None:
        if stopping.is_set():
            print(f"signal {signum}: still stopping the broker", file=sys.stderr, flush=True)
            deferred.append(signum)
            return
        stopping.set()
        print(f"signal {signum}: stopping the benchmark's broker", file=sys.stderr, flush=True)
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        raise SystemExit(128 + signum)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    unwinding = False
    try:
        yield stopping
    except BaseException:
        unwinding = True
        raise
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
        if deferred and not unwinding:
            signal.raise_signal(deferred[0])


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
