"""Rules published on the control topic change a running detector's decisions from its next batch on."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import orjson
import pytest
from typer.testing import CliRunner

from fraudkit.cli import app
from fraudkit.config import FraudkitConfig
from fraudkit.detect import DetectSummary, run_detect
from fraudkit.rules.live import RulesExtension
from fraudkit.stream import kafka
from integration.test_detect import (
    CUTOFF,
    produce_transactions,
    publish_amount_model,
    read_topic,
    transaction,
    write_config_file,
)

pytestmark = pytest.mark.kafka
runner = CliRunner()

RULES = """
rules:
  - name: vip_card
    when: card_id == "card-vip"
    action: pass
  - name: tiny_amount
    when: amount < 5 and country in ["DE", "FR"]
    action: flag
  - name: watch_terminal
    when: terminal_id == "term-003"
    action: review
"""


def wait_for(predicate, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def verdicts(config: FraudkitConfig) -> dict[str, dict]:
    return {
        v["transaction_id"]: v
        for v in (orjson.loads(m.value()) for m in read_topic(config, config.topics.verdicts))
    }


def test_a_published_rule_set_applies_from_the_next_batch(
    kafka_config: FraudkitConfig, tmp_path: Path
) -> None:
    config = kafka_config
    publish_amount_model(config)
    kafka.ensure_topics(config)
    config_file = write_config_file(config, tmp_path / "config.json")
    logs: list[str] = []
    stop = threading.Event()
    result: list[DetectSummary] = []
    extension = RulesExtension(config)

    def detect() -> None:
        result.append(
            run_detect(config, duration_s=90, stop_event=stop, on_log=logs.append, extensions=[extension])
        )

    thread = threading.Thread(target=detect, daemon=True)
    thread.start()
    try:
        # Before: the model alone. Tiny amounts pass; the VIP card's big amount is flagged.
        before = [transaction(i, amount=1.0) for i in range(50)]
        before.append(transaction(50, amount=900.0))
        before[-1].card_id = "card-vip"
        produce_transactions(config, before)
        wait_for(lambda: len(verdicts(config)) >= len(before), 30, "the first verdicts")

        published = runner.invoke(
            app, ["rules", "publish", str(_rule_file(tmp_path)), "--config", str(config_file)]
        )
        assert published.exit_code == 0, published.output
        assert (
            "published rules" in published.output
            and "3 rule(s) (1 flag, 1 pass, 1 review)" in published.output
        )
        wait_for(
            lambda: any("from the control topic" in line for line in logs),
            15,
            "the detector to apply the rules",
        )

        after = [transaction(i, amount=1.0) for i in range(100, 150)]
        after.append(transaction(150, amount=900.0))
        after[-1].card_id = "card-vip"
        produce_transactions(config, after)
        wait_for(
            lambda: len(verdicts(config)) >= len(before) + len(after), 30, "the verdicts after publishing"
        )
    finally:
        stop.set()
        thread.join(60)
    assert result, "the detector did not finish"
    summary = result[0]
    assert summary.consumed == len(before) + len(after)

    by_id = verdicts(config)
    for tx in before[:-1]:
        verdict = by_id[tx.transaction_id]
        assert (verdict["decision"], verdict["rules"], verdict["rules_version"]) == ("legit", [], None)
    vip_before = by_id[before[-1].transaction_id]
    assert vip_before["decision"] == "fraud" and vip_before["score"] >= 0.5 and vip_before["rules"] == []

    version = extension.installed[-1]
    for tx in after[:-1]:
        verdict = by_id[tx.transaction_id]
        assert verdict["decision"] == "fraud", verdict
        assert verdict["score"] < 0.5  # the model still says legit; the rule decided
        assert verdict["rules_version"] == version
        expected = ["tiny_amount", "watch_terminal"] if tx.terminal_id == "term-003" else ["tiny_amount"]
        assert verdict["rules"] == expected
        assert verdict["review"] is (tx.terminal_id == "term-003")
        assert verdict["reasons"], "rule-flagged verdicts carry the model's reason codes too"
    vip_after = by_id[after[-1].transaction_id]
    assert vip_after["score"] >= 0.5 and after[-1].amount >= CUTOFF
    assert vip_after["decision"] == "legit" and vip_after["rules"] == ["vip_card"]
    # The fraud branch follows the combined decision.
    fraud_branch = {
        orjson.loads(m.value())["transaction_id"] for m in read_topic(config, config.topics.fraud)
    }
    assert fraud_branch == {before[-1].transaction_id} | {tx.transaction_id for tx in after[:-1]}

    shown = runner.invoke(app, ["rules", "show", "--config", str(config_file)])
    assert shown.exit_code == 0, shown.output
    assert f"rules {version}: 3 rule(s)" in shown.output
    assert "name: tiny_amount" in shown.output and "action: review" in shown.output


def test_a_new_detector_starts_with_the_latest_published_set(
    kafka_config: FraudkitConfig, tmp_path: Path
) -> None:
    config = kafka_config
    publish_amount_model(config)
    kafka.ensure_topics(config)
    config_file = write_config_file(config, tmp_path / "config.json")
    first = tmp_path / "first.yaml"
    first.write_text("rules:\n  - {name: old, when: amount < 2, action: flag}\n")
    bad = tmp_path / "bad.yaml"
    bad.write_text("rules:\n  - {name: typo, when: amount << 2, action: flag}\n")
    refused = runner.invoke(app, ["rules", "publish", str(bad), "--config", str(config_file)])
    assert refused.exit_code == 2
    assert f"{bad}: rule 'typo': when, character 9" in refused.output
    assert runner.invoke(app, ["rules", "publish", str(first), "--config", str(config_file)]).exit_code == 0
    assert (
        runner.invoke(
            app, ["rules", "publish", str(_rule_file(tmp_path)), "--config", str(config_file)]
        ).exit_code
        == 0
    )

    produce_transactions(config, [transaction(i, amount=1.0) for i in range(20)])
    extension = RulesExtension(config)
    summary = run_detect(config, until_idle_s=2, extensions=[extension])
    assert summary.fraud == 20
    assert len(extension.installed) == 1  # only the latest set, before the first batch
    assert {tuple(v["rules"][:1]) for v in verdicts(config).values()} == {("tiny_amount",)}


def _rule_file(tmp_path: Path) -> Path:
    path = tmp_path / "rules.yaml"
    path.write_text(RULES)
    return path
