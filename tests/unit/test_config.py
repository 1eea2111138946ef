"""Config precedence, validation messages and secret masking."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from fraudkit.config import FraudkitConfig, dump_yaml, load_config, parse_set_options
from fraudkit.errors import ConfigError


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_default_yaml_holds_every_setting_with_its_default() -> None:
    data = yaml.safe_load(Path("configs/default.yaml").read_text())
    assert data == FraudkitConfig().model_dump(mode="json")


def test_default_yaml_comments_every_section() -> None:
    text = Path("configs/default.yaml").read_text()
    assert text.count("#") >= 40


def test_yaml_overrides_defaults(tmp_path: Path) -> None:
    path = write(tmp_path / "x.yaml", "detect:\n  batch_size: 77\n")
    config = load_config(path, environ={})
    assert config.detect.batch_size == 77
    assert config.detect.group_id == "fraudkit-detect"


def test_env_overrides_yaml(tmp_path: Path) -> None:
    path = write(tmp_path / "x.yaml", "detect:\n  batch_size: 77\n")
    config = load_config(path, environ={"FRAUDKIT_DETECT__BATCH_SIZE": "88"})
    assert config.detect.batch_size == 88


def test_flags_override_env(tmp_path: Path) -> None:
    config = load_config(None, {"detect.batch_size": 99}, environ={"FRAUDKIT_DETECT__BATCH_SIZE": "88"})
    assert config.detect.batch_size == 99


def test_fraudkit_config_env_selects_the_file(tmp_path: Path) -> None:
    path = write(tmp_path / "y.yaml", "topics:\n  verdicts: v2\n")
    config = load_config(None, environ={"FRAUDKIT_CONFIG": str(path)})
    assert config.topics.verdicts == "v2"


def test_explicit_config_beats_fraudkit_config_env(tmp_path: Path) -> None:
    a = write(tmp_path / "a.yaml", "topics:\n  verdicts: from-a\n")
    b = write(tmp_path / "b.yaml", "topics:\n  verdicts: from-b\n")
    assert load_config(a, environ={"FRAUDKIT_CONFIG": str(b)}).topics.verdicts == "from-a"


def test_librdkafka_settings_pass_through_env_with_dots(tmp_path: Path) -> None:
    config = load_config(
        None,
        environ={
            "FRAUDKIT_KAFKA__COMMON__BOOTSTRAP_SERVERS": "kafka:9093",
            "FRAUDKIT_KAFKA__COMMON__SECURITY_PROTOCOL": "SASL_SSL",
        },
    )
    assert config.kafka.common["bootstrap.servers"] == "kafka:9093"
    assert config.kafka.common["security.protocol"] == "SASL_SSL"


def test_every_problem_is_reported_with_key_path_and_file(tmp_path: Path) -> None:
    path = write(
        tmp_path / "x.yaml",
        "detect:\n  batch_size: 0\n  colour: red\ntrain:\n  epochs: many\n",
    )
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    lines = str(info.value).splitlines()
    assert f"detect.batch_size: must be > 0 ({path})" in lines
    assert f"detect.colour: unknown key ({path})" in lines
    assert any(line.startswith("train.epochs: ") and str(path) in line for line in lines)
    assert len(lines) == 3


def test_env_errors_name_the_variable() -> None:
    with pytest.raises(
        ConfigError, match=r"detect.batch_size: must be > 0 \(env FRAUDKIT_DETECT__BATCH_SIZE\)"
    ):
        load_config(None, environ={"FRAUDKIT_DETECT__BATCH_SIZE": "-1"})


def test_missing_and_invalid_yaml_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml", environ={})
    bad = write(tmp_path / "bad.yaml", "detect: [1,\n")
    with pytest.raises(ConfigError, match=r"invalid YAML in .*bad.yaml line"):
        load_config(bad, environ={})


def test_set_options_parse_like_yaml() -> None:
    assert parse_set_options(["detect.batch_size=5", "detect.quiet=true", "a.b=x"]) == {
        "detect.batch_size": 5,
        "detect.quiet": True,
        "a.b": "x",
    }
    with pytest.raises(ConfigError, match=r"expected section\.key=value"):
        parse_set_options(["nonsense"])


def test_config_show_masks_secrets() -> None:
    config = load_config(
        None,
        {
            "kafka.common.sasl.password": "hunter2",
            "kafka.common.ssl.key.password": "s3cret",
            "kafka.common.ssl.key.location": "/etc/key.pem",
            "sink.url": "postgresql://fraud:topsecret@db:5432/fraud",
        },
        environ={},
    )
    text = dump_yaml(config)
    assert "hunter2" not in text and "s3cret" not in text and "topsecret" not in text
    assert "/etc/key.pem" in text
    assert "postgresql://fraud:******@db:5432/fraud" in text


def test_configuration_reference_is_current() -> None:
    from fraudkit.config_reference import render_reference

    assert Path("docs/configuration.md").read_text() == render_reference(), (
        "regenerate: python -m fraudkit.config_reference > docs/configuration.md"
    )
