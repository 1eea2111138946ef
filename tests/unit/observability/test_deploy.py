"""The Kubernetes manifests and the Grafana dashboard, checked without a cluster.

Like test_docker.py for compose: the manifests must run real fraudkit commands through the image's
entrypoint, mount a config that fraudkit's loader accepts with the env vars they set (so every
FRAUDKIT_* name is a real key), wire the probes to the endpoints, and the dashboard may only
query metrics that fraudkit really exports.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import typer
import yaml
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from fraudkit.cli import app
from fraudkit.config import FraudkitConfig, load_config
from fraudkit.detect import DetectSummary
from fraudkit.detect.status import DetectStatus, QualityFigures
from fraudkit.latency import LatencyHistogram
from fraudkit.observability import prometheus as prom
from fraudkit.observability.detect_telemetry import DetectTelemetry
from fraudkit.observability.drift import DriftMonitor, build_reference

DEPLOY = Path("deploy/kubernetes")
DASHBOARD = Path("deploy/grafana/fraudkit.json")
# README: ~8.2 kB per card with its terminal label history.
BYTES_PER_CARD = 8_200
BASELINE_BYTES = 800 * 2**20


def documents() -> list[dict[str, Any]]:
    docs = []
    for path in sorted(DEPLOY.glob("*.yaml")):
        docs += [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    return docs


def of_kind(kind: str) -> list[dict[str, Any]]:
    return [doc for doc in documents() if doc["kind"] == kind]


def workloads() -> list[dict[str, Any]]:
    return of_kind("StatefulSet") + of_kind("Deployment")


def named(kind: str, name: str) -> dict[str, Any]:
    (doc,) = [d for d in of_kind(kind) if d["metadata"]["name"] == name]
    return doc


def containers() -> list[tuple[dict[str, Any], dict[str, Any]]]:
    return [(w, c) for w in workloads() for c in w["spec"]["template"]["spec"]["containers"]]


def memory_bytes(quantity: str) -> int:
    number, unit = re.fullmatch(r"(\d+)(Mi|Gi)", quantity).groups()  # type: ignore[union-attr]
    return int(number) * {"Mi": 2**20, "Gi": 2**30}[unit]


def env_of(workload: dict[str, Any], container: dict[str, Any]) -> dict[str, str]:
    """The container's environment as Kubernetes would set it (secrets from the Secret, $(VAR) expanded)."""
    secret = named("Secret", "fraudkit-secrets")["stringData"]
    env: dict[str, str] = {}
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = re.sub(r"\$\((\w+)\)", lambda m: env[m[1]], item["value"])
            continue
        source = item["valueFrom"]
        if "secretKeyRef" in source:
            ref = source["secretKeyRef"]
            assert ref["name"] == "fraudkit-secrets" and ref["key"] in secret, item
            env[item["name"]] = secret[ref["key"]]
        else:
            assert source["fieldRef"]["fieldPath"] == "metadata.name"
            env[item["name"]] = f"{workload['metadata']['name']}-0"
    return env


def mounted_config(workload: dict[str, Any], container: dict[str, Any], tmp_path: Path) -> FraudkitConfig:
    """Load the config file the container's --config names, from the ConfigMap mounted there."""
    args = container["args"]
    config_path = Path(args[args.index("--config") + 1])
    volumes = {v["name"]: v for v in workload["spec"]["template"]["spec"]["volumes"]}
    (mount,) = [m for m in container["volumeMounts"] if Path(m["mountPath"]) == config_path.parent]
    config_map = named("ConfigMap", volumes[mount["name"]]["configMap"]["name"])
    local = tmp_path / config_path.name
    local.write_text(config_map["data"][config_path.name])
    env = env_of(workload, container)
    assert all(name.startswith("FRAUDKIT_") or name == "POD_NAME" for name in env), env
    # Unknown keys (from the file or a misspelt FRAUDKIT_* name) are errors here.
    return load_config(local, environ=env)


