"""The one log writer of `detect`, `generate` and `sink`: plain text lines or one JSON object per line.

Library loops report through a `LogCallback` (a function of one string); `EventLog` is that
callback. In JSON mode each line carries ts (UTC, ISO 8601), level, event, component, instance
and the message, plus the numbers of status events. Event names come from the message's start
(`EVENTS`), so the loops keep their readable text and collectors get a stable field to filter on.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, Literal, TextIO

import orjson

LogFormat = Literal["text", "json"]

# (pattern at the start of a message, event name). First match wins.
EVENTS: list[tuple[re.Pattern[str], str]] = [
    (re.compile(p), event)
    for p, event in (
        (r"assigned partitions", "partitions_assigned"),
        (r"revoked partitions", "partitions_revoked"),
        (r"lost partitions", "partitions_lost"),
        (r"now serving model", "model_swapped"),
        (r"model \S+ \(announced by", "model_loaded"),
        (r"cannot load model", "model_load_failed"),
        (r"\S+ drifted: PSI", "drift_alarm"),
        (r"\S+ back within range: PSI", "drift_recovered"),
        (r"(warning: )?retraining", "retraining"),
        (r"feature log", "feature_log"),
        (r"restored \S+ cards", "state_restored"),
        (r"restored \S+ terminal labels", "terminal_labels_restored"),
        (r"waiting for Kafka|still waiting for Kafka", "kafka_waiting"),
        (r"connected to Kafka", "kafka_connected"),
        (r"offset commit failed", "commit_failed"),
        (r"consumer:", "consumer_error"),
        (r"control topic", "control_topic"),
        (r"metrics on ", "metrics_listening"),
    )
]
_DRIFT = re.compile(r"^(?P<feature>\S+) (drifted|back within range): PSI (?P<psi>[0-9.]+)")
_WARNING_EVENTS = {"partitions_lost", "model_load_failed", "drift_alarm", "commit_failed", "consumer_error"}


def classify(message: str) -> str:
    """The event name of a loop's log message ("message" when no pattern matches)."""
    for pattern, event in EVENTS:
        if pattern.match(message):
            return event
    return "message"


def _level(event: str, message: str) -> str:
    if message.startswith(("warning:", "warning ")) or event in _WARNING_EVENTS:
        return "warning"
    if message.startswith("error:"):
        return "error"
    return "info"


def _timestamp(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class EventLog:
    """A `LogCallback` that writes text lines (through `text_writer`) or JSON lines (to `stream`)."""

    def __init__(
        self,
        component: str,
        instance_id: str,
        log_format: LogFormat = "text",
        *,
        stream: TextIO | None = None,
        text_writer: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if log_format == "json" and stream is None:
            raise ValueError("JSON logs need a stream")
        self.component = component
        self.instance_id = instance_id
        self.format = log_format
        self.stream = stream
        self.text_writer = text_writer or (lambda line: None)
        self.clock = clock
        self._lock = threading.Lock()  # loops and their background threads log concurrently

    def __call__(self, message: str) -> None:
        """Log one message of a loop (its event name is classified from the text)."""
        event = classify(message)
        fields: dict[str, Any] = {}
        if event in ("drift_alarm", "drift_recovered"):
            match = _DRIFT.match(message)
            if match:
                fields = {"feature": match["feature"], "psi": float(match["psi"])}
        self.emit(event, message, _level(event, message), **fields)

    def emit(self, event: str, message: str, level: str = "info", **fields: Any) -> None:
        """Write one event: the message as a text line, or an object with the fields in JSON mode."""
        if self.format == "text":
            self.text_writer(message)
            return
        record: dict[str, Any] = {
            "ts": _timestamp(self.clock()),
            "level": level,
            "event": event,
            "component": self.component,
            "instance": self.instance_id,
            "message": message,
        }
        for key, value in fields.items():
            record.setdefault(key, value)
        line = orjson.dumps(record, default=str, option=orjson.OPT_SERIALIZE_NUMPY).decode()
        assert self.stream is not None
        with self._lock:
            self.stream.write(line + "\n")
            self.stream.flush()

    def status(self, text: str, fields: Mapping[str, Any]) -> None:
        """A periodic status: `text` in text mode, event "status" with `fields` in JSON mode."""
        self.emit("status", text, "info", **dict(fields))
