"""The OpenAI-compatible TTS client (avr.speech.openai_tts) against the fake Qwen3-TTS/OpenAI server."""

from __future__ import annotations

from typing import Any

import pytest
import pytest_twisted
from treq.testing import StubTreq
from twisted.internet.defer import CancelledError
from twisted.internet.task import Clock

from avr.speech.openai_tts import OpenAiTts, Speech, TtsError, decode_speech
from avr.testing.tts import FakeTtsServer, tone, wav_file

URL = "http://tts.example:8101/v1/audio/speech"


def _tts(server: FakeTtsServer, clock: Clock | None = None, **kwargs: Any) -> tuple[OpenAiTts, StubTreq]:
    http = StubTreq(server)
    return OpenAiTts(http, clock or Clock(), URL, **kwargs), http


def _run(http: StubTreq, d: Any) -> list:
    outcome: list = []
    d.addBoth(outcome.append)
    http.flush()
    return outcome


def test_asks_as_asterisk_api_does_with_the_defaults() -> None:
    """input/voice/speed/language as asterisk-api sends them (defaults filled in); pcm asked, WAV decoded."""
    server = FakeTtsServer()
    tts, http = _tts(server, default_voice="vivian", default_language="English")
    speech = _run(http, tts.synthesize("Hello there"))[0]
    assert isinstance(speech, Speech)
    assert server.requests[0].body == {"input": "Hello there", "voice": "vivian", "response_format": "pcm",
                                       "speed": 1.0, "language": "English"}
    assert (speech.voice, speech.language, speech.rate) == ("vivian", "English", 24000)
    assert speech.pcm == server.requests[0].pcm
    assert speech.duration == pytest.approx(server.speech_seconds("Hello there"))


def test_request_values_win_over_defaults() -> None:
    """voice, language and speed of the request are sent as given."""
    server = FakeTtsServer()
    tts, http = _tts(server)
    speech = _run(http, tts.synthesize("Hola", voice="serena", language="Spanish", speed=1.5))[0]
    body = server.requests[0].body
    assert (body["voice"], body["language"], body["speed"]) == ("serena", "Spanish", 1.5)
    assert (speech.voice, speech.language) == ("serena", "Spanish")


def test_raw_openai_pcm_is_24_khz() -> None:
    """OpenAI's raw ``pcm`` answer (audio/pcm, no header) is read as 24 kHz PCM16."""
    server = FakeTtsServer(openai_pcm=True)
    tts, http = _tts(server)
    speech = _run(http, tts.synthesize("abc"))[0]
    assert speech.rate == 24000 and speech.pcm == server.requests[0].pcm


def test_server_error_is_502_with_its_text() -> None:
    """A non-2xx answer is asterisk-api's "TTS server returned <status>: <body>", as a 502."""
    server = FakeTtsServer()
    server.failure = (500, b'{"code":"SYNTHESIS_FAILED","message":"Synthesis failed: CUDA out of memory"}')
    tts, http = _tts(server)
    failure = _run(http, tts.synthesize("Hello"))[0]
    assert failure.check(TtsError) and failure.value.status == 502
    message = failure.value.message
    assert message.startswith("TTS server returned 500: ") and "CUDA out of memory" in message


def test_empty_input_is_refused_by_the_server_as_qwen_does() -> None:
    """The fake refuses blank input with Qwen3-TTS's 400 (the /speak route refuses it first)."""
    server = FakeTtsServer()
    tts, http = _tts(server)
    failure = _run(http, tts.synthesize("   "))[0]
    assert failure.value.status == 502 and "TTS server returned 400" in failure.value.message
    assert "Input text is required" in failure.value.message


def test_a_slow_server_is_504_after_the_timeout() -> None:
    """TTS_TIMEOUT_MS covers the request: past it, 504 (asterisk-api's status for a timed-out speak)."""
    server, clock = FakeTtsServer(), Clock()
    server.hold = True
    tts, http = _tts(server, clock, timeout=30.0)
    outcome = _run(http, tts.synthesize("Hello"))
    clock.advance(29.9)
    assert outcome == []
    clock.advance(0.1)
    assert outcome[0].check(TtsError) and outcome[0].value.status == 504
    assert outcome[0].value.message == "TTS server did not answer within 30 s"


def test_cancel_abandons_the_request() -> None:
    """Cancelling (new /speak, hang-up) fails with CancelledError, not a TtsError."""
    server = FakeTtsServer()
    server.hold = True
    tts, http = _tts(server)
    d = tts.synthesize("Hello")
    outcome = _run(http, d)
    d.cancel()
    assert outcome[0].check(CancelledError)


@pytest.mark.parametrize(("data", "content_type", "problem"), [
    (b"ID3\x04...", "audio/mpeg", "audio/mpeg, not WAV or PCM"),
    (b"<html>", "text/html", "text/html, not WAV or PCM"),
    (b"RIFF\x10\x00\x00\x00WAVEfmt ", "audio/wav", "WAV file that cannot be played"),
    (b"\x01", "audio/pcm", "no audio"),
])
def test_what_is_not_playable_audio_is_502(data: bytes, content_type: str, problem: str) -> None:
    """MP3, HTML, a damaged WAV or an empty body: a readable 502."""
    with pytest.raises(TtsError) as e:
        decode_speech(data, content_type)
    assert e.value.status == 502 and problem in e.value.message


def test_wav_at_another_rate_and_pcm_with_a_rate_parameter() -> None:
    """A 22.05 kHz WAV goes to the nearest AudioSocket rate; ``audio/L16;rate=16000`` is taken at its word."""
    pcm, rate = decode_speech(wav_file(tone(0.5, 22050), 22050), "audio/wav")
    assert rate == 24000 and len(pcm) == pytest.approx(24000, abs=8)
    pcm, rate = decode_speech(tone(0.25, 16000), "audio/L16; rate=16000")
    assert rate == 16000 and len(pcm) == 8000


@pytest.mark.integration
@pytest_twisted.ensureDeferred
async def test_over_loopback_and_cancel_closes_the_connection() -> None:
    """Over a real socket: speech comes back; a cancelled request is seen by the server as abandoned."""
    from treq.client import HTTPClient
    from twisted.internet import reactor
    from twisted.internet.defer import Deferred
    from twisted.internet.task import deferLater
    from twisted.web.client import Agent, HTTPConnectionPool
    from twisted.web.server import Site

    server = FakeTtsServer()
    port = reactor.listenTCP(0, Site(server), interface="127.0.0.1")
    pool = HTTPConnectionPool(reactor, persistent=False)
    tts = OpenAiTts(HTTPClient(Agent(reactor, pool=pool)), reactor,
                    f"http://127.0.0.1:{port.getHost().port}/v1/audio/speech", timeout=5)
    try:
        speech = await tts.synthesize("Hello over loopback")
        assert speech.pcm == server.requests[0].pcm
        server.hold = True
        d = tts.synthesize("never answered")
        d.addErrback(lambda f: f.trap(CancelledError))
        await server.when_requests(2)
        d.cancel()
        await d
        for _ in range(50):
            if server.requests[1].abandoned:
                break
            await deferLater(reactor, 0.01, lambda: None)
        assert server.requests[1].abandoned and not server.requests[1].answered
    finally:
        await pool.closeCachedConnections()
        done: Deferred = Deferred()
        port.stopListening().addBoth(lambda _: done.callback(None))
        await done
