"""The container image and compose files, checked without a Docker engine."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import typer
import yaml

from fraudkit.cli import app
from fraudkit.config import load_config

DOCKER = Path("docker")


def compose(name: str) -> dict[str, Any]:
    return yaml.safe_load((DOCKER / name).read_text())


def fraudkit_services() -> list[tuple[str, dict[str, Any]]]:
    services = compose("compose.yml")["services"]
    return [(name, svc) for name, svc in services.items() if svc.get("image", "").startswith("fraudkit")]


def test_compose_has_the_pipeline_services() -> None:
    names = {name for name, _ in fraudkit_services()}
    assert {"generate", "detect", "sink", "tail", "train"} <= names


@pytest.mark.parametrize(("name", "service"), fraudkit_services())
def test_every_service_command_parses_as_a_fraudkit_command(name: str, service: dict[str, Any]) -> None:
    command = service["command"]
    assert isinstance(command, list) and command, name
    group = typer.main.get_command(app)
    ctx = typer.Context(group, info_name="fraudkit")
    sub = group.get_command(ctx, command[0])  # type: ignore[attr-defined]
    assert sub is not None, f"{name}: `{command[0]}` is not a fraudkit command"
    # make_context parses the arguments exactly as the CLI would, without running the command.
    sub.make_context(command[0], list(command[1:]), parent=ctx)


@pytest.mark.parametrize(("name", "service"), fraudkit_services())
def test_referenced_config_files_exist_and_validate(name: str, service: dict[str, Any]) -> None:
    paths = [service["environment"]["FRAUDKIT_CONFIG"]]
    command = service["command"]
    paths += [command[i + 1] for i, arg in enumerate(command) if arg == "--config"]
    for container_path in paths:
        assert container_path.startswith("/app/configs/"), container_path
        local = Path("configs") / container_path.removeprefix("/app/configs/")
        assert local.is_file(), f"{name}: {local} does not exist"
        load_config(local, environ={})


def test_networks_match_between_the_two_files() -> None:
    kafka_network = compose("compose.kafka.yml")["networks"]["fraudkit"]
    app_network = compose("compose.yml")["networks"]["fraudkit"]
    assert app_network["external"] is True
    assert app_network["name"] == kafka_network["name"] == "fraudkit"
    for _, service in fraudkit_services():
        assert service["networks"] == ["fraudkit"]
    assert compose("compose.kafka.yml")["services"]["kafka"]["networks"] == ["fraudkit"]


def test_docker_profile_points_at_the_kraft_broker() -> None:
    kafka = compose("compose.kafka.yml")["services"]["kafka"]
    env = kafka["environment"]
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert "ZOOKEEPER" not in " ".join(env)
    config = load_config(Path("configs/docker.yaml"), environ={})
    host, port = str(config.kafka.bootstrap_servers).split(":")
    assert host == kafka["hostname"]
    assert f"PLAINTEXT://{host}:{port}" in env["KAFKA_ADVERTISED_LISTENERS"]


def test_dockerfile_is_multistage_non_root_with_fraudkit_entrypoint() -> None:
    text = (DOCKER / "Dockerfile").read_text()
    stages = re.findall(r"^FROM\s+\S+\s+AS\s+(\w+)", text, flags=re.MULTILINE)
    assert len(stages) >= 2
    user = re.findall(r"^USER\s+(\S+)", text, flags=re.MULTILINE)
    assert user and user[-1] not in ("root", "0")
    assert re.search(r'^ENTRYPOINT\s+\[.*"fraudkit"\]', text, flags=re.MULTILINE)
    assert "openjdk-17-jre-headless" in text
    assert "download.pytorch.org/whl/cpu" in text and "-c constraints.txt" in text
    for source in re.findall(r"^COPY\s+(?!--from)(.+)\s+\S+$", text, flags=re.MULTILINE):
        for path in source.split():
            assert Path(path).exists(), f"Dockerfile copies missing {path}"
