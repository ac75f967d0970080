"""
avr's HTTP site (avr.http.site): the API key and the declared body length are checked when the headers are in,
before any of the body is read; a chunked body is refused the moment it passes the route's limit. In memory (the
channel on a StringTransport, time on a MemoryReactorClock) and over loopback against `avr.service.build`.
"""

from __future__ import annotations

import json
import tempfile
from typing import Any, Iterator

import pytest
import pytest_twisted
from klein import Klein
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import ITCPTransport
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from zope.interface import implementer

from avr.admissions import Admissions
from avr.config import Config
from avr.control.call_registry import CallRegistry
from avr.control.hub import EventsHub
from avr.control.routes import MAX_UPLOAD_BYTES, ControlRoutes
from avr.control.tasks import TaskGroup
from avr.http.core import CoreRoutes
from avr.http.json import install_error_handlers
from avr.http.site import LINGER_SECONDS, AvrSite, RequestGate
from avr.registrations import Registrations
from avr.service import build, sts_connectors
from avr.sts.connector import StsConnector
from avr.testing.webhooks import FakeWebhooks
from tests.raw_http import connect, status_of
from tests.test_http_core import no_connection_expected

KEY = "site-key"
MAX_BODY = 64 * 1024
U = "935652e3-7c59-4edc-b17f-9646a9c2a265"
CALL = json.dumps({"uuid": U, "payload": {}}).encode()


@implementer(ITCPTransport)
class TcpStringTransport(StringTransport):
    """A StringTransport that, like TCP, can close its write side alone."""

    write_closed = False

    def loseWriteConnection(self) -> None:
        self.write_closed = True

    def setTcpNoDelay(self, enabled: bool) -> None:
        """HTTPChannel sets it on TCP connections."""


@pytest.fixture
def spooled(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Any]]:
    """Every temporary file twisted.web creates for a request body (bodies of 100 KB or more, or chunked)."""
    files: list[Any] = []
    real = tempfile.TemporaryFile

    def spy(*args: Any, **kwargs: Any) -> Any:
        files.append(real(*args, **kwargs))
        return files[-1]

    monkeypatch.setattr(tempfile, "TemporaryFile", spy)
    yield files


class Server:
    """avr's routes (API key set, ARI not configured) on an AvrSite, one connection at a time in memory."""

    def __init__(self) -> None:
        self.reactor = MemoryReactorClock()
        self.registrations = Registrations(Admissions(self.reactor), 60, no_connection_expected)
        app = Klein()
        install_error_handlers(app)
        core = CoreRoutes(None, self.registrations, FakeWebhooks(), MAX_BODY, KEY)
        hub = EventsHub(self.reactor, ping_interval=0)
        control = ControlRoutes(None, hub, CallRegistry(self.reactor, hub, TaskGroup(self.reactor)), MAX_BODY, KEY,
                                self.reactor)
        core.install(app)
        control.install(app)
        gate = RequestGate(app.url_map, KEY, MAX_BODY, {**core.policies(), **control.policies()})
        self.site = AvrSite(app.resource(), gate, reactor=self.reactor)

    def connect(self) -> tuple[Any, TcpStringTransport]:
        channel = self.site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        transport = TcpStringTransport()
        channel.makeConnection(transport)
        return channel, transport


def head(method: str, target: str, *headers: str) -> bytes:
    return (f"{method} {target} HTTP/1.1\r\nHost: avr\r\n" + "".join(h + "\r\n" for h in headers) + "\r\n").encode()


def response(transport: StringTransport) -> tuple[int, dict[str, str], bytes]:
    """Status, headers (lower-case names) and body of the one response written."""
    raw_head, _, body = transport.value().partition(b"\r\n\r\n")
    lines = raw_head.decode("latin-1").split("\r\n")
    headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, body


def test_a_big_upload_without_the_key_is_refused_before_its_body(spooled: list[Any]) -> None:
    """
    500 MB declared, no key: 401 JSON the moment the headers are in, ``Connection: close``, nothing spooled; what
    the client goes on sending is discarded, and the connection is cut after the linger time.
    """
    server = Server()
    channel, transport = server.connect()
    channel.dataReceived(head("POST", "/call", "Content-Length: 500000000", "Content-Type: application/json")
                         + b"x" * 65536)
    status, headers, body = response(transport)
    assert status == 401 and json.loads(body) == {
        "error": "API key required: send it as header X-API-Key, Authorization: Bearer <key> or query parameter "
                 "api_key"}
    assert headers["connection"] == "close" and headers["content-type"] == "application/json"
    assert int(headers["content-length"]) == len(body)
    assert transport.write_closed and spooled == []
    answered = transport.value()
    for _ in range(16):
        channel.dataReceived(b"x" * 65536)
    assert transport.value() == answered and spooled == [] and len(server.registrations) == 0
    assert not transport.disconnecting
    server.reactor.advance(LINGER_SECONDS)
    assert transport.disconnected
    channel.connectionLost(Failure(ConnectionDone()))
    assert server.reactor.getDelayedCalls() == []


def test_expect_100_continue_gets_the_refusal_instead() -> None:
    """A client that waits for "100 Continue" gets the 401 and never sends its body; no 100 follows the answer."""
    server = Server()
    channel, transport = server.connect()
    channel.dataReceived(head("POST", "/calls", "Content-Length: 9000000", "Expect: 100-continue",
                              "X-API-Key: wrong"))
    assert transport.value().startswith(b"HTTP/1.1 401 ") and b"100 Continue" not in transport.value()
    assert json.loads(response(transport)[2]) == {"error": "invalid API key"}
    channel.connectionLost(Failure(ConnectionDone()))
    assert server.reactor.getDelayedCalls() == []


