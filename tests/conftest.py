"""Shared fixtures: one embedded broker and one local Spark session for the whole test run."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fraudkit.config import FraudkitConfig, load_config


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """A real Tansu broker on a free port for the whole session."""
    from fraudkit.broker import running_broker

    with running_broker() as bootstrap:
        yield bootstrap


def make_config(tmp_path: Path, overrides: dict[str, Any] | None = None) -> FraudkitConfig:
    """A config isolated in tmp_path, with uuid-named topics and groups, from defaults + overrides."""
    suffix = uuid.uuid4().hex[:10]
    base: dict[str, Any] = {
        "topics.transactions": f"tx-{suffix}",
        "topics.legit": f"tx-{suffix}.legit",
        "topics.fraud": f"tx-{suffix}.fraud",
        "topics.verdicts": f"verdicts-{suffix}",
        "topics.labels": f"labels-{suffix}",
        "topics.dead_letter": f"tx-{suffix}.dead-letter",
        "topics.control": f"control-{suffix}",
        "topics.transactions_partitions": 3,
        "topics.partitions": 2,
        "broker.state_dir": str(tmp_path / "broker"),
        "registry.path": str(tmp_path / "models"),
        "retrain.buffer_path": str(tmp_path / "labels"),
        "detect.group_id": f"detect-{suffix}",
        "detect.transactional_id": f"detect-{suffix}",
        "sink.group_id": f"sink-{suffix}",
        "generate.verdict_group_id": f"client-{suffix}",
        "kafka.connect_timeout_s": 10,
    }
    base.update(overrides or {})
    return load_config(None, base, environ={})


@pytest.fixture
def config(tmp_path: Path) -> FraudkitConfig:
    """An isolated config without a broker address of its own (unit tests)."""
    return make_config(tmp_path)


@pytest.fixture
def kafka_config(kafka_bootstrap: str, tmp_path: Path) -> FraudkitConfig:
    """An isolated config pointing at the session's embedded broker, with fresh topics."""
    return make_config(tmp_path, {"kafka.common.bootstrap.servers": kafka_bootstrap})


@pytest.fixture(scope="session")
def spark() -> Any:
    """One local Spark session shared by every Spark test."""
    from fraudkit.config import SparkConfig
    from fraudkit.spark import spark_session

    session = spark_session(SparkConfig(master="local[2]", driver_memory="2g", shuffle_partitions=4))
    yield session
    session.stop()


POSTGRES_URL_ENV = "FRAUDKIT_TEST_POSTGRES_URL"
DEFAULT_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """URL of the test PostgreSQL ($FRAUDKIT_TEST_POSTGRES_URL); fails under CI=true if unreachable."""
    import os

    import psycopg

    url = os.environ.get(POSTGRES_URL_ENV, DEFAULT_POSTGRES_URL)
    try:
        psycopg.connect(url, connect_timeout=5).close()
    except psycopg.Error as exc:
        from fraudkit.config import mask_url

        message = f"PostgreSQL at {mask_url(url)} is unreachable ({exc}); set {POSTGRES_URL_ENV}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return url
