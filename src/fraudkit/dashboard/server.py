"""`fraudkit dashboard`: a live web page over the sink's database, where analysts confirm or reject fraud.

Stack: the standard library's threading HTTP server, a static page and a small script that fetches
JSON every `dashboard.refresh_s` seconds. No framework and no template engine: the page holds no
data; the script puts every value from the database in place with `textContent`, and the
Content-Security-Policy forbids inline scripts. (Streamlit, which the replaced system used, pulls in a
large dependency tree, runs its own server and websocket protocol, and is hard to drive headlessly
in tests; server-sent events would hold one thread per open page for nothing that a 2-second fetch
does not give.)

Writes: `POST /api/review` publishes a label (`source: "analyst"`) to topics.labels, which the
detectors' live quality and retraining read like any other label, and which the sink stores. It
requires `dashboard.review_token` in the `X-Review-Token` header (compared in constant time). A
custom header cannot be sent cross-site without a CORS preflight, which this server never grants,
so a forged form or link cannot review (CSRF); cross-origin requests are refused outright too.
Without a configured token the endpoint is closed. The server binds 127.0.0.1 by default.
"""

from __future__ import annotations

import contextlib
import hmac
import ipaddress
import threading
import time
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any
from urllib.parse import parse_qs, urlsplit

import orjson

from fraudkit.config import FraudkitConfig
from fraudkit.dashboard.data import Filters, dashboard_summary, dashboard_verdict
from fraudkit.errors import ConfigError, FraudkitError
from fraudkit.schema import Label, encode

LogCallback = Callable[[str], None]
TOKEN_HEADER = "X-Review-Token"
MAX_BODY_BYTES = 4096
ANALYST = "analyst"
STATIC = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/app.css": ("app.css", "text/css; charset=utf-8"),
}
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
    "X-Frame-Options": "DENY",
}


def _static(name: str) -> bytes:
    return resources.files("fraudkit.dashboard").joinpath("static", name).read_bytes()


class ReviewPublisher:
    """Publishes analysts' labels to topics.labels (one producer, created on first use, thread-safe)."""

    def __init__(self, config: FraudkitConfig) -> None:
        self.config = config
        self._producer: Any = None
        self._lock = threading.Lock()

    def publish(self, label: Label) -> None:
        """Produce one label keyed by card and wait for its delivery; BrokerError otherwise."""
        from fraudkit.stream import kafka

        with self._lock:
            if self._producer is None:
                self._producer = kafka.make_producer(self.config, **{"client.id": "fraudkit-dashboard"})
            producer = self._producer
        kafka.produce(
            producer, self.config.topics.labels, encode(label), key=label.card_id or label.transaction_id
        )
        kafka.flush(producer, max(10.0, self.config.kafka.connect_timeout_s))

    def close(self) -> None:
        """Deliver what is queued."""
        if self._producer is not None:
            self._producer.flush(5.0)


def token_matches(expected: str | None, given: str | None) -> bool:
    """Constant-time comparison; False when reviews are disabled or no token was given."""
    if not expected or not given:
        return False
    return hmac.compare_digest(expected.encode(), given.encode())


