"""
The legacy HTTP STS (``http://`` and ``https://``, avr-core before WebSocket STS): one streaming POST per call.

The request (header ``X-UUID: <uuid>``, chunked body) streams the caller's raw PCM as it arrives while the response
body streams the agent's raw PCM back, for the whole call: the exchange is full duplex. There is no DTMF, interruption
or transcript channel; the end of the request is the end of the call.

twisted.web's `Agent` (and so treq) cannot do this: it hands over the response only once the request body is finished
(``HTTP11ClientProtocol.request`` chains the response Deferred when the request is written or the response complete),
i.e. at the end of the call. So this module speaks the little HTTP/1.1 it needs itself: a sans-IO `ResponseParser`
and a thin protocol. TLS is the same as for wss:// (`avr.sts.tls`: chain and host name verified).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from attrs import frozen
from twisted.internet.defer import Deferred, fail
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IHandshakeListener, IPushProducer
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from avr import __version__
from avr.config import redact_url
from avr.failures import describe_failure
from avr.interfaces import IStsConnector, IStsHandler, IStsSession
from avr.sts.attempt import Dialer
from avr.sts.errors import StsConnectError
from avr.sts.once import Once
from avr.sts.tls import load_trust_root

log = Logger()

#: Largest response head (status line and headers) accepted.
MAX_HEAD_BYTES = 64 * 1024

_LINE_LIMIT = 4096


class HttpResponseError(Exception):
    """The STS's response is not HTTP/1.x as expected; ``reason`` says how."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


@frozen
class ResponseHead:
    """Status and headers of a response (header names lower-case; repeated headers joined with ``, ``)."""

    status: int
    phrase: str
    headers: dict[str, str]


class ResponseEnd:
    """The response body is complete."""


RESPONSE_END = ResponseEnd()

_HEAD, _CHUNK_SIZE, _CHUNK_DATA, _CHUNK_CRLF, _TRAILERS, _LENGTH, _UNTIL_CLOSE, _DONE = range(8)


