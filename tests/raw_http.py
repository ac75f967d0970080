"""A loopback HTTP client that sends exactly the bytes it is given (request smuggling, odd targets, partial bodies)."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure


class RawHttp(Protocol):
    """
    Collects what the server sends. ``head`` fires with the bytes received up to the end of the response head (or
    all of them if the connection closes first); ``closed`` fires with everything once the connection is gone.
    """

    def __init__(self) -> None:
        self.received = b""
        self.head: Deferred[bytes] = Deferred()
        self.closed: Deferred[bytes] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        if not self.head.called and b"\r\n\r\n" in self.received:
            self.head.callback(self.received)

    def connectionLost(self, reason: Failure) -> None:
        if not self.head.called:
            self.head.callback(self.received)
        self.closed.callback(self.received)


async def connect(reactor: Any, port: int) -> RawHttp:
    """A `RawHttp` connected to ``127.0.0.1:port``."""
    return await TCP4ClientEndpoint(reactor, "127.0.0.1", port).connect(Factory.forProtocol(RawHttp))


async def exchange(reactor: Any, port: int, request: bytes, timeout: float = 5.0) -> bytes:
    """Send ``request`` on a new connection; the response head (and whatever came with it), connection closed after."""
    client = await connect(reactor, port)
    client.transport.write(request)
    head = await client.head.addTimeout(timeout, reactor)
    client.transport.abortConnection()
    await client.closed
    return head


def status_of(response: bytes) -> int:
    """The status code of a raw response (0 when there is none)."""
    parts = response.split(b"\r\n", 1)[0].split(b" ")
    return int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0


def upgrade(target: str, extra_headers: str = "") -> bytes:
    """A WebSocket opening handshake request for ``target``."""
    return (f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra_headers}\r\n"
            ).encode("latin-1")
