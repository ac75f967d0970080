"""
One call of the example agent, free of I/O: avr's STS messages in and out on one side, OpenAI Realtime events on the
other (the GA names: ``response.output_audio.delta``, ``session.type = "realtime"``, ``audio.input.format``...; the
beta names of the two output events that changed, ``response.audio.delta`` and ``response.audio_transcript.done``,
are read too, for Realtime-compatible servers that still send them).

`CallBridge` is given each decoded JSON object and sends JSON objects through two callables, so the same code runs
on sockets (`examples.realtime_agent.server`) and in tests.

    avr                               this bridge                          Realtime
    init {uuid}                  ->   (opens the Realtime session)    ->   session.update (24 kHz PCM, server VAD)
    audio {PCM @ STS_SAMPLE_RATE} ->  resample to 24 kHz              ->   input_audio_buffer.append
    dtmf_digit {digit}           ->   a user message "pressed 5"      ->   conversation.item.create (+ response.create)
                                 <-   resample from 24 kHz            <-   response.output_audio.delta
    interruption                 <-   (and conversation.item.truncate) <-  input_audio_buffer.speech_started
    transcript {agent}           <-                                   <-   response.output_audio_transcript.done
    transcript {user}            <-                                   <-   conversation.item.input_audio_
                                                                           transcription.completed
    hangup / transfer {id}       <-   once the caller heard the answer <-  response.function_call_arguments.done
    action_result {id}           ->   the tool's output               ->   conversation.item.create + response.create
"""

from __future__ import annotations

import base64
import json
from collections import deque
from typing import Any, Callable

import numpy as np
import soxr
from attrs import frozen
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

#: The only PCM rate the Realtime API takes and gives (``audio/pcm``).
REALTIME_RATE = 24000

#: Caller audio kept while the Realtime session opens (seconds at 24 kHz); the oldest goes first.
PENDING_SECONDS = 2.0

#: After the caller heard the answer that asked for a hang-up or transfer, wait this long before acting on it.
ACTION_MARGIN = 0.3

DEFAULT_INSTRUCTIONS = (
    "You are a friendly assistant answering a phone call. Keep your answers short and speak naturally. When the "
    "caller is done, say goodbye and then call hang_up."
)

#: Realtime events carrying agent audio and the agent's final transcript (GA names first, then the beta ones).
AUDIO_DELTA = ("response.output_audio.delta", "response.audio.delta")
AGENT_TRANSCRIPT = ("response.output_audio_transcript.done", "response.audio_transcript.done")

log = Logger()

Send = Callable[[dict[str, Any]], None]


@frozen
class AgentSettings:
    """
    What every call of the agent shares.

    :ivar instructions: the model's system instructions.
    :ivar voice: the Realtime voice (``marin``, ``cedar``, ``alloy``...).
    :ivar transcription_model: the model that transcribes the caller (``transcript`` role ``user``); ``None`` = off.
    :ivar greeting: if set, the agent speaks first, told to greet the caller with this text.
    :ivar transfer_endpoint: if set (``PJSIP/1002``), the model gets a ``transfer_call`` tool that asks avr to
        transfer the caller there.
    :ivar sample_rate: the rate of the PCM exchanged with avr: avr's ``STS_SAMPLE_RATE``.
    """

    instructions: str = DEFAULT_INSTRUCTIONS
    voice: str = "marin"
    transcription_model: str | None = "gpt-4o-mini-transcribe"
    greeting: str | None = None
    transfer_endpoint: str | None = None
    sample_rate: int = 8000


class Resampler:
    """
    PCM16LE mono from one rate to another, as one continuous stream (libsoxr); the same rate passes through.

    libsoxr's variable-rate mode on float samples gives out audio for every chunk put in (its fixed-rate int16 mode
    gives it out in bursts of 60 ms), after a fixed delay of 25-30 ms.
    """

    def __init__(self, from_rate: int, to_rate: int) -> None:
        self._stream = None if from_rate == to_rate else soxr.ResampleStream(
            from_rate, to_rate, 1, dtype="float32", vr=True)
        self._odd = b""

    def convert(self, pcm: bytes) -> bytes:
        """The next chunk, converted (possibly empty: the filter holds back a few milliseconds at first)."""
        if self._stream is None:
            return pcm
        pcm, self._odd = self._odd + pcm, b""
        if len(pcm) % 2:
            pcm, self._odd = pcm[:-1], pcm[-1:]
        samples = np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768
        out = self._stream.resample_chunk(samples)
        return bytes(np.clip(np.rint(out * 32768), -32768, 32767).astype("<i2").tobytes())


