"""Shared fixtures: one local broker (Apache Kafka, or Tansu) and one local Spark session per test run."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fraudkit.config import FraudkitConfig, load_config

BROKER_ENV = "FRAUDKIT_TEST_BROKER"


def main_engine() -> str:
    """The engine every kafka-marked test runs on: Apache Kafka, unless $FRAUDKIT_TEST_BROKER=tansu."""
    engine = os.environ.get(BROKER_ENV, "kafka")
    if engine not in ("kafka", "tansu"):
        raise pytest.UsageError(f"{BROKER_ENV} must be kafka or tansu, not {engine!r}")
    if engine == "tansu" and os.environ.get("CI", "").lower() == "true":
        raise pytest.UsageError(f"CI runs the integration suite on Apache Kafka; unset {BROKER_ENV}")
    return engine


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Every broker test runs on the main engine; those marked `tansu` also on Tansu (smoke subset)."""
    if "broker_engine" not in metafunc.fixturenames:
        return
    engines = [main_engine()]
    if metafunc.definition.get_closest_marker("tansu") and "tansu" not in engines:
        engines.append("tansu")
    metafunc.parametrize("broker_engine", engines, indirect=True, scope="session")


@pytest.fixture(scope="session")
def broker_engine(request: pytest.FixtureRequest) -> str:
    """The broker engine of this test's session broker: kafka or tansu."""
    return str(request.param)


@pytest.fixture(scope="session")
def kafka_bootstrap(broker_engine: str) -> Iterator[str]:
    """A real broker (Apache Kafka in KRaft mode, or Tansu) on a free port for the whole session."""
    from fraudkit.errors import BrokerError
    from fraudkit.stream.broker import default_cache_dir, install_kafka, running_broker

    if broker_engine == "kafka":
        try:
            install_kafka(default_cache_dir())
        except BrokerError as exc:
            pytest.fail(f"cannot install Apache Kafka for the tests ({exc}); or set {BROKER_ENV}=tansu")
    with running_broker(engine=broker_engine, timeout_s=120) as bootstrap:
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
        "retrain.feature_log_url": str(tmp_path / "feature-log"),
        "state.snapshot_url": str(tmp_path / "state"),
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
    """An isolated config pointing at the session's broker, with fresh topics."""
    return make_config(tmp_path, {"kafka.common.bootstrap.servers": kafka_bootstrap})


@pytest.fixture(scope="session")
def spark() -> Any:
    """One local Spark session shared by every Spark test."""
    from fraudkit.config import SparkConfig
    from fraudkit.data.spark import spark_session

    session = spark_session(SparkConfig(master="local[2]", driver_memory="2g", shuffle_partitions=4))
    yield session
    session.stop()


POSTGRES_URL_ENV = "FRAUDKIT_TEST_POSTGRES_URL"


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A real PostgreSQL: $FRAUDKIT_TEST_POSTGRES_URL, else a server this session starts and stops.

    Fails (never skips) under CI=true when no server can be had.
    """
    import psycopg

    from fraudkit.config import mask_url
    from fraudkit.errors import DatabaseError

    in_ci = os.environ.get("CI", "").lower() == "true"
    url = os.environ.get(POSTGRES_URL_ENV)
    if url:
        try:
            psycopg.connect(url, connect_timeout=5).close()
        except psycopg.Error as exc:
            message = f"PostgreSQL at {mask_url(url)} ({POSTGRES_URL_ENV}) is unreachable ({exc})"
            if in_ci:
                pytest.fail(message)
            pytest.skip(message)
        yield url
        return
    from fraudkit.storage.localpg import running_postgres

    try:
        server = running_postgres()
        started = server.__enter__()
    except DatabaseError as exc:
        message = f"cannot start a local PostgreSQL ({exc}); set {POSTGRES_URL_ENV}"
        if in_ci:
            pytest.fail(message)
        pytest.skip(message)
    try:
        yield started
    finally:
        server.__exit__(None, None, None)
