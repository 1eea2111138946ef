"""The dashboard in a real browser (Debian's headless Chromium through Playwright) over a database
filled by generate → detect → sink on the real broker; an analyst's reviews (a confirmed fraud, a
verdict rejected as legitimate) land on the labels topic, and without a review token the page is
read-only.

Set FRAUDKIT_DASHBOARD_SCREENSHOT=docs/dashboard.png to refresh the README's screenshot.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import orjson
import pytest

from fraudkit.config import FraudkitConfig
from fraudkit.dashboard.server import Dashboard
from fraudkit.detect import run_detect
from fraudkit.generate import run_generate
from fraudkit.storage.sink import SinkOptions, run_sink
from fraudkit.stream import kafka
from integration.test_detect import publish_amount_model, read_topic

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

CHROMIUM = os.environ.get("FRAUDKIT_CHROMIUM", "/usr/bin/chromium")
TOKEN = "analyst-token-0123456789"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def filled_database(kafka_config: FraudkitConfig, tmp_path: Path) -> FraudkitConfig:
    """Simulated traffic with immediate labels, scored by a registry model and stored by the sink."""
    config = kafka_config.model_copy(deep=True)
    config.sink.url = f"sqlite:///{tmp_path / 'fraudkit.db'}"
    config.dashboard.port = 0
    config.dashboard.review_token = TOKEN
    config.dashboard.refresh_s = 0.5
    config.generate.count = 3000
    config.generate.rate = None
    config.generate.label_delay_s = 0
    config.generate.read_verdicts = False
    config.simulate.customers = 400
    config.simulate.terminals = 800
    config.retrain.enabled = False
    publish_amount_model(config, cutoff=150.0)
    kafka.ensure_topics(config)
    assert run_generate(config).sent == 3000
    assert run_detect(config, until_idle_s=2).verdicts == 3000
    summary = run_sink(config, SinkOptions(until_idle_s=2))
    assert summary.inserted == 3000 and summary.labels > 0
    return config


def db_rows(config: FraudkitConfig, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    path = config.sink.url.removeprefix("sqlite:///")
    with sqlite3.connect(path) as connection:
        return connection.execute(sql, params).fetchall()


def request(url: str, data: bytes | None = None, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    req = urllib.request.Request(url, data=data, headers=headers or {}, method="POST" if data else "GET")
    try:
        with urllib.request.urlopen(req, timeout=10) as response:
            return response.status, orjson.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, orjson.loads(error.read())


@pytest.fixture
def browser() -> Any:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} not found: apt-get install chromium (the CI script installs it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield browser
        finally:
            browser.close()


def test_dashboard_shows_the_database_and_publishes_reviews(
    kafka_config: FraudkitConfig, tmp_path: Path, browser: Any
) -> None:
    config = filled_database(kafka_config, tmp_path)
    ((total, flagged, labelled),) = db_rows(
        config,
        "SELECT COUNT(*), SUM(decision = 'fraud'), SUM(label IS NOT NULL) FROM fraud_predictions",
    )
    ((tp, fp, fn),) = db_rows(
        config,
        "SELECT SUM(label = 1 AND decision = 'fraud'), SUM(label = 0 AND decision = 'fraud'), "
        "SUM(label = 1 AND decision <> 'fraud') FROM fraud_predictions WHERE model_version = 'v1'",
    )
    latest = db_rows(
        config,
        "SELECT transaction_id, card_id FROM fraud_predictions WHERE decision = 'fraud' "
        "ORDER BY verdict_ms DESC, transaction_id LIMIT 50",
    )
    assert flagged > 1 and labelled > 0

    with Dashboard(config) as dashboard:
        context = browser.new_context(viewport={"width": 1400, "height": 1100})
        page = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.goto(dashboard.url)
        page.wait_for_selector("body[data-loaded]", timeout=15_000)

        assert page.text_content("#total-verdicts") == f"{total:,}"
        assert page.text_content("#total-flagged") == f"{flagged:,}"
        assert page.text_content("#fraud-rate") == f"{100 * flagged / total:.2f}%"
        quality = page.locator("#quality tbody tr[data-model-version='v1'] td").all_text_contents()
        assert quality[1] == f"{tp / (tp + fp):.3f}" and quality[2] == f"{tp / (tp + fn):.3f}"
        assert quality[3:6] == [f"{tp:,}", f"{fp:,}", f"{fn:,}"]
        models = page.locator("#models tbody tr td").all_text_contents()
        assert models[:2] == ["v1 (current)", "published"]
        rows = page.locator("#verdicts tbody tr")
        assert rows.count() == len(latest)
        assert rows.first.get_attribute("data-transaction-id") == latest[0][0]

        # Filter by card: only that card's fraud verdicts, as the database has them.
        card = latest[0][1]
        ((card_flagged,),) = db_rows(
            config, "SELECT COUNT(*) FROM fraud_predictions WHERE decision = 'fraud' AND card_id = ?", (card,)
        )
        page.fill("#filter-card", card)
        page.click("#apply-filters")
        page.wait_for_function(
            "n => document.querySelector('#total-flagged').textContent === String(n)", arg=card_flagged
        )
        cards = page.locator("#verdicts tbody tr td:nth-child(3)").all_text_contents()
        assert cards == [card] * card_flagged

        if os.environ.get("FRAUDKIT_DASHBOARD_SCREENSHOT"):
            page.click("#clear-filters")
            page.wait_for_function(
                "n => document.querySelector('#total-flagged').textContent === n", arg=f"{flagged:,}"
            )
            page.screenshot(path=str(tmp_path / "dashboard.png"), full_page=False)
            shutil.copyfile(tmp_path / "dashboard.png", os.environ["FRAUDKIT_DASHBOARD_SCREENSHOT"])

        # An analyst opens the verdict, enters the token and confirms the fraud.
        transaction_id = latest[0][0]
        page.locator(
            f"#verdicts tbody tr[data-transaction-id='{transaction_id}'] button.open-verdict"
        ).click()
        page.wait_for_selector("#review[open]")
        assert page.text_content("#review-id") == transaction_id
        assert page.is_visible("#review-controls") and page.is_hidden("#review-disabled")
        page.fill("#review-token", "wrong-token-0123456789")
        page.click("#confirm-fraud")
        page.wait_for_selector("#review-status[data-outcome='refused']")
        assert "wrong or missing review token" in (page.text_content("#review-status") or "")
        page.fill("#review-token", TOKEN)
        page.click("#confirm-fraud")
        page.wait_for_selector("#review-status[data-outcome='published']", timeout=20_000)
        assert f"label published to {config.topics.labels}: fraud confirmed" in (
            page.text_content("#review-status") or ""
        )

        # The next flagged verdict (all cards again) is rejected as legitimate.
        page.click("#review-close")
        page.click("#clear-filters")
        page.wait_for_function(
            "n => document.querySelector('#total-flagged').textContent === n", arg=f"{flagged:,}"
        )
        rejected_id, rejected_card = latest[1]
        page.locator(f"#verdicts tbody tr[data-transaction-id='{rejected_id}'] button.open-verdict").click()
        page.wait_for_function(
            "id => document.querySelector('#review-id').textContent === id", arg=rejected_id
        )
        # A newly opened verdict carries no outcome of the previous review.
        assert page.get_attribute("#review-status", "data-outcome") is None
        page.fill("#review-token", TOKEN)
        page.click("#reject-fraud")
        page.wait_for_selector("#review-status[data-outcome='published']", timeout=20_000)
        assert f"label published to {config.topics.labels}: rejected as legitimate" in (
            page.text_content("#review-status") or ""
        )
        assert errors == []
        context.close()

        # No open write: without the token, cross-site, or by GET nothing is published.
        body = orjson.dumps({"transaction_id": transaction_id, "label": 0})
        json_type = {"Content-Type": "application/json"}
        assert request(dashboard.url + "api/review", body, json_type)[0] == 401
        assert (
            request(
                dashboard.url + "api/review",
                body,
                {**json_type, "X-Review-Token": TOKEN, "Origin": "http://evil.example"},
            )[0]
            == 403
        )
        assert request(dashboard.url + "api/review?transaction_id=x&label=0")[0] == 404
        assert request(dashboard.url + "api/review", body, {"X-Review-Token": TOKEN})[0] == 415

    # Without a review token the page is read-only and the endpoint closed, even to the right token.
    read_only = config.model_copy(deep=True)
    read_only.dashboard.review_token = None
    with Dashboard(read_only) as dashboard:
        context = browser.new_context(viewport={"width": 1400, "height": 1100})
        page = context.new_page()
        page.goto(dashboard.url)
        page.wait_for_selector("body[data-loaded]", timeout=15_000)
        page.locator(
            f"#verdicts tbody tr[data-transaction-id='{transaction_id}'] button.open-verdict"
        ).click()
        page.wait_for_selector("#review[open]")
        assert page.is_hidden("#review-controls") and page.is_visible("#review-disabled")
        assert page.text_content("#review-disabled") == "Reviews are disabled: set dashboard.review_token."
        context.close()
        assert request(dashboard.url + "api/review", body, {**json_type, "X-Review-Token": TOKEN}) == (
            403,
            {"error": "reviews are disabled: set dashboard.review_token"},
        )

    analyst = [
        label
        for label in (orjson.loads(m.value()) for m in read_topic(config, config.topics.labels))
        if label.get("source") == "analyst"
    ]
    # One label per review, nothing from the refused requests or the read-only page.
    assert sorted((label["transaction_id"], label["label"]) for label in analyst) == sorted(
        [(transaction_id, 1), (rejected_id, 0)]
    )
    by_id = {label["transaction_id"]: label for label in analyst}
    confirmed, rejected = by_id[transaction_id], by_id[rejected_id]
    assert (confirmed["label"], confirmed["card_id"]) == (1, card)
    assert (rejected["label"], rejected["card_id"], rejected["source"]) == (0, rejected_card, "analyst")
    for label in (confirmed, rejected):
        ((event_time_ms,),) = db_rows(
            config,
            "SELECT event_time_ms FROM fraud_predictions WHERE transaction_id = ?",
            (label["transaction_id"],),
        )
        assert label["event_time_ms"] == event_time_ms
