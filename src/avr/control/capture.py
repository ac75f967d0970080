"""
asterisk-api's live audio capture (``POST /calls/:id/audio/start`` and ``/audio/stop``) with its streaming ASR.

The caller's audio only (not what is played to the call) reaches avr through its own AudioSocket server:

1. a snoop channel on the call, ``spy=in`` (``avr-media-snoop-<uuid>``, in the app);
2. an externalMedia AudioSocket leg (`avr.control.media_leg`, ``slin16``) joined with the snoop channel in a
   temporary bridge of their own (the call's bridges are untouched);
3. the leg's AudioSocket connection (`AudioListener`) hands each frame to the call's `StreamingAsrSession`
   (when ``ASR_URL`` is a ``ws://`` URL), whose results are ``call.transcription`` ``{text, is_partial, is_final}``.

Events as asterisk-api's: ``call.audio_capture_started`` (the capture info), ``call.audio_capture_stopped`` ``{}``,
``call.audio_capture_error`` ``{error}`` (``Failed to start ASR: ...``, the ASR lost for good, the leg failing).
asterisk-api broadcast every audio frame to every ``/events`` client (D22); avr sends asterisk-api's
``call.audio_frame`` (base64 PCM) only to the ``/events`` subscribers that ask for it (``?audioFrames=true``), and
never to a webhook.

Inbound calls are captured once answered, as asterisk-api does, when the ASR is configured. A call that ends
stops its capture: the ASR is flushed (its final result published once, D9), then the leg, its bridge and the snoop
channel are gone (nothing lingers to keep an extension busy, asterisk-api's ace66b4).
"""

from __future__ import annotations

import base64
import uuid
from typing import Any, Callable

from attrs import define, field
from twisted.internet.defer import CancelledError, Deferred, DeferredList
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from avr.admissions import Admissions
from avr.ari.client import path_segment
from avr.control.ari_link import AriLink
from avr.control.call_registry import CallRegistry, require_stasis
from avr.control.errors import Conflict, Timeout, Unavailable
from avr.control.hub import AUDIO_FRAME, EventsHub
from avr.control.media_leg import MediaLeg, MediaLegs
from avr.control.records import INBOUND, MEDIA_CHANNEL_PREFIX, CallRecord, iso
from avr.control.tasks import TaskGroup
from avr.interfaces import IAdmission, IAudioSocketLeg, ICallSink
from avr.speech.streaming_asr import AsrError, StreamingAsrSession, Transcription

#: What the leg carries: asterisk-api's capture format.
CAPTURE_FORMAT = "slin16"
CAPTURE_RATE = 16000

#: Makes the ASR session of a call: ``(call_id, on_transcription, on_lost)``.
AsrSessions = Callable[[str, Callable[[Transcription], None], Callable[[str], None]], StreamingAsrSession]


@implementer(IAdmission, ICallSink)
@define(eq=False)
class CaptureConnection:
    """The AudioSocket connection of a capture leg: every audio frame goes to ``on_audio``."""

    uuid: str
    on_audio: Callable[[bytes], None]
    done: Deferred[None]
    leg: IAudioSocketLeg | None = None
    kind = "capture"

    def admit(self, leg: IAudioSocketLeg) -> ICallSink:
        self.leg = leg
        return self

    def expired(self, reason: Failure) -> None:
        self._end(Failure(TimeoutError(f"no AudioSocket connection for capture {self.uuid}"))
                  if reason.check(TimeoutError) else reason)

    def caller_audio(self, kind: int, payload: bytes) -> None:
        self.on_audio(payload)

    def caller_dtmf(self, digit: str) -> None:
        """DTMF of the snoop channel is the call's own: the call's events have it already."""

    def caller_gone(self, reason: str) -> None:
        self._end(Failure(ConnectionError(f"capture connection ended: {reason}")))

    def hang_up(self) -> None:
        if self.leg is not None and self.leg.connected:
            self.leg.hang_up()

    def _end(self, reason: Failure) -> None:
        if not self.done.called:
            self.done.errback(reason)


@define(eq=False)
class AudioListener:
    """Takes the AudioSocket connections of capture legs (announced in the admissions registry)."""

    admissions: Admissions
    timeout: float = 10.0

    def expect(self, uuid: str, on_audio: Callable[[bytes], None]) -> Deferred[None]:
        """
        Hand the audio of the connection that arrives with ``uuid`` to ``on_audio``.

        :return: a Deferred failing when the connection does not come or ends; cancelling it hangs it up.
        """

        def cancel(_: Deferred[None]) -> None:
            self.admissions.withdraw(uuid, connection)
            connection.hang_up()

        done: Deferred[None] = Deferred(cancel)
        connection = CaptureConnection(uuid, on_audio, done)
        self.admissions.expect(uuid, connection, self.timeout)
        return done


