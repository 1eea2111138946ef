"""Terminal escapes and rich markup from outside come out escaped on every path that shows them."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console
from typer.testing import CliRunner

from fraudkit.cli import app
from fraudkit.textsafe import for_terminal, printable

runner = CliRunner()
ESCAPES = "\x1b[31mEVIL\x1b]0;title\x07"
ESCAPED = "\\x1b[31mEVIL\\x1b]0;title\\x07"
MARKUP = "[bold red]x[/]"


def assert_escaped(output: str) -> None:
    assert "\x1b" not in output and "\x07" not in output
    assert ESCAPED in output
    assert MARKUP in output  # shown as typed, not interpreted


def render(renderable: Any, width: int = 400) -> str:
    buffer = io.StringIO()
    Console(file=buffer, width=width, color_system=None, force_terminal=False).print(renderable)
    return buffer.getvalue()


def test_printable_and_for_terminal() -> None:
    assert printable(ESCAPES) == ESCAPED
    assert printable("a\x9bb\u202ec\u2028") == "a\\x9bb\\u202ec\\u2028"
    assert printable("x" * 50, limit=10) == "x" * 9 + "…"
    assert printable(None) == "None"
    assert for_terminal(MARKUP) == "\\[bold red]x\\[/]"
    assert for_terminal(ESCAPES) == ESCAPED
    assert render(for_terminal(MARKUP + ESCAPES)).strip() == MARKUP + ESCAPED


# -- report -------------------------------------------------------------------------------------


def test_report_escapes_country_model_and_ids(tmp_path: Path) -> None:
    from tests.unit.storage.test_sink import verdict

    from fraudkit.storage.database import open_database
    from fraudkit.storage.sink import verdict_row

    url = f"sqlite:///{tmp_path / 'sink.db'}"
    db = open_database(url, "fraud_predictions", "fraud_labels")
    db.ensure_schema()
    evil = ESCAPES + MARKUP
    db.write_batch(
        [verdict_row(verdict(1, 0.9, country=evil, model_version=evil, card_id=evil, terminal_id=evil))], []
    )
    db.close()
    from fraudkit.cli.app import console

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(console, "width", 400)
        result = runner.invoke(app, ["report", "--url", url])
    assert result.exit_code == 0, result.output
    assert_escaped(result.output)
    assert result.output.count(ESCAPED) >= 4  # country, model, card, terminal


# -- detector log and panel ---------------------------------------------------------------------


def status(**overrides: Any) -> Any:
    from fraudkit.detect.status import DetectStatus, QualityFigures

    fields: dict[str, Any] = {
        "detector": "d1",
        "elapsed_s": 1.0,
        "consumed": 1,
        "verdicts": 1,
        "fraud": 0,
        "dead_letters": 0,
        "rate_per_s": 1.0,
        "lag": 0,
        "batch_ms": 1.0,
        "latency_ms": {},
        "model_version": ESCAPES + MARKUP,
        "model_swaps": 0,
        "retrains": 0,
        "labels": 0,
        "quality": {ESCAPES + MARKUP: QualityFigures(1, 0, 0, None, None, None)},
        "partitions": [0],
        "cards": 1,
        "exactly_once": False,
        "notes": [f"retraining: {ESCAPES}{MARKUP} published"],
    }
    fields.update(overrides)
    return DetectStatus(**fields)


def test_detector_panel_escapes_control_topic_fields() -> None:
    from fraudkit.detect.status import render_panel

    output = render(render_panel(status()))
    assert_escaped(output)
    assert output.count(ESCAPED) == 3  # model row, quality row, note


def test_detector_log_line_escapes_the_model_version() -> None:
    from fraudkit.detect.status import format_log_line

    line = format_log_line(status())
    assert "\x1b" not in line and ESCAPED in line


def test_detect_cli_log_and_summary_escape(monkeypatch: pytest.MonkeyPatch) -> None:
    import fraudkit.detect as detect_module
    from fraudkit.cli.app import console, err_console
    from fraudkit.detect import DetectSummary

    def fake_run_detect(config: Any, **kwargs: Any) -> DetectSummary:
        kwargs["on_log"](f"model {ESCAPES}{MARKUP} (announced by {ESCAPES}) loaded")
        return DetectSummary(
            detector="d1",
            model_version=ESCAPES + MARKUP,
            stopped_because=MARKUP,
            last_retrain={"summary": ESCAPES + MARKUP},
        )

    monkeypatch.setattr(detect_module, "run_detect", fake_run_detect)
    monkeypatch.setattr(console, "width", 400)
    monkeypatch.setattr(err_console, "width", 400)
    result = runner.invoke(app, ["detect", "--quiet", "--no-retrain"])
    assert result.exit_code == 0, result.output
    assert_escaped(result.stderr)
    assert_escaped(result.stdout)
    assert result.stdout.count(ESCAPED) == 2 and result.stdout.count(MARKUP) == 3


# -- models list / show -------------------------------------------------------------------------


def test_models_list_and_show_escape_manifest_fields(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.unit.model.test_registry import publish

    from fraudkit.cli.app import console
    from fraudkit.model.registry import Registry

    publish(Registry(tmp_path), trainer=ESCAPES + MARKUP)
    monkeypatch.setattr(console, "width", 400)
    listed = runner.invoke(app, ["models", "list", "--set", f"registry.path={tmp_path}"])
    assert listed.exit_code == 0, listed.output
    assert_escaped(listed.output)
    shown = runner.invoke(app, ["models", "show", "v1", "--set", f"registry.path={tmp_path}"])
    assert shown.exit_code == 0, shown.output
    assert "\x1b" not in shown.output and "\\u001b[31mEVIL" in shown.output and MARKUP in shown.output


# -- the error boundary and the demo dashboard --------------------------------------------------


def test_error_lines_escape_controls(monkeypatch: pytest.MonkeyPatch) -> None:
    from fraudkit.cli import configcmd
    from fraudkit.errors import DataError

    def boom(*args: object, **kwargs: object) -> str:
        raise DataError(f"bad value {ESCAPES}{MARKUP}")

    monkeypatch.setattr(configcmd, "dump_yaml", boom)
    result = runner.invoke(app, ["config", "show"])
    assert result.exit_code == 5
    assert_escaped(result.stderr)


def test_demo_tables_escape_message_fields() -> None:
    from tests.unit.storage.test_sink import verdict

    from fraudkit.demo import DemoState
    from fraudkit.demo_view import recent_frauds_table, retrain_table

    state = DemoState()
    state.recent_frauds.append(verdict(1, 0.9, country=ESCAPES + MARKUP, model_version=ESCAPES))
    state.retrain_events.append(
        {"type": "model_published", "version": ESCAPES, "metrics": [1], "metric": [2]}
    )
    output = render(recent_frauds_table(state)) + render(retrain_table(state))
    assert_escaped(output)
