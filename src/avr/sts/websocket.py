"""
The AVR STS WebSocket client (``ws://`` and ``wss://``), on autobahn.

One connection per call: ``init {uuid}`` first, then caller audio and DTMF as JSON text frames; agent audio,
interruptions, transcripts, errors and control messages (hang up, transfer, DTMF) go to the call's `IStsHandler`,
and each control message is answered with an ``action_result``.

Every timer runs on the injected clock (`avr.wsclock`): the overall connect timeout (`WebSocketStsConnector`) and
the closing handshake timeout (`StsClientProtocol`); the STS gets no keep-alive pings.
"""

from __future__ import annotations

import re
from functools import partial
from typing import Any

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from autobahn.websocket.protocol import WebSocketProtocol
from twisted.internet import tcp
from twisted.internet.defer import Deferred, fail
from twisted.internet.endpoints import _WrappingProtocol
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from avr import __version__
from avr.config import redact_url
from avr.failures import describe_failure, tls_problem
from avr.fastpaths import FastPaths
from avr.interfaces import IStsConnector, IStsHandler, IStsSession
from avr.logtext import clip
from avr.once import Once
from avr.sts.attempt import Dialer
from avr.sts.codec import (
    ActionResult,
    AudioMessage,
    DtmfRequest,
    HangupRequest,
    Interruption,
    InvalidAction,
    StsErrorMessage,
    StsProtocolError,
    Transcript,
    TransferRequest,
    UnknownMessage,
    compact_audio,
    decode_message,
    encode_action_result,
    encode_audio,
    encode_dtmf,
    encode_init,
)
from avr.sts.errors import StsConnectError
from avr.sts.tls import load_trust_root
from avr.sts.wsframes import TEXT, MaskingKeys, leading_text_frames, masked_frame
from avr.wsclock import ConnectionTimers, WebSocketTimeouts, disable_autobahn_timers

log = Logger()

#: Largest STS message accepted (a 16 MiB frame is minutes of audio; beyond that the peer is broken).
MAX_MESSAGE_BYTES = 16 * 1024 * 1024

#: Seconds the STS gets to finish the closing handshake before the connection is dropped.
DEFAULT_CLOSE_TIMEOUT = 2.0

_UPGRADE_FAILED = re.compile(r"upgrade failed \[(\d+)\]:\s*(.*)")

_OPEN = WebSocketProtocol.STATE_OPEN
_CLOSED = WebSocketProtocol.STATE_CLOSED
_CLOSING = WebSocketProtocol.STATE_CLOSING
_SEND_GROUND = WebSocketProtocol.SEND_STATE_GROUND


def _read_directly(protocol: Any) -> None:
    """
    Have ``protocol``'s TCP connection hand its reads to ``protocol`` itself rather than through the endpoint's
    `_WrappingProtocol`, which only forwards them (one Python call less per frame). Nothing changes where the
    connection is of another kind (TLS, tests) or the wrapper is not as expected.
    """
    transport: Any = protocol.transport
    if (isinstance(transport, tcp.Connection) and isinstance(transport.protocol, _WrappingProtocol)
            and getattr(transport.protocol, "_wrappedProtocol", None) is protocol):
        transport.protocol = protocol  # type: ignore[assignment]


