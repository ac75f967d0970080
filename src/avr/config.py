"""
avr's configuration: one table of settings, read from (highest first) command-line options, environment variables,
a config file and built-in defaults.

Every setting has an environment name (avr-core's and asterisk-api's names where they exist), a lower-case key for the
``[avr]`` section of the config file, and a ``--long-option``. Bad configuration is refused as a whole: `ConfigError`
lists every problem at once, and never repeats the value of a secret.
"""

from __future__ import annotations

import configparser
import os
from typing import Any, Callable, Mapping, Sequence
from urllib.parse import urlsplit

from attrs import frozen

from avr.logtext import redact_url

#: Sample rates (Hz) that AudioSocket audio kinds 0x10-0x18 can carry, and so the rates an STS may use.
AUDIO_RATES = (8000, 12000, 16000, 24000, 32000, 44100, 48000, 96000, 192000)

#: What avr does with an inbound call that enters the Stasis app.
INBOUND_POLICIES = ("answer", "ring", "none")


class ConfigError(Exception):
    """
    The configuration cannot be used.

    :ivar problems: one human-readable line per problem, each naming the setting.
    """

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        super().__init__("invalid configuration:\n" + "\n".join(f"  - {p}" for p in self.problems))


def _integer(low: int, high: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text.strip())
        except ValueError:
            raise ValueError(f"must be a whole number, got {text!r}") from None
        if not low <= value <= high:
            raise ValueError(f"must be between {low} and {high}, got {value}")
        return value

    return parse


def _boolean(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"must be true or false, got {text!r}")


