"""`fraudkit tail`: topics as live rich tables (or JSON lines), read without committing anything.

Imports stay light (no torch, pyspark, pandas, numpy) so the command starts instantly.
"""

from __future__ import annotations

import difflib
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, TextIO

import orjson
from rich.console import Console, ConsoleOptions, Group, RenderableType, RenderResult
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from fraudkit.config import FraudkitConfig
from fraudkit.errors import BrokerError
from fraudkit.numfmt import ratio_text
from fraudkit.stream import kafka
from fraudkit.stream.bounds import RunBounds, StopReason
from fraudkit.textsafe import printable
from fraudkit.timefmt import SHORT, utc_text

PREVIEW_CHARS = 80
RATE_WINDOW_S = 5.0
# Verdicts and labels waiting for their partner in the live precision/recall join.
MAX_PENDING = 200_000
FRAUD_STYLE = "bold red"
WARNING_STYLE = "yellow"


class Kind(StrEnum):
    """What a message is, which decides its table and columns."""

    TRANSACTION = "transactions"
    VERDICT = "verdicts"
    LABEL = "labels"
    FRAUD_BRANCH = "transactions.fraud"
    LEGIT_BRANCH = "transactions.legit"
    DEAD_LETTER = "dead-letter"
    CONTROL = "control"
    JSON = "json"
    RAW = "raw"


TOPIC_ALIASES = {
    "transactions": "transactions",
    "legit": "legit",
    "fraud": "fraud",
    "verdicts": "verdicts",
    "labels": "labels",
    "dead-letter": "dead_letter",
    "dead_letter": "dead_letter",
    "control": "control",
}
_CONFIG_KINDS = {
    "transactions": Kind.TRANSACTION,
    "legit": Kind.LEGIT_BRANCH,
    "fraud": Kind.FRAUD_BRANCH,
    "verdicts": Kind.VERDICT,
    "labels": Kind.LABEL,
    "dead_letter": Kind.DEAD_LETTER,
    "control": Kind.CONTROL,
}


@dataclass
class TailOptions:
    """What to read and which messages to show."""

    topics: list[str]
    from_beginning: bool = False
    limit: int | None = None
    fraud_only: bool = False
    card: str | None = None
    min_score: float | None = None
    follow: bool = True
    stats: bool = False
    rows: int | None = None


def safe_text(value: str, limit: int | None = PREVIEW_CHARS) -> str:
    """Control and format characters escaped (no terminal escapes get through), truncated with '…'."""
    return printable(value, limit)


def safe_preview(raw: bytes | None, limit: int | None = PREVIEW_CHARS) -> str:
    """A printable preview of arbitrary bytes: UTF-8 where valid, escapes elsewhere."""
    if raw is None:
        return "(null)"
    return safe_text(raw.decode("utf-8", errors="backslashreplace"), limit)


def _kind_from_name(topic: str) -> Kind | None:
    lowered = topic.lower()
    if lowered.endswith(("dead-letter", "dead_letter", "deadletter", ".dlq", "-dlq")):
        return Kind.DEAD_LETTER
    if lowered.endswith(".fraud"):
        return Kind.FRAUD_BRANCH
    if lowered.endswith(".legit"):
        return Kind.LEGIT_BRANCH
    for word, kind in (
        ("verdict", Kind.VERDICT),
        ("label", Kind.LABEL),
        ("control", Kind.CONTROL),
        ("transaction", Kind.TRANSACTION),
    ):
        if word in lowered:
            return kind
    return None


def topic_kind(topic: str, config: FraudkitConfig) -> Kind | None:
    """The kind of a topic from the configured names, else from its name; None if unknown."""
    for key, kind in _CONFIG_KINDS.items():
        if getattr(config.topics, key) == topic:
            return kind
    return _kind_from_name(topic)


