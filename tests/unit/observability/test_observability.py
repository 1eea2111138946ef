"""Metrics exposition, probes, JSON logs and the PSI drift monitor (no broker)."""

from __future__ import annotations

import io
import json
import urllib.error
import urllib.request
from types import SimpleNamespace
from typing import Any

import numpy as np
import orjson
import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from fraudkit.config import DriftConfig, FraudkitConfig
from fraudkit.detect import DetectSummary
from fraudkit.detect.status import DetectStatus, QualityFigures, format_log_line
from fraudkit.latency import LatencyHistogram
from fraudkit.observability import prometheus as prom
from fraudkit.observability.detect_telemetry import DetectTelemetry, dead_letter_reason
from fraudkit.observability.drift import DriftMonitor, build_reference, monitor_for, psi
from fraudkit.observability.health import Health
from fraudkit.observability.logs import EventLog, classify
from fraudkit.observability.server import ObservabilityServer
from fraudkit.stream.broker import free_port


def scrape(registry: Any) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Series name -> [(labels, value)] of a registry's exposition."""
    series: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for sample in family.samples:
            series.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
    return series


# -- drift ----------------------------------------------------------------------------------------


def test_reference_bins_are_quantiles_with_training_shares() -> None:
    rng = np.random.default_rng(1)
    X = np.column_stack([rng.normal(size=10_000), np.zeros(10_000)])
    reference = build_reference(X, ["normal", "constant"], rng.uniform(size=10_000), bins=10)
    normal = reference["features"]["normal"]
    assert len(normal["edges"]) == 9
    assert normal["proportions"] == pytest.approx([0.1] * 10, abs=0.002)
    # A constant feature has one edge and all rows in the first bin.
    assert reference["features"]["constant"] == {"edges": [0.0], "proportions": [1.0, 0.0]}
    assert sum(reference["score"]["proportions"]) == pytest.approx(1.0)
    assert reference["rows"] == 10_000 and reference["format"] == 1


def test_psi_is_zero_for_equal_shares_and_grows_with_a_shift() -> None:
    assert psi(np.array([0.5, 0.5]), np.array([0.5, 0.5])) == pytest.approx(0.0)
    # (0.8-0.5)ln(0.8/0.5) + (0.2-0.5)ln(0.2/0.5)
    assert psi(np.array([0.5, 0.5]), np.array([0.8, 0.2])) == pytest.approx(
        0.3 * np.log(1.6) + 0.3 * np.log(2.5)
    )


def shifted_monitor(window: int = 2000) -> tuple[DriftMonitor, np.random.Generator]:
    rng = np.random.default_rng(7)
    train = np.column_stack([rng.normal(size=20_000), rng.exponential(size=20_000)])
    reference = build_reference(train, ["card_amount_ratio_168h", "amount"], rng.uniform(size=20_000), 10)
    monitor = DriftMonitor(reference, ["card_amount_ratio_168h", "amount"], window, 500, 0.25, "v1")
    return monitor, rng


def test_the_monitor_flags_a_shifted_feature_once_and_its_recovery() -> None:
    monitor, rng = shifted_monitor()
    assert monitor.report().features == {}  # below min_rows
    for _ in range(8):
        monitor.add(np.column_stack([rng.normal(size=250), rng.exponential(size=250)]), rng.uniform(size=250))
    report = monitor.report()
    assert report.rows == 2000
    assert max(report.features.values()) < 0.05 and report.score is not None and report.score < 0.05
    assert monitor.alarms(report) == []
    for _ in range(8):
        monitor.add(
            np.column_stack([rng.normal(1.5, size=250), rng.exponential(size=250)]), rng.uniform(size=250)
        )
    report = monitor.report()
    assert report.rows == 2000  # the window slid: only shifted rows remain
    assert report.features["card_amount_ratio_168h"] > 1.0
    assert report.features["amount"] < 0.05
    assert report.drifted == ["card_amount_ratio_168h"]
    (change,) = monitor.alarms(report)
    assert change[:2] == ("card_amount_ratio_168h", "drifted")
    assert monitor.alarms(monitor.report()) == []  # no repeat while it stays drifted
    for _ in range(8):
        monitor.add(np.column_stack([rng.normal(size=250), rng.exponential(size=250)]), rng.uniform(size=250))
    assert [c[:2] for c in monitor.alarms(monitor.report())] == [("card_amount_ratio_168h", "recovered")]


