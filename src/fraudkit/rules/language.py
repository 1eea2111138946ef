"""Rules next to the model: a small, safe condition language, rule sets and their vectorised evaluation.

A rule set is a list of named rules, each a condition and an action::

    rules:
      - name: vip_cards
        when: card_id in ["card-007", "card-042"]
        action: pass
      - name: huge_amount
        when: amount > 900
        action: flag
      - name: new_country_burst
        when: card_count_1h >= 5 and card_new_country == 1
        action: review

Conditions are parsed into an AST of this grammar (never evaluated as Python)::

    condition  := or
    or         := and ("or" and)*
    and        := unary ("and" unary)*
    unary      := "not" unary | "(" or ")" | comparison
    comparison := operand ("==" | "!=" | "<" | "<=" | ">" | ">=") operand
                | operand ["not"] "in" "[" [literal ("," literal)*] "]"
    operand    := NAME | literal
    literal    := NUMBER | STRING ('single' or "double" quoted, backslash escapes \\ \" \')

Names are transaction fields (`TEXT_FIELDS`, `NUMBER_FIELDS`) or the model's feature names
(numbers). Text compares only with `==`, `!=` and `in`; a missing value (null field, NaN) makes
every comparison on it false, `!=` and `not in` included.

Decision: the first `flag` (force fraud) or `pass` (force legit, an allow-list) rule that matches
a row decides it, in file order; without one the model decides. `review` rules never change the
decision; they set `review: true` on the verdict. Every matching rule is named in the verdict.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import orjson
import yaml

from fraudkit.errors import ConfigError
from fraudkit.schema import SCHEMA_VERSION, TEXT_COLUMNS, Transaction

Action = Literal["flag", "pass", "review"]
ACTIONS: tuple[str, ...] = ("flag", "pass", "review")
# The transaction's text columns; fraud_scenario is ground truth, which rules never see.
TEXT_FIELDS = tuple(name for name in TEXT_COLUMNS if name != "fraud_scenario")
NUMBER_FIELDS = ("amount", "lat", "lon", "event_time_ms")
RULES_PUBLISHED = "rules_published"
CONTROL_KEY = "rules"
MAX_RULES = 1000
MAX_CONDITION_CHARS = 10_000
# Levels of `not` and parentheses: the parser and the evaluators recurse once per level, and a
# published set is parsed inside every detector, where Python's recursion limit must never be hit.
MAX_NESTING = 100
MAX_LIST_ITEMS = 100_000
_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_RULE_KEYS = {"name", "when", "action", "description"}
_TOKEN = re.compile(
    r"""(?P<space>\s+)
      | (?P<number>-?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)
      | (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')
      | (?P<name>[A-Za-z_][A-Za-z0-9_]*)
      | (?P<op>==|!=|<=|>=|<|>|\(|\)|\[|\]|,)
    """,
    re.VERBOSE,
)
_KEYWORDS = {"and", "or", "not", "in"}
_ESCAPES = {"\\": "\\", '"': '"', "'": "'", "n": "\n", "t": "\t"}


class RuleError(ConfigError):
    """A rule file or a published rule set that cannot be used; the text names the rule and position."""


# -- the AST -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Name:
    """A field or feature name."""

    name: str
    position: int


@dataclass(frozen=True)
class Constant:
    """A number or a string."""

    value: float | str
    position: int


Operand = Name | Constant


@dataclass(frozen=True)
class Compare:
    """operand OP operand."""

    op: str
    left: Operand
    right: Operand


@dataclass(frozen=True)
class InList:
    """operand [not] in [literals]."""

    operand: Operand
    values: tuple[float | str, ...]
    negated: bool


@dataclass(frozen=True)
class BoolOp:
    """`and` / `or` of two or more conditions."""

    op: Literal["and", "or"]
    items: tuple[Node, ...]


@dataclass(frozen=True)
class Not:
    """`not` of a condition."""

    item: Node


Node = Compare | InList | BoolOp | Not


@dataclass(frozen=True)
class _Token:
    kind: str  # number, string, name, keyword, op, end
    text: str
    position: int  # 1-based character position in the condition


def _tokenize(text: str) -> list[_Token]:
    tokens: list[_Token] = []
    index = 0
    while index < len(text):
        match = _TOKEN.match(text, index)
        if match is None:
            raise _ParseError(f"unexpected character {text[index]!r}", index + 1)
        kind = match.lastgroup or ""
        value = match.group()
        if (
            kind == "number"
            and tokens
            and tokens[-1].kind in ("name", "number", "string")
            and value[0] == "-"
        ):
            raise _ParseError("arithmetic is not supported", index + 1)
        if kind == "name" and value in _KEYWORDS:
            kind = "keyword"
        if kind != "space":
            tokens.append(_Token(kind, value, index + 1))
        index = match.end()
    tokens.append(_Token("end", "", len(text) + 1))
    return tokens


class _ParseError(Exception):
    def __init__(self, message: str, position: int) -> None:
        super().__init__(message)
        self.message = message
        self.position = position


class _Parser:
    """Recursive descent over the grammar in the module docstring."""

    def __init__(self, text: str) -> None:
        self.tokens = _tokenize(text)
        self.index = 0
        self.depth = 0

    def peek(self) -> _Token:
        return self.tokens[self.index]

    def take(self) -> _Token:
        token = self.tokens[self.index]
        self.index += 1
        return token

    def expect(self, text: str, what: str) -> _Token:
        token = self.peek()
        if token.text != text or token.kind in ("string", "end"):
            raise _ParseError(f"expected {what}, found {_describe(token)}", token.position)
        return self.take()

    def parse(self) -> Node:
        node = self.disjunction()
        token = self.peek()
        if token.kind != "end":
            raise _ParseError(f"unexpected {_describe(token)}", token.position)
        return node

    def disjunction(self) -> Node:
        items = [self.conjunction()]
        while self.peek().kind == "keyword" and self.peek().text == "or":
            self.take()
            items.append(self.conjunction())
        return items[0] if len(items) == 1 else BoolOp("or", tuple(items))

    def conjunction(self) -> Node:
        items = [self.unary()]
        while self.peek().kind == "keyword" and self.peek().text == "and":
            self.take()
            items.append(self.unary())
        return items[0] if len(items) == 1 else BoolOp("and", tuple(items))

    def unary(self) -> Node:
        token = self.peek()
        negation = token.kind == "keyword" and token.text == "not"
        if not negation and not (token.kind == "op" and token.text == "("):
            return self.comparison()
        self.depth += 1
        if self.depth > MAX_NESTING:
            raise _ParseError(f"nested deeper than {MAX_NESTING} levels of 'not' and '('", token.position)
        self.take()
        if negation:
            node: Node = Not(self.unary())
        else:
            node = self.disjunction()
            self.expect(")", "')'")
        self.depth -= 1
        return node

    def operand(self) -> Operand:
        token = self.take()
        if token.kind == "name":
            return Name(token.text, token.position)
        if token.kind in ("number", "string"):
            return Constant(_literal(token), token.position)
        raise _ParseError(
            f"expected a field, feature, number or string, found {_describe(token)}", token.position
        )

    def comparison(self) -> Node:
        left = self.operand()
        token = self.peek()
        negated = False
        if token.kind == "keyword" and token.text == "not":
            self.take()
            negated = True
            token = self.peek()
            if token.text != "in" or token.kind != "keyword":
                raise _ParseError(f"expected 'in' after 'not', found {_describe(token)}", token.position)
        if token.kind == "keyword" and token.text == "in":
            self.take()
            return InList(left, self.literal_list(), negated)
        if token.kind == "op" and token.text in ("==", "!=", "<", "<=", ">", ">="):
            self.take()
            return Compare(token.text, left, self.operand())
        raise _ParseError(
            f"expected a comparison (== != < <= > >= in) after {_operand_text(left)}, found "
            f"{_describe(token)}",
            token.position,
        )

    def literal_list(self) -> tuple[float | str, ...]:
        self.expect("[", "'[' to open a list")
        values: list[float | str] = []
        if self.peek().text == "]" and self.peek().kind == "op":
            self.take()
            return ()
        while True:
            token = self.take()
            if token.kind not in ("number", "string"):
                raise _ParseError(
                    f"expected a number or string in the list, found {_describe(token)}", token.position
                )
            values.append(_literal(token))
            if len(values) > MAX_LIST_ITEMS:
                raise _ParseError(f"lists hold at most {MAX_LIST_ITEMS:,} values", token.position)
            separator = self.take()
            if separator.kind == "op" and separator.text == "]":
                break
            if separator.kind != "op" or separator.text != ",":
                raise _ParseError(f"expected ',' or ']', found {_describe(separator)}", separator.position)
        kinds = {type(value) for value in values}
        if len(kinds) > 1:
            raise _ParseError("a list mixes numbers and strings", token.position)
        return tuple(values)


def _literal(token: _Token) -> float | str:
    if token.kind == "number":
        return float(token.text)
    body = token.text[1:-1]
    out: list[str] = []
    index = 0
    while index < len(body):
        char = body[index]
        if char == "\\":
            escaped = body[index + 1]
            if escaped not in _ESCAPES:
                raise _ParseError(f"unknown escape \\{escaped} in a string", token.position + index + 1)
            out.append(_ESCAPES[escaped])
            index += 2
        else:
            out.append(char)
            index += 1
    return "".join(out)


def _describe(token: _Token) -> str:
    if token.kind == "end":
        return "the end of the condition"
    return repr(token.text)


def _operand_text(operand: Operand) -> str:
    return operand.name if isinstance(operand, Name) else repr(operand.value)


def parse_condition(text: str) -> Node:
    """The AST of one condition; RuleError-free: raises _ParseError for the caller to word."""
    return _Parser(text).parse()


# -- type checking and compilation to vectorised closures --------------------------------------


class Columns(Protocol):
    """Column access over a batch: numbers as float64 (NaN = missing), text as object arrays (None = missing)."""

    rows: int

    def number(self, name: str) -> np.ndarray:
        """A numeric column."""
        ...

    def text(self, name: str) -> np.ndarray:
        """A text column."""
        ...


Evaluator = Callable[[Columns], np.ndarray]


def _kind_of(name: Name, feature_names: set[str]) -> str:
    if name.name in TEXT_FIELDS:
        return "text"
    if name.name in NUMBER_FIELDS or name.name in feature_names:
        return "number"
    raise _ParseError(f"unknown field or feature {name.name!r}", name.position)


def _operand_kind(operand: Operand, feature_names: set[str]) -> str:
    if isinstance(operand, Name):
        return _kind_of(operand, feature_names)
    return "text" if isinstance(operand.value, str) else "number"


_NUMBER_OPS: dict[str, Callable[[Any, Any], np.ndarray]] = {
    "==": np.equal,
    "!=": np.not_equal,
    "<": np.less,
    "<=": np.less_equal,
    ">": np.greater,
    ">=": np.greater_equal,
}


def _compile(node: Node, feature_names: set[str]) -> Evaluator:
    if isinstance(node, BoolOp):
        parts = [_compile(item, feature_names) for item in node.items]
        combine = np.logical_and if node.op == "and" else np.logical_or

        def boolean(columns: Columns) -> np.ndarray:
            result = parts[0](columns)
            for part in parts[1:]:
                result = combine(result, part(columns))
            return result

        return boolean
    if isinstance(node, Not):
        inner = _compile(node.item, feature_names)
        return lambda columns: np.logical_not(inner(columns))
    if isinstance(node, InList):
        return _compile_in(node, feature_names)
    return _compile_compare(node, feature_names)


def _compile_compare(node: Compare, feature_names: set[str]) -> Evaluator:
    left_kind = _operand_kind(node.left, feature_names)
    right_kind = _operand_kind(node.right, feature_names)
    if left_kind != right_kind:
        where = node.right if isinstance(node.left, Name) else node.left
        raise _ParseError(
            f"compares {_operand_text(node.left)} ({left_kind}) with {_operand_text(node.right)} ({right_kind})",
            where.position,
        )
    if left_kind == "text" and node.op not in ("==", "!="):
        raise _ParseError(f"text compares only with == and != (not {node.op})", node.left.position)
    left = _operand_getter(node.left, left_kind)
    right = _operand_getter(node.right, right_kind)
    if left_kind == "number":
        op = _NUMBER_OPS[node.op]

        def numbers(columns: Columns) -> np.ndarray:
            a, b = left(columns), right(columns)
            with np.errstate(invalid="ignore"):
                result = op(a, b)
            # NaN (a missing value) makes every comparison false, != included.
            return np.logical_and(result, ~(np.isnan(a) | np.isnan(b)))

        return numbers
    equal = node.op == "=="

    def texts(columns: Columns) -> np.ndarray:
        a, b = left(columns), right(columns)
        rows = columns.rows
        if isinstance(a, str) and isinstance(b, str):
            return np.full(rows, (a == b) == equal)
        present = np.ones(rows, dtype=bool)
        for side in (a, b):
            if not isinstance(side, str):
                present &= np.fromiter((value is not None for value in side), dtype=bool, count=rows)
        same = np.asarray(a == b, dtype=bool)
        return np.logical_and(same if equal else ~same, present)

    return texts


def _operand_getter(operand: Operand, kind: str) -> Callable[[Columns], Any]:
    if isinstance(operand, Constant):
        value = operand.value
        return lambda columns: value
    name = operand.name
    if kind == "number":
        return lambda columns: columns.number(name)
    return lambda columns: columns.text(name)


def _compile_in(node: InList, feature_names: set[str]) -> Evaluator:
    kind = _operand_kind(node.operand, feature_names)
    if node.values:
        value_kind = "text" if isinstance(node.values[0], str) else "number"
        if value_kind != kind:
            raise _ParseError(
                f"{_operand_text(node.operand)} ({kind}) is tested against a list of {value_kind}s",
                node.operand.position,
            )
    getter = _operand_getter(node.operand, kind)
    negated = node.negated
    if kind == "number":
        numbers = np.asarray(node.values, dtype=np.float64)

        def in_numbers(columns: Columns) -> np.ndarray:
            column = np.broadcast_to(np.asarray(getter(columns), dtype=np.float64), (columns.rows,))
            found = np.isin(column, numbers)
            return np.logical_and(~found if negated else found, ~np.isnan(column))

        return in_numbers
    members = frozenset(node.values)

    def in_texts(columns: Columns) -> np.ndarray:
        column = getter(columns)
        rows = columns.rows
        if isinstance(column, str):
            return np.full(rows, (column in members) != negated)
        found = np.fromiter((value in members for value in column), dtype=bool, count=rows)
        present = np.fromiter((value is not None for value in column), dtype=bool, count=rows)
        return np.logical_and(~found if negated else found, present)

    return in_texts


def _names_in(node: Node) -> set[str]:
    if isinstance(node, BoolOp):
        return set().union(*(_names_in(item) for item in node.items))
    if isinstance(node, Not):
        return _names_in(node.item)
    operands = [node.operand] if isinstance(node, InList) else [node.left, node.right]
    return {operand.name for operand in operands if isinstance(operand, Name)}


# -- rules and rule sets -----------------------------------------------------------------------


@dataclass(frozen=True)
class Rule:
    """One named condition with its action."""

    name: str
    when: str
    action: str
    description: str = ""
    condition: Node | None = field(default=None, compare=False, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """The YAML / wire form."""
        data: dict[str, Any] = {"name": self.name, "when": self.when, "action": self.action}
        if self.description:
            data["description"] = self.description
        return data

    @property
    def names(self) -> set[str]:
        """Field and feature names the condition reads."""
        assert self.condition is not None
        return _names_in(self.condition)


@dataclass
class RuleOutcome:
    """What a rule set did to one batch."""

    fraud: np.ndarray  # the final decision (bool per row)
    review: np.ndarray  # bool per row: a `review` rule matched
    fired: list[list[str]]  # names of the matching rules per row, in rule order
    decided: np.ndarray  # bool per row: a flag/pass rule decided instead of the model
    version: str = ""  # of the rule set

    @property
    def hits(self) -> int:
        """Rows on which at least one rule matched."""
        return sum(1 for names in self.fired if names)


@dataclass
class RuleSet:
    """An ordered list of rules, with a version (a hash of their content) and where they came from."""

    rules: list[Rule]
    source: str = ""
    version: str = ""

    def __post_init__(self) -> None:
        if not self.version:
            self.version = content_version(self.rules)

    def __len__(self) -> int:
        return len(self.rules)

    def to_dicts(self) -> list[dict[str, Any]]:
        """The rules as plain data."""
        return [rule.to_dict() for rule in self.rules]

    def to_yaml(self) -> str:
        """The rule file form."""
        return yaml.safe_dump({"rules": self.to_dicts()}, sort_keys=False, allow_unicode=True)

    @property
    def names(self) -> set[str]:
        """Every field and feature name the rules read."""
        return set().union(*(rule.names for rule in self.rules)) if self.rules else set()

    def compile(self, feature_names: Sequence[str]) -> CompiledRules:
        """Check every name and type against these features and build the vectorised evaluators."""
        known = set(feature_names)
        evaluators = []
        for rule in self.rules:
            assert rule.condition is not None
            try:
                evaluators.append(_compile(rule.condition, known))
            except _ParseError as exc:
                raise RuleError(_error_text(self.source, rule.name, exc, rule.when)) from None
        return CompiledRules(self, list(feature_names), evaluators)


def content_version(rules: Sequence[Rule]) -> str:
    """The first 12 hex digits of the SHA-256 of the rules' canonical JSON."""
    canonical = orjson.dumps([rule.to_dict() for rule in rules], option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(canonical).hexdigest()[:12]


@dataclass
class CompiledRules:
    """A rule set bound to one list of feature names, ready to apply to batches."""

    rule_set: RuleSet
    feature_names: list[str]
    evaluators: list[Evaluator]

    def apply(self, columns: Columns, model_fraud: np.ndarray) -> RuleOutcome:
        """Combine the model's decisions with the rules (see the module docstring)."""
        rows = columns.rows
        fraud = np.array(model_fraud, dtype=bool, copy=True)
        review = np.zeros(rows, dtype=bool)
        undecided = np.ones(rows, dtype=bool)
        masks: list[np.ndarray] = []
        for rule, evaluate in zip(self.rule_set.rules, self.evaluators, strict=True):
            mask = np.broadcast_to(np.asarray(evaluate(columns), dtype=bool), (rows,))
            masks.append(mask)
            if rule.action == "review":
                review |= mask
                continue
            hit = mask & undecided
            fraud[hit] = rule.action == "flag"
            undecided &= ~mask
        fired: list[list[str]] = [[] for _ in range(rows)]
        if masks:
            stacked = np.vstack(masks)
            for row in np.flatnonzero(stacked.any(axis=0)).tolist():
                fired[row] = [self.rule_set.rules[i].name for i in np.flatnonzero(stacked[:, row]).tolist()]
        return RuleOutcome(fraud, review, fired, ~undecided, self.rule_set.version)


def _error_text(source: str, rule_name: str, exc: _ParseError, when: str) -> str:
    where = f"{source}: " if source else ""
    start = max(0, exc.position - 40)
    snippet = ("…" if start else "") + when[start : start + 80] + ("…" if len(when) > start + 80 else "")
    return f"{where}rule {rule_name!r}: when, character {exc.position}: {exc.message} (in {snippet!r})"


def _rule_from_dict(data: Any, index: int, source: str, seen: set[str]) -> Rule:
    where = f"{source}: " if source else ""
    if not isinstance(data, dict):
        raise RuleError(f"{where}rules[{index}]: expected a mapping with name, when and action")
    name = data.get("name")
    label = f"rule {name!r}" if isinstance(name, str) and name else f"rules[{index}]"
    unknown = sorted(str(key) for key in data if key not in _RULE_KEYS)
    if unknown:
        raise RuleError(
            f"{where}{label}: unknown key(s) {', '.join(unknown)} (allowed: action, description, name, when)"
        )
    if not isinstance(name, str) or not _NAME.match(name):
        raise RuleError(f"{where}{label}: name: expected 1-64 letters, digits, '_', '.' or '-'")
    if name in seen:
        raise RuleError(f"{where}{label}: name: used by an earlier rule too")
    seen.add(name)
    action = data.get("action")
    if action not in ACTIONS:
        raise RuleError(f"{where}{label}: action: expected one of {', '.join(ACTIONS)}, got {action!r}")
    when = data.get("when")
    if isinstance(when, bool) or not isinstance(when, str) or not when.strip():
        raise RuleError(f"{where}{label}: when: expected a condition such as 'amount > 900'")
    if len(when) > MAX_CONDITION_CHARS:
        raise RuleError(f"{where}{label}: when: longer than {MAX_CONDITION_CHARS:,} characters")
    description = data.get("description") or ""
    if not isinstance(description, str):
        raise RuleError(f"{where}{label}: description: expected text")
    try:
        condition = parse_condition(when)
    except _ParseError as exc:
        raise RuleError(_error_text(source, name, exc, when)) from None
    return Rule(name, when, str(action), description, condition)


def rules_from_data(data: Any, source: str = "") -> RuleSet:
    """A rule set from parsed YAML/JSON: `{"rules": [...]}` or a bare list; RuleError names rule and position."""
    where = f"{source}: " if source else ""
    if isinstance(data, dict):
        unknown = sorted(str(key) for key in data if key != "rules")
        if unknown:
            raise RuleError(f"{where}unknown top-level key(s) {', '.join(unknown)} (expected 'rules')")
        data = data.get("rules")
    if data is None:
        data = []
    if not isinstance(data, list):
        raise RuleError(f"{where}rules: expected a list of rules")
    if len(data) > MAX_RULES:
        raise RuleError(f"{where}rules: at most {MAX_RULES} rules (got {len(data)})")
    seen: set[str] = set()
    return RuleSet([_rule_from_dict(item, index, source, seen) for index, item in enumerate(data)], source)


def load_rules(path: Path | str) -> RuleSet:
    """Read and parse a YAML rule file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RuleError(f"rules file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise RuleError(f"cannot read rules file {path}: {getattr(exc, 'strerror', None) or exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise RuleError(f"invalid YAML in {path}{where}: {getattr(exc, 'problem', exc)}") from None
    return rules_from_data(data, str(path))


# -- the control-topic message -----------------------------------------------------------------


def rules_message(rule_set: RuleSet, publisher: str, at_ms: int) -> dict[str, Any]:
    """The `rules_published` announcement (docs/messages.md)."""
    return {
        "schema": SCHEMA_VERSION,
        "type": RULES_PUBLISHED,
        "version": rule_set.version,
        "rules": rule_set.to_dicts(),
        "source": rule_set.source,
        "at_ms": at_ms,
        "publisher": publisher,
    }


def rules_from_message(message: Mapping[str, Any]) -> RuleSet:
    """Parse a `rules_published` announcement again (never trusted); RuleError if unusable."""
    version = message.get("version")
    rule_set = rules_from_data(message.get("rules"), f"published rule set {str(version)[:40]!r}")
    if version != rule_set.version:
        raise RuleError(
            f"published rule set {str(version)[:40]!r}: its version does not match its content "
            f"({rule_set.version})"
        )
    source = message.get("source")
    rule_set.source = source if isinstance(source, str) else ""
    return rule_set


# -- column access -----------------------------------------------------------------------------


class BatchColumns:
    """Columns of a detector batch: transaction fields from the records, features from the matrix."""

    def __init__(
        self, transactions: Sequence[Transaction], features: np.ndarray, feature_names: Sequence[str]
    ) -> None:
        self.rows = len(transactions)
        self.transactions = transactions
        self.features = features
        self.index = {name: i for i, name in enumerate(feature_names)}
        self._cache: dict[str, np.ndarray] = {}

    def number(self, name: str) -> np.ndarray:
        cached = self._cache.get(name)
        if cached is not None:
            return cached
        if name in NUMBER_FIELDS:
            values = [getattr(tx, name) for tx in self.transactions]
            column = np.array([np.nan if v is None else v for v in values], dtype=np.float64)
        else:
            column = self.features[:, self.index[name]].astype(np.float64)
        self._cache[name] = column
        return column

    def text(self, name: str) -> np.ndarray:
        cached = self._cache.get(name)
        if cached is None:
            cached = np.empty(self.rows, dtype=object)
            cached[:] = [getattr(tx, name) for tx in self.transactions]
            self._cache[name] = cached
        return cached


class FrameColumns:
    """Columns of a pandas frame (evaluate's backtest): missing values (NaN, None) read as missing."""

    def __init__(self, frame: Any) -> None:
        self.frame = frame
        self.rows = len(frame)

    def number(self, name: str) -> np.ndarray:
        return np.asarray(self.frame[name].to_numpy(dtype=np.float64, na_value=np.nan), dtype=np.float64)

    def text(self, name: str) -> np.ndarray:
        values = self.frame[name].to_numpy(dtype=object)
        column = np.empty(self.rows, dtype=object)
        column[:] = [value if isinstance(value, str) else None for value in values]
        return column


class ActiveRules:
    """The rule set a detector applies, re-bound when the model's feature names change.

    Owned by the loop's thread: `RulesExtension` installs sets between batches, `apply` runs in a batch.
    """

    def __init__(self, compiled: CompiledRules) -> None:
        self.rule_set = compiled.rule_set
        self.compiled: CompiledRules | None = compiled
        self.bound_names = list(compiled.feature_names)
        self.problem: str | None = None
        self.applied_batches = 0
        self.hits = 0

    def apply(
        self,
        transactions: Sequence[Transaction],
        features: np.ndarray,
        feature_names: Sequence[str],
        model_fraud: np.ndarray,
    ) -> RuleOutcome | None:
        """The batch's outcome, or None (the model alone decides) while the rules do not fit the features."""
        if list(feature_names) != self.bound_names:
            # A model with other features was swapped in: check the names again before using them.
            self.bound_names = list(feature_names)
            try:
                self.compiled = self.rule_set.compile(feature_names)
                self.problem = None
            except RuleError as exc:
                self.compiled = None
                self.problem = f"rules {self.rule_set.version} not applied to this model: {exc}"
        if self.compiled is None:
            return None
        outcome = self.compiled.apply(BatchColumns(transactions, features, feature_names), model_fraud)
        self.applied_batches += 1
        self.hits += outcome.hits
        return outcome


def backtest_scores(
    compiled: CompiledRules, columns: Columns, model_scores: np.ndarray, threshold: float
) -> tuple[np.ndarray, np.ndarray]:
    """Scores of the rules alone (1 where a `flag` rule decides, else 0) and of model + rules.

    The combined score is the model's, set to 1 where a `flag` rule decides and 0 where a `pass`
    rule does, so at the model's threshold it gives exactly the detector's combined decision.
    """
    scores = np.asarray(model_scores, dtype=np.float64)
    outcome = compiled.apply(columns, scores >= threshold)
    forced_fraud = outcome.decided & outcome.fraud
    forced_legit = outcome.decided & ~outcome.fraud
    alone = forced_fraud.astype(np.float64)
    combined = scores.copy()
    combined[forced_fraud] = 1.0
    combined[forced_legit] = 0.0
    return alone, combined
