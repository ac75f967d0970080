"""
The fake Asterisk over real loopback sockets: REST with a persistent treq pool, the events WebSocket through the
twisted.web resource with a real autobahn client, the 101 handshake bytes, externalMedia's real AudioSocket TCP
connection, and the restart sequence (EOF without close frame, refused, 404, back). The fake's own time runs on a
``task.Clock`` the test advances, so nothing waits on wall-clock time.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
import pytest_twisted
import treq
from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from fake_ari_harness import load_fixture
from twisted.internet import defer
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.web.client import Agent, HTTPConnectionPool

from avr.testing.ari import FakeAsterisk

pytestmark = pytest.mark.integration
TIMEOUT = 5


class Client(WebSocketClientProtocol):
    """Events client: ``opened``, ``closed`` and per-event Deferreds."""

    def __init__(self) -> None:
        super().__init__()
        self.events: list[dict] = []
        self.opened: defer.Deferred = defer.Deferred()
        self.closed: defer.Deferred = defer.Deferred()
        self._waiting: list[tuple[str, defer.Deferred]] = []

    def onOpen(self) -> None:
        """Fire ``opened``."""
        self.opened.callback(self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        """Keep the event and fire whoever waits for its type."""
        event = json.loads(payload)
        self.events.append(event)
        for pair in list(self._waiting):
            if pair[0] == event["type"]:
                self._waiting.remove(pair)
                pair[1].callback(event)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        """Fire ``closed`` with how it ended."""
        if not self.opened.called:
            self.opened.errback(ConnectionError(reason))
        self.closed.callback((wasClean, code))

    def wait_for(self, event_type: str, reactor: Any) -> defer.Deferred:
        """A Deferred for the next event of ``event_type``."""
        d: defer.Deferred = defer.Deferred()
        self._waiting.append((event_type, d))
        return d.addTimeout(TIMEOUT, reactor)


async def _connect(reactor: Any, port: int, query: str = "app=avr&api_key=avr:avrpass") -> Client:
    factory = WebSocketClientFactory(f"ws://127.0.0.1:{port}/ari/events?{query}", reactor=reactor)
    factory.protocol = Client
    factory.setProtocolOptions(openHandshakeTimeout=0, closeHandshakeTimeout=0, serverConnectionDropTimeout=0)
    proto = await TCP4ClientEndpoint(reactor, "127.0.0.1", port).connect(factory)
    await proto.opened.addTimeout(TIMEOUT, reactor)
    return proto


class Capture(Protocol):
    """Raw TCP peer: keeps bytes, fires ``got`` once ``want`` bytes arrived and ``lost`` at the end."""

    def __init__(self, want: int = 1) -> None:
        self.data = b""
        self.want = want
        self.got: defer.Deferred = defer.Deferred()
        self.lost: defer.Deferred = defer.Deferred()

    def dataReceived(self, data: bytes) -> None:
        """Keep the bytes."""
        self.data += data
        if len(self.data) >= self.want and not self.got.called:
            self.got.callback(self.data)

    def connectionLost(self, reason: Any = None) -> None:
        """Fire ``lost``."""
        self.lost.callback(None)


@pytest_twisted.ensureDeferred
async def test_rest_and_events_over_loopback() -> None:
    """Basic-auth REST on a keep-alive pool and the events WebSocket through the resource: originate → StasisStart."""
    from twisted.internet import reactor

    fake = FakeAsterisk(Clock(), app="avr")
    port = fake.listen(reactor).getHost().port
    pool = HTTPConnectionPool(reactor, persistent=True)
    http = treq.client.HTTPClient(Agent(reactor, pool=pool))
    client = None
    try:
        base = f"http://127.0.0.1:{port}/ari"
        response = await http.get(f"{base}/asterisk/ping", auth=("avr", "avrpass"))
        assert response.code == 200 and (await response.json())["ping"] == "pong"
        response = await http.get(f"{base}/asterisk/ping", auth=("avr", "wrong"))
        assert response.code == 401 and (await response.json()) == {"message": "Authentication required"}
        client = await _connect(reactor, port)
        started = client.wait_for("StasisStart", reactor)
        response = await http.post(f"{base}/channels", params={"endpoint": "Local/6100@cap-ari", "app": "avr",
                                                               "appArgs": "a,b"}, auth=("avr", "avrpass"))  # fmt: skip
        body = await response.json()
        event = await started
        assert event["channel"]["id"] == body["id"] and event["args"] == ["a", "b"]
        response = await http.delete(f"{base}/channels/{body['id']}", auth=("avr", "avrpass"))
        assert response.code == 204 and await response.content() == b""
        client.sendClose(1000)
        assert await client.closed.addTimeout(TIMEOUT, reactor) == (True, 1000)
    finally:
        await pool.closeCachedConnections()
        await fake.close()


@pytest_twisted.ensureDeferred
async def test_events_handshake_bytes_over_loopback() -> None:
    """Through the twisted.web resource the 101 has only Upgrade, Connection, Sec-WebSocket-Accept (fact 27)."""
    from twisted.internet import reactor

    captured = next(e for e in load_fixture("websocket_handshake_auth_replace")["entries"]
                    if e.get("ws") == "events-1" and e["kind"] == "ws_handshake")  # fmt: skip
    fake = FakeAsterisk(Clock(), app="avr-ari")
    port = fake.listen(reactor).getHost().port
    proto = Capture(want=4)
    try:
        await TCP4ClientEndpoint(reactor, "127.0.0.1", port).connect(Factory.forProtocol(lambda: proto))
        request = "\r\n".join(captured["request"]).replace("<random>", "dGhlIHNhbXBsZSBub25jZQ==") + "\r\n\r\n"
        proto.transport.write(request.encode())
        await proto.got.addTimeout(TIMEOUT, reactor)
        while b"\r\n\r\n" not in proto.data:
            proto.got = defer.Deferred()
            proto.want = len(proto.data) + 1
            await proto.got.addTimeout(TIMEOUT, reactor)
        lines = proto.data.split(b"\r\n\r\n")[0].decode().split("\r\n")
        assert lines[0] == captured["status_line"]
        assert [line.split(":")[0].lower() for line in lines[1:]] == [n.lower() for n, _ in
                                                                      captured["response_headers"]]  # fmt: skip
        assert "avr-ari" in fake.apps
        proto.transport.loseConnection()
        await proto.lost.addTimeout(TIMEOUT, reactor)
    finally:
        await fake.close()


@pytest_twisted.ensureDeferred
async def test_external_media_opens_a_real_audiosocket_connection() -> None:
    """externalMedia connects to external_host during the POST, sends the UUID frame, and DELETE closes it (FIN)."""
    from twisted.internet import reactor

    server = Capture(want=19)
    listening = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(Factory.forProtocol(lambda: server))
    as_port = listening.getHost().port
    fake = FakeAsterisk(Clock(), app="avr", audiosocket_endpoint=lambda h, p: TCP4ClientEndpoint(reactor, h, p))
    port = fake.listen(reactor).getHost().port
    pool = HTTPConnectionPool(reactor, persistent=False)
    http = treq.client.HTTPClient(Agent(reactor, pool=pool))
    client = None
    try:
        client = await _connect(reactor, port)
        data = str(uuid.uuid4())
        response = await http.post(f"http://127.0.0.1:{port}/ari/channels/externalMedia", params={
            "app": "avr", "external_host": f"127.0.0.1:{as_port}", "encapsulation": "audiosocket",
            "transport": "tcp", "format": "slin16", "data": data}, auth=("avr", "avrpass"))  # fmt: skip
        body = await response.json()
        assert response.code == 200 and body["channelvars"]["AUDIOSOCKET_UUID"] == data
        assert await server.got.addTimeout(TIMEOUT, reactor) == b"\x01\x00\x10" + uuid.UUID(data).bytes
        response = await http.post(f"http://127.0.0.1:{port}/ari/channels/externalMedia", params={
            "app": "avr", "external_host": "127.0.0.1:1", "encapsulation": "audiosocket", "transport": "tcp",
            "format": "slin16", "data": str(uuid.uuid4())}, auth=("avr", "avrpass"))  # fmt: skip
        assert response.code == 500 and (await response.json())["message"].startswith("An internal error")
        response = await http.delete(f"http://127.0.0.1:{port}/ari/channels/{body['id']}", auth=("avr", "avrpass"))
        assert response.code == 204
        await server.lost.addTimeout(TIMEOUT, reactor)
        client.sendClose(1000)
        await client.closed.addTimeout(TIMEOUT, reactor)
    finally:
        await pool.closeCachedConnections()
        await fake.close()
        await listening.stopListening()


@pytest_twisted.ensureDeferred
async def test_restart_over_loopback() -> None:
    """``restart()``: the socket ends without a close frame, connections are refused, then 404, then it is back."""
    from twisted.internet import reactor

    clock = Clock()
    fake = FakeAsterisk(clock, app="avr")
    port = fake.listen(reactor).getHost().port
    pool = HTTPConnectionPool(reactor, persistent=False)
    http = treq.client.HTTPClient(Agent(reactor, pool=pool))
    try:
        client = await _connect(reactor, port)
        fake.inbound_call("100", "6000")
        hangup = client.wait_for("ChannelHangupRequest", reactor)
        fake.restart()
        assert (await hangup)["cause"] == 4 and (await hangup)["soft"] is True
        clock.advance(1.1)
        was_clean, code = await client.closed.addTimeout(TIMEOUT, reactor)
        assert not was_clean and code == 1006  # TCP EOF, no close frame
        with pytest.raises(ConnectionRefusedError):
            await TCP4ClientEndpoint(reactor, "127.0.0.1", port).connect(Factory.forProtocol(Protocol))
        clock.advance(0.3)
        response = await http.get(f"http://127.0.0.1:{port}/ari/events?app=avr&api_key=avr:avrpass")
        assert response.code == 404
        await response.content()
        clock.advance(0.6)
        again = await _connect(reactor, port)
        response = await http.get(f"http://127.0.0.1:{port}/ari/channels", auth=("avr", "avrpass"))
        assert await response.json() == []
        again.sendClose(1000)
        await again.closed.addTimeout(TIMEOUT, reactor)
    finally:
        await pool.closeCachedConnections()
        await fake.close()
