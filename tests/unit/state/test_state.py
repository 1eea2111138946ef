"""Durable state logic: the card-state record, the replay guard and terminal-label snapshots."""

from __future__ import annotations

import random
from pathlib import Path
from typing import ClassVar

import numpy as np
import orjson
import pytest

from fraudkit.config import FeaturesConfig
from fraudkit.errors import DataError
from fraudkit.features import FeatureSpec, OnlineFeatures
from fraudkit.schema import Label, Transaction
from fraudkit.state.codec import STATE_VERSION, InvalidStateRecord, decode_card, encode_card, spec_fingerprint
from fraudkit.state.replay import GuardedFeatures
from fraudkit.state.snapshot import TerminalSnapshots

START_MS = 1_767_225_600_000
DAY_MS = 86_400_000


class Fields:
    has_card = True
    has_terminal = True
    has_location = True
    has_country = True
    passthrough: ClassVar[list[str]] = []


SPEC = FeatureSpec.from_config(FeaturesConfig(), Fields())
WINDOWS = len(SPEC.card_windows_ms)


def stream(count: int, seed: int = 1) -> list[Transaction]:
    rng = random.Random(seed)
    return [
        Transaction(
            transaction_id=f"tx-{i:06d}",
            event_time_ms=START_MS + i * 600_000,  # 10 minutes apart: 40 days over 6,000 rows
            card_id=f"card-{rng.randrange(15)}",
            amount=round(rng.random() * 300, 2),
            terminal_id=f"term-{rng.randrange(6)}",
            country=rng.choice(["DE", "FR", "IT"]),
            lat=48 + rng.random(),
            lon=11 + rng.random(),
        )
        for i in range(count)
    ]


def labels_for(transactions: list[Transaction]) -> list[Label]:
    return [
        Label(tx.transaction_id, tx.event_time_ms, int(tx.amount > 250), terminal_id=tx.terminal_id)
        for tx in transactions
    ]


def round_trip(source: OnlineFeatures, target: OnlineFeatures) -> None:
    fingerprint = spec_fingerprint(source.spec)
    for card_id in source.card_ids():
        state = source.export_card(card_id)
        assert state is not None
        record = decode_card(encode_card(fingerprint, 7, (1, "tx"), state), WINDOWS)
        target.import_card(card_id, record.state)


def test_restored_cards_compute_exactly_the_features_of_the_uninterrupted_state() -> None:
    rows = stream(6000)
    uninterrupted = OnlineFeatures(SPEC)
    before = OnlineFeatures(SPEC)
    uninterrupted.transform(rows[:4000], np.float64)
    before.transform(rows[:4000], np.float64)
    before.expire(rows[3999].event_time_ms)  # trims rows outside the windows: features unchanged
    restored = OnlineFeatures(SPEC)
    round_trip(before, restored)
    expected = uninterrupted.transform(rows[4000:], np.float64)
    got = restored.transform(rows[4000:], np.float64)
    assert np.array_equal(expected, got)  # bit for bit: sums travel in their shortest exact form
    empty = OnlineFeatures(SPEC).transform(rows[4000:], np.float64)
    assert not np.array_equal(expected, empty)  # the test can fail: cold cards differ


def test_the_record_is_compact_and_keeps_only_rows_inside_the_windows() -> None:
    features = OnlineFeatures(SPEC)
    rows = stream(6000)
    features.transform(rows, np.float64)
    state = features.export_card("card-3")
    assert state is not None
    times = state[3]
    assert min(times) > rows[-1].event_time_ms - SPEC.history_ms - DAY_MS
    record = encode_card(spec_fingerprint(SPEC), 1, (1, "tx"), state)
    assert record[0] == STATE_VERSION and len(record) < 60 * len(times) + 400


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda fields: b"\x09" + orjson.dumps(fields), "unknown state record version 9"),
        (lambda fields: b"\x01{not json", "not JSON"),
        (lambda fields: b"\x01" + orjson.dumps(fields[:5]), "not a list of 13 fields"),
        (
            lambda fields: b"\x01" + orjson.dumps([*fields[:8], [-1.0] * len(fields[8]), *fields[9:]]),
            "amount",
        ),
        (lambda fields: b"\x01" + orjson.dumps([*fields[:9], [0], *fields[10:]]), "heads and sums"),
        (lambda fields: b"\x01" + orjson.dumps([*fields[:9], [10**6] * WINDOWS, *fields[10:]]), "outside"),
        (lambda fields: b"\x01" + orjson.dumps([*fields[:11], {"DE": "x"}, fields[12]]), "countries"),
        (lambda fields: b"", "empty record"),
    ],
)
def test_a_corrupt_record_is_refused_with_its_reason(mutate: object, reason: str) -> None:
    features = OnlineFeatures(SPEC)
    features.transform(stream(300), np.float64)
    state = features.export_card("card-1")
    assert state is not None
    fields = orjson.loads(encode_card(1, 1, (1, "tx"), state)[1:])
    with pytest.raises(InvalidStateRecord, match=reason):
        decode_card(mutate(fields), WINDOWS)  # type: ignore[operator]


