"""Registry round trip, the atomic `current` pointer, rollback, and refusal of tampered artifacts."""

from __future__ import annotations

import json
import os
import struct
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fraudkit.errors import ModelError
from fraudkit.model.network import Normalisation, build_mlp, state_to_numpy
from fraudkit.model.registry import Registry

NAMES = ["amount", "card_count_1h", "terminal_fraud_rate_7d"]
X = np.random.default_rng(0).normal(size=(20, 3)).astype(np.float32)


def publish_fields(seed: int = 0, threshold: float = 0.4) -> dict[str, Any]:
    import torch

    torch.manual_seed(seed)
    return {
        "feature_names": NAMES,
        "hidden_sizes": [4],
        "normalisation": Normalisation(np.array([1.0, 2.0, 0.0]), np.array([3.0, 1.0, 0.5])),
        "threshold": threshold,
        "metrics": {"average_precision": 0.61, "roc_auc": float("nan")},
        "dropped_features": {"distance_km": "dataset has no location"},
        "data_fingerprint": "sha256:abc",
        "model_state": state_to_numpy(build_mlp(3, [4]).state_dict()),
    }


def publish(registry: Registry, seed: int = 0, **kwargs: Any) -> str:
    fields = publish_fields(seed)
    state = fields.pop("model_state")
    fields.update(kwargs)
    return registry.publish(state, **fields)


def test_round_trip_scores_identically_and_records_the_manifest(tmp_path: Path) -> None:
    registry = Registry(tmp_path / "models")
    fields = publish_fields()
    state = fields.pop("model_state")
    version = registry.publish(state, **fields)
    assert version == "v1"
    assert registry.current_version() == "v1"
    model = registry.load()
    assert (model.version, model.threshold, model.feature_names) == ("v1", 0.4, NAMES)
    from fraudkit.model.network import LoadedModel

    reference = LoadedModel.from_state(state, NAMES, fields["normalisation"], 0.4, [4])
    assert np.array_equal(model.score(X), reference.score(X))
    manifest = registry.show("v1")
    assert manifest["dropped_features"] == {"distance_km": "dataset has no location"}
    assert manifest["metrics"] == {"average_precision": 0.61, "roc_auc": None}
    assert manifest["normalisation"]["std"] == [3.0, 1.0, 0.5]
    assert manifest["architecture"]["hidden_sizes"] == [4]
    assert manifest["status"] == "published"
    assert manifest["is_current"] is True
    assert manifest["fraudkit_version"]


def test_nothing_is_pickled(tmp_path: Path) -> None:
    registry = Registry(tmp_path)
    publish(registry)
    assert sorted(p.name for p in (tmp_path / "v1").iterdir()) == [
        "checksum",
        "manifest.json",
        "model.safetensors",
    ]
    data = (tmp_path / "v1" / "model.safetensors").read_bytes()
    (header_size,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + header_size])
    assert header["output.weight"] == {
        "dtype": "F32",
        "shape": [1, 4],
        "data_offsets": header["output.weight"]["data_offsets"],
    }
    assert not data.startswith(b"\x80")  # a pickle stream would start with the PROTO opcode
    json.loads((tmp_path / "v1" / "manifest.json").read_text())


def test_versions_promote_and_rollback(tmp_path: Path) -> None:
    registry = Registry(tmp_path)
    assert registry.current_version() is None
    assert publish(registry, 0) == "v1"
    assert publish(registry, 1) == "v2"
    assert publish(registry, 2, promote=False) == "v3"
    assert registry.current_version() == "v2"
    assert registry.promote("v3") == "v3"
    assert registry.rollback() == "v2"
    assert registry.load().version == "v2"
    assert registry.rollback() == "v1"
    with pytest.raises(ModelError, match="nothing to roll back"):
        registry.rollback()
    infos = registry.list()
    assert [(i.version, i.status, i.is_current) for i in infos] == [
        ("v1", "published", True),
        ("v2", "published", False),
        ("v3", "published", False),
    ]
    assert infos[0].metrics["average_precision"] == 0.61


def test_version_numbers_sort_numerically_and_survive_concurrent_publishers(tmp_path: Path) -> None:
    registry = Registry(tmp_path)
    fields = publish_fields()
    state = fields.pop("model_state")
    results: list[str] = []
    threads = [
        threading.Thread(target=lambda: results.append(registry.publish(state, **fields))) for _ in range(11)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results, key=lambda v: int(v[1:])) == [f"v{i}" for i in range(1, 12)]
    assert registry.versions()[-2:] == ["v10", "v11"]
    assert registry.current_version() in results


def test_rejected_challenger_is_recorded_but_never_current(tmp_path: Path) -> None:
    registry = Registry(tmp_path)
    publish(registry)
    fields = publish_fields(seed=5)
    state = fields.pop("model_state")
    version = registry.record_rejected(state, reason="AP 0.40 < champion 0.61", **fields)
    assert version == "v2"
    assert registry.current_version() == "v1"
    assert registry.show("v2")["reason"] == "AP 0.40 < champion 0.61"
    assert [i.status for i in registry.list()] == ["published", "rejected"]
    with pytest.raises(ModelError, match="rejected"):
        registry.promote("v2")


