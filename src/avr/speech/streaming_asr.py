"""
asterisk-api's streaming ASR: a WebSocket (``ASR_URL``, e.g. Qwen3-ASR's ``ws://host:8100/ws/transcribe``) per
captured call, spoken to exactly as asterisk-api speaks to it.

* After the connection opens: ``{"action": "config", "language": ASR_LANGUAGE}`` (nothing when it is ``auto``).
* The caller's audio: binary messages of PCM16LE mono at 16 kHz, sent only while the connection is open (what
  arrives during an outage is dropped, as asterisk-api drops it) and while the socket takes it (a server that does
  not read makes the kernel buffers fill: audio is then dropped rather than queued without bound, and counted).
* Text messages from the server are JSON: ``{"status": ...}`` (``connected``, ``configured``, ``buffer_reset``) and
  errors (``{"error": ...}`` or ``{"code", "message"}``) are logged; ``{"text", "is_partial", "is_final"}`` is a
  `Transcription` (missing flags are false), handed to the session's ``on_transcription`` once each (asterisk-api
  emitted the final one twice, D9).
* `StreamingAsrSession.reset` sends ``{"action": "reset"}``. `StreamingAsrSession.stop` sends
  ``{"action": "flush"}``, waits (at most ``flush_timeout``) for the ``is_final`` answer or the close, then closes.
* A connection that drops is opened again after ``reconnect_delay`` (2 s), at most ``max_reconnects`` (10) times in
  a row (an open connection resets the count); then the session gives up and says so (``on_lost``). A session
  whose first connection fails never retries (asterisk-api's orphan reconnect loop, D10): `StreamingAsrSession.start`
  fails instead.

Every timer runs on the injected clock (`avr.wsclock`, `avr.sts.attempt.Dialer` for the opening).
"""

from __future__ import annotations

import json
from functools import partial
from typing import Any, Callable

from attrs import define, field, frozen
from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from autobahn.websocket.protocol import WebSocketProtocol
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from avr import __version__
from avr.config import redact_url
from avr.failures import describe_failure
from avr.json_input import decode_json
from avr.logtext import clip
from avr.once import Once
from avr.sts.attempt import Dialer
from avr.wsclock import ConnectionTimers, WebSocketTimeouts, disable_autobahn_timers

log = Logger()

#: Seconds to open a connection (asterisk-api's).
OPEN_TIMEOUT = 5.0
#: Seconds between a lost connection and the next attempt, and the most attempts in a row (asterisk-api's).
RECONNECT_DELAY = 2.0
MAX_RECONNECTS = 10
#: Seconds `StreamingAsrSession.stop` waits for the final transcription after the flush (asterisk-api's).
FLUSH_TIMEOUT = 2.0
#: Largest message accepted from the ASR server.
MAX_MESSAGE_BYTES = 1024 * 1024
#: The audio the ASR server is sent.
ASR_SAMPLE_RATE = 16000

_OPEN = WebSocketProtocol.STATE_OPEN
_CLOSED = WebSocketProtocol.STATE_CLOSED


class AsrError(Exception):
    """The ASR session could not be started (the message says why)."""


@frozen
class Transcription:
    """One ASR result, as asterisk-api's ``call.transcription`` carries it."""

    text: str
    is_partial: bool = False
    is_final: bool = False

    def to_dict(self) -> dict[str, Any]:
        """``{"text", "is_partial", "is_final"}``."""
        return {"text": self.text, "is_partial": self.is_partial, "is_final": self.is_final}