def test_replayed_rows_are_scored_but_not_counted_twice() -> None:
    rows = stream(3000)
    uninterrupted = OnlineFeatures(SPEC)
    expected = uninterrupted.transform(rows, np.float64)
    # The state was saved after row 2000, but offsets were committed only up to row 1800.
    saved = OnlineFeatures(SPEC)
    saved.transform(rows[:2000], np.float64)
    restored = GuardedFeatures(SPEC)
    round_trip(saved, restored)
    last: dict[str | None, tuple[int, str]] = {}
    for tx in rows[:2000]:
        last[tx.card_id] = (tx.event_time_ms, tx.transaction_id)
    restored.guard(last.items())
    got = restored.transform(rows[1800:], np.float64)
    assert restored.replayed_rows == 200
    assert not restored.replay_guard  # every card left the guard at its first new row
    assert np.array_equal(got[200:], expected[2000:])  # after the replay: as if never stopped
    assert got[:200].shape == (200, len(SPEC.names))  # replayed rows still get features (duplicates)
    # The plain path once the guard is empty.
    assert np.array_equal(restored.transform(rows[2000:2001], np.float64)[0, 0], rows[2000].amount)


def test_snapshots_restore_terminal_labels_and_their_offsets(tmp_path: Path) -> None:
    rows = stream(2000)
    features = OnlineFeatures(SPEC)
    features.observe_labels(labels_for(rows[:1500]))
    snapshots = TerminalSnapshots(str(tmp_path), "labels")
    written = snapshots.write(features, {0: 700, 1: 800}, 1)
    assert written == 1500
    loaded = snapshots.load(SPEC)
    assert loaded is not None and loaded.offsets == {0: 700, 1: 800}
    restored = OnlineFeatures(SPEC)
    for terminal_id, event_time, label in zip(loaded.terminals, loaded.times, loaded.labels, strict=True):
        restored.observe_label(Label("", event_time, label, terminal_id=terminal_id))
    assert np.array_equal(
        features.transform(rows[1500:], np.float64), restored.transform(rows[1500:], np.float64)
    )
    other = FeatureSpec.from_config(FeaturesConfig(terminal_windows_days=[2.0]), Fields())
    assert snapshots.load(other) is None  # other windows: start from the topic instead
    Path(snapshots.path).write_bytes(b"not parquet")
    with pytest.raises(DataError, match="unreadable terminal-label snapshot"):
        snapshots.load(SPEC)


def test_the_status_line_shows_restore_progress_and_restored_cards() -> None:
    from fraudkit.detect.status import state_text

    figures = {"restoring": [0, 3], "restore_records": 12_345, "restored_cards": 0, "restores": 0}
    assert "restoring partitions [0, 3] (12,345 records read)" in state_text(figures)
    done = {
        "restoring": None,
        "restored_cards": 7_233,
        "restores": 2,
        "restore_s": 1.5,
        "changelog_records": 10,
    }
    text = state_text(done)
    assert "7,233 cards restored in 2 restore(s), 1.50s" in text and "restoring" not in text


def test_expiry_waits_for_the_slowest_assigned_partition() -> None:
    rows = stream(6000)  # 40 days
    uninterrupted = OnlineFeatures(SPEC)
    expected = uninterrupted.transform(rows, np.float64)
    features = GuardedFeatures(SPEC)
    features.transform(rows[:3000], np.float64)
    # Another partition of this detector is 20 days ahead; this one (1) is at row 3000.
    features.assigned = {0, 1}
    features.partition_times = {0: rows[-1].event_time_ms + 20 * DAY_MS, 1: rows[2999].event_time_ms}
    features.expire(rows[-1].event_time_ms + 20 * DAY_MS)
    assert np.array_equal(features.transform(rows[3000:], np.float64), expected[3000:])
    plain = OnlineFeatures(SPEC)
    plain.transform(rows[:3000], np.float64)
    plain.expire(rows[-1].event_time_ms + 20 * DAY_MS)  # by the fastest partition: cards gone
    assert not np.array_equal(plain.transform(rows[3000:], np.float64), expected[3000:])


