"""The broker state file and the pinned Kafka jars are validated, not trusted."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from fraudkit.broker import (
    KAFKA_VERSION,
    BrokerManager,
    expected_jars,
    kafka_libs,
    resolve_engine,
    verify_jars,
)
from fraudkit.errors import BrokerError


def record(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "engine": "kafka",
        "ports": [9092],
        "processes": [{"pid": 4242, "argv": ["java", "kafka.Kafka"], "start_ticks": 10}],
        "started_at": 1.0,
    }
    base.update(changes)
    return base


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"engine": "redpanda"}, "engine"),
        ({"ports": [0]}, "ports"),
        ({"ports": [True]}, "ports"),
        ({"ports": [1, 2, 3, 4]}, "ports"),
        ({"processes": [{"pid": -1, "argv": ["java"], "start_ticks": 1}]}, "pid"),
        ({"processes": [{"pid": 0, "argv": ["java"], "start_ticks": 1}]}, "pid"),
        ({"processes": [{"pid": 1, "argv": ["java"], "start_ticks": 1}]}, "pid"),
        ({"processes": [{"pid": True, "argv": ["java"], "start_ticks": 1}]}, "pid"),
        ({"processes": [{"pid": 4242.0, "argv": ["java"], "start_ticks": 1}]}, "pid"),
        ({"processes": [{"pid": 4242, "argv": [], "start_ticks": 1}]}, "argv"),
        ({"processes": [{"pid": 4242, "argv": "java", "start_ticks": 1}]}, "argv"),
        ({"processes": [{"pid": 4242, "argv": ["java"], "start_ticks": -3}]}, "start_ticks"),
        ({"started_at": "yesterday"}, "started_at"),
    ],
)
def test_a_state_file_with_a_bad_field_is_refused(
    tmp_path: Path, changes: dict[str, Any], field: str
) -> None:
    (tmp_path / "broker.json").write_text(json.dumps(record(**changes)))
    with pytest.raises(BrokerError, match=rf"bad {field}\); refusing to signal anything"):
        BrokerManager(tmp_path).read_state()


def test_a_state_file_that_is_not_json_is_refused(tmp_path: Path) -> None:
    (tmp_path / "broker.json").write_bytes(b"\x00\xff not json")
    with pytest.raises(BrokerError, match="is not a broker record fraudkit wrote"):
        BrokerManager(tmp_path).read_state()


def test_a_valid_record_of_a_dead_process_is_not_running(tmp_path: Path) -> None:
    (tmp_path / "broker.json").write_text(json.dumps(record()))
    manager = BrokerManager(tmp_path)
    state = manager.read_state()
    assert state is not None and state.pid == 4242 and state.bootstrap_servers == "127.0.0.1:9092"
    assert not manager.is_ours(state, 0)  # start ticks 10 are not this pid's (if it even exists)
    assert manager.status() is None
    assert not (tmp_path / "broker.json").exists()


def test_jar_verification_names_missing_extra_and_altered_files(tmp_path: Path) -> None:
    pinned = expected_jars()
    assert f"kafka_2.13-{KAFKA_VERSION}.jar" in pinned and len(pinned) > 20
    libs = kafka_libs(tmp_path)
    libs.mkdir(parents=True)
    first = sorted(pinned)[0]
    (libs / first).write_bytes(b"not the pinned jar")
    (libs / "evil.jar").write_bytes(b"")
    problems = verify_jars(libs)
    assert f"checksum mismatch for {first}" in problems
    assert "unexpected evil.jar" in problems
    assert f"missing {sorted(pinned)[1]}" in problems


def test_auto_engine_falls_back_to_tansu_without_jars(tmp_path: Path) -> None:
    assert resolve_engine("auto", tmp_path / "empty-cache") == "tansu"
    assert resolve_engine("kafka", tmp_path) == "kafka"
    with pytest.raises(BrokerError, match="unknown broker engine"):
        resolve_engine("redpanda", tmp_path)
