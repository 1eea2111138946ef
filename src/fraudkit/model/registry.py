"""Versioned model artifacts (safetensors + manifest + checksum) and the atomic `current` pointer.

Layout under the registry path::

    v1/model.safetensors   weights (a format that loads without executing code)
    v1/manifest.json       features, normalisation, threshold, metrics, data fingerprint, status
    v1/checksum            sha256 of both files, `sha256sum -c` format, written last
    current                {"version": "v3", "previous": ["v1", "v2"], ...}, replaced atomically

A version is claimed with mkdir (atomic), so concurrent publishers never share a number; the
checksum is written last, so a version without one is incomplete and never loaded.
"""

from __future__ import annotations

import builtins
import contextlib
import fcntl
import hashlib
import json
import math
import re
import shutil
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from fraudkit import __version__
from fraudkit.errors import ModelError
from fraudkit.files import write_bytes_atomic
from fraudkit.model.network import (
    MAX_FEATURES,
    LoadedModel,
    Normalisation,
    architecture_problem,
    state_to_numpy,
    threshold_problem,
)

WEIGHTS_FILE = "model.safetensors"
MANIFEST_FILE = "manifest.json"
CHECKSUM_FILE = "checksum"
CURRENT_FILE = "current"
LOCK_FILE = ".lock"
MANIFEST_FORMAT = 1
STATUS_PUBLISHED = "published"
STATUS_REJECTED = "rejected"
_VERSION = re.compile(r"^v([1-9][0-9]*)$")


@dataclass
class ModelInfo:
    """One row of `models list`."""

    version: str
    status: str
    is_current: bool
    created_at: str | None = None
    threshold: float | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    trainer: str | None = None
    problem: str | None = None  # why a corrupt version cannot be read
    reason: str | None = None  # why a rejected version was not promoted


def jsonable(value: Any) -> Any:
    """Plain JSON data: numpy scalars to Python, NaN/inf to None (JSON has no NaN)."""
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return [jsonable(v) for v in value.tolist()]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value