def _url(*schemes: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        text = text.strip()
        try:
            parts = urlsplit(text)
            parts.port  # noqa: B018 - raises ValueError on a bad port
        except ValueError as e:
            raise ValueError(f"is not a valid URL ({e})") from None
        if parts.scheme not in schemes or not parts.hostname:
            raise ValueError(f"must be a {'/'.join(s + '://' for s in schemes)} URL, got {redact_url(text)!r}")
        return text

    return parse


def _choice(*choices: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        value = text.strip().lower()
        if value not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}, got {text!r}")
        return value

    return parse


def _sample_rate(text: str) -> int:
    value = _integer(1, 192000)(text)
    if value not in AUDIO_RATES:
        raise ValueError(f"must be one of {', '.join(map(str, AUDIO_RATES))}, got {value}")
    return value


def _text(text: str) -> str:
    if not text.strip():
        raise ValueError("must not be empty")
    return text.strip()


def _secret(text: str) -> str:
    if not text:
        raise ValueError("must not be empty")
    return text


@frozen
class Setting:
    """One configurable value: where it is read from and how its text is parsed."""

    attribute: str
    env: str
    parse: Callable[[str], Any]
    default: Any
    help: str
    secret: bool = False
    #: Other environment names accepted for the same setting (lower precedence than ``env``).
    aliases: tuple[str, ...] = ()

    @property
    def file_key(self) -> str:
        """The key of this setting in the ``[avr]`` section of a config file."""
        return self.env.lower()

    @property
    def option(self) -> str:
        """The long command-line option (without the leading ``--``)."""
        return self.env.lower().replace("_", "-")


SETTINGS: tuple[Setting, ...] = (
    Setting("port", "PORT", _integer(0, 65535), 5001, "AudioSocket TCP port Asterisk connects to"),
    Setting("http_port", "HTTP_PORT", _integer(0, 65535), None,
            "HTTP port for /health, /call, the REST API and /events; unset = no HTTP server (as avr-core)"),
    Setting("bind_address", "BIND_ADDRESS", _text, "127.0.0.1",
            "Interface both servers listen on; 0.0.0.0 (or ::) when Asterisk runs on another host"),
    Setting("listen_backlog", "LISTEN_BACKLOG", _integer(1, 65535), 4096,
            "Connections the kernel queues for both servers while avr is busy, so a burst of calls is not dropped; "
            "Linux caps it at net.core.somaxconn"),
    Setting("sts_url", "STS_URL", _url("ws", "wss", "http", "https"), None,
            "Speech-to-speech service: ws(s):// (AVR STS protocol) or http(s):// (legacy streaming); "
            "unset = built-in echo agent"),
    Setting("sts_sample_rate", "STS_SAMPLE_RATE", _sample_rate, 8000, "Sample rate (Hz) of the PCM16 exchanged with the STS"),
    Setting("sts_connect_timeout", "STS_CONNECT_TIMEOUT", _integer(100, 120000), 5000,
            "Milliseconds to open the STS connection before the call is ended"),
    Setting("sts_ca_file", "STS_CA_FILE", _text, None,
            "PEM file of CA certificates trusted for wss:// and https:// STS peers (default: the system's)"),
    Setting("webhook_url", "WEBHOOK_URL", _url("http", "https"), None, "Receiver of call webhooks (POST JSON)"),
    Setting("webhook_secret", "WEBHOOK_SECRET", _secret, None, "Sent as header X-AVR-WEBHOOK-SECRET", secret=True),
    Setting("webhook_timeout", "WEBHOOK_TIMEOUT", _integer(1, 600000), 3000, "Milliseconds per webhook attempt"),
    Setting("webhook_retry", "WEBHOOK_RETRY", _integer(0, 10), 0,
            "Extra webhook attempts after a failure, with exponential backoff"),
    Setting("uuid_timeout", "AUDIOSOCKET_UUID_TIMEOUT", _integer(1, 600), 5,
            "Seconds a new AudioSocket connection may take to send its UUID before it is closed"),
    Setting("idle_timeout", "AUDIOSOCKET_IDLE_TIMEOUT", _integer(0, 86400), 30,
            "Seconds without a frame in either direction after which an AudioSocket call is hung up and ended "
            "(Asterisk sends audio every 20 ms while media flows); 0 = never"),
    Setting("require_call_init", "REQUIRE_CALL_INIT", _boolean, False,
            "Refuse AudioSocket calls whose UUID was not registered with POST /call"),
    Setting("call_init_ttl", "CALL_INIT_TTL", _integer(1, 86400), 60,
            "Seconds a POST /call registration waits for its AudioSocket connection"),
    Setting("call_init_max", "CALL_INIT_MAX", _integer(1, 1_000_000), 1000,
            "Most POST /call registrations waiting for their AudioSocket connection at once; "
            "beyond that POST /call answers 503"),
    Setting("http_max_body", "HTTP_MAX_BODY", _integer(1024, 64 * 1024 * 1024), 64 * 1024,
            "Largest accepted JSON request body, in bytes"),
    Setting("ari_url", "ARI_URL", _url("http", "https"), None,
            "Asterisk HTTP base, e.g. http://127.0.0.1:8088 (unset = call-control routes answer 503)"),
    Setting("ari_username", "ARI_USERNAME", _text, None, "ARI user (ari.conf)"),
    Setting("ari_password", "ARI_PASSWORD", _secret, None, "ARI password", secret=True),
    Setting("ari_app", "ARI_APP", _text, "avr", "Stasis application name"),
    Setting("ari_inbound", "ARI_INBOUND", _choice(*INBOUND_POLICIES), "answer",
            "What to do with calls entering the Stasis app: answer, ring (indicate ringing, leave unanswered) "
            "or none"),
    Setting("ari_audiosocket_address", "ARI_AUDIOSOCKET_ADDRESS", _text, None,
            "host:port at which Asterisk reaches avr's AudioSocket server for uploaded-audio playback "
            "(default: BIND_ADDRESS:PORT, or 127.0.0.1:PORT when binding all interfaces)"),
    Setting("api_key", "API_KEY", _secret, None,
            "When set, required as X-API-Key (or ?api_key=) on every route but GET / and GET /health", secret=True),
    Setting("events_webhook_url", "EVENTS_WEBHOOK_URL", _url("http", "https"), None,
            "Receiver of call-control events (the /events JSON)", aliases=("OPENCLAW_WEBHOOK_URL",)),
)

_BY_ATTRIBUTE = {s.attribute: s for s in SETTINGS}


@frozen(repr=False)
class Config:
    """The values of every `Setting`, after precedence and validation. Build with `load_config`."""

    port: int = 5001
    http_port: int | None = None
    bind_address: str = "127.0.0.1"
    listen_backlog: int = 4096
    sts_url: str | None = None
    sts_sample_rate: int = 8000
    sts_connect_timeout: int = 5000
    sts_ca_file: str | None = None
    webhook_url: str | None = None
    webhook_secret: str | None = None
    webhook_timeout: int = 3000
    webhook_retry: int = 0
    uuid_timeout: int = 5
    idle_timeout: int = 30
    require_call_init: bool = False
    call_init_ttl: int = 60
    call_init_max: int = 1000
    http_max_body: int = 64 * 1024
    ari_url: str | None = None
    ari_username: str | None = None
    ari_password: str | None = None
    ari_app: str = "avr"
    ari_inbound: str = "answer"
    ari_audiosocket_address: str | None = None
    api_key: str | None = None
    events_webhook_url: str | None = None

    def __repr__(self) -> str:
        return "Config(" + ", ".join(f"{k}={v!r}" for k, v in self.describe().items()) + ")"

    def describe(self) -> dict[str, Any]:
        """The settings as a dict that is safe to log: secrets are masked, URL credentials removed."""
        described: dict[str, Any] = {}
        for s in SETTINGS:
            value = getattr(self, s.attribute)
            if s.secret and value is not None:
                value = "<set>"
            elif isinstance(value, str) and "://" in value:
                value = redact_url(value)
            described[s.attribute] = value
        return described


def read_config_file(path: str) -> dict[str, str]:
    """
    Read the ``[avr]`` section of an INI config file.

    :raises ConfigError: if the file cannot be read or parsed, or holds unknown keys.
    """
    parser = configparser.ConfigParser(interpolation=None)
    try:
        with open(path, encoding="utf-8") as f:
            parser.read_file(f)
    except OSError as e:
        raise ConfigError([f"config file {path}: cannot be read ({e.strerror})"]) from None
    except configparser.Error as e:
        raise ConfigError([f"config file {path}: not a valid INI file ({e.message.splitlines()[0]})"]) from None
    if not parser.has_section("avr"):
        raise ConfigError([f"config file {path}: has no [avr] section"])
    known = {s.file_key for s in SETTINGS} | {a.lower() for s in SETTINGS for a in s.aliases}
    values = dict(parser.items("avr"))
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError([f"config file {path}: unknown key {k!r}" for k in unknown])
    return values


def load_config(
    environ: Mapping[str, str],
    options: Mapping[str, str | None] | None = None,
    file_values: Mapping[str, str] | None = None,
) -> Config:
    """
    Combine the sources into a `Config`.

    :param environ: environment variables (``os.environ`` at the edge).
    :param options: command-line values keyed by attribute name; ``None`` means "not given".
    :param file_values: the ``[avr]`` section of the config file (see `read_config_file`).
    :raises ConfigError: listing every invalid value and every inconsistent combination.
    """
    options = options or {}
    file_values = file_values or {}
    problems: list[str] = []
    values: dict[str, Any] = {}
    for s in SETTINGS:
        source, text = _pick(s, environ, options, file_values)
        if text is None:
            continue
        if not text.strip():
            # An empty value (``API_KEY=`` in a .env file) means "unset", never a crash.
            continue
        try:
            values[s.attribute] = s.parse(text)
        except ValueError as e:
            where = {"command line": f"--{s.option}", "environment": s.env, "config file": f"{s.file_key} (config file)"}
            problems.append(f"{where[source]}: {e}")
    config = Config(**values)
    problems.extend(_consistency_problems(config))
    if problems:
        raise ConfigError(problems)
    return config


def _pick(
    s: Setting, environ: Mapping[str, str], options: Mapping[str, str | None], file_values: Mapping[str, str]
) -> tuple[str, str | None]:
    if options.get(s.attribute) is not None:
        return "command line", options[s.attribute]
    for name in (s.env, *s.aliases):
        if name in environ:
            return "environment", environ[name]
    for key in (s.file_key, *(a.lower() for a in s.aliases)):
        if key in file_values:
            return "config file", file_values[key]
    return "default", None


def _consistency_problems(config: Config) -> list[str]:
    problems = []
    if config.http_port is not None and config.http_port == config.port and config.port != 0:
        problems.append(f"HTTP_PORT and PORT are both {config.port}: they must differ")
    if config.require_call_init and config.http_port is None:
        problems.append("REQUIRE_CALL_INIT needs HTTP_PORT: calls can only be registered through POST /call")
    if config.ari_url is not None and config.http_port is None:
        problems.append("ARI_URL needs HTTP_PORT: the call-control REST API and /events are served there")
    if config.ari_url is not None:
        for attribute in ("ari_username", "ari_password"):
            if getattr(config, attribute) is None:
                problems.append(f"{_BY_ATTRIBUTE[attribute].env} is required when ARI_URL is set")
    if config.sts_ca_file is not None and not os.access(config.sts_ca_file, os.R_OK):
        problems.append(f"STS_CA_FILE: cannot read {config.sts_ca_file!r}")
    if config.ari_audiosocket_address is not None:
        host, sep, port = config.ari_audiosocket_address.rpartition(":")
        if not sep or not host or not port.isdigit():
            problems.append(
                f"ARI_AUDIOSOCKET_ADDRESS must be host:port, got {config.ari_audiosocket_address!r}")
    return problems
