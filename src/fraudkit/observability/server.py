"""One threaded HTTP server per process: /metrics (Prometheus), /healthz and /readyz (Kubernetes)."""

from __future__ import annotations

import json
import socketserver
import threading
from collections.abc import Callable, Iterable
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from fraudkit.errors import ConfigError
from fraudkit.observability.health import Health

STOP_TIMEOUT_S = 5.0
POLL_INTERVAL_S = 0.25

StartResponse = Callable[..., Any]


class _ThreadingServer(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True
    allow_reuse_address = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes every few seconds would flood stderr; requests are not logged."""


def make_app(registry: Any, health: Health) -> Callable[[dict[str, Any], StartResponse], Iterable[bytes]]:
    """The WSGI app: /metrics from `registry`, /healthz and /readyz from `health`, 404 otherwise."""
    from prometheus_client import make_wsgi_app

    metrics_app = make_wsgi_app(registry)

    def probe(result: tuple[bool, dict[str, Any]], start_response: StartResponse) -> list[bytes]:
        ok, detail = result
        body = json.dumps(detail, sort_keys=True).encode() + b"\n"
        status = "200 OK" if ok else "503 Service Unavailable"
        start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
        return [body]

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "/")
        if path == "/metrics":
            return metrics_app(environ, start_response)
        if path == "/healthz":
            return probe(health.live(), start_response)
        if path == "/readyz":
            return probe(health.ready(), start_response)
        body = b"not found: try /metrics, /healthz or /readyz\n"
        start_response("404 Not Found", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
        return [body]

    return app


class ObservabilityServer:
    """The HTTP endpoint in a daemon thread; `stop()` ends it within a deadline."""

    def __init__(self, registry: Any, health: Health, host: str, port: int) -> None:
        self.host = host
        try:
            self._server = make_server(
                host,
                port,
                make_app(registry, health),
                server_class=_ThreadingServer,
                handler_class=_QuietHandler,
            )
        except OSError as exc:
            raise ConfigError(
                f"metrics.port: cannot listen on {host}:{port} ({exc.strerror or exc})"
            ) from None
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": POLL_INTERVAL_S},
            name="fraudkit-metrics-http",
            daemon=True,
        )
        self._thread.start()

    @property
    def url(self) -> str:
        """http://host:port of the endpoint."""
        return f"http://{self.host}:{self.port}"

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """Stop serving (waits at most `timeout_s` for the serving thread), then close the socket."""
        stopper = threading.Thread(target=self._server.shutdown, daemon=True)
        stopper.start()
        stopper.join(timeout_s)
        self._thread.join(max(0.0, timeout_s))
        self._server.server_close()

    def __enter__(self) -> ObservabilityServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