def check_manifest(manifest: Mapping[str, Any], path: Path) -> None:
    """ModelError naming `path` and the field unless every field a model is built from is sound.

    The checksum proves the files are the ones the publisher wrote, not that their values are
    sane: a NaN threshold flags nothing, -5 flags everything, `hidden_sizes: [3000000000]` would
    try to allocate 300 GB.
    """

    def bad(field_name: str, message: str) -> ModelError:
        return ModelError(f"{path}: {field_name}: {message}")

    for required in ("feature_names", "architecture", "normalisation", "threshold"):
        if required not in manifest:
            raise bad(required, "missing")
    names = manifest["feature_names"]
    if (
        not isinstance(names, list)
        or not names
        or len(names) > MAX_FEATURES
        or not all(isinstance(n, str) and n for n in names)
    ):
        raise bad("feature_names", f"must be a list of 1 to {MAX_FEATURES:,} names")
    if len(set(names)) != len(names):
        raise bad("feature_names", "names must be unique")
    architecture = manifest["architecture"]
    if not isinstance(architecture, dict):
        raise bad("architecture", "must be a mapping")
    if "hidden_sizes" not in architecture:
        raise bad("architecture.hidden_sizes", "missing")
    problem = architecture_problem(len(names), architecture["hidden_sizes"])
    if problem is not None:
        raise bad("architecture.hidden_sizes", problem.removeprefix("hidden_sizes: "))
    input_dim = architecture.get("input_dim", len(names))
    if input_dim != len(names) or isinstance(input_dim, bool):
        raise bad("architecture.input_dim", f"{input_dim!r} does not match the {len(names)} feature names")
    problem = threshold_problem(manifest["threshold"])
    if problem is not None:
        raise bad("threshold", problem.removeprefix("the threshold "))
    normalisation = manifest["normalisation"]
    if not isinstance(normalisation, dict) or not {"mean", "std"} <= set(normalisation):
        raise bad("normalisation", "must be a mapping with mean and std")
    try:
        statistics = Normalisation.from_dict(normalisation)
    except (TypeError, ValueError) as exc:
        raise bad("normalisation", str(exc)) from None
    if len(statistics.mean) != len(names):
        raise bad("normalisation", f"{len(statistics.mean)} values for {len(names)} features")
    status = manifest.get("status", STATUS_PUBLISHED)
    if status not in (STATUS_PUBLISHED, STATUS_REJECTED):
        raise bad("status", f"must be {STATUS_PUBLISHED!r} or {STATUS_REJECTED!r}, got {status!r}")
    for mapping in ("metrics", "feature_spec", "dropped_features", "training"):
        if manifest.get(mapping) is not None and not isinstance(manifest[mapping], dict):
            raise bad(mapping, "must be a mapping")
    for text in ("trainer", "created_at", "reason"):
        if manifest.get(text) is not None and not isinstance(manifest[text], str):
            raise bad(text, "must be text")


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Registry:
    """The model registry at `path` (created on first publish)."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)

    # -- versions -----------------------------------------------------------------------------

    def versions(self) -> list[str]:
        """Every version directory, oldest first (complete or not)."""
        try:
            if not self.path.is_dir():
                return []
            found = [(int(m.group(1)), p.name) for p in self.path.iterdir() if (m := _VERSION.match(p.name))]
        except OSError as exc:
            raise ModelError(f"cannot read the registry {self.path}: {exc.strerror or exc}") from None
        return [name for _, name in sorted(found)]

    def _claim_version(self) -> tuple[str, Path]:
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            existing = self.versions()
            number = int(existing[-1][1:]) + 1 if existing else 1
            while True:
                candidate = self.path / f"v{number}"
                try:
                    candidate.mkdir()
                except FileExistsError:
                    number += 1
                    continue
                return candidate.name, candidate
        except OSError as exc:
            raise ModelError(f"cannot create a model version in {self.path}: {exc.strerror or exc}") from None

    def publish(
        self,
        model_state: Mapping[str, Any],
        *,
        feature_names: Sequence[str],
        hidden_sizes: Sequence[int],
        normalisation: Normalisation,
        threshold: float,
        metrics: Mapping[str, Any] | None = None,
        feature_spec: Mapping[str, Any] | None = None,
        dropped_features: Mapping[str, str] | None = None,
        data_fingerprint: str | None = None,
        training: Mapping[str, Any] | None = None,
        dropout: float = 0.0,
        trainer: str = "fraudkit train",
        promote: bool = True,
        status: str = STATUS_PUBLISHED,
        reason: str | None = None,
        drift_reference: Mapping[str, Any] | None = None,
    ) -> str:
        """Store a new version (weights, manifest, checksum) and optionally make it current.

        `drift_reference` (fraudkit.observability.drift.build_reference) is the training
        distribution live drift is measured against; manifests without one load as before.
        """
        from safetensors.numpy import save

        arrays = state_to_numpy(model_state)
        # Refuse to store something that would not load back.
        LoadedModel.from_state(arrays, feature_names, normalisation, threshold, hidden_sizes)
        version, directory = self._claim_version()
        now_ms = int(time.time() * 1000)
        manifest = {
            "format": MANIFEST_FORMAT,
            "version": version,
            "status": status,
            "created_ms": now_ms,
            "created_at": datetime.fromtimestamp(now_ms / 1000, UTC).isoformat(timespec="seconds"),
            "fraudkit_version": __version__,
            "trainer": trainer,
            "architecture": {
                "type": "mlp",
                "input_dim": len(feature_names),
                "hidden_sizes": [int(h) for h in hidden_sizes],
                "dropout": float(dropout),
                "output": "one logit, sigmoid = fraud probability",
            },
            "feature_names": list(feature_names),
            "feature_spec": dict(feature_spec or {}),
            "dropped_features": dict(dropped_features or {}),
            "normalisation": normalisation.to_dict(),
            "threshold": float(threshold),
            "metrics": dict(metrics or {}),
            "training": dict(training or {}),
            "data_fingerprint": data_fingerprint,
        }
        if reason is not None:
            manifest["reason"] = reason
        if drift_reference is not None:
            manifest["drift_reference"] = dict(drift_reference)
        weights = save(arrays, metadata={"fraudkit_version": __version__, "version": version})
        manifest_bytes = json.dumps(jsonable(manifest), indent=2, allow_nan=False).encode() + b"\n"
        checksum = f"{_sha256(weights)}  {WEIGHTS_FILE}\n{_sha256(manifest_bytes)}  {MANIFEST_FILE}\n"
        try:
            write_bytes_atomic(directory / WEIGHTS_FILE, weights)
            write_bytes_atomic(directory / MANIFEST_FILE, manifest_bytes)
            write_bytes_atomic(directory / CHECKSUM_FILE, checksum.encode())
        except BaseException as exc:
            # A half-written version must not linger.
            shutil.rmtree(directory, ignore_errors=True)
            if isinstance(exc, OSError):
                raise ModelError(
                    f"cannot write model {version} to {directory}: {exc.strerror or exc}"
                ) from None
            raise
        if promote and status == STATUS_PUBLISHED:
            self.promote(version)
        return version

    def record_rejected(self, model_state: Mapping[str, Any], *, reason: str, **fields: Any) -> str:
        """Keep a challenger that lost with its figures (status "rejected"); it never becomes current."""
        fields.pop("promote", None)
        fields.pop("status", None)
        return self.publish(model_state, promote=False, status=STATUS_REJECTED, reason=reason, **fields)

    # -- reading ------------------------------------------------------------------------------

    def resolve(self, version: str = "current") -> str:
        """A concrete version name for "current" or "vN"; ModelError if there is none."""
        if version in ("current", "latest"):
            if version == "latest":
                complete = [v for v in self.versions() if (self.path / v / CHECKSUM_FILE).is_file()]
                if not complete:
                    raise ModelError(f"no models in {self.path}; train one with `fraudkit train`")
                return complete[-1]
            current = self.current_version()
            if current is None:
                raise ModelError(
                    f"no current model in {self.path}; train one with `fraudkit train` or "
                    "`fraudkit models promote VERSION`"
                )
            return current
        if not _VERSION.match(version):
            raise ModelError(f"invalid model version {version!r}: expected vN, 'current' or 'latest'")
        if not (self.path / version).is_dir():
            raise ModelError(f"model {version} not found in {self.path}")
        return version

    def _read_verified(self, version: str) -> tuple[dict[str, Any], bytes]:
        """Manifest and weight bytes of a version, after the checksum matched (else ModelError)."""
        directory = self.path / version
        try:
            checksum_text = (directory / CHECKSUM_FILE).read_text(encoding="ascii")
        except FileNotFoundError:
            raise ModelError(
                f"model {version} in {self.path} is incomplete (no checksum): still being written or "
                "its publisher crashed"
            ) from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ModelError(f"model {version}: cannot read {CHECKSUM_FILE}: {exc}") from None
        expected: dict[str, str] = {}
        for line in checksum_text.splitlines():
            digest, _, name = line.strip().partition("  ")
            if name:
                expected[name] = digest
        if set(expected) != {WEIGHTS_FILE, MANIFEST_FILE}:
            raise ModelError(f"model {version}: {CHECKSUM_FILE} is malformed; refusing to load")
        contents = {}
        for name, digest in expected.items():
            try:
                data = (directory / name).read_bytes()
            except OSError as exc:
                raise ModelError(f"model {version}: cannot read {name}: {exc.strerror}") from None
            if _sha256(data) != digest:
                raise ModelError(
                    f"model {version}: {name} does not match its checksum (corrupt or tampered); "
                    "refusing to load"
                )
            contents[name] = data
        try:
            manifest = json.loads(contents[MANIFEST_FILE])
        except ValueError as exc:
            raise ModelError(f"model {version}: {MANIFEST_FILE} is not valid JSON: {exc}") from None
        if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
            found = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
            raise ModelError(f"model {version}: unsupported manifest format {found!r}")
        check_manifest(manifest, directory / MANIFEST_FILE)
        return manifest, contents[WEIGHTS_FILE]

    def load(self, version: str = "current") -> LoadedModel:
        """The verified model ready to score; ModelError (exit 4) on anything missing or corrupt."""
        from safetensors import SafetensorError
        from safetensors.numpy import load as load_weights

        name = self.resolve(version)
        manifest, weights = self._read_verified(name)
        try:
            arrays = load_weights(weights)
        except (SafetensorError, ValueError) as exc:
            raise ModelError(f"model {name}: {WEIGHTS_FILE} is not valid safetensors: {exc}") from None
        # check_manifest (in _read_verified) vouches for every field used here.
        feature_names = list(manifest["feature_names"])
        normalisation = Normalisation.from_dict(manifest["normalisation"])
        hidden_sizes = list(manifest["architecture"]["hidden_sizes"])
        threshold = float(manifest["threshold"])
        return LoadedModel.from_state(
            arrays, feature_names, normalisation, threshold, hidden_sizes, version=name, manifest=manifest
        )

    def load_publishable(self, version: str) -> LoadedModel:
        """Version `vN` ready to serve on someone's say-so (a control-topic announcement).

        Only a complete version whose checksum verifies, whose manifest is sound and whose
        status is published; a rejected challenger is refused whoever announces it.
        """
        if not isinstance(version, str) or not _VERSION.match(version):
            raise ModelError(f"{version!r} is not a model version (vN)")
        name = self.resolve(version)
        manifest, _ = self._read_verified(name)
        status = manifest.get("status", STATUS_PUBLISHED)
        if status != STATUS_PUBLISHED:
            reason = manifest.get("reason") or "no reason recorded"
            raise ModelError(f"model {name} is {status} in the registry ({reason}); refusing to serve it")
        return self.load(name)

    def show(self, version: str = "current") -> dict[str, Any]:
        """The verified manifest of a version, plus whether it is current."""
        name = self.resolve(version)
        manifest, _ = self._read_verified(name)
        manifest["is_current"] = name == self.current_version()
        return manifest

    def list(self) -> list[ModelInfo]:
        """Every version with its status; corrupt or incomplete ones are listed, not loaded."""
        current = self.current_version()
        infos = []
        for version in self.versions():
            try:
                manifest, _ = self._read_verified(version)
            except ModelError as exc:
                infos.append(ModelInfo(version, "corrupt", version == current, problem=str(exc)))
                continue
            infos.append(
                ModelInfo(
                    version=version,
                    status=str(manifest.get("status", STATUS_PUBLISHED)),
                    is_current=version == current,
                    created_at=manifest.get("created_at"),
                    threshold=manifest.get("threshold"),
                    metrics=dict(manifest.get("metrics") or {}),
                    trainer=manifest.get("trainer"),
                    reason=manifest.get("reason"),
                )
            )
        return infos

    # -- the current pointer ------------------------------------------------------------------

    def _read_pointer(self) -> dict[str, Any] | None:
        try:
            data = json.loads((self.path / CURRENT_FILE).read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise ModelError(f"{self.path / CURRENT_FILE} is unreadable or corrupt: {exc}") from None
        if (
            not isinstance(data, dict)
            or not _VERSION.match(str(data.get("version", "")))
            or not isinstance(data.get("previous", []), list)
        ):
            raise ModelError(f"{self.path / CURRENT_FILE} is corrupt: expected a version and its history")
        return data

    def current_version(self) -> str | None:
        """The version the `current` pointer names, or None before the first promotion."""
        pointer = self._read_pointer()
        return None if pointer is None else str(pointer["version"])

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Serialise pointer updates between processes (read-modify-write of `current`)."""
        self.path.mkdir(parents=True, exist_ok=True)
        with open(self.path / LOCK_FILE, "a+b") as handle:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)

    def _write_pointer(self, version: str, previous: builtins.list[str]) -> None:
        data = {"version": version, "previous": previous, "updated_ms": int(time.time() * 1000)}
        try:
            write_bytes_atomic(self.path / CURRENT_FILE, json.dumps(data, indent=2).encode() + b"\n")
        except OSError as exc:
            raise ModelError(
                f"cannot switch {self.path / CURRENT_FILE} to {version}: {exc.strerror or exc}"
            ) from None

    def promote(self, version: str) -> str:
        """Make a verified, non-rejected version current; returns its name."""
        name = self.resolve(version)
        manifest, _ = self._read_verified(name)
        if manifest.get("status") == STATUS_REJECTED:
            reason = manifest.get("reason") or "no reason recorded"
            raise ModelError(f"model {name} was rejected ({reason}); it cannot become current")
        self.load(name)
        with self._locked():
            pointer = self._read_pointer()
            if pointer is None:
                self._write_pointer(name, [])
            elif pointer["version"] != name:
                self._write_pointer(name, [*pointer.get("previous", []), pointer["version"]])
        return name

    def rollback(self) -> str:
        """Point `current` back at the previously current version; returns it."""
        with self._locked():
            pointer = self._read_pointer()
            if pointer is None:
                raise ModelError(f"no current model in {self.path}; nothing to roll back")
            previous = [str(v) for v in pointer.get("previous", [])]
            while previous:
                candidate = previous.pop()
                # Skip versions deleted since; a corrupt one stops the rollback with its error.
                if (self.path / candidate).is_dir():
                    self.load(candidate)
                    self._write_pointer(candidate, previous)
                    return candidate
            raise ModelError(
                f"{pointer['version']} is the first current model in {self.path}; nothing to roll back to"
            )