@implementer(IStsSession)
class StsClientProtocol(WebSocketClientProtocol):
    """
    One call's STS WebSocket connection, and its `IStsSession` once open (`WebSocketStsConnector` hands it out only
    then). Audio and DTMF are sent only while the session is open and not closing; otherwise they are dropped.

    Autobahn runs the connection. The per-frame path does not go through its general message machinery: caller audio
    is framed by `avr.sts.wsframes.masked_frame` and written through (`avr.writethrough`), and complete text frames
    received at a frame boundary go straight to `onMessage`; anything else (control frames, fragments, partial
    frames) is autobahn's.

    :param uuid: the call's UUID, sent in ``init``.
    :param handler: receives what the STS sends, and `IStsHandler.sts_closed` once if the session opened.
    :param clock: schedules the closing handshake timeout.
    :param sample_rate: the rate of the audio both ways (``STS_SAMPLE_RATE``): `input_rate` and `output_rate`.
    :param fast_paths: whether audio takes the direct frames and is written through (`avr.fastpaths`).
    """

    def __init__(
        self,
        uuid: str,
        handler: IStsHandler,
        clock: IReactorTime,
        close_timeout: float = DEFAULT_CLOSE_TIMEOUT,
        sample_rate: int = 8000,
        fast_paths: FastPaths = FastPaths(),
    ) -> None:
        super().__init__()
        self.uuid = uuid
        self.input_rate = self.output_rate = sample_rate
        self._handler = handler
        self._timers = ConnectionTimers(self, clock, WebSocketTimeouts(close=close_timeout))
        self._was_open = False
        self._close_requested = False
        self._ended = False
        self._lost_reason: Failure | None = None
        self._opening = Once()
        self._noted: set[str] = set()
        self._fast_paths = fast_paths
        self._direct = fast_paths.direct_frames
        # Received frames go straight to onMessage (direct frames are under 64 KiB: a smaller STS_MAX_MESSAGE
        # leaves every frame to autobahn, which enforces it).
        self._direct_in = self._direct
        # Audio goes out as direct frames: they are on, and the session opened without compression.
        self._direct_open = False
        self._write: Any = None
        self._masks = MaskingKeys()

    # -- IStsSession

    def send_audio(self, pcm: bytes) -> None:
        """Send caller audio (dropped unless the session is open and not closing)."""
        if (self._direct_open and self.state == _OPEN and not self._close_requested
                and self.send_state == _SEND_GROUND and not self.send_queue):
            self._write(masked_frame(TEXT, encode_audio(pcm), self._masks.next()))
        elif self._can_send("audio"):
            self.sendMessage(encode_audio(pcm), isBinary=False)

    def send_dtmf(self, digit: str) -> None:
        """Send a ``dtmf_digit`` message; an invalid digit is logged and ignored."""
        if not self._can_send("DTMF"):
            return
        try:
            payload = encode_dtmf(digit)
        except ValueError:
            log.warn("STS for call {call_id}: not sending invalid DTMF digit {digit!r}", call_id=self.uuid, digit=digit)
            return
        self.sendMessage(payload, isBinary=False)

    def send_action_result(self, result: ActionResult) -> None:
        """Send an ``action_result`` message (dropped unless the session is open and not closing)."""
        if self._can_send("action result"):
            self.sendMessage(encode_action_result(result), isBinary=False)

    def _can_send(self, what: str) -> bool:
        if not self._was_open:
            # Only reachable by misuse: the connector hands the session out once open, and the call keeps its own
            # audio until then. Not raising: a send never breaks the call's real-time audio path.
            log.debug("STS for call {call_id} is not open: {what} not sent", call_id=self.uuid, what=what)
            return False
        # Closing (either side) or closed: the STS no longer takes audio.
        return self.state == _OPEN and not self._close_requested

    def close(self) -> None:
        """Start a normal close (code 1000); `IStsHandler.sts_closed` follows. Idempotent."""
        if self._close_requested or self._ended:
            return
        self._close_requested = True
        if self.state == _OPEN:
            self.sendClose(code=WebSocketProtocol.CLOSE_STATUS_CODE_NORMAL)
        if self.state != _CLOSED:
            self._timers.closing()

    # -- connection progress, for the connector

    def when_opened(self) -> Deferred:
        """
        A Deferred firing with this protocol once the handshake completed and ``init`` was sent, or failing with
        `StsConnectError` if the connection ends before that.
        """
        return self._opening.wait()

    def abort(self) -> None:
        """Drop the connection at once (no closing handshake)."""
        if self.state != _CLOSED:
            self.dropConnection(abort=True)

    # -- autobahn callbacks

    def connectionMade(self) -> None:
        """Start the WebSocket opening handshake; prepare the direct write path."""
        super().connectionMade()
        self._timers.connected()
        self._write = self._fast_paths.writer(self.transport)
        if 0 < getattr(self, "maxFramePayloadSize", 0) < 0x10000:
            self._direct_in = False
        if self._direct:
            _read_directly(self)

    def dataReceived(self, data: bytes) -> None:
        """Hand complete text frames at a frame boundary straight to `onMessage`; the rest to autobahn."""
        if (self._direct_in and self.state == _OPEN and self.current_frame is None and not self.inside_message
                and not self.data):
            frames, used = leading_text_frames(data)
            for payload in frames:
                self.onMessage(payload, False)
                if self.state == _CLOSED:
                    return
            if used == len(data):
                return
            data = data[used:]
        super().dataReceived(data)

    def onOpen(self) -> None:
        """Send ``init``: the session is open."""
        self._timers.opened()
        self.sendMessage(encode_init(self.uuid), isBinary=False)
        self._was_open = True
        self._direct_open = self._direct and self._perMessageCompress is None
        log.info("STS WebSocket open for call {call_id}", call_id=self.uuid)
        self._opening.fire(self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        """Decode one message and hand it to the handler; what cannot be understood is logged and ignored."""
        if self._close_requested:
            return
        if isBinary:
            self._note("binary", "STS for call {uuid}: ignoring a binary frame of {size} bytes (the protocol uses "
                                 "JSON text frames)", size=len(payload))
            return
        pcm = compact_audio(payload)
        if pcm is not None:
            # The common message, without building a message value.
            if pcm:
                try:
                    self._handler.sts_audio(pcm)
                except Exception:
                    log.failure("STS for call {call_id}: the call failed to handle audio", call_id=self.uuid)
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
            log.failure("STS for call {call_id}: the call failed to handle {kind}", call_id=self.uuid,
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
                log.warn("STS for call {call_id} reported an error: {message}", call_id=self.uuid, message=clip(text))
                self._handler.sts_error(text)
            case HangupRequest() | TransferRequest() | DtmfRequest() | InvalidAction():
                self._handler.sts_action(message)
            case UnknownMessage(type=kind):
                log.debug("STS for call {call_id}: ignoring message of unknown type {type!r}", call_id=self.uuid,
                          type=clip(kind))

    def _note(self, kind: str, fmt: str, **fields: Any) -> None:
        # The first oddity of each kind is a warning; repeats (a broken peer sends many) go to debug.
        if kind in self._noted:
            log.debug(fmt, call_id=self.uuid, **fields)
        else:
            self._noted.add(kind)
            log.warn(fmt + " (repeats are logged at debug level)", call_id=self.uuid, **fields)

    def sendCloseFrame(self, code: int | None = None, reasonUtf8: bytes | None = None, isReply: bool = False) -> None:
        """
        Start (or answer) the closing handshake and give it the close timeout; once avr closes, whether by
        `close` or because autobahn failed the connection (STS_MAX_MESSAGE, invalid UTF-8...), nothing the STS sends
        after it is delivered.
        """
        super().sendCloseFrame(code, reasonUtf8, isReply)
        if self.state == _CLOSING:
            self._close_requested = self._close_requested or not isReply
            self._timers.closing()

    def onCloseFrame(self, code: int, reasonRaw: bytes) -> bool | None:
        """The STS started or answered the closing handshake: make sure the TCP connection goes away in time."""
        result = super().onCloseFrame(code, reasonRaw)
        if self.state != _CLOSED:
            self._timers.closing()
        return result

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """Remember why the transport went away (TLS verification, reset...) before autobahn reports the close."""
        self._lost_reason = reason
        self._timers.lost()
        super().connectionLost(reason)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        """Report the end: a failed connection attempt before open, `IStsHandler.sts_closed` (once) after."""
        if self._ended:
            return
        self._ended = True
        if not self._was_open:
            self._opening.fire(Failure(StsConnectError(self._connect_failure(reason))))
            return
        text = self._closed_text(wasClean, code, reason)
        if getattr(self, "wasMaxFramePayloadSizeExceeded", False) or getattr(
                self, "wasMaxMessagePayloadSizeExceeded", False):
            limit = getattr(self, "maxMessagePayloadSize", 0)
            text = f"message larger than STS_MAX_MESSAGE ({limit} bytes; close code 1009)"
            log.error("STS for call {call_id} sent a {what}: session ended", call_id=self.uuid, what=text)
        log.info("STS session for call {call_id} ended: {reason}", call_id=self.uuid, reason=text)
        try:
            self._handler.sts_closed(text)
        except Exception:
            log.failure("STS for call {call_id}: the call failed to handle the end of the session", call_id=self.uuid)

    def _connect_failure(self, reason: str | None) -> str:
        host = self.factory.host
        if self._lost_reason is not None:
            problem = tls_problem(self._lost_reason, host)
            if problem:
                return problem
        not_clean = self.wasNotCleanReason or ""
        match = _UPGRADE_FAILED.search(not_clean)
        if match:
            return f"WebSocket handshake rejected: HTTP {match[1]} {match[2]}".rstrip()
        if not_clean:
            return f"WebSocket handshake failed: {not_clean}"
        if self._lost_reason is not None:
            return f"connection closed during the WebSocket handshake ({describe_failure(self._lost_reason, host)})"
        return f"connection closed during the WebSocket handshake ({reason})"

    def _closed_text(self, was_clean: bool, code: int | None, reason: str | None) -> str:
        if getattr(self, "failedByMe", False) and self.localCloseCode is not None:
            # autobahn failed the connection (a protocol error of the STS): its close code and reason say why.
            why = (self.localCloseReason or b"").decode("utf-8", "replace")
            return f"failed (code {self.localCloseCode}" + (f": {why})" if why else ")")
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
    :param close_timeout: seconds the STS gets to finish the closing handshake.
    :param sample_rate: the rate of the PCM16 exchanged with the STS, both ways (``STS_SAMPLE_RATE``).
    :param fast_paths: the fast paths the sessions take (`avr.fastpaths`).
    :param max_message: ``STS_MAX_MESSAGE``: largest message (and frame) the STS may send, in bytes.
    """

    def __init__(
        self,
        reactor: IReactorTime,
        connect_timeout: float = 5.0,
        trust_root: str | None = None,
        close_timeout: float = DEFAULT_CLOSE_TIMEOUT,
        sample_rate: int = 8000,
        fast_paths: FastPaths = FastPaths(),
        max_message: int = MAX_MESSAGE_BYTES,
    ) -> None:
        self._reactor = reactor
        self._max_message = max_message
        self._fast_paths = fast_paths
        self._sample_rate = sample_rate
        self._dialer = Dialer(reactor, connect_timeout, load_trust_root(trust_root))
        self._close_timeout = close_timeout

    def connect(self, url: str | None, uuid: str, handler: IStsHandler) -> Deferred:
        """
        Open the session for call ``uuid`` and send ``init``.

        :return: a Deferred firing with the `StsClientProtocol` once open, or failing with `StsConnectError`
            (cancelling it abandons the attempt).
        """
        if url is None:
            return fail(StsConnectError("no STS WebSocket URL"))
        log.info("Connecting to STS WebSocket: {url}", url=redact_url(url), call_id=uuid)
        try:
            factory = WebSocketClientFactory(url, reactor=self._reactor, useragent=f"avr/{__version__}")
        except Exception:
            return fail(StsConnectError("not a valid ws:// or wss:// URL"))
        disable_autobahn_timers(factory)
        # STS_MAX_MESSAGE: a bigger frame or message fails the connection with 1009 (the direct frame reads take only
        # whole frames under 64 KiB, and are off below that limit: autobahn checks the rest). A failed connection is
        # closed with its code, so the STS learns why (not a bare TCP drop); the closing timer bounds the handshake.
        factory.setProtocolOptions(maxMessagePayloadSize=self._max_message, maxFramePayloadSize=self._max_message,
                                   failByDrop=False)
        # autobahn types ``protocol`` as a class; buildProtocol only calls it.
        factory.protocol = partial(StsClientProtocol, uuid, handler, self._reactor,  # type: ignore[assignment]
                                   self._close_timeout, self._sample_rate, self._fast_paths)
        return self._dialer.dial(factory.host, factory.port, factory.isSecure, factory)
