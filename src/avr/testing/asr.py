"""
A fake of asterisk-api's streaming ASR server (Qwen3-ASR's ``/ws/transcribe``), behaving as the real one does:

* on connect it sends ``{"status": "connected", "sample_rate", "format": "pcm_s16le", "buffer_size", "window_max_s",
  "use_server_vad"}`` (``?sample_rate=8000`` or ``16000``; anything else is an error message and a close);
* binary messages are PCM16LE audio, gathered until ``buffer_size`` bytes (14400, 450 ms at 16 kHz), then moved to
  a sliding window of at most ``window_max_s`` seconds, which is transcribed: a cumulative partial
  ``{"text", "is_partial": true, "is_final": false}`` when the text is not empty;
* ``{"action": "flush"}``: the whole window (and what is gathered) is transcribed and sent as
  ``{"text", "is_partial": false, "is_final": true}`` (also when empty), and the window is cleared;
  ``{"action": "reset"}`` clears it and answers ``{"status": "buffer_reset"}``; ``{"action": "config",
  "language"}`` answers ``{"status": "configured", "language", "use_server_vad"}`` (``auto`` → ``auto``);
  another action is ``{"code": "UNKNOWN_ACTION", ...}``, text that is not JSON ``{"code": "INVALID_JSON", ...}``.

"Transcribing" is the ``transcribe`` function given (audio bytes → text); the default writes one word per 100 ms
of audio that is not silence, so silence transcribes to nothing. Everything a connection received is recorded.
"""

from __future__ import annotations

import json
from typing import Any, Callable

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from twisted.internet.defer import Deferred

from avr.wsclock import disable_autobahn_timers

#: The real server's defaults.
BUFFER_SIZE = 14400
WINDOW_MAX_S = 6.0
SAMPLE_RATE = 16000


def words_per_100ms(audio: bytes) -> str:
    """One word (``w1 w2 ...``) per 100 ms (3200 bytes at 16 kHz) of audio that is not all zeros."""
    chunk = SAMPLE_RATE * 2 // 10
    count = sum(1 for i in range(0, len(audio) - chunk + 1, chunk) if audio[i:i + chunk].strip(b"\x00"))
    return " ".join(f"w{i + 1}" for i in range(count))


class FakeAsrProtocol(WebSocketServerProtocol):
    """One client connection of the fake ASR server."""

    factory: FakeAsrServerFactory

    def __init__(self) -> None:
        super().__init__()
        self.request_path = ""
        self.sample_rate = SAMPLE_RATE
        self.language: str | None = "English"
        #: Every control message received (parsed), in order.
        self.actions: list[dict] = []
        #: Every text message sent, parsed.
        self.sent: list[dict] = []
        self.received_audio = bytearray()
        self.closed: Deferred = Deferred()
        self._buffer = bytearray()
        self._window = bytearray()

    def onConnect(self, request: Any) -> None:
        self.request_path = request.path
        rate = (request.params.get("sample_rate") or [str(SAMPLE_RATE)])[0]
        self.sample_rate = int(rate) if rate.isdigit() else -1

    def onOpen(self) -> None:
        self.factory.connections.append(self)
        if self.sample_rate not in (8000, 16000):
            self._reply({"code": "UNSUPPORTED_SAMPLE_RATE", "statusCode": 400,
                        "message": f"sample_rate must be 8000 or 16000, got {self.sample_rate}"})
            self.sendClose()
            return
        self._reply({"status": "connected", "sample_rate": self.sample_rate, "format": "pcm_s16le",
                    "buffer_size": BUFFER_SIZE, "window_max_s": WINDOW_MAX_S, "use_server_vad": False})

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        if isBinary:
            self._audio(payload)
            return
        try:
            message = json.loads(payload)
        except ValueError:
            self._reply({"code": "INVALID_JSON", "message": "Invalid JSON command", "statusCode": 400})
            return
        self.actions.append(message)
        action = message.get("action", "") if isinstance(message, dict) else ""
        if action == "flush":
            self._window += self._buffer
            self._buffer.clear()
            self._reply({"text": self.factory.transcribe(bytes(self._window)) if self._window else "",
                        "is_partial": False, "is_final": True})
            self._window.clear()
        elif action == "reset":
            self._buffer.clear()
            self._window.clear()
            self._reply({"status": "buffer_reset"})
        elif action == "config":
            language = message.get("language")
            if language == "auto":
                self.language = None
            elif language:
                self.language = language
            self._reply({"status": "configured", "language": self.language or "auto", "use_server_vad": False})
        else:
            self._reply({"code": "UNKNOWN_ACTION", "message": f"Unknown action: {action!r}", "statusCode": 400})

    def _audio(self, data: bytes) -> None:
        self.received_audio += data
        self._buffer += data
        if len(self._buffer) < BUFFER_SIZE:
            return
        self._window += self._buffer
        self._buffer.clear()
        limit = int(WINDOW_MAX_S * SAMPLE_RATE * 2)
        if len(self._window) > limit:
            del self._window[:len(self._window) - limit]
        text = self.factory.transcribe(bytes(self._window))
        if text:
            self._reply({"text": text, "is_partial": True, "is_final": False})

    def send_raw(self, payload: bytes, binary: bool = False) -> None:
        """Send anything."""
        self.sendMessage(payload, isBinary=binary)

    def drop(self) -> None:
        """Drop the TCP connection (a crashed or restarted server)."""
        self.dropConnection(abort=True)

    def _reply(self, message: dict) -> None:
        self.sent.append(message)
        self.sendMessage(json.dumps(message).encode("utf-8"), isBinary=False)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        if self in self.factory.connections:
            self.factory.connections.remove(self)
        self.factory.gone.append(self)
        if not self.closed.called:
            self.closed.callback(self)


class FakeAsrServerFactory(WebSocketServerFactory):
    """
    The fake ASR server. Listen with it on a loopback port, or build protocols for in-memory tests.

    :param transcribe: audio bytes (PCM16LE 16 kHz) → text.
    :ivar connections: the open connections; ``gone``: those that closed.
    """

    protocol = FakeAsrProtocol  # type: ignore[assignment]

    def __init__(self, reactor: Any, transcribe: Callable[[bytes], str] = words_per_100ms) -> None:
        super().__init__("ws://127.0.0.1/ws/transcribe", reactor=reactor)
        disable_autobahn_timers(self)
        self.transcribe = transcribe
        self.connections: list[FakeAsrProtocol] = []
        self.gone: list[FakeAsrProtocol] = []
