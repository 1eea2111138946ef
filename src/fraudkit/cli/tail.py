"""Commands of this group are registered here (see docs/architecture.md)."""

from __future__ import annotations

from fraudkit.cli.app import app  # noqa: F401
