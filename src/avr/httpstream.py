"""
A streaming HTTP/1.1 client for the services avr talks to over plain HTTP: the legacy HTTP STS and the pipeline's
ASR, LLM and TTS (`avr.pipeline`).

Those exchanges are streams both ways: the legacy STS and the ASR take the caller's audio as a chunked request body
for the whole call while their response streams back at the same time; the LLM and TTS stream their answer while it
is being produced. twisted.web's `Agent` (and so treq) hands over the response only once the request body is
finished (``HTTP11ClientProtocol.request`` chains the response Deferred when the request is written or the response
complete), i.e. at the end of the call, and cannot abandon a response mid-body cleanly. So this module speaks the
little HTTP/1.1 these services need itself: a sans-IO `ResponseParser`, `request_head`, and `HttpExchange`, a thin
protocol for one request per connection (``Connection: close``) that hands the response to an `IHttpReceiver` as it
arrives. `StreamingHttpClient` opens exchanges: TCP or verified TLS (`avr.sts.tls`), connect timeout on the
injected clock, cancellation.
"""

from __future__ import annotations

from typing import Any, Sequence
from urllib.parse import urlsplit

from attrs import frozen
from twisted.internet.defer import Deferred, fail
from twisted.internet.interfaces import IHandshakeListener, IPushProducer, IReactorTime
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import Interface, implementer

from avr import __version__
from avr.failures import describe_failure
from avr.once import Once
from avr.sts.attempt import Dialer
from avr.sts.errors import StsConnectError
from avr.sts.tls import load_trust_root

log = Logger()

#: Largest response head (status line and headers) accepted.
MAX_HEAD_BYTES = 64 * 1024

_LINE_LIMIT = 4096


class HttpResponseError(Exception):
    """The response is not HTTP/1.x as expected; ``reason`` says how."""

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


class ChunkEnd:
    """One chunk of a chunked response body is complete (servers that write one message per chunk, like the ASR
    adapters' ``res.write(transcript)``, mark their messages this way)."""


CHUNK_END = ChunkEnd()

_HEAD, _CHUNK_SIZE, _CHUNK_DATA, _CHUNK_CRLF, _TRAILERS, _LENGTH, _UNTIL_CLOSE, _DONE = range(8)


class ResponseParser:
    """
    Sans-IO parser of one streamed HTTP/1.x response: `feed` bytes, get events back as soon as they are complete:
    a `ResponseHead`, then body data (``bytes``, as it arrives, not waiting for the end of its chunk) with a
    `CHUNK_END` after each chunk of a chunked body, then `RESPONSE_END`. Interim 1xx responses are skipped.
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
            elif state in (_CHUNK_DATA, _LENGTH):
                piece = bytes(buffer[:self._remaining])
                del buffer[:len(piece)]
                self._remaining -= len(piece)
                events.append(piece)
                if not self._remaining:
                    if state == _CHUNK_DATA:
                        self._state = _CHUNK_CRLF
                        events.append(CHUNK_END)
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



def request_head(url: str, headers: Sequence[tuple[str, str]], content_length: int | None = None,
                 method: str = "POST") -> bytes:
    """
    The head of a request to ``url`` on a connection of its own (``Connection: close``).

    :param headers: sent after ``Host``, in order (e.g. ``X-UUID``, ``Content-Type``).
    :param content_length: the length of a body sent at once; ``None``: a chunked body, streamed.
    :raises ValueError: ``url`` has no host.
    """
    parts = urlsplit(url)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    default_port = 443 if parts.scheme == "https" else 80
    host = parts.hostname or ""
    if not host:
        raise ValueError("no host in the URL")
    if ":" in host:
        host = f"[{host}]"
    if parts.port and parts.port != default_port:
        host = f"{host}:{parts.port}"
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}"]
    lines += [f"{name}: {value}" for name, value in headers]
    lines.append("Transfer-Encoding: chunked" if content_length is None else f"Content-Length: {content_length}")
    lines += ["Connection: close", f"User-Agent: avr/{__version__}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


class IHttpReceiver(Interface):
    """Gets one `HttpExchange`'s response as it arrives (all on the reactor thread, in order)."""

    def response_head(head: ResponseHead) -> None:
        """The status and headers (a non-2xx status is for the receiver to judge: the body follows as usual)."""

    def response_data(data: bytes) -> None:
        """A piece of the body, as soon as it arrived."""

    def response_chunk_end() -> None:
        """The chunk the last pieces belong to is complete (chunked bodies only)."""

    def response_ended(reason: str | None) -> None:
        """
        The exchange is over: ``None`` when the response arrived complete, else why not (the connection dropped,
        a malformed response, or ``close(reason)`` was called). Called exactly once per opened exchange.
        """


