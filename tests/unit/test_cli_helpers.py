"""What every command shares: throttled status lines, config flags, shared options."""

from __future__ import annotations

from pathlib import Path

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
