"""`fraudkit generate` and `fraudkit sink` as Prometheus and Kubernetes see them, on the real broker.

Each runs as its own process with --metrics-port: /healthz answers while it works, /readyz turns
200 once it produces (generate) or owns partitions (sink), and its counters move and end at the
figures its JSON summary prints.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from tests.integration.test_observability import get, scrape, value, wait_for, write_config_file
from tests.integration.test_sink import produce_verdicts

from fraudkit.config import FraudkitConfig
from fraudkit.stream import kafka
from fraudkit.stream.broker import free_port

pytestmark = pytest.mark.kafka


def start(config_path: Path, port: int, *arguments: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "fraudkit", *arguments, "--metrics-port", str(port), "--log-format", "json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "FRAUDKIT_CONFIG": str(config_path)},
        text=True,
    )


def answers(url: str, path: str, status: int) -> bool:
    try:
        return get(f"{url}{path}")[0] == status
    except OSError:
        return False


def finish(process: subprocess.Popen[str], timeout_s: float) -> tuple[str, str]:
    try:
        return process.communicate(timeout=timeout_s)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate(10)


def test_generate_serves_probes_and_counters_that_end_at_its_summary(
    kafka_config: FraudkitConfig, tmp_path: Path
) -> None:
    kafka.ensure_topics(kafka_config)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    process = start(
        write_config_file(kafka_config, tmp_path / "config.yaml"),
        port,
        "generate",
        "--count",
        "3000",
        "--rate",
        "300",
        "--label-delay",
        "0",
        "--verdict-wait",
        "0.5",
        "--json",
    )
    try:
        wait_for(lambda: answers(url, "/readyz", 200), 60, "generate's /readyz while it produces")
        assert answers(url, "/healthz", 200)
        first = value(scrape(url), "fraudkit_generate_sent_total") or 0.0
        wait_for(
            lambda: (value(scrape(url), "fraudkit_generate_sent_total") or 0.0) >= first + 300,
            30,
            "the sent counter to move",
        )
        series = scrape(url)
        sent = value(series, "fraudkit_generate_sent_total")
        assert sent is not None and 0 < sent < 3000
        # No detector runs here: every transaction sent is still waiting for its verdict.
        assert value(series, "fraudkit_generate_pending_verdicts") == sent
        assert value(series, "fraudkit_generate_verdicts_received_total") == 0
        assert value(series, "fraudkit_build_info", component="generate") == 1
    finally:
        stdout, stderr = finish(process, 90)
    assert process.returncode == 0, stderr
    summary = json.loads(stdout)
    assert summary["sent"] == 3000 and summary["labels_sent"] == 3000
    assert all(json.loads(line)["event"] for line in stderr.splitlines())  # JSON logs, line by line


def test_sink_is_ready_once_assigned_and_counts_what_it_committed(
    kafka_config: FraudkitConfig, tmp_path: Path
) -> None:
    config = kafka_config.model_copy(deep=True)
    config.sink.url = f"sqlite:///{tmp_path / 'sink.db'}"
    config.sink.batch_size = 500
    kafka.ensure_topics(config, [config.topics.verdicts, config.topics.labels])
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    process = start(
        write_config_file(config, tmp_path / "config.yaml"), port, "sink", "--until-idle", "6", "--json"
    )
    try:
        wait_for(lambda: answers(url, "/readyz", 200), 60, "the sink's /readyz after its assignment")
        assert value(scrape(url), "fraudkit_sink_verdicts_total") in (None, 0)
        produce_verdicts(config, list(range(2000)), {i: int(i % 10 == 0) for i in range(0, 2000, 4)})
        wait_for(
            lambda: (
                value(scrape(url), "fraudkit_sink_verdicts_total") == 2000
                and value(scrape(url), "fraudkit_sink_labels_total") == 500
            ),
            60,
            "2000 verdicts and 500 labels counted",
        )
        series = scrape(url)
        assert value(series, "fraudkit_sink_rows_inserted_total") == 2000
        assert value(series, "fraudkit_sink_duplicates_total") == 0
        assert (value(series, "fraudkit_sink_batches_total") or 0) >= 4
        assert (value(series, "fraudkit_sink_last_batch_timestamp_seconds") or 0) > 1.7e9
    finally:
        stdout, stderr = finish(process, 90)
    assert process.returncode == 0, stderr
    summary = json.loads(stdout)
    assert summary["verdicts"] == 2000 and summary["inserted"] == 2000 and summary["labels"] == 500
