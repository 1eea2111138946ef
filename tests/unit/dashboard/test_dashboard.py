"""The dashboard's pure parts: filters, the token check, secret masking and the figures over SQLite."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from fraudkit.cli import app
from fraudkit.config import load_config
from fraudkit.dashboard.data import Filters, parse_time, read_summary, read_verdict
from fraudkit.dashboard.server import is_loopback, token_matches
from fraudkit.errors import ConfigError
from fraudkit.storage.database import VERDICT_FIELDS, open_database

START_MS = 1_767_225_600_000
runner = CliRunner()


def test_filters_from_the_query_string() -> None:
    filters = Filters.from_query(
        {
            "card": [" c1 "],
            "terminal": [""],
            "min_score": ["0.25"],
            "from": ["2026-01-01T00:00"],
            "to": ["1767312000000"],
        }
    )
    assert filters == Filters("c1", None, 0.25, START_MS, 1_767_312_000_000)
    where, params = filters.where("?")
    assert where == "1=1 AND card_id = ? AND score >= ? AND event_time_ms >= ? AND event_time_ms < ?"
    assert params == ["c1", 0.25, START_MS, 1_767_312_000_000]
    assert Filters().where("%s") == ("1=1", [])
    for query, message in (
        ({"min_score": ["x"]}, "min_score: 'x' is not a number"),
        ({"min_score": ["2"]}, "min_score: must be between 0 and 1"),
        ({"from": ["yesterday"]}, "from: 'yesterday' is neither epoch milliseconds nor an ISO date/time"),
        ({"card": ["x" * 201]}, "card: longer than 200 characters"),
    ):
        with pytest.raises(ConfigError, match=message):
            Filters.from_query(query)
    assert parse_time("2026-01-01T01:00+01:00", "from") == START_MS


def test_token_check_and_loopback() -> None:
    assert token_matches("a" * 20, "a" * 20)
    assert not token_matches("a" * 20, "a" * 19 + "b")
    assert not token_matches("a" * 20, None)
    assert not token_matches(None, "anything")
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("example.org")


def test_review_token_is_a_masked_secret(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"dashboard\.review_token: must be at least 16 characters"):
        load_config(None, {"dashboard.review_token": "short"}, environ={})
    config_file = tmp_path / "config.yaml"
    config_file.write_text("dashboard:\n  review_token: s3cret-token-value-42\n")
    result = runner.invoke(app, ["config", "show", "--config", str(config_file)])
    assert result.exit_code == 0, result.output
    assert "s3cret-token-value-42" not in result.output
    assert "review_token: '******'" in result.output


def verdict(index: int, decision: str, score: float, card: str, verdict_ms: int) -> tuple:
    values = {
        "transaction_id": f"tx{index}",
        "event_time_ms": START_MS + index,
        "card_id": card,
        "terminal_id": "t<script>",
        "amount": 10.0 * index,
        "currency": "EUR",
        "country": "DE",
        "merchant_category": "5411",
        "score": score,
        "decision": decision,
        "threshold": 0.5,
        "model_version": "v1" if index % 2 else "v2",
        "reasons": '[{"feature": "amount", "value": 1.0, "contribution": 0.5}]',
        "produced_ms": verdict_ms - 100 - index,
        "consumed_ms": verdict_ms - 5,
        "verdict_ms": verdict_ms,
        "detector": "d",
    }
    return tuple(values[name] for name in VERDICT_FIELDS)


def test_summary_figures_over_the_sink_write_path(tmp_path: Path) -> None:
    database = open_database(f"sqlite:///{tmp_path / 'db.sqlite'}", "fraud_predictions", "fraud_labels")
    database.ensure_schema()
    now = 1_800_000_000_000
    rows = [
        verdict(1, "fraud", 0.9, "c1", now),
        verdict(2, "fraud", 0.8, "c2", now - 61_000),
        verdict(3, "legit", 0.1, "c1", now - 61_000),
        verdict(4, "fraud", 0.7, "c1", now - 10 * 60_000),
        verdict(5, "legit", 0.2, "c3", now - 40 * 60_000),
    ]
    labels = [
        ("tx1", START_MS + 1, 1, "c1", None, None, None),  # tp for v1
        ("tx3", START_MS + 3, 1, "c1", None, None, None),  # fn for v1
        ("tx2", START_MS + 2, 0, "c2", None, None, None),  # fp for v2
    ]
    database.write_batch(rows, labels)
    summary = read_summary(database, Filters(), verdict_rows=10, minutes=30)
    totals = summary["totals"]
    assert (totals["verdicts"], totals["flagged"], totals["labelled"], totals["labelled_fraud"]) == (
        5,
        3,
        3,
        2,
    )
    assert totals["fraud_rate"] == pytest.approx(0.6)
    per_minute = summary["per_minute"]
    assert len(per_minute) == 30  # the last 30 minutes up to the latest verdict; older ones left out
    assert per_minute[-1] == {"minute_ms": (now // 60_000) * 60_000, "verdicts": 1, "flagged": 1}
    assert sum(p["verdicts"] for p in per_minute) == 4 and sum(p["flagged"] for p in per_minute) == 3
    quality = {q["model_version"]: q for q in summary["quality"]}
    assert (
        quality["v1"]["tp"],
        quality["v1"]["fn"],
        quality["v1"]["precision"],
        quality["v1"]["recall"],
    ) == (1, 1, 1.0, 0.5)
    assert (quality["v2"]["fp"], quality["v2"]["precision"], quality["v2"]["recall"]) == (1, 0.0, None)
    assert summary["latency_ms"]["end_to_end"] == {"count": 5, "p50": 103, "p95": 105, "p99": 105}
    assert [v["transaction_id"] for v in summary["verdicts"]] == ["tx1", "tx2", "tx4"]
    first = summary["verdicts"][0]
    # Data stays data: no escaping here, the page sets it with textContent.
    assert first["terminal_id"] == "t<script>" and first["label"] == 1
    assert first["reasons"] == [{"feature": "amount", "value": 1.0, "contribution": 0.5}]

    narrowed = read_summary(database, Filters(card_id="c1", min_score=0.75), verdict_rows=10, minutes=30)
    assert narrowed["totals"]["verdicts"] == 1
    assert [v["transaction_id"] for v in narrowed["verdicts"]] == ["tx1"]
    assert read_verdict(database, "tx4")["amount"] == 40.0  # type: ignore[index]
    assert read_verdict(database, "nope") is None
    database.close()
