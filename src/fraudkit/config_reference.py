"""The configuration reference (docs/configuration.md), generated from the config model and default.yaml."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from fraudkit.config import FraudkitConfig

_KEY_LINE = re.compile(r"^(?P<indent>\s*)(?P<key>[A-Za-z_][\w.]*):(?P<rest>.*)$")


def yaml_comments(text: str) -> dict[str, str]:
    """Dotted key → its comment in default.yaml (inline, or the comment lines just above it)."""
    comments: dict[str, str] = {}
    stack: list[tuple[int, str]] = []
    pending: list[str] = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("#"):
            pending.append(stripped.lstrip("#").strip())
            continue
        match = _KEY_LINE.match(line)
        if not match:
            pending = []
            continue
        indent = len(match["indent"])
        while stack and stack[-1][0] >= indent:
            stack.pop()
        key = ".".join([name for _, name in stack] + [match["key"]])
        stack.append((indent, match["key"]))
        inline = match["rest"].split(" #", 1)[1].strip() if " #" in match["rest"] else ""
        comment = inline or " ".join(pending)
        if comment:
            comments[key] = comment
        pending = []
    return comments


def _rows(model: BaseModel, prefix: str, comments: dict[str, str]) -> list[tuple[str, str, str, str]]:
    rows = []
    for name, field in type(model).model_fields.items():
        value = getattr(model, name)
        path = f"{prefix}{name}"
        if isinstance(value, BaseModel):
            rows.extend(_rows(value, f"{path}.", comments))
            continue
        annotation = str(field.annotation).replace("typing.", "").replace("pathlib.", "")
        annotation = re.sub(r"<class '(\w+)'>", r"\1", annotation)
        rows.append((path, annotation, _show(value), comments.get(path, "")))
    return rows


def _show(value: Any) -> str:
    if isinstance(value, Path):
        return str(value)
    if value is None:
        return "null"
    return str(value)


def render_reference(default_yaml: Path = Path("configs/default.yaml")) -> str:
    """Markdown table of every setting: key, type, default and meaning."""
    comments = yaml_comments(default_yaml.read_text(encoding="utf-8"))
    lines = [
        "# Configuration reference",
        "",
        "Generated from the config model and the comments of `configs/default.yaml` by",
        "`python -m fraudkit.config_reference > docs/configuration.md` (a test keeps it current).",
        "",
        "Precedence: defaults < YAML file (`--config`, else `$FRAUDKIT_CONFIG`, else",
        "`configs/default.yaml`) < `FRAUDKIT_SECTION__KEY` environment variables < command-line flags",
        "(and `--set section.key=value`). `kafka.common`, `kafka.producer` and `kafka.consumer` take any",
        "librdkafka property (`FRAUDKIT_KAFKA__COMMON__SECURITY_PROTOCOL=SASL_SSL` sets",
        "`security.protocol`). Unknown keys are errors.",
        "",
        "| key | type | default | meaning |",
        "|---|---|---|---|",
    ]
    for path, annotation, default, comment in _rows(FraudkitConfig(), "", comments):
        cells = [f"`{path}`", annotation, f"`{default}`", comment]
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(render_reference(), end="")
