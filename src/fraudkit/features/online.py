"""The online implementation of the feature specification: per-card and per-terminal state, one row at a time."""

from __future__ import annotations

import functools
import operator
import sys
import time
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from fraudkit.features.spec import (
    ANGLE_PER_MS,
    DAY_MS,
    FOREVER_MS,
    HOUR_MS,
    MAX_AMOUNT_RATIO,
    MAX_SPEED_KMH,
    MIN_MEAN_FOR_RATIO,
    MIN_TRAVEL_MS,
    NEVER_MS,
    FeatureSpec,
    days_label,
    haversine_km_array,
    hours_label,
)
from fraudkit.schema import Label, Transaction

if TYPE_CHECKING:
    pass

# An expiry sweep checks its time budget after this many cards (or terminals).
SWEEP_SLICE = 64


class _CardState:
    """One card's recent transactions (oldest first) and last sighting.

    Each window k adds two slots in a per-window-count subclass (`_card_state_class`): ``head_k``,
    the index of the first row inside the window, and ``sum_k``, the running sum of its amounts.
    Slots rather than lists keep a card's hot state in one object, fewer memory reads per row.
    """

    __slots__ = ("amounts", "countries", "last_lat", "last_lon", "last_time", "terminals", "times")

    def __init__(self) -> None:
        self.times: list[int] = []
        self.amounts: list[float] = []
        self.last_time = NEVER_MS
        self.last_lat: float | None = None
        self.last_lon: float | None = None
        self.countries: dict[str, int] = {}
        self.terminals: dict[str, int] = {}

    def forget_before(self, index: int, window_count: int) -> None:
        """Drop rows before index (outside every window); heads move with the rows."""
        del self.times[:index]
        del self.amounts[:index]
        for k in range(window_count):
            setattr(self, f"head_{k}", getattr(self, f"head_{k}") - index)


@functools.cache
def _card_state_class(window_count: int) -> type[_CardState]:
    slots = tuple(f"{kind}_{k}" for k in range(window_count) for kind in ("head", "sum"))

    def __init__(self: _CardState) -> None:
        _CardState.__init__(self)
        for k in range(window_count):
            setattr(self, f"head_{k}", 0)
            setattr(self, f"sum_{k}", 0.0)

    return type(f"_CardState{window_count}", (_CardState,), {"__slots__": slots, "__init__": __init__})


class _TerminalLabels:
    """A terminal's labelled transactions sorted by event time, with cursors left by the last query.

    ``upper`` is the last query's ``t - label_delay``; ``end`` counts the labels before it and, per
    window k (slots of a subclass, `_terminal_labels_class`), ``start_k`` those before
    ``upper - window_k``; ``frauds_before_end`` and ``frauds_before_start_k`` count frauds in the
    same prefixes. A window's count and frauds are differences, so each cursor moves on its own, a
    step at a time as event time advances (or steps back), instead of a binary search per query.
    The list ends with a sentinel later than any event, so forward walks need no bounds check.
    """

    __slots__ = ("end", "fraud_flags", "frauds_before_end", "times", "upper")

    def __init__(self) -> None:
        self.times: list[int] = [FOREVER_MS]
        self.fraud_flags: list[int] = [0]
        self.upper = NEVER_MS
        self.end = 0
        self.frauds_before_end = 0

    def __len__(self) -> int:
        return len(self.times) - 1

    def shift_start(self, k: int, by: int, frauds: int) -> None:
        """Move window k's cursor by `by` labels holding `frauds` frauds (the rare, slow path)."""
        setattr(self, f"start_{k}", getattr(self, f"start_{k}") + by)
        setattr(self, f"frauds_before_start_{k}", getattr(self, f"frauds_before_start_{k}") + frauds)

    def drop_before(self, floor: int, window_count: int) -> int:
        """Forget labels older than floor; returns how many went."""
        cut = bisect_left(self.times, floor, 0, len(self.times) - 1)
        if not cut:
            return 0
        frauds_cut = sum(self.fraud_flags[:cut])
        del self.times[:cut]
        del self.fraud_flags[:cut]
        # A cursor past the cut keeps its place relative to the rest; one inside it now counts nothing.
        if self.end >= cut:
            self.end -= cut
            self.frauds_before_end -= frauds_cut
        else:
            self.end = self.frauds_before_end = 0
        for k in range(window_count):
            start = getattr(self, f"start_{k}")
            if start >= cut:
                self.shift_start(k, -cut, -frauds_cut)
            else:
                self.shift_start(k, -start, -getattr(self, f"frauds_before_start_{k}"))
        return cut


