"""
The AVR STS WebSocket client (``ws://`` and ``wss://``), on autobahn.

One connection per call: ``init {uuid}`` first, then caller audio and DTMF as JSON text frames; agent audio,
interruptions, transcripts and errors go to the call's `IStsHandler`.

autobahn's own timers (opening/closing handshake timeouts, auto-ping) run on txaio's global reactor whatever reactor
the factory is given, so they are all turned off here and replaced by timers on the injected clock: the overall
connect timeout (`WebSocketStsConnector`) and the closing handshake timeout (`StsClientProtocol`).
"""

from __future__ import annotations

import re
from collections import deque
from functools import partial
from typing import Any

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from autobahn.websocket.protocol import WebSocketProtocol
from twisted.internet.defer import Deferred, fail
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.error import ConnectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from avr import __version__
from avr.config import redact_url
from avr.interfaces import IStsConnector, IStsHandler, IStsSession
from avr.sts.attempt import ConnectAttempt
from avr.sts.codec import (
    AudioMessage,
    Interruption,
    StsErrorMessage,
    StsProtocolError,
    Transcript,
    UnknownMessage,
    decode_message,
    encode_audio,
    encode_dtmf,
    encode_init,
)
from avr.sts.errors import StsConnectError, describe_failure, tls_problem
from avr.sts.tls import client_tls_options, load_trust_root

log = Logger()

#: Caller audio kept while the connection opens: 2 s of PCM16 at 8 kHz. Older audio is dropped first.
DEFAULT_MAX_PENDING_BYTES = 32_000

#: Largest STS message accepted (a 16 MiB frame is minutes of audio; beyond that the peer is broken).
MAX_MESSAGE_BYTES = 16 * 1024 * 1024

#: Seconds the STS gets to finish the closing handshake before the connection is dropped.
DEFAULT_CLOSE_TIMEOUT = 2.0

_UPGRADE_FAILED = re.compile(r"upgrade failed \[(\d+)\]:\s*(.*)")

_OPEN = WebSocketProtocol.STATE_OPEN
_CLOSED = WebSocketProtocol.STATE_CLOSED
_CONNECTING = (WebSocketProtocol.STATE_CONNECTING, WebSocketProtocol.STATE_PROXY_CONNECTING)


def disable_autobahn_timers(factory: Any) -> None:
    """
    Turn off the timers autobahn would schedule on the global reactor (handshake timeouts, auto-ping) for every
    connection of ``factory`` (client or server).
    """
    options: dict[str, Any] = {"openHandshakeTimeout": 0, "closeHandshakeTimeout": 0, "autoPingInterval": 0}
    if not factory.isServer:
        options["serverConnectionDropTimeout"] = 0
    factory.setProtocolOptions(**options)