@implementer(IPushProducer)
class AsrClientProtocol(WebSocketClientProtocol):
    """One connection to the ASR server; what it receives and how it ends go to its session."""

    def __init__(self, session: StreamingAsrSession, clock: IReactorTime, close_timeout: float = 2.0) -> None:
        super().__init__()
        self.session = session
        self._timers = ConnectionTimers(self, clock, WebSocketTimeouts(close=close_timeout))
        self._opening = Once()
        self._ended = Once()
        self._was_open = False
        #: The transport's buffers are full (`pauseProducing`): audio is dropped until they drain.
        self.paused = False
        self.lost_reason: Failure | None = None

    # -- what the session uses

    def when_opened(self) -> Deferred:
        """Fires with this protocol once open; fails if the connection ends before (for the `Dialer`)."""
        return self._opening.wait()

    def when_closed(self) -> Deferred:
        """Fires with a readable reason once the connection is gone."""
        return self._ended.wait()

    def abort(self) -> None:
        """Drop the connection at once."""
        if self.state != _CLOSED:
            self.dropConnection(abort=True)

    @property
    def accepting(self) -> bool:
        """Open, and no closing handshake started."""
        return self._was_open and self.state == _OPEN

    def send_audio(self, pcm: bytes) -> bool:
        """Send one audio message; ``False`` (not sent) while not open or paused."""
        if not self.accepting or self.paused:
            return False
        self.sendMessage(pcm, isBinary=True)
        return True

    def send_action(self, action: str, **fields: Any) -> None:
        """Send a control message ``{"action": action, ...}`` (dropped when not open)."""
        if self.accepting:
            self.sendMessage(json.dumps({"action": action, **fields}).encode("utf-8"), isBinary=False)

    def close(self) -> None:
        """Start a normal close; the connection is dropped if the server does not finish it in time."""
        if self.state == _OPEN:
            self.sendClose(code=WebSocketProtocol.CLOSE_STATUS_CODE_NORMAL)
        if self.state != _CLOSED:
            self._timers.closing()

    # -- IPushProducer (registered on the transport)

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False

    def stopProducing(self) -> None:
        self.paused = True

    # -- autobahn callbacks

    def connectionMade(self) -> None:
        super().connectionMade()
        self._timers.connected()
        transport: Any = self.transport
        transport.registerProducer(self, True)

    def onOpen(self) -> None:
        self._timers.opened()
        self._was_open = True
        self.session.connection_opened(self)
        self._opening.fire(self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.session.message(payload, isBinary)

    def onCloseFrame(self, code: int, reasonRaw: bytes) -> bool | None:
        result = super().onCloseFrame(code, reasonRaw)
        if self.state != _CLOSED:
            self._timers.closing()
        return result

    def connectionLost(self, reason: Failure = Failure(ConnectionDone())) -> None:  # noqa: B008
        self.lost_reason = reason
        self._timers.lost()
        super().connectionLost(reason)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        if not self._was_open:
            why = self.wasNotCleanReason or reason or (
                describe_failure(self.lost_reason) if self.lost_reason is not None else "connection closed")
            self._opening.fire(Failure(AsrError(f"WebSocket handshake failed: {why}")))
        text = f"code {code}" + (f": {reason}" if reason else "") if wasClean else (
            self.wasNotCleanReason or (describe_failure(self.lost_reason) if self.lost_reason else "connection lost"))
        self._ended.fire(text)
        if self._was_open:
            self.session.connection_closed(self, text)


def asr_dialer(reactor: Any, timeout: float = OPEN_TIMEOUT, trust_root: Any = None) -> Callable[[Any], Deferred]:
    """
    The production ``dial`` of `StreamingAsrSession`: TCP (TLS for ``wss://``, verified) to the factory's host and
    port, open within ``timeout`` seconds.
    """
    dialer = Dialer(reactor, timeout, trust_root)
    return lambda factory: dialer.dial(factory.host, factory.port, factory.isSecure, factory)


@define(eq=False)
class StreamingAsrSession:
    """
    One captured call's ASR (see the module docstring).

    :param call_id: for the log.
    :param url: ``ASR_URL`` (``ws://`` or ``wss://``).
    :param language: ``ASR_LANGUAGE``; ``auto`` sends no ``config``.
    :param clock: every timer.
    :param dial: connects a ``WebSocketClientFactory`` and fires with its open protocol (`asr_dialer`).
    :param on_transcription: gets each `Transcription`.
    :param on_lost: called once with the reason when the session gives up reconnecting.
    """

    call_id: str
    url: str
    language: str
    clock: IReactorTime
    dial: Callable[[Any], Deferred]
    on_transcription: Callable[[Transcription], None]
    on_lost: Callable[[str], None] = lambda reason: None
    reconnect_delay: float = RECONNECT_DELAY
    max_reconnects: int = MAX_RECONNECTS
    flush_timeout: float = FLUSH_TIMEOUT
    #: Audio messages dropped (not open, or the server not reading).
    dropped: int = field(default=0, init=False)
    _connection: AsrClientProtocol | None = field(default=None, init=False)
    _connecting: Deferred | None = field(default=None, init=False)
    _retry: IDelayedCall | None = field(default=None, init=False)
    _attempts: int = field(default=0, init=False)
    _stopping: bool = field(default=False, init=False)
    _ended: bool = field(default=False, init=False)
    _final: Deferred | None = field(default=None, init=False)
    _dropping: bool = field(default=False, init=False)

    async def start(self) -> None:
        """
        Open the first connection.

        :raises AsrError: ``Failed to start ASR: <why>``; the session is over then (no retries).
        """
        try:
            await self._open()
        except CancelledError:
            self._ended = True
            raise
        except Exception as e:
            self._ended = True
            raise AsrError(f"Failed to start ASR: {str(e) or describe_failure(e)}") from None

    def send_audio(self, pcm: bytes) -> None:
        """Forward caller audio (PCM16LE 16 kHz); dropped, and counted, when it cannot be sent now."""
        connection = self._connection
        if connection is not None and not self._stopping and connection.send_audio(pcm):
            self._dropping = False
            return
        self.dropped += 1
        if not self._dropping and not self._stopping:
            self._dropping = True
            log.info("ASR for call {call_id}: dropping audio while the ASR connection is {state}", call_id=self.call_id,
                     state="busy" if connection is not None else "down")

    def reset(self) -> None:
        """Ask the server to forget the audio it holds (``{"action": "reset"}``)."""
        if self._connection is not None:
            self._connection.send_action("reset")

    async def stop(self) -> None:
        """
        End the session: flush, wait for the final transcription (or the close) at most ``flush_timeout``, close.
        Idempotent; no reconnect afterwards.
        """
        if self._stopping:
            return
        self._stopping = True
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None
        if self._connecting is not None:
            self._connecting.cancel()
        connection = self._connection
        if connection is not None and connection.accepting:
            final: Deferred = Deferred()
            self._final = final

            def done(_: Any = None) -> None:
                if not final.called:
                    final.callback(None)

            connection.when_closed().addBoth(done)
            connection.send_action("flush")
            waiting = self.clock.callLater(self.flush_timeout, done)
            await final
            if waiting.active():
                waiting.cancel()
            self._final = None
            connection.close()
            await connection.when_closed()
        self._connection = None
        self._ended = True

    # -- connections

    def _open(self) -> Deferred:
        try:
            factory = WebSocketClientFactory(self.url, reactor=self.clock, useragent=f"avr/{__version__}")
        except Exception as e:
            raise AsrError(f"ASR_URL is not a valid ws:// or wss:// URL ({e})") from None
        disable_autobahn_timers(factory)
        factory.setProtocolOptions(maxMessagePayloadSize=MAX_MESSAGE_BYTES)
        factory.protocol = partial(AsrClientProtocol, self, self.clock)  # type: ignore[assignment]
        d = self._connecting = self.dial(factory)

        def done(result: Any) -> Any:
            self._connecting = None
            return result

        return d.addBoth(done)

    def connection_opened(self, connection: AsrClientProtocol) -> None:
        """A connection opened: it carries the audio; ``config`` is sent."""
        if self._stopping or self._ended:
            connection.close()
            return
        self._connection = connection
        self._attempts = 0
        log.info("ASR for call {call_id} connected to {url}", call_id=self.call_id, url=redact_url(self.url))
        if self.language.strip().lower() != "auto":
            connection.send_action("config", language=self.language)

    def connection_closed(self, connection: AsrClientProtocol, reason: str) -> None:
        """An open connection went away: reconnect unless the session is stopping."""
        if self._connection is connection:
            self._connection = None
        if self._stopping or self._ended:
            return
        log.warn("ASR connection for call {call_id} lost ({reason})", call_id=self.call_id, reason=clip(reason))
        self._schedule_reconnect(reason)

    def _schedule_reconnect(self, reason: str) -> None:
        if self._attempts >= self.max_reconnects:
            self._ended = True
            log.error("ASR for call {call_id}: giving up after {attempts} reconnect attempts ({reason})",
                      call_id=self.call_id, attempts=self._attempts, reason=clip(reason))
            self.on_lost(f"ASR connection lost: {reason} ({self._attempts} reconnect attempts failed)")
            return
        self._attempts += 1
        log.info("ASR for call {call_id}: reconnect attempt {attempt}/{most} in {delay:g} s", call_id=self.call_id,
                 attempt=self._attempts, most=self.max_reconnects, delay=self.reconnect_delay)
        self._retry = self.clock.callLater(self.reconnect_delay, self._reconnect)

    def _reconnect(self) -> None:
        self._retry = None
        try:
            d = self._open()
        except AsrError as e:
            self._schedule_reconnect(str(e))
            return

        def failed(failure: Failure) -> None:
            if failure.check(CancelledError) or self._stopping:
                return
            self._schedule_reconnect(describe_failure(failure))

        d.addErrback(failed)

    # -- what the server says

    def message(self, payload: bytes, is_binary: bool) -> None:
        """One message from the server (see the module docstring)."""
        if is_binary:
            log.debug("ASR for call {call_id}: ignoring a binary message", call_id=self.call_id)
            return
        try:
            message = decode_json(payload)
        except ValueError:
            log.warn("ASR for call {call_id}: ignoring a message that is not JSON: {start!r}", call_id=self.call_id,
                     start=clip(payload.decode("utf-8", "replace")))
            return
        if not isinstance(message, dict):
            log.warn("ASR for call {call_id}: ignoring a message that is not an object", call_id=self.call_id)
        elif "status" in message:
            log.info("ASR status for call {call_id}: {status}", call_id=self.call_id,
                     status=clip(str(message["status"])))
        elif "error" in message or "code" in message:
            log.warn("ASR error for call {call_id}: {error}", call_id=self.call_id,
                     error=clip(str(message.get("error") or message.get("message") or message.get("code"))))
        elif isinstance(message.get("text"), str):
            result = Transcription(message["text"], message.get("is_partial") is True,
                                   message.get("is_final") is True)
            try:
                self.on_transcription(result)
            except Exception:
                log.failure("ASR for call {call_id}: the transcription could not be handled", call_id=self.call_id)
            if result.is_final and self._final is not None and not self._final.called:
                self._final.callback(None)
        else:
            log.warn("ASR for call {call_id}: ignoring an unexpected message {keys}", call_id=self.call_id,
                     keys=sorted(message)[:10])
