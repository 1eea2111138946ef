"""The rule language: parsing, errors with rule name and position, vectorised evaluation, decisions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import orjson
import pandas as pd
import pytest
from typer.testing import CliRunner

from fraudkit.cli import app
from fraudkit.detect.codec import encode_verdicts
from fraudkit.rules.language import (
    ActiveRules,
    BatchColumns,
    FrameColumns,
    RuleError,
    backtest_scores,
    load_rules,
    rules_from_data,
    rules_from_message,
    rules_message,
)
from fraudkit.schema import Label, Transaction, decode_label, encode

FEATURES = ["amount", "card_count_1h", "card_new_country"]
runner = CliRunner()


def tx(index: int, amount: float, country: str | None = "DE", terminal: str | None = "t1") -> Transaction:
    return Transaction(
        f"tx{index}", 1_767_225_600_000 + index, f"card{index}", amount, terminal_id=terminal, country=country
    )


def one_rule(when: str, action: str = "flag"):
    return rules_from_data([{"name": "r", "when": when, "action": action}], "test.yaml")


def evaluate(when: str, transactions: list[Transaction], features: np.ndarray) -> list[bool]:
    compiled = one_rule(when).compile(FEATURES)
    columns = BatchColumns(transactions, features, FEATURES)
    return compiled.apply(columns, np.zeros(len(transactions), dtype=bool)).fraud.tolist()


BATCH = [
    tx(0, 950.0),
    tx(1, 10.0, country="FR"),
    tx(2, 500.0, country=None, terminal=None),
    tx(3, 901.0, "US", "t9"),
]
MATRIX = np.array([[950, 1, 0], [10, 6, 1], [500, 5, 1], [901, 0, 0]], dtype=np.float32)


@pytest.mark.parametrize(
    ("when", "expected"),
    [
        ("amount > 900", [True, False, False, True]),
        ("amount >= 500 and amount < 901", [False, False, True, False]),
        ("card_count_1h >= 5 and card_new_country == 1", [False, True, True, False]),
        ("not (amount > 900) or country == 'US'", [False, True, True, True]),
        ('country in ["FR", "US"]', [False, True, False, True]),
        # Missing values make every comparison false, negated ones included.
        ('country not in ["FR"]', [True, False, False, True]),
        ('terminal_id != "t1"', [False, False, False, True]),
        ("country == 'DE' or amount < 100 and card_count_1h > 5", [True, True, False, False]),
        ("amount in [10, 901]", [False, True, False, True]),
        ("-1 < card_count_1h", [True, True, True, True]),
        ("amount > 1e3", [False, False, False, False]),
        ('country == "D\\"E"', [False, False, False, False]),
        # MAX_NESTING (100) levels: 99 negations of a parenthesised comparison.
        ("not " * 99 + "(amount > 900)", [False, True, True, False]),
    ],
)
def test_conditions_evaluate_over_the_batch(when: str, expected: list[bool]) -> None:
    assert evaluate(when, BATCH, MATRIX) == expected


@pytest.mark.parametrize(
    ("when", "message"),
    [
        ("amount >", "character 9: expected a field, feature, number or string, found the end"),
        ('amount > "x"', "character 10: compares amount (number) with 'x' (text)"),
        ("foo == 1", "character 1: unknown field or feature 'foo'"),
        ('country < "a"', "character 1: text compares only with == and != (not <)"),
        ("amount > 5 5", "character 12: unexpected '5'"),
        ('amount in [1, "a"]', "a list mixes numbers and strings"),
        ("(amount > 1", "character 12: expected ')'"),
        ("amount @ 3", "character 8: unexpected character '@'"),
        ("amount", "character 7: expected a comparison"),
        ("amount -5 > 1", "character 8: arithmetic is not supported"),
        ('country in ["FR", 1]', "a list mixes numbers and strings"),
        ("country in [1, 2]", "country (text) is tested against a list of numbers"),
        (
            "__import__('os') == 1",
            "character 11: expected a comparison (== != < <= > >= in) after __import__, found '('",
        ),
        ("amount > 1 and", "character 15: expected a field"),
        ("not " * 100 + "(amount > 1)", "character 401: nested deeper than 100 levels of 'not' and '('"),
    ],
)
def test_errors_name_the_rule_the_file_and_the_position(when: str, message: str) -> None:
    with pytest.raises(RuleError) as caught:
        one_rule(when).compile(FEATURES)
    text = str(caught.value)
    assert text.startswith("test.yaml: rule 'r': when, ")
    assert message in text


def test_rule_file_structure_is_checked(tmp_path: Path) -> None:
    cases = {
        "rules: {a: 1}": "rules: expected a list of rules",
        "other: []": "unknown top-level key(s) other",
        "rules: [{name: a, when: amount > 1, action: block}]": "rule 'a': action: expected one of flag, pass, review",
        "rules: [{name: a, when: amount > 1, action: flag}, {name: a, when: amount > 2, action: pass}]": (
            "rule 'a': name: used by an earlier rule too"
        ),
        "rules: [{name: 'a b', when: amount > 1, action: flag}]": "name: expected 1-64 letters",
        "rules: [{name: a, when: '', action: flag}]": "rule 'a': when: expected a condition",
        "rules: [{name: a, when: amount > 1, action: flag, score: 3}]": "rule 'a': unknown key(s) score",
        "rules: [": "invalid YAML in",
    }
    for text, message in cases.items():
        path = tmp_path / "rules.yaml"
        path.write_text(text)
        with pytest.raises(RuleError) as caught:
            load_rules(path)
        assert message in str(caught.value), text
        assert str(path) in str(caught.value)
    with pytest.raises(RuleError, match="rules file not found"):
        load_rules(tmp_path / "missing.yaml")


def test_first_decisive_rule_wins_and_review_only_marks() -> None:
    rule_set = rules_from_data(
        {
            "rules": [
                {"name": "vip", "when": 'card_id in ["card0", "card1"]', "action": "pass"},
                {"name": "big", "when": "amount > 900", "action": "flag"},
                {"name": "watch", "when": "card_count_1h >= 5", "action": "review"},
            ]
        }
    )
    outcome = rule_set.compile(FEATURES).apply(
        BatchColumns(BATCH, MATRIX, FEATURES), np.array([True, True, False, False])
    )
    # card0: allow-listed although big and flagged by the model; card1: allow-listed, still marked for review.
    assert outcome.fraud.tolist() == [False, False, False, True]
    assert outcome.review.tolist() == [False, True, True, False]
    assert outcome.decided.tolist() == [True, True, False, True]
    assert outcome.fired == [["vip", "big"], ["vip", "watch"], ["watch"], ["big"]]
    assert outcome.version == rule_set.version
    assert outcome.hits == 4


def test_version_is_a_content_hash_and_messages_round_trip() -> None:
    rules = [{"name": "big", "when": "amount > 900", "action": "flag"}]
    first = rules_from_data(rules, "a.yaml")
    assert first.version == rules_from_data({"rules": rules}, "b.yaml").version
    assert first.version != rules_from_data([{**rules[0], "when": "amount > 901"}]).version
    message = rules_message(first, "me", 123)
    assert message["type"] == "rules_published" and message["version"] == first.version
    again = rules_from_message(orjson.loads(orjson.dumps(message)))
    assert again.to_dicts() == first.to_dicts() and again.source == "a.yaml"
    tampered = {**message, "rules": [{**rules[0], "when": "amount > 1"}]}
    with pytest.raises(RuleError, match="its version does not match its content"):
        rules_from_message(tampered)


def test_a_deeply_nested_published_condition_is_a_rule_error_not_a_recursion_error() -> None:
    # Within the 10,000-character limit; before MAX_NESTING this hit Python's recursion limit in
    # every detector that read the announcement (and again at each restart, from the topic's history).
    for when, position in (
        ("(" * 4000 + "amount > 1" + ")" * 4000, 101),
        ("not " * 2400 + "amount > 1", 401),
    ):
        message = rules_message(one_rule("amount > 1"), "me", 123)
        message["rules"] = [{"name": "deep", "when": when, "action": "flag"}]
        with pytest.raises(
            RuleError, match=f"rule 'deep': when, character {position}: nested deeper than 100"
        ):
            rules_from_message(message)


def test_active_rules_rebind_when_the_features_change() -> None:
    active = ActiveRules(one_rule("card_new_country == 1").compile(FEATURES))
    fraud = np.zeros(4, dtype=bool)
    assert active.apply(BATCH, MATRIX, FEATURES, fraud).fraud.tolist() == [False, True, True, False]
    # A model without that feature: the rules step aside (the model decides) and say why.
    assert active.apply(BATCH, MATRIX[:, :2], FEATURES[:2], fraud) is None
    assert active.problem is not None and "unknown field or feature 'card_new_country'" in active.problem
    assert active.apply(BATCH, MATRIX, FEATURES, fraud) is not None
    assert active.problem is None


def test_verdicts_name_the_rules_that_fired() -> None:
    rule_set = rules_from_data([{"name": "big", "when": "amount > 900", "action": "flag"}])
    outcome = rule_set.compile(FEATURES).apply(BatchColumns(BATCH, MATRIX, FEATURES), np.zeros(4, dtype=bool))
    verdicts = [
        orjson.loads(raw)
        for raw in encode_verdicts(
            BATCH, [0.1] * 4, outcome.fraud.tolist(), {}, 0.5, "v1", 1, 2, "d", outcome
        )
    ]
    assert [v["rules"] for v in verdicts] == [["big"], [], [], ["big"]]
    assert [v["decision"] for v in verdicts] == ["fraud", "legit", "legit", "fraud"]
    assert {v["rules_version"] for v in verdicts} == {rule_set.version}
    assert [v["review"] for v in verdicts] == [False] * 4
    plain = orjson.loads(encode_verdicts(BATCH[:1], [0.9], [True], {}, 0.5, "v1", 1, 2, "d")[0])
    assert plain["rules"] == [] and plain["review"] is False and plain["rules_version"] is None


def test_backtest_scores_reproduce_the_combined_decision() -> None:
    rule_set = rules_from_data(
        [
            {"name": "vip", "when": 'country == "FR"', "action": "pass"},
            {"name": "big", "when": "amount > 900", "action": "flag"},
        ]
    )
    frame = pd.DataFrame(
        {
            "amount": [950.0, 10.0, 500.0, 901.0],
            "country": ["DE", "FR", None, "US"],
            "card_count_1h": [1.0, 6.0, 5.0, 0.0],
            "card_new_country": [0.0, 1.0, 1.0, 0.0],
        }
    )
    model_scores = np.array([0.2, 0.9, 0.7, 0.1])
    alone, combined = backtest_scores(rule_set.compile(FEATURES), FrameColumns(frame), model_scores, 0.5)
    assert alone.tolist() == [1.0, 0.0, 0.0, 1.0]
    assert combined.tolist() == [1.0, 0.0, 0.7, 1.0]


def test_labels_carry_an_optional_source() -> None:
    label = Label("tx1", 1_767_225_600_000, 1, "card1", source="analyst")
    assert decode_label(encode(label)).source == "analyst"
    plain = Label("tx1", 1_767_225_600_000, 0)
    assert "source" not in plain.to_dict()
    assert decode_label(encode(plain)).source is None


def test_rules_validate_cli(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(
        "rules:\n  - {name: big, when: amount > 900, action: flag}\n  - {name: vip, when: 'card_id == \"c\"', action: pass}\n"
    )
    result = runner.invoke(app, ["rules", "validate", str(good)])
    assert result.exit_code == 0, result.output
    assert "valid; rules" in result.output and "2 rule(s) (1 flag, 1 pass)" in result.output
    bad = tmp_path / "bad.yaml"
    bad.write_text("rules:\n  - {name: odd, when: card_count_2h > 3, action: flag}\n")
    result = runner.invoke(app, ["rules", "validate", str(bad)])
    assert result.exit_code == 2
    assert (
        f"error: {bad}: rule 'odd': when, character 1: unknown field or feature 'card_count_2h'"
        in result.output
    )
    assert "Traceback" not in result.output