def sniff_kind(data: Any, key: str | None) -> Kind:
    """The kind of a decoded JSON message from its fields (for topics of unknown kind)."""
    if not isinstance(data, dict):
        return Kind.JSON
    if "decision" in data and "score" in data:
        return Kind.VERDICT
    if "label" in data and "transaction_id" in data and "amount" not in data:
        return Kind.LABEL
    if key == "model" or str(data.get("type", "")).startswith(("model_", "retrain_")):
        return Kind.CONTROL
    if "transaction_id" in data and "amount" in data:
        return Kind.TRANSACTION
    return Kind.JSON


@dataclass(slots=True)
class TailMessage:
    """One message as tail sees it."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int | None
    key: str | None
    headers: dict[str, str]
    kind: Kind
    data: Any
    raw: bytes | None

    @property
    def fields(self) -> dict[str, Any]:
        """The decoded JSON object, or {} for anything else."""
        return self.data if isinstance(self.data, dict) else {}

    @property
    def card_id(self) -> str | None:
        """The card of the message (field, else key of card-keyed topics)."""
        value = self.fields.get("card_id")
        if value is not None:
            return str(value)
        if self.kind in (Kind.TRANSACTION, Kind.FRAUD_BRANCH, Kind.LEGIT_BRANCH, Kind.VERDICT, Kind.LABEL):
            return self.key
        return None

    @property
    def transaction_id(self) -> str | None:
        """The transaction the message is about, if any."""
        value = self.fields.get("transaction_id")
        return None if value is None else str(value)

    @property
    def score(self) -> float | None:
        """The fraud score: a verdict's field or a branch message's header."""
        value: Any = self.fields.get("score") if self.kind == Kind.VERDICT else self.headers.get("score")
        if isinstance(value, bool):
            return None
        try:
            return None if value is None else float(value)
        except (TypeError, ValueError):
            return None

    @property
    def is_fraud(self) -> bool:
        """Fraud verdicts, fraud-branch transactions and fraud labels."""
        if self.kind == Kind.VERDICT:
            return self.fields.get("decision") == "fraud"
        if self.kind == Kind.FRAUD_BRANCH:
            return True
        if self.kind == Kind.LABEL:
            return self.fields.get("label") == 1
        return False

    def to_json(self) -> dict[str, Any]:
        """The --json line: coordinates, key, headers and the decoded value (or a text preview)."""
        line: dict[str, Any] = {
            "topic": self.topic,
            "partition": self.partition,
            "offset": self.offset,
            "timestamp_ms": self.timestamp_ms,
            "key": self.key,
            "kind": self.kind.value,
        }
        if self.headers:
            line["headers"] = self.headers
        if self.data is not None or self.raw is None:
            line["value"] = self.data
        else:
            line["value"] = None
            line["raw"] = self.raw.decode("utf-8", errors="backslashreplace")
        return line


def _decode_text(value: bytes | str | None) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        return value
    return value.decode("utf-8", errors="backslashreplace")


def to_tail_message(message: Any, kind_of_topic: Kind | None) -> TailMessage:
    """Decode a confluent_kafka Message into a TailMessage with its kind."""
    raw = message.value()
    key = _decode_text(message.key())
    headers = {name: _decode_text(value) or "" for name, value in (message.headers() or [])}
    data: Any = None
    if raw is not None:
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError:
            data = None
    if kind_of_topic == Kind.DEAD_LETTER:
        kind = Kind.DEAD_LETTER
    elif not isinstance(data, dict):
        kind = Kind.JSON if data is not None else Kind.RAW
    elif kind_of_topic is None:
        kind = sniff_kind(data, key)
    else:
        kind = kind_of_topic
    timestamp_type, timestamp = message.timestamp()
    return TailMessage(
        topic=message.topic(),
        partition=message.partition(),
        offset=message.offset(),
        timestamp_ms=timestamp if timestamp_type else None,
        key=key,
        headers=headers,
        kind=kind,
        data=data,
        raw=raw,
    )


def matches(message: TailMessage, options: TailOptions) -> bool:
    """True if the message passes --fraud-only, --card and --min-score."""
    if options.fraud_only and not message.is_fraud:
        return False
    if options.card is not None and message.card_id != options.card:
        return False
    if options.min_score is not None:
        score = message.score
        if score is None or score < options.min_score:
            return False
    return True


# -- statistics ----------------------------------------------------------------------------------


@dataclass
class TopicCounter:
    """Messages seen and shown on one topic, with a recent rate."""

    topic: str
    kind: Kind | None
    partitions: int
    seen: int = 0
    shown: int = 0
    recent: deque[tuple[float, int]] = field(default_factory=deque)

    def add(self, now: float, count: int) -> None:
        """Record `count` messages seen at monotonic time `now`."""
        self.seen += count
        self.recent.append((now, count))
        while self.recent and now - self.recent[0][0] > RATE_WINDOW_S:
            self.recent.popleft()

    def rate(self, now: float) -> float:
        """Messages per second over the last few seconds."""
        while self.recent and now - self.recent[0][0] > RATE_WINDOW_S:
            self.recent.popleft()
        if not self.recent:
            return 0.0
        return sum(count for _, count in self.recent) / RATE_WINDOW_S


@dataclass
class TailStats:
    """Fraud rates and the live verdict/label join (every message seen, before filters)."""

    verdicts: int = 0
    fraud_verdicts: int = 0
    branch_fraud: int = 0
    branch_legit: int = 0
    labels: int = 0
    fraud_labels: int = 0
    tp: int = 0
    fp: int = 0
    fn: int = 0
    tn: int = 0
    decisions: OrderedDict[str, bool] = field(default_factory=OrderedDict)
    truths: OrderedDict[str, bool] = field(default_factory=OrderedDict)

    def observe(self, message: TailMessage) -> None:
        """Count one message and join decisions with labels by transaction_id."""
        transaction_id = message.transaction_id
        if message.kind == Kind.VERDICT:
            self.verdicts += 1
            self.fraud_verdicts += message.is_fraud
            decided = message.is_fraud
        elif message.kind in (Kind.FRAUD_BRANCH, Kind.LEGIT_BRANCH):
            if message.kind == Kind.FRAUD_BRANCH:
                self.branch_fraud += 1
            else:
                self.branch_legit += 1
            decided = message.kind == Kind.FRAUD_BRANCH
        elif message.kind == Kind.LABEL:
            self.labels += 1
            self.fraud_labels += message.is_fraud
            if transaction_id is not None:
                self._join(transaction_id, truth=message.is_fraud)
            return
        else:
            return
        if transaction_id is not None:
            self._join(transaction_id, decision=decided)

    def _join(self, transaction_id: str, decision: bool | None = None, truth: bool | None = None) -> None:
        if decision is not None:
            if transaction_id in self.truths:
                self._count(decision, self.truths.pop(transaction_id))
            else:
                _remember(self.decisions, transaction_id, decision)
        elif truth is not None:
            if transaction_id in self.decisions:
                self._count(self.decisions.pop(transaction_id), truth)
            else:
                _remember(self.truths, transaction_id, truth)

    def _count(self, decision: bool, truth: bool) -> None:
        if decision and truth:
            self.tp += 1
        elif decision:
            self.fp += 1
        elif truth:
            self.fn += 1
        else:
            self.tn += 1

    @property
    def fraud_rate(self) -> float | None:
        """Share of decisions (verdicts, else branch messages) that said fraud."""
        if self.verdicts:
            return self.fraud_verdicts / self.verdicts
        branch = self.branch_fraud + self.branch_legit
        return self.branch_fraud / branch if branch else None

    @property
    def precision(self) -> float | None:
        """Precision of the decisions matched with a label."""
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else None

    @property
    def recall(self) -> float | None:
        """Recall of the decisions matched with a label."""
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else None


def _remember(pending: OrderedDict[str, bool], transaction_id: str, value: bool) -> None:
    pending[transaction_id] = value
    if len(pending) > MAX_PENDING:
        pending.popitem(last=False)


# -- rendering -----------------------------------------------------------------------------------


def _time(ms: Any) -> str:
    if isinstance(ms, bool) or not isinstance(ms, int | float):
        return ""
    try:
        return utc_text(ms, SHORT)
    except (OverflowError, OSError, ValueError):
        return safe_text(str(ms), 20)


def _cell(value: Any, limit: int = 24) -> Text:
    if value is None:
        return Text("")
    if isinstance(value, float):
        return Text(f"{value:,.2f}")
    if isinstance(value, dict | list):
        return Text(safe_text(orjson.dumps(value).decode(), limit))
    return Text(safe_text(str(value), limit))


def _score(value: Any) -> Text:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return Text(f"{value:.3f}")
    if isinstance(value, str):
        try:
            return Text(f"{float(value):.3f}")
        except ValueError:
            pass
    return _cell(value, 8)


def _reasons(value: Any) -> Text:
    if not isinstance(value, list):
        return _cell(value, 40)
    names = [str(item.get("feature")) if isinstance(item, dict) else str(item) for item in value]
    return Text(safe_text(", ".join(names), 40))


def _latency(data: dict[str, Any]) -> Text:
    start, end = data.get("produced_ms"), data.get("verdict_ms")
    if isinstance(start, int | float) and isinstance(end, int | float):
        return Text(f"{end - start:,.0f}")
    return Text("")


_COLUMNS: dict[Kind, list[tuple[str, Callable[[TailMessage], Text], str]]] = {
    Kind.TRANSACTION: [
        ("event time", lambda m: Text(_time(m.fields.get("event_time_ms"))), "left"),
        ("transaction", lambda m: _cell(m.fields.get("transaction_id")), "left"),
        ("card", lambda m: _cell(m.fields.get("card_id"), 16), "left"),
        ("terminal", lambda m: _cell(m.fields.get("terminal_id"), 16), "left"),
        ("amount", lambda m: _cell(m.fields.get("amount")), "right"),
        ("cur", lambda m: _cell(m.fields.get("currency"), 4), "left"),
        ("mcc", lambda m: _cell(m.fields.get("merchant_category"), 12), "left"),
        ("ctry", lambda m: _cell(m.fields.get("country"), 4), "left"),
    ],
    Kind.VERDICT: [
        ("event time", lambda m: Text(_time(m.fields.get("event_time_ms"))), "left"),
        ("transaction", lambda m: _cell(m.fields.get("transaction_id")), "left"),
        ("card", lambda m: _cell(m.fields.get("card_id"), 16), "left"),
        ("amount", lambda m: _cell(m.fields.get("amount")), "right"),
        ("ctry", lambda m: _cell(m.fields.get("country"), 4), "left"),
        ("score", lambda m: _score(m.fields.get("score")), "right"),
        ("decision", lambda m: _cell(m.fields.get("decision"), 8), "left"),
        ("model", lambda m: _cell(m.fields.get("model_version"), 8), "left"),
        ("ms", lambda m: _latency(m.fields), "right"),
        ("reasons", lambda m: _reasons(m.fields.get("reasons")), "left"),
    ],
    Kind.LABEL: [
        ("event time", lambda m: Text(_time(m.fields.get("event_time_ms"))), "left"),
        ("transaction", lambda m: _cell(m.fields.get("transaction_id")), "left"),
        ("card", lambda m: _cell(m.fields.get("card_id"), 16), "left"),
        ("label", lambda m: _cell(m.fields.get("label"), 3), "right"),
        ("scenario", lambda m: _cell(m.fields.get("fraud_scenario"), 24), "left"),
        ("labelled", lambda m: Text(_time(m.fields.get("labelled_ms"))), "left"),
    ],
    Kind.CONTROL: [
        ("at", lambda m: Text(_time(m.fields.get("at_ms"))), "left"),
        ("type", lambda m: _cell(m.fields.get("type"), 18), "left"),
        ("version", lambda m: _cell(m.fields.get("version"), 10), "left"),
        ("metrics", lambda m: _cell(m.fields.get("metrics"), 50), "left"),
        ("trainer", lambda m: _cell(m.fields.get("trainer"), 16), "left"),
    ],
    Kind.DEAD_LETTER: [
        ("offset", lambda m: Text(f"{m.partition}:{m.offset}"), "right"),
        ("key", lambda m: _cell(m.key, 16), "left"),
        ("error", lambda m: _cell(m.headers.get("error"), 50), "left"),
        (
            "source",
            lambda m: _cell(
                f"{m.headers.get('source_topic', '?')}[{m.headers.get('source_partition', '?')}]"
                f"@{m.headers.get('source_offset', '?')}",
                40,
            ),
            "left",
        ),
        ("value", lambda m: Text(safe_preview(m.raw, 50)), "left"),
    ],
    Kind.JSON: [
        ("topic", lambda m: _cell(m.topic, 24), "left"),
        ("offset", lambda m: Text(f"{m.partition}:{m.offset}"), "right"),
        ("key", lambda m: _cell(m.key, 16), "left"),
        (
            "keys",
            lambda m: Text(
                safe_text(
                    ", ".join(map(str, m.data)) if isinstance(m.data, dict) else type(m.data).__name__, 50
                )
            ),
            "left",
        ),
        ("value", lambda m: Text(safe_preview(m.raw, 50)), "left"),
    ],
    Kind.RAW: [
        ("topic", lambda m: _cell(m.topic, 24), "left"),
        ("offset", lambda m: Text(f"{m.partition}:{m.offset}"), "right"),
        ("key", lambda m: _cell(m.key, 16), "left"),
        ("bytes", lambda m: Text(str(len(m.raw or b""))), "right"),
        ("preview", lambda m: Text(safe_preview(m.raw, 60)), "left"),
    ],
}
_COLUMNS[Kind.FRAUD_BRANCH] = [
    *_COLUMNS[Kind.TRANSACTION],
    ("score", lambda m: _score(m.headers.get("score")), "right"),
    ("model", lambda m: _cell(m.headers.get("model_version"), 8), "left"),
]
_COLUMNS[Kind.LEGIT_BRANCH] = _COLUMNS[Kind.FRAUD_BRANCH]
_TITLES = {
    Kind.TRANSACTION: "Transactions",
    Kind.VERDICT: "Verdicts",
    Kind.LABEL: "Labels",
    Kind.FRAUD_BRANCH: "Fraud branch",
    Kind.LEGIT_BRANCH: "Legit branch",
    Kind.DEAD_LETTER: "Dead letters",
    Kind.CONTROL: "Control",
    Kind.JSON: "Other JSON",
    Kind.RAW: "Not JSON",
}


def _row_style(message: TailMessage) -> str | None:
    if message.is_fraud:
        return FRAUD_STYLE
    if message.kind == Kind.DEAD_LETTER:
        return WARNING_STYLE
    if message.kind == Kind.CONTROL and message.fields.get("type") != "model_published":
        return WARNING_STYLE
    return None


class TailView:
    """The live screen: header with per-topic counts and rates, one table per kind, a stats panel."""

    def __init__(self, counters: list[TopicCounter], stats: TailStats, options: TailOptions) -> None:
        self.counters = counters
        self.stats = stats
        self.options = options
        self.rows: dict[Kind, deque[TailMessage]] = {}
        self.started = time.monotonic()
        self.finished = False

    def add(self, message: TailMessage) -> None:
        """Keep a shown message for its kind's table (only the newest rows are kept)."""
        rows = self.rows.get(message.kind)
        if rows is None:
            rows = self.rows[message.kind] = deque(maxlen=500)
        rows.append(message)

    def _rows_per_table(self, height: int) -> int:
        if self.options.rows is not None:
            return self.options.rows
        tables = max(1, len(self.rows))
        fixed = 4 + len(self.counters) + (5 if self.options.stats else 0)
        return max(3, (height - fixed) // tables - 5)

    def header(self) -> Table:
        """Per-topic kind, counts and message rate."""
        now = time.monotonic()
        table = Table(box=None, pad_edge=False, show_edge=False, expand=False)
        for name, justify in (
            ("topic", "left"),
            ("kind", "left"),
            ("seen", "right"),
            ("shown", "right"),
            ("msg/s", "right"),
        ):
            table.add_column(name, justify=justify, style="bold" if name == "topic" else None)  # type: ignore[arg-type]
        for counter in self.counters:
            table.add_row(
                Text(safe_text(counter.topic, 60)),
                counter.kind.value if counter.kind else "?",
                f"{counter.seen:,}",
                f"{counter.shown:,}",
                f"{counter.rate(now):,.1f}",
            )
        return table

    def stats_panel(self) -> Panel:
        """Fraud rates and, when labels meet decisions, live precision and recall."""
        stats = self.stats
        text = Text()
        rate = stats.fraud_rate
        text.append("fraud rate ")
        text.append("-" if rate is None else f"{100 * rate:.2f}%", style=FRAUD_STYLE)
        if stats.verdicts:
            text.append(f" ({stats.fraud_verdicts:,} of {stats.verdicts:,} verdicts)")
        elif stats.branch_fraud + stats.branch_legit:
            text.append(f" ({stats.branch_fraud:,} fraud / {stats.branch_legit:,} legit branch)")
        if stats.labels:
            text.append(f"   labels {stats.labels:,} ({stats.fraud_labels:,} fraud)")
        matched = stats.tp + stats.fp + stats.fn + stats.tn
        if matched:
            text.append(
                f"\nprecision {ratio_text(stats.precision)}  recall {ratio_text(stats.recall)}  "
                f"(matched {matched:,}: TP {stats.tp:,} FP {stats.fp:,} FN {stats.fn:,} TN {stats.tn:,})"
            )
        elif stats.labels:
            text.append("\nprecision/recall: no label matched a decision yet")
        return Panel(text, title="stats", title_align="left")

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        height = options.height or console.size.height
        limit = self._rows_per_table(height)
        parts: list[RenderableType] = [self.header()]
        if self.options.stats:
            parts.append(self.stats_panel())
        for kind in Kind:
            rows = self.rows.get(kind)
            if not rows:
                continue
            shown = list(rows)[-limit:]
            table = Table(title=f"{_TITLES[kind]} (last {len(shown)})", title_justify="left", expand=False)
            columns = _COLUMNS[kind]
            for name, _, justify in columns:
                table.add_column(name, justify=justify, no_wrap=True, overflow="ellipsis")  # type: ignore[arg-type]
            for message in shown:
                table.add_row(*(render(message) for _, render, _ in columns), style=_row_style(message))
            parts.append(table)
        if not self.rows:
            parts.append(Text("waiting for messages…" if not self.finished else "no messages", style="dim"))
        yield Group(*parts)


# -- reading -------------------------------------------------------------------------------------


@dataclass
class TailSummary:
    """What a tail run read and showed."""

    seen: int = 0
    shown: int = 0
    per_topic: dict[str, int] = field(default_factory=dict)
    stopped_by: str = ""


def resolve_topics(config: FraudkitConfig, requested: Iterable[str], existing: Iterable[str]) -> list[str]:
    """Map names to topics: an existing topic by name, else a config alias (verdicts, labels, ...)."""
    existing_set = set(existing)
    resolved = []
    unknown = []
    for name in requested:
        if name in existing_set:
            resolved.append(name)
            continue
        alias = TOPIC_ALIASES.get(name)
        target = getattr(config.topics, alias) if alias else None
        if target is not None and target in existing_set:
            resolved.append(target)
        else:
            unknown.append(name if target is None or target == name else f"{name} ({target})")
    if unknown:
        # Near misses first: a cluster can hold hundreds of topics and the listing is cut at 40.
        close = [match for name in unknown for match in difflib.get_close_matches(name, existing_set, 3, 0.6)]
        names = list(dict.fromkeys([*close, *sorted(existing_set)]))
        listing = ", ".join(names[:40]) + (f", … ({len(names) - 40} more)" if len(names) > 40 else "")
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise BrokerError(
            f"unknown topic{'s' if len(unknown) > 1 else ''} {', '.join(repr(u) for u in unknown)} "
            f"on {config.kafka.bootstrap_servers}{hint}; existing topics: {listing or '(none)'}"
        )
    return list(dict.fromkeys(resolved))


class Tail:
    """Reads topics with an assign()-based reader that never commits, feeding a view or JSON lines."""

    def __init__(
        self,
        config: FraudkitConfig,
        options: TailOptions,
        stop: threading.Event | None = None,
    ) -> None:
        self.config = config
        self.options = options
        self.stop = stop or threading.Event()
        self.stats = TailStats()
        self.summary = TailSummary()
        self.counters: dict[str, TopicCounter] = {}
        self.topic_kinds: dict[str, Kind | None] = {}
        self._ends: dict[tuple[str, int], int] = {}
        self._done: set[tuple[str, int]] = set()
        self._fetched: set[tuple[str, int]] = set()
        self._skip_below: dict[tuple[str, int], int] = {}
        self._reader: Any = None
        # --limit counts messages shown, not read: a filter may skip most of what arrives.
        self.bounds = RunBounds(max_messages=options.limit)

    def open(self) -> None:
        """Check the topics exist, read watermarks and assign every partition at its start offset."""
        existing = kafka.list_topics(self.config, timeout_s=self.config.kafka.connect_timeout_s)
        topics = resolve_topics(self.config, self.options.topics, existing)
        reader = kafka.make_reader(self.config, enable_partition_eof=True)
        assignments = []
        # Offsets are retried through a leader election (a node restarting) until this deadline.
        deadline = time.monotonic() + self.config.kafka.connect_timeout_s
        try:
            for topic in topics:
                kind = topic_kind(topic, self.config)
                self.topic_kinds[topic] = kind
                self.counters[topic] = TopicCounter(topic, kind, existing[topic])
                self.summary.per_topic[topic] = 0
                for partition in range(existing[topic]):
                    low, high = kafka.watermarks(reader, kafka.TopicPartition(topic, partition), deadline)
                    start = low if self.options.from_beginning else high
                    self._ends[(topic, partition)] = high
                    if start >= high:
                        self._done.add((topic, partition))
                    assignments.append(kafka.TopicPartition(topic, partition, start))
            reader.assign(assignments)
        except kafka.KafkaException as exc:
            kafka.close_within(reader, self.config.kafka.close_timeout_s, "reader")
            raise BrokerError(
                f"cannot read {', '.join(topics)} on {self.config.kafka.bootstrap_servers}: {exc}"
            ) from None
        self._reader = reader

    def close(self) -> None:
        """Close the reader (it never committed anything)."""
        if self._reader is not None:
            kafka.close_within(self._reader, self.config.kafka.close_timeout_s, "reader")
            self._reader = None

    @property
    def caught_up(self) -> bool:
        """True once every partition reached the end it had when tail started."""
        return len(self._done) >= len(self._ends)

    def poll(self, timeout_s: float = 0.1) -> list[TailMessage]:
        """Read the next messages, count them, and return those that pass the filters (up to --limit)."""
        now = time.monotonic()
        shown: list[TailMessage] = []
        per_topic: dict[str, int] = {}
        for message in self._reader.consume(num_messages=1000, timeout=timeout_s):
            error = message.error()
            position = (message.topic(), message.partition())
            if position not in self._fetched and position in self._ends:
                self._learn_end(position)
            if error is not None:
                if error.code() == kafka.KafkaError._PARTITION_EOF:
                    self._done.add(position)
                    continue
                if error.fatal():
                    raise BrokerError(f"reading from Kafka failed: {error.str()}")
                continue
            if message.offset() < self._skip_below.get(position, 0):
                continue
            if message.offset() + 1 >= self._ends.get(position, 0):
                self._done.add(position)
            tail_message = to_tail_message(message, self.topic_kinds.get(message.topic()))
            per_topic[tail_message.topic] = per_topic.get(tail_message.topic, 0) + 1
            self.stats.observe(tail_message)
            self.summary.seen += 1
            if self.limit_reached or not matches(tail_message, self.options):
                continue
            shown.append(tail_message)
            self.summary.shown += 1
            self.bounds.count(1)
            self.summary.per_topic[tail_message.topic] += 1
            self.counters[tail_message.topic].shown += 1
        for topic, count in per_topic.items():
            self.counters[topic].add(now, count)
        return shown

    def _learn_end(self, position: tuple[str, int]) -> None:
        """Correct the partition's end with the high watermark of the first fetch response.

        Some brokers (Tansu) answer ListOffsets with the base offset of the last record batch + 1,
        which is less than the real end; the fetch response carries the right value.
        """
        _, high = self._reader.get_watermark_offsets(kafka.TopicPartition(*position), cached=True)
        if high < 0:
            return
        self._fetched.add(position)
        if high > self._ends[position]:
            if not self.options.from_beginning:
                self._skip_below[position] = high  # those records were there before tail started
            self._ends[position] = high

    @property
    def limit_reached(self) -> bool:
        """True once --limit messages were shown."""
        return self.bounds.remaining_messages(1) == 0

    def finished(self) -> StopReason | None:
        """Why reading should stop now, or None."""
        if self.stop.is_set():
            return "stopped"
        reason = self.bounds.reached()
        if reason is not None:
            return reason
        if not self.options.follow and self.caught_up:
            return "end_of_source"
        return None


def run_tail(
    config: FraudkitConfig,
    options: TailOptions,
    console: Console | None = None,
    json_out: TextIO | None = None,
    stop: threading.Event | None = None,
    refresh_s: float = 0.25,
) -> TailSummary:
    """Tail topics to a live table on `console`, or as JSON lines to `json_out`, until a bound or stop."""
    tail = Tail(config, options, stop)
    tail.open()
    try:
        if json_out is not None:
            _run_json(tail, json_out)
        else:
            _run_live(tail, console or Console(), refresh_s)
    finally:
        tail.close()
    return tail.summary


def _run_json(tail: Tail, out: TextIO) -> None:
    while True:
        reason = tail.finished()
        if reason:
            tail.summary.stopped_by = reason
            return
        messages = tail.poll()
        for message in messages:
            out.write(orjson.dumps(message.to_json()).decode())
            out.write("\n")
        if messages:
            out.flush()


def _run_live(tail: Tail, console: Console, refresh_s: float) -> None:
    from rich.live import Live

    view = TailView(list(tail.counters.values()), tail.stats, tail.options)
    # Refreshing from this thread only (auto_refresh off) keeps rendering and updates from racing.
    with Live(view, console=console, auto_refresh=False, transient=False, vertical_overflow="crop") as live:
        last_refresh = 0.0
        while True:
            reason = tail.finished()
            if reason:
                tail.summary.stopped_by = reason
                view.finished = True
                break  # leaving the block draws the final screen
            for message in tail.poll():
                view.add(message)
            now = time.monotonic()
            if now - last_refresh >= refresh_s:
                live.refresh()
                last_refresh = now
