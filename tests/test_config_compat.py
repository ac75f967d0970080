"""
Configuration compatibility with the seed systems: a ``.env`` file read as avr-core and asterisk-api read theirs,
asterisk-api's API_PORT/API_HOST/INBOUND_RING_DELAY_MS/ARI_APP, and the ASR_URL/TTS_URL rule shared with avr-core.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from twisted.internet.testing import MemoryReactorClock

from avr import tap
from avr.config import DEFAULT_API_PORT, ConfigError, HttpListener, load_config, read_env_file
from avr.service import build
from tests.fakes import FakeStsConnector

#: An asterisk-api ``.env`` as its ``.env.example`` lays one out: inline comments after values, empty values.
ASTERISK_API_ENV = """\
# Asterisk ARI connection
ARI_URL=http://192.0.2.10:8088
ARI_USERNAME=asterisk_ari
ARI_PASSWORD=asterisk_ari_pass
ARI_APP=openclaw-voice

# API server
API_PORT=3456
API_HOST=0.0.0.0

OPENCLAW_WEBHOOK_URL=http://host.docker.internal:18789/voice/webhook

INBOUND_RING_DELAY_MS=3000   # Wait before answering (ms) - simulates ringing

ASR_URL=ws://192.0.2.10:8100/ws/transcribe
ASR_LANGUAGE=English   # Lock transcription language. Use "auto" for per-chunk detection.

TTS_URL=http://192.0.2.10:8101
TTS_DEFAULT_VOICE=vivian
TTS_DEFAULT_LANGUAGE=English
# TTS_TIMEOUT_MS=30000  # generous default for cold-start model loading

