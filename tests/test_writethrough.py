"""
`avr.writethrough.write_through`: test transports get their own ``write``; on a real TCP connection (loopback) bytes
arrive complete and in order whether sent directly or queued behind Twisted's buffer, and closing, aborted and reset
connections follow Twisted's rules without raising.
"""

from __future__ import annotations

import random
import socket
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.error import ConnectionAborted, ConnectionDone, ConnectionLost
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import StringTransport

from avr.testing.sts import make_certificates
from avr.writethrough import write_through

TIMEOUT = 10


def test_non_tcp_transport_gets_its_own_write():
    """A StringTransport is not a TCP connection: the writer is its bound ``write`` and writes land in value()."""
    transport = StringTransport()
    write = write_through(transport)
    assert write == transport.write
    write(b"one")
    write(b"two")
    assert transport.value() == b"onetwo"


def test_non_twisted_transport_gets_its_own_write():
    """Anything that is not a Twisted TCP connection (here a plain object with a write) is left alone."""
    written: list[bytes] = []

    class Minimal:
        def write(self, data: bytes) -> None:
            written.append(data)

    transport = Minimal()
    write = write_through(transport)
    write(b"x")
    assert written == [b"x"]


# -- real loopback connections


class _Sender(Protocol):
    """Server side: a write-through writer for its transport, and a Deferred for the end of the connection."""

    def __init__(self, made: Deferred) -> None:
        self._made = made
        self.lost: Deferred = Deferred()  # fires with the exception that ended the connection
        self.write: Any = None

    def connectionMade(self) -> None:
        self.write = write_through(self.transport)
        self._made.callback(self)

    def connectionLost(self, reason: Any) -> None:
        self.lost.callback(reason.value)


class _Receiver(Protocol):
    """Client side: every byte received, and Deferreds for "this many bytes arrived" and the end."""

    def __init__(self) -> None:
        self.received = bytearray()
        self.lost: Deferred = Deferred()
        self._waiting: list[tuple[int, Deferred]] = []

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        ready = [(n, d) for n, d in self._waiting if len(self.received) >= n]
        for pair in ready:
            self._waiting.remove(pair)
            pair[1].callback(bytes(self.received))

    def connectionLost(self, reason: Any) -> None:
        for _, d in self._waiting:
            d.errback(reason)
        self._waiting = []
        self.lost.callback(reason.value)

    def wait_for(self, size: int) -> Deferred:
        d: Deferred = Deferred()
        self._waiting.append((size, d))
        self.dataReceived(b"")
        return d


class _Loopback:
    """A listening port on 127.0.0.1, one client connected to it, and cleanup that leaves nothing behind."""

    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor
        self.port: Any = None
        self.server: _Sender | None = None
        self.client: _Receiver | None = None

    async def open(self, server_wrapper: Any = None) -> tuple[_Sender, _Receiver]:
        made: Deferred = Deferred()
        factory = Factory.forProtocol(lambda: _Sender(made))
        self.port = self.reactor.listenTCP(0, server_wrapper(factory) if server_wrapper else factory,
                                           interface="127.0.0.1")
        endpoint = TCP4ClientEndpoint(self.reactor, "127.0.0.1", self.port.getHost().port)
        self.client = await self.timed(connectProtocol(endpoint, _Receiver()))
        self.server = await self.timed(made)
        return self.server, self.client

    def timed(self, d: Deferred) -> Deferred:
        return d.addTimeout(TIMEOUT, self.reactor)

    async def close(self) -> None:
        for proto in (self.client, self.server):
            if proto is not None and proto.transport is not None and proto.transport.connected:
                proto.transport.abortConnection()
        for proto in (self.client, self.server):
            if proto is not None:
                await self.timed(proto.lost)
        if self.port is not None:
            await self.port.stopListening()


def _pattern(size: int, seed: int) -> bytes:
    """Reproducible bytes in which any reordering or loss shows."""
    return random.Random(seed).randbytes(size)


@pytest.mark.integration
@pytest_twisted.ensureDeferred
async def test_loopback_bytes_arrive_complete_and_in_order():
    """
    Direct sends, a send queued behind a plain ``transport.write``, an 8 MB write the kernel cannot take at once
    (the rest buffered) and small writes after it all arrive exactly, in the order written.
    """
    from twisted.internet import reactor

    rig = _Loopback(reactor)
    try:
        server, client = await rig.open()
        # Small socket buffers make certain the kernel takes only part of the big write.
        server.transport.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
        client.transport.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        expected = bytearray()

        def send(data: bytes, plain: bool = False) -> None:
            (server.transport.write if plain else server.write)(data)
            expected.extend(data)

        send(b"frame-1;")
        assert server.transport._tempDataLen == 0, "an idle connection's frame must go out at once"
        send(b"plain-2;", plain=True)
        send(b"frame-3;")  # something is buffered: must queue behind frame 2
        assert server.transport._tempDataLen == len(b"plain-2;frame-3;")
        send(b"frame-4;")
        assert bytes(await rig.timed(client.wait_for(len(expected)))) == bytes(expected)

        # Nothing buffered now: the big write starts directly, and what the kernel did not take is queued.
        big = _pattern(8 * 1024 * 1024, seed=1)
        send(big)
        pending = server.transport._tempDataLen + len(server.transport.dataBuffer) - server.transport.offset
        assert 0 < pending < len(big), "the kernel took none or all of 8 MB: the partial-send path was not exercised"
        for i in range(5):
            send(b"tail-%d;" % i)
        received = await rig.timed(client.wait_for(len(expected)))
        assert len(received) == len(expected)
        assert received == bytes(expected)
    finally:
        await rig.close()


