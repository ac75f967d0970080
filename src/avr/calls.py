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

from attrs import define, field, frozen
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from avr.admissions import Admissions
from avr.ambient import AmbientMixer, AmbientNoise
from avr.audio import InboundAudio, Resampler
from avr.audiosocket import CallRefused
from avr.config import redact_url
from avr.frames import AUDIO_KIND_RATES, Kind
from avr.interfaces import (
    IAudioSocketLeg,
    ICallActions,
    ICallObserver,
    ICallRouter,
    ICallSink,
    IStsConnector,
    IStsHandler,
    IStsSession,
)
from avr.logtext import clip, url_repr
from avr.observers import CallObservers
from avr.playout import FRAME_SECONDS, PLAYBACK_MAX_FRAMES, FrameTicker, PlaybackQueue, frame_bytes_for_rate
from avr.sts.codec import ActionMessage, ActionRequest, ActionResult, InvalidAction

#: Caller audio kept while the STS connection opens (seconds); older audio is dropped first.
PENDING_AUDIO_SECONDS = 2.0

#: Seconds an ended call keeps its STS session open at most, so that the actions the agent asked for (a transfer
#: rings up to 120 s) can still report their outcome to it.
ACTION_LINGER = 130.0


@frozen
class PlaybackDrops:
    """Agent audio frames dropped from a playback queue (`avr.playout.PlaybackQueue`), by cause."""

    #: The queue was full (`PlaybackQueue.dropped`).
    full: int = 0
    #: Playback fell too far behind real time, the server overloaded (`PlaybackQueue.late_dropped`).
    overload: int = 0
    #: Dropped to take back the delay hiccups of the agent's stream added (`PlaybackQueue.caught_up`).
    caught_up: int = 0

    def __add__(self, other: PlaybackDrops) -> PlaybackDrops:
        return PlaybackDrops(self.full + other.full, self.overload + other.overload,
                             self.caught_up + other.caught_up)


@frozen
class FrameTotals:
    """The per-frame counters of calls added up (`CallManager.frame_totals`)."""

    frames_in: int = 0
    frames_out: int = 0
    late_frames: int = 0
    drops: PlaybackDrops = PlaybackDrops()

    def __add__(self, other: FrameTotals) -> FrameTotals:
        return FrameTotals(self.frames_in + other.frames_in, self.frames_out + other.frames_out,
                           self.late_frames + other.late_frames, self.drops + other.drops)

    @classmethod
    def of(cls, call: Call) -> FrameTotals:
        """One call's counters."""
        return cls(call.frames_in, call.frames_out, call.late_frames, call.playback_drops)


