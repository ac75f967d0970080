"""
A fake OpenAI Realtime WebSocket endpoint (the GA API), for the example agent's tests.

It behaves as the API reference documents it: the handshake needs ``Authorization: Bearer <key>`` and a ``model``
query parameter (401 otherwise); ``session.created`` comes first; ``session.update`` needs ``session.type`` =
``"realtime"`` and only takes the documented audio formats (``audio/pcm`` at 24000 Hz, ``audio/pcmu``,
``audio/pcma``), answered with ``session.updated``; ``input_audio_buffer.append`` takes base64 audio and is not
answered; ``conversation.item.truncate`` must name an assistant audio item and stay within its audio; a second
``response.create`` while a response is active is refused; unknown client events get an ``error`` event. With server
VAD and ``interrupt_response``, ``speech_started`` cancels the active response (``response.done`` with status
``cancelled``). Tests script the server side: the caller starts speaking, the model answers with audio and a
transcript, the caller's transcript, a function call.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.types import ConnectionDeny
from twisted.internet.defer import Deferred

from avr.once import Once
from avr.wsclock import disable_autobahn_timers

#: The client events of the GA Realtime API.
CLIENT_EVENTS = frozenset({
    "session.update", "input_audio_buffer.append", "input_audio_buffer.commit", "input_audio_buffer.clear",
    "conversation.item.create", "conversation.item.retrieve", "conversation.item.truncate",
    "conversation.item.delete", "response.create", "response.cancel", "output_audio_buffer.clear",
})

RATE = 24000


class FakeRealtimeProtocol(WebSocketServerProtocol):
    """One Realtime session: what the client sent (``events``, ``audio``) and commands that script the server."""

    factory: FakeRealtimeFactory

    def __init__(self) -> None:
        super().__init__()
        self.headers: dict[str, str] = {}
        self.model: str | None = None
        self.events: list[dict[str, Any]] = []
        #: Caller audio appended to the input buffer (PCM16 at 24 kHz).
        self.audio = b""
        #: Error events this server sent (a correct client causes none).
        self.errors: list[dict[str, Any]] = []
        self.session: dict[str, Any] = {}
        self.responding: str | None = None
        self._items: dict[str, int] = {}  # assistant audio item id -> its audio in ms
        self._count = 0
        self._closed = Once()

    # -- what the client did

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        """The client events of ``kind``, in order."""
        return [e for e in self.events if e.get("type") == kind]

    def when_closed(self) -> Deferred:
        """Fires once the connection is closed."""
        return self._closed.wait()

    # -- scripting the server

    def speech_started(self) -> None:
        """Server VAD hears the caller start speaking (cancelling the active response, if configured so)."""
        self._send({"type": "input_audio_buffer.speech_started", "audio_start_ms": len(self.audio) * 1000 // 2 // RATE,
                    "item_id": self._id("item")})
        detection = self.session.get("audio", {}).get("input", {}).get("turn_detection") or {}
        if self.responding and detection.get("interrupt_response", True):
            self._send({"type": "response.done", "response": {"id": self.responding, "status": "cancelled"}})
            self.responding = None

    def respond(self, pcm: bytes, transcript: str | None = None, chunk: int = 4800, finish: bool = True) -> str:
        """The model answers with ``pcm`` (24 kHz), as fast as it is generated: all deltas at once."""
        response_id, item_id = self._id("resp"), self._id("item")
        self.responding = response_id
        self._items[item_id] = len(pcm) * 1000 // 2 // RATE
        self._send({"type": "response.created", "response": {"id": response_id, "status": "in_progress"}})
        for start in range(0, len(pcm), chunk):
            self._send({"type": "response.output_audio.delta", "response_id": response_id, "item_id": item_id,
                        "output_index": 0, "content_index": 0,
                        "delta": base64.b64encode(pcm[start:start + chunk]).decode()})
        if transcript is not None:
            self._send({"type": "response.output_audio_transcript.done", "response_id": response_id,
                        "item_id": item_id, "output_index": 0, "content_index": 0, "transcript": transcript})
        if finish:
            self.finish()
        return item_id

    def finish(self) -> None:
        """The active response completes."""
        if self.responding:
            self._send({"type": "response.done", "response": {"id": self.responding, "status": "completed"}})
            self.responding = None

    def user_transcript(self, text: str) -> None:
        """The input transcription of the caller's last turn completes."""
        self._send({"type": "conversation.item.input_audio_transcription.completed", "item_id": self._id("item"),
                    "content_index": 0, "transcript": text})

    def function_call(self, name: str, call_id: str, arguments: str = "{}") -> None:
        """The model answers with a function call."""
        response_id = self._id("resp")
        self._send({"type": "response.created", "response": {"id": response_id, "status": "in_progress"}})
        self._send({"type": "response.function_call_arguments.done", "response_id": response_id,
                    "item_id": self._id("item"), "output_index": 0, "call_id": call_id, "name": name,
                    "arguments": arguments})
        self._send({"type": "response.done", "response": {"id": response_id, "status": "completed"}})

    def close_session(self) -> None:
        """The server ends the session."""
        self.sendClose(1000, "session over")

    # -- autobahn callbacks

    def onConnect(self, request: Any) -> None:
        self.headers = dict(request.headers)
        self.factory.connections.append(self)
        models = request.params.get("model") or []
        if request.path != "/v1/realtime" or not models:
            raise ConnectionDeny(400, "Bad Request")
        if self.headers.get("authorization") != f"Bearer {self.factory.api_key}":
            raise ConnectionDeny(401, "Unauthorized")
        self.model = models[0]

    def onOpen(self) -> None:
        self.session = {"type": "realtime", "object": "realtime.session", "id": self._id("sess"), "model": self.model,
                        "output_modalities": ["audio"],
                        "audio": {"input": {"format": {"type": "audio/pcm", "rate": RATE},
                                            "turn_detection": {"type": "server_vad"}},
                                  "output": {"format": {"type": "audio/pcm", "rate": RATE}, "voice": "alloy"}}}
        self._send({"type": "session.created", "session": self.session})
        self.factory.opened.append(self)
        self.factory._check()

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        try:
            event = json.loads(payload)
        except ValueError:
            self._error("invalid_json", "The message is not valid JSON.")
            return
        if not isinstance(event, dict) or event.get("type") not in CLIENT_EVENTS:
            self._error("invalid_value", f"Invalid value: {event.get('type') if isinstance(event, dict) else None!r}")
            return
        self.events.append(event)
        kind = event["type"]
        if kind == "session.update":
            self._session_update(event.get("session"))
        elif kind == "input_audio_buffer.append":
            try:
                self.audio += base64.b64decode(event.get("audio", ""), validate=True)
            except (binascii.Error, ValueError):
                self._error("invalid_value", "Invalid 'audio': not base64.")
        elif kind == "conversation.item.truncate":
            duration = self._items.get(str(event.get("item_id")))
            end = event.get("audio_end_ms")
            if duration is None:
                self._error("invalid_value", "Only assistant messages with audio can be truncated.")
            elif not isinstance(end, int) or end < 0 or end > duration or event.get("content_index") != 0:
                self._error("invalid_value", f"audio_end_ms {end!r} is out of range ({duration} ms of audio).")
            else:
                self._send({"type": "conversation.item.truncated", "item_id": event["item_id"], "content_index": 0,
                            "audio_end_ms": end})
        elif kind == "conversation.item.create":
            item = dict(event.get("item") or {}, id=self._id("item"))
            self._send({"type": "conversation.item.added", "item": item})
        elif kind == "response.create":
            if self.responding:
                self._error("conversation_already_has_active_response",
                            "Conversation already has an active response in progress.")
            else:
                self.responding = self._id("resp")
                self._send({"type": "response.created", "response": {"id": self.responding,
                                                                     "status": "in_progress"}})

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self._closed.fire((wasClean, code, reason))

    # -- helpers

    def _session_update(self, session: Any) -> None:
        if not isinstance(session, dict) or session.get("type") != "realtime":
            self._error("missing_required_parameter", "Missing required parameter: 'session.type'.")
            return
        audio = session.get("audio") or {}
        for side in ("input", "output"):
            fmt = (audio.get(side) or {}).get("format")
            if fmt is None:
                continue
            if fmt.get("type") not in ("audio/pcm", "audio/pcmu", "audio/pcma") or (
                    fmt.get("type") == "audio/pcm" and fmt.get("rate", RATE) != RATE):
                self._error("invalid_value", f"Invalid 'session.audio.{side}.format': {fmt!r}.")
                return
        merged = dict(self.session)
        merged.update(session)
        self.session = merged
        self._send({"type": "session.updated", "session": self.session})

    def _error(self, code: str, message: str) -> None:
        error = {"type": "invalid_request_error", "code": code, "message": message}
        self.errors.append(error)
        self._send({"type": "error", "error": error})

    def _id(self, prefix: str) -> str:
        self._count += 1
        return f"{prefix}_{self._count}"

    def _send(self, event: dict[str, Any]) -> None:
        if self.state == self.STATE_OPEN:
            self.sendMessage(json.dumps({"event_id": self._id("event"), **event}).encode(), isBinary=False)


class FakeRealtimeFactory(WebSocketServerFactory):
    """The fake endpoint; ``api_key`` is the one key it accepts."""

    protocol = FakeRealtimeProtocol

    def __init__(self, reactor: Any, api_key: str) -> None:
        super().__init__(reactor=reactor)
        disable_autobahn_timers(self)
        self.api_key = api_key
        self.connections: list[FakeRealtimeProtocol] = []
        self.opened: list[FakeRealtimeProtocol] = []
        self.waiters: list[tuple[int, Deferred]] = []

    def session_opened(self, index: int = 0) -> Deferred:
        """Fires with the ``index``-th session to open (0: the first)."""
        d: Deferred = Deferred()
        self.waiters.append((index, d))
        self._check()
        return d

    def _check(self) -> None:
        for entry in [w for w in self.waiters if w[0] < len(self.opened)]:
            self.waiters.remove(entry)
            entry[1].callback(self.opened[entry[0]])
