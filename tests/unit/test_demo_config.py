"""The demo's settings: its fresh topics keep the local profile's retention, not a production week."""

from __future__ import annotations

from pathlib import Path

from fraudkit.config import FraudkitConfig, load_config
from fraudkit.demo import demo_config


def test_the_demo_keeps_its_topics_an_hour_and_labels_a_day(tmp_path: Path) -> None:
    production = FraudkitConfig()
    assert production.topics.retention_ms == 7 * 86_400_000  # the default the demo must not inherit
    settings = demo_config(production, tmp_path, seed=1, rate=100.0)
    assert settings.topics.retention_ms == 3_600_000
    assert settings.topics.labels_retention_ms == 86_400_000
    assert settings.topics.changelog_retention_ms == production.topics.changelog_retention_ms


def test_the_demo_keeps_a_shorter_retention_it_was_given(tmp_path: Path) -> None:
    short = load_config(
        None, {"topics.retention_ms": 60_000, "topics.labels_retention_ms": 120_000}, environ={}
    )
    settings = demo_config(short, tmp_path, seed=1, rate=100.0)
    assert (settings.topics.retention_ms, settings.topics.labels_retention_ms) == (60_000, 120_000)


def test_the_local_profile_keeps_topics_an_hour() -> None:
    local = load_config(Path("configs/local.yaml"), environ={})
    assert local.topics.retention_ms == 3_600_000
    assert local.topics.labels_retention_ms == 86_400_000
