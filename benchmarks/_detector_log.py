"""A detector subprocess's log, read in the background, with events for the lines benchmarks wait for."""

from __future__ import annotations

import subprocess
import threading


class DetectorLog:
    """Collects the stderr lines of a `python -m fraudkit detect` process; `seen[marker]` is set once a line contains marker."""

    def __init__(self, process: subprocess.Popen[str], *markers: str) -> None:
        self.process = process
        self.lines: list[str] = []
        self.seen = {marker: threading.Event() for marker in ("assigned partitions", *markers)}
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.append(line.rstrip())
            for marker, event in self.seen.items():
                if marker in line:
                    event.set()

    def finished(self, timeout_s: float = 10.0) -> list[str]:
        """Every line, once the process has ended and its stderr is read to the end."""
        self.process.wait(timeout_s)
        self.reader.join(timeout_s)
        return self.lines

    def wait_for_partitions(self, timeout_s: float = 90.0) -> bool:
        """True once the detector owns partitions; otherwise kill it, print its last lines and return False."""
        if self.seen["assigned partitions"].wait(timeout_s):
            return True
        self.process.kill()
        print(f"detector did not get partitions within {timeout_s:g} s:", *self.lines[-5:], sep="\n  ")
        return False
