"""
Fake speech-to-speech services, behaving like the real AVR STS peers (avr-sts-* connectors), for tests and benchmarks.

`FakeStsServerFactory` speaks the AVR STS WebSocket protocol: it records what each connection receives (decoded), checks
that ``init`` comes first (audio before it is recorded as a violation and, like the real peers, not answered), sends
scripted messages on command, and can echo caller audio back. Its ``echo`` mode reflects each ``audio`` frame as-is,
without decoding it (``record_audio=False`` also skips recording it), which keeps the fake cheap under load.

`FakeHttpStsResource` is the legacy HTTP STS (one streaming POST per call, ``X-UUID`` header, raw PCM both ways).
Serve it with `fake_http_sts_site` so that it sees the request body as it arrives, like the real (Express) peers:
plain twisted.web only renders a request once its body is complete, which for this protocol is the end of the call.

`RecordingStsHandler` is an `IStsHandler` that records what a session delivers (with Deferreds to await it), and
`make_certificates` makes a throw-away CA and server certificate for wss:// and https:// fakes.

autobahn's own timers are disabled (they would run on the global reactor), so the fake works on a `MemoryReactorClock`
with `twisted.test.iosim` as well as on real loopback sockets.
"""

from __future__ import annotations

import datetime
import ipaddress
from typing import Any, Callable, Sequence, cast
from urllib.parse import parse_qs

from attrs import frozen

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.protocol import WebSocketProtocol
from autobahn.websocket.types import ConnectionDeny
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, load_pem_private_key
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import ITCPTransport
from twisted.internet.protocol import connectionDone
from twisted.internet.ssl import CertificateOptions
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.http import HTTPChannel
from twisted.web.server import NOT_DONE_YET, Request, Site
from zope.interface import implementer

from avr.interfaces import IStsHandler
from avr.once import Once
from avr.sts.codec import (
    ActionResult,
    AudioMessage,
    DtmfDigit,
    Init,
    StsProtocolError,
    decode_client_message,
    encode_audio,
    encode_dtmf_request,
    encode_error,
    encode_hangup,
    encode_interruption,
    encode_transcript,
    encode_transfer,
)
from avr.wsclock import disable_autobahn_timers

log = Logger()

_AUDIO_PREFIX = b'{"type":"audio",'


def _chunks(pcm: bytes, chunk_size: int | None) -> list[bytes]:
    if not chunk_size or chunk_size >= len(pcm):
        return [pcm]
    return [pcm[i:i + chunk_size] for i in range(0, len(pcm), chunk_size)]


class _Sessions:
    """"The session of call X" (or the first session, key ``None``), for whoever waits for it."""

    def __init__(self) -> None:
        self._by_uuid: dict[str | None, Once] = {}

    def wait(self, uuid: str | None) -> Deferred:
        return self._by_uuid.setdefault(uuid, Once()).wait()

    def arrived(self, uuid: str | None, session: Any) -> None:
        for key in (uuid, None):
            self._by_uuid.setdefault(key, Once()).fire(session)


@implementer(IStsHandler)
class RecordingStsHandler:
    """
    An `IStsHandler` that records what a session delivers, as ``(kind, *args)`` tuples in ``events``.

    `wait_for` gives Deferreds for integration tests ("the second audio chunk arrived", "the session closed").
    """

    def __init__(self) -> None:
        self.events: list[tuple] = []
        self._waiting: list[tuple[str, int, Deferred]] = []

    @property
    def audio(self) -> bytes:
        """All agent audio received, concatenated."""
        return b"".join(e[1] for e in self.events if e[0] == "audio")

    @property
    def closed(self) -> list[str]:
        """The reasons given to `sts_closed` (one, once the session ended)."""
        return [e[1] for e in self.events if e[0] == "closed"]

    def count(self, kind: str) -> int:
        """How many events of ``kind`` arrived."""
        return sum(1 for e in self.events if e[0] == kind)

    def wait_for(self, kind: str, count: int = 1) -> Deferred:
        """A Deferred firing with ``events`` once ``count`` events of ``kind`` arrived (audio: ``count`` bytes)."""
        d: Deferred = Deferred()
        self._waiting.append((kind, count, d))
        self._check()
        return d

    def _check(self) -> None:
        ready: list[Deferred] = []
        still: list[Deferred] = []
        for kind, count, d in self._waiting:
            have = len(self.audio) if kind == "audio" else self.count(kind)
            (ready if have >= count else still).append(d)
        self._waiting = [w for w in self._waiting if w[2] in still]
        for d in ready:
            d.callback(self.events)

    def _add(self, *event: Any) -> None:
        self.events.append(event)
        self._check()

    def sts_audio(self, pcm: bytes) -> None:
        """Record agent audio."""
        self._add("audio", pcm)

    def sts_interruption(self) -> None:
        """Record an interruption."""
        self._add("interruption")

    def sts_transcript(self, role: str, text: str) -> None:
        """Record a transcript."""
        self._add("transcript", role, text)

    def sts_error(self, message: str) -> None:
        """Record an error."""
        self._add("error", message)

    def sts_action(self, request: Any) -> None:
        """Record an action request."""
        self._add("action", request)

    def sts_closed(self, reason: str) -> None:
        """Record the end of the session."""
        self._add("closed", reason)