@functools.cache
def _terminal_labels_class(window_count: int) -> type[_TerminalLabels]:
    slots = tuple(f"{kind}_{k}" for k in range(window_count) for kind in ("start", "frauds_before_start"))

    def __init__(self: _TerminalLabels) -> None:
        _TerminalLabels.__init__(self)
        for k in range(window_count):
            setattr(self, f"start_{k}", 0)
            setattr(self, f"frauds_before_start_{k}", 0)

    return type(
        f"_TerminalLabels{window_count}", (_TerminalLabels,), {"__slots__": slots, "__init__": __init__}
    )


# ---------------------------------------------------------------------------------------------
# The online hot loop is generated per spec: windows become constants and their loops are
# unrolled, features the spec lacks vanish, and each row ends in one tuple of integers and one of
# floats (homogeneous lists convert to numpy twice as fast as mixed ones). That makes it about a
# fifth faster than the same loop written generically. `walk_source(spec)` shows the code.


def _card_block(spec: FeatureSpec) -> tuple[list[str], list[str], list[str]]:
    """Code for the card state of one row, and the integer and float values it leaves."""
    lines = [
        "card_id = tx.card_id",
        "card = cards.get(card_id)",
        "if card is None:",
        "    card = cards[card_id] = CardState()",
        "times = card.times",
        "amounts = card.amounts",
        "times.append(t)",
        "amounts.append(amount)",
        "size = len(times)",
    ]
    ints: list[str] = []
    floats: list[str] = []
    for k, window in enumerate(spec.card_windows_ms):
        lines += [
            f"# window {hours_label(window)}: rows with event time > t - {window}, this row included",
            f"head = card.head_{k}",
            f"if times[head] <= t - {window}:",
            f"    cutoff = t - {window}",
            f"    total = card.sum_{k}",
            "    while times[head] <= cutoff:  # the current row is inside, so this stops",
            "        total -= amounts[head]",
            "        head += 1",
            f"    card.head_{k} = head",
            "    # only this row left: restart the sum exactly, shedding rounding drift",
            f"    sum_{k} = amount if head == size - 1 else total + amount",
            "else:",
            f"    sum_{k} = card.sum_{k} + amount",
            f"card.sum_{k} = sum_{k}",
            f"count_{k} = size - head",
        ]
        ints.append(f"count_{k}")
        floats.append(f"sum_{k}")
    lines += [
        "# rows outside the longest window are garbage: drop them once they are half the list",
        "if head >= 32 and head + head >= size:",
        f"    card.forget_before(head, {len(spec.card_windows_ms)})",
        "elapsed = t - card.last_time",
        "card.last_time = t",
    ]
    ints.append("elapsed")
    if spec.use_location:
        lines += [
            "lat = tx.lat",
            "lon = tx.lon",
            "last_lat = card.last_lat",
            "last_lon = card.last_lon",
            "card.last_lat = lat",
            "card.last_lon = lon",
        ]
        floats += ["lat", "lon", "last_lat", "last_lon"]
    for used, attribute, state in (
        (spec.use_country, "country", "countries"),
        (spec.use_terminal, "terminal_id", "terminals"),
    ):
        if used:
            lines += [
                f"key = tx.{attribute}",
                "if key is None:",
                f"    {state}_seen = t  # nothing to compare: never new",
                "else:",
                f"    seen = card.{state}",
                f"    {state}_seen = seen.get(key, NEVER)",
                "    seen[key] = t",
            ]
            ints.append(f"{state}_seen")
    return lines, ints, floats