class ResponseParser:
    """
    Sans-IO parser of one streamed HTTP/1.x response: `feed` bytes, get events back as soon as they are complete:
    a `ResponseHead`, then body data (``bytes``, as it arrives, chunk boundaries not preserved), then `RESPONSE_END`.
    Interim 1xx responses are skipped.
    """

    def __init__(self) -> None:
        self._state = _HEAD
        self._buffer = bytearray()
        self._remaining = 0

    def feed(self, data: bytes) -> list[Any]:
        """
        Parse more bytes.

        :raises HttpResponseError: malformed status line, headers or chunked encoding, or a head that is too large.
        """
        self._buffer += data
        events: list[Any] = []
        buffer = self._buffer
        while buffer:
            state = self._state
            if state == _HEAD:
                end = buffer.find(b"\r\n\r\n")
                if end < 0:
                    if len(buffer) > MAX_HEAD_BYTES:
                        raise HttpResponseError("response head too large")
                    break
                head = self._head(bytes(buffer[:end]))
                del buffer[:end + 4]
                if head is not None:
                    events.append(head)
                    if self._state == _DONE:
                        events.append(RESPONSE_END)
            elif state == _CHUNK_SIZE:
                line = self._line()
                if line is None:
                    break
                try:
                    size = int(line.split(b";", 1)[0].strip(), 16)
                except ValueError:
                    raise HttpResponseError("bad chunk size in the response body") from None
                if size < 0:
                    raise HttpResponseError("bad chunk size in the response body")
                self._remaining = size
                self._state = _CHUNK_DATA if size else _TRAILERS
            elif state == _CHUNK_DATA or state == _LENGTH:
                piece = bytes(buffer[:self._remaining])
                del buffer[:len(piece)]
                self._remaining -= len(piece)
                events.append(piece)
                if not self._remaining:
                    if state == _CHUNK_DATA:
                        self._state = _CHUNK_CRLF
                    else:
                        self._state = _DONE
                        events.append(RESPONSE_END)
            elif state == _CHUNK_CRLF:
                if len(buffer) < 2:
                    break
                if buffer[:2] != b"\r\n":
                    raise HttpResponseError("missing CRLF after a chunk of the response body")
                del buffer[:2]
                self._state = _CHUNK_SIZE
            elif state == _TRAILERS:
                line = self._line()
                if line is None:
                    break
                if not line:
                    self._state = _DONE
                    events.append(RESPONSE_END)
            elif state == _UNTIL_CLOSE:
                events.append(bytes(buffer))
                buffer.clear()
            else:  # _DONE: nothing may follow on a connection we close
                buffer.clear()
        return events

    def connection_lost(self) -> list[Any]:
        """
        The connection closed.

        :raises HttpResponseError: the response was not complete.
        """
        if self._state == _UNTIL_CLOSE:
            self._state = _DONE
            return [RESPONSE_END]
        if self._state == _DONE:
            return []
        raise HttpResponseError("connection closed before the response was complete")

    def _line(self) -> bytes | None:
        end = self._buffer.find(b"\r\n")
        if end < 0:
            if len(self._buffer) > _LINE_LIMIT:
                raise HttpResponseError("line too long in the response body")
            return None
        line = bytes(self._buffer[:end])
        del self._buffer[:end + 2]
        return line

    def _head(self, raw: bytes) -> ResponseHead | None:
        lines = raw.split(b"\r\n")
        parts = lines[0].split(b" ", 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or len(parts[1]) != 3 or not parts[1].isdigit():
            raise HttpResponseError("bad HTTP status line")
        status = int(parts[1])
        phrase = parts[2].decode("latin-1").strip() if len(parts) > 2 else ""
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(b":")
            if not sep or not name or name != name.strip():
                raise HttpResponseError("bad header line in the response")
            key = name.decode("latin-1").lower()
            text = value.decode("latin-1").strip()
            headers[key] = f"{headers[key]}, {text}" if key in headers else text
        if 100 <= status < 200:
            return None  # interim response (e.g. 100 Continue): the real one follows
        encoding = headers.get("transfer-encoding", "").lower()
        if encoding:
            if encoding.rsplit(",", 1)[-1].strip() != "chunked":
                raise HttpResponseError(f"unsupported transfer encoding {encoding!r}")
            self._state = _CHUNK_SIZE
        elif status in (204, 304):
            self._state = _DONE
        elif "content-length" in headers:
            try:
                self._remaining = int(headers["content-length"])
            except ValueError:
                raise HttpResponseError("bad content-length") from None
            if self._remaining < 0:
                raise HttpResponseError("bad content-length")
            self._state = _LENGTH if self._remaining else _DONE
        else:
            self._state = _UNTIL_CLOSE
        return ResponseHead(status, phrase, headers)


def request_head(url: str, uuid: str) -> bytes:
    """The head of the streaming POST for call ``uuid`` (chunked body, one request per connection)."""
    parts = urlsplit(url)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    default_port = 443 if parts.scheme == "https" else 80
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    if parts.port and parts.port != default_port:
        host = f"{host}:{parts.port}"
    lines = [
        f"POST {target} HTTP/1.1",
        f"Host: {host}",
        f"X-UUID: {uuid}",
        "Content-Type: application/octet-stream",
        "Transfer-Encoding: chunked",
        "Connection: close",
        f"User-Agent: avr/{__version__}",
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


@implementer(IStsSession, IPushProducer, IHandshakeListener)
class HttpStsProtocol(Protocol):
    """
    One call's streaming POST, and its `IStsSession`.

    Open (for `when_opened`) once connected (http) or once the TLS handshake verified the peer (https). Caller audio
    goes out as one chunk per `send_audio`; while the connection pushes back (paused) it is dropped, not queued:
    it is real-time, and stale audio is worse than a gap.

    :param head: the request head (`request_head`).
    :param uuid: the call's UUID (for logs).
    :param handler: receives agent audio, errors and the end of the session.
    :param secure: the connection is TLS (open at the handshake rather than at connect).
    :param sample_rate: the rate of the raw PCM both ways (``STS_SAMPLE_RATE``): `input_rate` and `output_rate`.
    """

    def __init__(self, head: bytes, uuid: str, handler: IStsHandler, secure: bool,
                 sample_rate: int = 8000) -> None:
        self.uuid = uuid
        self.input_rate = self.output_rate = sample_rate
        self._head = head
        self._handler = handler
        self._secure = secure
        self._parser = ResponseParser()
        self._open = False
        self._ended = False
        self._body_finished = False
        self._paused = False
        self._gone = False
        self._dropped_bytes = 0
        self._opening = Once()

    # -- opening

    def when_opened(self) -> Deferred:
        """Fires with this protocol once open; fails with the connection's end reason if it ends before."""
        return self._opening.wait()

    def connectionMade(self) -> None:
        """Send the request head; plain http is open now."""
        self.transport.registerProducer(self, True)
        self.transport.write(self._head)
        if not self._secure:
            self._opened()

    def handshakeCompleted(self) -> None:
        """TLS is up and the peer verified: https is open now."""
        self._opened()

    def _opened(self) -> None:
        if self._open or self._ended:
            return
        self._open = True
        log.info("Legacy HTTP STS stream open for call {uuid}", uuid=self.uuid)
        self._opening.fire(self)

    def abort(self) -> None:
        """Drop the connection at once."""
        if self.transport is not None:
            self.transport.abortConnection()

    # -- IStsSession

    def send_audio(self, pcm: bytes) -> None:
        """Stream caller audio as one body chunk."""
        if not self._open or self._ended or self._body_finished or not pcm:
            return
        if self._paused:
            self._dropped_bytes += len(pcm)
            return
        self.transport.writeSequence([b"%x\r\n" % len(pcm), pcm, b"\r\n"])

    def send_dtmf(self, digit: str) -> None:
        """The legacy protocol has no DTMF channel: ignored."""
        log.debug("Legacy HTTP STS for call {uuid}: DTMF {digit!r} not sent (no DTMF channel)", uuid=self.uuid,
                  digit=digit)

    def send_action_result(self, result: Any) -> None:
        """The legacy protocol has no messages (and its peers never ask for actions): dropped."""

    def close(self) -> None:
        """Finish the request body and stop reading the response; `IStsHandler.sts_closed` is called at once."""
        self._end("closed")

    # -- IPushProducer (the transport's flow control)

    def pauseProducing(self) -> None:
        """The connection's send buffer is full."""
        self._paused = True

    def resumeProducing(self) -> None:
        """The connection's send buffer drained."""
        self._paused = False

    def stopProducing(self) -> None:
        """The connection is going away."""
        self._paused = True

    # -- response

    def dataReceived(self, data: bytes) -> None:
        """Parse the response and hand agent audio to the call as it arrives."""
        if self._ended:
            return
        try:
            events = self._parser.feed(data)
        except HttpResponseError as e:
            self._end(f"bad response from the STS ({e.reason})")
            return
        self._deliver(events)

    def _deliver(self, events: list[Any]) -> None:
        for event in events:
            if self._ended:
                return
            if isinstance(event, bytes):
                if event:
                    try:
                        self._handler.sts_audio(event)
                    except Exception:
                        log.failure("Legacy HTTP STS for call {uuid}: the call failed to handle audio", uuid=self.uuid)
            elif isinstance(event, ResponseHead):
                if not 200 <= event.status < 300:
                    text = f"STS answered HTTP {event.status} {event.phrase}".rstrip()
                    log.warn("Legacy HTTP STS for call {uuid}: {error}", uuid=self.uuid, error=text)
                    try:
                        self._handler.sts_error(text)
                    except Exception:
                        log.failure("Legacy HTTP STS for call {uuid}: the call failed to handle an error",
                                    uuid=self.uuid)
                    self._end(f"STS answered HTTP {event.status}")
            else:
                self._end("the STS ended the audio stream")

    def connectionLost(self, reason: Failure = Failure(ConnectionDone())) -> None:
        """End the session (or fail the opening) with the reason."""
        self._gone = True
        if not self._open:
            # The connect attempt turns this into a readable StsConnectError (TLS problem, refused...).
            self._ended = True
            self._opening.fire(reason)
            return
        if self._ended:
            return
        try:
            events = self._parser.connection_lost()
        except HttpResponseError:
            self._end(f"connection lost ({describe_failure(reason)})")
            return
        self._deliver(events)
        self._end("connection closed by the STS")

    def _end(self, reason: str) -> None:
        if self._ended:
            return
        self._ended = True
        if not self._gone and self.transport is not None:
            if not self._body_finished:
                self._body_finished = True
                self.transport.write(b"0\r\n\r\n")
            self.transport.unregisterProducer()
            self.transport.loseConnection()
        if self._dropped_bytes:
            log.warn("Legacy HTTP STS for call {uuid}: {dropped} bytes of caller audio dropped (connection too slow)",
                     uuid=self.uuid, dropped=self._dropped_bytes)
        log.info("Legacy HTTP STS session for call {uuid} ended: {reason}", uuid=self.uuid, reason=reason)
        try:
            self._handler.sts_closed(reason)
        except Exception:
            log.failure("Legacy HTTP STS for call {uuid}: the call failed to handle the end", uuid=self.uuid)


@implementer(IStsConnector)
class HttpStsConnector:
    """
    Opens legacy HTTP STS sessions.

    :param reactor: for TCP connections and the connect timeout (IReactorTCP + IReactorTime).
    :param connect_timeout: seconds until the request is on the wire (https: until the peer is verified).
    :param trust_root: ``None`` to trust the platform's CAs for https://, or a PEM CA file (read now;
        `avr.config.ConfigError` if unusable). Chain and host name are always verified.
    :param sample_rate: the rate of the raw PCM exchanged with the STS, both ways (``STS_SAMPLE_RATE``).
    """

    def __init__(self, reactor: Any, connect_timeout: float = 5.0, trust_root: str | None = None,
                 sample_rate: int = 8000) -> None:
        self._dialer = Dialer(reactor, connect_timeout, load_trust_root(trust_root))
        self._sample_rate = sample_rate

    def connect(self, url: str | None, uuid: str, handler: IStsHandler) -> Deferred:
        """
        Start the POST for call ``uuid``.

        :return: a Deferred firing with the `HttpStsProtocol` once open, or failing with `StsConnectError`
            (cancelling it abandons the attempt).
        """
        if url is None:
            return fail(StsConnectError("no STS HTTP URL"))
        log.info("Connecting to legacy HTTP STS: {url}", url=redact_url(url))
        try:
            parts = urlsplit(url)
            host = parts.hostname
            secure = parts.scheme.lower() == "https"
            port = parts.port or (443 if secure else 80)
            if parts.scheme.lower() not in ("http", "https") or not host:
                raise ValueError("not http(s)")
            head = request_head(url, uuid)
        except (ValueError, UnicodeEncodeError):
            return fail(StsConnectError("not a valid http:// or https:// URL"))
        factory = Factory.forProtocol(lambda: HttpStsProtocol(head, uuid, handler, secure, self._sample_rate))
        return self._dialer.dial(host, port, secure, factory)