class FakeStsServerProtocol(WebSocketServerProtocol):
    """
    One connection to the fake STS: what it received, and commands to script the STS side.

    :ivar path: the URL path of the handshake (e.g. ``/``).
    :ivar params: the query parameters, as ``{name: [values]}``.
    :ivar headers: the handshake's HTTP headers (lower-case names).
    :ivar uuid: the UUID from ``init`` (``None`` until then).
    :ivar messages: every decoded client message in order (`Init`, `AudioMessage`, `DtmfDigit`, `UnknownMessage`);
        audio echoed in lean mode (``record_audio=False``) is only counted.
    :ivar audio_messages: how many ``audio`` messages arrived.
    :ivar violations: protocol problems seen (audio before ``init``, duplicate ``init``, binary or undecodable frames).
    :ivar close_info: ``(was_clean, code, reason)`` once closed.
    """

    def __init__(self) -> None:
        super().__init__()
        self.path: str | None = None
        self.params: dict[str, list[str]] = {}
        self.headers: dict[str, str] = {}
        self.uuid: str | None = None
        self.messages: list[Any] = []
        self.audio_messages = 0
        self.violations: list[str] = []
        self.close_info: tuple[bool, int | None, str | None] | None = None
        self._closed = Once()
        self._result_waiters: list[tuple[int, Deferred]] = []

    # -- what was received

    @property
    def received_audio(self) -> bytes:
        """All recorded caller audio, concatenated."""
        return b"".join(m.pcm for m in self.messages if isinstance(m, AudioMessage))

    @property
    def dtmf(self) -> list[str]:
        """The DTMF digits received, in order."""
        return [m.digit for m in self.messages if isinstance(m, DtmfDigit)]

    @property
    def action_results(self) -> list[ActionResult]:
        """The ``action_result`` messages received, in order."""
        return [m for m in self.messages if isinstance(m, ActionResult)]

    def when_result(self, count: int = 1) -> Deferred:
        """A Deferred firing with `action_results` once ``count`` of them arrived."""
        d: Deferred = Deferred()
        self._result_waiters.append((count, d))
        self._check_results()
        return d

    def _check_results(self) -> None:
        have = len(self.action_results)
        for entry in [w for w in self._result_waiters if w[0] <= have]:
            self._result_waiters.remove(entry)
            entry[1].callback(self.action_results)

    @property
    def is_connected(self) -> bool:
        """True while the WebSocket is open."""
        return getattr(self, "state", None) == WebSocketProtocol.STATE_OPEN

    def when_closed(self) -> Deferred:
        """A Deferred firing with ``(was_clean, code, reason)`` when the connection is closed."""
        return self._closed.wait()

    # -- scripting the STS side

    def send_audio(self, pcm: bytes, chunk_size: int | None = None) -> None:
        """Send agent audio, in messages of ``chunk_size`` bytes (default: one message)."""
        for chunk in _chunks(pcm, chunk_size):
            self.sendMessage(encode_audio(chunk), isBinary=False)

    def send_interruption(self) -> None:
        """Send ``interruption``."""
        self.sendMessage(encode_interruption(), isBinary=False)

    def send_transcript(self, role: str, text: str) -> None:
        """Send a ``transcript``."""
        self.sendMessage(encode_transcript(role, text), isBinary=False)

    def send_error(self, message: str | None = "error") -> None:
        """Send ``error`` (``None``: without a ``message`` field)."""
        self.sendMessage(encode_error(message), isBinary=False)

    def send_hangup(self, reason: str | None = None) -> None:
        """Ask avr to hang up the call (control message ``hangup``)."""
        self.sendMessage(encode_hangup(reason), isBinary=False)

    def send_transfer(self, **fields: Any) -> None:
        """Ask avr to transfer the caller (control message ``transfer``: ``endpoint=...`` or ``context=...``)."""
        self.sendMessage(encode_transfer(**fields), isBinary=False)

    def send_dtmf_request(self, digits: str) -> None:
        """Ask avr to send DTMF to the caller (control message ``dtmf``)."""
        self.sendMessage(encode_dtmf_request(digits), isBinary=False)

    def send_raw(self, payload: bytes | str, binary: bool = False) -> None:
        """Send any frame (unknown types, malformed JSON, binary frames)."""
        data = payload.encode("utf-8") if isinstance(payload, str) else payload
        self.sendMessage(data, isBinary=binary)

    def close(self, code: int = 1000, reason: str | None = None) -> None:
        """
        Start the closing handshake, as a peer does after an error or when the provider session ends. Any valid code
        (e.g. 1011, which Node's ``ws`` sends and autobahn's ``sendClose`` would refuse).
        """
        self.sendCloseFrame(code=code, reasonUtf8=reason.encode("utf-8")[:123] if reason else None, isReply=False)

    def drop(self) -> None:
        """Drop the TCP connection without a closing handshake (a crash)."""
        cast(ITCPTransport, self.transport).abortConnection()

    # -- autobahn callbacks

    def connectionMade(self) -> None:
        """Count the connection from its first byte (TLS or handshake failures included)."""
        super().connectionMade()
        self.factory.connections.append(self)

    def onConnect(self, request: Any) -> None:
        """Record the handshake; refuse it if the factory says so."""
        self.path = request.path
        self.params = dict(request.params)
        self.headers = dict(request.headers)
        if self.factory.reject is not None:
            code, reason = self.factory.reject
            raise ConnectionDeny(code, reason)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        """Record (and in echo mode reflect) one client message."""
        factory = self.factory
        if isBinary:
            self.violations.append(f"binary frame of {len(payload)} bytes")
            return
        if factory.echo and self.uuid is not None and payload.startswith(_AUDIO_PREFIX):
            # Lean path: the client's frame goes back unchanged (same JSON shape both ways).
            self.audio_messages += 1
            self.sendMessage(payload, isBinary=False)
            if factory.record_audio:
                self._record(payload)
            return
        message = self._record(payload)
        if message is None:
            return
        if isinstance(message, AudioMessage):
            self.audio_messages += 1
            if factory.echo and self.uuid is not None:
                self.sendMessage(encode_audio(message.pcm), isBinary=False)

    def _record(self, payload: bytes) -> Any:
        try:
            message = decode_client_message(payload)
        except StsProtocolError as e:
            self.violations.append(f"undecodable message: {e.reason}")
            return None
        if isinstance(message, Init):
            if self.uuid is None:
                self.uuid = message.uuid
                self.messages.append(message)
                self.factory._session_started(self)
                return message
            self.violations.append("duplicate init")
        elif self.uuid is None:
            kind = type(message).__name__
            self.violations.append(f"{kind} before init")
        self.messages.append(message)
        if isinstance(message, ActionResult):
            self._check_results()
        return message

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        """Record the close and wake whoever waits for it."""
        self.close_info = (wasClean, code, reason)
        self._closed.fire(self.close_info)


