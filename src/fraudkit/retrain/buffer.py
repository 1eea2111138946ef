"""Labelled features for live retraining: scored rows awaiting their label, and the Parquet buffer.

`ScoredRows` remembers, per transaction a detector scored, the feature row the model saw, bounded
by a row count (oldest forgotten). A label joins its row (`join`) into a `LabelledBlock`.
`LabelBuffer` persists those blocks as Parquet chunk files in a directory that several detectors
share (each writes files named after itself, atomically: temporary file then rename), capped at
`buffer_max_rows` by deleting the oldest files. The files are the buffer: a restarted detector,
and the retraining process, read them back.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fraudkit.errors import DataError
from fraudkit.files import write_atomic, write_bytes_atomic

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa

    from fraudkit.schema import Label, Transaction

# Columns of every buffer file besides the features (one float32 column per feature name).
BUFFER_KEY_COLUMNS = [
    "transaction_id",
    "event_time_ms",
    "card_id",
    "label",
    "score",
    "model_version",
    "scored_ms",
    "labelled_ms",
    "detector",
]
SPEC_FILE = "spec.json"
_FILE_NAME = re.compile(r"^(\d{13})-([A-Za-z0-9_.-]+)-(\d{6})-(\d+)\.parquet$")
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")
# A row index lives in the low 32 bits of an index entry, the chunk number above it.
_ROW_BITS = 32


def spec_key(spec_dict: dict[str, Any]) -> str:
    """A short stable id of a feature spec: rows of different specs never share a buffer directory."""
    text = json.dumps(spec_dict, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def buffer_directory(buffer_path: Path | str, spec_dict: dict[str, Any]) -> Path:
    """The directory holding the labelled rows of one feature spec."""
    return Path(buffer_path) / f"spec-{spec_key(spec_dict)}"


@dataclass
class LabelledBlock:
    """Labelled feature rows, column by column (row i of every field belongs together)."""

    transaction_id: list[str]
    event_time_ms: np.ndarray
    card_id: list[str | None]
    label: np.ndarray
    score: np.ndarray
    model_version: list[str]
    scored_ms: np.ndarray
    labelled_ms: np.ndarray
    features: np.ndarray

    def __len__(self) -> int:
        return len(self.transaction_id)

    @classmethod
    def concat(cls, blocks: Sequence[LabelledBlock]) -> LabelledBlock:
        """One block holding the rows of all, in order."""
        if len(blocks) == 1:
            return blocks[0]
        return cls(
            transaction_id=[tx for block in blocks for tx in block.transaction_id],
            event_time_ms=np.concatenate([block.event_time_ms for block in blocks]),
            card_id=[card for block in blocks for card in block.card_id],
            label=np.concatenate([block.label for block in blocks]),
            score=np.concatenate([block.score for block in blocks]),
            model_version=[version for block in blocks for version in block.model_version],
            scored_ms=np.concatenate([block.scored_ms for block in blocks]),
            labelled_ms=np.concatenate([block.labelled_ms for block in blocks]),
            features=np.concatenate([block.features for block in blocks]),
        )

    def to_arrow(self, feature_names: Sequence[str], detector: str) -> pa.Table:
        """The block as an Arrow table with the buffer's columns (labelled_ms null where unknown)."""
        import pyarrow as pa

        labelled = pa.array(self.labelled_ms, type=pa.int64(), mask=self.labelled_ms < 0)
        columns: dict[str, Any] = {
            "transaction_id": pa.array(self.transaction_id, type=pa.string()),
            "event_time_ms": pa.array(self.event_time_ms, type=pa.int64()),
            "card_id": pa.array(self.card_id, type=pa.string()),
            "label": pa.array(self.label, type=pa.int8()),
            "score": pa.array(self.score, type=pa.float32()),
            "model_version": pa.array(self.model_version, type=pa.string()),
            "scored_ms": pa.array(self.scored_ms, type=pa.int64()),
            "labelled_ms": labelled,
            "detector": pa.array([detector] * len(self), type=pa.string()),
        }
        for column, name in enumerate(feature_names):
            columns[name] = pa.array(self.features[:, column], type=pa.float32())
        return pa.table(columns)


@dataclass
class _Chunk:
    """One scored batch: the rows the model saw, waiting for labels."""

    number: int
    transaction_ids: list[str]
    event_time_ms: np.ndarray
    card_ids: list[str | None]
    features: np.ndarray
    scores: np.ndarray
    model_version: str
    scored_ms: int