@implementer(IPushProducer, IHandshakeListener)
class HttpExchange(Protocol):
    """
    One HTTP/1.1 request on a connection of its own, and its streamed response.

    Open (for `when_opened`) once connected (http) or once the TLS handshake verified the peer (https); the head and
    a fixed body are written at connect. A streamed (chunked) body goes out one chunk per `send_body`; while the
    connection pushes back (paused) such data is dropped and counted, not queued: it is real-time audio, and stale
    audio is worse than a gap.

    :param head: the request head (`request_head`).
    :param body: the whole body, sent with the head; ``None``: a chunked body follows through `send_body`.
    :param receiver: gets the response.
    :param secure: the connection is TLS (open at the handshake rather than at connect).
    :param label: names the exchange in logs (e.g. ``ASR for call <uuid>``).
    :param peer: names the server in end reasons (``connection closed by the ASR``).
    :param call_id: the UUID of the call the exchange is for, logged as ``call_id``.
    """

    transport: Any  # a TCP or TLS transport: a producer consumer that can abort

    def __init__(self, head: bytes, body: bytes | None, receiver: IHttpReceiver, secure: bool,
                 label: str = "HTTP exchange", peer: str = "the server", call_id: str | None = None) -> None:
        self.label = label
        self.peer = peer
        self.call_id = call_id
        self._head = head
        self._body = body
        self._receiver = receiver
        self._secure = secure
        self._parser = ResponseParser()
        self._open = False
        self._ended = False
        self._body_finished = body is not None
        self._paused = False
        self._gone = False
        self._dropped_bytes = 0
        self._opening = Once()

    @property
    def ended(self) -> bool:
        """True once `IHttpReceiver.response_ended` was called (or the exchange never opened)."""
        return self._ended

    # -- opening

    def when_opened(self) -> Deferred:
        """Fires with this protocol once open; fails with the connection's end reason if it ends before."""
        return self._opening.wait()

    def connectionMade(self) -> None:
        """Send the request head (and a fixed body); plain http is open now."""
        self.transport.registerProducer(self, True)
        if self._body is None:
            self.transport.write(self._head)
        else:
            self.transport.writeSequence([self._head, self._body])
        if not self._secure:
            self._opened()

    def handshakeCompleted(self) -> None:
        """TLS is up and the peer verified: https is open now."""
        self._opened()

    def _opened(self) -> None:
        if self._open or self._ended:
            return
        self._open = True
        self._opening.fire(self)

    def abort(self) -> None:
        """Drop the connection at once."""
        if self.transport is not None:
            self.transport.abortConnection()

    # -- the request body

    def send_body(self, data: bytes) -> None:
        """Stream one chunk of a chunked request body (ignored before open, after the end, or when empty)."""
        if not self._open or self._ended or self._body_finished or not data:
            return
        if self._paused:
            self._dropped_bytes += len(data)
            return
        self.transport.writeSequence([b"%x\r\n" % len(data), data, b"\r\n"])

    def end_body(self) -> None:
        """Finish a chunked request body (the response may go on)."""
        if self._body_finished or self._ended or not self._open:
            return
        self._body_finished = True
        self.transport.write(b"0\r\n\r\n")

    def close(self, reason: str = "closed") -> None:
        """
        End the exchange now: finish the request body, stop reading the response and close the connection;
        `IHttpReceiver.response_ended` gets ``reason`` before this returns. Idempotent.
        """
        self._end(reason)

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

    # -- the response

    def dataReceived(self, data: bytes) -> None:
        """Parse the response and hand it to the receiver as it arrives."""
        if self._ended:
            return
        try:
            events = self._parser.feed(data)
        except HttpResponseError as e:
            self._end(f"bad response from {self.peer} ({e.reason})")
            return
        self._deliver(events)

    def _deliver(self, events: list[Any]) -> None:
        receiver = self._receiver
        for event in events:
            if self._ended:
                return
            try:
                if isinstance(event, bytes):
                    if event:
                        receiver.response_data(event)
                elif isinstance(event, ResponseHead):
                    receiver.response_head(event)
                elif event is CHUNK_END:
                    receiver.response_chunk_end()
                else:
                    self._end(None)
            except Exception:
                log.failure("{label}: the receiver failed to handle the response", label=self.label,
                            call_id=self.call_id)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """End the exchange (or fail the opening) with the reason."""
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
        self._end(f"connection closed by {self.peer}")

    def _end(self, reason: str | None) -> None:
        if self._ended:
            return
        self._ended = True
        if not self._gone and self.transport is not None:
            if not self._body_finished and self._open:
                self._body_finished = True
                self.transport.write(b"0\r\n\r\n")
            self.transport.unregisterProducer()
            self.transport.loseConnection()
        if self._dropped_bytes:
            log.warn("{label}: {dropped} bytes of the request body dropped (connection too slow)",
                     label=self.label, dropped=self._dropped_bytes, call_id=self.call_id)
        try:
            self._receiver.response_ended(reason)
        except Exception:
            log.failure("{label}: the receiver failed to handle the end", label=self.label, call_id=self.call_id)


