"""
asterisk-api's TTS: an OpenAI-compatible ``POST /v1/audio/speech`` server (Qwen3-TTS in asterisk-api's set-up), for
``POST /calls/:id/speak``.

The request is asterisk-api's, ``{"input", "voice", "response_format", "speed", "language"}``, with the defaults of
``TTS_DEFAULT_VOICE`` and ``TTS_DEFAULT_LANGUAGE``, except that it asks for ``pcm`` rather than ``wav``: OpenAI's
``pcm`` is raw 16-bit samples at 24 kHz, and servers that do not know it answer a WAV file instead (Qwen3-TTS writes
16-bit PCM WAV then, where its ``wav`` may be 32-bit float, which would take the reactor a moment per second of
speech to convert). Either answer is decoded to mono PCM16LE at an AudioSocket rate (`avr.control.wav`): a body
that starts ``RIFF`` is a WAV file, anything else with an audio type is raw PCM at the ``rate=`` of its
``Content-Type`` or 24 kHz.

One deadline (``TTS_TIMEOUT_MS``) covers the request and the whole body. Cancelling `OpenAiTts.synthesize`'s
Deferred (a new ``/speak`` on the call, a hang-up) closes the connection and fails it with ``CancelledError``.
"""

from __future__ import annotations

import json
from typing import Any

import treq
from attrs import define, field, frozen
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from avr.audio import resample
from avr.config import redact_url
from avr.control.wav import WavError, decode_wav, nearest_rate
from avr.failures import describe_failure
from avr.logtext import clip

#: The rate of OpenAI's raw ``pcm`` answer.
OPENAI_PCM_RATE = 24000
#: Largest answer read, in bytes (a 5000-character text is a few minutes of speech: some MB).
MAX_SPEECH_BYTES = 64 * 1024 * 1024
#: What is asked for (see the module docstring).
RESPONSE_FORMAT = "pcm"


class TtsError(Exception):
    """
    Speech could not be synthesised.

    :ivar status: the HTTP status ``/speak`` answers: 504 (timed out, asterisk-api's), 502 (the server failed or sent
        something that is not audio).
    """

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@frozen
class Speech:
    """Synthesised speech: mono PCM16LE at ``rate`` (an AudioSocket rate), with what it was asked for."""

    pcm: bytes = field(repr=False)
    rate: int
    voice: str
    language: str

    @property
    def duration(self) -> float:
        """Seconds of audio."""
        return len(self.pcm) / 2 / self.rate


@define(eq=False)
class OpenAiTts:
    """
    Synthesises speech on an OpenAI-compatible server.

    :param http: a treq ``HTTPClient``.
    :param clock: for the deadline.
    :param url: the full speech endpoint (`avr.config.Config.openai_tts_url`).
    :param default_voice: ``TTS_DEFAULT_VOICE``.
    :param default_language: ``TTS_DEFAULT_LANGUAGE``.
    :param timeout: seconds for the request and its answer (``TTS_TIMEOUT_MS``).
    """

    http: Any
    clock: IReactorTime
    url: str
    default_voice: str = "vivian"
    default_language: str = "English"
    timeout: float = 30.0
    log = Logger()

    def synthesize(self, text: str, voice: str | None = None, language: str | None = None,
                   speed: float | None = None) -> Deferred[Speech]:
        """
        Synthesise ``text``.

        :return: a Deferred firing with the `Speech`, or failing with `TtsError`; cancel it to abandon the request.
        """
        voice = voice or self.default_voice
        language = language or self.default_language
        body = {"input": text, "voice": voice, "response_format": RESPONSE_FORMAT,
                "speed": 1.0 if speed is None else speed, "language": language}
        request = Deferred.fromCoroutine(self._synthesize(body))
        # Cancelling the request fails it with whatever treq makes of the cut connection; ``why`` says what it was.
        why = None

        def stop(reason: str) -> None:
            nonlocal why
            why = reason
            request.cancel()

        timer = self.clock.callLater(self.timeout, stop, "timeout")
        result: Deferred[Speech] = Deferred(lambda _: stop("cancelled"))

        def settle(outcome: Any) -> None:
            if timer.active():
                timer.cancel()
            if why == "cancelled" or result.called:
                return  # ``result`` fails with CancelledError
            if why == "timeout":
                result.errback(TtsError(504, f"TTS server did not answer within {self.timeout:g} s"))
            elif isinstance(outcome, Failure):
                result.errback(self._failed(outcome))
            else:
                result.callback(outcome)

        request.addBoth(settle)
        return result

    async def _synthesize(self, body: dict[str, Any]) -> Speech:
        self.log.info("TTS: synthesising {chars} characters with voice {voice!r} ({language})",
                      chars=len(body["input"]), voice=clip(body["voice"]), language=clip(body["language"]))
        response = await self.http.post(self.url, data=json.dumps(body).encode("utf-8"),
                                        headers={b"content-type": [b"application/json"], b"accept": [b"audio/*"]})
        data = await _read(response)
        if not 200 <= response.code < 300:
            detail = clip(data.decode("utf-8", "replace").strip())
            raise TtsError(502, f"TTS server returned {response.code}" + (f": {detail}" if detail else ""))
        content_type = (response.headers.getRawHeaders(b"content-type") or [b""])[0].decode("latin-1")
        pcm, rate = decode_speech(data, content_type)
        return Speech(pcm, rate, body["voice"], body["language"])

    def _failed(self, failure: Failure) -> Failure:
        if failure.check(TtsError):
            return failure
        return Failure(TtsError(502, f"TTS server {redact_url(self.url)} failed: {describe_failure(failure)}"))


async def _read(response: Any) -> bytes:
    chunks: list[bytes] = []
    size = 0

    def collect(data: bytes) -> None:
        nonlocal size
        size += len(data)
        if size > MAX_SPEECH_BYTES:
            raise TtsError(502, f"TTS answer larger than {MAX_SPEECH_BYTES} bytes")
        chunks.append(data)

    await treq.collect(response, collect)
    return b"".join(chunks)


def decode_speech(data: bytes, content_type: str) -> tuple[bytes, int]:
    """
    A TTS answer as mono PCM16LE at an AudioSocket rate (see the module docstring).

    :return: ``(pcm, rate)``. :raises TtsError: 502 when it is not audio avr can play.
    """
    if data[:4] == b"RIFF":
        try:
            audio = decode_wav(data)
        except WavError as e:
            raise TtsError(502, f"TTS server sent a WAV file that cannot be played: {e.message}") from None
        return audio.pcm, audio.rate
    media_type, _, parameters = content_type.partition(";")
    media_type = media_type.strip().lower()
    if not (media_type.startswith("audio/") or media_type == "application/octet-stream") or media_type in (
            "audio/mpeg", "audio/ogg", "audio/flac", "audio/aac", "audio/opus", "audio/webm"):
        raise TtsError(502, f"TTS server sent {media_type or 'no content type'}, not WAV or PCM audio")
    if len(data) < 2:
        raise TtsError(502, "TTS server sent no audio")
    rate = OPENAI_PCM_RATE
    for parameter in parameters.split(";"):
        name, _, value = parameter.partition("=")
        if name.strip().lower() == "rate" and value.strip().isdigit() and 1000 <= int(value) <= 384000:
            rate = int(value)
    pcm = data[:len(data) - len(data) % 2]
    target = nearest_rate(rate)
    if target != rate:
        pcm = resample(pcm, rate, target)
    return pcm, target