def test_every_container_runs_a_fraudkit_command_through_the_image_entrypoint() -> None:
    dockerfile = Path("docker/Dockerfile").read_text()
    assert re.search(r'^ENTRYPOINT\s+\["tini", "--", "fraudkit"\]', dockerfile, flags=re.MULTILINE)
    group = typer.main.get_command(app)
    ctx = typer.Context(group, info_name="fraudkit")
    assert len(containers()) == 3
    for workload, container in containers():
        assert container["image"].startswith("fraudkit:"), workload["metadata"]["name"]
        assert "command" not in container, "overriding the command would bypass the entrypoint"
        args = container["args"]
        sub = group.get_command(ctx, args[0])  # type: ignore[attr-defined]
        assert sub is not None, f"`{args[0]}` is not a fraudkit command"
        sub.make_context(args[0], list(args[1:]), parent=ctx)  # parses exactly as the CLI would


def test_mounted_config_and_env_validate_and_turn_on_metrics_and_json_logs(tmp_path: Path) -> None:
    for workload, container in containers():
        config = mounted_config(workload, container, tmp_path)
        assert config.metrics.port == 9464 and config.metrics.host == "0.0.0.0"
        assert config.log.format == "json"
        assert config.kafka.common["sasl.password"] == "change-me"  # from the Secret via env
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert ports["metrics"] == config.metrics.port
        annotations = workload["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/port"] == str(config.metrics.port)
        assert annotations["prometheus.io/path"] == "/metrics"
        assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
        assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    sink_workload = named("Deployment", "fraudkit-sink")
    sink_config = mounted_config(
        sink_workload, sink_workload["spec"]["template"]["spec"]["containers"][0], tmp_path
    )
    assert sink_config.sink.url.startswith("postgresql://")


def test_detectors_are_a_statefulset_with_stable_instance_ids(tmp_path: Path) -> None:
    detect = named("StatefulSet", "fraudkit-detect")
    (container,) = detect["spec"]["template"]["spec"]["containers"]
    args = container["args"]
    assert args[0] == "detect" and args[args.index("--role") + 1] == "scorer"
    assert args[args.index("--instance-id") + 1] == "$(POD_NAME)"
    config = mounted_config(detect, container, tmp_path)
    assert config.detect.exactly_once is True
    # Static membership and the transactional id both follow the pod's stable name.
    assert config.kafka.consumer["group.instance.id"] == "fraudkit-detect-0"
    assert detect["spec"]["serviceName"] == named("Service", "fraudkit-detect")["metadata"]["name"]
    # Memory: the card cap times the measured bytes per card, plus the runtime, fits the limit.
    limit = memory_bytes(container["resources"]["limits"]["memory"])
    assert config.detect.max_card_state * BYTES_PER_CARD + BASELINE_BYTES <= limit


def test_the_trainer_is_one_deployment_with_the_trainer_role(tmp_path: Path) -> None:
    trainer = named("Deployment", "fraudkit-trainer")
    assert trainer["spec"]["replicas"] == 1 and trainer["spec"]["strategy"]["type"] == "Recreate"
    (container,) = trainer["spec"]["template"]["spec"]["containers"]
    args = container["args"]
    assert args[:1] == ["detect"] and args[args.index("--role") + 1] == "trainer"
    config = mounted_config(trainer, container, tmp_path)
    assert config.retrain.enabled and config.retrain.worker_threads == 2
    detect_memory = memory_bytes(
        named("StatefulSet", "fraudkit-detect")["spec"]["template"]["spec"]["containers"][0]["resources"][
            "limits"
        ]["memory"]
    )
    assert memory_bytes(container["resources"]["limits"]["memory"]) > detect_memory
    # The registry and the label buffer are the same claims as the scorers'.
    for workload in (trainer, named("StatefulSet", "fraudkit-detect")):
        claims = {
            v["persistentVolumeClaim"]["claimName"]
            for v in workload["spec"]["template"]["spec"]["volumes"]
            if "persistentVolumeClaim" in v
        }
        assert claims == {"fraudkit-models", "fraudkit-state"}
    assert {c["metadata"]["name"] for c in of_kind("PersistentVolumeClaim")} == {
        "fraudkit-models",
        "fraudkit-state",
    }


