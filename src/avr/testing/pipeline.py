"""
Fake AVR Core pipeline services, behaving like the adapters (agentvoiceresponse/avr-asr-*, avr-llm-*, avr-tts-*):

- `FakeAsrResource` (``POST /speech-to-text-stream``): one long request per call, raw PCM16LE 8 kHz in as the body
  streams (serve it with `fake_asr_site`, which hands the body over as it arrives, like Express), plain-text
  transcripts out, one chunked write per transcript (`FakeAsrCall.say`), ``text/event-stream``; a request without
  ``X-UUID`` is recorded as a violation.
- `FakeLlmResource` (``POST /prompt-stream``): JSON ``{uuid, message, messages}`` in; the answer streamed as
  concatenated JSON objects without separators (``json``) or raw text (``text``), one write per piece; a 400 JSON
  ``{"message"}`` for a body without ``messages`` or ``uuid`` (as avr-llm-openai). Answers at once through
  ``answer`` (text pieces for a message), or waits for the test to drive it (`FakeLlmRequest`).
- `FakeTtsResource` (``POST /text-to-speech-stream``): ``{"text"}`` in, raw PCM16LE (``audio/l16``) or a WAV out, in
  320-byte writes (as avr-tts-elevenlabs); a 400 for a missing ``text``. Answers at once through ``speak`` (PCM for a
  text), optionally after a per-text delay, or waits for the test.

Each records its requests (``requests``), sees a client that goes away (``cancelled``), and can answer an error
status (``status``), like a service that fails.
"""

from __future__ import annotations

import json
import struct
from typing import Any, Callable

from twisted.internet.defer import Deferred
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from avr.once import Once
from avr.testing.sts import _StreamingRequest


def pcm_for(text: str, rate: int = 8000, seconds_per_char: float = 0.02) -> bytes:
    """
    Recognisable TTS audio for ``text``: a constant sample value derived from the text (1000-8999), lasting
    ``seconds_per_char`` per character, so a test can tell which sentence a frame came from.
    """
    value = 1000 + sum(text.encode()) * 7 % 8000
    samples = max(1, int(len(text) * seconds_per_char * rate))
    return struct.pack("<h", value) * samples


def value_of(text: str) -> int:
    """The sample value `pcm_for` uses for ``text``."""
    return struct.unpack("<h", pcm_for(text)[:2])[0]


def wav_header(rate: int, channels: int = 1, data_bytes: int = 0xFFFFFFFF - 36) -> bytes:
    """A streaming WAV header (PCM 16-bit), as TTS services that answer in a WAV container send it."""
    return (b"RIFF" + struct.pack("<I", 36 + data_bytes) + b"WAVEfmt " +
            struct.pack("<IHHIIHH", 16, 1, channels, rate, rate * channels * 2, channels * 2, 16) +
            b"data" + struct.pack("<I", data_bytes))


def _body(request: Request) -> bytes:
    """The body of a request that twisted.web buffered."""
    return request.content.read() if request.content is not None else b""


class _Tracked:
    """A request whose client may go away: ``cancelled`` becomes true, `when_gone` fires."""

    def __init__(self, request: Request) -> None:
        self.request = request
        self.finished = False
        self.cancelled = False
        self._gone = Once()
        uuids = request.requestHeaders.getRawHeaders(b"x-uuid")
        self.uuid: str | None = uuids[0].decode("utf-8", "replace") if uuids else None
        request.notifyFinish().addCallbacks(self._done, self._lost)

    def _done(self, _: Any) -> None:
        self.finished = True
        self._gone.fire(self)

    def _lost(self, _: Any) -> None:
        self.finished = self.cancelled = True
        self._gone.fire(self)

    def when_gone(self) -> Deferred:
        """Fires once the response is finished or the client went away."""
        return self._gone.wait()

    def begin(self, content_type: bytes) -> None:
        """Send the 200 head now, as Express's ``setHeader`` + first ``write`` would."""
        self.request.setHeader(b"content-type", content_type)
        self.request.write(b"")

    def refuse(self, status: int, message: str) -> None:
        """Answer ``status`` with the adapters' ``{"message"}`` JSON body, and finish."""
        self.request.setResponseCode(status)
        self.request.setHeader(b"content-type", b"application/json")
        self.write(json.dumps({"message": message}).encode())
        self.finish()

    def write(self, data: bytes) -> None:
        if not self.finished:
            self.request.write(data)

    def finish(self) -> None:
        if not self.finished:
            self.finished = True
            self.request.finish()

    def drop(self) -> None:
        """Drop the connection (a crash)."""
        self.finished = True
        transport: Any = self.request.channel.transport
        transport.abortConnection()


