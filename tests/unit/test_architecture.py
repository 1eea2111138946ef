"""docs/architecture.md's module table names every module of the package (it is the map newcomers use)."""

from __future__ import annotations

from pathlib import Path

PACKAGE = Path(__file__).parents[2] / "src" / "fraudkit"


def test_every_module_is_in_the_architecture_table() -> None:
    table = (PACKAGE.parents[1] / "docs" / "architecture.md").read_text()
    modules = sorted(
        str(path.relative_to(PACKAGE))
        for path in PACKAGE.rglob("*.py")
        if path.name not in ("__init__.py", "__main__.py")
    )
    missing = [module for module in modules if f"`{module}`" not in table]
    assert missing == [], f"add these to docs/architecture.md's module table: {missing}"
