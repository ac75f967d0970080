"""Tests for the twistd plugin and avr.tap: found after the README's install, options parsed, service built."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from twisted.application.service import IServiceMaker
from twisted.plugin import getPlugins
from twisted.python import usage

from avr import tap


def test_plugin_is_discoverable() -> None:
    """Exactly one twistd plugin is named avr, and it points at avr.tap."""
    makers = [p for p in getPlugins(IServiceMaker) if p.tapname == "avr"]
    assert len(makers) == 1
    assert makers[0].options is tap.Options


def test_twistd_avr_help_runs_from_the_installed_environment(tmp_path: Path) -> None:
    """`twistd avr --help` works in a subprocess started outside the checkout, as after the README's install."""
    twistd = Path(sys.executable).with_name("twistd")
    if not twistd.exists():
        pytest.skip("twistd is not installed next to this Python (run the suite with scripts/test)")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run(
        [str(twistd), "avr", "--help"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "--sts-url" in result.stdout and "--webhook-secret" in result.stdout


def test_bad_configuration_is_refused_with_every_problem(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Options refuse bad values from any source with one message naming each."""
    monkeypatch.setenv("WEBHOOK_TIMEOUT", "soon")
    options = tap.Options()
    with pytest.raises(usage.UsageError) as e:
        options.parseOptions(["--port", "99999", "--sts-url", "mailto:x"])
    text = str(e.value)
    assert "--port" in text and "--sts-url" in text and "WEBHOOK_TIMEOUT" in text


def test_options_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--port beats PORT, which beats the config file."""
    path = tmp_path / "avr.conf"
    path.write_text("[avr]\nport = 7001\nhttp_port = 7002\nwebhook_retry = 3\n")
    monkeypatch.setenv("PORT", "8001")
    monkeypatch.setenv("HTTP_PORT", "8002")
    options = tap.Options()
    options.parseOptions(["--config", str(path), "--port", "9001"])
    config = options["avr-config"]
    assert (config.port, config.http_port, config.webhook_retry) == (9001, 8002, 3)
