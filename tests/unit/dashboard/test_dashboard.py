"""The dashboard's pure parts (filters, the token check, secret masking, the figures over SQLite and the
registry) and its review endpoint with the label publisher replaced by a recorder (no broker)."""

from __future__ import annotations

import re
import threading
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import orjson
import pytest
from tests.unit.model.test_registry import publish_fields
from typer.testing import CliRunner

import fraudkit.dashboard
from fraudkit.cli import app
from fraudkit.config import FraudkitConfig, load_config
from fraudkit.dashboard.data import (
    Filters,
    dashboard_summary,
    parse_time,
    read_models,
    read_summary,
    read_verdict,
)
from fraudkit.dashboard.server import Dashboard, is_loopback, serve_dashboard, token_matches
from fraudkit.errors import ConfigError, ModelError
from fraudkit.model.registry import Registry
from fraudkit.schema import Label
from fraudkit.storage.database import VERDICT_FIELDS, open_database

START_MS = 1_767_225_600_000
runner = CliRunner()


def test_filters_from_the_query_string() -> None:
    filters = Filters.from_query(
        {
            "card": [" c1 "],
            "terminal": ["t0", " t9 "],  # the last value counts, stripped
            "min_score": ["0.25"],
            "from": ["2026-01-01T00:00"],
            "to": ["1767312000000"],
        }
    )
    assert filters == Filters("c1", "t9", 0.25, START_MS, 1_767_312_000_000)
    where, params = filters.where("?")
    assert where == (
        "1=1 AND card_id = ? AND terminal_id = ? AND score >= ? AND event_time_ms >= ? AND event_time_ms < ?"
    )
    assert params == ["c1", "t9", 0.25, START_MS, 1_767_312_000_000]
    assert Filters.from_query({"terminal": ["t9"]}).where("%s") == ("1=1 AND terminal_id = %s", ["t9"])
    assert Filters.from_query({"terminal": ["  "]}) == Filters()  # blank: no filter
    assert Filters().where("%s") == ("1=1", [])
    for query, message in (
        ({"min_score": ["x"]}, "min_score: 'x' is not a number"),
        ({"min_score": ["2"]}, "min_score: must be between 0 and 1"),
        ({"from": ["yesterday"]}, "from: 'yesterday' is neither epoch milliseconds nor an ISO date/time"),
        ({"card": ["x" * 201]}, "card: longer than 200 characters"),
        ({"terminal": ["x" * 201]}, "terminal: longer than 200 characters"),
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


def verdict(
    index: int, decision: str, score: float, card: str, verdict_ms: int, terminal: str = "t<script>"
) -> tuple:
    values = {
        "transaction_id": f"tx{index}",
        "event_time_ms": START_MS + index,
        "card_id": card,
        "terminal_id": terminal,
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
        verdict(4, "fraud", 0.7, "c1", now - 10 * 60_000, terminal="t9"),
        verdict(5, "legit", 0.2, "c3", now - 40 * 60_000, terminal="t9"),
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
    # The terminal filter, from the query string as the page sends it: every figure narrows.
    by_terminal = read_summary(
        database, Filters.from_query({"terminal": ["t9"]}), verdict_rows=10, minutes=30
    )
    assert (by_terminal["totals"]["verdicts"], by_terminal["totals"]["flagged"]) == (2, 1)
    assert [v["transaction_id"] for v in by_terminal["verdicts"]] == ["tx4"]
    assert sum(p["verdicts"] for p in by_terminal["per_minute"]) == 1  # tx5 is older than 30 minutes
    assert by_terminal["latency_ms"]["end_to_end"]["count"] == 2
    both = read_summary(database, Filters(card_id="c3", terminal_id="t9"), verdict_rows=10, minutes=30)
    assert (both["totals"]["verdicts"], both["verdicts"]) == (1, [])
    unknown = read_summary(database, Filters(terminal_id="t<"), verdict_rows=10, minutes=30)
    assert unknown["totals"]["verdicts"] == 0  # equality, not a prefix match
    assert read_verdict(database, "tx4")["amount"] == 40.0  # type: ignore[index]
    assert read_verdict(database, "nope") is None
    database.close()


def sink_database(tmp_path: Path) -> str:
    """A sink database holding two fraud verdicts and one legit; returns its URL."""
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    database = open_database(url, "fraud_predictions", "fraud_labels")
    database.ensure_schema()
    now = 1_800_000_000_000
    rows = [
        verdict(1, "fraud", 0.9, "c1", now),
        verdict(2, "fraud", 0.8, "c2", now),
        verdict(3, "legit", 0.1, "c1", now),
    ]
    database.write_batch(rows, [])
    database.close()
    return url


def test_models_panel_shows_rejected_retraining_outcomes(tmp_path: Path) -> None:
    registry = Registry(tmp_path / "models")
    fields = publish_fields(seed=0)
    registry.publish(fields.pop("model_state"), **fields)  # v1, current
    challenger = publish_fields(seed=5, threshold=0.3)
    challenger["metrics"] = {"average_precision": 0.4, "roc_auc": 0.8}
    registry.record_rejected(challenger.pop("model_state"), reason="AP 0.40 < champion 0.61", **challenger)
    config = load_config(
        None, {"registry.path": str(tmp_path / "models"), "sink.url": sink_database(tmp_path)}, environ={}
    )

    models = dashboard_summary(config, Filters())["models"]
    assert [(m["version"], m["status"], m["current"]) for m in models] == [
        ("v2", "rejected", False),
        ("v1", "published", True),
    ]
    rejected, champion = models
    assert (rejected["average_precision"], rejected["roc_auc"], rejected["threshold"]) == (0.4, 0.8, 0.3)
    assert (champion["average_precision"], champion["roc_auc"], champion["threshold"]) == (0.61, None, 0.4)
    assert rejected["trainer"] == "fraudkit train" and rejected["created_at"]
    assert (rejected["reason"], champion["reason"]) == ("AP 0.40 < champion 0.61", None)
    # No registry there (yet): the panel is empty and the page still loads.
    config.registry.path = tmp_path / "empty"
    assert read_models(config) == []


def test_an_unreadable_registry_empties_the_models_panel_and_other_errors_are_raised(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry = Registry(tmp_path / "models")
    fields = publish_fields(seed=0)
    registry.publish(fields.pop("model_state"), **fields)
    config = load_config(None, {"registry.path": str(registry.path)}, environ={})
    assert [m["version"] for m in read_models(config)] == ["v1"]

    # A folder the dashboard may not list is the registry's own error (ModelError), not an OSError.
    def refused(self: Path) -> Any:
        raise PermissionError(13, "Permission denied", str(self))

    with monkeypatch.context() as patch:
        patch.setattr(Path, "iterdir", refused)
        with pytest.raises(ModelError, match=r"cannot read the registry .*models: Permission denied"):
            registry.list()
        assert read_models(config) == []
    (registry.path / "current").write_text("{not json")
    assert read_models(config) == []

    # Anything else is a defect, not an empty panel.
    def broken(self: Registry) -> Any:
        raise RuntimeError("a bug")

    monkeypatch.setattr(Registry, "list", broken)
    with pytest.raises(RuntimeError, match="a bug"):
        read_models(config)


def test_the_models_panel_has_a_cell_per_column_and_sets_every_value_as_text() -> None:
    static = Path(fraudkit.dashboard.__file__).parent / "static"
    page = (static / "index.html").read_text()
    script = (static / "app.js").read_text()
    header = re.search(r'<table id="models"><thead><tr>(.*?)</tr></thead>', page)
    assert header is not None
    columns = re.findall(r"<th>(.*?)</th>", header.group(1))
    assert columns == ["version", "status", "AP", "threshold", "created", "reason"]
    render = script[script.index("function renderModels") :]
    render = render[: render.index("\n}\n")]
    assert len(re.findall(r"\bcell\(tr, ", render)) == len(columns)
    assert "cell(tr, m.reason" in render
    # cell() sets textContent: a reason holding markup is shown as text, never parsed.
    assert "innerHTML" not in script and "insertAdjacentHTML" not in script and "outerHTML" not in script


class RecordingPublisher:
    """Stands in for the Kafka label publisher: keeps what would have been produced."""

    def __init__(self) -> None:
        self.labels: list[Label] = []

    def publish(self, label: Label) -> None:
        self.labels.append(label)

    def close(self) -> None:
        pass


def post_review(url: str, body: dict[str, Any], token: str) -> tuple[int, Any]:
    headers = {"Content-Type": "application/json", "X-Review-Token": token}
    request = urllib.request.Request(url + "api/review", orjson.dumps(body), headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, orjson.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, orjson.loads(error.read())


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as response:
        return orjson.loads(response.read())


def dashboard_config(tmp_path: Path, review_token: str | None) -> FraudkitConfig:
    overrides = {
        "sink.url": sink_database(tmp_path),
        "dashboard.port": 0,
        "dashboard.review_token": review_token,
    }
    return load_config(None, overrides, environ={})


def test_without_a_review_token_the_review_endpoint_is_closed(tmp_path: Path) -> None:
    token = "analyst-token-0123456789"
    body = {"transaction_id": "tx1", "label": 0}
    config = dashboard_config(tmp_path, None)
    with Dashboard(config) as dashboard:
        publisher = RecordingPublisher()
        dashboard.server.publisher = publisher  # type: ignore[assignment]
        settings = {"refresh_s": config.dashboard.refresh_s, "reviews": False}
        assert get_json(dashboard.url + "api/settings") == settings
        # Refused whatever token is sent, before the body or the database is looked at.
        assert post_review(dashboard.url, body, token) == (
            403,
            {"error": "reviews are disabled: set dashboard.review_token"},
        )
        assert post_review(dashboard.url, {}, "")[0] == 403
        assert publisher.labels == []

    # The same request with the token configured publishes the analyst's label: the refusal above is
    # the missing token, not the request.
    with Dashboard(dashboard_config(tmp_path / "with-token", token)) as dashboard:
        publisher = RecordingPublisher()
        dashboard.server.publisher = publisher  # type: ignore[assignment]
        assert get_json(dashboard.url + "api/settings")["reviews"] is True
        status, reply = post_review(dashboard.url, body, token)
        assert (status, reply["published"], reply["label"]["label"]) == (200, True, 0)
        assert [(label.transaction_id, label.label, label.source) for label in publisher.labels] == [
            ("tx1", 0, "analyst")
        ]


def test_serving_without_a_token_logs_that_the_page_is_read_only(tmp_path: Path) -> None:
    config = dashboard_config(tmp_path, None)
    stop = threading.Event()
    stop.set()  # serve, log, and return at the first check
    lines: list[str] = []
    serve_dashboard(config, stop, lines.append)
    assert lines[0] == "reviews are disabled (no dashboard.review_token): the page is read-only"
    assert lines[1].startswith("dashboard on http://127.0.0.1:")
    assert len(lines) == 2
