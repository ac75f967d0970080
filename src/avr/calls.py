"""
AVR Core calls: each AudioSocket connection bridged to one STS session, with typed events for the observers
(webhooks, ``/events``) and paced playback.

`CallManager` is the `ICallRouter` the AudioSocket factory asks when a connection has sent its UUID. A connection
someone expects (`avr.admissions`: a ``POST /call`` registration, uploaded audio, ...) goes to what expects it;
any other becomes a `Call` to ``STS_URL``, unless admission control (``REQUIRE_CALL_INIT``) refuses it.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Callable, Mapping

from attrs import define, field
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from avr.admissions import Admissions
from avr.audio import InboundAudio, Resampler
from avr.audiosocket import CallRefused
from avr.config import redact_url
from avr.frames import AUDIO_KIND_RATES, Kind
from avr.interfaces import (
    IAudioSocketLeg,
    ICallObserver,
    ICallRouter,
    ICallSink,
    IStsConnector,
    IStsHandler,
    IStsSession,
)
from avr.logtext import clip, url_repr
from avr.playout import FRAME_SECONDS, FrameTicker, PlaybackQueue, frame_bytes_for_rate

#: Caller audio kept while the STS connection opens (seconds); older audio is dropped first.
PENDING_AUDIO_SECONDS = 2.0


@implementer(ICallSink, IStsHandler)
@define(eq=False)
class Call:
    """
    One Asterisk call bridged to one STS session.

    Outbound audio uses the call's own AudioSocket kind, taken from the first audio frame Asterisk sends (PCM16 at
    that rate, even when the caller's leg is G.711: Asterisk transcodes what it receives). If the agent speaks
    before the caller has sent any audio, the call plays at 8 kHz (kind 0x10, which every Asterisk accepts) and
    stays there, since Asterisk should not see the rate change mid-call.

    The STS session states its own rates (`IStsSession.input_rate`, ``output_rate``): caller audio is converted from
    the call's rate to the first, agent audio from the second to the call's. Until the session opens, caller audio
    waits at the call's rate.
    """

    uuid: str
    leg: IAudioSocketLeg
    sts_url: str | None = field(repr=url_repr)
    connector: IStsConnector
    observer: ICallObserver
    ticker: FrameTicker
    on_end: Callable[[Call], None]
    #: The ``POST /call`` payload of a registered call (the dialplan's ``uniqueid``, ``channel``, ...), else empty.
    payload: Mapping[str, Any] = field(factory=dict)
    #: ``clock.seconds()`` when the connection was admitted.
    started_at: float = 0.0
    ended: bool = False
    end_reason: str | None = None
    _inbound: InboundAudio = field(init=False)
    _session: IStsSession | None = None
    _connecting: Deferred | None = None
    _pending: deque[bytes | str] = field(factory=deque)
    _pending_bytes: int = 0
    _pending_rate: int | None = None
    _to_sts: Resampler | None = None
    _out_kind: int | None = None
    _outbound: Resampler | None = None
    _queue: PlaybackQueue | None = None
    log = Logger()

    def __attrs_post_init__(self) -> None:
        self._inbound = InboundAudio(uuid=self.uuid)

    @property
    def rate(self) -> int | None:
        """The call's sample rate (Hz), from the first audio frame Asterisk sent; ``None`` before it."""
        return self._inbound.rate

    @property
    def codec(self) -> str | None:
        """What Asterisk sends: ``SLIN``, or ``ULAW``/``ALAW`` (raw G.711 on kind 0x10) once detected."""
        return self._inbound.codec

    # -- lifecycle --------------------------------------------------------------------------------------------

    def start(self) -> None:
        """Announce the call and open its STS session."""
        self.observer.call_started(self)
        self.log.info("Call started: {uuid} (STS: {sts})", uuid=self.uuid,
                      sts=redact_url(self.sts_url) if self.sts_url else "built-in echo agent")
        d = self._connecting = self.connector.connect(self.sts_url, self.uuid, self)
        d.addCallbacks(self._sts_opened, self._sts_failed)

    def end(self, reason: str) -> None:
        """
        End the call once: close the STS session, hang up Asterisk's leg if it is still there, stop playback, send
        ``call_ended``. Idempotent.
        """
        if self.ended:
            return
        self.ended = True
        self.end_reason = reason
        self.ticker.discard(self)
        if self._queue is not None:
            self._queue.clear()
        self._pending.clear()
        if self._connecting is not None:
            self._connecting.cancel()
        if self._session is not None:
            session, self._session = self._session, None
            session.close()
        if self.leg.connected:
            self.leg.hang_up()
        self.log.info("Call ended: {uuid} ({reason})", uuid=self.uuid, reason=reason)
        self.observer.call_ended(self, reason)
        self.on_end(self)

    def _sts_opened(self, session: IStsSession) -> None:
        self._connecting = None
        if self.ended:
            session.close()
            return
        self._session = session
        while self._pending:
            item = self._pending.popleft()
            if isinstance(item, bytes):
                session.send_audio(self._sts_input(item))
            else:
                session.send_dtmf(item)
        self._pending_bytes = 0

    def _sts_failed(self, failure: Failure) -> None:
        self._connecting = None
        if failure.check(CancelledError) and self.ended:
            return
        self.log.error("STS connection failed for call {uuid}: {reason}", uuid=self.uuid,
                       reason=clip(failure.getErrorMessage() or failure.type.__name__))
        self.end("STS unreachable")

    # -- ICallSink: from Asterisk ------------------------------------------------------------------------------

    def caller_audio(self, kind: int, payload: bytes) -> None:
        if self.ended:
            return
        if self._out_kind is None:
            self._start_playout(kind)
        pcm = self._inbound.feed(kind, payload)
        if not pcm:
            return
        if self._session is not None:
            self._session.send_audio(self._sts_input(pcm))
        else:
            self._buffer(pcm)

    def _sts_input(self, pcm: bytes) -> bytes:
        """Caller audio at the call's rate, converted to the session's input rate (one stream: no drift)."""
        rate = self._inbound.rate
        if self._to_sts is None or self._to_sts.from_rate != rate:
            self._to_sts = Resampler(rate, self._session.input_rate)  # type: ignore[arg-type,union-attr]
        return self._to_sts.convert(pcm)

    def caller_dtmf(self, digit: str) -> None:
        if self.ended:
            return
        self.log.info("DTMF {digit} on call {uuid}", digit=digit, uuid=self.uuid)
        self.observer.dtmf(self, digit)
        if self._session is not None:
            self._session.send_dtmf(digit)
        else:
            self._pending.append(digit)

    def caller_gone(self, reason: str) -> None:
        self.end(f"Asterisk: {reason}")

    def _buffer(self, pcm: bytes) -> None:
        rate = self._inbound.rate
        if rate != self._pending_rate:
            # Asterisk changed the rate (InboundAudio warned): audio kept at the old one would play at the wrong speed.
            self._pending = deque(item for item in self._pending if isinstance(item, str))
            self._pending_bytes = 0
            self._pending_rate = rate
        self._pending.append(pcm)
        self._pending_bytes += len(pcm)
        limit = int(PENDING_AUDIO_SECONDS * rate) * 2  # type: ignore[operator]
        while self._pending_bytes > limit:
            # Drop the oldest audio; digits stay where they are, so the order the STS sees is kept.
            oldest = next(i for i, item in enumerate(self._pending) if isinstance(item, bytes))
            self._pending_bytes -= len(self._pending[oldest])
            del self._pending[oldest]

    # -- IStsHandler: from the agent ---------------------------------------------------------------------------

    def sts_audio(self, pcm: bytes) -> None:
        if self.ended:
            return
        if self._outbound is None:
            if self._session is None:
                return  # not from an open session: its rate is unknown
            if self._out_kind is None:
                self._start_playout(Kind.SLIN8)
            call_rate = AUDIO_KIND_RATES[self._out_kind]  # type: ignore[index]
            self._outbound = Resampler(self._session.output_rate, call_rate)
        self._queue.feed(self._outbound.convert(pcm))  # type: ignore[union-attr]

    def sts_interruption(self) -> None:
        if self.ended:
            return
        dropped = self._queue.clear() if self._queue is not None else 0
        self.log.info("Interruption on call {uuid}: {frames} queued frames dropped", uuid=self.uuid, frames=dropped)
        self.observer.interruption(self)

    def sts_transcript(self, role: str, text: str) -> None:
        if not self.ended:
            self.observer.transcript(self, role, text)

    def sts_error(self, message: str) -> None:
        self.log.warn("STS error on call {uuid}: {message}", uuid=self.uuid, message=clip(message))

    def sts_closed(self, reason: str) -> None:
        self._session = None
        if not self.ended:
            self.log.warn("STS closed call {uuid}: {reason}", uuid=self.uuid, reason=reason)
            self.end(f"STS closed: {reason}")

    # -- playback -----------------------------------------------------------------------------------------------

    def _start_playout(self, kind: int) -> None:
        self._out_kind = kind
        self._queue = PlaybackQueue(frame_bytes_for_rate(AUDIO_KIND_RATES[kind]))
        self.ticker.add(self)

    def play_frame(self) -> None:
        """Called by the ticker every 20 ms: send the next queued frame to Asterisk, if any."""
        frame = self._queue.next_frame()  # type: ignore[union-attr]
        if frame is not None:
            self.leg.send_audio(self._out_kind, frame)  # type: ignore[arg-type]

    def missed(self, ticks: int) -> None:
        """Called by the ticker when it had to skip ticks (overload): keep the agent's audio near real time."""
        queue = self._queue
        assert queue is not None
        dropped = queue.fell_behind(ticks)
        if dropped:
            self.log.warn(
                "Call {uuid}: playback fell {seconds:.1f} s behind real time (server overloaded); dropped the oldest "
                "{frames} frames ({total} on this call so far)",
                uuid=self.uuid, seconds=dropped * FRAME_SECONDS, frames=dropped, total=queue.late_dropped)