def session_config(settings: AgentSettings) -> dict[str, Any]:
    """The ``session`` of the ``session.update`` sent first: audio formats, voice, turn detection, tools."""
    pcm = {"type": "audio/pcm", "rate": REALTIME_RATE}
    audio_in: dict[str, Any] = {
        "format": pcm,
        # The server detects the caller's turns; speech_started cancels the answer under way (interrupt_response).
        "turn_detection": {"type": "server_vad", "create_response": True, "interrupt_response": True},
    }
    if settings.transcription_model:
        audio_in["transcription"] = {"model": settings.transcription_model}
    tools: list[dict[str, Any]] = [{
        "type": "function", "name": "hang_up",
        "description": "End the phone call. Say goodbye first.",
        "parameters": {"type": "object", "properties": {}},
    }]
    if settings.transfer_endpoint:
        tools.append({
            "type": "function", "name": "transfer_call",
            "description": "Transfer the caller to a human colleague. Tell the caller first.",
            "parameters": {"type": "object", "properties": {}},
        })
    return {
        "type": "realtime",
        "output_modalities": ["audio"],
        "instructions": settings.instructions,
        "audio": {"input": audio_in, "output": {"format": pcm, "voice": settings.voice}},
        "tools": tools,
        "tool_choice": "auto",
    }