class FakeStsServerFactory(WebSocketServerFactory):
    """
    The fake AVR STS WebSocket server.

    :param reactor: the reactor the server runs on (a `MemoryReactorClock` in unit tests).
    :param echo: send each ``audio`` message back to the client (after ``init``).
    :param record_audio: keep received audio in ``messages`` (turn off in benchmarks).
    :param reject: ``(status, reason)`` to refuse every handshake with that HTTP status.
    :param on_session: called with the connection right after its ``init`` arrived (e.g. to send a greeting).
    :ivar connections: every TCP connection, in order of arrival (`FakeStsServerProtocol.when_closed` tells when each
        is gone).
    """

    protocol = FakeStsServerProtocol

    def __init__(
        self,
        reactor: Any,
        echo: bool = False,
        record_audio: bool = True,
        reject: tuple[int, str] | None = None,
        on_session: Callable[[FakeStsServerProtocol], None] | None = None,
    ) -> None:
        super().__init__(reactor=reactor)
        disable_autobahn_timers(self)
        self.echo = echo
        self.record_audio = record_audio
        self.reject = reject
        self.on_session = on_session
        self.connections: list[FakeStsServerProtocol] = []
        self._sessions = _Sessions()

    @property
    def open_connections(self) -> list[FakeStsServerProtocol]:
        """The connections whose WebSocket is open."""
        return [c for c in self.connections if c.is_connected]

    def session_opened(self, uuid: str | None = None) -> Deferred:
        """A Deferred firing with the connection once its ``init`` for ``uuid`` arrived (``None``: the first one)."""
        return self._sessions.wait(uuid)

    def _session_started(self, connection: FakeStsServerProtocol) -> None:
        if self.on_session is not None:
            self.on_session(connection)
        self._sessions.arrived(connection.uuid, connection)