@define(eq=False)
class Capture:
    """One call's capture."""

    call: CallRecord
    snoop_id: str
    started_at: float
    leg: MediaLeg | None = None
    asr: StreamingAsrSession | None = None
    stopping: Deferred | None = None

    def info(self, enabled: bool = True) -> dict[str, Any]:
        """asterisk-api's AudioCaptureInfo."""
        return {"enabled": enabled, "snoopChannelId": self.snoop_id,
                "externalMediaChannelId": self.leg.channel_id if self.leg is not None else None,
                "format": CAPTURE_FORMAT, "sampleRate": CAPTURE_RATE, "startedAt": iso(self.started_at)}


@define(eq=False)
class AudioCaptures:
    """
    The calls' audio captures (see the module docstring).

    :param registry: the calls, and where the events go.
    :param ari: the way to Asterisk.
    :param tasks: background stops.
    :param clock: timestamps.
    :param legs: makes the AudioSocket legs; knows the snoop channels.
    :param app: the Stasis application the snoop channels join.
    :param listener: takes the legs' AudioSocket connections (``None``: capture unavailable).
    :param asr_sessions: makes a call's ASR session (``None``: ``ASR_URL`` is not a streaming ASR; the capture
        still runs, with nothing to send the audio to).
    :param frames: the ``/events`` hub, for the ``call.audio_frame`` events of the subscribers that ask for them.
    """

    registry: CallRegistry
    ari: AriLink
    tasks: TaskGroup
    clock: IReactorTime
    legs: MediaLegs
    app: str
    listener: AudioListener | None = None
    asr_sessions: AsrSessions | None = None
    frames: EventsHub | None = None
    _captures: dict[str, Capture] = field(factory=dict, init=False)
    #: Inbound calls captured automatically once (not again after an API stop).
    _auto_started: set[str] = field(factory=set, init=False)
    log = Logger()

    @property
    def handlers(self) -> dict[str, Callable[[dict], None]]:
        """The ARI events this component applies: inbound calls answered start their capture (with an ASR)."""
        return {"ChannelStateChange": self._maybe_auto_start, "StasisStart": self._maybe_auto_start}

    async def start(self, call_id: str) -> dict:
        """
        Start capturing the call's caller audio (and its ASR).

        :return: ``{"audioCapture": info}``. :raises Conflict: already captured, ended, not in Stasis.
        :raises Unavailable: no AudioSocket address or ARI down. :raises Timeout: Asterisk did not bring up the
            snoop or the leg in time.
        """
        call = self.registry.live(call_id)
        if self.listener is None or not self.legs.address:
            raise Unavailable("Audio capture is not available (no AudioSocket server address)")
        self.ari.require_connected()
        require_stasis(call)
        if call.id in self._captures:
            raise Conflict(f"Audio capture already exists for call {call.id}")
        capture = self._captures[call.id] = Capture(call, MEDIA_CHANNEL_PREFIX + "snoop-" + str(uuid.uuid4()),
                                                    self.clock.seconds())
        try:
            await self._set_up(capture)
        except Exception:
            self._captures.pop(call.id, None)
            self._tear_down(capture)
            raise
        info = capture.info()
        self.registry.publish("call.audio_capture_started", info, call)
        if self.asr_sessions is not None:
            await self._start_asr(capture)
        return {"status": "started", "audioCapture": info}

    async def _set_up(self, capture: Capture) -> None:
        ari = self.ari.require()
        listener = self.listener
        assert listener is not None
        call, snoop = capture.call, capture.snoop_id
        self.legs.claim(snoop)
        in_stasis = self.legs.wait_stasis(snoop)
        try:
            await ari.request("POST", f"/channels/{path_segment(call.channel_id)}/snoop/{path_segment(snoop)}",
                              {"app": self.app, "spy": "in", "whisper": "none"})
            await in_stasis
        except Exception as e:
            in_stasis.cancel()
            in_stasis.addErrback(lambda _: None)
            if isinstance(e, CancelledError):
                raise Timeout("The snoop channel of the audio capture did not start in time") from None
            raise
        if call.ended:
            raise Conflict(f"Call {call.id} ended before its audio capture started")
        leg = capture.leg = self.legs.open(call, CAPTURE_FORMAT, "the audio capture",
                                           lambda leg: self._leg_ended(capture, leg), join_channel=snoop)
        await leg.start(lambda uuid: listener.expect(uuid, lambda pcm: self._audio(capture, pcm)))

    async def _start_asr(self, capture: Capture) -> None:
        assert self.asr_sessions is not None
        call = capture.call
        session = self.asr_sessions(
            call.id, lambda result: self.registry.publish("call.transcription", result.to_dict(), call),
            lambda reason: self.registry.publish("call.audio_capture_error", {"error": reason}, call))
        try:
            await session.start()
        except AsrError as e:
            self.log.warn("Call {call_id}: {error}", call_id=call.id, error=str(e))
            self.registry.publish("call.audio_capture_error", {"error": str(e)}, call)
            return
        if capture.stopping is not None or call.ended:
            await session.stop()
            return
        capture.asr = session

    def _audio(self, capture: Capture, pcm: bytes) -> None:
        if capture.asr is not None:
            capture.asr.send_audio(pcm)
        if self.frames is not None and self.frames.wants_audio_frames:
            now = self.clock.seconds()
            call = capture.call
            self.frames.publish({"type": AUDIO_FRAME, "callId": call.id, "channelId": call.channel_id,
                                 "timestamp": iso(now), "data": {
                                     "timestamp": int(now * 1000), "format": CAPTURE_FORMAT,
                                     "sampleRate": CAPTURE_RATE, "channels": 1, "sampleCount": len(pcm) // 2,
                                     "data": base64.b64encode(pcm).decode("ascii")}})

    async def stop(self, call_id: str) -> dict:
        """
        Stop the call's capture (nothing to do when there is none): its ASR is flushed and closed.

        :return: ``{"status": "stopped", "audioCapture": info or None}``.
        """
        call = self.registry.require(call_id)
        capture = self._captures.get(call.id)
        if capture is None:
            return {"status": "stopped", "audioCapture": None}
        await self._stop(capture)
        return {"status": "stopped", "audioCapture": capture.info(enabled=False)}

    def _stop(self, capture: Capture) -> Deferred:
        if capture.stopping is None:
            # Set before the stop runs: releasing the leg reports its end (`_leg_ended`) at once.
            stopping = capture.stopping = Deferred()
            run = Deferred.fromCoroutine(self._stopped(capture))
            run.addErrback(lambda f: self.log.failure("Stopping the audio capture of call {call_id} failed", f,
                                                      call_id=capture.call.id))
            run.addBoth(lambda _: stopping.callback(None))
        # Each caller gets its own Deferred: one being cancelled does not cancel the stop.
        d: Deferred = Deferred()
        def settle(result: Any) -> Any:
            if not d.called:
                d.callback(None)
            return result

        capture.stopping.addBoth(settle)
        return d

    async def _stopped(self, capture: Capture) -> None:
        self._tear_down(capture)
        if capture.asr is not None:
            await capture.asr.stop()
        self._captures.pop(capture.call.id, None)
        self.registry.publish("call.audio_capture_stopped", {}, capture.call)

    def _tear_down(self, capture: Capture) -> None:
        if capture.leg is not None:
            capture.leg.stop()
        self.legs.release(capture.snoop_id)

    def _leg_ended(self, capture: Capture, leg: MediaLeg) -> None:
        if capture.stopping is not None:
            return
        if leg.error is not None and not capture.call.ended:
            self.registry.publish("call.audio_capture_error", {"error": f"Audio capture ended: {leg.error}"},
                                  capture.call)
        self._stop(capture)

    def _maybe_auto_start(self, event: dict) -> None:
        call = self.registry.by_channel((event.get("channel") or {}).get("id"))
        if (call is None or call.ended or call.direction != INBOUND or call.answered_at is None
                or not call.in_stasis or self.asr_sessions is None or call.id in self._auto_started):
            return
        self._auto_started.add(call.id)
        self.tasks.spawn(self._auto_start(call), f"capturing the audio of call {call.id}")

    async def _auto_start(self, call: CallRecord) -> None:
        try:
            await self.start(call.id)
        except Exception as e:
            if not call.ended:
                self.log.warn("Call {call_id}: audio capture not started: {error}", call_id=call.id, error=e)

    def call_ended(self, call: CallRecord) -> None:
        """The call ended: its capture stops (ASR flushed, leg and snoop gone)."""
        self._auto_started.discard(call.id)
        capture = self._captures.get(call.id)
        if capture is not None:
            self._stop(capture)

    def stop_all(self) -> Deferred:
        """Shutting down: every capture stops (each ASR flushed)."""
        return DeferredList([self._stop(c) for c in list(self._captures.values())], consumeErrors=True)