class CallBridge:
    """
    One call: avr's STS session on one side, one Realtime session on the other.

    The bridge keeps an estimate of the caller's playback: avr plays the agent's audio in real time from when it
    arrives, so the audio sent so far ends at `play_end`. It uses it to truncate the conversation item the caller
    barged into at what they heard, and to hang up or transfer only once the caller heard what the agent said before.

    :param settings: the agent's settings.
    :param clock: ``seconds()`` for the playback estimate and ``callLater`` for delayed actions.
    :param to_avr: sends one message to avr.
    :param to_realtime: sends one client event to the Realtime endpoint (only called after `realtime_opened`).
    """

    def __init__(self, settings: AgentSettings, clock: IReactorTime, to_avr: Send, to_realtime: Send) -> None:
        self.settings = settings
        self.clock = clock
        self.uuid: str | None = None
        self._to_avr = to_avr
        self._to_realtime = to_realtime
        self._realtime_open = False
        self._pending: deque[bytes] = deque()
        self._pending_bytes = 0
        self._to_24k = Resampler(settings.sample_rate, REALTIME_RATE)
        self._from_24k = Resampler(REALTIME_RATE, settings.sample_rate)
        #: When the audio sent to avr so far will have played out (``clock.seconds()`` time).
        self.play_end = 0.0
        self._spoke = False  # audio went to avr since the caller last barged in
        self._item: tuple[str, float, int] | None = None  # (item id, when it starts playing, its audio in ms)
        self._responding = False
        self._actions: list[dict[str, Any]] = []  # control messages waiting for the end of the answer
        self._tool_calls: dict[str, str] = {}  # call_id -> tool name, until avr's action_result
        self._timer: IDelayedCall | None = None
        self.closed = False

    # -- avr's side

    def avr_message(self, message: dict[str, Any]) -> None:
        """One message from avr."""
        kind = message.get("type")
        if kind == "audio":
            self._caller_audio(base64.b64decode(message.get("audio") or ""))
        elif kind == "init":
            self.uuid = str(message.get("uuid"))
            log.info("Call {uuid}: started", uuid=self.uuid)
        elif kind == "dtmf_digit":
            digit = str(message.get("digit"))
            log.info("Call {uuid}: the caller pressed {digit}", uuid=self.uuid, digit=digit)
            self._user_text(f"(The caller pressed the key {digit} on their phone.)")
        elif kind == "action_result":
            self._action_result(message)
        # Any other type is ignored, as the protocol asks.

    def _caller_audio(self, pcm: bytes) -> None:
        pcm = self._to_24k.convert(pcm)
        if not pcm:
            return
        if self._realtime_open:
            self._to_realtime({"type": "input_audio_buffer.append", "audio": base64.b64encode(pcm).decode()})
            return
        self._pending.append(pcm)
        self._pending_bytes += len(pcm)
        while self._pending_bytes > PENDING_SECONDS * REALTIME_RATE * 2:
            self._pending_bytes -= len(self._pending.popleft())

    def _user_text(self, text: str) -> None:
        if not self._realtime_open:
            return
        self._to_realtime({"type": "conversation.item.create", "item": {
            "type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}})
        self._respond()

    def _respond(self, instructions: str | None = None) -> None:
        # One answer at a time: the API refuses response.create while one is under way.
        if self._responding:
            return
        self._responding = True
        event: dict[str, Any] = {"type": "response.create"}
        if instructions:
            event["response"] = {"instructions": instructions}
        self._to_realtime(event)

    def _action_result(self, message: dict[str, Any]) -> None:
        call_id = message.get("id")
        name = self._tool_calls.pop(call_id, None) if isinstance(call_id, str) else None
        log.info("Call {uuid}: avr answered {action}: ok={ok} {error}", uuid=self.uuid,
                 action=message.get("action"), ok=message.get("ok"), error=message.get("error") or "")
        if name is None or not self._realtime_open:
            return
        output = {"ok": message.get("ok") is True, "error": message.get("error")}
        self._to_realtime({"type": "conversation.item.create", "item": {
            "type": "function_call_output", "call_id": call_id, "output": json.dumps(output)}})
        if not (name == "hang_up" and output["ok"]):
            self._respond()  # say how it went (a transfer that failed: busy, no answer...)

    # -- the Realtime side

    def realtime_opened(self) -> None:
        """The Realtime WebSocket is open: configure the session, then send the audio that waited."""
        self._realtime_open = True
        self._to_realtime({"type": "session.update", "session": session_config(self.settings)})
        while self._pending:
            pcm = self._pending.popleft()
            self._to_realtime({"type": "input_audio_buffer.append", "audio": base64.b64encode(pcm).decode()})
        self._pending_bytes = 0
        if self.settings.greeting:
            self._respond(f"Greet the caller, saying: {self.settings.greeting}")

    def realtime_event(self, event: dict[str, Any]) -> None:
        """One server event from the Realtime endpoint."""
        kind = event.get("type")
        if kind in AUDIO_DELTA:
            self._agent_audio(str(event.get("item_id")), base64.b64decode(event.get("delta") or ""))
        elif kind == "input_audio_buffer.speech_started":
            self._barge_in()
        elif kind in AGENT_TRANSCRIPT:
            self._transcript("agent", event.get("transcript"))
        elif kind == "conversation.item.input_audio_transcription.completed":
            self._transcript("user", event.get("transcript"))
        elif kind == "response.function_call_arguments.done":
            self._tool_call(str(event.get("name")), str(event.get("call_id")))
        elif kind == "response.created":
            self._responding = True
        elif kind == "response.done":
            self._responding = False
            self._schedule_actions()
        elif kind == "error":
            error = event["error"] if isinstance(event.get("error"), dict) else {}
            text = str(error.get("message") or error.get("code") or "Realtime error")
            log.warn("Call {uuid}: the Realtime endpoint reports: {error}", uuid=self.uuid, error=text)
            self._to_avr({"type": "error", "message": text})
        elif kind == "session.updated":
            log.info("Call {uuid}: Realtime session configured", uuid=self.uuid)

    def _agent_audio(self, item_id: str, pcm24: bytes) -> None:
        pcm = self._from_24k.convert(pcm24)
        if not pcm:
            return
        now = self.clock.seconds()
        start = max(now, self.play_end)
        if self._item is None or self._item[0] != item_id:
            self._item = (item_id, start, 0)
        seconds = len(pcm) / 2 / self.settings.sample_rate
        self.play_end = start + seconds
        item_id, item_start, item_ms = self._item
        self._item = (item_id, item_start, item_ms + round(len(pcm24) / 2 / REALTIME_RATE * 1000))
        self._spoke = True
        self._to_avr({"type": "audio", "audio": base64.b64encode(pcm).decode()})

    def _barge_in(self) -> None:
        # The server already cancelled its answer (interrupt_response); avr must drop what it has queued.
        if not self._spoke:
            return
        self._spoke = False
        now = self.clock.seconds()
        self._to_avr({"type": "interruption"})
        self._from_24k = Resampler(REALTIME_RATE, self.settings.sample_rate)  # no tail of the old answer
        if self._item is not None and now < self.play_end:
            item_id, start, item_ms = self._item
            heard = min(item_ms, max(0, int((now - start) * 1000)))
            # The model's memory of what it said now ends where the caller stopped hearing it.
            self._to_realtime({"type": "conversation.item.truncate", "item_id": item_id, "content_index": 0,
                               "audio_end_ms": heard})
        self._item = None
        self.play_end = now
        log.info("Call {uuid}: the caller barged in", uuid=self.uuid)

    def _transcript(self, role: str, text: Any) -> None:
        if isinstance(text, str) and text.strip():
            self._to_avr({"type": "transcript", "role": role, "text": text.strip()})

    def _tool_call(self, name: str, call_id: str) -> None:
        if name == "hang_up":
            action: dict[str, Any] = {"type": "hangup", "reason": "the agent ended the call"}
        elif name == "transfer_call" and self.settings.transfer_endpoint:
            action = {"type": "transfer", "endpoint": self.settings.transfer_endpoint}
        else:
            log.warn("Call {uuid}: the model called an unknown tool {name!r}", uuid=self.uuid, name=name)
            return
        log.info("Call {uuid}: the model asks to {action}", uuid=self.uuid, action=action["type"])
        self._tool_calls[call_id] = name
        self._actions.append({**action, "id": call_id})

    def _schedule_actions(self) -> None:
        # At the end of the answer that asked for them, once the caller has heard it (avr acts at once: a hang-up
        # sent now would cut off the goodbye still queued there).
        if not self._actions or self._timer is not None or self.closed:
            return
        delay = max(0.0, self.play_end - self.clock.seconds()) + ACTION_MARGIN
        self._timer = self.clock.callLater(delay, self._send_actions)

    def _send_actions(self) -> None:
        self._timer = None
        actions, self._actions = self._actions, []
        for action in actions:
            self._to_avr(action)

    def close(self) -> None:
        """The call is over (either side closed): cancel what is pending."""
        self.closed = True
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        self._pending.clear()
