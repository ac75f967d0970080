"""
The AudioSocket server side: one `AudioSocketProtocol` per TCP connection from Asterisk, made by
`AudioSocketFactory`. It parses frames (`avr.frames`), hands the call to an `ICallRouter` once the UUID is known, and
forwards audio, DTMF and the end of the leg to the returned `ICallSink`. What happens with the audio is not its job.
"""

from __future__ import annotations

import math
import socket
from typing import Any, Callable

from attrs import define, field
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from avr.fastpaths import FastPaths
from avr.frames import (
    AUDIO_KIND_RATES,
    DEFAULT_MAX_AUDIO_PAYLOAD,
    DTMF_DIGITS,
    HANGUP_FRAME,
    MAX_PAYLOAD,
    Frame,
    FrameError,
    FrameParser,
    Kind,
    decode_uuid,
)
from avr.interfaces import IAudioSocketLeg, ICallRouter, ICallSink

#: TCP keep-alive on accepted connections (where the platform lets them be tuned): the first probe after this many
#: idle seconds, then one every `KEEPALIVE_INTERVAL` s; after `KEEPALIVE_PROBES` unanswered ones the kernel resets the
#: connection (a peer that vanished is noticed in about 2 minutes, even with AUDIOSOCKET_IDLE_TIMEOUT=0).
KEEPALIVE_IDLE = 60
KEEPALIVE_INTERVAL = 10
KEEPALIVE_PROBES = 6