def test_the_service_monitor_scrapes_every_metrics_service() -> None:
    (monitor,) = of_kind("ServiceMonitor")
    selector = monitor["spec"]["selector"]["matchLabels"]
    (endpoint,) = monitor["spec"]["endpoints"]
    services = [s for s in of_kind("Service") if selector.items() <= s["metadata"]["labels"].items()]
    assert {s["metadata"]["name"] for s in services} == {
        "fraudkit-detect",
        "fraudkit-trainer",
        "fraudkit-sink",
    }
    for service in services:
        assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
        pods = [
            w
            for w in workloads()
            if service["spec"]["selector"].items() <= w["spec"]["template"]["metadata"]["labels"].items()
        ]
        assert len(pods) == 1, service["metadata"]["name"]
    assert endpoint["path"] == "/metrics"


# -- the dashboard -----------------------------------------------------------------------------------


def dashboard_metric_names() -> set[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    names: set[str] = set()
    for panel in dashboard["panels"]:
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            found = set(re.findall(r"\bfraudkit_[a-z0-9_]+", target["expr"]))
            assert found, f"{panel['title']}: {target['expr']}"
            names |= found
    return names


def populated_detect_scrape(config: FraudkitConfig) -> set[str]:
    """Series names a detector really exports once every figure has a value."""
    telemetry = DetectTelemetry(config, "detect-0")
    latency = LatencyHistogram()
    latency.add([5])
    model = SimpleNamespace(version="v1", feature_names=["amount"], manifest={})
    features = SimpleNamespace(state_counts=lambda: {"cards": 1, "terminals": 1, "terminal_labels": 0})
    holder = SimpleNamespace(
        model=model, swaps=0, retrain_outcomes={}, features=features, note_drift=lambda columns, now: None
    )
    telemetry.bind(DetectSummary(detector="detect-0", consumed=1, verdicts=1), latency, holder)
    telemetry.batch_processed(0.01, [(0, "amount: -1 is negative")])
    reference = build_reference(np.arange(1000.0)[:, None], ["amount"], np.linspace(0, 1, 1000), 10)
    telemetry._drift_version = "v1"
    telemetry.drift = DriftMonitor(reference, ["amount"], 100, 10, 0.25, "v1")
    telemetry.on_batch_scored(np.full((100, 1), 5000.0), [], np.full(100, 0.99), "v1")
    status = DetectStatus(
        detector="detect-0",
        elapsed_s=1,
        consumed=1,
        verdicts=1,
        fraud=0,
        dead_letters=1,
        rate_per_s=1,
        lag=0,
        batch_ms=1,
        latency_ms={},
        model_version="v1",
        model_swaps=0,
        retrains=0,
        labels=0,
        quality={"v1": QualityFigures(10, 1, 1, 1.0, 1.0, 1.0)},
        partitions=[0],
        cards=1,
        exactly_once=False,
    )
    assert telemetry.drift_check()["drifted"] == ["amount", "score"]
    telemetry.observe_status(status, {0: 0})
    text = generate_latest(telemetry.registry).decode()
    return {s.name for family in text_string_to_metric_families(text) for s in family.samples}


def test_the_detector_exports_exactly_its_catalogue(config: FraudkitConfig) -> None:
    assert populated_detect_scrape(config) == prom.series_names(
        [*prom.DETECT.values(), *prom.COMMON.values()]
    )


def test_every_dashboard_query_names_an_exported_metric(config: FraudkitConfig) -> None:
    names = dashboard_metric_names()
    exported = populated_detect_scrape(config) | prom.series_names(
        [*prom.GENERATE.values(), *prom.SINK.values()]
    )
    assert names - exported == set()
    # The dashboard covers the detector's headline metrics.
    for required in (
        "fraudkit_detect_consumed_total",
        "fraudkit_detect_dead_letters_total",
        "fraudkit_detect_consumer_lag_messages",
        "fraudkit_detect_end_to_end_latency_seconds_bucket",
        "fraudkit_detect_model_serving",
        "fraudkit_feature_drift_psi",
        "fraudkit_detect_live_precision_ratio",
    ):
        assert required in names


@pytest.mark.parametrize("name", sorted(prom.CATALOGUE))
def test_metric_names_follow_prometheus_conventions(name: str) -> None:
    spec = prom.CATALOGUE[name]
    assert re.fullmatch(r"fraudkit_[a-z0-9_]+", name)
    assert name.endswith("_total") == (spec.kind == "counter")
    assert not re.search(r"_(ms|milliseconds|percent)(_|$)", name)
