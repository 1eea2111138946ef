"""Text from outside (messages, files, manifests) made safe to show on a terminal.

Two dangers: control characters (ESC starts sequences that recolour, retitle or rewrite the
terminal; C1 controls and bidi overrides do the same in other ways), and rich markup such as
`[red]` or `[link=...]`, which rich interprets in any string printed with markup on.
`printable()` handles the first, for places that never interpret markup (rich `Text`, prints
with `markup=False`); `for_terminal()` handles both, for strings that go into tables, panels
and markup-enabled prints.
"""

from __future__ import annotations

import unicodedata
from typing import Any

# Control (C0, C1, DEL), format (bidi overrides, zero-width), surrogate, private-use,
# unassigned, and line/paragraph separators.
_UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})


def _escape(char: str) -> str:
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def printable(value: Any, limit: int | None = None) -> str:
    """str(value) with control and format characters shown as escapes, truncated with '…'."""
    text = value if isinstance(value, str) else str(value)
    out = []
    length = 0
    for char in text:
        piece = _escape(char) if unicodedata.category(char) in _UNSAFE_CATEGORIES else char
        out.append(piece)
        length += len(piece)
        if limit is not None and length > limit:
            break
    result = "".join(out)
    return result if limit is None or len(result) <= limit else result[: limit - 1] + "…"


def for_terminal(value: Any, limit: int | None = None) -> str:
    """printable(value) with rich markup escaped too: safe in tables, panels and markup prints."""
    from rich.markup import escape

    return escape(printable(value, limit))