@implementer(ICallRouter)
@define(eq=False)
class CallManager:
    """
    Admits AudioSocket connections and owns the live agent calls.

    :param clock: stamps the calls' start.
    :param connector: opens the calls' STS sessions.
    :param observer: hears every call's events (the webhooks, ``/events``).
    :param ticker: paces the agents' audio.
    :param admissions: the connections someone expects.
    :param sts_url: ``STS_URL``, for connections nobody expects (``None`` = the built-in echo agent).
    :param require_registration: ``REQUIRE_CALL_INIT``: refuse connections nobody expects.
    """

    clock: IReactorTime
    connector: IStsConnector
    observer: ICallObserver
    ticker: FrameTicker
    admissions: Admissions
    sts_url: str | None = field(repr=url_repr)
    require_registration: bool = False
    _calls: dict[str, Call] = field(factory=dict)
    log = Logger()

    def attach(self, leg: IAudioSocketLeg) -> ICallSink:
        """See `ICallRouter.attach`."""
        uuid = leg.uuid
        if uuid in self._calls:
            raise CallRefused(f"call {uuid} is already connected")
        admission = self.admissions.take(uuid)
        if admission is not None:
            return admission.admit(leg)
        if self.require_registration:
            raise CallRefused(f"call {uuid} was not registered with POST /call (REQUIRE_CALL_INIT is on)")
        return self.start_call(leg, self.sts_url)

    def start_call(
        self, leg: IAudioSocketLeg, sts_url: str | None, payload: Mapping[str, Any] | None = None,
    ) -> Call:
        """
        Bridge ``leg`` to an STS session at ``sts_url`` (``None`` = the built-in echo agent) and start the call.

        :param payload: the call's metadata (the ``POST /call`` payload), kept on the call for its observers.
        :raises CallRefused: a call with the leg's UUID is live.
        """
        if leg.uuid in self._calls:
            raise CallRefused(f"call {leg.uuid} is already connected")
        call = Call(
            uuid=leg.uuid,
            leg=leg,
            sts_url=sts_url,
            connector=self.connector,
            observer=self.observer,
            ticker=self.ticker,
            on_end=self._ended,
            payload=dict(payload or {}),
            started_at=self.clock.seconds(),
        )
        self._calls[call.uuid] = call
        call.start()
        return call

    def _ended(self, call: Call) -> None:
        if self._calls.get(call.uuid) is call:
            del self._calls[call.uuid]

    def __len__(self) -> int:
        """Live calls."""
        return len(self._calls)

    def get(self, uuid: str) -> Call | None:
        """The live call with ``uuid``, if any."""
        return self._calls.get(uuid)

    def stop(self) -> Deferred[None]:
        """End every call (server shutdown): each gets its hang-up frame and ``call_ended``."""
        for call in list(self._calls.values()):
            call.end("server shutting down")
        return succeed(None)