def _terminal_block(spec: FeatureSpec) -> tuple[list[str], list[str]]:
    """Code for the terminal windows of one row, and the integer values it leaves."""
    windows = spec.terminal_windows_ms
    lines = [
        "labels = terminals.get(tx.terminal_id)",
        "if labels is None:",
        "    " + " = ".join([f"labels_{k} = frauds_{k}" for k in range(len(windows))]) + " = 0",
        "else:",
        f"    upper = t - {spec.label_delay_ms}",
        "    end = labels.end",
        "    frauds_end = labels.frauds_before_end",
        "    if upper != labels.upper:",
        "        label_times = labels.times",
        "        flags = labels.fraud_flags",
        "        if upper > labels.upper:",
        "            while label_times[end] < upper:  # the sentinel stops this",
        "                frauds_end += flags[end]",
        "                end += 1",
    ]
    for k, window in enumerate(windows):
        lines += [
            f"            # window {days_label(window)}: labels in [upper - {window}, upper)",
            f"            start = labels.start_{k}",
            f"            if label_times[start] < upper - {window}:",
            f"                lower = upper - {window}",
            f"                frauds = labels.frauds_before_start_{k}",
            "                while label_times[start] < lower:  # label_times[end] >= upper stops this",
            "                    frauds += flags[start]",
            "                    start += 1",
            f"                labels.start_{k} = start",
            f"                labels.frauds_before_start_{k} = frauds",
        ]
    lines += [
        "        else:  # event time stepped back (rows of other partitions): walk back",
        "            while end and label_times[end - 1] >= upper:",
        "                end -= 1",
        "                frauds_end -= flags[end]",
    ]
    for k, window in enumerate(windows):
        lines += [
            f"            start = labels.start_{k}",
            f"            if start and label_times[start - 1] >= upper - {window}:",
            f"                lower = upper - {window}",
            f"                frauds = labels.frauds_before_start_{k}",
            "                while start and label_times[start - 1] >= lower:",
            "                    start -= 1",
            "                    frauds -= flags[start]",
            f"                labels.start_{k} = start",
            f"                labels.frauds_before_start_{k} = frauds",
        ]
    lines += [
        "        labels.upper = upper",
        "        labels.end = end",
        "        labels.frauds_before_end = frauds_end",
    ]
    ints: list[str] = []
    for k in range(len(windows)):
        lines += [
            f"    labels_{k} = end - labels.start_{k}",
            f"    frauds_{k} = frauds_end - labels.frauds_before_start_{k}",
        ]
        ints += [f"labels_{k}", f"frauds_{k}"]
    return lines, ints


def _walk_layout(spec: FeatureSpec) -> tuple[list[str], list[str], list[str]]:
    """The loop body's code and the names of the integer and float values each row leaves."""
    body = ["t = tx.event_time_ms", "amount = tx.amount"]
    ints = ["t"]
    floats = ["amount"]
    if spec.use_card:
        lines, card_ints, card_floats = _card_block(spec)
        body += lines
        ints += card_ints
        floats += card_floats
    if spec.use_terminal:
        lines, terminal_ints = _terminal_block(spec)
        body += lines
        ints += terminal_ints
    body.append(f"ints += ({', '.join(ints)},)")
    body.append(f"floats += ({', '.join(floats)},)")
    if spec.passthrough:
        body.append("floats += map(tx.extra.get, PASSTHROUGH)  # None when absent: NaN, then 0")
        floats += list(spec.passthrough)
    return body, ints, floats


def walk_source(spec: FeatureSpec) -> str:
    """The generated stateful loop for a spec (for reading and debugging)."""
    body, _, _ = _walk_layout(spec)
    return "\n".join(
        [
            "def walk(cards, terminals, transactions):",
            "    ints = []",
            "    floats = []",
            "    for tx in transactions:",
            *["        " + line for line in body],
            "    return ints, floats",
        ]
    )


def _compile_walk(spec: FeatureSpec) -> Callable[..., tuple[list[int], list[Any]]]:
    namespace: dict[str, Any] = {
        "CardState": _card_state_class(len(spec.card_windows_ms)),
        "NEVER": NEVER_MS,
        "PASSTHROUGH": tuple(spec.passthrough),
    }
    exec(compile(walk_source(spec), "<fraudkit.features walk>", "exec"), namespace)
    walk: Callable[..., tuple[list[int], list[Any]]] = namespace["walk"]
    return walk