def test_tampered_weights_are_refused(tmp_path: Path) -> None:
    registry = Registry(tmp_path)
    publish(registry)
    weights = tmp_path / "v1" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ModelError, match=r"v1: model.safetensors does not match its checksum"):
        registry.load("v1")
    assert registry.list()[0].status == "corrupt"


def test_tampered_manifest_is_refused(tmp_path: Path) -> None:
    registry = Registry(tmp_path)
    publish(registry)
    manifest_path = tmp_path / "v1" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["threshold"] = 0.0001
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")
    with pytest.raises(ModelError, match=r"manifest\.json does not match its checksum"):
        registry.load()
    with pytest.raises(ModelError, match="checksum"):
        registry.show("v1")


def test_incomplete_version_and_unknown_versions_are_refused(tmp_path: Path) -> None:
    registry = Registry(tmp_path)
    publish(registry)
    (tmp_path / "v1" / "checksum").unlink()
    with pytest.raises(ModelError, match="incomplete"):
        registry.load("v1")
    with pytest.raises(ModelError, match="v7 not found"):
        registry.load("v7")
    with pytest.raises(ModelError, match="invalid model version"):
        registry.load("../etc")
    with pytest.raises(ModelError, match="no current model"):
        Registry(tmp_path / "empty").load()


def test_current_pointer_is_replaced_atomically(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    registry = Registry(tmp_path)
    publish(registry)
    publish(registry, 1, promote=False)

    def crash(*args: Any) -> None:
        raise OSError("disk full")

    monkeypatch.setattr("fraudkit.files.os.replace", crash)
    with pytest.raises(ModelError, match=r"cannot switch .*current to v2: disk full"):
        registry.promote("v2")
    monkeypatch.undo()
    # The old pointer is intact and no temporary file is left behind.
    assert registry.current_version() == "v1"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".lock", "current", "v1", "v2"]


def test_a_failed_publish_leaves_no_half_written_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry = Registry(tmp_path)
    publish(registry)
    real_replace = os.replace

    def fail_on_checksum(source: str, target: Any) -> None:
        if str(target).endswith("checksum"):
            raise OSError(28, "No space left on device")
        real_replace(source, target)

    monkeypatch.setattr("fraudkit.files.os.replace", fail_on_checksum)
    with pytest.raises(ModelError, match=r"cannot write model v2 .*No space left on device"):
        publish(registry, 1)
    monkeypatch.undo()
    assert registry.versions() == ["v1"]
    assert publish(registry, 1) == "v2"


def test_corrupt_current_pointer_is_a_model_error(tmp_path: Path) -> None:
    registry = Registry(tmp_path)
    publish(registry)
    (tmp_path / "current").write_text("{not json")
    with pytest.raises(ModelError, match="current is unreadable or corrupt"):
        registry.current_version()


def run_models(tmp_path: Path, *args: str) -> Any:
    from typer.testing import CliRunner

    from fraudkit.cli import app

    return CliRunner().invoke(app, ["models", *args, "--set", f"registry.path={tmp_path}"])


def test_models_cli_lists_shows_promotes_and_rolls_back(tmp_path: Path) -> None:
    registry = Registry(tmp_path)
    publish(registry, 0)
    publish(registry, 1, promote=False)
    listed = run_models(tmp_path, "list")
    assert listed.exit_code == 0, listed.output
    rows = [line for line in listed.stdout.splitlines() if " v1 " in line or " v2 " in line]
    assert "*" in rows[0] and "*" not in rows[1]
    assert "0.6100" in rows[0]
    shown = run_models(tmp_path, "show", "v2")
    assert shown.exit_code == 0, shown.output
    assert json.loads(shown.stdout)["version"] == "v2"
    promoted = run_models(tmp_path, "promote", "v2")
    assert promoted.exit_code == 0, promoted.output
    assert "current model: v2 (was v1)" in promoted.stdout
    rolled = run_models(tmp_path, "rollback")
    assert rolled.exit_code == 0, rolled.output
    assert "current model: v1 (was v2)" in rolled.stdout
    assert registry.current_version() == "v1"
    as_json = json.loads(run_models(tmp_path, "list", "--json").stdout)
    assert [(m["version"], m["is_current"]) for m in as_json] == [("v1", True), ("v2", False)]


def test_models_cli_refuses_tampered_and_unknown_versions_with_exit_4(tmp_path: Path) -> None:
    registry = Registry(tmp_path)
    publish(registry, 0)
    publish(registry, 1, promote=False)
    (tmp_path / "v2" / "manifest.json").write_text("{}")
    refused = run_models(tmp_path, "promote", "v2")
    assert refused.exit_code == 4
    assert "error: model v2: manifest.json does not match its checksum" in refused.output
    assert registry.current_version() == "v1"
    assert run_models(tmp_path, "show", "v9").exit_code == 4
    nothing = run_models(tmp_path, "rollback")
    assert nothing.exit_code == 4
    assert "nothing to roll back" in nothing.output
    assert "corrupt" in run_models(tmp_path, "list").stdout
