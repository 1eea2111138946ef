"""Manifest validation (clear ModelError naming file and field) and the detector's refusal of
announced models the registry does not call publishable."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tests.unit.model.test_registry import publish
from typer.testing import CliRunner

from fraudkit.cli import app
from fraudkit.config import load_config
from fraudkit.errors import ConfigError, ModelError
from fraudkit.model.network import MAX_HIDDEN_LAYERS, MAX_LAYER_WIDTH, build_mlp, state_to_numpy
from fraudkit.model.registry import Registry

runner = CliRunner()


def resign(directory: Path) -> None:
    """Rewrite the checksum as a publisher would: the checksum proves integrity, not sanity."""
    lines = [
        f"{hashlib.sha256((directory / name).read_bytes()).hexdigest()}  {name}\n"
        for name in ("model.safetensors", "manifest.json")
    ]
    (directory / "checksum").write_text("".join(lines))


def tamper(registry: Registry, version: str, change: Any) -> Path:
    path = registry.path / version / "manifest.json"
    manifest = json.loads(path.read_text())
    change(manifest)
    path.write_text(json.dumps(manifest))  # allow_nan: NaN is written as NaN, as a sloppy tool would
    resign(path.parent)
    return path


def setter(dotted: str, value: Any) -> Any:
    def change(manifest: dict[str, Any]) -> None:
        *parents, last = dotted.split(".")
        node = manifest
        for part in parents:
            node = node[part]
        node[last] = value

    return change


def remover(key: str) -> Any:
    return lambda manifest: manifest.pop(key)


BAD_MANIFESTS = [
    ("threshold", setter("threshold", float("nan")), "must be a number from 0 to 1, got nan"),
    ("threshold", setter("threshold", -5), "got -5"),
    ("threshold", setter("threshold", 1.5), "got 1.5"),
    ("threshold", setter("threshold", "0.5"), "got '0.5'"),
    ("threshold", setter("threshold", True), "got True"),
    ("threshold", remover("threshold"), "missing"),
    ("architecture.hidden_sizes", setter("architecture.hidden_sizes", [-1]), "got -1"),
    ("architecture.hidden_sizes", setter("architecture.hidden_sizes", [3_000_000_000]), "got 3000000000"),
    ("architecture.hidden_sizes", setter("architecture.hidden_sizes", [60_000, 60_000]), "parameters"),
    ("architecture.hidden_sizes", setter("architecture.hidden_sizes", "64"), "must be a list"),
    ("architecture.hidden_sizes", setter("architecture.hidden_sizes", [4.0]), "got 4.0"),
    ("architecture.hidden_sizes", setter("architecture.hidden_sizes", [True]), "got True"),
    ("architecture.hidden_sizes", lambda m: m["architecture"].pop("hidden_sizes"), "missing"),
    ("architecture.input_dim", setter("architecture.input_dim", 7), "does not match the 3"),
    ("architecture", setter("architecture", [4]), "must be a mapping"),
    ("feature_names", setter("feature_names", [1, 2, 3]), "must be a list of 1 to"),
    ("feature_names", setter("feature_names", ["a", "a", "b"]), "unique"),
    ("feature_names", remover("feature_names"), "missing"),
    ("normalisation", setter("normalisation.mean", [0.0]), "equal length"),
    ("normalisation", setter("normalisation.std", ["x", "y", "z"]), "could not convert"),
    ("normalisation", setter("normalisation", None), "must be a mapping"),
    ("normalisation", remover("normalisation"), "missing"),
    ("status", setter("status", "approved-by-me"), "must be 'published' or 'rejected'"),
    ("metrics", setter("metrics", "great"), "must be a mapping"),
    ("trainer", setter("trainer", {"x": 1}), "must be text"),
]


@pytest.mark.parametrize(("field", "change", "message"), BAD_MANIFESTS)
def test_bad_manifest_is_a_clear_model_error(tmp_path: Path, field: str, change: Any, message: str) -> None:
    registry = Registry(tmp_path)
    publish(registry)
    path = tamper(registry, "v1", change)
    started = time.monotonic()
    with pytest.raises(ModelError) as caught:
        registry.load("v1")
    assert time.monotonic() - started < 5  # nothing giant was allocated
    assert str(caught.value).startswith(f"{path}: {field}: ")
    assert message in str(caught.value)


@pytest.mark.parametrize(("field", "change", "message"), BAD_MANIFESTS[:8])
def test_bad_manifest_on_the_command_line_exits_4(
    tmp_path: Path, field: str, change: Any, message: str
) -> None:
    registry = Registry(tmp_path)
    publish(registry)
    path = tamper(registry, "v1", change)
    for command in (["models", "show", "v1"], ["models", "promote", "v1"], ["detect", "--model", "v1"]):
        result = runner.invoke(app, [*command, "--set", f"registry.path={tmp_path}"])
        assert result.exit_code == 4, (command, result.output)
        assert f"error: {path}: {field}: " in result.stderr
        assert message in result.stderr and "Traceback" not in result.stderr
    listed = runner.invoke(app, ["models", "list", "--json", "--set", f"registry.path={tmp_path}"])
    assert listed.exit_code == 0, listed.output
    (row,) = json.loads(listed.stdout)
    assert row["status"] == "corrupt" and f"{field}: " in row["problem"]


def test_publish_and_from_state_refuse_insane_architectures(tmp_path: Path) -> None:
    from fraudkit.model.network import LoadedModel, Normalisation

    norm = Normalisation(np.zeros(3), np.ones(3))
    state = state_to_numpy(build_mlp(3, [4]).state_dict())
    with pytest.raises(ModelError, match="each width must be a whole number from 1 to 65,536, got -1"):
        LoadedModel.from_state(state, ["a", "b", "c"], norm, 0.5, [-1])
    with pytest.raises(ModelError, match="the threshold must be a number from 0 to 1, got nan"):
        LoadedModel.from_state(state, ["a", "b", "c"], norm, float("nan"), [4])
    with pytest.raises(ModelError, match="got 3000000000"):
        publish(Registry(tmp_path), hidden_sizes=[3_000_000_000])
    assert Registry(tmp_path).versions() == []


def test_train_hidden_sizes_are_bounded_in_config() -> None:
    assert (MAX_LAYER_WIDTH, MAX_HIDDEN_LAYERS) == (65_536, 64)  # the literals in TrainConfig
    for bad in ([-1], [0], [65_537], [4] * 65):
        with pytest.raises(ConfigError, match=r"train\.hidden_sizes: must be at most 64 layer widths"):
            load_config(None, {"train.hidden_sizes": bad}, environ={})
    assert load_config(None, {"train.hidden_sizes": [65_536]}, environ={}).train.hidden_sizes == [65_536]


# -- announcements on the control topic ---------------------------------------------------------


class Announcements:
    """A RetrainExtension wired to a real registry and model holder, its background tasks run inline."""

    def __init__(self, tmp_path: Path) -> None:
        from tests.unit.detect.test_detect import full_spec

        from fraudkit.detect import ModelHolder
        from fraudkit.model.network import Normalisation
        from fraudkit.retrain.extension import RetrainExtension

        self.spec = full_spec()
        self.registry = Registry(tmp_path / "models")
        width = len(self.spec.names)
        self.fields: dict[str, Any] = {
            "feature_names": self.spec.names,
            "hidden_sizes": [4],
            "normalisation": Normalisation(np.zeros(width), np.ones(width)),
            "threshold": 0.5,
        }
        state = state_to_numpy(build_mlp(width, [4]).state_dict())
        self.state = state
        self.registry.publish(state, **self.fields)  # v1, current
        config = load_config(None, {"registry.path": str(self.registry.path)}, environ={})
        self.extension = RetrainExtension(config)
        self.holder = ModelHolder(self.registry.load("v1"), self.spec)
        self.logs: list[str] = []
        self.extension.holder = self.holder
        self.extension.instance_id = "detector-a"
        self.extension.log = self.logs.append

    def announce(self, **event: Any) -> str | None:
        self.extension.on_announcement({"schema": 1, "type": "model_published", "trainer": "x", **event})
        while not self.extension._tasks.empty():
            self.extension._run_task(self.extension._tasks.get())
        return self.holder.swap()


def test_an_announced_published_version_is_served(tmp_path: Path) -> None:
    fixture = Announcements(tmp_path)
    fixture.registry.publish(fixture.state, promote=False, **fixture.fields)  # v2
    assert fixture.announce(version="v2") == "v2"
    assert fixture.holder.model.version == "v2"
    assert any("model v2 (announced by x) loaded" in line for line in fixture.logs)


def test_an_announced_rejected_version_is_refused(tmp_path: Path) -> None:
    fixture = Announcements(tmp_path)
    fixture.registry.record_rejected(fixture.state, reason="AP 0.41 < champion 0.52", **fixture.fields)
    assert fixture.announce(version="v2") is None
    assert fixture.holder.model.version == "v1"
    assert (
        "refusing model v2 announced by x: model v2 is rejected in the registry (AP 0.41 < champion 0.52); "
        "refusing to serve it; v1 keeps serving"
    ) in fixture.logs


def test_an_announced_version_whose_checksum_fails_is_refused(tmp_path: Path) -> None:
    fixture = Announcements(tmp_path)
    fixture.registry.publish(fixture.state, promote=False, **fixture.fields)  # v2
    manifest = fixture.registry.path / "v2" / "manifest.json"
    manifest.write_text(manifest.read_text().replace('"threshold": 0.5', '"threshold": 0.0'))
    assert fixture.announce(version="v2") is None
    assert fixture.holder.model.version == "v1"
    assert any("refusing model v2" in line and "does not match its checksum" in line for line in fixture.logs)


def test_an_announced_version_with_a_bad_manifest_is_refused(tmp_path: Path) -> None:
    fixture = Announcements(tmp_path)
    fixture.registry.publish(fixture.state, promote=False, **fixture.fields)  # v2
    tamper(fixture.registry, "v2", setter("threshold", -5))
    assert fixture.announce(version="v2") is None
    assert any("refusing model v2" in line and "threshold: must be a number" in line for line in fixture.logs)


def test_hostile_announcement_fields_are_ignored_and_escaped(tmp_path: Path) -> None:
    fixture = Announcements(tmp_path)
    assert fixture.announce(version="\x1b[31mv9\x1b]0;t\x07", trainer="\x1b[2J") is None
    assert fixture.logs[-1] == (
        "control topic: ignoring an announcement of '\\x1b[31mv9\\x1b]0;t\\x07' by \\x1b[2J: not a model "
        "version (vN)"
    )
    assert fixture.announce(version="../../etc") is None
    assert fixture.announce(version="v99") is None  # names no version in the registry
    assert any("refusing model v99" in line and "not found" in line for line in fixture.logs)
    # Malformed fields of another trainer's outcome neither crash the loop nor reach the summary raw.
    fixture.extension.on_announcement(
        {"type": "model_rejected", "version": "v5", "metrics": [1], "rows": "x", "metric": {"a": 1}}
    )
    fixture.extension.on_announcement(["not", "a", "mapping"])  # type: ignore[arg-type]
    assert fixture.extension.stats.rejected == 1
    assert fixture.logs[-1] == "retraining: v5 rejected; champion keeps serving"
    assert fixture.holder.model.version == "v1"
