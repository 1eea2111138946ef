"""`fraudkit report` over a database the sink filled: figures, terminal rendering, HTML charts, --watch."""

from __future__ import annotations

import base64
import io
import re
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pytest
import yaml
from rich.console import Console
from typer.testing import CliRunner

from fraudkit import schema
from fraudkit.cli import app
from fraudkit.config import FraudkitConfig, config_as_dict
from fraudkit.storage.database import open_database
from fraudkit.storage.report import (
    Report,
    ReportOptions,
    build_report,
    render_report,
    watch_report,
    write_html,
)
from fraudkit.storage.sink import SinkOptions, label_row, run_sink, verdict_row
from fraudkit.stream import kafka

runner = CliRunner()
START_MS = 1_767_571_200_000  # 2026-01-05 00:00 UTC
PRODUCED_MS = 1_767_600_000_000

# 40 verdicts five minutes apart (hours 00..03). i % 10 == 0: flagged at 0.95 (card-hot), and fraud when
# labelled; i % 10 == 1: flagged at 0.7, legit; i % 10 == 2: not flagged, fraud (missed card testing).
# Labels arrive for i < 30: TP 3, FP 3, FN 3, TN 21.


def verdict(i: int) -> dict[str, Any]:
    score = 0.95 if i % 10 == 0 else 0.7 if i % 10 == 1 else round(0.1 + 0.01 * (i % 10), 2)
    produced = PRODUCED_MS + i * 1000
    return {
        "schema": 1,
        "transaction_id": f"r{i:03d}",
        "card_id": "card-hot" if i % 10 == 0 else f"card{i % 4}",
        "terminal_id": "term-bad" if i % 10 in (0, 1) else f"term{i % 3}",
        "score": score,
        "decision": "fraud" if score >= 0.5 else "legit",
        "threshold": 0.5,
        "model_version": "v1" if i < 20 else "v2",
        "reasons": [],
        "event_time_ms": START_MS + i * 300_000,
        "produced_ms": produced,
        "consumed_ms": produced + 5,
        "verdict_ms": produced + (i % 5 + 1) * 10,
        "amount": 100.0 + i,
        "currency": "EUR",
        "country": "FR" if i % 2 == 0 else "DE",
        "merchant_category": "5411" if i % 3 else "7995",
        "detector": "d1",
    }


def label(i: int) -> schema.Label:
    fraud = i % 10 in (0, 2)
    scenario = {0: "stolen_card", 2: "card_testing"}.get(i % 10, "")
    return schema.Label(f"r{i:03d}", START_MS + i * 300_000, int(fraud), None, None, PRODUCED_MS, scenario)


VERDICTS = [verdict(i) for i in range(40)]
LABELS = [label(i) for i in range(30)]


def sqlite_config(config: FraudkitConfig, tmp_path: Path) -> FraudkitConfig:
    sink = config.sink.model_copy(update={"url": f"sqlite:///{tmp_path / 'report.db'}"})
    return config.model_copy(update={"sink": sink})


@pytest.fixture
def filled_by_sink(kafka_config: FraudkitConfig, tmp_path: Path) -> FraudkitConfig:
    """A SQLite database written by the sink from the broker."""
    config = sqlite_config(kafka_config, tmp_path)
    kafka.ensure_topics(config, [config.topics.verdicts, config.topics.labels])
    producer = kafka.make_producer(config)
    for item in VERDICTS:
        kafka.produce(producer, config.topics.verdicts, schema.encode(item), item["card_id"])
    for truth in LABELS:
        kafka.produce(producer, config.topics.labels, schema.encode(truth), "k")
    kafka.flush(producer)
    summary = run_sink(config, SinkOptions(until_idle_s=1.0))
    assert (summary.inserted, summary.labels) == (40, 30)
    return config