@pytest.mark.integration
@pytest_twisted.ensureDeferred
async def test_loopback_write_after_lose_connection_follows_twisted():
    """
    After ``loseConnection`` the writer does not send directly: the data goes to Twisted's buffer, which (as for a
    plain ``transport.write``) still flushes it before the orderly close; writes after the end are dropped silently.
    """
    from twisted.internet import reactor

    rig = _Loopback(reactor)
    try:
        server, client = await rig.open()
        server.write(b"before;")
        server.transport.loseConnection()
        server.write(b"late;")
        assert server.transport._tempDataLen == len(b"late;"), "a write while disconnecting must be buffered"
        assert isinstance(await rig.timed(client.lost), ConnectionDone)
        assert bytes(client.received) == b"before;late;"
        assert isinstance(await rig.timed(server.lost), ConnectionDone)
        server.write(b"after the end")  # not connected any more: ignored, as transport.write does
        assert server.transport._tempDataLen == 0
    finally:
        await rig.close()


@pytest.mark.integration
@pytest_twisted.ensureDeferred
async def test_loopback_write_after_abort_connection_is_not_sent():
    """
    After ``abortConnection`` (which drops buffered data) a write must not reach the peer: the socket is still open
    until the next reactor turn, but the writer must not send on it directly.
    """
    from twisted.internet import reactor

    rig = _Loopback(reactor)
    try:
        server, client = await rig.open()
        server.write(b"before;")
        assert bytes(await rig.timed(client.wait_for(7))) == b"before;"
        server.transport.abortConnection()
        server.write(b"after abort;")
        # Twisted's own write would have put this in the (dropped) buffer, never on the wire.
        assert server.transport._tempDataLen == len(b"after abort;"), "written to the socket after abortConnection"
        assert isinstance(await rig.timed(server.lost), ConnectionAborted)
        await rig.timed(client.lost)
        assert bytes(client.received) == b"before;"
    finally:
        await rig.close()


@pytest.mark.integration
@pytest_twisted.ensureDeferred
async def test_loopback_peer_reset_does_not_raise_and_ends_the_connection():
    """
    The peer resets the connection (client abortConnection sends RST): writes before the server noticed do not
    raise, and the server's connectionLost reports the loss as Twisted does for a reset (ConnectionLost, not a clean
    ConnectionDone: the failed send must not swallow the socket error).
    """
    from twisted.internet import reactor

    rig = _Loopback(reactor)
    try:
        server, client = await rig.open()
        server.write(b"hello;")
        assert bytes(await rig.timed(client.wait_for(6))) == b"hello;"
        client.transport.abortConnection()
        await rig.timed(client.lost)
        # The RST has reached the server's socket; its reactor has not read it yet.
        assert server.transport.connected
        server.write(b"into the reset;")
        server.write(b"and another;")
        assert isinstance(await rig.timed(server.lost), ConnectionLost)
        server.write(b"after the end")
    finally:
        await rig.close()


@pytest.mark.integration
@pytest_twisted.ensureDeferred
async def test_loopback_tls_started_on_the_connection_is_not_bypassed():
    """
    A TCP connection that switched to TLS with ``startTLS`` encrypts in its ``write``; the writer must not put
    plaintext on the socket (the client must read exactly the bytes written, through TLS).
    """
    from twisted.internet import reactor
    from twisted.internet.ssl import Certificate, optionsForClientTLS

    certificates = make_certificates()

    class TlsSender(_Sender):
        def connectionMade(self) -> None:
            self.transport.startTLS(certificates.server_options())
            super().connectionMade()

    rig = _Loopback(reactor)
    made: Deferred = Deferred()
    rig_factory = Factory.forProtocol(lambda: TlsSender(made))
    try:
        rig.port = reactor.listenTCP(0, rig_factory, interface="127.0.0.1")
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", rig.port.getHost().port)
        rig.client = client = await rig.timed(connectProtocol(endpoint, _Receiver()))
        client.transport.startTLS(optionsForClientTLS(
            "localhost", trustRoot=Certificate.loadPEM(certificates.ca_pem)))
        rig.server = server = await rig.timed(made)
        server.write(b"secret frame;")
        server.write(b"second;")
        try:
            received = await rig.timed(client.wait_for(len(b"secret frame;second;")))
        except Exception as e:
            pytest.fail(f"the client could not read the frames through TLS (plaintext on the socket?): {e!r}")
        assert received == b"secret frame;second;"
    finally:
        await rig.close()
