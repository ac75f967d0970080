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
    """
    Options refuse bad values from any source with one message naming each: as the exit message, not a
    `usage.UsageError` (twistd prints its whole usage text before one of those).
    """
    monkeypatch.setenv("WEBHOOK_TIMEOUT", "soon")
    options = tap.Options()
    with pytest.raises(SystemExit) as e:
        options.parseOptions(["--port", "99999", "--sts-url", "mailto:x"])
    text = str(e.value.code)
    assert text.startswith("twistd avr: invalid configuration:\n")
    assert "--port" in text and "--sts-url" in text and "WEBHOOK_TIMEOUT" in text


def test_an_unknown_option_is_still_a_usage_error() -> None:
    """A mistyped option is a usage problem: twistd shows the usage text for it."""
    with pytest.raises(usage.UsageError):
        tap.Options().parseOptions(["--prot", "5001"])


def test_log_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """--log-format and LOG_LEVEL are settings like the others; anything else is refused."""
    monkeypatch.setenv("LOG_LEVEL", "warn")
    options = tap.Options()
    options.parseOptions(["--log-format=json"])
    assert (options["avr-config"].log_level, options["avr-config"].log_format) == ("warn", "json")
    with pytest.raises(SystemExit, match="--log-format: must be one of text, json"):
        tap.Options().parseOptions(["--log-format=xml"])


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


def test_avrs_log_observer_becomes_the_applications(tmp_path: Path) -> None:
    """
    twistd's AppLogger takes an application's ILogObserver in place of its own: the service twistd adds to the
    application sets avr's there, and none when twistd's options chose their own (``--syslog``, ``--logger``).
    """
    from twisted.application.service import Application, IService, MultiService
    from twisted.logger import ILogObserver

    def observer(event: object) -> None:
        """A log observer."""

    application = Application("avr")
    tap.TwistdService(MultiService(), observer).setServiceParent(application)
    assert application.getComponent(ILogObserver) is observer
    assert len(list(IService(application))) == 1
    plain = Application("avr")
    tap.TwistdService(MultiService(), None).setServiceParent(plain)
    assert plain.getComponent(ILogObserver) is None


def test_the_log_goes_where_twistd_would_write_it(tmp_path: Path) -> None:
    """Standard output for ``--nodaemon`` or ``--logfile=-``; twistd's observers for syslog or a logger of its own."""
    import signal

    from twisted.python.logfile import LogFile

    assert tap.log_stream({"nodaemon": True, "logfile": None}) is sys.stdout
    assert tap.log_stream({"nodaemon": False, "logfile": "-"}) is sys.stdout
    assert tap.log_stream({"nodaemon": True, "syslog": True}) is None
    assert tap.log_stream({"nodaemon": True, "logger": object()}) is None
    before = signal.getsignal(signal.SIGUSR1)
    signal.signal(signal.SIGUSR1, signal.SIG_DFL)
    try:
        log_file = tap.log_stream({"nodaemon": False, "logfile": str(tmp_path / "avr.log")})
        assert isinstance(log_file, LogFile) and log_file.path == str(tmp_path / "avr.log")
        assert signal.getsignal(signal.SIGUSR1) not in (signal.SIG_DFL, None)
        log_file.close()
    finally:
        signal.signal(signal.SIGUSR1, before)