# -- legacy HTTP STS


class FakeHttpStsSession:
    """
    One POST to the fake legacy HTTP STS.

    :ivar uuid: the ``X-UUID`` header (``None`` if missing, which is recorded in ``violations``).
    :ivar path: the request path; ``args`` its query.
    :ivar received: all the caller audio received so far; ``chunks``: the sizes of the pieces as they arrived.
    :ivar body_ended: the client finished the request body.
    """

    def __init__(self, request: Request, resource: FakeHttpStsResource) -> None:
        self.request = request
        self._resource = resource
        uuids = request.requestHeaders.getRawHeaders(b"x-uuid")
        self.uuid: str | None = uuids[0].decode("utf-8", "replace") if uuids else None
        self.path = request.path.decode("utf-8", "replace")
        self.args = {k.decode(): [v.decode() for v in vs] for k, vs in (request.args or {}).items()}
        self.received = bytearray()
        self.chunks: list[int] = []
        self.body_ended = False
        self.violations: list[str] = [] if self.uuid else ["no X-UUID header"]
        self._finished = False
        self._ended = Once()
        request.notifyFinish().addBoth(self._request_done)

    def body_chunk(self, data: bytes) -> None:
        """A piece of the request body arrived (caller audio)."""
        if not data:
            return
        self.received += data
        self.chunks.append(len(data))
        if self._resource.echo and not self._finished:
            self.request.write(data)

    def body_end(self) -> None:
        """The client finished the request (the call ended): end the response too, as the real peers do."""
        self.body_ended = True
        self._ended.fire(self)
        self.finish()

    def send_audio(self, pcm: bytes, chunk_size: int | None = None) -> None:
        """Stream agent audio in the response, in pieces of ``chunk_size`` bytes."""
        for chunk in _chunks(pcm, chunk_size):
            if not self._finished:
                self.request.write(chunk)

    def finish(self) -> None:
        """End the response (idempotent)."""
        if not self._finished:
            self._finished = True
            self.request.finish()

    def drop(self) -> None:
        """Drop the connection (a crash)."""
        self._finished = True
        self._ended.fire(self)
        cast(ITCPTransport, self.request.channel.transport).abortConnection()

    def when_ended(self) -> Deferred:
        """A Deferred firing with this session once the request body ended or the connection went away."""
        return self._ended.wait()

    def _request_done(self, result: Any) -> None:
        # Fires on a finished response and (with a Failure) on a lost connection: both end the session.
        self._finished = True
        self._ended.fire(self)


class FakeHttpStsResource(Resource):
    """
    The fake legacy HTTP STS: answers every POST with a streamed ``200`` (or ``status``), echoing the caller's PCM back
    as it arrives when ``echo`` is set, or what a test sends with `FakeHttpStsSession.send_audio`.

    :ivar sessions: every request, in order.
    """

    isLeaf = True

    def __init__(self, echo: bool = True, status: int = 200) -> None:
        super().__init__()
        self.echo = echo
        self.status = status
        self.sessions: list[FakeHttpStsSession] = []
        self._sessions = _Sessions()
        self._channels: set[Any] = set()
        self._idle_waiters: list[Deferred] = []

    def session_opened(self, uuid: str | None = None) -> Deferred:
        """A Deferred firing with the session once the POST for ``uuid`` (``None``: the first one) arrived."""
        return self._sessions.wait(uuid)

    def when_disconnected(self) -> Deferred:
        """A Deferred firing once no connection (of a `fake_http_sts_site`) is open any more."""
        d: Deferred = Deferred()
        if self._channels:
            self._idle_waiters.append(d)
        else:
            d.callback(None)
        return d

    def _channel_lost(self, channel: Any) -> None:
        self._channels.discard(channel)
        if not self._channels:
            waiters, self._idle_waiters = self._idle_waiters, []
            for d in waiters:
                d.callback(None)

    def render_POST(self, request: Request) -> Any:
        """Start a session; the body is delivered to it as it arrives (with `fake_http_sts_site`)."""
        session = FakeHttpStsSession(request, self)
        self.sessions.append(session)
        request.setHeader(b"connection", b"close")
        if self.status != 200:
            request.setResponseCode(self.status)
            request.setHeader(b"content-type", b"text/plain")
            request.write(b"fake STS refuses the call\n")
            session.finish()
        else:
            request.setHeader(b"content-type", b"application/octet-stream")
        if isinstance(request, _StreamingRequest):
            request.body_sink = session
        else:
            assert request.content is not None  # the whole body, read before rendering
            session.body_chunk(request.content.read())
            session.body_end()
        self._sessions.arrived(session.uuid, session)
        return NOT_DONE_YET