@implementer(IStsSession)
class StsClientProtocol(WebSocketClientProtocol):
    """
    One call's STS WebSocket connection, and its `IStsSession`.

    Audio and DTMF sent before the handshake completes are kept (at most ``max_pending_bytes`` of audio, oldest
    dropped first) and sent right after ``init``.

    :param uuid: the call's UUID, sent in ``init``.
    :param handler: receives what the STS sends, and `IStsHandler.sts_closed` once if the session opened.
    :param clock: schedules the closing handshake timeout.
    """

    def __init__(
        self,
        uuid: str,
        handler: IStsHandler,
        clock: Any,
        max_pending_bytes: int = DEFAULT_MAX_PENDING_BYTES,
        close_timeout: float = DEFAULT_CLOSE_TIMEOUT,
    ) -> None:
        super().__init__()
        self.uuid = uuid
        self._handler = handler
        self._clock = clock
        self._max_pending_bytes = max_pending_bytes
        self._close_timeout = close_timeout
        self._pending: deque[tuple[bytes, int]] = deque()
        self._pending_bytes = 0
        self._dropped_bytes = 0
        self._was_open = False
        self._close_requested = False
        self._ended = False
        self._close_timer: Any = None
        self._lost_reason: Failure | None = None
        self._open_waiters: list[Deferred] = []
        self._open_outcome: Any = None
        self._noted: set[str] = set()

    # -- IStsSession

    def send_audio(self, pcm: bytes) -> None:
        """Send caller audio (kept until the connection is open; dropped once the session is closing)."""
        if self._close_requested or self._ended:
            return
        payload = encode_audio(pcm)
        if self._was_open:
            if self.state == _OPEN:
                self.sendMessage(payload, isBinary=False)
            return
        self._keep(payload, len(pcm))

    def send_dtmf(self, digit: str) -> None:
        """Send a ``dtmf_digit`` message; an invalid digit is logged and ignored."""
        if self._close_requested or self._ended:
            return
        try:
            payload = encode_dtmf(digit)
        except ValueError:
            log.warn("STS for call {uuid}: not sending invalid DTMF digit {digit!r}", uuid=self.uuid, digit=digit)
            return
        if self._was_open:
            if self.state == _OPEN:
                self.sendMessage(payload, isBinary=False)
            return
        self._keep(payload, 0)

    def close(self) -> None:
        """Start a normal close (code 1000); `IStsHandler.sts_closed` follows. Idempotent."""
        if self._close_requested or self._ended:
            return
        self._close_requested = True
        self._pending.clear()
        self._pending_bytes = 0
        state = getattr(self, "state", None)
        if state == _OPEN:
            self.sendClose(code=WebSocketProtocol.CLOSE_STATUS_CODE_NORMAL)
            self._arm_close_timer()
        elif state in _CONNECTING:
            self.abort()
        elif state is not None and state != _CLOSED:
            self._arm_close_timer()

    # -- connection progress, for the connector

    def when_opened(self) -> Deferred:
        """
        A Deferred firing with this protocol once the handshake completed and ``init`` was sent, or failing with
        `StsConnectError` if the connection ends before that.
        """
        d: Deferred = Deferred()
        if self._open_outcome is None:
            self._open_waiters.append(d)
        elif isinstance(self._open_outcome, Failure):
            d.errback(self._open_outcome)
        else:
            d.callback(self)
        return d

    def _resolve_open(self, outcome: Any) -> None:
        self._open_outcome = outcome
        waiters, self._open_waiters = self._open_waiters, []
        for d in waiters:
            if isinstance(outcome, Failure):
                d.errback(outcome)
            else:
                d.callback(self)

    def abort(self) -> None:
        """Drop the connection at once (no closing handshake)."""
        if getattr(self, "state", _CLOSED) != _CLOSED:
            self.dropConnection(abort=True)

    # -- outbound buffering before open

    def _keep(self, payload: bytes, size: int) -> None:
        self._pending.append((payload, size))
        self._pending_bytes += size
        while self._pending_bytes > self._max_pending_bytes and self._pending:
            _, dropped = self._pending.popleft()
            self._pending_bytes -= dropped
            if not self._dropped_bytes:
                log.warn(
                    "STS for call {uuid} is not open yet: dropping the oldest caller audio beyond {limit} bytes",
                    uuid=self.uuid, limit=self._max_pending_bytes,
                )
            self._dropped_bytes += dropped

    # -- autobahn callbacks

    def onOpen(self) -> None:
        """Send ``init`` first, then whatever the caller sent while the connection was opening."""
        self.sendMessage(encode_init(self.uuid), isBinary=False)
        pending, self._pending = self._pending, deque()
        self._pending_bytes = 0
        for payload, _ in pending:
            self.sendMessage(payload, isBinary=False)
        self._was_open = True
        log.info("STS WebSocket open for call {uuid}", uuid=self.uuid)
        self._resolve_open(self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        """Decode one message and hand it to the handler; what cannot be understood is logged and ignored."""
        if self._close_requested:
            return
        if isBinary:
            self._note("binary", "STS for call {uuid}: ignoring a binary frame of {size} bytes (the protocol uses "
                                 "JSON text frames)", size=len(payload))
            return
        try:
            message = decode_message(payload)
        except StsProtocolError as e:
            self._note("undecodable", "STS for call {uuid}: ignoring a message that cannot be decoded: {reason}",
                       reason=e.reason)
            return
        try:
            self._dispatch(message)
        except Exception:
            log.failure("STS for call {uuid}: the call failed to handle {kind}", uuid=self.uuid,
                        kind=type(message).__name__)

    def _dispatch(self, message: Any) -> None:
        match message:
            case AudioMessage(pcm=pcm):
                if pcm:
                    self._handler.sts_audio(pcm)
            case Interruption():
                self._handler.sts_interruption()
            case Transcript(role=role, text=text):
                self._handler.sts_transcript(role, text)
            case StsErrorMessage(message=text):
                log.warn("STS for call {uuid} reported an error: {message}", uuid=self.uuid, message=text)
                self._handler.sts_error(text)
            case UnknownMessage(type=kind):
                log.debug("STS for call {uuid}: ignoring message of unknown type {type!r}", uuid=self.uuid, type=kind)

    def _note(self, kind: str, fmt: str, **fields: Any) -> None:
        # The first oddity of each kind is a warning; repeats (a broken peer sends many) go to debug.
        if kind in self._noted:
            log.debug(fmt, uuid=self.uuid, **fields)
        else:
            self._noted.add(kind)
            log.warn(fmt + " (repeats are logged at debug level)", uuid=self.uuid, **fields)

    def onCloseFrame(self, code: int, reasonRaw: bytes) -> bool | None:
        """The STS started or answered the closing handshake: make sure the TCP connection goes away in time."""
        result = super().onCloseFrame(code, reasonRaw)
        if self.state != _CLOSED:
            self._arm_close_timer()
        return result

    def _arm_close_timer(self) -> None:
        if self._close_timer is None:
            self._close_timer = self._clock.callLater(self._close_timeout, self._close_timed_out)

    def _close_timed_out(self) -> None:
        self._close_timer = None
        if self.state != _CLOSED:
            self.wasNotCleanReason = f"closing handshake not finished within {self._close_timeout:g} s"
            self.abort()

    def connectionLost(self, reason: Failure = Failure(ConnectionDone())) -> None:
        """Remember why the transport went away (TLS verification, reset...) before autobahn reports the close."""
        self._lost_reason = reason
        super().connectionLost(reason)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        """Report the end: a failed connection attempt before open, `IStsHandler.sts_closed` (once) after."""
        if self._close_timer is not None:
            if self._close_timer.active():
                self._close_timer.cancel()
            self._close_timer = None
        if self._ended:
            return
        self._ended = True
        self._pending.clear()
        self._pending_bytes = 0
        if not self._was_open:
            self._resolve_open(Failure(StsConnectError(self._connect_failure(reason))))
            return
        text = self._closed_text(wasClean, code, reason)
        log.info("STS session for call {uuid} ended: {reason}", uuid=self.uuid, reason=text)
        try:
            self._handler.sts_closed(text)
        except Exception:
            log.failure("STS for call {uuid}: the call failed to handle the end of the session", uuid=self.uuid)

    def _connect_failure(self, reason: str | None) -> str:
        host = getattr(getattr(self, "factory", None), "host", None)
        if self._lost_reason is not None:
            problem = tls_problem(self._lost_reason, host)
            if problem:
                return problem
        not_clean = getattr(self, "wasNotCleanReason", None) or ""
        match = _UPGRADE_FAILED.search(not_clean)
        if match:
            return f"WebSocket handshake rejected: HTTP {match[1]} {match[2]}".rstrip()
        if not_clean:
            return f"WebSocket handshake failed: {not_clean}"
        if self._lost_reason is not None:
            return f"connection closed during the WebSocket handshake ({describe_failure(self._lost_reason, host)})"
        return f"connection closed during the WebSocket handshake ({reason})"

    def _closed_text(self, was_clean: bool, code: int | None, reason: str | None) -> str:
        detail = f"code {code}" + (f": {reason}" if reason else "")
        if was_clean and self._close_requested:
            return f"closed ({detail})"
        if was_clean:
            return f"closed by the STS ({detail})"
        return f"connection lost ({detail})"


@implementer(IStsConnector)
class WebSocketStsConnector:
    """
    Opens AVR STS WebSocket sessions (``ws://`` and ``wss://``).

    :param reactor: for TCP connections and every timer (IReactorTCP + IReactorTime).
    :param connect_timeout: seconds for the whole opening (TCP, TLS, WebSocket handshake).
    :param trust_root: ``None`` to trust the platform's CAs for wss://, or the path of a PEM file of CA certificates
        (read now; `avr.config.ConfigError` if unusable). Certificate chain and host name are always verified.
    :param max_pending_bytes: caller audio kept while a connection opens (default 2 s at 8 kHz; use
        ``4 * sample_rate`` for 2 s at other rates).
    :param close_timeout: seconds the STS gets to finish the closing handshake.
    """

    def __init__(
        self,
        reactor: Any,
        connect_timeout: float = 5.0,
        trust_root: str | None = None,
        max_pending_bytes: int = DEFAULT_MAX_PENDING_BYTES,
        close_timeout: float = DEFAULT_CLOSE_TIMEOUT,
    ) -> None:
        self._reactor = reactor
        self._connect_timeout = connect_timeout
        self._trust_root = load_trust_root(trust_root) if trust_root is not None else None
        self._max_pending_bytes = max_pending_bytes
        self._close_timeout = close_timeout

    def connect(self, url: str | None, uuid: str, handler: IStsHandler) -> Deferred:
        """
        Open the session for call ``uuid`` and send ``init``.

        :return: a Deferred firing with the `StsClientProtocol` once open, or failing with `StsConnectError`
            (cancelling it abandons the attempt).
        """
        if url is None:
            return fail(StsConnectError("no STS WebSocket URL"))
        log.info("Connecting to STS WebSocket: {url}", url=redact_url(url))
        try:
            factory = WebSocketClientFactory(url, reactor=self._reactor, useragent=f"avr/{__version__}")
        except Exception:
            return fail(StsConnectError("not a valid ws:// or wss:// URL"))
        disable_autobahn_timers(factory)
        factory.setProtocolOptions(maxMessagePayloadSize=MAX_MESSAGE_BYTES)
        factory.protocol = partial(
            StsClientProtocol, uuid, handler, self._reactor, self._max_pending_bytes, self._close_timeout
        )
        endpoint: Any = HostnameEndpoint(self._reactor, factory.host, factory.port, timeout=self._connect_timeout)
        if factory.isSecure:
            endpoint = wrapClientTLS(client_tls_options(factory.host, self._trust_root), endpoint)
        return ConnectAttempt(self._reactor, self._connect_timeout, factory.host).start(endpoint, factory)
