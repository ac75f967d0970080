"""Tests for avr.config: precedence, validation, secrets."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from avr.config import SETTINGS, Config, ConfigError, load_config, read_config_file, redact_url


def test_defaults_match_avr_core() -> None:
    """With nothing configured: AudioSocket on 5001, no HTTP server, webhook timeout 3000 ms, no retries."""
    config = load_config({})
    assert config == Config()
    assert (config.port, config.http_port, config.webhook_timeout, config.webhook_retry) == (5001, None, 3000, 0)
    assert config.sts_url is None


def test_precedence_cli_over_env_over_file(tmp_path: Path) -> None:
    """Command line beats environment, which beats the config file, which beats defaults."""
    path = tmp_path / "avr.conf"
    path.write_text("[avr]\nport = 7001\nhttp_port = 7002\nsts_url = ws://file:1\nwebhook_retry = 2\n")
    config = load_config(
        {"PORT": "8001", "HTTP_PORT": "8002"},
        {"port": "9001"},
        read_config_file(str(path)),
    )
    assert config.port == 9001
    assert config.http_port == 8002
    assert config.sts_url == "ws://file:1"
    assert config.webhook_retry == 2
    assert config.webhook_timeout == 3000


def test_every_problem_is_listed_at_once() -> None:
    """Bad configuration is refused with one message naming each bad setting."""
    with pytest.raises(ConfigError) as e:
        load_config(
            {
                "PORT": "x",
                "HTTP_PORT": "70000",
                "STS_URL": "ftp://example.com/",
                "WEBHOOK_RETRY": "-1",
                "STS_SAMPLE_RATE": "11025",
                "REQUIRE_CALL_INIT": "maybe",
            }
        )
    problems = e.value.problems
    assert len(problems) == 6
    for name in ("PORT", "HTTP_PORT", "STS_URL", "WEBHOOK_RETRY", "STS_SAMPLE_RATE", "REQUIRE_CALL_INIT"):
        assert any(p.startswith(name + ":") for p in problems), name


def test_inconsistent_combinations_are_refused() -> None:
    """Settings that cannot work together are reported too."""
    with pytest.raises(ConfigError) as e:
        load_config({"PORT": "6000", "HTTP_PORT": "6000", "REQUIRE_CALL_INIT": "true", "ARI_URL": "http://pbx:8088"})
    text = str(e.value)
    assert "must differ" in text
    assert "ARI_USERNAME is required" in text
    assert "ARI_PASSWORD is required" in text
    with pytest.raises(ConfigError, match="REQUIRE_CALL_INIT needs HTTP_PORT"):
        load_config({"REQUIRE_CALL_INIT": "yes"})


def test_empty_values_mean_unset() -> None:
    """``API_KEY=`` or ``STS_URL=`` in a .env file means unset, not a crash (asterisk-api bug D17)."""
    config = load_config({"API_KEY": "", "STS_URL": "", "HTTP_PORT": " ", "WEBHOOK_SECRET": ""})
    assert config.api_key is None and config.sts_url is None and config.http_port is None


def test_secrets_never_appear_in_errors_or_descriptions() -> None:
    """Neither the error text nor the loggable description repeats a secret or URL credentials."""
    secret = "s3cr3t-VALUE"
    with pytest.raises(ConfigError) as e:
        load_config({"STS_URL": f"ftp://user:{secret}@host/", "WEBHOOK_URL": "nope", "WEBHOOK_SECRET": secret})
    assert secret not in str(e.value)
    config = load_config(
        {"WEBHOOK_SECRET": secret, "API_KEY": secret, "STS_URL": f"wss://u:{secret}@sts.example/?token={secret}"}
    )
    assert secret not in repr(config)
    described = repr(config.describe())
    assert secret not in described
    assert described.count("<set>") == 2


def test_redact_url() -> None:
    """Credentials in the authority and secret-looking query values are removed."""
    assert redact_url("ws://a:b@h:1/p?x=1&api_key=zz") == "ws://h:1/p?x=1&api_key=***"
    assert redact_url("ws://localhost:6030/?from=2000") == "ws://localhost:6030/?from=2000"


def test_config_file_errors(tmp_path: Path) -> None:
    """Unreadable files, files without [avr] and unknown keys are refused with the file's name."""
    with pytest.raises(ConfigError, match="cannot be read"):
        read_config_file(str(tmp_path / "missing.conf"))
    path = tmp_path / "bad.conf"
    path.write_text("[other]\nport = 1\n")
    with pytest.raises(ConfigError, match=r"no \[avr\] section"):
        read_config_file(str(path))
    path.write_text("[avr]\nprot = 1\n")
    with pytest.raises(ConfigError, match="unknown key 'prot'"):
        read_config_file(str(path))


def test_openclaw_webhook_is_its_own_receiver() -> None:
    """asterisk-api's OPENCLAW_WEBHOOK_URL gets asterisk-api's envelope; EVENTS_WEBHOOK_URL avr's events: both."""
    both = load_config({"OPENCLAW_WEBHOOK_URL": "http://a/", "EVENTS_WEBHOOK_URL": "http://b/"})
    assert (both.openclaw_webhook_url, both.events_webhook_url) == ("http://a/", "http://b/")


def test_example_config_file_is_valid_and_complete() -> None:
    """etc/avr.conf.example parses, and documents every setting."""
    example = Path(__file__).parent.parent / "etc" / "avr.conf.example"
    text = example.read_text()
    read_config_file(str(example))
    for s in SETTINGS:
        assert f"{s.file_key} =" in text, s.file_key


def test_readme_configuration_table_lists_every_setting() -> None:
    """The README's configuration table names every environment variable."""
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    for s in SETTINGS:
        assert f"`{s.env}`" in readme, s.env


def test_agent_settings() -> None:
    """STS_ROUTES are name=URL pairs; ARI_AGENT names 'default', a URL or one of them; the URLs' secrets are masked."""
    config = load_config({"STS_ROUTES": "sales=ws://a:1/s?token=abc  support=wss://b/x", "ARI_AGENT": "sales",
                          "ARI_AGENT_ON_FAILURE": "continue"})
    assert config.sts_routes == (("sales", "ws://a:1/s?token=abc"), ("support", "wss://b/x"))
    assert config.ari_agent == "sales" and config.ari_agent_on_failure == "continue"
    assert "abc" not in repr(config)
    for environ, problem in (
        ({"STS_ROUTES": "sales"}, "name=URL pairs"),
        ({"STS_ROUTES": "sales=ftp://x"}, "route 'sales': must be a ws://"),
        ({"STS_ROUTES": "a=ws://x a=ws://y"}, "given twice"),
        ({"ARI_AGENT": "nosuch"}, "ARI_AGENT must be 'default', an STS URL or a route"),
        ({"ARI_AGENT_ON_FAILURE": "retry"}, "must be one of hangup, continue"),
    ):
        with pytest.raises(ConfigError, match=re.escape(problem)):
            load_config(environ)