class OnlineFeatures:
    """Incremental per-card and per-terminal state computing the spec's features row by row."""

    def __init__(self, spec: FeatureSpec, max_cards: int | None = None) -> None:
        self.spec = spec
        self.max_cards = max_cards
        self.width = len(spec.names)
        self._history_ms = spec.history_ms
        self._terminal_horizon_ms = spec.label_delay_ms + max(spec.terminal_windows_ms)
        self._walk = _compile_walk(spec)
        _, int_names, float_names = _walk_layout(spec)
        self._int_columns = {name: i for i, name in enumerate(int_names)}
        self._float_columns = {name: i for i, name in enumerate(float_names)}
        self._cards: dict[str | None, _CardState] = {}
        self._terminals: dict[str, _TerminalLabels] = {}
        self._keeps_labels = spec.use_terminal
        self._new_terminal = _terminal_labels_class(len(spec.terminal_windows_ms))
        self._label_floor = NEVER_MS
        self._labels_kept = 0
        self.labels_ignored = 0
        self._sweep: Iterator[None] | None = None  # an expiry sweep under way (expire_step)
        # Every window's head and sum of a card at once (export_card runs per changed card).
        windows = range(len(spec.card_windows_ms))
        self._heads = operator.attrgetter(*(f"head_{k}" for k in windows), "last_time")
        self._sums = operator.attrgetter(*(f"sum_{k}" for k in windows), "last_time")

    def transform(self, transactions: Sequence[Transaction], dtype: Any = np.float32) -> np.ndarray:
        """Features of each transaction (state before it, plus itself), updating state in the given order."""
        ints, floats = self._walk(self._cards, self._terminals, transactions)
        rows = len(transactions)
        # None (a missing location or pass-through value) becomes NaN here.
        int_matrix = np.array(ints, dtype=np.int64).reshape(rows, len(self._int_columns))
        float_matrix = np.array(floats, dtype=np.float64).reshape(rows, len(self._float_columns))
        return self._finish(int_matrix, float_matrix, dtype)

    def _finish(self, ints: np.ndarray, floats: np.ndarray, dtype: Any) -> np.ndarray:
        """The features from the raw per-row values, as whole columns (plain arithmetic, vectorised)."""
        spec = self.spec

        def integer(name: str) -> np.ndarray:
            return ints[:, self._int_columns[name]]

        def real(name: str) -> np.ndarray:
            return floats[:, self._float_columns[name]]

        out = np.empty((ints.shape[0], self.width), dtype=np.float64)
        times = integer("t")
        amount = real("amount")
        columns = [amount, np.log1p(amount)]
        with np.errstate(divide="ignore", invalid="ignore"):
            if spec.use_card:
                history = self._history_ms
                for k, window in enumerate(spec.card_windows_ms):
                    count = integer(f"count_{k}").astype(np.float64)
                    columns += [count, real(f"sum_{k}") / count]
                    if window == spec.relative_window_ms:
                        previous_count = count - 1.0
                        previous_mean = (real(f"sum_{k}") - amount) / previous_count
                        usable = (previous_count > 0) & (previous_mean >= MIN_MEAN_FOR_RATIO)
                        ratio = np.where(usable, np.minimum(amount / previous_mean, MAX_AMOUNT_RATIO), 1.0)
                elapsed = integer("elapsed")
                has_previous = elapsed < history
                seconds = np.where(has_previous, elapsed, history) / 1000.0
                columns += [ratio, np.log1p(seconds)]
                if spec.use_location:
                    lat, lon, last_lat, last_lon = (real(n) for n in ("lat", "lon", "last_lat", "last_lon"))
                    located = has_previous & ~np.isnan(lat + lon + last_lat + last_lon)
                    distance = haversine_km_array(last_lat, last_lon, lat, lon)
                    speed = np.minimum(
                        distance / (np.maximum(elapsed, MIN_TRAVEL_MS) / HOUR_MS), MAX_SPEED_KMH
                    )
                    columns += [np.where(located, distance, 0.0), np.where(located, speed, 0.0)]
                horizon = times - history
                if spec.use_country:
                    columns.append(integer("countries_seen") <= horizon)
                if spec.use_terminal:
                    columns.append(integer("terminals_seen") <= horizon)
            if spec.use_terminal:
                for k in range(len(spec.terminal_windows_ms)):
                    count = integer(f"labels_{k}").astype(np.float64)
                    columns += [count, np.where(count > 0, integer(f"frauds_{k}") / count, 0.0)]
        angle = (times % DAY_MS) * ANGLE_PER_MS
        # 1970-01-01 was a Thursday: (day + 3) % 7 is 0 on Mondays, 5 and 6 at the weekend.
        columns += [np.sin(angle), np.cos(angle), (times // DAY_MS + 3) % 7 >= 5]
        for name in spec.passthrough:
            value = real(name)
            columns.append(np.where(np.isnan(value), 0.0, value))
        for index, column in enumerate(columns):
            out[:, index] = column
        return out.astype(dtype, copy=False)

    def observe_label(self, label: Label) -> None:
        """Record a transaction's truth for its terminal's fraud rates (any arrival order)."""
        terminal_id = label.terminal_id
        event_time = label.event_time_ms
        if terminal_id is None or event_time < self._label_floor or not self._keeps_labels:
            self.labels_ignored += 1
            return
        state = self._terminals.get(terminal_id)
        if state is None:
            state = self._terminals[terminal_id] = self._new_terminal()
        fraud = 1 if label.label else 0
        times = state.times
        index = bisect_right(times, event_time)
        times.insert(index, event_time)
        state.fraud_flags.insert(index, fraud)
        self._labels_kept += 1
        # Keep the cursors' prefix counts true: a label before the last query's bounds moves them.
        upper = state.upper
        if event_time < upper:
            state.end += 1
            state.frauds_before_end += fraud
            windows = self.spec.terminal_windows_ms
            if event_time < upper - windows[0]:
                for k, window in enumerate(windows):
                    if event_time < upper - window:
                        state.shift_start(k, 1, fraud)

    def observe_labels(self, labels: Iterable[Label]) -> None:
        """observe_label for each label."""
        observe = self.observe_label
        for label in labels:
            observe(label)

    def expire(self, now_ms: int) -> None:
        """Drop state no feature at event time >= now_ms can use (older than the windows), then cap cards."""
        self._sweep = None
        for _ in self._expiry_sweep(now_ms):
            pass

    def expire_step(self, now_ms: int, budget_s: float) -> bool:
        """Go on with an expiry sweep (starting one at now_ms if none runs) for about budget_s seconds.

        The same work as `expire`, cut into slices between batches, so a large state never stalls
        the stream for the whole sweep at once. Returns True when the sweep has finished. Expiry
        only frees memory: features are the same whether stale state is dropped now or later.
        """
        if self._sweep is None:
            self._sweep = self._expiry_sweep(now_ms)
        deadline = time.perf_counter() + budget_s
        for _ in self._sweep:
            if time.perf_counter() >= deadline:
                return False
        self._sweep = None
        return True

    def _expiry_sweep(self, now_ms: int) -> Iterator[None]:
        """`expire` as a generator: it yields every SWEEP_SLICE cards or terminals, to be resumed later."""
        card_cutoff = now_ms - self._history_ms
        window_count = len(self.spec.card_windows_ms)
        oldest_head = f"head_{window_count - 1}"  # the longest window's
        cards = self._cards
        # A snapshot of the keys: the stream adds cards between slices; the next sweep sees them.
        for done, card_id in enumerate(list(cards), 1):
            card = cards.get(card_id)
            if card is None:
                continue
            if card.last_time <= card_cutoff:
                del cards[card_id]
            else:
                oldest = getattr(card, oldest_head)
                if oldest:
                    card.forget_before(oldest, window_count)
                for seen in (card.countries, card.terminals):
                    if seen:
                        for key in [key for key, last in seen.items() if last <= card_cutoff]:
                            del seen[key]
            if not done % SWEEP_SLICE:
                yield
        label_floor = now_ms - self._terminal_horizon_ms
        self._label_floor = max(self._label_floor, label_floor)
        terminals = self._terminals
        terminal_windows = len(self.spec.terminal_windows_ms)
        for done, terminal_id in enumerate(list(terminals), 1):
            labels = terminals.get(terminal_id)
            if labels is not None:
                self._labels_kept -= labels.drop_before(label_floor, terminal_windows)
                if not len(labels):
                    del terminals[terminal_id]
            if not done % SWEEP_SLICE:
                yield
        if self.max_cards is not None and len(cards) > self.max_cards:
            self._evict_least_recent(len(cards) - self.max_cards)

    def _evict_least_recent(self, how_many: int) -> None:
        # A memory safety valve, not part of the feature definition: evicted cards restart from scratch.
        by_recency = sorted(self._cards.items(), key=lambda item: item[1].last_time)
        for card_id, _ in by_recency[:how_many]:
            del self._cards[card_id]

    # -- state export and import (durable state: fraudkit.state) --------------------------------
    # Plain lists and dicts, so a codec can serialise them without knowing the slot layout. A card's
    # export keeps only the rows inside its longest window and every running sum bit for bit, so an
    # imported card computes exactly the features the exported one would have.

    def card_ids(self) -> list[str | None]:
        """The cards with state."""
        return list(self._cards)

    def export_card(self, card_id: str | None) -> list[Any] | None:
        """[last_time, last_lat, last_lon, times, amounts, heads, sums, countries, terminals], or None."""
        card = self._cards.get(card_id)
        if card is None:
            return None
        heads = self._heads(card)[:-1]  # (the getters end with last_time: never a 1-tuple edge case)
        # Rows before every window's head (the longest window's, in time order) are garbage.
        base = min(heads)
        return [
            card.last_time,
            card.last_lat,
            card.last_lon,
            card.times[base:],
            card.amounts[base:],
            [head - base for head in heads],
            list(self._sums(card)[:-1]),
            dict(card.countries),
            dict(card.terminals),
        ]

    def import_card(self, card_id: str | None, state: Sequence[Any]) -> None:
        """Install a card exported by `export_card` (replacing any state of that card)."""
        last_time, last_lat, last_lon, times, amounts, heads, sums, countries, terminals = state
        window_count = len(self.spec.card_windows_ms)
        if len(heads) != window_count or len(sums) != window_count or len(times) != len(amounts):
            raise ValueError("card state does not fit this feature spec")
        card = _card_state_class(window_count)()
        card.times = list(times)
        card.amounts = list(amounts)
        card.last_time = last_time
        card.last_lat = last_lat
        card.last_lon = last_lon
        card.countries = dict(countries)
        card.terminals = dict(terminals)
        for k in range(window_count):
            setattr(card, f"head_{k}", heads[k])
            setattr(card, f"sum_{k}", sums[k])
        self._cards[card_id] = card

    def drop_cards(self, card_ids: Iterable[str | None]) -> int:
        """Forget these cards (a partition moved away); returns how many had state."""
        cards = self._cards
        dropped = 0
        for card_id in card_ids:
            if cards.pop(card_id, None) is not None:
                dropped += 1
        return dropped

    def scratch_copy(self, card_ids: Iterable[str | None]) -> OnlineFeatures:
        """Features sharing this one's terminal labels, with copies of these cards only.

        Transforming with it leaves this object's cards untouched (terminal cursors are caches that
        move either way): a row already folded into the state can be scored again without counting twice.
        """
        scratch = OnlineFeatures(self.spec)
        scratch._terminals = self._terminals
        scratch._label_floor = self._label_floor
        for card_id in card_ids:
            state = self.export_card(card_id)
            if state is not None:
                scratch.import_card(card_id, state)
        return scratch

    def export_terminal_labels(self) -> Iterable[tuple[str, list[int], list[int]]]:
        """(terminal_id, event times, fraud flags) of every kept label, per terminal."""
        for terminal_id, labels in self._terminals.items():
            yield terminal_id, labels.times[:-1], labels.fraud_flags[:-1]

    def state_counts(self) -> dict[str, int]:
        """Sizes of the state, for status panels (cheap: no scan)."""
        return {
            "cards": len(self._cards),
            "terminals": len(self._terminals),
            "terminal_labels": self._labels_kept,
            "labels_ignored": self.labels_ignored,
        }

    def memory_bytes(self, sample: int = 1000) -> int:
        """Estimated bytes held by the state (measures up to `sample` cards and terminals, scales up)."""
        return _estimate(self._cards, sample, _card_bytes) + _estimate(
            self._terminals, sample, _terminal_bytes
        )


def _estimate(states: dict[Any, Any], sample: int, measure: Any) -> int:
    if not states:
        return sys.getsizeof(states)
    measured = 0
    for count, state in enumerate(states.values(), start=1):
        measured += measure(state)
        if count >= sample:
            break
    return sys.getsizeof(states) + measured * len(states) // count


def _card_bytes(card: _CardState) -> int:
    size = sys.getsizeof
    total = size(card) + size(card.times) + size(card.amounts)
    total += 32 * len(card.times) + 24 * len(card.amounts)
    for seen in (card.countries, card.terminals):
        total += size(seen) + sum(size(key) + 32 for key in seen)
    return total


def _terminal_bytes(labels: _TerminalLabels) -> int:
    size = sys.getsizeof
    return size(labels) + size(labels.times) + size(labels.fraud_flags) + 32 * len(labels)