class CallRefused(Exception):
    """
    Raised by `ICallRouter.attach` when a call is not admitted; the connection is closed.

    :ivar reason: why, for the log.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@implementer(IAudioSocketLeg)
class AudioSocketProtocol(Protocol):
    """
    One AudioSocket connection from Asterisk.

    The first frame must be the UUID (0x01); a connection that sends none within ``factory.uuid_timeout`` seconds, or
    starts with anything else, is closed. After ``factory.router.attach(self)`` returned an `ICallSink`, audio goes to
    ``caller_audio``, DTMF to ``caller_dtmf``, and the end of the leg (0x00, 0xff, malformed frame, EOF, reset, a sink
    failure, no frame either way for ``factory.idle``'s timeout) to ``caller_gone``, at most once. Ending the leg with
    `hang_up` does not call ``caller_gone``: the call ended it itself.

    ``factory`` must provide ``router`` (`ICallRouter`), ``clock`` (`IReactorTime`), ``uuid_timeout``,
    ``max_payload`` and ``idle`` (`IdleWatch`), as `AudioSocketFactory` does.
    """

    log = Logger()
    factory: AudioSocketFactory

    def __init__(self) -> None:
        #: The call's UUID (lower-case canonical), once the 0x01 frame arrived.
        self.uuid: str | None = None
        #: True from connectionMade until the connection is lost or hung up.
        self.connected = False
        self.peer = "?"
        self._parser: FrameParser | None = None
        self._sink: ICallSink | None = None
        self._uuid_timer: Any = None
        self._closing = False
        self._gone = False
        self._write: Callable[[bytes], None] | None = None
        #: Set by every complete frame received or audio frame sent; `IdleWatch` clears it (one store per frame).
        self.active = False
        #: Checks of `IdleWatch` in a row that found ``active`` unset.
        self.quiet_checks = 0

    # --- IAudioSocketLeg -------------------------------------------------------------------------------------------

    def send_audio(self, kind: int, pcm: bytes) -> None:
        """
        Write one audio frame in a single ``write``; nothing happens once the leg is no longer connected.

        :raises ValueError: ``kind`` is not 0x10-0x18, or ``pcm`` is empty or longer than 65535 bytes.
        """
        size = len(pcm)
        if kind not in AUDIO_KIND_RATES:
            raise ValueError(f"not an audio kind: 0x{kind:02x}")
        if not 0 < size <= MAX_PAYLOAD:
            raise ValueError(f"audio payload must be 1..{MAX_PAYLOAD} bytes, got {size}")
        if self.connected:
            self.active = True
            self._write(bytes((kind, size >> 8, size & 0xFF)) + pcm)  # type: ignore[misc]

    def hang_up(self) -> None:
        """Send the 0x00 hang-up frame and close the connection; later calls do nothing."""
        if self._closing:
            return
        self._closing = True
        self._gone = True  # the call ended the leg itself: no caller_gone
        self._cancel_uuid_timer()
        self.factory.idle.discard(self)
        if self.connected:
            self.connected = False
            self.transport.write(HANGUP_FRAME)  # type: ignore[union-attr]
            self.transport.loseConnection()  # type: ignore[union-attr]

    # --- Protocol ----------------------------------------------------------------------------------------------------

    def connectionMade(self) -> None:
        """Set TCP_NODELAY and keep-alive, start parsing and arm the UUID timeout."""
        self.connected = True
        self._write = self.factory.fast_paths.writer(self.transport)
        peer = self.transport.getPeer()  # type: ignore[union-attr]
        host = str(getattr(peer, "host", peer))
        self.peer = f"[{host}]:{getattr(peer, 'port', '?')}" if ":" in host else f"{host}:{getattr(peer, 'port', '?')}"
        set_no_delay = getattr(self.transport, "setTcpNoDelay", None)
        if set_no_delay is not None:
            try:
                set_no_delay(True)
            except OSError as e:
                self.log.debug("AudioSocket connection from {peer}: cannot set TCP_NODELAY: {error}",
                               peer=self.peer, error=e)
        self._keep_alive()
        self._parser = FrameParser(max_payload=self.factory.max_payload, uuid_first=True)
        self._uuid_timer = self.factory.clock.callLater(self.factory.uuid_timeout, self._uuid_timed_out)
        self.factory.connections.add(self)
        self.log.debug("AudioSocket connection from {peer}", peer=self.peer)

    def dataReceived(self, data: bytes) -> None:
        """Parse ``data`` and act on each complete frame."""
        if self._closing or self._parser is None:
            return
        size = len(data) - 3
        if (self._sink is not None and size > 0 and data[0] in AUDIO_KIND_RATES and (data[1] << 8 | data[2]) == size
                and size <= self._parser.max_payload and not self._parser.buffered):
            # The common case, 50 times a second: one whole audio frame in one read (no parser, no Frame value).
            self.active = True
            try:
                self._sink.caller_audio(data[0], data[3:])
            except Exception:
                self._sink_failed()
            return
        error = None
        try:
            frames = self._parser.feed(data)
        except FrameError as e:
            error, frames = e, e.frames
        if frames:
            self.active = True  # whole frames only: a byte now and then does not keep a call alive
        for frame in frames:
            self._frame(frame)
            if self._closing:
                return
        if error is not None:
            self._malformed(error.reason)

    def connectionLost(self, reason: Failure | None = None) -> None:
        """Tell the sink the leg is over (once), release the timer."""
        self.connected = False
        self._closing = True
        self._cancel_uuid_timer()
        self.factory.idle.discard(self)
        self.factory.connections.discard(self)
        if self._sink is not None:
            self._caller_gone(f"connection lost: {reason.getErrorMessage() if reason else 'unknown'}")
        elif self.uuid is None:
            # The AudioSocket() app connects before checking the channel is answered and then closes without a UUID.
            self.log.debug("AudioSocket connection from {peer} closed before sending a UUID", peer=self.peer)

    # --- frames ------------------------------------------------------------------------------------------------------

    def _frame(self, frame: Frame) -> None:
        kind = frame.kind
        if self._sink is None:
            if self.uuid is None:
                self._first_frame(frame)
            return
        if kind in AUDIO_KIND_RATES:
            if frame.payload:
                self._to_sink(self._sink.caller_audio, kind, frame.payload)  # empty audio is ignored
        elif kind == Kind.DTMF:
            digit = chr(frame.payload[0]).upper()
            if digit in DTMF_DIGITS:
                self._to_sink(self._sink.caller_dtmf, digit)
            else:
                self.log.warn("Call {call_id}: ignoring DTMF byte 0x{byte:02x}", call_id=self.uuid,
                              byte=frame.payload[0])
        elif kind == Kind.HANGUP:
            self.log.info("Call {call_id}: Asterisk sent a hangup frame", call_id=self.uuid)
            self._end("hangup frame", send_hangup=False)
        elif kind == Kind.ERROR:
            code = f"0x{frame.payload[0]:02x}" if frame.payload else "none"
            self.log.warn("Call {call_id}: Asterisk sent an error frame (code {code})", call_id=self.uuid, code=code)
            self._end(f"error frame (code {code})", send_hangup=False)
        elif kind == Kind.UUID:
            self.log.warn("Call {call_id}: ignoring a second UUID frame", call_id=self.uuid)

    def _first_frame(self, frame: Frame) -> None:
        # The parser refuses any other first kind at its header.
        self._cancel_uuid_timer()
        self.uuid = decode_uuid(frame.payload)
        self.log.info("AudioSocket call {call_id} connected from {peer}", call_id=self.uuid, peer=self.peer)
        try:
            sink = self.factory.router.attach(self)
        except CallRefused as e:
            self.log.warn("AudioSocket call {call_id} refused: {reason}", call_id=self.uuid, reason=e.reason)
            self.hang_up()
            return
        except Exception:
            self.log.failure("AudioSocket call {call_id}: the router failed; closing", call_id=self.uuid)
            self.hang_up()
            return
        if self._closing:
            return  # the router hung up already
        self._sink = sink
        self.factory.idle.add(self)

    def _malformed(self, reason: str) -> None:
        if self.uuid is None:
            self.log.warn("AudioSocket connection from {peer}: malformed frame ({reason}); closing",
                          peer=self.peer, reason=reason)
        else:
            self.log.warn("Call {call_id}: malformed frame from Asterisk ({reason}); hanging up",
                          call_id=self.uuid, reason=reason)
        self._end(f"malformed frame: {reason}", send_hangup=True)

    def _to_sink(self, method: Callable[..., None], *args: Any) -> None:
        try:
            method(*args)
        except Exception:
            self._sink_failed()

    def _sink_failed(self) -> None:
        """(In an ``except`` block.) The call raised on an inbound frame: log it and hang up."""
        self.log.failure("Call {call_id}: the call failed on an inbound frame; hanging up", call_id=self.uuid)
        self._end("internal error", send_hangup=True)

    def _end(self, reason: str, send_hangup: bool) -> None:
        """End the leg from this side: close (with 0x00 if asked), then tell the sink."""
        if not self._closing:
            self._closing = True
            self._cancel_uuid_timer()
            self.factory.idle.discard(self)
            if self.connected:
                self.connected = False
                if send_hangup:
                    self.transport.write(HANGUP_FRAME)  # type: ignore[union-attr]
                self.transport.loseConnection()  # type: ignore[union-attr]
        self._caller_gone(reason)

    def _caller_gone(self, reason: str) -> None:
        if self._gone or self._sink is None:
            return
        self._gone = True
        try:
            self._sink.caller_gone(reason)
        except Exception:
            self.log.failure("Call {call_id}: the call failed while ending", call_id=self.uuid)

    def idle_timed_out(self, seconds: float) -> None:
        """Called by `IdleWatch`: no frame moved either way for ``seconds``; hang up and end the call."""
        self.log.warn("Call {call_id}: no frame to or from Asterisk for {seconds} s; hanging up",
                      call_id=self.uuid, seconds=seconds)
        self._end(f"no frame either way for {seconds} s (AUDIOSOCKET_IDLE_TIMEOUT)", send_hangup=True)

    def _keep_alive(self) -> None:
        set_keep_alive = getattr(self.transport, "setTcpKeepAlive", None)
        if set_keep_alive is None:
            return
        try:
            set_keep_alive(True)
            handle: Any = getattr(self.transport, "getHandle", lambda: None)()
            if not hasattr(handle, "setsockopt"):
                return
            for option, value in (("TCP_KEEPIDLE", KEEPALIVE_IDLE), ("TCP_KEEPINTVL", KEEPALIVE_INTERVAL),
                                  ("TCP_KEEPCNT", KEEPALIVE_PROBES)):
                if hasattr(socket, option):
                    handle.setsockopt(socket.IPPROTO_TCP, getattr(socket, option), value)
        except OSError as e:
            self.log.debug("AudioSocket connection from {peer}: cannot set TCP keep-alive: {error}",
                           peer=self.peer, error=e)

    def _uuid_timed_out(self) -> None:
        self._uuid_timer = None
        self.log.warn("AudioSocket connection from {peer} sent no UUID within {timeout} s; closing",
                      peer=self.peer, timeout=self.factory.uuid_timeout)
        self.hang_up()

    def _cancel_uuid_timer(self) -> None:
        if self._uuid_timer is not None:
            if self._uuid_timer.active():
                self._uuid_timer.cancel()
            self._uuid_timer = None


@define(eq=False)
class IdleWatch:
    """
    Ends calls on which no frame moved in either direction for ``timeout`` seconds (0: never).

    Asterisk sends a frame every 20 ms while a call's media flows, but a dead peer without FIN or reset, a stalled
    or slowloris client, or a call whose media stopped sends nothing. Outbound audio counts too, as it does for
    Asterisk's own AudioSocket() timeout: an avr-made externalMedia leg that plays uploaded audio hears nothing back
    while the others in its bridge are silent.

    Instead of a timer per call, reset on every frame, connections set their ``active`` flag, and one check every
    ``timeout / CHECKS`` seconds (at most 1 s) clears it and counts the checks in a row that found it unset; a call is
    ended between ``timeout`` and ``timeout`` plus one check interval after its last frame. The check runs only
    while calls are watched. After the reactor was held up it runs once (it counts checks, not elapsed time), so a
    stall, during which frames wait unread in the sockets, never ends the calls.
    """

    #: Checks per timeout at least (a call ends at most ``timeout / CHECKS`` late).
    CHECKS = 4

    clock: IReactorTime
    timeout: float
    _watched: set[AudioSocketProtocol] = field(factory=set)
    _interval: float = field(init=False)
    _quiet_limit: int = field(init=False)
    _loop: LoopingCall | None = None
    log = Logger()

    def __attrs_post_init__(self) -> None:
        if self.timeout < 0:
            raise ValueError(f"timeout must be 0 (never) or positive, got {self.timeout}")
        self._interval = min(1.0, self.timeout / self.CHECKS)
        self._quiet_limit = math.ceil(self.timeout / self._interval - 1e-9) if self.timeout else 0

    def add(self, connection: AudioSocketProtocol) -> None:
        """Watch ``connection`` from now (it counts as active now)."""
        if not self.timeout:
            return
        connection.active = True
        connection.quiet_checks = 0
        self._watched.add(connection)
        if self._loop is None:
            self._loop = LoopingCall(self._check)
            self._loop.clock = self.clock
            self._loop.start(self._interval, now=False).addErrback(
                lambda f: self.log.failure("AudioSocket idle check stopped", f))

    def discard(self, connection: AudioSocketProtocol) -> None:
        """Stop watching ``connection`` (idempotent)."""
        self._watched.discard(connection)
        if not self._watched and self._loop is not None:
            self._loop.stop()
            self._loop = None

    def __len__(self) -> int:
        return len(self._watched)

    def _check(self) -> None:
        idle = []
        for connection in self._watched:
            if connection.active:
                connection.active = False
                connection.quiet_checks = 0
            else:
                connection.quiet_checks += 1
                if connection.quiet_checks >= self._quiet_limit:
                    idle.append(connection)
        for connection in idle:
            if connection not in self._watched:
                continue  # ended meanwhile, by the end of another one
            try:
                connection.idle_timed_out(self.timeout)
            except Exception:
                self.log.failure("Ending idle AudioSocket call {call_id} failed", call_id=connection.uuid)
            self.discard(connection)


class AudioSocketFactory(Factory):
    """
    Makes an `AudioSocketProtocol` per connection and keeps the live ones in `connections`.

    :param router: decides what handles each call (`ICallRouter`).
    :param clock: the time source for UUID and idle timeouts.
    :param uuid_timeout: seconds a connection may take to send its UUID.
    :param max_payload: largest inbound audio payload accepted (bytes).
    :param idle_timeout: seconds without a frame either way after which a call is ended (0: never); see `IdleWatch`.
    :param fast_paths: whether frames are written through (`avr.fastpaths`).
    """

    # Twisted 26 types Factory as Factory[P]; subclassing Factory[AudioSocketProtocol] fails at run time on the older
    # Twisted that setup.cfg allows, and Factory's default P does not match a protocol with a typed ``factory``.
    protocol = AudioSocketProtocol  # type: ignore[assignment]
    noisy = False

    def __init__(
        self,
        router: ICallRouter,
        clock: IReactorTime,
        uuid_timeout: float = 5.0,
        max_payload: int = DEFAULT_MAX_AUDIO_PAYLOAD,
        idle_timeout: float = 30,
        fast_paths: FastPaths = FastPaths(),
    ) -> None:
        self.router = router
        self.fast_paths = fast_paths
        self.clock = clock
        self.uuid_timeout = uuid_timeout
        self.max_payload = max_payload
        self.idle = IdleWatch(clock, idle_timeout)
        #: The connections currently open.
        self.connections: set[AudioSocketProtocol] = set()

    def hang_up_all(self) -> None:
        """Hang up every open connection (e.g. on shutdown)."""
        for connection in list(self.connections):
            connection.hang_up()


__all__ = ["AudioSocketFactory", "AudioSocketProtocol", "CallRefused", "IdleWatch"]
