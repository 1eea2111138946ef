"""`fraudkit tail` through the real broker: JSON lines, filters, --no-follow, unknown topics, the live screen."""

from __future__ import annotations

import io
import re
import threading
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from rich.console import Console
from typer.testing import CliRunner

from fraudkit import schema
from fraudkit.cli import app
from fraudkit.config import FraudkitConfig, config_as_dict
from fraudkit.stream import kafka
from fraudkit.tail import TailOptions, run_tail

pytestmark = pytest.mark.kafka
runner = CliRunner()
EVENT_MS = 1_770_000_000_000


def write_config(config: FraudkitConfig, tmp_path: Path) -> Path:
    path = tmp_path / "fraudkit.yaml"
    path.write_text(yaml.safe_dump(config_as_dict(config, mask_secrets=False)))
    return path


def verdict(index: int, score: float, card: str) -> dict[str, Any]:
    return {
        "schema": 1,
        "transaction_id": f"tx{index}",
        "card_id": card,
        "terminal_id": "term1",
        "score": score,
        "decision": "fraud" if score >= 0.5 else "legit",
        "threshold": 0.5,
        "model_version": "v3",
        "reasons": [{"feature": "amount_vs_card_mean", "value": 4.2, "contribution": 0.6}]
        if score >= 0.5
        else [],
        "event_time_ms": EVENT_MS + index * 1000,
        "produced_ms": EVENT_MS,
        "consumed_ms": EVENT_MS + 2,
        "verdict_ms": EVENT_MS + 9,
        "amount": 20.0 + index,
        "currency": "EUR",
        "country": "FR",
        "merchant_category": "5411",
        "detector": "d1",
    }


# Scores: every fifth transaction is flagged; cards cycle over three ids.
VERDICTS = [verdict(i, 0.9 if i % 5 == 0 else round(0.05 * (i % 5), 2), f"card{i % 3}") for i in range(20)]


def produce(config: FraudkitConfig, topic: str, items: list[tuple[bytes, str | None, Any]]) -> None:
    producer = kafka.make_producer(config)
    tracker = kafka.DeliveryTracker()
    for value, key, headers in items:
        kafka.produce(producer, topic, value, key, headers=headers, on_delivery=tracker.callback)
    kafka.flush(producer)
    tracker.check()


@pytest.fixture
def verdict_topic(kafka_config: FraudkitConfig) -> str:
    kafka.ensure_topics(kafka_config, [kafka_config.topics.verdicts])
    items: list[tuple[bytes, str | None, Any]] = [(schema.encode(v), v["card_id"], None) for v in VERDICTS]
    items.append((b"\x1b[2Jnot json\x00", "card0", None))
    produce(kafka_config, kafka_config.topics.verdicts, items)
    return kafka_config.topics.verdicts


def tail_json(config: FraudkitConfig, tmp_path: Path, *args: str) -> list[dict[str, Any]]:
    result = runner.invoke(
        app,
        [
            "tail",
            "-c",
            str(write_config(config, tmp_path)),
            "--from-beginning",
            "--no-follow",
            "--json",
            *args,
        ],
    )
    assert result.exit_code == 0, result.output + result.stderr
    return [orjson.loads(line) for line in result.stdout.splitlines() if line.strip()]


def test_json_lines_parse_back_with_coordinates(
    kafka_config: FraudkitConfig, verdict_topic: str, tmp_path: Path
) -> None:
    lines = tail_json(kafka_config, tmp_path, "verdicts")
    assert len(lines) == 21
    assert {line["topic"] for line in lines} == {verdict_topic}
    offsets: dict[int, list[int]] = {}
    for line in lines:
        offsets.setdefault(line["partition"], []).append(line["offset"])
    assert all(sorted(found) == list(range(len(found))) for found in offsets.values())
    by_id = {line["value"]["transaction_id"]: line for line in lines if line["value"] is not None}
    assert set(by_id) == {v["transaction_id"] for v in VERDICTS}
    assert by_id["tx5"]["value"]["score"] == 0.9 and by_id["tx5"]["key"] == "card2"
    assert by_id["tx5"]["kind"] == "verdicts"
    (raw,) = [line for line in lines if line["value"] is None]
    assert raw["raw"] == "\x1b[2Jnot json\x00" and raw["kind"] == "raw"


def test_filters(kafka_config: FraudkitConfig, verdict_topic: str, tmp_path: Path) -> None:
    fraud = tail_json(kafka_config, tmp_path, verdict_topic, "--fraud-only")
    assert sorted(line["value"]["transaction_id"] for line in fraud) == ["tx0", "tx10", "tx15", "tx5"]
    card = tail_json(kafka_config, tmp_path, verdict_topic, "--card", "card1")
    expected_card = {v["transaction_id"] for v in VERDICTS if v["card_id"] == "card1"}
    assert {line["value"]["transaction_id"] for line in card} == expected_card
    scored = tail_json(kafka_config, tmp_path, verdict_topic, "--min-score", "0.15")
    expected_scored = {v["transaction_id"] for v in VERDICTS if v["score"] >= 0.15}
    assert {line["value"]["transaction_id"] for line in scored} == expected_scored
    assert len(tail_json(kafka_config, tmp_path, verdict_topic, "--limit", "3")) == 3