@implementer(ICallActions)
class NoActions:
    """Refuses every action: for calls on which nothing can be carried out."""

    def perform(self, call: Call, request: ActionRequest) -> Deferred[ActionResult]:
        """See `ICallActions.perform`."""
        return succeed(ActionResult(request.action, False, f"{request.action} is not available on this call",
                                    request.id))


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
    waits at the call's rate. A leg whose format avr chose (``kind``: an ARI externalMedia leg) plays at that rate
    from the start.

    What the agent asks for (hang up, transfer, DTMF: `IStsHandler.sts_action`) is carried out by ``actions``; each
    request gets one ``action_result`` and two `ICallObserver.agent_action` events (requested, then the outcome).
    When the call ends while requests are still being carried out, its STS session stays open (at most
    `ACTION_LINGER` seconds) until their outcomes are known, so the agent hears them; ``call_ended`` follows.
    """

    uuid: str
    leg: IAudioSocketLeg
    sts_url: str | None = field(repr=url_repr)
    connector: IStsConnector
    observer: ICallObserver
    ticker: FrameTicker
    on_end: Callable[[Call], None]
    clock: IReactorTime
    actions: ICallActions = field(factory=NoActions)
    #: The ``POST /call`` payload of a registered call (the dialplan's ``uniqueid``, ``channel``, ...), else empty.
    payload: Mapping[str, Any] = field(factory=dict)
    #: ``clock.seconds()`` when the connection was admitted.
    started_at: float = 0.0
    #: The AudioSocket audio kind of the leg, when avr chose its format; else learnt from the first frame.
    kind: int | None = None
    #: ``AMBIENT_NOISE_FILE``, mixed under the outbound audio (and played alone while the agent is silent).
    ambient: AmbientNoise | None = None
    #: Most frames of agent audio queued (``PLAYBACK_MAX_SECONDS``); beyond it audio is dropped, with one warning.
    playback_frames: int = PLAYBACK_MAX_FRAMES
    ended: bool = False
    end_reason: str | None = None
    #: Audio frames received from Asterisk (the per-frame counters: plain ints, read by ``/metrics`` and the end of
    #: call summary; nothing else is done per frame).
    frames_in: int = field(default=0, init=False)
    #: Audio frames sent to Asterisk.
    frames_out: int = field(default=0, init=False)
    #: Frames sent more than `avr.playout.LATE_SECONDS` (20 ms) after their playback slot (counted by the ticker).
    late_frames: int = field(default=0, init=False)
    #: Times the STS session could not be opened (for the end-of-call summary).
    sts_connect_failures: int = field(default=0, init=False)
    _inbound: InboundAudio = field(init=False)
    _session: IStsSession | None = None
    _connecting: Deferred | None = None
    _pending: deque[bytes | str] = field(factory=deque)
    _pending_bytes: int = 0
    _pending_rate: int | None = None
    _to_sts: Resampler | None = None
    # (kind, session) once frames of that kind go to that session as they are: no decoding, no resampling.
    _route: tuple[int, IStsSession] | None = field(default=None, init=False)
    _out_kind: int | None = None
    _outbound: Resampler | None = None
    _queue: PlaybackQueue | None = None
    #: The actions being carried out, by request number.
    _requests: dict[int, ActionMessage] = field(factory=dict, init=False)
    _request_count: int = field(default=0, init=False)
    _linger: Any = field(default=None, init=False)
    _finished: bool = field(default=False, init=False)
    _mixer: AmbientMixer | None = field(default=None, init=False)
    log = Logger()

    def __attrs_post_init__(self) -> None:
        self._inbound = InboundAudio(uuid=self.uuid)
        if self.kind is not None:
            self._start_playout(self.kind)

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
        self.log.info("Call started: {call_id} (STS: {sts})", call_id=self.uuid,
                      sts=redact_url(self.sts_url) if self.sts_url else "built-in echo agent")
        d = self._connecting = self.connector.connect(self.sts_url, self.uuid, self)
        d.addCallbacks(self._sts_opened, self._sts_failed)

    def end(self, reason: str, linger: bool = True) -> None:
        """
        End the call once: stop playback, hang up Asterisk's leg if it is still there, close the STS session and send
        ``call_ended``. Idempotent. With actions still being carried out (and ``linger``), the session is closed and
        ``call_ended`` sent once their outcomes are known (at most `ACTION_LINGER` seconds later).
        """
        if self.ended:
            return
        self.ended = True
        self._route = None
        self.end_reason = reason
        self.ticker.discard(self)
        if self._queue is not None:
            self._queue.clear()
        self._pending.clear()
        if self._connecting is not None:
            self._connecting.cancel()
        if self.leg.connected:
            self.leg.hang_up()
        self.log.info("Call ended: {call_id} ({reason})", call_id=self.uuid, reason=reason)
        if self._queue is not None and self._queue.dropped:
            self.log.warn("Call {call_id}: {frames} frames of agent audio did not fit in the playback queue "
                          "(PLAYBACK_MAX_SECONDS) and were dropped", call_id=self.uuid, frames=self._queue.dropped)
        if self._queue is not None and self._queue.caught_up:
            self.log.info("Call {call_id}: {frames} frames of agent audio were dropped to take back the delay that "
                          "hiccups of its stream added", call_id=self.uuid, frames=self._queue.caught_up)
        if self._requests and linger:
            self._linger = self.clock.callLater(ACTION_LINGER, self._linger_over)
            return
        self._finish()

    def _linger_over(self) -> None:
        self._linger = None
        for number, request in list(self._requests.items()):
            self._settle(number, request, ActionResult(request.action, False, "the call ended before it completed",
                                                       request.id))

    def _finish(self) -> None:
        if self._finished:
            return
        self._finished = True
        if self._linger is not None:
            if self._linger.active():
                self._linger.cancel()
            self._linger = None
        for number, request in list(self._requests.items()):
            self._settle(number, request, ActionResult(request.action, False, "the call ended before it completed",
                                                       request.id))
        if self._session is not None:
            session, self._session = self._session, None
            session.close()
        self.observer.call_ended(self, self.end_reason or "")
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
                pcm = self._sts_input(item)
                if pcm:
                    session.send_audio(pcm)
            else:
                session.send_dtmf(item)
        self._pending_bytes = 0

    def _sts_failed(self, failure: Failure) -> None:
        self._connecting = None
        if failure.check(CancelledError) and self.ended:
            return
        self.sts_connect_failures += 1
        self.log.error("STS connection failed for call {call_id}: {reason}", call_id=self.uuid,
                       reason=clip(failure.getErrorMessage() or type(failure.value).__name__))
        self.end("STS unreachable")

    # -- ICallSink: from Asterisk ------------------------------------------------------------------------------

    def caller_audio(self, kind: int, payload: bytes) -> None:
        self.frames_in += 1
        route = self._route
        if route is not None and route[0] == kind and route[1] is self._session and not len(payload) & 1:
            route[1].send_audio(payload)  # the common case, settled (see the end of this method)
            return
        self._route = None
        if self.ended:
            return
        if self._out_kind is None:
            self._start_playout(kind)
        pcm = self._inbound.feed(kind, payload)
        if not pcm:
            return
        if self._session is None:
            self._buffer(pcm)
            return
        pcm = self._sts_input(pcm)
        if pcm:  # a resampler holds back its first few milliseconds
            self._session.send_audio(pcm)
        if self._inbound.passes_through(kind) and self._to_sts.identity:  # type: ignore[union-attr]
            # Frames of this kind need nothing but sending, as long as this session lasts.
            self._route = (kind, self._session)

    def _sts_input(self, pcm: bytes) -> bytes:
        """Caller audio at the call's rate, converted to the session's input rate (one stream: no drift)."""
        to_sts = self._to_sts
        if to_sts is None or to_sts.from_rate != self._inbound.rate:
            to_sts = self._to_sts = Resampler(self._inbound.rate, self._session.input_rate)  # type: ignore[arg-type,union-attr]
        return pcm if to_sts.identity else to_sts.convert(pcm)

    def caller_dtmf(self, digit: str) -> None:
        if self.ended:
            return
        self.log.info("DTMF {digit} on call {call_id}", digit=digit, call_id=self.uuid)
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
        outbound = self._outbound
        self._queue.feed(pcm if outbound.identity else outbound.convert(pcm))  # type: ignore[union-attr]

    def sts_interruption(self) -> None:
        if self.ended:
            return
        dropped = self._queue.clear() if self._queue is not None else 0
        if self._outbound is not None:
            self._outbound.clear()
        self.log.info("Interruption on call {call_id}: {frames} queued frames dropped", call_id=self.uuid,
                      frames=dropped)
        self.observer.interruption(self)

    def sts_transcript(self, role: str, text: str) -> None:
        if not self.ended:
            self.observer.transcript(self, role, text)

    def sts_error(self, message: str) -> None:
        self.log.warn("STS error on call {call_id}: {message}", call_id=self.uuid, message=clip(message))

    def sts_closed(self, reason: str) -> None:
        self._session = None
        if not self.ended:
            self.log.warn("STS closed call {call_id}: {reason}", call_id=self.uuid, reason=reason)
            self.end(f"STS closed: {reason}")

    def sts_action(self, request: ActionMessage) -> None:
        if self.ended:
            if self._session is not None:
                self._session.send_action_result(ActionResult(request.action, False, "the call has ended",
                                                              request.id))
            return
        self._request_count += 1
        number = self._request_count
        self._requests[number] = request
        self.log.info("Agent on call {call_id} asks to {action}: {request!r}", call_id=self.uuid, action=request.action,
                      request=request)
        self.observer.agent_action(self, request, None)
        if isinstance(request, InvalidAction):
            self._settle(number, request, ActionResult(request.action, False, request.error, request.id))
            return
        try:
            d = self.actions.perform(self, request)
        except Exception as e:
            self.log.failure("Call {call_id}: carrying out {action} failed", call_id=self.uuid, action=request.action)
            d = succeed(ActionResult(request.action, False, f"internal error ({type(e).__name__})", request.id))
        d.addErrback(self._action_failed, request)
        d.addCallback(lambda result: self._settle(number, request, result))

    def _action_failed(self, failure: Failure, request: ActionRequest) -> ActionResult:
        self.log.failure("Call {call_id}: carrying out {action} failed", failure, call_id=self.uuid,
                         action=request.action)
        return ActionResult(request.action, False, f"internal error ({type(failure.value).__name__})", request.id)

    def _settle(self, number: int, request: ActionMessage, result: ActionResult) -> None:
        """The outcome of one request: to the agent (while its session is open) and the observers, once."""
        if self._requests.pop(number, None) is None:
            return
        if result.ok:
            self.log.info("Call {call_id}: {action} done", call_id=self.uuid, action=result.action)
        else:
            self.log.info("Call {call_id}: {action} not done: {error}", call_id=self.uuid, action=result.action,
                          error=clip(result.error or ""))
        if self._session is not None:
            self._session.send_action_result(result)
        self.observer.agent_action(self, request, result)
        if self.ended and not self._requests:
            self._finish()

    # -- playback -----------------------------------------------------------------------------------------------

    def _start_playout(self, kind: int) -> None:
        self._out_kind = kind
        rate = AUDIO_KIND_RATES[kind]
        self._queue = PlaybackQueue(frame_bytes_for_rate(rate), max_frames=self.playback_frames,
                                    on_full=self._playback_full)
        if self.ambient is not None:
            self._mixer = self.ambient.mixer(rate, frame_bytes_for_rate(rate))
        self.ticker.add(self)

    def _playback_full(self, dropped: int) -> None:
        """The playback queue was full for the first time on this call (`PlaybackQueue.on_full`)."""
        self.log.warn("Call {call_id}: the agent sent more audio than PLAYBACK_MAX_SECONDS ({seconds:g} s) ahead of "
                      "playback; dropping what does not fit (one warning per call; the total is logged at its end)",
                      call_id=self.uuid, seconds=self.playback_frames * FRAME_SECONDS, dropped=dropped)

    def play_frame(self) -> bool:
        """Called by the ticker every 20 ms: send the next queued frame to Asterisk, if any (:return: if sent)."""
        queue = self._queue
        assert queue is not None
        frame = queue.next_frame()
        if frame is None and self._outbound is not None and self._outbound.holding:
            # The agent paused: play the end of what it said, which the resampler's filter still holds.
            queue.feed(self._outbound.flush())
            frame = queue.next_frame()
        if self._mixer is not None:
            frame = self._mixer.mix(frame)
        if frame is None:
            return False
        self.leg.send_audio(self._out_kind, frame)  # type: ignore[arg-type]
        self.frames_out += 1
        return True

    @property
    def playback_drops(self) -> PlaybackDrops:
        """The agent audio frames dropped so far on this call, by cause (see `PlaybackQueue`)."""
        queue = self._queue
        if queue is None:
            return PlaybackDrops()
        return PlaybackDrops(queue.dropped, queue.late_dropped, queue.caught_up)

    def missed(self, ticks: int) -> None:
        """Called by the ticker when it had to skip ticks (overload): keep the agent's audio near real time."""
        queue = self._queue
        assert queue is not None
        dropped = queue.fell_behind(ticks)
        if dropped:
            self.log.warn(
                "Call {call_id}: playback fell {seconds:.1f} s behind real time (server overloaded); dropped the "
                "oldest {frames} frames ({total} on this call so far)",
                call_id=self.uuid, seconds=dropped * FRAME_SECONDS, frames=dropped, total=queue.late_dropped)


