"""The dashboard's figures: queries over the sink's database (SQLite or PostgreSQL) and the registry.

Every figure honours the same filters (card, terminal, minimum score, event-time range); values
from the database are returned as plain JSON data, never as markup (the page sets them with
`textContent`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import orjson

from fraudkit.config import FraudkitConfig
from fraudkit.errors import ConfigError, DatabaseError, ModelError
from fraudkit.storage.database import Database, open_database, quote_table
from fraudkit.timefmt import iso_ms

MINUTE_MS = 60_000
FLAGGED = "CASE WHEN decision = 'fraud' THEN 1 ELSE 0 END"
VERDICT_COLUMNS = (
    "transaction_id",
    "event_time_ms",
    "verdict_ms",
    "card_id",
    "terminal_id",
    "amount",
    "currency",
    "country",
    "merchant_category",
    "score",
    "threshold",
    "decision",
    "model_version",
    "reasons",
    "detector",
    "label",
    "labelled_ms",
)
MAX_FILTER_CHARS = 200


@dataclass(frozen=True)
class Filters:
    """What the analyst narrowed the page to; all optional."""

    card_id: str | None = None
    terminal_id: str | None = None
    min_score: float | None = None
    from_ms: int | None = None
    to_ms: int | None = None

    @classmethod
    def from_query(cls, query: dict[str, list[str]]) -> Filters:
        """Filters from URL query parameters (card, terminal, min_score, from, to); ConfigError if malformed."""

        def text(name: str) -> str | None:
            values = query.get(name) or []
            value = values[-1].strip() if values else ""
            if len(value) > MAX_FILTER_CHARS:
                raise ConfigError(f"{name}: longer than {MAX_FILTER_CHARS} characters")
            return value or None

        min_score = text("min_score")
        try:
            score = None if min_score is None else float(min_score)
        except ValueError:
            raise ConfigError(f"min_score: {min_score!r} is not a number") from None
        if score is not None and not 0.0 <= score <= 1.0:
            raise ConfigError("min_score: must be between 0 and 1")
        return cls(
            card_id=text("card"),
            terminal_id=text("terminal"),
            min_score=score,
            from_ms=parse_time(text("from"), "from"),
            to_ms=parse_time(text("to"), "to"),
        )

    def where(self, placeholder: str) -> tuple[str, list[Any]]:
        """An SQL WHERE clause (always valid, "1=1" without filters) and its parameters."""
        clauses = ["1=1"]
        params: list[Any] = []
        for column, value, op in (
            ("card_id", self.card_id, "="),
            ("terminal_id", self.terminal_id, "="),
            ("score", self.min_score, ">="),
            ("event_time_ms", self.from_ms, ">="),
            ("event_time_ms", self.to_ms, "<"),
        ):
            if value is not None:
                clauses.append(f"{column} {op} {placeholder}")
                params.append(value)
        return " AND ".join(clauses), params


def parse_time(value: str | None, name: str) -> int | None:
    """Epoch milliseconds from epoch ms digits or an ISO date/datetime (UTC unless it says otherwise)."""
    if value is None:
        return None
    if value.isdigit():
        return int(value)
    try:
        return iso_ms(value)
    except ValueError:
        raise ConfigError(f"{name}: {value!r} is neither epoch milliseconds nor an ISO date/time") from None


def _share(part: int, whole: int) -> float | None:
    return part / whole if whole else None


def _int(value: Any) -> int:
    return int(value or 0)


def _reasons(raw: Any) -> list[Any]:
    if raw is None:
        return []
    if isinstance(raw, list):
        return raw
    try:
        value = orjson.loads(raw)
    except (orjson.JSONDecodeError, TypeError):
        return []
    return value if isinstance(value, list) else []


def _verdict_dict(row: tuple[Any, ...]) -> dict[str, Any]:
    data = dict(zip(VERDICT_COLUMNS, row, strict=True))
    data["reasons"] = _reasons(data["reasons"])
    for name in ("amount", "score", "threshold"):
        data[name] = None if data[name] is None else float(data[name])
    for name in ("event_time_ms", "verdict_ms", "label", "labelled_ms"):
        data[name] = None if data[name] is None else int(data[name])
    return data


def read_summary(database: Database, filters: Filters, verdict_rows: int, minutes: int) -> dict[str, Any]:
    """Totals, per-minute counts, live quality per model version, latency and the latest fraud verdicts."""
    if not database.table_exists(database.table):
        raise DatabaseError(
            f"table {database.table} not found in {database.url.describe()} (has `fraudkit sink` run?)"
        )
    table = quote_table(database.table)
    where, params = filters.where(database.placeholder)
    (row,) = database.query(
        f"SELECT COUNT(*), SUM({FLAGGED}), SUM(CASE WHEN label IS NOT NULL THEN 1 ELSE 0 END), "
        f"SUM(CASE WHEN label = 1 THEN 1 ELSE 0 END), MAX(verdict_ms), MIN(event_time_ms), MAX(event_time_ms) "
        f"FROM {table} WHERE {where}",
        params,
    )
    verdicts, flagged, labelled, labelled_fraud = (_int(value) for value in row[:4])
    last_verdict_ms = None if row[4] is None else int(row[4])
    totals = {
        "verdicts": verdicts,
        "flagged": flagged,
        "fraud_rate": _share(flagged, verdicts),
        "labelled": labelled,
        "labelled_fraud": labelled_fraud,
        "first_event_ms": None if row[5] is None else int(row[5]),
        "last_event_ms": None if row[6] is None else int(row[6]),
        "last_verdict_ms": last_verdict_ms,
    }
    per_minute: list[dict[str, Any]] = []
    if last_verdict_ms is not None:
        # The minutes up to the latest verdict, so a finished run still shows its traffic.
        end_minute = last_verdict_ms // MINUTE_MS
        start_ms = (end_minute - minutes + 1) * MINUTE_MS
        counts = {
            int(minute): (_int(n), _int(f))
            for minute, n, f in database.query(
                f"SELECT verdict_ms / {MINUTE_MS} AS minute, COUNT(*), SUM({FLAGGED}) FROM {table} "
                f"WHERE {where} AND verdict_ms >= {database.placeholder} GROUP BY 1 ORDER BY 1",
                [*params, start_ms],
            )
        }
        for minute in range(end_minute - minutes + 1, end_minute + 1):
            n, f = counts.get(minute, (0, 0))
            per_minute.append({"minute_ms": minute * MINUTE_MS, "verdicts": n, "flagged": f})
    quality = []
    for version, tp, fp, fn, tn in database.query(
        "SELECT model_version, "
        "SUM(CASE WHEN label = 1 AND decision = 'fraud' THEN 1 ELSE 0 END), "
        "SUM(CASE WHEN label = 0 AND decision = 'fraud' THEN 1 ELSE 0 END), "
        "SUM(CASE WHEN label = 1 AND decision <> 'fraud' THEN 1 ELSE 0 END), "
        "SUM(CASE WHEN label = 0 AND decision <> 'fraud' THEN 1 ELSE 0 END) "
        f"FROM {table} WHERE {where} AND label IS NOT NULL GROUP BY 1 ORDER BY 1",
        params,
    ):
        tp, fp, fn, tn = (_int(value) for value in (tp, fp, fn, tn))
        quality.append(
            {
                "model_version": version,
                "tp": tp,
                "fp": fp,
                "fn": fn,
                "tn": tn,
                "precision": _share(tp, tp + fp),
                "recall": _share(tp, tp + fn),
            }
        )
    latency = _latency(database, where, params)
    rows = database.query(
        f"SELECT {', '.join(VERDICT_COLUMNS)} FROM {table} WHERE {where} AND decision = 'fraud' "
        f"ORDER BY verdict_ms DESC, transaction_id LIMIT {int(verdict_rows)}",
        params,
    )
    return {
        "totals": totals,
        "per_minute": per_minute,
        "quality": quality,
        "latency_ms": latency,
        "verdicts": [_verdict_dict(row) for row in rows],
    }


def _latency(database: Database, where: str, params: list[Any]) -> dict[str, Any]:
    table = quote_table(database.table)
    result: dict[str, Any] = {}
    for name, start, end in (
        ("end_to_end", "produced_ms", "verdict_ms"),
        ("to_database", "verdict_ms", "written_ms"),
    ):
        condition = f"{where} AND {start} IS NOT NULL AND {end} IS NOT NULL"
        rows = database.query(f"SELECT {end} - {start} FROM {table} WHERE {condition} ORDER BY 1", params)
        values = [int(r[0]) for r in rows]
        if not values:
            result[name] = {"count": 0, "p50": None, "p95": None, "p99": None}
            continue

        # Nearest-rank percentiles, as `fraudkit report` computes them.
        def rank(fraction: float, values: list[int] = values) -> int:
            return values[min(len(values) - 1, max(0, int(fraction * len(values) + 0.5) - 1))]

        result[name] = {"count": len(values), "p50": rank(0.5), "p95": rank(0.95), "p99": rank(0.99)}
    return result


def read_verdict(database: Database, transaction_id: str) -> dict[str, Any] | None:
    """One stored verdict by transaction id, or None."""
    table = quote_table(database.table)
    rows = database.query(
        f"SELECT {', '.join(VERDICT_COLUMNS)} FROM {table} WHERE transaction_id = {database.placeholder}",
        [transaction_id],
    )
    return _verdict_dict(rows[0]) if rows else None


def read_models(config: FraudkitConfig) -> list[dict[str, Any]]:
    """Registry versions, newest first: status (published/rejected = retraining outcomes), metrics, current."""
    from fraudkit.model.registry import Registry

    try:
        infos = Registry(config.registry.path).list()
    except ModelError:  # an unreadable registry only empties this panel (a missing one lists nothing)
        return []
    models = []
    for info in reversed(infos):
        metrics = info.metrics or {}
        models.append(
            {
                "version": info.version,
                "status": info.status,
                "current": info.is_current,
                "created_at": info.created_at,
                "threshold": info.threshold,
                "average_precision": metrics.get("average_precision"),
                "roc_auc": metrics.get("roc_auc"),
                "trainer": info.trainer,
                "reason": info.reason,
            }
        )
    return models


def dashboard_summary(config: FraudkitConfig, filters: Filters) -> dict[str, Any]:
    """Everything the page shows, read now (the database opened read-only for this call)."""
    settings = config.dashboard
    with open_database(
        config.sink.url, config.sink.table, config.sink.labels_table, read_only=True
    ) as database:
        summary = read_summary(database, filters, settings.verdicts, settings.minutes)
        summary["database"] = database.url.describe()
    summary["models"] = read_models(config)
    summary["generated_ms"] = time.time_ns() // 1_000_000
    return summary


def dashboard_verdict(config: FraudkitConfig, transaction_id: str) -> dict[str, Any] | None:
    """One verdict for the review panel."""
    with open_database(
        config.sink.url, config.sink.table, config.sink.labels_table, read_only=True
    ) as database:
        return read_verdict(database, transaction_id)
