"""The public API re-exported by `fraudkit/__init__.py` resolves, lazily."""

from __future__ import annotations

import subprocess
import sys

import pytest

import fraudkit


@pytest.mark.parametrize("name", [n for n in fraudkit.__all__ if n != "__version__"])
def test_every_public_name_resolves_to_its_definition(name: str) -> None:
    value = getattr(fraudkit, name)
    assert getattr(value, "__name__", name) == name


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'nothing_here'"):
        fraudkit.nothing_here  # noqa: B018


def test_importing_fraudkit_and_its_cli_loads_no_heavy_module() -> None:
    code = (
        "import sys, fraudkit, fraudkit.cli; "
        "print(sorted(m for m in ('torch', 'pyspark', 'pandas', 'confluent_kafka') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