@frozen
class Refusal:
    """Why avr takes no new call now (`CallManager.refusal`)."""

    #: ``draining`` (shutting down) or ``max_calls`` (``MAX_CALLS`` calls are live).
    code: str
    #: The sentence for logs and HTTP error bodies.
    message: str


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
    :param actions: carries out what the agents of dialplan calls ask for (`avr.actions.DialplanActions`).
    :param ambient: ``AMBIENT_NOISE_FILE``, under every call's outbound audio.
    :param max_calls: ``MAX_CALLS``: most calls live at once (0: no limit); a call beyond it is refused.
    :param playback_frames: most frames of agent audio a call queues (``PLAYBACK_MAX_SECONDS``).
    :param every_call: hears the events of every call, whoever else does (the end-of-call summary).
    """

    clock: IReactorTime
    connector: IStsConnector
    observer: ICallObserver
    ticker: FrameTicker
    admissions: Admissions
    sts_url: str | None = field(repr=url_repr)
    require_registration: bool = False
    actions: ICallActions = field(factory=NoActions)
    ambient: AmbientNoise | None = None
    max_calls: int = 0
    playback_frames: int = PLAYBACK_MAX_FRAMES
    every_call: ICallObserver | None = None
    #: Set when avr drains (`avr.drain.Drain`): every new call is refused.
    draining: bool = False
    _calls: dict[str, Call] = field(factory=dict)
    #: The counters of the calls that have ended, added up as each ends.
    _ended_totals: FrameTotals = field(factory=FrameTotals, init=False)
    _idle_waiters: list[Deferred[None]] = field(factory=list, init=False)
    log = Logger()

    def refusal(self) -> Refusal | None:
        """Why a new call would be refused now (draining, ``MAX_CALLS`` reached), or ``None``: it would be taken."""
        if self.draining:
            return Refusal("draining", "avr is draining (shutting down): it takes no new calls")
        if self.max_calls and len(self._calls) >= self.max_calls:
            return Refusal("max_calls", f"{len(self._calls)} calls are live, the most MAX_CALLS allows")
        return None

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
        self, leg: IAudioSocketLeg, sts_url: str | None, payload: Mapping[str, Any] | None = None, *,
        observer: ICallObserver | None = None, actions: ICallActions | None = None, kind: int | None = None,
    ) -> Call:
        """
        Bridge ``leg`` to an STS session at ``sts_url`` (``None`` = the built-in echo agent) and start the call.

        :param payload: the call's metadata (the ``POST /call`` payload), kept on the call for its observers.
        :param observer: who hears the call's events (default: this manager's, for dialplan calls).
        :param actions: what carries out the agent's requests (default: this manager's, for dialplan calls).
        :param kind: the leg's audio kind, when avr chose its format (an ARI media leg).
        :raises CallRefused: a call with the leg's UUID is live; avr is draining; ``max_calls`` calls are live.
        """
        if leg.uuid in self._calls:
            raise CallRefused(f"call {leg.uuid} is already connected")
        refusal = self.refusal()
        if refusal is not None:
            raise CallRefused(refusal.message)
        observer = observer or self.observer
        if self.every_call is not None:
            observer = CallObservers(observer, self.every_call)
        call = Call(
            uuid=leg.uuid,
            leg=leg,
            sts_url=sts_url,
            connector=self.connector,
            observer=observer,
            ticker=self.ticker,
            on_end=self._ended,
            clock=self.clock,
            actions=actions or self.actions,
            payload=dict(payload or {}),
            started_at=self.clock.seconds(),
            kind=kind,
            ambient=self.ambient,
            playback_frames=self.playback_frames,
        )
        self._calls[call.uuid] = call
        call.start()
        return call

    def _ended(self, call: Call) -> None:
        if self._calls.get(call.uuid) is call:
            del self._calls[call.uuid]
            self._ended_totals += FrameTotals.of(call)
            if not self._calls and self._idle_waiters:
                waiters, self._idle_waiters = self._idle_waiters, []
                for waiter in waiters:
                    waiter.callback(None)

    def frame_totals(self) -> FrameTotals:
        """The per-frame counters of every call so far, live and ended (read at ``/metrics`` scrapes)."""
        totals = self._ended_totals
        for call in self._calls.values():
            totals += FrameTotals.of(call)
        return totals

    def when_idle(self) -> Deferred[None]:
        """A Deferred firing once no call is live (at once if none is); cancelling it stops the wait."""
        if not self._calls:
            return succeed(None)

        def cancel(d: Deferred[None]) -> None:
            if d in self._idle_waiters:
                self._idle_waiters.remove(d)

        waiter: Deferred[None] = Deferred(cancel)
        self._idle_waiters.append(waiter)
        return waiter

    def __len__(self) -> int:
        """Live calls."""
        return len(self._calls)

    def get(self, uuid: str) -> Call | None:
        """The live call with ``uuid``, if any."""
        return self._calls.get(uuid)

    def stop(self) -> Deferred[None]:
        """End every call (server shutdown): each gets its hang-up frame and ``call_ended``."""
        for call in list(self._calls.values()):
            call.end("server shutting down", linger=False)
        return succeed(None)
