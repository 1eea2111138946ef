"""The CLI error boundary: one clear line on stderr and the error class's exit code."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fraudkit.cli import app
from fraudkit.errors import BrokerError, DataError, FraudkitError, ModelError

runner = CliRunner()


def test_help_lists_commands() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("broker", "config"):
        assert command in result.output


def test_version() -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.output.startswith("fraudkit ")


def test_config_error_exit_2(tmp_path: Path) -> None:
    bad = tmp_path / "x.yaml"
    bad.write_text("detect:\n  batch_size: 0\n")
    result = runner.invoke(app, ["config", "show", "--config", str(bad)])
    assert result.exit_code == 2
    assert f"error: detect.batch_size: must be > 0 ({bad})" in result.stderr
    assert "Traceback" not in result.stderr


def test_broker_status_not_running_exit_3(tmp_path: Path) -> None:
    result = runner.invoke(app, ["broker", "status", "--set", f"broker.state_dir={tmp_path}"])
    assert result.exit_code == 3
    assert "not running" in result.output


@pytest.mark.parametrize(
    ("error", "code"),
    [(ModelError("bad model"), 4), (DataError("bad data"), 5), (BrokerError("x"), 3)],
)
def test_error_classes_map_to_exit_codes(
    error: FraudkitError, code: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    import fraudkit.cli.configcmd as configcmd

    def boom(*args: object, **kwargs: object) -> str:
        raise error

    monkeypatch.setattr(configcmd, "dump_yaml", boom)
    result = runner.invoke(app, ["config", "show"])
    assert result.exit_code == code
    assert result.stderr.strip() == f"error: {error}"
    traced = runner.invoke(app, ["--traceback", "config", "show"])
    assert traced.exit_code == code
    assert "Traceback" in traced.stderr


def test_unreachable_broker_gives_exit_3_quickly() -> None:
    from fraudkit.config import load_config
    from fraudkit.stream.broker import free_port
    from fraudkit.stream.kafka import wait_for_broker

    port = free_port()
    config = load_config(None, {"kafka.common.bootstrap.servers": f"127.0.0.1:{port}"}, environ={})
    started = time.monotonic()
    with pytest.raises(BrokerError, match=rf"cannot reach Kafka at 127.0.0.1:{port} \(") as error:
        wait_for_broker(config, timeout_s=1.5)
    assert time.monotonic() - started < 10
    # The librdkafka cause alone, for callers that word their own message.
    reason = error.value.reason
    assert reason and "cannot reach Kafka" not in reason and "gave up after" not in reason
    assert str(error.value) == f"cannot reach Kafka at 127.0.0.1:{port} ({reason}; gave up after 1.5s)"


def test_broker_error_reason_defaults_to_the_message() -> None:
    assert BrokerError("topic x is gone").reason == "topic x is gone"
    error = BrokerError("cannot reach Kafka at h:9092 (Connection refused)", reason="Connection refused")
    assert (str(error), error.reason, error.exit_code) == (
        "cannot reach Kafka at h:9092 (Connection refused)",
        "Connection refused",
        3,
    )