class _Waiters:
    def __init__(self) -> None:
        self.items: list[Any] = []
        self._waiting: list[tuple[Callable[[Any], bool], Deferred]] = []

    def add(self, item: Any) -> None:
        self.items.append(item)
        for entry in list(self._waiting):
            if entry[0](item):
                self._waiting.remove(entry)
                entry[1].callback(item)

    def wait(self, match: Callable[[Any], bool]) -> Deferred:
        d: Deferred = Deferred()
        for item in self.items:
            if match(item):
                d.callback(item)
                return d
        self._waiting.append((match, d))
        return d


# -- ASR


class FakeAsrCall(_Tracked):
    """One call's ASR stream: ``received`` is the caller audio so far; `say` writes a transcript."""

    def __init__(self, request: Request) -> None:
        super().__init__(request)
        self.received = bytearray()
        self.body_ended = False
        self.violations = [] if self.uuid else ["no X-UUID header"]

    def body_chunk(self, data: bytes) -> None:
        self.received += data

    def body_end(self) -> None:
        # The call ended: the adapters close their upstream and end the response.
        self.body_ended = True
        self.finish()

    def say(self, text: str, newline: bool = False) -> None:
        """Write one final transcript (one chunk), ``\\n``-terminated like avr-asr-to-stt when ``newline``."""
        self.write((text + ("\n" if newline else "")).encode("utf-8"))


class FakeAsrResource(Resource):
    """The fake ASR; ``status`` other than 200 answers every call with that error (JSON ``{"message"}``)."""

    isLeaf = True

    def __init__(self, status: int = 200) -> None:
        super().__init__()
        self.status = status
        self._calls = _Waiters()

    @property
    def calls(self) -> list[FakeAsrCall]:
        return self._calls.items

    def call_opened(self, uuid: str | None = None, index: int = 0) -> Deferred:
        """Fires with the ``index``-th stream opened for ``uuid`` (``None``: any call)."""
        seen: list[int] = []

        def match(call: FakeAsrCall) -> bool:
            if uuid is not None and call.uuid != uuid:
                return False
            seen.append(1)
            return len(seen) > index

        return self._calls.wait(match)

    def render_POST(self, request: Request) -> Any:
        call = FakeAsrCall(request)
        request.setHeader(b"connection", b"close")
        if self.status != 200:
            call.refuse(self.status, "fake ASR refuses the stream")
        else:
            call.begin(b"text/event-stream")
        if hasattr(request, "body_sink"):
            request.body_sink = call
        else:
            call.body_chunk(_body(request))
            call.body_end()
        self._calls.add(call)
        return NOT_DONE_YET


def fake_asr_site(resource: FakeAsrResource, reactor: Any) -> Site:
    """A `Site` for the fake ASR that renders each request at its head and streams its body to the call."""
    site = Site(resource, reactor=reactor)
    site.requestFactory = _StreamingRequest
    return site


# -- LLM


class FakeLlmRequest(_Tracked):
    """One LLM request: ``body`` is the parsed JSON; `text`, `status`, `error` write stream pieces."""

    def __init__(self, request: Request, body: dict, mode: str) -> None:
        super().__init__(request)
        self.body = body
        self.mode = mode
        #: The request body as sent.
        self.raw = b""

    @property
    def message(self) -> str:
        return self.body.get("message", "")

    @property
    def messages(self) -> list[dict]:
        return self.body.get("messages", [])

    def _piece(self, kind: str, content: str) -> None:
        if self.mode == "json":
            self.write(json.dumps({"type": kind, "content": content}).encode("utf-8"))
        elif kind == "text":
            self.write(content.encode("utf-8"))

    def text(self, content: str) -> None:
        self._piece("text", content)

    def status(self, content: str) -> None:
        self._piece("status", content)

    def error(self, content: str) -> None:
        self._piece("error", content)