class _StreamingRequest(Request):
    """
    A request rendered as soon as its headers are in, whose body then goes to ``body_sink`` piece by piece.

    twisted.web has no public API for this; the request line is read from the channel's (private, long-stable)
    ``_command``/``_path``/``_version``. One request per connection, as in the legacy STS protocol.
    """

    body_sink: FakeHttpStsSession | None = None
    _streaming = False
    _body_done = False

    def gotLength(self, length: int | None) -> None:
        super().gotLength(length)
        channel = self.channel
        self.method, self.uri, self.clientproto = channel._command, channel._path, channel._version
        self.path, _, query = self.uri.partition(b"?")
        self.args = parse_qs(query, keep_blank_values=True) if query else {}
        channel.persistent = False
        self._streaming = True
        self.process()

    def handleContentChunk(self, data: bytes) -> None:
        if self.body_sink is not None:
            self.body_sink.body_chunk(data)
        elif not self._streaming:
            super().handleContentChunk(data)

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        if not self._streaming:
            super().requestReceived(command, path, version)
            return
        self._body_done = True
        if self.body_sink is not None:
            self.body_sink.body_end()

    def finish(self) -> None:
        if self._streaming and not self._body_done and self.channel is not None:
            # The response ends before the request body: ignore the rest of the body (the connection closes).
            self.channel.dataReceived = lambda data: None  # type: ignore[method-assign]  # as avr.http.site does
        super().finish()


class _TrackedChannel(HTTPChannel):
    """An HTTP/1.1 channel that tells its fake resource when the connection is gone."""

    site: Site  # set by the site that built it, a `fake_http_sts_site`

    def connectionMade(self) -> None:
        super().connectionMade()
        cast(FakeHttpStsResource, self.site.resource)._channels.add(self)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        super().connectionLost(reason)
        cast(FakeHttpStsResource, self.site.resource)._channel_lost(self)


def fake_http_sts_site(resource: FakeHttpStsResource, reactor: Any) -> Site:
    """
    A `Site` serving ``resource`` with streaming request bodies (see the module docstring), HTTP/1.1 only, whose
    connections `FakeHttpStsResource.when_disconnected` can wait for.
    """
    site = Site(resource, reactor=reactor)
    site.requestFactory = _StreamingRequest
    # HTTP/1.1 only: the channel itself rather than Twisted's wrapper that picks HTTP/1.1 or HTTP/2.
    site.protocol = _TrackedChannel  # type: ignore[method-assign,assignment]
    return site


# -- TLS for fake servers


@frozen
class FakeCertificates:
    """
    A throw-away CA and a server certificate it signed, for wss:// and https:// fakes.

    :ivar ca_pem: the CA certificate (what a client trusts, e.g. via STS_CA_FILE).
    :ivar server_pem: the server's private key and certificate, PEM.
    """

    ca_pem: bytes
    server_pem: bytes

    def server_options(self) -> Any:
        """`CertificateOptions` for ``listenSSL`` / `twisted.internet.endpoints.SSL4ServerEndpoint`."""
        # cryptography objects, not pyOpenSSL's (deprecated there): pyOpenSSL's Context takes both.
        # Twisted annotates pyOpenSSL's PKey and X509 only.
        return CertificateOptions(
            privateKey=load_pem_private_key(self.server_pem, password=None),  # type: ignore[arg-type]
            certificate=x509.load_pem_x509_certificate(self.server_pem),  # type: ignore[arg-type]
        )


def make_certificates(
    dns_names: Sequence[str] = ("localhost",), ips: Sequence[str] = ("127.0.0.1",)
) -> FakeCertificates:
    """A fresh CA and a server certificate valid for ``dns_names`` and ``ips`` (valid from a day ago for two days)."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "avr fake STS CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name).issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = [x509.DNSName(n) for n in dns_names]
    names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, (list(dns_names) + list(ips))[0])]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key_pem = key.private_bytes(Encoding.PEM, PrivateFormat.TraditionalOpenSSL, NoEncryption())
    return FakeCertificates(ca.public_bytes(Encoding.PEM), key_pem + leaf.public_bytes(Encoding.PEM))