class ScoredRows:
    """Feature rows of scored transactions by transaction id, at most `capacity` rows (oldest forgotten).

    Scored batches are kept whole (one copy of the batch's feature matrix) and indexed by
    transaction id, so remembering a batch costs one array copy and one dict update.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._chunks: deque[_Chunk] = deque()
        self._by_number: dict[int, _Chunk] = {}
        self._index: dict[str, int] = {}
        self._rows = 0
        self._next_number = 0
        self.width: int | None = None
        self.matched = 0
        self.unmatched = 0
        self.forgotten = 0

    def __len__(self) -> int:
        """Transactions still waiting for a label."""
        return len(self._index)

    def add(
        self,
        transactions: Sequence[Transaction],
        features: np.ndarray,
        scores: np.ndarray,
        model_version: str,
        scored_ms: int,
    ) -> None:
        """Remember a scored batch (features row i belongs to transactions[i]); copies the arrays."""
        count = len(transactions)
        if count == 0:
            return
        if self.width is not None and features.shape[1] != self.width:
            # A model with another feature spec now serves: rows of the old one cannot be mixed.
            self.clear()
        self.width = int(features.shape[1])
        if count > self.capacity:
            transactions = transactions[count - self.capacity :]
            features = features[count - self.capacity :]
            scores = scores[count - self.capacity :]
            count = self.capacity
        ids = [tx.transaction_id for tx in transactions]
        chunk = _Chunk(
            number=self._next_number,
            transaction_ids=ids,
            event_time_ms=np.fromiter((tx.event_time_ms for tx in transactions), np.int64, count),
            card_ids=[tx.card_id for tx in transactions],
            features=np.array(features, dtype=np.float32, copy=True),
            scores=np.array(scores, dtype=np.float32, copy=True),
            model_version=model_version,
            scored_ms=scored_ms,
        )
        self._next_number += 1
        self._chunks.append(chunk)
        self._by_number[chunk.number] = chunk
        base = chunk.number << _ROW_BITS
        self._index.update(zip(ids, range(base, base + count), strict=True))
        self._rows += count
        while self._rows > self.capacity:
            self._forget_oldest()

    def _forget_oldest(self) -> None:
        chunk = self._chunks.popleft()
        del self._by_number[chunk.number]
        self._rows -= len(chunk.transaction_ids)
        base = chunk.number << _ROW_BITS
        stop = base + len(chunk.transaction_ids)
        index = self._index
        for transaction_id in chunk.transaction_ids:
            entry = index.get(transaction_id)
            # A transaction scored again later (at-least-once replay) points at its newer chunk.
            if entry is not None and base <= entry < stop:
                del index[transaction_id]
                self.forgotten += 1

    def clear(self) -> None:
        """Forget everything (e.g. the feature spec changed)."""
        self.forgotten += len(self._index)
        self._chunks.clear()
        self._by_number.clear()
        self._index.clear()
        self._rows = 0
        self.width = None

    def join(self, labels: Sequence[Label]) -> LabelledBlock | None:
        """The rows of the labelled transactions this detector scored (each joined once), or None."""
        index = self._index
        groups: dict[int, tuple[list[int], list[int], list[int]]] = {}
        row_mask = (1 << _ROW_BITS) - 1
        for label in labels:
            entry = index.pop(label.transaction_id, None)
            if entry is None:
                self.unmatched += 1
                continue
            rows, values, labelled = groups.setdefault(entry >> _ROW_BITS, ([], [], []))
            rows.append(entry & row_mask)
            values.append(label.label)
            labelled.append(-1 if label.labelled_ms is None else label.labelled_ms)
        if not groups:
            return None
        blocks = []
        for number, (rows, values, labelled) in groups.items():
            chunk = self._by_number[number]
            take = np.asarray(rows, dtype=np.int64)
            blocks.append(
                LabelledBlock(
                    transaction_id=[chunk.transaction_ids[row] for row in rows],
                    event_time_ms=chunk.event_time_ms[take],
                    card_id=[chunk.card_ids[row] for row in rows],
                    label=np.asarray(values, dtype=np.int8),
                    score=chunk.scores[take],
                    model_version=[chunk.model_version] * len(rows),
                    scored_ms=np.full(len(rows), chunk.scored_ms, dtype=np.int64),
                    labelled_ms=np.asarray(labelled, dtype=np.int64),
                    features=chunk.features[take],
                )
            )
        block = LabelledBlock.concat(blocks)
        self.matched += len(block)
        return block


@dataclass(frozen=True)
class BufferFile:
    """One chunk file of the buffer; its name says when it was written, by whom, and its row count."""

    path: Path
    created_ms: int
    detector: str
    rows: int


class LabelBuffer:
    """The Parquet chunk files of one feature spec under the shared buffer path."""

    def __init__(
        self,
        directory: Path | str,
        feature_names: Sequence[str],
        detector: str,
        max_rows: int,
        spec_dict: dict[str, Any] | None = None,
    ) -> None:
        clash = sorted(set(feature_names) & set(BUFFER_KEY_COLUMNS))
        if clash:
            raise DataError(f"feature name(s) {', '.join(clash)} clash with the label buffer's columns")
        self.directory = Path(directory)
        self.feature_names = list(feature_names)
        self.detector = detector
        self.max_rows = max_rows
        self.spec_dict = spec_dict
        self._safe_detector = _UNSAFE.sub("_", detector).strip("_") or "detector"
        self._sequence = 0
        self.written_rows = 0
        self.deleted_files = 0

    @classmethod
    def for_spec(
        cls, buffer_path: Path | str, spec_dict: dict[str, Any], detector: str, max_rows: int
    ) -> LabelBuffer:
        """The buffer of a feature spec (its names come from the spec)."""
        return cls(
            buffer_directory(buffer_path, spec_dict), list(spec_dict["names"]), detector, max_rows, spec_dict
        )

    def files(self) -> list[BufferFile]:
        """Complete chunk files, oldest first (temporary files of writers in progress are skipped)."""
        try:
            entries = list(os.scandir(self.directory))
        except FileNotFoundError:
            return []
        found = []
        for entry in entries:
            match = _FILE_NAME.match(entry.name)
            if match:
                created, detector, _, rows = match.groups()
                found.append(BufferFile(Path(entry.path), int(created), detector, int(rows)))
        found.sort(key=lambda item: item.path.name)
        return found

    def rows(self) -> int:
        """Labelled rows currently in the buffer (all detectors)."""
        return sum(item.rows for item in self.files())

    def write(self, block: LabelledBlock) -> Path | None:
        """Persist a block as a new chunk file (atomically), then enforce the row cap; returns the file."""
        if len(block) == 0:
            return None
        import pyarrow.parquet as pq

        self.directory.mkdir(parents=True, exist_ok=True)
        if self.spec_dict is not None and not (self.directory / SPEC_FILE).exists():
            spec_bytes = json.dumps(self.spec_dict, indent=2).encode()
            write_bytes_atomic(self.directory / SPEC_FILE, spec_bytes)
        table = block.to_arrow(self.feature_names, self.detector)
        self._sequence += 1
        created_ms = time.time_ns() // 1_000_000
        name = (
            f"{created_ms:013d}-{self._safe_detector}-{self._sequence % 1_000_000:06d}-{len(block)}.parquet"
        )
        path = self.directory / name
        write_atomic(path, lambda temporary: pq.write_table(table, temporary, compression="snappy"))
        self.written_rows += len(block)
        self.prune()
        return path

    def prune(self) -> int:
        """Delete the oldest files until at most max_rows remain; returns the files deleted."""
        files = self.files()
        total = sum(item.rows for item in files)
        deleted = 0
        for item in files:
            if total <= self.max_rows:
                break
            # Several detectors prune the same directory: a file another one deleted is fine.
            with contextlib.suppress(FileNotFoundError):
                item.path.unlink()
                deleted += 1
            total -= item.rows
        self.deleted_files += deleted
        return deleted

    def read_frame(self) -> pd.DataFrame:
        """Every row of the buffer as pandas, in (event_time_ms, transaction_id) order (for checks and tools)."""
        import pandas as pd
        import pyarrow.parquet as pq

        tables = []
        for item in self.files():
            with contextlib.suppress(FileNotFoundError):
                tables.append(pq.read_table(item.path).to_pandas())
        if not tables:
            return pd.DataFrame(columns=[*BUFFER_KEY_COLUMNS, *self.feature_names])
        frame = pd.concat(tables, ignore_index=True)
        return frame.sort_values(["event_time_ms", "transaction_id"], kind="mergesort").reset_index(drop=True)
