"""Broker faults: a killed broker ends detect and generate with exit 3 in bounded time, losing nothing.

Each test starts a private broker (the session broker must survive), kills it with SIGKILL while
`fraudkit detect` and `fraudkit generate` run as subprocesses, and times their exits.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import orjson
import pytest
from tests.integration.test_detect import (
    detector_process,
    publish_amount_model,
    read_topic,
    transaction,
    verdicts_by_id,
    wait_for,
    write_config_file,
)

from conftest import make_config
from fraudkit.config import FraudkitConfig
from fraudkit.schema import encode
from fraudkit.stream import kafka
from fraudkit.stream.broker import RunningBroker, start_cluster

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

CONNECT_TIMEOUT_S = 5.0
CLOSE_TIMEOUT_S = 3.0
# Process start-up, a probe in flight and interpreter exit, on a shared two-core machine.
MARGIN_S = 6.0
KILL_ROUNDS = 3


@contextmanager
def private_broker(engine: str) -> Iterator[RunningBroker]:
    """A broker of this test's own, always stopped (and its data removed) at the end."""
    handle = start_cluster(engine, timeout_s=120)
    try:
        yield handle
    finally:
        handle.stop()


def fault_config(tmp_path: Path, broker: RunningBroker, connect_timeout_s: float) -> FraudkitConfig:
    config = make_config(
        tmp_path,
        {
            "kafka.common.bootstrap.servers": broker.bootstrap_servers,
            "kafka.connect_timeout_s": connect_timeout_s,
            "kafka.close_timeout_s": CLOSE_TIMEOUT_S,
        },
    )
    publish_amount_model(config)
    kafka.ensure_topics(config)
    return config


