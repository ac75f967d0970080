"""
The pipeline's three HTTP services, as `IHttpReceiver`\\ s of `avr.httpstream` exchanges (one object per request):

- `AsrStream`: the call-long POST of caller audio; each transcript the ASR writes is one user turn.
- `LlmAnswer`: one turn's POST of the conversation; its streamed answer, parsed by `LlmStreamParser`.
- `TtsAnswer`: one sentence's POST; its streamed PCM (or WAV) at the session's output rate.

Each hands what it gets to callbacks and reports its end once, with ``None`` for a normal end or the reason it
failed (a non-2xx status, a dropped connection, a malformed stream, a silence longer than the timeout).
"""

from __future__ import annotations

import codecs
import struct
from typing import Any, Callable

from attrs import define, field
from twisted.internet.interfaces import IDelayedCall
from zope.interface import implementer

from avr.audio import Resampler, audioop
from avr.httpstream import HttpExchange, IHttpReceiver, ResponseHead
from avr.logtext import clip
from avr.pipeline.llmstream import LlmEvent, LlmStreamParser

#: Longest transcript text kept without an end (a chunk end or a line break); beyond it, it is a turn anyway.
MAX_TRANSCRIPT_CHARS = 16 * 1024
#: Most of an error body quoted in a reason.
_ERROR_BODY_BYTES = 300


@define(eq=False)
class _Exchange:
    """What the three receivers share: the open exchange, a non-2xx status and its body, the silence timer."""

    clock: Any
    timeout: float | None
    on_end: Callable[[str | None], None]
    #: The service, in reasons (``the LLM answered HTTP 500``).
    what: str = "service"
    exchange: HttpExchange | None = None
    status: int | None = None
    _error_body: bytearray = field(factory=bytearray)
    _timer: IDelayedCall | None = None
    _ended: bool = False

    def attach(self, exchange: HttpExchange) -> None:
        """The request is on the wire."""
        self.exchange = exchange
        if self._ended:
            exchange.close("cancelled")
            return
        self._arm()

    def _arm(self) -> None:
        if self.timeout is None or self._ended:
            return
        if self._timer is not None and self._timer.active():
            self._timer.reset(self.timeout)
        else:
            self._timer = self.clock.callLater(self.timeout, self._timed_out)

    def _timed_out(self) -> None:
        self._timer = None
        self.close(f"no answer from the {self.what} for {self.timeout:g} s")

    def heard(self) -> None:
        """Something arrived: the silence timer starts again."""
        self._arm()

    @property
    def ok(self) -> bool:
        """No error status (yet): the body, if any, is the content."""
        return self.status is None

    def head(self, head: ResponseHead) -> None:
        """The answer's status: a non-2xx one is kept (its body then explains it, for the reason)."""
        self.heard()
        if not 200 <= head.status < 300:
            self.status = head.status

    def content(self, data: bytes) -> bool:
        """
        A piece of the body arrived: the silence timer starts again.

        :return: True when it is the content (a 2xx answer); an error answer's body is kept for the reason instead.
        """
        self.heard()
        if self.ok:
            return True
        room = _ERROR_BODY_BYTES - len(self._error_body)
        if room > 0:
            self._error_body += data[:room]
        return False

    def close(self, reason: str) -> None:
        """Give up the request (cancelled, timed out): its connection is closed and `on_end` gets ``reason``."""
        if self._ended:
            return
        if self.exchange is not None and not self.exchange.ended:
            self.exchange.close(reason)  # reports back through ended()
        else:
            self.ended(reason)

    def ended(self, reason: str | None) -> None:
        if self._ended:
            return
        self._ended = True
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if reason is None and self.status is not None:
            text = bytes(self._error_body).decode("utf-8", "replace").strip()
            reason = f"the {self.what} answered HTTP {self.status}" + (f": {clip(text)}" if text else "")
        self.on_end(reason)


@implementer(IHttpReceiver)
@define(eq=False)
class AsrStream:
    """
    The ASR's response: plain UTF-8 transcript text (``text/event-stream`` in name only). Each transcript the adapter
    writes is one user turn: a chunk of the chunked body (the adapters' one ``res.write`` per transcript), or a line
    (adapters that end each with ``\\n``). Text is trimmed, empty turns dropped; error strings some adapters write
    (``[VAD Service: Error …]``) are passed on as they are.
    """

    io: _Exchange
    on_transcript: Callable[[str], None]
    _decoder: Any = field(factory=lambda: codecs.getincrementaldecoder("utf-8")(errors="replace"))
    _text: str = ""

    @classmethod
    def create(cls, clock: Any, on_transcript: Callable[[str], None],
               on_end: Callable[[str | None], None]) -> AsrStream:
        return cls(_Exchange(clock, None, on_end, "ASR"), on_transcript)

    def send(self, pcm: bytes) -> None:
        """Caller audio (PCM16LE 8 kHz)."""
        if self.io.exchange is not None:
            self.io.exchange.send_body(pcm)

    def response_head(self, head: ResponseHead) -> None:
        self.io.head(head)

    def response_data(self, data: bytes) -> None:
        if not self.io.content(data):
            return
        self._text += self._decoder.decode(data)
        if "\n" in self._text:
            *lines, self._text = self._text.split("\n")
            for line in lines:
                self._turn(line)
        if len(self._text) > MAX_TRANSCRIPT_CHARS:
            self._turn(self._text)
            self._text = ""

    def response_chunk_end(self) -> None:
        if self.io.ok:
            text, self._text = self._text, ""
            self._turn(text)

    def response_ended(self, reason: str | None) -> None:
        if self.io.ok and reason is None:
            self._turn(self._text + self._decoder.decode(b"", final=True))
        self._text = ""
        self.io.ended(reason if reason is not None or not self.io.ok else "the ASR ended its stream")

    def _turn(self, text: str) -> None:
        text = text.strip()
        if text:
            self.on_transcript(text)