def assert_figures(report: Report) -> None:
    assert (report.verdicts, report.flagged, report.labelled, report.labelled_fraud) == (40, 8, 30, 6)
    assert (report.first_event_ms, report.last_event_ms) == (START_MS, START_MS + 39 * 300_000)
    assert report.bucket == "hour"
    assert [(b.start_ms, b.verdicts, b.flagged, b.labelled_fraud) for b in report.buckets] == [
        (START_MS, 12, 4, 3),
        (START_MS + 3_600_000, 12, 2, 3),
        (START_MS + 7_200_000, 12, 2, 0),
        (START_MS + 10_800_000, 4, 0, 0),
    ]
    quality = report.quality
    assert (quality.tp, quality.fp, quality.fn, quality.tn) == (3, 3, 3, 21)
    assert quality.precision == 0.5 and quality.recall == 0.5
    assert report.average_precision() == pytest.approx(0.6)
    assert [(s.name, s.verdicts, s.caught) for s in report.by_scenario] == [
        ("card_testing", 3, 0),
        ("stolen_card", 3, 3),
    ]
    assert [(c.name, c.verdicts, c.flagged, c.labelled_fraud) for c in report.by_country] == [
        ("DE", 20, 4, 0),
        ("FR", 20, 4, 6),
    ]
    assert [(m.name, m.flagged) for m in report.by_model] == [("v1", 4), ("v2", 4)]
    hot = report.top_cards[0]
    assert (
        hot.entity_id,
        hot.verdicts,
        hot.flagged,
        hot.max_score,
        hot.flagged_amount,
        hot.labelled_fraud,
    ) == (
        "card-hot",
        4,
        4,
        0.95,
        460.0,
        3,
    )
    assert (report.top_terminals[0].entity_id, report.top_terminals[0].flagged) == ("term-bad", 8)
    produced = report.latencies[0]
    assert (produced.count, produced.p50, produced.p90, produced.p99, produced.max) == (
        40,
        30.0,
        50.0,
        50.0,
        50.0,
    )
    assert (report.latencies[1].p50, report.latencies[1].max) == (25.0, 45.0)
    assert sum(sum(counts) for counts in report.score_bins) == 40


@pytest.mark.kafka
def test_report_of_a_database_filled_by_the_sink(filled_by_sink: FraudkitConfig, tmp_path: Path) -> None:
    report = build_report(filled_by_sink, ReportOptions())
    assert_figures(report)

    console = Console(record=True, width=160, file=io.StringIO())
    console.print(render_report(report))
    text = console.export_text()
    assert "40 verdicts · 8 flagged as fraud (20.00%) · 30 labelled, 6 of them fraud" in text
    assert "event time 2026-01-05 00:00 → 2026-01-05 03:15 UTC" in text
    assert re.search(r"2026-01-05 00:00 │\s+12 │\s+4 │\s+33\.33% │\s+3 │ █+", text)
    assert re.search(r"30 │\s+3 │\s+3 │\s+3 │\s+21 │\s+0\.500 │\s+0\.500 │\s+0\.500 │\s+0\.600", text)
    assert re.search(r"stolen_card\s+│\s+3 │\s+3 │\s+100\.00%", text)
    assert re.search(r"card_testing\s+│\s+3 │\s+0 │\s+0\.00%", text)
    assert re.search(r"card-hot\s+│\s+4 │\s+4 │\s+0\.950 │\s+460\.00 │\s+3", text)
    assert re.search(r"produced → verdict │\s+40 │\s+30 │\s+50 │\s+50 │\s+50", text)

    path = write_html(report, tmp_path / "out" / "report.html")
    page = path.read_text()
    charts = re.findall(r'<img id="chart-([a-z-]+)" alt="([^"]+)" src="data:image/png;base64,([^"]+)"', page)
    assert [(name, alt) for name, alt, _ in charts] == [
        ("pr-curve", "Precision-recall curve"),
        ("fraud-rate", "Fraud rate over time"),
        ("score-histogram", "Score histogram"),
    ]
    assert all(base64.b64decode(data).startswith(b"\x89PNG\r\n\x1a\n") for _, _, data in charts)
    assert "card-hot" in page and "stolen_card" in page and "<script" not in page and "http" not in page