class DashboardHandler(BaseHTTPRequestHandler):
    """Routes of the dashboard; the server object carries the config and the publisher."""

    server: DashboardHTTPServer
    server_version = "fraudkit-dashboard"
    sys_version = ""

    def log_message(self, format: str, *args: Any) -> None:
        """Access logs stay quiet (and never show headers, where the token travels)."""

    # -- plumbing ---------------------------------------------------------------------------

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in SECURITY_HEADERS.items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, data: Any) -> None:
        self._send(status, orjson.dumps(data), "application/json")

    def _error(self, status: int, message: str) -> None:
        self._json(status, {"error": message})

    # -- reads ------------------------------------------------------------------------------

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        if url.path in STATIC:
            name, content_type = STATIC[url.path]
            self._send(HTTPStatus.OK, _static(name), content_type)
            return
        config = self.server.config
        query = parse_qs(url.query, keep_blank_values=True)
        try:
            if url.path == "/api/settings":
                self._json(
                    HTTPStatus.OK,
                    {"refresh_s": config.dashboard.refresh_s, "reviews": bool(config.dashboard.review_token)},
                )
            elif url.path == "/api/summary":
                self._json(HTTPStatus.OK, dashboard_summary(config, Filters.from_query(query)))
            elif url.path == "/api/verdict":
                transaction_id = (query.get("id") or [""])[-1]
                verdict = dashboard_verdict(config, transaction_id) if transaction_id else None
                if verdict is None:
                    self._error(HTTPStatus.NOT_FOUND, "no such verdict")
                else:
                    self._json(HTTPStatus.OK, verdict)
            else:
                self._error(HTTPStatus.NOT_FOUND, "not found")
        except ConfigError as exc:
            self._error(HTTPStatus.BAD_REQUEST, str(exc))
        except FraudkitError as exc:
            self._error(HTTPStatus.SERVICE_UNAVAILABLE, str(exc))

    def do_HEAD(self) -> None:
        self.do_GET()

    # -- the one write ----------------------------------------------------------------------

    def do_POST(self) -> None:
        if urlsplit(self.path).path != "/api/review":
            self._error(HTTPStatus.METHOD_NOT_ALLOWED, "only POST /api/review writes")
            return
        config = self.server.config
        if not config.dashboard.review_token:
            self._error(HTTPStatus.FORBIDDEN, "reviews are disabled: set dashboard.review_token")
            return
        if not self._same_origin():
            self._error(HTTPStatus.FORBIDDEN, "cross-origin request refused")
            return
        if not token_matches(config.dashboard.review_token, self.headers.get(TOKEN_HEADER)):
            self._error(HTTPStatus.UNAUTHORIZED, "wrong or missing review token")
            return
        if (self.headers.get("Content-Type") or "").split(";")[0].strip() != "application/json":
            self._error(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, "expected application/json")
            return
        try:
            length = int(self.headers.get("Content-Length") or "0")
        except ValueError:
            length = -1
        if not 0 < length <= MAX_BODY_BYTES:
            self._error(HTTPStatus.BAD_REQUEST, f"expected a JSON body of at most {MAX_BODY_BYTES} bytes")
            return
        try:
            body = orjson.loads(self.rfile.read(length))
        except orjson.JSONDecodeError:
            self._error(HTTPStatus.BAD_REQUEST, "the body is not JSON")
            return
        transaction_id = body.get("transaction_id") if isinstance(body, dict) else None
        label = body.get("label") if isinstance(body, dict) else None
        if (
            not isinstance(transaction_id, str)
            or not transaction_id
            or label not in (0, 1)
            or isinstance(label, bool)
        ):
            self._error(HTTPStatus.BAD_REQUEST, 'expected {"transaction_id": "...", "label": 0 or 1}')
            return
        try:
            verdict = dashboard_verdict(config, transaction_id)
            if verdict is None:
                self._error(HTTPStatus.NOT_FOUND, "no such verdict")
                return
            record = Label(
                transaction_id=transaction_id,
                event_time_ms=int(verdict["event_time_ms"]),
                label=int(label),
                card_id=verdict["card_id"],
                terminal_id=verdict["terminal_id"],
                labelled_ms=time.time_ns() // 1_000_000,
                fraud_scenario=None,
                source=ANALYST,
            )
            self.server.publisher.publish(record)
        except FraudkitError as exc:
            self._error(HTTPStatus.SERVICE_UNAVAILABLE, str(exc))
            return
        self.server.log(f"analyst labelled {transaction_id} as {'fraud' if label else 'legit'}")
        self._json(
            HTTPStatus.OK, {"published": True, "topic": config.topics.labels, "label": record.to_dict()}
        )

    def do_PUT(self) -> None:
        self._error(HTTPStatus.METHOD_NOT_ALLOWED, "only POST /api/review writes")

    do_DELETE = do_PUT
    do_PATCH = do_PUT

    def _same_origin(self) -> bool:
        """Refuse requests a browser marks as cross-site, or whose Origin is not this server."""
        if (self.headers.get("Sec-Fetch-Site") or "same-origin") not in ("same-origin", "none"):
            return False
        origin = self.headers.get("Origin")
        if origin is None:
            return True
        host = self.headers.get("Host") or ""
        return origin in (f"http://{host}", f"https://{host}")


class DashboardHTTPServer(ThreadingHTTPServer):
    """The HTTP server with the dashboard's config, label publisher and log."""

    daemon_threads = True

    def __init__(self, config: FraudkitConfig, log: LogCallback) -> None:
        self.config = config
        self.publisher = ReviewPublisher(config)
        self.log = log
        super().__init__((config.dashboard.host, config.dashboard.port), DashboardHandler)


class Dashboard:
    """A running dashboard (started in a background thread); `close()` stops it."""

    def __init__(self, config: FraudkitConfig, log: LogCallback | None = None) -> None:
        self.log = log or (lambda _message: None)
        try:
            self.server = DashboardHTTPServer(config, self.log)
        except OSError as exc:
            raise ConfigError(
                f"dashboard.host/port: cannot listen on {config.dashboard.host}:{config.dashboard.port}: "
                f"{exc.strerror or exc}"
            ) from None
        self.thread = threading.Thread(
            target=self.server.serve_forever, name="fraudkit-dashboard", daemon=True
        )
        self.thread.start()
        host, port = self.server.server_address[:2]
        host = host.decode() if isinstance(host, bytes) else str(host)
        display = f"[{host}]" if ":" in host else host
        self.url = f"http://{display}:{port}/"

    def close(self) -> None:
        """Stop serving, wait for the server thread and deliver queued labels."""
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)
        self.server.publisher.close()

    def __enter__(self) -> Dashboard:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and localhost."""
    if host == "localhost":
        return True
    with contextlib.suppress(ValueError):
        return ipaddress.ip_address(host).is_loopback
    return False


def serve_dashboard(config: FraudkitConfig, stop: threading.Event, log: LogCallback | None = None) -> None:
    """Serve until `stop` is set; logs the URL, and a warning when listening beyond this machine."""
    from fraudkit.storage.database import parse_url

    log = log or (lambda _message: None)
    database = parse_url(config.sink.url)  # a malformed URL is a config error before anything listens
    if config.dashboard.review_token is None:
        log("reviews are disabled (no dashboard.review_token): the page is read-only")
    if not is_loopback(config.dashboard.host):
        log(f"warning: listening on {config.dashboard.host}: anyone who can reach it sees the verdicts")
    with Dashboard(config, log) as dashboard:
        log(f"dashboard on {dashboard.url} over {database.describe()}, table {config.sink.table}")
        while not stop.wait(0.5):
            pass  # serving happens on the server's thread; this one only waits for SIGINT/SIGTERM
