"""The feature log: every scored row and every label, durable, so labels join however late they come.

Detectors append, retraining joins. Layout under `retrain.feature_log_url` (a directory, or any
URL pyarrow's filesystems take, e.g. s3://bucket/log; Spark reads the same URL)::

    spec-<key>/rows/day=YYYY-MM-DD/<created_ms>-<detector>-<seq>-<rows>.parquet
        transaction_id, event_time_ms, card_id, score, model_version, scored_ms, detector, <features>
    labels/day=YYYY-MM-DD/<created_ms>-<detector>-<seq>-<rows>.parquet
        transaction_id, event_time_ms, label, labelled_ms, detector

`day` is the transaction's event day (UTC). Rows are grouped per feature spec (a model with other
features logs elsewhere); labels are not. Each detector buffers rows and labels in memory and
writes one file per event day every `feature_log_flush_batches` batches or
`feature_log_flush_s` seconds, and at stop: a crash loses at most that unflushed tail (its
transactions are re-delivered to the group and scored and logged again only if their offsets were
not committed yet; rows of committed batches in the tail are lost to retraining, never to scoring).
Every detector reads every label, so labels are logged once per detector: the join keeps one per
transaction (the latest `labelled_ms`), as it keeps one scored row per transaction (the latest
`scored_ms`: at-least-once replays log a row twice). Day directories older than
`feature_log_horizon_days` behind the newest event day seen are deleted.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from fraudkit.errors import DataError
from fraudkit.state.snapshot import filesystem

if TYPE_CHECKING:
    import pyarrow as pa

    from fraudkit.schema import Label, Transaction

DAY_MS = 86_400_000
ROW_COLUMNS = [
    "transaction_id",
    "event_time_ms",
    "card_id",
    "score",
    "model_version",
    "scored_ms",
    "detector",
]
LABEL_COLUMNS = ["transaction_id", "event_time_ms", "label", "labelled_ms", "detector"]
_FILE_NAME = re.compile(r"^(\d{13})-([A-Za-z0-9_.-]+)-(\d{6})-(\d+)\.parquet$")
_DAY_DIR = re.compile(r"^day=(\d{4}-\d{2}-\d{2})$")
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def spec_key(spec_dict: dict[str, Any]) -> str:
    """A short stable id of a feature spec: rows of different specs never share a directory."""
    text = json.dumps(spec_dict, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def day_of(event_time_ms: int) -> str:
    """YYYY-MM-DD (UTC) of an event time."""
    return time.strftime("%Y-%m-%d", time.gmtime(event_time_ms // 1000))


@dataclass(frozen=True)
class LogFile:
    """One complete file of the log; its name says when, by whom and how many rows."""

    path: str
    day: str
    created_ms: int
    detector: str
    rows: int


class FeatureLog:
    """One detector's writer (and anyone's reader) of the feature log of one feature spec."""

    def __init__(
        self,
        url: str,
        spec_dict: dict[str, Any],
        detector: str,
        flush_batches: int = 50,
        flush_s: float = 30.0,
        horizon_days: float = 45.0,
    ) -> None:
        names = list(spec_dict["names"])
        clash = sorted(set(names) & (set(ROW_COLUMNS) | {"day"}))
        if clash:
            raise DataError(f"feature name(s) {', '.join(clash)} clash with the feature log's columns")
        self.url = url
        self.fs, root = filesystem(url)
        self.root = root.rstrip("/")
        self.rows_dir = f"{self.root}/spec-{spec_key(spec_dict)}/rows"
        self.labels_dir = f"{self.root}/labels"
        self.feature_names = names
        self.detector = detector
        self._safe_detector = _UNSAFE.sub("_", detector).strip("_") or "detector"
        self.flush_batches = flush_batches
        self.flush_s = flush_s
        self.horizon_ms = int(horizon_days * DAY_MS)
        self._rows: list[
            tuple[list[str], np.ndarray, list[str | None], np.ndarray, str, int, np.ndarray]
        ] = []
        self._labels: list[Label] = []
        self._last_flush = time.monotonic()
        self._sequence = 0
        self.newest_event_ms: int | None = None
        self.rows_written = 0
        self.labels_written = 0
        self.days_deleted = 0

    # -- the loop's thread: cheap buffering ---------------------------------------------------

    def add_rows(
        self,
        transactions: Sequence[Transaction],
        features: np.ndarray,
        scores: np.ndarray,
        model_version: str,
        scored_ms: int,
    ) -> None:
        """Buffer a scored batch (copies what it keeps: the loop owns the arrays)."""
        if not transactions:
            return
        times = np.fromiter((tx.event_time_ms for tx in transactions), np.int64, len(transactions))
        self._rows.append(
            (
                [tx.transaction_id for tx in transactions],
                times,
                [tx.card_id for tx in transactions],
                np.asarray(scores, dtype=np.float32).copy(),
                model_version,
                scored_ms,
                np.asarray(features, dtype=np.float32).copy(),
            )
        )
        newest = int(times.max())
        if self.newest_event_ms is None or newest > self.newest_event_ms:
            self.newest_event_ms = newest

    def add_labels(self, labels: Sequence[Label]) -> None:
        """Buffer arriving labels."""
        self._labels.extend(labels)

    def due(self, now: float | None = None) -> bool:
        """Whether the buffer should be written now (batches or time)."""
        if not self._rows and not self._labels:
            return False
        now = time.monotonic() if now is None else now
        return len(self._rows) >= self.flush_batches or now - self._last_flush >= self.flush_s

    def take(self) -> tuple[pa.Table | None, pa.Table | None]:
        """The buffered rows and labels as Arrow tables (None where empty); the buffer is emptied."""
        import pyarrow as pa

        self._last_flush = time.monotonic()
        rows_table = labels_table = None
        if self._rows:
            chunks, self._rows = self._rows, []
            columns: dict[str, Any] = {
                "transaction_id": pa.array([i for c in chunks for i in c[0]], pa.string()),
                "event_time_ms": pa.array(np.concatenate([c[1] for c in chunks]), pa.int64()),
                "card_id": pa.array([i for c in chunks for i in c[2]], pa.string()),
                "score": pa.array(np.concatenate([c[3] for c in chunks]), pa.float32()),
                "model_version": pa.array([c[4] for c in chunks for _ in c[0]], pa.string()),
                "scored_ms": pa.array(np.concatenate([np.full(len(c[0]), c[5], np.int64) for c in chunks])),
                "detector": pa.array([self.detector] * sum(len(c[0]) for c in chunks), pa.string()),
            }
            features = np.concatenate([c[6] for c in chunks])
            for index, name in enumerate(self.feature_names):
                columns[name] = pa.array(features[:, index], pa.float32())
            rows_table = pa.table(columns)
        if self._labels:
            labels, self._labels = self._labels, []
            labels_table = pa.table(
                {
                    "transaction_id": pa.array([label.transaction_id for label in labels], pa.string()),
                    "event_time_ms": pa.array([label.event_time_ms for label in labels], pa.int64()),
                    "label": pa.array([label.label for label in labels], pa.int8()),
                    "labelled_ms": pa.array([label.labelled_ms for label in labels], pa.int64()),
                    "detector": pa.array([self.detector] * len(labels), pa.string()),
                }
            )
        return rows_table, labels_table

    # -- the writer thread --------------------------------------------------------------------

    def write(self, rows: pa.Table | None, labels: pa.Table | None) -> int:
        """Write tables as one file per event day each, then delete days past the horizon; returns files."""
        files = 0
        for directory, table in ((self.rows_dir, rows), (self.labels_dir, labels)):
            if table is None or table.num_rows == 0:
                continue
            files += self._write_by_day(directory, table)
            if directory == self.rows_dir:
                self.rows_written += table.num_rows
            else:
                self.labels_written += table.num_rows
        self.prune()
        return files

    def _write_by_day(self, directory: str, table: pa.Table) -> int:
        import pyarrow.compute as pc
        import pyarrow.parquet as pq

        times = table.column("event_time_ms").to_numpy()
        days = (times // DAY_MS).astype(np.int64)
        written = 0
        for day_number in np.unique(days):
            part = table.filter(pc.equal(pa_array(days), int(day_number)))
            day = day_of(int(day_number) * DAY_MS)
            day_dir = f"{directory}/day={day}"
            self.fs.create_dir(day_dir, recursive=True)
            self._sequence += 1
            created_ms = time.time_ns() // 1_000_000
            name = f"{created_ms:013d}-{self._safe_detector}-{self._sequence % 1_000_000:06d}-{part.num_rows}.parquet"
            # Spark and `files` skip names starting with "_" or ".": a reader never sees a half file.
            temporary = f"{day_dir}/_{uuid.uuid4().hex[:8]}.tmp"
            with self.fs.open_output_stream(temporary) as stream:
                pq.write_table(part, stream, compression="snappy")
            self.fs.move(temporary, f"{day_dir}/{name}")
            written += 1
        return written

    def prune(self) -> int:
        """Delete day directories older than the horizon behind the newest event day seen."""
        if self.newest_event_ms is None:
            return 0
        oldest_kept = day_of(self.newest_event_ms - self.horizon_ms)
        deleted = 0
        for directory in (self.rows_dir, self.labels_dir):
            for day, path in self._days(directory):
                if day < oldest_kept:
                    # Several detectors prune the same log: a directory another one deleted is fine.
                    with contextlib.suppress(FileNotFoundError, OSError):
                        self.fs.delete_dir(path)
                        deleted += 1
        self.days_deleted += deleted
        return deleted

    # -- reading ------------------------------------------------------------------------------

    def _days(self, directory: str) -> list[tuple[str, str]]:
        import pyarrow.fs as pafs

        try:
            entries = self.fs.get_file_info(pafs.FileSelector(directory, allow_not_found=True))
        except OSError:
            return []
        found = []
        for entry in entries:
            match = _DAY_DIR.match(entry.base_name)
            if match and entry.type == pafs.FileType.Directory:
                found.append((match.group(1), entry.path))
        return sorted(found)

    def files(self, kind: str) -> list[LogFile]:
        """Complete files of `rows` or `labels`, oldest day first."""
        import pyarrow.fs as pafs

        directory = self._directory(kind)
        found: list[LogFile] = []
        for day, path in self._days(directory):
            try:
                entries = self.fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
            except OSError:
                continue
            for entry in entries:
                match = _FILE_NAME.match(entry.base_name)
                if match:
                    created, detector, _, rows = match.groups()
                    found.append(LogFile(entry.path, day, int(created), detector, int(rows)))
        return sorted(found, key=lambda item: (item.day, item.path))

    def spark_path(self, kind: str) -> str:
        """The directory of `rows` or `labels` as Spark reads it (the URL's scheme kept)."""
        return self.spark_url(self._directory(kind))

    def _directory(self, kind: str) -> str:
        return self.rows_dir if kind == "rows" else self.labels_dir

    def spark_url(self, path: str) -> str:
        """A path of this log's filesystem as Spark reads it (the URL's scheme kept)."""
        if "://" not in self.url:
            return path
        scheme = self.url.split("://", 1)[0]
        return f"{scheme}://{path}"


def pa_array(values: np.ndarray) -> Any:
    import pyarrow as pa

    return pa.array(values)