def test_no_follow_from_latest_ends_at_once_with_nothing(
    kafka_config: FraudkitConfig, verdict_topic: str, tmp_path: Path
) -> None:
    result = runner.invoke(
        app, ["tail", verdict_topic, "-c", str(write_config(kafka_config, tmp_path)), "--no-follow", "--json"]
    )
    assert result.exit_code == 0 and result.stdout == ""


def test_latest_shows_only_new_messages_and_stops_on_request(
    kafka_config: FraudkitConfig, verdict_topic: str
) -> None:
    lines: list[dict[str, Any]] = []

    class Collector(io.StringIO):
        def write(self, text: str) -> int:
            if text.strip():
                lines.append(orjson.loads(text))
            return len(text)

    stop = threading.Event()
    summary_holder: list[Any] = []
    thread = threading.Thread(
        target=lambda: summary_holder.append(
            run_tail(kafka_config, TailOptions([verdict_topic]), json_out=Collector(), stop=stop)
        )
    )
    thread.start()
    try:
        deadline = time.monotonic() + 20
        index = 100
        # Keep producing until tail (started at the end of the topic) shows one of the new messages.
        while not lines and time.monotonic() < deadline:
            produce(
                kafka_config, verdict_topic, [(schema.encode(verdict(index, 0.9, "card9")), "card9", None)]
            )
            index += 1
            time.sleep(0.2)
    finally:
        stop.set()
        thread.join(10)
    assert not thread.is_alive()
    assert lines, "tail never showed a message produced after it started"
    assert all(int(line["value"]["transaction_id"][2:]) >= 100 for line in lines)
    assert summary_holder[0].stopped_by == "stopped"


def test_unknown_topic_lists_existing_topics(
    kafka_config: FraudkitConfig, verdict_topic: str, tmp_path: Path
) -> None:
    typo = verdict_topic[:-1]
    result = runner.invoke(app, ["tail", typo, "-c", str(write_config(kafka_config, tmp_path))])
    assert result.exit_code == 3
    assert f"error: unknown topic {typo!r} on" in result.stderr
    assert f"(did you mean {verdict_topic!r}?)" in result.stderr
    assert "existing topics:" in result.stderr
    assert "Traceback" not in result.stderr


def test_live_screen_capture(kafka_config: FraudkitConfig) -> None:
    topics = kafka_config.topics
    kafka.ensure_topics(kafka_config)
    produce(kafka_config, topics.verdicts, [(schema.encode(v), v["card_id"], None) for v in VERDICTS[:6]])
    labels = [
        schema.Label("tx0", EVENT_MS, 1, "card0", "term1", EVENT_MS + 86_400_000, "stolen_card"),
        schema.Label("tx1", EVENT_MS, 1, "card1", "term1", EVENT_MS + 86_400_000, "card_testing"),
        schema.Label("tx2", EVENT_MS, 0, "card2", "term1", EVENT_MS + 86_400_000, ""),
    ]
    produce(kafka_config, topics.labels, [(schema.encode(label), label.card_id, None) for label in labels])
    transaction = schema.Transaction("tx5", EVENT_MS, "card2", 25.0, terminal_id="term1", currency="EUR")
    produce(
        kafka_config,
        topics.fraud,
        [(schema.encode(transaction), "card2", [("score", "0.9"), ("model_version", "v3")])],
    )
    produce(
        kafka_config,
        topics.dead_letter,
        [
            (
                b"{broken",
                "card7",
                [
                    ("error", "not valid JSON"),
                    ("source_topic", topics.transactions),
                    ("source_partition", "1"),
                    ("source_offset", "42"),
                ],
            )
        ],
    )
    console = Console(
        record=True, width=220, height=60, file=io.StringIO(), force_terminal=True, color_system="standard"
    )
    summary = run_tail(
        kafka_config,
        TailOptions(
            ["verdicts", "labels", "fraud", "dead-letter"],
            from_beginning=True,
            follow=False,
            stats=True,
            rows=10,
        ),
        console=console,
    )
    assert (summary.seen, summary.shown, summary.stopped_by) == (11, 11, "end_of_source")
    styled = console.export_text(styles=True, clear=False)
    screen = console.export_text()
    final = screen[screen.rindex("seen") - 200 :]
    for title in ("Verdicts (last 6)", "Labels (last 3)", "Fraud branch (last 1)", "Dead letters (last 1)"):
        assert title in final
    assert "not valid JSON" in final and f"{topics.transactions}[1]@42" in final and "{broken" in final
    assert "stolen_card" in final and "amount_vs_card_mean" in final
    assert "fraud rate 33.33% (2 of 6 verdicts)" in final
    # tx0 flagged+fraud (TP), tx1 legit+fraud (FN), tx2 legit+legit (TN).
    assert "precision 1.000  recall 0.500  (matched 3: TP 1 FP 0 FN 1 TN 1)" in final

    def rows_with(text: str) -> list[str]:
        return [line for line in styled.splitlines() if f" {text} " in re.sub(r"\x1b\[[0-9;]*m", "", line)]

    fraud_rows = rows_with("tx5")  # the verdict and the fraud-branch transaction
    assert len(fraud_rows) >= 2 and all("\x1b[1;31m" in line for line in fraud_rows)
    legit_rows = rows_with("tx4")
    assert legit_rows and not any("\x1b[1;31m" in line for line in legit_rows)