API_KEY=
"""

#: An avr-core ``.env`` (pipeline mode): full-path ASR and TTS URLs.
AVR_CORE_ENV = """\
PORT=5001
HTTP_PORT=6001
ASR_URL=http://avr-asr-deepgram:6010/speech-to-text-stream
LLM_URL=http://avr-llm-openai:6002/prompt-stream
TTS_URL=http://avr-tts-google:6012/text-to-speech-stream
INTERRUPT_LISTENING=true
SYSTEM_MESSAGE="Hello, how can I help you today?"
"""


def _options(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, env_text: str, *argv: str) -> tap.Options:
    (tmp_path / ".env").write_text(env_text)
    monkeypatch.chdir(tmp_path)
    options = tap.Options()
    options.parseOptions(list(argv))
    return options


def test_an_unchanged_asterisk_api_env_file_configures_avr(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """
    ``twistd avr`` in a directory holding an asterisk-api ``.env`` takes every value from it: comments after values
    are not part of them, ``API_KEY=`` means no key, and the REST API listens on API_HOST:API_PORT.
    """
    for name in ("ARI_URL", "API_PORT", "API_KEY", "HTTP_PORT", "TTS_TIMEOUT_MS"):
        monkeypatch.delenv(name, raising=False)
    config = _options(tmp_path, monkeypatch, ASTERISK_API_ENV)["avr-config"]
    assert (config.ari_url, config.ari_username, config.ari_password) == (
        "http://192.0.2.10:8088", "asterisk_ari", "asterisk_ari_pass")
    assert (config.ari_app, config.api_port, config.api_host, config.http_port) == (
        "openclaw-voice", 3456, "0.0.0.0", None)
    assert config.inbound_ring_delay == 3000 and config.asr_language == "English"
    assert config.openclaw_webhook_url == "http://host.docker.internal:18789/voice/webhook"
    assert config.api_key is None and config.tts_timeout == 30000
    assert config.streaming_asr_url == "ws://192.0.2.10:8100/ws/transcribe" and config.pipeline_asr_url is None
    assert config.openai_tts_url == "http://192.0.2.10:8101/v1/audio/speech" and config.pipeline_tts_url is None
    assert config.http_listeners() == [HttpListener("api", "0.0.0.0", 3456)]


def test_the_asterisk_api_env_file_starts_avr(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """
    The configuration read from that file builds and starts avr (it used to be refused with "ARI_URL needs
    HTTP_PORT"): the HTTP server listens on 0.0.0.0:3456, the AudioSocket server on its default port, and the ARI
    events connection goes to ARI_URL's port.
    """
    monkeypatch.delenv("HTTP_PORT", raising=False)
    config = _options(tmp_path, monkeypatch, ASTERISK_API_ENV)["avr-config"]
    reactor = MemoryReactorClock()
    avr = build(reactor, config, http_client=None, sts_connector=FakeStsConnector())
    avr.service.startService()
    try:
        listening = {(port, interface) for port, _, _, interface in reactor.tcpServers}
        assert (3456, "0.0.0.0") in listening and (5001, "127.0.0.1") in listening
        assert avr.service.getServiceNamed("api").port is not None
        assert reactor.tcpClients[0][1] == 8088  # (the memory reactor resolves every host name to 127.0.0.1)
    finally:
        avr.service.stopService()


def test_an_avr_core_env_file_keeps_its_meaning(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """avr-core's pipeline URLs are not taken for asterisk-api's streaming ASR or OpenAI TTS; its own names ignored."""
    monkeypatch.delenv("ARI_URL", raising=False)
    config = _options(tmp_path, monkeypatch, AVR_CORE_ENV)["avr-config"]
    assert (config.port, config.http_port, config.api_port) == (5001, 6001, None)
    assert config.pipeline_asr_url == "http://avr-asr-deepgram:6010/speech-to-text-stream"
    assert config.streaming_asr_url is None
    assert config.pipeline_tts_url == "http://avr-tts-google:6012/text-to-speech-stream"
    assert config.openai_tts_url is None
    assert config.http_listeners() == [HttpListener("http", "127.0.0.1", 6001)]


def test_the_environment_wins_over_the_env_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """As with dotenv: a variable already in the environment is not replaced; the file still beats --config."""
    conf = tmp_path / "avr.conf"
    conf.write_text("[avr]\napi_port = 7100\nari_app = from-file\ntts_default_voice = ryan\n")
    monkeypatch.setenv("API_PORT", "7000")
    monkeypatch.delenv("ARI_APP", raising=False)
    monkeypatch.delenv("TTS_DEFAULT_VOICE", raising=False)
    config = _options(tmp_path, monkeypatch, ASTERISK_API_ENV, "--config", str(conf))["avr-config"]
    assert config.api_port == 7000
    assert config.ari_app == "openclaw-voice"  # .env over the config file
    assert config.tts_default_voice == "vivian"


def test_env_file_syntax(tmp_path: Path) -> None:
    """Quotes, ``export``, comments and no ``${VAR}`` expansion (Node's dotenv does none)."""
    path = tmp_path / ".env"
    path.write_text(
        "export API_KEY='k e y'\n"
        'TTS_DEFAULT_VOICE="serena"  # a comment\n'
        "ASR_LANGUAGE=${HOME}\n"
        "# ARI_APP=commented-out\n"
        "NOT_AVRS=1\n"
        "BARE\n"
    )
    values = read_env_file(str(path))
    assert values["API_KEY"] == "k e y" and values["TTS_DEFAULT_VOICE"] == "serena"
    assert values["ASR_LANGUAGE"] == "${HOME}"
    assert "ARI_APP" not in values and "BARE" not in values
    assert read_env_file(str(tmp_path / "missing")) == {}


def test_a_bad_value_in_the_env_file_is_named_with_its_file() -> None:
    """A value from .env that cannot be used is reported as coming from .env."""
    with pytest.raises(ConfigError) as e:
        load_config({}, env_file_values={"API_PORT": "soon", "TTS_TIMEOUT_MS": "10"})
    assert any(p.startswith("API_PORT (.env): must be a whole number") for p in e.value.problems)
    assert any(p.startswith("TTS_TIMEOUT_MS (.env): must be between 1000") for p in e.value.problems)


def test_api_port_defaults_to_3456_only_with_ari() -> None:
    """ARI configured and no port: asterisk-api's 3456; HTTP_PORT given: no second listener; no ARI: none."""
    ari = {"ARI_URL": "http://pbx:8088", "ARI_USERNAME": "u", "ARI_PASSWORD": "p"}
    assert load_config(ari).api_port == DEFAULT_API_PORT
    assert load_config({**ari, "HTTP_PORT": "6001"}).http_listeners() == [HttpListener("http", "127.0.0.1", 6001)]
    assert load_config({}).http_listeners() == []
    assert load_config({"API_PORT": "3456"}).http_listeners() == [HttpListener("api", "0.0.0.0", 3456)]


def test_both_seed_ports_are_served() -> None:
    """avr-core's HTTP_PORT and asterisk-api's API_PORT together: both listen, each on its own interface."""
    config = load_config({"HTTP_PORT": "6001", "API_PORT": "3456", "KEYLESS_EVENTS_PORT": "3457"})
    assert config.http_listeners() == [
        HttpListener("http", "127.0.0.1", 6001), HttpListener("api", "0.0.0.0", 3456),
        HttpListener("keyless-events", "127.0.0.1", 3457, keyless_events=True),
    ]
    same = load_config({"HTTP_PORT": "3456", "API_PORT": "3456", "API_HOST": "127.0.0.1"})
    assert same.http_listeners() == [HttpListener("http", "127.0.0.1", 3456)]


def test_ports_that_collide_are_refused() -> None:
    """One port for two servers on different interfaces, or the AudioSocket port reused, is refused."""
    with pytest.raises(ConfigError) as e:
        load_config({"HTTP_PORT": "3456", "API_PORT": "3456", "PORT": "3457", "KEYLESS_EVENTS_PORT": "3457"})
    text = str(e.value)
    assert "HTTP_PORT and API_PORT are both 3456 but BIND_ADDRESS and API_HOST differ" in text
    assert "PORT and KEYLESS_EVENTS_PORT are both 3457: they must differ" in text


@pytest.mark.parametrize(("url", "api", "openai", "pipeline"), [
    ("http://tts:8101", "auto", "http://tts:8101/v1/audio/speech", None),
    ("http://tts:8101/", "auto", "http://tts:8101/v1/audio/speech", None),
    ("https://tts/v1/audio/speech", "auto", "https://tts/v1/audio/speech", None),
    ("http://tts:6012/text-to-speech-stream", "auto", None, "http://tts:6012/text-to-speech-stream"),
    ("http://tts:6012/text-to-speech-stream", "openai", "http://tts:6012/text-to-speech-stream/v1/audio/speech",
     None),
    ("http://tts:6012/speak", "avr-core", None, "http://tts:6012/speak"),
])
def test_tts_url_rule(url: str, api: str, openai: str | None, pipeline: str | None) -> None:
    """TTS_URL is avr-core's when its path ends in /text-to-speech-stream (or TTS_API says so), else OpenAI's."""
    config = load_config({"TTS_URL": url, "TTS_API": api})
    assert (config.openai_tts_url, config.pipeline_tts_url) == (openai, pipeline)


def test_asr_url_rule() -> None:
    """ws(s):// is asterisk-api's streaming ASR, http(s):// avr-core's pipeline ASR; other schemes are refused."""
    assert load_config({"ASR_URL": "wss://asr/ws"}).streaming_asr_url == "wss://asr/ws"
    pipeline = {"LLM_URL": "http://llm/prompt-stream", "TTS_URL": "http://tts/text-to-speech-stream"}
    assert load_config({"ASR_URL": "https://asr/stt", **pipeline}).pipeline_asr_url == "https://asr/stt"
    with pytest.raises(ConfigError, match="ASR_URL: must be a ws://"):
        load_config({"ASR_URL": "ftp://asr/"})
    assert load_config({"ASR_URL": "", "TTS_URL": ""}).asr_url is None  # D17: empty is unset, not a crash
