"""Secret masking: every leak form, on every output path (config show, errors, sink/report JSON, HTML)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fraudkit.cli import app
from fraudkit.redact import MASK, is_secret_key, mask_secrets, masked
from fraudkit.storage.database import parse_url
from fraudkit.storage.report import Report, render_html
from fraudkit.stream.broker import free_port

runner = CliRunner()
SECRET = "Hunter2Zq"

# (URL, what must remain visible once masked)
LEAKY_URLS = [
    (f"postgresql://:{SECRET}@127.0.0.1:{{port}}/db", f"postgresql://:{MASK}@127.0.0.1"),
    (f"postgresql://u:p@{SECRET}@127.0.0.1:{{port}}/db", f"postgresql://u:{MASK}@127.0.0.1"),
    (f"postgresql://u@127.0.0.1:{{port}}/db?password={SECRET}", f"?password={MASK}"),
    (f"postgresql://u@127.0.0.1:{{port}}/db?sslmode=disable&password={SECRET}", f"&password={MASK}"),
    (f"postgresql://u@127.0.0.1:{{port}}/db?sslpassword={SECRET}", f"?sslpassword={MASK}"),
    (f"postgresql://u@127.0.0.1:{{port}}/db?token={SECRET}&application_name=x", f"?token={MASK}&"),
]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("postgresql://:pw@h/db", f"postgresql://:{MASK}@h/db"),
        ("postgresql://u:p@ss@h/db", f"postgresql://u:{MASK}@h/db"),
        ("postgresql://u:pw@h/db?password=x&secret=y&sslmode=require", None),
        ("'postgresql://u:pw@h'", f"'postgresql://u:{MASK}@h'"),
        ("postgresql://u@h/db", "postgresql://u@h/db"),
        ("postgresql://h/db?sslmode=require", "postgresql://h/db?sslmode=require"),
        ("clientId=abc clientSecret=xyz scope=s", f"clientId=abc clientSecret={MASK} scope=s"),
        ('username="a" password="b";', f'username="a" password="{MASK}";'),
        ("{'sasl.password': 'b', 'acks': 'all'}", f"{{'sasl.password': '{MASK}', 'acks': 'all'}}"),
        ("password authentication failed for user x", "password authentication failed for user x"),
    ],
)
def test_mask_secrets_text_forms(text: str, expected: str | None) -> None:
    result = mask_secrets(text)
    if expected is None:
        assert result == f"postgresql://u:{MASK}@h/db?password={MASK}&secret={MASK}&sslmode=require"
    else:
        assert result == expected


@pytest.mark.parametrize(
    "key",
    [
        "sasl.password",
        "ssl.key.password",
        "ssl.keystore.password",
        "ssl.key.pem",
        "sasl.oauthbearer.config",
        "sasl.oauthbearer.client.secret",
        "sasl.jaas.config",
        "sasl.oauthbearer.assertion.private.key.passphrase",
        "spark.hadoop.fs.s3a.secret.key",
    ],
)
def test_secret_bearing_librdkafka_keys(key: str) -> None:
    assert is_secret_key(key)


@pytest.mark.parametrize(
    "key", ["ssl.key.location", "sasl.username", "sasl.oauthbearer.token.endpoint.url", "bootstrap.servers"]
)
def test_keys_that_only_say_where_a_secret_is(key: str) -> None:
    assert not is_secret_key(key)


def test_masked_keeps_the_shape_and_masks_strings_too() -> None:
    data = {"a": {"sasl.oauthbearer.config": "clientId=x clientSecret=y"}, "url": "postgresql://:pw@h/d"}
    assert masked(data) == {"a": {"sasl.oauthbearer.config": MASK}, "url": f"postgresql://:{MASK}@h/d"}


@pytest.mark.parametrize(("url", "visible"), LEAKY_URLS)
def test_config_show_masks_every_url_form(url: str, visible: str) -> None:
    result = runner.invoke(app, ["config", "show", "--set", f"sink.url={url.format(port=5432)}"])
    assert result.exit_code == 0, result.output
    assert SECRET not in result.output
    assert visible in result.output


def test_config_show_masks_oauthbearer_config() -> None:
    result = runner.invoke(
        app,
        [
            "config",
            "show",
            "--set",
            f"kafka.common.sasl.oauthbearer.config=clientId=fraudkit clientSecret={SECRET} scope=x",
            "--set",
            f"kafka.producer.sasl.jaas.config=x required password='{SECRET}';",
            "--set",
            f"kafka.consumer.ssl.key.pem={SECRET}",
        ],
    )
    assert result.exit_code == 0, result.output
    assert SECRET not in result.output
    assert f"sasl.oauthbearer.config: '{MASK}'" in result.output
    assert f"ssl.key.pem: '{MASK}'" in result.output


@pytest.mark.parametrize(("url", "visible"), LEAKY_URLS)
def test_database_errors_mask_every_url_form(url: str, visible: str, tmp_path: Path) -> None:
    port = free_port()
    result = runner.invoke(
        app,
        [
            "sink",
            "--url",
            url.format(port=port),
            "--set",
            "sink.retry_max_s=0.2",
            "--set",
            f"broker.state_dir={tmp_path}",
        ],
    )
    assert result.exit_code == 6, result.output
    assert "error: cannot connect to PostgreSQL" in result.stderr
    assert SECRET not in result.stderr + result.output
    assert visible in result.stderr


def test_a_bad_sqlite_url_in_an_error_is_masked() -> None:
    result = runner.invoke(app, ["sink", "--url", f"sqlite://u:{SECRET}@h/x.db"])
    assert result.exit_code == 2
    assert SECRET not in result.stderr and f"sqlite://u:{MASK}@h/x.db" in result.stderr


def test_any_error_line_is_masked_at_the_cli_boundary(monkeypatch: pytest.MonkeyPatch) -> None:
    from fraudkit.cli import configcmd
    from fraudkit.errors import DatabaseError

    def boom(*args: object, **kwargs: object) -> str:
        raise DatabaseError(f"server said: could not use postgresql://:{SECRET}@db/x (password={SECRET})")

    monkeypatch.setattr(configcmd, "dump_yaml", boom)
    result = runner.invoke(app, ["config", "show"])
    assert result.exit_code == 6
    assert SECRET not in result.stderr
    assert f"postgresql://:{MASK}@db/x (password={MASK})" in result.stderr


@pytest.mark.parametrize(("url", "visible"), LEAKY_URLS)
def test_sink_json_summary_masks_every_url_form(url: str, visible: str) -> None:
    from fraudkit.config import load_config
    from fraudkit.storage.sink import SinkOptions, SinkRunner

    config = load_config(None, {"sink.url": url.format(port=5432)}, environ={})
    summary = SinkRunner(config, SinkOptions(), consumer=object()).summary
    text = json.dumps(summary.to_dict())
    assert SECRET not in text
    assert visible in text


@pytest.mark.parametrize(("url", "visible"), LEAKY_URLS)
def test_report_json_and_html_mask_every_url_form(url: str, visible: str) -> None:
    report = Report(parse_url(url.format(port=5432)).describe(), "fraud_predictions", 0)
    text = json.dumps(report.to_dict())
    page = render_html(report)
    assert SECRET not in text and SECRET not in page
    assert visible in text
    assert visible.replace("&", "&amp;") in page
