"""Starting and stopping the HTTP endpoint around a command's run."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from fraudkit.config import FraudkitConfig
from fraudkit.observability.health import Health
from fraudkit.observability.server import ObservabilityServer


def process_instance_id() -> str:
    """hostname-pid, the default name of a generate or sink process in logs and metrics."""
    return f"{socket.gethostname()}-{os.getpid()}"


@contextmanager
def serving(
    config: FraudkitConfig, registry: Any, health: Health, log: Callable[[str], None]
) -> Iterator[ObservabilityServer | None]:
    """Serve /metrics, /healthz and /readyz on metrics.host:metrics.port for the block (off when the port is null or 0)."""
    port = config.metrics.port
    if not port:
        yield None
        return
    server = ObservabilityServer(registry, health, config.metrics.host, port)
    log(f"metrics on {server.url}/metrics (probes {server.url}/healthz, {server.url}/readyz)")
    try:
        yield server
    finally:
        server.stop()
