"""Rules on the control topic: publish a rule set, read the latest one, and apply changes in every detector.

`RulesExtension` plugs into the scoring loop. At start it installs `detect.rules_file` (if set),
then reads the control topic from its beginning: the latest `rules_published` announcement still
there overrides the file. Afterwards it polls the topic without waiting between batches, so a
published set applies from the next batch on, with no restart. A set that does not fit the
serving model (an unknown feature, a type error) is logged and the previous set stays.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from typing import TYPE_CHECKING, Any

from fraudkit.config import FraudkitConfig
from fraudkit.detect import DetectContext, DetectExtension
from fraudkit.rules.language import (
    CONTROL_KEY,
    RULES_PUBLISHED,
    ActiveRules,
    RuleError,
    RuleSet,
    load_rules,
    rules_from_message,
    rules_message,
)
from fraudkit.schema import InvalidMessage, decode_json, encode

if TYPE_CHECKING:
    from fraudkit.detect import ModelHolder
    from fraudkit.stream.kafka import Consumer

MESSAGES_PER_POLL = 100
# Reading the control topic's history ends after this long without a message (or at the deadline):
# its end offset is not trusted (Tansu answers ListOffsets up to a record batch short).
HISTORY_IDLE_S = 0.5
HISTORY_DEADLINE_S = 10.0


def feature_names_for(config: FraudkitConfig, model: str | None = None) -> list[str]:
    """The names rules may use besides transaction fields: a model's features, else the configured spec's."""
    if model:
        from fraudkit.model.registry import Registry

        return list(Registry(config.registry.path).show(model).get("feature_names") or [])
    from fraudkit.detect import stream_spec

    return list(stream_spec(config).names)


def validate_rules(config: FraudkitConfig, path: str, model: str | None = None) -> RuleSet:
    """Parse a rule file and check its names and types against the features; RuleError otherwise."""
    rule_set = load_rules(path)
    rule_set.compile(feature_names_for(config, model))
    return rule_set


def open_control_history(config: FraudkitConfig, client: str) -> Consumer:
    """A reader of every partition of topics.control from its beginning."""
    from fraudkit.stream import kafka

    kafka.ensure_topics(config, [config.topics.control])
    return kafka.read_whole_topic(config, config.topics.control, client, kafka.OFFSET_BEGINNING)


def _announcements(messages: list[Any]) -> list[dict[str, Any]]:
    found = []
    for message in messages:
        if message.error() is not None:
            continue
        try:
            event = decode_json(message.value())
        except InvalidMessage:
            continue
        if event.get("type") == RULES_PUBLISHED:
            found.append(event)
    return found


def read_history(
    reader: Consumer, idle_s: float = HISTORY_IDLE_S, deadline_s: float = HISTORY_DEADLINE_S
) -> list[dict[str, Any]]:
    """The `rules_published` announcements a reader finds until `idle_s` pass without a message."""
    found: list[dict[str, Any]] = []
    deadline = time.monotonic() + deadline_s
    last = time.monotonic()
    while time.monotonic() < deadline and time.monotonic() - last < idle_s:
        messages = reader.consume(500, min(0.1, idle_s))
        if messages:
            last = time.monotonic()
            found.extend(_announcements(messages))
    return found


def latest_published(config: FraudkitConfig, idle_s: float = 1.0) -> dict[str, Any] | None:
    """The latest `rules_published` announcement on the control topic (by publication time), or None."""
    reader = open_control_history(config, "fraudkit-rules-show")
    try:
        found = read_history(
            reader, idle_s=idle_s, deadline_s=max(HISTORY_DEADLINE_S, config.kafka.connect_timeout_s)
        )
    finally:
        with contextlib.suppress(Exception):
            reader.close()
    return _latest(found)


def _latest(events: list[dict[str, Any]]) -> dict[str, Any] | None:
    # Partitions are read in no defined order: publication time orders announcements.
    def at(event: dict[str, Any]) -> int:
        value = event.get("at_ms")
        return value if isinstance(value, int) and not isinstance(value, bool) else -1

    return max(events, key=at) if events else None


def publish_rules(config: FraudkitConfig, rule_set: RuleSet) -> dict[str, Any]:
    """Announce a rule set on topics.control (key "rules") and wait for delivery; returns the message."""
    from fraudkit.stream import kafka

    kafka.ensure_topics(config, [config.topics.control])
    message = rules_message(rule_set, f"{socket.gethostname()}-{os.getpid()}", time.time_ns() // 1_000_000)
    producer = kafka.make_producer(config, **{"client.id": "fraudkit-rules-publish"})
    kafka.produce(producer, config.topics.control, encode(message), key=CONTROL_KEY)
    kafka.flush(producer, max(10.0, config.kafka.connect_timeout_s))
    return message


class RulesExtension(DetectExtension):
    """Installs rule sets on the model holder: from the file at start, then from the control topic."""

    def __init__(self, config: FraudkitConfig, initial: RuleSet | None = None, follow: bool = True) -> None:
        self.config = config
        self.initial = initial
        self.follow = follow
        self.reader: Consumer | None = None
        self.installed: list[str] = []  # versions, in order
        self._reported_problem: str | None = None
        self._latest_at = -1

    def on_start(self, context: DetectContext) -> None:
        """Install the file's rules, then the latest published set still on the control topic."""
        self.holder: ModelHolder = context.holder
        self.log = context.log
        if self.initial is not None:
            self._install(self.initial, f"file {self.initial.source}")
        if not self.follow:
            return
        self.reader = open_control_history(self.config, f"fraudkit-rules-{context.instance_id}")
        latest = _latest(read_history(self.reader))
        if latest is not None:
            self._consider(latest)

    def between_batches(self) -> None:
        """Apply announcements that arrived since the last batch; never waits."""
        if self.reader is not None:
            messages = self.reader.consume(MESSAGES_PER_POLL, 0)
            if messages:
                for event in _announcements(messages):
                    self._consider(event)
        active = self.holder.rules
        problem = active.problem if active is not None else None
        if problem and problem != self._reported_problem:
            self.log(f"warning: {problem}")
        self._reported_problem = problem

    def on_stop(self) -> None:
        """Close the control reader."""
        if self.reader is not None:
            with contextlib.suppress(Exception):
                self.reader.close()

    def _consider(self, event: dict[str, Any]) -> None:
        at_ms = event.get("at_ms")
        at = at_ms if isinstance(at_ms, int) and not isinstance(at_ms, bool) else -1
        if at < self._latest_at:
            return  # an older announcement read late from another partition
        try:
            rule_set = rules_from_message(event)
        except RuleError as exc:
            self.log(f"warning: ignoring a published rule set: {exc}")
            return
        self._latest_at = at
        self._install(rule_set, "the control topic")

    def _install(self, rule_set: RuleSet, origin: str) -> None:
        try:
            compiled = rule_set.compile(self.holder.spec.names)
        except RuleError as exc:
            current = self.holder.rules
            keeps = f"rules {current.rule_set.version} stay" if current is not None else "no rules apply"
            self.log(f"warning: rules {rule_set.version} from {origin} not applied ({exc}); {keeps}")
            return
        self.holder.rules = ActiveRules(compiled) if len(rule_set) else None
        self.installed.append(rule_set.version)
        self.log(f"now applying rules {rule_set.version} ({len(rule_set)} rule(s)) from {origin}")


def rules_extensions(config: FraudkitConfig) -> list[DetectExtension]:
    """The extension `fraudkit detect` runs for `detect.rules_file` / `detect.follow_rules`."""
    initial = load_rules(config.detect.rules_file) if config.detect.rules_file else None
    if initial is None and not config.detect.follow_rules:
        return []
    return [RulesExtension(config, initial, follow=config.detect.follow_rules)]