def test_models_without_a_reference_get_no_monitor() -> None:
    settings = DriftConfig()
    assert monitor_for(SimpleNamespace(version="rules", feature_names=["amount"]), settings) is None
    old = SimpleNamespace(version="v1", feature_names=["amount"], manifest={"format": 1})
    assert monitor_for(old, settings) is None
    reference = build_reference(np.arange(100.0)[:, None], ["amount"], None, 4)
    model = SimpleNamespace(version="v2", feature_names=["amount"], manifest={"drift_reference": reference})
    monitor = monitor_for(model, settings)
    assert monitor is not None and monitor.names == ["amount"] and not monitor.has_score
    assert monitor_for(model, DriftConfig(enabled=False)) is None


# -- logs -----------------------------------------------------------------------------------------


def test_json_logs_are_one_object_per_line_with_event_and_numbers() -> None:
    stream = io.StringIO()
    log = EventLog("detect", "detect-0", "json", stream=stream, clock=lambda: 1_767_225_600.25)
    log("assigned partitions [0, 1] of transactions")
    log("card_amount_ratio_168h drifted: PSI 0.31 over the last 10,000 rows (threshold 0.25, model v2)")
    log.status("detect detect-0: consumed=5", {"consumed": 5, "lag": None, "latency_ms": {"p99": 12.0}})
    log('a line with \x1b[31m an escape and "quotes"')
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert len(lines) == 4
    assert lines[0] == {
        "ts": "2026-01-01T00:00:00.250Z",
        "level": "info",
        "event": "partitions_assigned",
        "component": "detect",
        "instance": "detect-0",
        "message": "assigned partitions [0, 1] of transactions",
    }
    assert (lines[1]["event"], lines[1]["level"], lines[1]["feature"], lines[1]["psi"]) == (
        "drift_alarm",
        "warning",
        "card_amount_ratio_168h",
        0.31,
    )
    assert (
        lines[2]["event"] == "status" and lines[2]["consumed"] == 5 and lines[2]["latency_ms"]["p99"] == 12.0
    )
    assert lines[3]["message"] == 'a line with \x1b[31m an escape and "quotes"'
    assert "\x1b" not in stream.getvalue()  # escaped by JSON, never raw on the terminal


def test_text_logs_pass_the_message_through() -> None:
    lines: list[str] = []
    log = EventLog("sink", "s-1", "text", text_writer=lines.append)
    log("warning: database down; retrying in 0.5s")
    log.status("sink: 3 verdicts", {"verdicts": 3})
    assert lines == ["warning: database down; retrying in 0.5s", "sink: 3 verdicts"]
    assert classify("now serving model v2") == "model_swapped"
    assert classify("something else") == "message"


# -- health and the HTTP server -------------------------------------------------------------------


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def test_probes_follow_the_heartbeat_and_the_conditions() -> None:
    now = [100.0]
    health = Health(30.0, ("model_loaded", "partitions_assigned"), clock=lambda: now[0])
    registry = prom.new_registry()
    server = ObservabilityServer(registry, health, "127.0.0.1", free_port())
    try:
        assert get(f"{server.url}/healthz")[0] == 200  # starting counts as alive
        status, body = get(f"{server.url}/readyz")
        assert status == 503
        assert json.loads(body)["conditions"] == {"model_loaded": False, "partitions_assigned": False}
        health.set("model_loaded")
        health.set("partitions_assigned")
        health.tick()
        assert get(f"{server.url}/readyz")[0] == 200
        now[0] += 31.0  # the loop stopped turning
        status, body = get(f"{server.url}/healthz")
        assert status == 503 and json.loads(body)["status"] == "stalled"
        assert get(f"{server.url}/readyz")[0] == 503
        assert get(f"{server.url}/metrics")[0] == 200
        assert get(f"{server.url}/other")[0] == 404
    finally:
        server.stop()