def generator_process(config_path: Path, rate: int = 300) -> subprocess.Popen[str]:
    env = {**os.environ, "FRAUDKIT_CONFIG": str(config_path)}
    command = [sys.executable, "-m", "fraudkit", "generate", "--rate", str(rate), "--no-verdicts", "--json"]
    return subprocess.Popen(
        [*command, "--label-delay", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        text=True,
    )


def verdict_count(config: FraudkitConfig, timeout_s: float = 60.0) -> int:
    """Verdicts on the topic so far (retried while partition leaders are elected after a (re)start)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            watermarks = kafka.high_watermarks(config, config.topics.verdicts)
            return sum(high - low for low, high in watermarks.values())
        except kafka.KafkaException:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.5)


def finish(process: subprocess.Popen[str], timeout_s: float) -> tuple[int, str, float]:
    """Wait for a process to exit: (return code, stderr, seconds it took); kill it if it overruns."""
    started = time.monotonic()
    try:
        _, err = process.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        _, err = process.communicate()
        raise AssertionError(f"still running {timeout_s:g}s later; its stderr: {err[-2000:]}") from None
    return process.returncode, err, time.monotonic() - started


def stop_all(*processes: subprocess.Popen[str] | None) -> None:
    for process in processes:
        if process is not None and process.poll() is None:
            process.kill()
            process.wait(10)


def test_a_killed_broker_ends_detect_and_generate_with_exit_3_and_nothing_is_lost(
    tmp_path: Path, broker_engine: str
) -> None:
    with private_broker(broker_engine) as broker:
        config = fault_config(tmp_path, broker, CONNECT_TIMEOUT_S)
        config_path = write_config_file(config, tmp_path / "config.yaml")
        servers = broker.bootstrap_servers
        for round_number in range(KILL_ROUNDS):  # the hang was intermittent: 2 in 6 tries
            detector = generator = None
            try:
                detector = detector_process(config_path, "--instance-id", f"round-{round_number}")
                generator = generator_process(config_path)
                wanted = verdict_count(config) + 200
                wait_for(lambda: verdict_count(config) >= wanted, 90, "verdicts of this round")  # noqa: B023
                broker.stop_node(0, kill=True)
                killed_at = time.monotonic()
                code, err, _ = finish(detector, CONNECT_TIMEOUT_S + CLOSE_TIMEOUT_S + MARGIN_S)
                detector_s = time.monotonic() - killed_at
                assert code == 3, err
                assert re.search(
                    rf"error: lost Kafka at {servers}: no broker answered for [5-9]s \(last error: ", err
                )
                assert "Traceback" not in err
                assert detector_s <= CONNECT_TIMEOUT_S + CLOSE_TIMEOUT_S + MARGIN_S
                code, err, _ = finish(generator, CONNECT_TIMEOUT_S + CLOSE_TIMEOUT_S + MARGIN_S)
                assert code == 3, err
                assert f"waiting for Kafka at {servers}: " in err
                assert "messages queued, retrying" in err
                assert f"error: lost Kafka at {servers}: no broker answered for" in err
                assert "Traceback" not in err
                print(f"round {round_number}: the detector exited {detector_s:.1f}s after the kill")
            finally:
                stop_all(detector, generator)
            broker.start_node(0, timeout_s=120)
        # Restarted on the same data: whatever reached the broker gets its verdict; nothing is lost.
        survivor = detector_process(config_path, "--until-idle", "5", "--instance-id", "survivor")
        try:
            code, err, _ = finish(survivor, 180)
        finally:
            stop_all(survivor)
        assert code == 0, err
        produced = {
            orjson.loads(m.value())["transaction_id"] for m in read_topic(config, config.topics.transactions)
        }
        verdicts = verdicts_by_id(config)
        assert len(produced) >= KILL_ROUNDS * 200
        assert produced <= set(verdicts), f"{len(produced - set(verdicts))} transactions have no verdict"


def test_sigterm_during_an_outage_ends_detect_and_generate_within_the_close_deadline(
    tmp_path: Path, broker_engine: str
) -> None:
    # A long connect timeout: the processes must leave because of the signal, not give up on Kafka.
    with private_broker(broker_engine) as broker:
        config = fault_config(tmp_path, broker, connect_timeout_s=120)
        config_path = write_config_file(config, tmp_path / "config.yaml")
        detector = generator = None
        try:
            detector = detector_process(config_path, "--instance-id", "sigterm")
            generator = generator_process(config_path, rate=1000)
            wait_for(lambda: verdict_count(config) >= 500, 90, "the first verdicts")
            broker.stop_node(0, kill=True)
            time.sleep(2)  # well inside the outage
            for process in (detector, generator):
                process.send_signal(signal.SIGTERM)
            signalled_at = time.monotonic()
            detector_code, detector_err, _ = finish(detector, CLOSE_TIMEOUT_S + MARGIN_S)
            generator_code, generator_err, _ = finish(generator, CLOSE_TIMEOUT_S + MARGIN_S)
            took = time.monotonic() - signalled_at
        finally:
            stop_all(detector, generator)
        assert took <= CLOSE_TIMEOUT_S + MARGIN_S
        # Outputs in flight at the kill cannot be acknowledged: their offsets stay uncommitted (exit 3).
        assert detector_code in (0, 3), detector_err
        if detector_code == 3:
            assert "not acknowledged within kafka.close_timeout_s=3s while stopping" in detector_err
        assert "Traceback" not in detector_err
        # 1,000 tx/s were queued for 2 s with no broker: the generator cannot deliver them and says so.
        assert generator_code == 3, generator_err
        assert "undelivered to" in generator_err and "stopped while Kafka was unreachable" in generator_err
        assert f"waiting for Kafka at {broker.bootstrap_servers}: " in generator_err
        assert "Traceback" not in generator_err


def test_three_brokers_exactly_once_survives_a_stopped_node_without_loss_or_duplicates(
    tmp_path: Path, broker_engine: str
) -> None:
    from fraudkit.stream.broker import running_cluster

    if broker_engine != "kafka":
        pytest.skip("a three-node cluster needs Apache Kafka")
    total, rate = 6000, 500.0
    with running_cluster("kafka", brokers=3, timeout_s=180) as cluster:
        config = make_config(
            tmp_path,
            {
                "kafka.common.bootstrap.servers": cluster.bootstrap_servers,
                "kafka.connect_timeout_s": 30,
                "topics.replication_factor": 3,
            },
        )
        publish_amount_model(config)
        kafka.ensure_topics(config)
        config_path = write_config_file(config, tmp_path / "config.yaml")
        # The detector's stderr goes to a file: the waits below can show it while it still runs.
        err_path = tmp_path / "detector.err"
        err_file = err_path.open("w")
        detector = detector_process(config_path, "--exactly-once", "--instance-id", "eos-3", stderr=err_file)

        def detector_said() -> str:
            return err_path.read_text(errors="replace")[-3000:]

        produced: list[str] = []
        try:
            # An idempotent feeder: a retried produce during the failover must not duplicate an input.
            producer = kafka.make_producer(config, **{"enable.idempotence": True})
            started = time.monotonic()
            stopped_at = restarted_at = None

            def rejoin() -> None:
                nonlocal restarted_at
                cluster.start_node(1, timeout_s=120)
                restarted_at = time.monotonic() - started

            restart = threading.Thread(target=rejoin)
            for index in range(total):
                delay = started + index / rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                tx = transaction(index)
                kafka.produce(producer, config.topics.transactions, encode(tx), key=tx.card_id)
                producer.poll(0)
                produced.append(tx.transaction_id)
                if index == total // 4:
                    cluster.stop_node(1, kill=True)  # a third of the way: mid-stream
                    stopped_at = time.monotonic() - started
                elif index == total // 2:
                    assert detector.poll() is None, detector_said()
                    # Restarted beside the stream (a node takes seconds to rejoin): producing goes on.
                    restart.start()
            kafka.flush(producer, 60)
            fed_s = time.monotonic() - started
            restart.join(150)
            assert restarted_at is not None, "node 2 did not come back"
            answered = 0
            deadline = time.monotonic() + 120
            while answered < total and time.monotonic() < deadline:
                assert detector.poll() is None, f"the detector exited: {detector_said()}"
                answered = len(verdicts_by_id(config, "read_committed"))
                time.sleep(0.5)
            assert answered >= total, (
                f"{answered} of {total} inputs had a committed verdict 120 s after feeding ended "
                f"(node 1 stopped at {stopped_at:.1f}s, back at {restarted_at:.1f}s); "
                f"the detector said: {detector_said()}"
            )
            detector.send_signal(signal.SIGTERM)
            code, _, _ = finish(detector, 60)
        finally:
            stop_all(detector)
            err_file.close()
        assert code == 0, detector_said()
        print(f"node 2 stopped at {stopped_at:.1f}s, back at {restarted_at:.1f}s; feeding took {fed_s:.1f}s")
        verdicts = verdicts_by_id(config, "read_committed")
        assert set(verdicts) == set(produced)
        assert max(verdicts.values()) == 1, f"{sum(c - 1 for c in verdicts.values())} duplicated verdicts"
        for branch in (config.topics.fraud, config.topics.legit):
            ids = [
                orjson.loads(m.value())["transaction_id"]
                for m in read_topic(config, branch, "read_committed")
            ]
            assert len(ids) == len(set(ids)), f"duplicates on {branch}"
        assert len(produced) == total