class FakeLlmResource(Resource):
    """
    The fake LLM adapter.

    :param mode: ``json`` (concatenated objects) or ``text`` (raw).
    :param answer: the pieces of text to stream for a message, at once, then the end (``None``: the test drives).
    """

    isLeaf = True

    def __init__(self, mode: str = "json", answer: Callable[[str], list[str]] | None = None,
                 status: int = 200) -> None:
        super().__init__()
        self.mode = mode
        self.answer = answer
        self.status = status
        self._requests = _Waiters()

    @property
    def requests(self) -> list[FakeLlmRequest]:
        return self._requests.items

    def request_arrived(self, index: int = 0) -> Deferred:
        """Fires with the ``index``-th request."""
        return self._requests.wait(lambda r: self.requests.index(r) == index)

    def render_POST(self, request: Request) -> Any:
        raw = _body(request)
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        request.setHeader(b"connection", b"close")
        if not isinstance(body, dict) or "messages" not in body or "uuid" not in body:
            request.setResponseCode(400)
            request.setHeader(b"content-type", b"application/json")
            return json.dumps({"message": "Messages is required"}).encode()
        llm = FakeLlmRequest(request, body, self.mode)
        llm.raw = raw
        if self.status != 200:
            llm.refuse(self.status, "Error communicating with OpenAI")
        else:
            llm.begin(b"text/event-stream")
        self._requests.add(llm)
        if self.status == 200 and self.answer is not None:
            for piece in self.answer(llm.message):
                llm.text(piece)
            if self.mode == "json":
                llm.status("completed")
            llm.finish()
        return NOT_DONE_YET


# -- TTS


class FakeTtsRequest(_Tracked):
    """One TTS request: ``text``; `send` writes PCM in 320-byte pieces."""

    def __init__(self, request: Request, text: str) -> None:
        super().__init__(request)
        self.text = text

    def send(self, pcm: bytes) -> None:
        for i in range(0, len(pcm), 320):
            self.write(pcm[i:i + 320])


class FakeTtsResource(Resource):
    """
    The fake TTS.

    :param speak: the PCM for a text, sent at once (``None``: the test drives).
    :param clock: with ``delays``, when to answer each text (out-of-order answers).
    :param delays: seconds to wait before answering a text.
    :param wav_rate: answer in a WAV container at this rate (the PCM from ``speak`` is taken to be at it).
    """

    isLeaf = True

    def __init__(self, speak: Callable[[str], bytes] | None = pcm_for, status: int = 200, clock: Any = None,
                 delays: dict[str, float] | None = None, wav_rate: int | None = None) -> None:
        super().__init__()
        self.speak = speak
        self.status = status
        self.clock = clock
        self.delays = delays or {}
        self.wav_rate = wav_rate
        self._requests = _Waiters()

    @property
    def requests(self) -> list[FakeTtsRequest]:
        return self._requests.items

    @property
    def texts(self) -> list[str]:
        return [r.text for r in self.requests]

    def request_arrived(self, index: int = 0) -> Deferred:
        return self._requests.wait(lambda r: self.requests.index(r) == index)

    def render_POST(self, request: Request) -> Any:
        try:
            body = json.loads(_body(request))
        except ValueError:
            body = None
        request.setHeader(b"connection", b"close")
        text = body.get("text") if isinstance(body, dict) else None
        if not isinstance(text, str) or not text:
            request.setResponseCode(400)
            request.setHeader(b"content-type", b"application/json")
            return json.dumps({"message": "Text is required"}).encode()
        tts = FakeTtsRequest(request, text)
        self._requests.add(tts)
        if self.status != 200:
            tts.refuse(self.status, "Error processing text-to-speech request")
            return NOT_DONE_YET
        tts.begin(b"audio/wav" if self.wav_rate else b"audio/l16")
        if self.speak is not None:
            delay = self.delays.get(text, 0.0)
            if delay and self.clock is not None:
                self.clock.callLater(delay, self._answer, tts)
            else:
                self._answer(tts)
        return NOT_DONE_YET

    def _answer(self, tts: FakeTtsRequest) -> None:
        assert self.speak is not None
        if self.wav_rate:
            tts.write(wav_header(self.wav_rate))
        tts.send(self.speak(tts.text))
        tts.finish()