def test_a_port_in_use_is_a_config_error() -> None:
    from fraudkit.errors import ConfigError

    health = Health(30.0)
    first = ObservabilityServer(prom.new_registry(), health, "127.0.0.1", free_port())
    try:
        with pytest.raises(ConfigError, match=rf"metrics.port: cannot listen on 127.0.0.1:{first.port}"):
            ObservabilityServer(prom.new_registry(), health, "127.0.0.1", first.port)
    finally:
        first.stop()


# -- metric families ------------------------------------------------------------------------------


def test_bulk_histogram_counts_a_batch_into_cumulative_buckets() -> None:
    histogram = prom.BulkHistogram((0.1, 0.5))
    histogram.observe_many(np.array([0.05, 0.1, 0.3, 0.9]), ("v1",))
    family = histogram.add_to(prom.DETECT["fraudkit_detect_fraud_score"].family())
    samples = {(s.name, s.labels.get("le")): s.value for s in family.samples}
    assert samples[("fraudkit_detect_fraud_score_bucket", "0.1")] == 2  # le is inclusive
    assert samples[("fraudkit_detect_fraud_score_bucket", "0.5")] == 3
    assert samples[("fraudkit_detect_fraud_score_bucket", "+Inf")] == 4
    assert samples[("fraudkit_detect_fraud_score_sum", None)] == pytest.approx(1.35)


def test_latency_histogram_in_milliseconds_becomes_seconds_buckets() -> None:
    latency = LatencyHistogram(exact_up_to_ms=100)
    latency.add([3, 5, 20, 100])
    family = prom.latency_family(
        prom.DETECT["fraudkit_detect_end_to_end_latency_seconds"], latency.counts, (0.005, 0.05)
    )
    samples = {(s.name, s.labels.get("le")): s.value for s in family.samples}
    assert samples[("fraudkit_detect_end_to_end_latency_seconds_bucket", "0.005")] == 2
    assert samples[("fraudkit_detect_end_to_end_latency_seconds_bucket", "0.05")] == 3
    assert samples[("fraudkit_detect_end_to_end_latency_seconds_count", None)] == 4
    assert samples[("fraudkit_detect_end_to_end_latency_seconds_sum", None)] == pytest.approx(0.128)


def test_dead_letter_reasons_are_bounded_labels() -> None:
    assert dead_letter_reason("amount: -5.0 is negative") == "amount"
    assert dead_letter_reason("not valid JSON: unexpected character") == "not_valid_json"
    assert dead_letter_reason("empty message value") == "empty_message_value"
    assert dead_letter_reason("expected a JSON object, got list") == "expected_a_json_object_got_list"


class FakeFeatures:
    def state_counts(self) -> dict[str, int]:
        return {"cards": 12, "terminals": 3, "terminal_labels": 4, "labels_ignored": 0}


def fake_holder(version: str) -> Any:
    model = SimpleNamespace(version=version, feature_names=["amount"], manifest={})
    return SimpleNamespace(
        model=model, swaps=1, retrain_outcomes={"published": 1, "failed": 2}, features=FakeFeatures()
    )