def test_sliced_expiry_holds_back_to_the_slowest_partition_like_expire() -> None:
    from fraudkit.state.replay import GuardedFeatures

    recorded: list[int] = []

    class Recording(GuardedFeatures):
        def _expiry_sweep(self, now_ms: int):  # type: ignore[no-untyped-def]
            recorded.append(now_ms)
            yield from ()

    features = Recording.__new__(Recording)
    features.partition_times = {0: 1_000, 1: 5_000}
    features.assigned = {0, 1}
    features._sweep = None
    assert features._expiry_time(9_000) == 1_000
    assert features.expire_step(9_000, 0.01) is True
    assert recorded == [1_000]


class RecordingProducer:
    """Keeps what is produced (topic, key, value, partition)."""

    def __init__(self) -> None:
        self.produced: list[tuple[str, bytes | None, bytes, int]] = []

    def produce(
        self, topic: str, value: bytes, key: bytes | None, partition: int, on_delivery: object
    ) -> None:
        self.produced.append((topic, key, value, partition))

    def poll(self, timeout: float) -> int:
        return 0


class Source:
    """The message a transaction came from: its partition and offset."""

    def __init__(self, offset: int) -> None:
        self._offset = offset

    def partition(self) -> int:
        return 0

    def offset(self) -> int:
        return self._offset


def test_a_sliced_seal_writes_each_card_once_with_its_state_as_of_the_slice() -> None:
    from types import SimpleNamespace

    from fraudkit.config import FraudkitConfig
    from fraudkit.state.store import StateExtension

    extension = StateExtension(FraudkitConfig())
    holder = SimpleNamespace(features=OnlineFeatures(SPEC), spec=SPEC, max_cards=None)
    extension.context = SimpleNamespace(holder=holder)  # type: ignore[assignment]
    extension._install(extension.context)  # type: ignore[arg-type]
    features = holder.features
    # 80 cards, one row each; then a second batch changes one card marked but not yet written,
    # and one already written.
    first = [
        Transaction(f"tx-{i:03d}", START_MS + i, f"card-{i:02d}", 10.0 + i, terminal_id="t", country="DE")
        for i in range(80)
    ]
    features.transform(first, np.float64)
    producer = RecordingProducer()
    extension.on_batch_produce(producer, first, [Source(i) for i in range(80)], print)  # type: ignore[arg-type]

    extension.begin_seal()
    assert extension.seal_step(producer, print, 0.0) is False  # type: ignore[arg-type]
    written_first = {key for _, key, _, _ in producer.produced}
    assert 0 < len(written_first) < 80
    unwritten = next(
        f"card-{i:02d}".encode() for i in range(80) if f"card-{i:02d}".encode() not in written_first
    )
    already = next(iter(written_first))
    second = [
        Transaction("tx-late-1", START_MS + 100, unwritten.decode(), 99.0, terminal_id="t", country="DE"),
        Transaction("tx-late-2", START_MS + 101, already.decode(), 98.0, terminal_id="t", country="DE"),
    ]
    features.transform(second, np.float64)
    extension.on_batch_produce(producer, second, [Source(100), Source(101)], print)  # type: ignore[arg-type]
    while not extension.seal_step(producer, print, 0.0):  # type: ignore[arg-type]
        pass

    keys = [key for _, key, _, _ in producer.produced]
    assert sorted(keys) == sorted(f"card-{i:02d}".encode() for i in range(80))  # each card once
    records = {key: decode_card(value, WINDOWS) for _, key, value, _ in producer.produced}
    # The card changed after the seal began was written with that row applied, as of the slice.
    late = records[unwritten]
    assert (late.source_offset, late.applied) == (100, (START_MS + 100, "tx-late-1"))
    assert late.state == features.export_card(unwritten.decode())
    # The one written before its change is still to write: the next seal takes it, alone.
    producer.produced.clear()
    extension.begin_seal()
    assert extension.seal_step(producer, print, float("inf")) is True  # type: ignore[arg-type]
    assert [(key, decode_card(value, WINDOWS).source_offset) for _, key, value, _ in producer.produced] == [
        (already, 101)
    ]
