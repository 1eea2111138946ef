"""The demo's closing summary says first, in plain words, when it did not keep up, and exits 7."""

from __future__ import annotations

from typing import Any

import pytest
from rich.console import Console

from fraudkit.demo import BEHIND_S, DemoState, DemoSummary, _summary, demo_problems
from fraudkit.demo_view import dashboard, summary_view
from fraudkit.errors import IncompleteRun
from fraudkit.generate import GenerateSummary


def summary_of(sent: int, verdicts: int, max_lag: int = 0, rate: float = 1000.0) -> DemoSummary:
    state = DemoState(max_lag=max_lag, max_lag_at_s=80.0 if max_lag else None, first_model="v1")
    state.client = GenerateSummary(
        sent=sent,
        verdicts=verdicts,
        frauds_sent=10,
        confusion={"tp": 6, "fp": 2, "tn": verdicts - 10, "fn": 2},
        latency_ms={"p50": 12.0, "p95": 40.0, "p99": 90.0},
    )
    return _summary(state, None, 200.0, rate)


def rendered(renderable: Any) -> str:
    console = Console(width=120, record=True, color_system=None)
    console.print(renderable)
    return console.export_text()


def test_a_demo_that_kept_up_says_every_transaction_got_its_verdict() -> None:
    summary = summary_of(180_000, 180_000, max_lag=900)
    assert summary.problems == [] and summary.kept_up and summary.missing == 0
    text = rendered(summary_view(summary))
    assert text.splitlines()[0] == "every one of the 180,000 transactions sent got its verdict"
    assert "missing (no verdict)" in text
    summary.raise_if_incomplete()  # nothing to report


def test_missing_verdicts_come_first_in_plain_words_and_exit_7() -> None:
    summary = summary_of(179_740, 77_206)
    assert summary.missing == 102_534
    assert summary.problems == ["102,534 of 179,740 transactions (57.0%) got no verdict before the end"]
    lines = rendered(summary_view(summary)).splitlines()
    assert lines[0] == "THE DEMO DID NOT KEEP UP"
    assert lines[1] == "- 102,534 of 179,740 transactions (57.0%) got no verdict before the end"
    assert "only the transactions that got a verdict" in lines[2]
    with pytest.raises(IncompleteRun, match="102,534 of 179,740") as raised:
        summary.raise_if_incomplete()
    assert raised.value.exit_code == 7


def test_a_backlog_over_the_allowed_seconds_of_traffic_is_falling_behind() -> None:
    assert demo_problems(1000, 1000, int(1000 * BEHIND_S), 1000.0, 10.0) == []
    problems = demo_problems(1000, 1000, 9478, 1000.0, 80.0)
    assert problems == [
        "the detector fell behind: 9,478 transactions waited unread 80s into streaming "
        f"(about 9s of traffic; the demo allows {BEHIND_S:g}s)"
    ]
    summary = summary_of(100_000, 100_000, max_lag=9478)
    assert summary.problems == problems
    assert "9,478 (9.5s of traffic)" in rendered(summary_view(summary))


def test_the_dashboard_renders_whole_before_anything_streams() -> None:
    text = rendered(dashboard(DemoState()))
    assert text.count("fraudkit demo") == 1
    for part in ("client", "detector", "live retraining", "latest fraud verdicts", "waiting for labels"):
        assert part in text


def test_the_demo_command_prints_the_summary_then_exits_7_when_it_did_not_keep_up(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    from typer.testing import CliRunner

    import fraudkit.demo
    from fraudkit.cli import app

    # The pipeline itself is the integration test's; here only what the command does with its result.
    monkeypatch.setattr(fraudkit.demo, "run_demo", lambda config, **kwargs: summary_of(1000, 600))
    result = CliRunner().invoke(app, ["demo", "--workdir", str(tmp_path)])
    assert result.exit_code == 7
    assert result.stdout.splitlines()[0] == "THE DEMO DID NOT KEEP UP"
    assert "transactions sent" in result.stdout
    assert result.stderr.strip() == (
        "error: the demo did not keep up: 400 of 1,000 transactions (40.0%) got no verdict before the end"
    )
    monkeypatch.setattr(fraudkit.demo, "run_demo", lambda config, **kwargs: summary_of(1000, 1000))
    result = CliRunner().invoke(app, ["demo", "--workdir", str(tmp_path), "--json"])
    assert result.exit_code == 0
    assert '"missing":0' in result.stdout and '"problems":[]' in result.stdout


def test_a_retraining_cancelled_at_the_stop_trained_no_model() -> None:
    state = DemoState(first_model="v1")
    state.retrain_events = [
        {"type": "model_published", "version": "v2"},
        {"type": "model_rejected", "version": "v3"},
        {"type": "retrain_cancelled", "reason": "cancelled at stop after 12s"},
    ]
    summary = _summary(state, None, 200.0, 1000.0)
    assert (summary.models_trained, summary.model_versions) == (3, ["v1", "v2"])
    assert "model_published, model_rejected, retrain_cancelled" in rendered(summary_view(summary))
