"""`fraudkit rules validate|publish|show`: rule sets next to the model (docs/rules.md)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from fraudkit.cli.app import app, console, load
from fraudkit.cli.options import ConfigOption, JsonOption, SetOption, model_flag

rules_app = typer.Typer(
    help="Validate, publish and show the rules applied next to the model.", no_args_is_help=True
)
app.add_typer(rules_app, name="rules")

FileArgument = Annotated[Path, typer.Argument(help="YAML rule file (docs/rules.md).", show_default=False)]
ModelOption = Annotated[
    str | None, model_flag("Check names against this model's features (default: the configured dataset's).")
]


def _print(text: str) -> None:
    from fraudkit.tail import safe_text

    # Rule text comes from files and the control topic: no terminal escapes get through.
    for line in text.splitlines():
        console.print(safe_text(line, None), markup=False, highlight=False, soft_wrap=True)


def _summary(data: dict[str, Any]) -> str:
    rules = data.get("rules") or []
    counts = {
        action: sum(1 for rule in rules if rule.get("action") == action)
        for action in ("flag", "pass", "review")
    }
    parts = ", ".join(f"{count} {action}" for action, count in counts.items() if count)
    return f"rules {data.get('version')}: {len(rules)} rule(s){' (' + parts + ')' if parts else ''}"


@rules_app.command("validate")
def validate(
    file: FileArgument,
    model: ModelOption = None,
    json_output: JsonOption = False,
    config: ConfigOption = None,
    set_: SetOption = None,
) -> None:
    """Parse a rule file and check every name and type; exit 2 naming the rule and position if not."""
    from fraudkit.rules.live import validate_rules

    rule_set = validate_rules(load(config, set_), str(file), model)
    data = {"version": rule_set.version, "rules": rule_set.to_dicts(), "source": str(file)}
    if json_output:
        typer.echo(json.dumps(data))
        return
    _print(f"{file}: valid; {_summary(data)}")


@rules_app.command("publish")
def publish(
    file: FileArgument,
    model: ModelOption = None,
    json_output: JsonOption = False,
    config: ConfigOption = None,
    set_: SetOption = None,
) -> None:
    """Validate a rule file and announce it on the control topic: every detector applies it from its next batch."""
    from fraudkit.rules.live import publish_rules, validate_rules

    cfg = load(config, set_)
    message = publish_rules(cfg, validate_rules(cfg, str(file), model))
    if json_output:
        typer.echo(json.dumps(message))
        return
    _print(f"published {_summary(message)} on {cfg.topics.control}")


@rules_app.command("show")
def show(json_output: JsonOption = False, config: ConfigOption = None, set_: SetOption = None) -> None:
    """Print the latest rule set published on the control topic (as a rule file)."""
    from fraudkit.errors import ConfigError
    from fraudkit.rules.language import rules_from_data
    from fraudkit.rules.live import latest_published

    cfg = load(config, set_)
    message = latest_published(cfg)
    if message is None:
        raise ConfigError(f"no rule set published on {cfg.topics.control} (fraudkit rules publish FILE)")
    if json_output:
        typer.echo(json.dumps(message))
        return
    _print(f"# {_summary(message)}, published at_ms {message.get('at_ms')} by {message.get('publisher')}")
    try:
        text = rules_from_data(message.get("rules")).to_yaml()
    except ConfigError as exc:
        text = f"# not a usable rule set: {exc}\n" + json.dumps(message.get("rules"), indent=2)
    _print(text)
