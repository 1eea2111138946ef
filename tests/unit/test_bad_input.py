"""Bad input that used to give a traceback, hang or retry: each is one clear line and its exit code."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fraudkit.cli import app
from fraudkit.config import load_config
from fraudkit.data.datasets import load_mapping
from fraudkit.errors import ConfigError
from fraudkit.stream.broker import free_port

runner = CliRunner()

# "Billion laughs" with nested mappings: 9 levels of 9 aliases, 630 bytes that expand to 9**9 nodes.
ALIAS_BOMB = "a: &a {x: 1, y: 2}\n" + "".join(
    f"{chr(98 + level)}: &{chr(98 + level)} "
    + "{"
    + ", ".join(f"k{i}: *{chr(97 + level)}" for i in range(9))
    + "}\n"
    for level in range(9)
)
BINARY = bytes(range(256)) * 4


def invoke(*args: str) -> tuple[int, str, float]:
    started = time.monotonic()
    result = runner.invoke(app, list(args))
    return result.exit_code, result.stderr, time.monotonic() - started


def test_alias_bomb_in_config_is_refused_at_once(tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(ALIAS_BOMB)
    assert len(ALIAS_BOMB) < 1000
    code, stderr, seconds = invoke("config", "show", "--config", str(bomb))
    assert code == 2 and seconds < 5
    assert f"error: invalid YAML in {bomb} line 2: aliases (*name) are not allowed" in stderr


def test_any_alias_in_config_or_mapping_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("detect: &d\n  batch_size: 10\nsink: *d\n")
    with pytest.raises(ConfigError, match=rf"invalid YAML in {config} line 3: aliases"):
        load_config(config, environ={})
    mapping = tmp_path / "m.yaml"
    mapping.write_text(ALIAS_BOMB)
    with pytest.raises(ConfigError, match=rf"invalid YAML in {mapping} line 2: aliases"):
        load_mapping(str(mapping))


def test_binary_config_and_mapping_files(tmp_path: Path) -> None:
    binary = tmp_path / "x.yaml"
    binary.write_bytes(BINARY)
    code, stderr, _ = invoke("config", "show", "--config", str(binary))
    assert code == 2
    assert stderr.strip() == f"error: {binary}: not a UTF-8 YAML file (byte 128 is not UTF-8)"
    with pytest.raises(ConfigError, match=rf"{binary}: not a UTF-8 YAML file"):
        load_mapping(str(binary))
    data = tmp_path / "data.parquet"
    data.write_bytes(b"PAR1")
    code, stderr, _ = invoke(
        "split", "--dataset", str(binary), "--input", str(data), "--train-fraction", "0.5"
    )
    assert code == 2 and f"error: {binary}: not a UTF-8 YAML file" in stderr
    nul = tmp_path / "nul.yaml"
    nul.write_bytes(b"detect:\x00\n")
    code, stderr, _ = invoke("config", "show", "--config", str(nul))
    assert code == 2 and f"invalid YAML in {nul}" in stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["sink", "--batch-size", "1000001"], "sink.batch_size: must be <= 1000000 (command line)"),
        (
            ["generate", "--label-delay", "1e17", "--flush-labels"],
            "generate.label_delay_s: must be <= 31622400 (command line)",
        ),
        (["generate", "--verdict-wait", "1e17"], "generate.verdict_wait_s: must be <= 86400"),
        (["simulate", "--customers", "2000000000"], "simulate.customers: must be <= 10000000 (command line)"),
        (["simulate", "--terminals", "2000000000"], "simulate.terminals: must be <= 10000000 (command line)"),
        (
            ["simulate", "--start-date", "1900-01-01"],
            "simulate.start_date: 1900-01-01 + 90 days is outside the event times readers accept "
            "(2000-01-01 to 2100-01-01) (command line)",
        ),
        (["simulate", "--start-date", "2099-12-01"], "simulate.start_date: 2099-12-01 + 90 days is outside"),
        (["simulate", "--start-date", "someday"], "simulate.start_date: not an ISO date or time: 'someday'"),
        (["detect", "--set", "detect.poll_timeout_s=1e17"], "detect.poll_timeout_s: must be <= 60"),
    ],
)
def test_out_of_range_values_exit_2(args: list[str], message: str) -> None:
    code, stderr, seconds = invoke(*args)
    assert code == 2, stderr
    assert f"error: {message}" in stderr and "Traceback" not in stderr
    assert seconds < 5


@pytest.mark.parametrize(
    ("name", "shown"),
    [
        ("", "''"),
        ("bad topic name!", "'bad topic name!'"),
        (".", "'.'"),
        ("..", "'..'"),
        ("t" * 250, "'" + "t" * 250 + "'"),
        ("caf\u00e9", "'caf\u00e9'"),
    ],
)
def test_topic_names_kafka_rejects_are_config_errors(name: str, shown: str) -> None:
    for key in ("transactions", "labels", "control", "dead_letter"):
        with pytest.raises(ConfigError) as caught:
            load_config(None, {f"topics.{key}": name}, environ={})
        assert str(caught.value) == (
            f"topics.{key}: {shown} is not a Kafka topic name (1 to 249 of a-z A-Z 0-9 . _ -, "
            "not '.' or '..') (command line)"
        )
    assert load_config(None, {"topics.labels": "a.b_c-D9" + "x" * 241}, environ={}).topics.labels


def test_generate_rejects_a_bad_topic_name_before_connecting() -> None:
    code, stderr, seconds = invoke("generate", "--count", "1", "--set", "topics.transactions=bad topic name!")
    assert code == 2 and seconds < 5
    assert "error: topics.transactions: 'bad topic name!' is not a Kafka topic name" in stderr


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        (
            "kafka.producer.no.such.key=1",
            'kafka.producer.no.such.key: No such configuration property: "no.such.key"',
        ),
        (
            "kafka.consumer.no.such.key=1",
            'kafka.consumer.no.such.key: No such configuration property: "no.such.key"',
        ),
        ("kafka.common.acks=banana", 'kafka.common.acks: Invalid value for configuration property "request'),
    ],
)
def test_unknown_librdkafka_setting_is_exit_2_at_once(setting: str, message: str) -> None:
    port = free_port()  # nothing listens: a settings error must not wait for the broker
    for command in (["generate", "--count", "1"], ["detect", "--model", "rules", "--no-retrain", "--quiet"]):
        code, stderr, seconds = invoke(
            *command,
            "--set",
            f"kafka.common.bootstrap.servers=127.0.0.1:{port}",
            "--set",
            "kafka.connect_timeout_s=20",
            "--set",
            setting,
        )
        assert code == 2, (command, stderr)
        assert seconds < 5, (command, seconds)
        assert f"error: {message}" in stderr