@pytest.mark.kafka
def test_report_cli_json_html_and_terminal(filled_by_sink: FraudkitConfig, tmp_path: Path) -> None:
    path = tmp_path / "fraudkit.yaml"
    path.write_text(yaml.safe_dump(config_as_dict(filled_by_sink, mask_secrets=False)))
    result = runner.invoke(app, ["report", "-c", str(path), "--json", "--bucket", "day"])
    assert result.exit_code == 0, result.output + result.stderr
    data = orjson.loads(result.stdout)
    assert data["verdicts"] == 40 and data["bucket"] == "day" and len(data["buckets"]) == 1
    assert data["quality"]["precision"] == 0.5 and data["average_precision"] == pytest.approx(0.6)
    html = tmp_path / "r.html"
    result = runner.invoke(app, ["report", "-c", str(path), "--html", str(html)])
    assert result.exit_code == 0 and html.stat().st_size > 10_000 and f"wrote {html}" in result.stderr
    result = runner.invoke(app, ["report", "-c", str(path), "--top", "1"])
    assert result.exit_code == 0 and "Top risky cards" in result.stdout and "card-hot" in result.stdout


def test_report_without_a_database_or_table(tmp_path: Path) -> None:
    missing = runner.invoke(app, ["report", "--url", f"sqlite:///{tmp_path / 'none.db'}"])
    assert missing.exit_code == 6 and f"no database at {tmp_path / 'none.db'}" in missing.stderr
    db = open_database(f"sqlite:///{tmp_path / 'other.db'}", "something_else", "something_else_labels")
    db.ensure_schema()
    db.close()
    no_table = runner.invoke(app, ["report", "--url", f"sqlite:///{tmp_path / 'other.db'}"])
    assert no_table.exit_code == 6 and "table fraud_predictions not found" in no_table.stderr


def test_watch_redraws_with_new_rows(config: FraudkitConfig, tmp_path: Path) -> None:
    config = sqlite_config(config, tmp_path)
    db = open_database(config.sink.url, config.sink.table, config.sink.labels_table)
    db.ensure_schema()
    db.write_batch([verdict_row(v) for v in VERDICTS[:10]], [])
    seen: list[int] = []
    stop = threading.Event()

    def refreshed(report: Report) -> None:
        seen.append(report.verdicts)
        if len(seen) == 1:
            db.write_batch(
                [verdict_row(v) for v in VERDICTS[10:]], [label_row(schema.encode(x)) for x in LABELS]
            )
        else:
            stop.set()

    console = Console(record=True, width=160, file=io.StringIO(), force_terminal=True)
    last = watch_report(config, ReportOptions(), console, stop, refresh_s=0.05, on_refresh=refreshed)
    db.close()
    assert seen == [10, 40] and last is not None and last.quality.tp == 3
    text = console.export_text()
    assert "10 verdicts · 2 flagged" in text and "40 verdicts · 8 flagged" in text


@pytest.fixture
def postgres_config(postgres_url: str, config: FraudkitConfig) -> Iterator[FraudkitConfig]:
    table = f"rp_{uuid.uuid4().hex[:12]}"
    sink = config.sink.model_copy(
        update={"url": postgres_url, "table": table, "labels_table": f"{table}_labels"}
    )
    yield config.model_copy(update={"sink": sink})
    with psycopg.connect(postgres_url, autocommit=True) as connection:
        connection.execute(f"DROP TABLE IF EXISTS {table}, {table}_labels")


@pytest.mark.postgres
def test_report_on_postgres_gives_the_same_figures(postgres_config: FraudkitConfig) -> None:
    sink = postgres_config.sink
    db = open_database(sink.url, sink.table, sink.labels_table)
    db.ensure_schema()
    db.write_batch([verdict_row(v) for v in VERDICTS], [label_row(schema.encode(x)) for x in LABELS])
    db.close()
    assert_figures(build_report(postgres_config, ReportOptions()))
