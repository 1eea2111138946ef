"""What every command shares: throttled status lines, config flags, shared options."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from fraudkit.cli.app import Every, load


def test_every_is_due_once_per_interval_starting_one_interval_in() -> None:
    now = [10.0]
    every = Every(5.0, clock=lambda: now[0])
    assert not every.due()
    now[0] = 14.9
    assert not every.due()
    now[0] = 15.0
    assert every.due() and not every.due()
    now[0] = 19.0
    assert not every.due()
    now[0] = 20.0
    assert every.due()


def test_load_takes_path_flags_as_text_and_ignores_unset_flags(tmp_path: Path) -> None:
    cfg = load(None, ["generate.seed=7"], data__path=tmp_path / "x.parquet", generate__seed=None)
    assert cfg.data.path == tmp_path / "x.parquet"
    assert cfg.generate.seed == 7


def test_detect_logs_every_status_it_asks_for_one_per_log_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    # Each log line's rate and p99 must cover the time since the previous line: the loop is asked
    # for one status per log interval and every one is logged (not one status in five).
    from tests.unit.test_textsafe import status
    from typer.testing import CliRunner

    import fraudkit.detect as detect_module
    from fraudkit.cli import app
    from fraudkit.cli.detect import LOG_EVERY_S
    from fraudkit.detect import DetectSummary

    asked: dict[str, Any] = {}

    def fake_run_detect(config: Any, **kwargs: Any) -> DetectSummary:
        asked.update(kwargs)
        for p99 in (11.0, 222.0, 33.0):
            kwargs["on_status"](status(model_version="v1", latency_ms={"p50": 1.0, "p99": p99}))
        return DetectSummary(detector="d1")

    monkeypatch.setattr(detect_module, "run_detect", fake_run_detect)
    result = CliRunner().invoke(app, ["detect", "--quiet", "--no-retrain"])
    assert result.exit_code == 0, result.output
    assert asked["status_interval_s"] == LOG_EVERY_S
    assert [line for line in result.stderr.splitlines() if "p99=" in line and "consumed=" in line] == [
        line for line in result.stderr.splitlines() if "consumed=" in line
    ]
    assert "p99=11ms" in result.stderr and "p99=222ms" in result.stderr and "p99=33ms" in result.stderr
