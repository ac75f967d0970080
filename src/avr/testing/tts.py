"""
A fake OpenAI-compatible TTS server (``POST /v1/audio/speech``), behaving as asterisk-api's Qwen3-TTS server does:
a JSON body ``{"input", "voice", "response_format", "speed", "language", ...}``; empty input is 400 with its error
shape ``{"code", "message", "statusCode"}``; ``wav`` answers a 16-bit PCM WAV file (``audio/wav``), and so does any
format it does not know (``pcm`` included), as Qwen3-TTS falls back to WAV; with ``openai_pcm`` set, ``pcm``
answers raw 16-bit samples (``audio/pcm``) as OpenAI's own API does.

The speech is a tone whose length depends on the text (``seconds_per_char``), at ``rate`` (24 kHz, Qwen3-TTS's).
Tests can hold answers (`hold`, then `release`) to see timeouts and cancellations, make it fail, and see whether a
client gave up on a request (`FakeTtsRequest.abandoned`).

`FakeTtsServer` is a plain ``twisted.web`` resource: wrap it in ``StubTreq`` in memory, or serve it with a ``Site``
on a loopback port.
"""

from __future__ import annotations

import json
import math
import struct
from typing import Any

from attrs import define, field
from twisted.internet.defer import Deferred
from twisted.web.iweb import IRequest
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

#: Qwen3-TTS's output rate.
QWEN_RATE = 24000


def tone(seconds: float, rate: int, frequency: float = 400.0, amplitude: int = 8000) -> bytes:
    """``seconds`` of a sine tone as PCM16LE mono at ``rate`` (one second computed, then repeated)."""
    second = struct.pack(f"<{rate}h", *(int(amplitude * math.sin(2 * math.pi * frequency * i / rate))
                                        for i in range(rate)))
    count = int(seconds * rate) * 2
    return (second * (count // len(second) + 1))[:count]


def wav_file(pcm: bytes, rate: int, channels: int = 1) -> bytes:
    """A 16-bit PCM RIFF/WAVE file holding ``pcm``."""
    fmt = struct.pack("<HHIIHH", 1, channels, rate, rate * 2 * channels, 2 * channels, 16)
    return (b"RIFF" + struct.pack("<I", 4 + 8 + len(fmt) + 8 + len(pcm)) + b"WAVE"
            + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(pcm)) + pcm)


@define(eq=False)
class FakeTtsRequest:
    """One synthesis request: its JSON ``body`` and, once answered, the ``pcm`` sent."""

    body: dict[str, Any]
    request: IRequest = field(repr=False)
    pcm: bytes | None = field(default=None, repr=False)
    answered: bool = False
    #: The client went away before the answer was complete.
    abandoned: bool = False


class FakeTtsServer(Resource):
    """
    The fake server; every request is kept in `requests`.

    :param rate: sample rate of the speech.
    :param seconds_per_char: length of the speech per character of input.
    :param openai_pcm: answer ``pcm`` with raw samples (OpenAI) instead of a WAV file (Qwen3-TTS).
    """

    isLeaf = True

    def __init__(self, rate: int = QWEN_RATE, seconds_per_char: float = 0.02, openai_pcm: bool = False) -> None:
        super().__init__()
        self.rate = rate
        self.seconds_per_char = seconds_per_char
        self.openai_pcm = openai_pcm
        self.requests: list[FakeTtsRequest] = []
        #: While set, requests wait for `release` (or the client going away).
        self.hold = False
        #: ``(status, body)`` to answer instead of speech.
        self.failure: tuple[int, bytes] | None = None
        self._held: list[FakeTtsRequest] = []
        self._waiters: list[tuple[int, Deferred]] = []

    def speech_seconds(self, text: str) -> float:
        """How long the speech for ``text`` is."""
        return len(text.strip()) * self.seconds_per_char

    def render_POST(self, request: Any) -> Any:
        if request.path != b"/v1/audio/speech":
            return self._error(request, 404, "NOT_FOUND", "Not Found")
        assert request.content is not None
        try:
            body = json.loads(request.content.read())
        except ValueError:
            return self._error(request, 422, "VALIDATION_ERROR", "body is not JSON")
        if not isinstance(body, dict) or not isinstance(body.get("input"), str):
            return self._error(request, 422, "VALIDATION_ERROR", "input: Field required")
        entry = FakeTtsRequest(body, request)
        self.requests.append(entry)
        request.notifyFinish().addErrback(lambda _: setattr(entry, "abandoned", True))
        self._arrived()
        if not body["input"].strip():
            return self._error(request, 400, "EMPTY_INPUT", "Input text is required")
        if self.hold:
            self._held.append(entry)
            return NOT_DONE_YET
        self._answer(entry)
        return NOT_DONE_YET

    def release(self) -> None:
        """Answer the held requests (those whose client is still there)."""
        held, self._held = self._held, []
        for entry in held:
            if not entry.abandoned:
                self._answer(entry)

    def when_requests(self, count: int) -> Deferred:
        """A Deferred firing once ``count`` requests have arrived."""
        d: Deferred = Deferred()
        self._waiters.append((count, d))
        self._arrived()
        return d

    def _arrived(self) -> None:
        for waiter in list(self._waiters):
            if len(self.requests) >= waiter[0]:
                self._waiters.remove(waiter)
                waiter[1].callback(self.requests[waiter[0] - 1])

    def _answer(self, entry: FakeTtsRequest) -> None:
        request = entry.request
        if self.failure is not None:
            status, payload = self.failure
            request.setResponseCode(status)
            request.setHeader(b"content-type", b"application/json")
            request.write(payload)
        else:
            pcm = tone(self.speech_seconds(entry.body["input"]), self.rate)
            entry.pcm = pcm
            if entry.body.get("response_format") == "pcm" and self.openai_pcm:
                request.setHeader(b"content-type", b"audio/pcm")
                request.write(pcm)
            else:
                request.setHeader(b"content-type", b"audio/wav")
                request.write(wav_file(pcm, self.rate))
        entry.answered = True
        request.finish()

    def _error(self, request: IRequest, status: int, code: str, message: str) -> Any:
        request.setResponseCode(status)
        request.setHeader(b"content-type", b"application/json")
        body = json.dumps({"code": code, "message": message, "context": None, "statusCode": status}).encode()
        request.write(body)
        request.finish()
        return NOT_DONE_YET
