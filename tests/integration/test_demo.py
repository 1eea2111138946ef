"""`fraudkit demo` end to end on its own local broker (Apache Kafka, and Tansu), with a small world."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import fraudkit.demo as demo
from fraudkit.config import load_config
from fraudkit.stream.broker import free_port, port_in_use

pytestmark = [pytest.mark.kafka, pytest.mark.spark, pytest.mark.slow]

# Streaming lasts the set duration, then goes on until a live retraining is announced, at most this long.
MAX_STREAMING_S = 420
# The busy loop of the `busy_core` fixture ends by itself after this long, whatever happens to the test.
BUSY_LIMIT_S = 900


@pytest.fixture
def busy_core() -> Iterator[subprocess.Popen[bytes]]:
    """Another process keeping one core busy for the whole test (the machine is not the demo's alone)."""
    loop = f"import time\nend = time.monotonic() + {BUSY_LIMIT_S}\nwhile time.monotonic() < end: pass"
    process = subprocess.Popen([sys.executable, "-c", loop])
    try:
        yield process
    finally:
        process.kill()
        process.wait(10)


def orphan_brokers(port: int) -> list[str]:
    """Broker processes of a stopped demo: Tansu on the port, or a Kafka node whose config is gone."""
    found = subprocess.run(["pgrep", "-f", f"tcp://127.0.0.1:{port}"], capture_output=True, text=True)
    orphans = found.stdout.split()
    kafka = subprocess.run(["pgrep", "-f", "kafka.Kafka"], capture_output=True, text=True)
    for pid in kafka.stdout.split():
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        properties = [a.decode() for a in argv if a.endswith(b"server.properties")]
        if properties and not Path(properties[-1]).exists():
            orphans.append(pid)
    return orphans


@pytest.mark.tansu
def test_demo_runs_the_whole_pipeline_and_leaves_nothing_behind(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    broker_engine: str,
    busy_core: subprocess.Popen[bytes],
) -> None:
    monkeypatch.setattr(demo, "DEMO_CUSTOMERS", 300)
    monkeypatch.setattr(demo, "DEMO_TERMINALS", 600)
    monkeypatch.setattr(demo, "DEMO_DAYS", 40)
    port = free_port()
    config = load_config(
        None,
        {
            # nothing answers here, so the demo starts (and must stop) its own broker on broker.port
            "kafka.common.bootstrap.servers": f"127.0.0.1:{port}",
            "broker.port": port,
            "broker.engine": broker_engine,
            "demo.duration_s": 45,
            "demo.rate": 600,
            "demo.workdir": str(tmp_path),
            "train.epochs": 3,
            "retrain.every_labels": 400,
        },
        environ={},
    )
    updates: list[str] = []
    labels_seen: list[int] = []

    def on_update(state: demo.DemoState) -> None:
        updates.append(state.stage)
        if state.detector is not None:
            labels_seen.append(state.detector.labels)

    # Not wall-clock luck: streaming goes on until the first live retraining is announced.
    summary = demo.run_demo(
        config,
        on_update=on_update,
        until=lambda state: bool(state.retrain_events),
        max_streaming_s=MAX_STREAMING_S,
    )

    assert busy_core.poll() is None, "the busy loop ended before the demo did"
    assert labels_seen and max(labels_seen) >= 400, "the detector counted too few labels to retrain"
    assert summary.transactions >= 45 * 600 * 0.8
    assert summary.sent == summary.transactions
    assert summary.verdicts + summary.missing == summary.sent
    assert summary.missing == 0, summary.problems
    assert summary.problems == []
    assert summary.caught + summary.missed == summary.frauds_sent > 0
    assert summary.caught > 0
    assert summary.latency_ms["p50"] is not None
    assert summary.model_versions[0] == "v1"
    assert summary.retrains, "no live retraining outcome within the demo"
    assert {event["type"] for event in summary.retrains} <= {
        "model_published",
        "model_rejected",
        "retrain_failed",
        "retrain_cancelled",
    }
    assert any("training the first model" in stage for stage in updates)
    assert summary.bootstrap == f"127.0.0.1:{port}"
    assert summary.broker_engine.startswith("Apache Kafka 4.1.1" if broker_engine == "kafka" else "Tansu")
    assert not port_in_use(port), "the demo left its broker running"
    assert orphan_brokers(port) == []
    assert (next(tmp_path.glob("run-*")) / "models" / "v1" / "model.safetensors").is_file()
