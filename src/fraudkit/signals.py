"""SIGINT/SIGTERM handling for long-running loops: first signal stops cleanly, second exits at once."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator
from types import FrameType


@contextlib.contextmanager
def stop_on_signals(stop: threading.Event | None = None) -> Iterator[threading.Event]:
    """Yield an event that SIGINT/SIGTERM set; a second signal terminates the process immediately."""
    event = stop or threading.Event()
    if threading.current_thread() is not threading.main_thread():
        # Signal handlers can only be installed from the main thread (e.g. CliRunner in a thread).
        yield event
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        if event.is_set():
            os._exit(128 + signum)
        event.set()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield event
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
