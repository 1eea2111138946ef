"""Terminal-label snapshots: the terminal fraud-rate state, independent of the labels topic's retention.

Every detector reads every label, so every detector holds the same terminal state (up to how far
it has read). A snapshot is that state plus the labels-topic offsets it covers, one Parquet file
per labels topic under `state.snapshot_url` (a directory, or any URL pyarrow's filesystems take,
e.g. s3://bucket/state). Any detector may write it: each writes a complete, consistent snapshot
and a newer one replaces an older one whole (a temporary file renamed locally; one object put on
object stores), so there is no single writer to elect. A restarting detector loads the snapshot
and resumes the labels topic at its offsets: only labels newer than the last snapshot must still
be retained (`topics.labels_retention_ms`).
"""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fraudkit.errors import DataError

if TYPE_CHECKING:
    import pyarrow.fs as pafs

    from fraudkit.features.online import OnlineFeatures
    from fraudkit.features.spec import FeatureSpec

SNAPSHOT_VERSION = 1
_METADATA_KEY = b"fraudkit.terminal_snapshot"


def filesystem(url: str) -> tuple[pafs.FileSystem, str]:
    """A pyarrow filesystem and the path inside it for a directory or a URL (s3://, gs://, hdfs://, file://)."""
    import pyarrow.fs as pafs

    if "://" in url:
        try:
            return pafs.FileSystem.from_uri(url)
        except (ValueError, OSError) as exc:
            raise DataError(f"{url}: not a usable filesystem URL ({exc})") from None
    return pafs.LocalFileSystem(), str(Path(url).resolve())


def _label_key(spec: FeatureSpec) -> dict[str, Any]:
    return {"terminal_windows_ms": list(spec.terminal_windows_ms), "label_delay_ms": spec.label_delay_ms}


@dataclass
class Snapshot:
    """A loaded snapshot: labels per terminal and the labels-topic offsets they cover."""

    terminals: list[str]
    times: list[int]
    labels: list[int]
    offsets: dict[int, int]
    written_ms: int


class TerminalSnapshots:
    """Reads and writes the snapshot file of one labels topic."""

    def __init__(self, url: str, labels_topic: str) -> None:
        self.url = url
        self.fs, root = filesystem(url)
        self.directory = f"{root.rstrip('/')}/{labels_topic}"
        self.path = f"{self.directory}/terminal-labels.parquet"

    def write(self, features: OnlineFeatures, offsets: dict[int, int], now_ms: int) -> int:
        """Write the snapshot of `features`' terminal labels, covering `offsets`; returns labels written."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        terminals: list[str] = []
        times: list[int] = []
        flags: list[int] = []
        for terminal_id, label_times, fraud_flags in features.export_terminal_labels():
            terminals.extend([terminal_id] * len(label_times))
            times.extend(label_times)
            flags.extend(fraud_flags)
        metadata = {
            "version": SNAPSHOT_VERSION,
            "offsets": {str(p): o for p, o in offsets.items()},
            "spec": _label_key(features.spec),
            "written_ms": now_ms,
        }
        table = pa.table(
            {
                "terminal_id": pa.array(terminals, pa.string()),
                "event_time_ms": pa.array(times, pa.int64()),
                "label": pa.array(flags, pa.int8()),
            }
        ).replace_schema_metadata({_METADATA_KEY: json.dumps(metadata).encode()})
        self.fs.create_dir(self.directory, recursive=True)
        local = isinstance(self.fs, _local_type())
        target = f"{self.path}.{uuid.uuid4().hex[:8]}.tmp" if local else self.path
        with self.fs.open_output_stream(target) as stream:
            pq.write_table(table, stream, compression="zstd")
        if local:
            os.replace(target, self.path)  # atomic: readers see the old snapshot or the new one
        return len(times)

    def load(self, spec: FeatureSpec) -> Snapshot | None:
        """The snapshot, or None if there is none or it was made for other terminal windows.

        DataError if the file exists but cannot be read (the caller decides whether to go on).
        """
        import pyarrow.fs as pafs
        import pyarrow.parquet as pq

        if self.fs.get_file_info(self.path).type != pafs.FileType.File:
            return None
        try:
            with self.fs.open_input_file(self.path) as stream:
                table = pq.read_table(stream)
            metadata = json.loads((table.schema.metadata or {})[_METADATA_KEY])
            if metadata.get("version") != SNAPSHOT_VERSION:
                raise ValueError(f"unknown snapshot version {metadata.get('version')!r}")
            offsets = {int(p): int(o) for p, o in dict(metadata["offsets"]).items()}
            columns = table.to_pydict()
            snapshot = Snapshot(
                [str(t) for t in columns["terminal_id"]],
                [int(t) for t in columns["event_time_ms"]],
                [int(v) for v in columns["label"]],
                offsets,
                int(metadata.get("written_ms", 0)),
            )
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise DataError(f"{self.path}: unreadable terminal-label snapshot ({exc})") from None
        if metadata.get("spec") != _label_key(spec):
            return None
        return snapshot


def _local_type() -> type:
    import pyarrow.fs as pafs

    return pafs.LocalFileSystem