@implementer(IHttpReceiver)
@define(eq=False)
class LlmAnswer:
    """One turn's LLM response, parsed as it streams (`LlmStreamParser`); events go to ``on_event``."""

    io: _Exchange
    on_event: Callable[[LlmEvent], None]
    _parser: LlmStreamParser = field(factory=LlmStreamParser)

    @classmethod
    def create(cls, clock: Any, timeout: float, on_event: Callable[[LlmEvent], None],
               on_end: Callable[[str | None], None]) -> LlmAnswer:
        return cls(_Exchange(clock, timeout, on_end, "LLM"), on_event)

    def response_head(self, head: ResponseHead) -> None:
        self.io.head(head)

    def response_data(self, data: bytes) -> None:
        if not self.io.content(data):
            return
        for event in self._parser.feed(data):
            self.on_event(event)

    def response_chunk_end(self) -> None:
        pass

    def response_ended(self, reason: str | None) -> None:
        if self.io.ok and reason is None:
            for event in self._parser.end():
                self.on_event(event)
        self.io.ended(reason)


@implementer(IHttpReceiver)
@define(eq=False)
class TtsAnswer:
    """
    One sentence's TTS response: raw PCM16LE mono at ``rate`` (``audio/l16``, ``audio/basic``, octet-stream: the
    adapters' formats), or a WAV container (``RIFF``…``WAVE``), whose own rate and channels are used. The audio goes
    to ``on_audio`` at ``output_rate``, in whole samples.
    """

    io: _Exchange
    on_audio: Callable[[bytes], None]
    rate: int
    output_rate: int
    _start: bytearray = field(factory=bytearray)
    _format: tuple[int, int] | None = None  # (rate, channels), once the body's start is known
    _odd: bytes = b""
    _resampler: Resampler | None = None

    @classmethod
    def create(cls, clock: Any, timeout: float, rate: int, output_rate: int, on_audio: Callable[[bytes], None],
               on_end: Callable[[str | None], None]) -> TtsAnswer:
        return cls(_Exchange(clock, timeout, on_end, "TTS"), on_audio, rate, output_rate)

    def response_head(self, head: ResponseHead) -> None:
        self.io.head(head)

    def response_data(self, data: bytes) -> None:
        if not self.io.content(data):
            return
        if self._format is None:
            self._start += data
            data = self._sniff()
            if self._format is None:
                return
        self._play(data)

    def _sniff(self) -> bytes:
        """Decide raw PCM or WAV from the body's start; :return: the audio after any header."""
        start = self._start
        if len(start) < 12 and b"RIFF".startswith(bytes(start[:4])):
            return b""  # could still be a WAV header
        if start[:4] != b"RIFF" or start[8:12] != b"WAVE":
            self._format = (self.rate, 1)
            return self._begin(bytes(start))
        position = 12
        fmt = None
        while position + 8 <= len(start):
            chunk_id = bytes(start[position:position + 4])
            (size,) = struct.unpack_from("<I", start, position + 4)
            body = position + 8
            if chunk_id == b"data":
                if fmt is None:
                    self.io.close("the TTS sent a WAV answer without a fmt chunk before its data")
                    return b""
                self._format = fmt
                return self._begin(bytes(start[body:]))
            if chunk_id == b"fmt ":
                if body + 16 > len(start):
                    break
                tag, channels, rate, _, _, bits = struct.unpack_from("<HHIIHH", start, body)
                if tag not in (1, 0xFFFE) or bits != 16 or channels not in (1, 2) or not rate:
                    self.io.close(f"the TTS sent WAV audio avr cannot play (format {tag}, {bits}-bit, "
                                  f"{channels} channels)")
                    return b""
                fmt = (rate, channels)
            position = body + size + (size & 1)
        if len(start) > 64 * 1024:
            self.io.close("the TTS sent a WAV header without data")
        return b""

    def _begin(self, data: bytes) -> bytes:
        rate = self._format[0]  # type: ignore[index]
        if rate != self.output_rate:
            self._resampler = Resampler(rate, self.output_rate)
        self._start = bytearray()
        return data

    def _play(self, data: bytes) -> None:
        if self._odd:
            data = self._odd + data
        channels = self._format[1]  # type: ignore[index]
        whole = len(data) - len(data) % (2 * channels)
        self._odd = data[whole:]
        data = data[:whole]
        if not data:
            return
        if channels == 2:
            data = audioop.tomono(data, 2, 0.5, 0.5)
        if self._resampler is not None:
            data = self._resampler.convert(data)
        if data:
            self.on_audio(data)

    def response_chunk_end(self) -> None:
        pass

    def response_ended(self, reason: str | None) -> None:
        if self.io.ok and reason is None:
            if self._format is None and self._start:
                self._format = (self.rate, 1)
                self._play(self._begin(bytes(self._start)))
            if self._resampler is not None:
                tail = self._resampler.flush()
                if tail:
                    self.on_audio(tail)
        self.io.ended(reason)
