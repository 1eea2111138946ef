"""Figures as text for tables and panels (time has its own module, timefmt)."""

from __future__ import annotations


def ratio_text(value: float | None, digits: int = 3) -> str:
    """A ratio such as a precision or a score with fixed decimals ("-" for None)."""
    return "-" if value is None else f"{value:.{digits}f}"