@pytest.mark.parametrize(("target", "length", "limit"), [
    ("/call", MAX_BODY + 1, MAX_BODY),
    ("/calls", MAX_BODY + 1, MAX_BODY),
    ("/calls/c1/play/file", MAX_UPLOAD_BYTES + 1, MAX_UPLOAD_BYTES),
])
def test_a_declared_length_over_the_route_limit_is_413(target: str, length: int, limit: int,
                                                       spooled: list[Any]) -> None:
    """With the key, a Content-Length over the route's limit is 413 (naming the limit) before the body."""
    server = Server()
    channel, transport = server.connect()
    channel.dataReceived(head("POST", target, f"Content-Length: {length}", f"X-API-Key: {KEY}") + b"x" * 1000)
    status, _, body = response(transport)
    assert status == 413 and json.loads(body) == {
        "error": f"request body is larger than the limit of {limit} bytes", "limit": limit}
    assert spooled == []
    channel.connectionLost(Failure(ConnectionDone()))


def test_a_chunked_body_is_refused_when_it_passes_the_limit(spooled: list[Any]) -> None:
    """Chunked (no declared length): counted as it arrives, 413 as soon as it exceeds the limit, no more kept."""
    server = Server()
    channel, transport = server.connect()
    channel.dataReceived(head("POST", "/call", "Transfer-Encoding: chunked", f"X-API-Key: {KEY}"))
    chunk = b"%x\r\n%s\r\n" % (16384, b"x" * 16384)
    for _ in range(4):
        channel.dataReceived(chunk)
    assert transport.value() == b""  # 64 KB: at the limit, still fine
    channel.dataReceived(chunk + chunk + b"0\r\n\r\n")
    status, _, body = response(transport)
    assert status == 413 and json.loads(body)["limit"] == MAX_BODY
    assert all(f.closed for f in spooled)
    channel.connectionLost(Failure(ConnectionDone()))
    assert server.reactor.getDelayedCalls() == []


def test_acceptable_requests_are_served_as_before() -> None:
    """Key and size fine: served, on a connection that stays open; an upload within its limit is not refused early;
    open routes need no key even with a body; a request without a body is left to its route (401 there)."""
    server = Server()
    channel, transport = server.connect()
    channel.dataReceived(head("POST", "/call", f"Content-Length: {len(CALL)}", f"X-API-Key: {KEY}") + CALL)
    assert response(transport)[0] == 200 and U in server.registrations
    transport.clear()
    channel.dataReceived(head("GET", "/health", "Content-Length: 2") + b"{}")
    assert response(transport)[0] == 200
    transport.clear()
    channel.dataReceived(head("GET", "/calls"))
    assert response(transport)[0] == 401
    assert not transport.disconnecting and not transport.write_closed
    transport.clear()
    channel.dataReceived(head("POST", "/calls/c1/play/file", f"Content-Length: {2 * MAX_BODY}",
                              f"X-API-Key: {KEY}", "Content-Type: audio/wav") + b"x" * MAX_BODY)
    assert transport.value() == b""  # within the upload limit: its body is being received
    channel.connectionLost(Failure(ConnectionDone()))


def test_a_body_to_an_unknown_route_needs_the_key() -> None:
    """No route matches: the key is still required before the body (401, not a 404 after reading it)."""
    server = Server()
    channel, transport = server.connect()
    channel.dataReceived(head("POST", "/no/such/route", "Content-Length: 100000"))
    assert response(transport)[0] == 401
    channel.connectionLost(Failure(ConnectionDone()))


@pytest_twisted.ensureDeferred
async def test_loopback_big_unauthenticated_upload_is_answered_at_once(spooled: list[Any]) -> None:
    """
    A real `twistd`-style service on 127.0.0.1: a 500 MB upload without the key gets its 401 after 1 MB has been
    sent, then the end of the stream; nothing is spooled to disk. A chunked upload with the key is cut at the limit.
    """
    from treq.client import HTTPClient
    from twisted.internet import reactor
    from twisted.web.client import Agent, HTTPConnectionPool

    pool = HTTPConnectionPool(reactor, persistent=False)
    config = Config(port=0, http_port=0, api_key=KEY)
    avr = build(reactor, config, http_client=HTTPClient(Agent(reactor, pool=pool)),
                sts_connector=StsConnector(sts_connectors(reactor, config)))
    avr.service.startService()
    port = avr.service.getServiceNamed("http").port.getHost().port
    try:
        client = await connect(reactor, port)
        client.transport.write(head("POST", "/call", "Content-Length: 500000000") + b"x" * 1024 * 1024)
        answer = await client.closed.addTimeout(5, reactor)
        chunked = await connect(reactor, port)
        chunked.transport.write(head("POST", "/call", "Transfer-Encoding: chunked", f"X-API-Key: {KEY}")
                                + (b"10000\r\n" + b"x" * 65536 + b"\r\n") * 4)
        too_big = await chunked.closed.addTimeout(5, reactor)
    finally:
        await avr.service.stopService()
        await pool.closeCachedConnections()
    assert status_of(answer) == 401 and answer.endswith(b'"}')
    assert status_of(too_big) == 413
    assert all(f.closed for f in spooled)