def test_detect_telemetry_exports_the_loop_figures(config: FraudkitConfig) -> None:
    telemetry = DetectTelemetry(config, "detect-7")
    summary = DetectSummary(detector="detect-7", consumed=10, verdicts=9, fraud=2, labels=4)
    latency = LatencyHistogram()
    latency.add([10, 20])
    holder = fake_holder("v2")
    telemetry.bind(summary, latency, holder)
    telemetry.assigned([0, 2])
    telemetry.batch_processed(0.004, [(3, "amount: -1 is negative")])
    telemetry.on_batch_scored(np.zeros((3, 1)), [], np.array([0.1, 0.2, 0.9]), "v2")
    status = DetectStatus(
        detector="detect-7",
        elapsed_s=1.0,
        consumed=10,
        verdicts=9,
        fraud=2,
        dead_letters=1,
        rate_per_s=5.0,
        lag=7,
        batch_ms=4.0,
        latency_ms={},
        model_version="v2",
        model_swaps=1,
        retrains=3,
        labels=4,
        quality={"v2": QualityFigures(100, 10, 8, 0.75, 0.6, 0.7)},
        partitions=[0, 2],
        cards=12,
        exactly_once=False,
    )
    telemetry.observe_status(status, {0: 3, 2: 4})
    series = scrape(telemetry.registry)
    assert series["fraudkit_detect_consumed_total"] == [({}, 10.0)]
    assert dict((labels["decision"], v) for labels, v in series["fraudkit_detect_verdicts_total"]) == {
        "fraud": 2.0,
        "legit": 7.0,
    }
    assert series["fraudkit_detect_dead_letters_total"] == [({"reason": "amount"}, 1.0)]
    assert series["fraudkit_detect_model_serving"] == [({"model_version": "v2"}, 1.0)]
    assert {labels["partition"]: v for labels, v in series["fraudkit_detect_consumer_lag_messages"]} == {
        "0": 3.0,
        "2": 4.0,
    }
    assert {labels["outcome"]: v for labels, v in series["fraudkit_detect_retrains_total"]} == {
        "published": 1.0,
        "rejected": 0.0,
        "failed": 2.0,
        "cancelled": 0.0,
    }
    assert series["fraudkit_detect_live_precision_ratio"] == [({"model_version": "v2"}, 0.75)]
    assert series["fraudkit_detect_end_to_end_latency_seconds_count"] == [({}, 2.0)]
    assert series["fraudkit_detect_fraud_score_count"] == [({"model_version": "v2"}, 3.0)]
    assert series["fraudkit_detect_ready"] == [({}, 0.0)]  # the loop has not started (state_restored)
    assert {"cards": 12.0}.items() <= {
        labels["kind"]: v for labels, v in series["fraudkit_detect_state_entries"]
    }.items()
    assert series["fraudkit_build_info"][0][0]["instance_id"] == "detect-7"
    # Every exported series is in the catalogue.
    assert set(series) <= prom.series_names()


def test_the_drift_check_tells_the_holder_since_when_columns_drift(config: FraudkitConfig) -> None:
    from fraudkit.detect import ModelHolder
    from fraudkit.features import FeatureSpec
    from fraudkit.model.network import RuleModel

    telemetry = DetectTelemetry(config, "detect-7")
    spec = FeatureSpec.from_config(
        config.features,
        SimpleNamespace(
            has_card=False, has_terminal=False, has_location=False, has_country=False, passthrough=[]
        ),
    )
    holder = ModelHolder(RuleModel(900.0, spec.names), spec)
    telemetry.bind(DetectSummary(detector="detect-7"), LatencyHistogram(), holder)
    monitor, rng = shifted_monitor()
    telemetry.drift = monitor
    for _ in range(8):
        monitor.add(np.column_stack([rng.normal(size=250), rng.exponential(size=250)]), rng.uniform(size=250))
    telemetry.drift_check()
    assert holder.drifting_since is None and holder.drifting == []
    for _ in range(8):
        monitor.add(
            np.column_stack([rng.normal(1.5, size=250), rng.exponential(size=250)]), rng.uniform(size=250)
        )
    telemetry.drift_check()
    began = holder.drifting_since
    assert began is not None and holder.drifting == ["card_amount_ratio_168h"]
    telemetry.drift_check()
    assert holder.drifting_since == began  # the same alarm: it keeps its start
    for _ in range(8):
        monitor.add(np.column_stack([rng.normal(size=250), rng.exponential(size=250)]), rng.uniform(size=250))
    telemetry.drift_check()
    assert holder.drifting_since is None


def test_the_log_line_names_drifted_columns() -> None:
    status = DetectStatus(
        detector="d",
        elapsed_s=1.0,
        consumed=1,
        verdicts=1,
        fraud=0,
        dead_letters=0,
        rate_per_s=1.0,
        lag=0,
        batch_ms=1.0,
        latency_ms={},
        model_version="v1",
        model_swaps=0,
        retrains=0,
        labels=0,
        quality={},
        partitions=[0],
        cards=1,
        exactly_once=False,
        drift={
            "drifted": ["card_amount_ratio_168h"],
            "features": {"card_amount_ratio_168h": 0.31},
            "rows": 10,
        },
    )
    assert format_log_line(status).endswith(" drifted=card_amount_ratio_168h")
    assert orjson.loads(orjson.dumps(status.to_dict()))["drift"]["features"] == {
        "card_amount_ratio_168h": 0.31
    }