class StreamingHttpClient:
    """
    Opens `HttpExchange`\\ s: one connection per request, ``http://`` or ``https://`` (chain and host name verified).

    :param reactor: for TCP connections and the connect timeout (IReactorTCP + IReactorTime).
    :param connect_timeout: seconds until the request is on the wire (https: until the peer is verified).
    :param trust_root: ``None`` to trust the platform's CAs for https://, or a PEM CA file (read now;
        `avr.config.ConfigError` if unusable).
    """

    def __init__(self, reactor: IReactorTime, connect_timeout: float = 5.0, trust_root: str | None = None) -> None:
        self._dialer = Dialer(reactor, connect_timeout, load_trust_root(trust_root))

    def post(self, url: str, headers: Sequence[tuple[str, str]], body: bytes | None, receiver: IHttpReceiver,
             label: str = "HTTP exchange", peer: str = "the server", call_id: str | None = None) -> Deferred:
        """
        POST to ``url``: ``body`` at once (with ``Content-Length``), or ``None`` for a chunked body streamed with
        `HttpExchange.send_body`; ``label``, ``peer`` and ``call_id`` as for `HttpExchange`.

        :return: a Deferred firing with the open `HttpExchange`, or failing with `StsConnectError` (bad URL,
            refused, timed out, TLS); cancelling it abandons the attempt.
        """
        try:
            parts = urlsplit(url)
            host = parts.hostname
            secure = parts.scheme.lower() == "https"
            port = parts.port or (443 if secure else 80)
            if parts.scheme.lower() not in ("http", "https") or not host:
                raise ValueError("not http(s)")
            head = request_head(url, headers, None if body is None else len(body))
        except (ValueError, UnicodeEncodeError):
            return fail(StsConnectError("not a valid http:// or https:// URL"))
        factory = Factory.forProtocol(lambda: HttpExchange(head, body, receiver, secure, label, peer, call_id))
        return self._dialer.dial(host, port, secure, factory)
