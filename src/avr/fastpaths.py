"""
avr's two fast paths through private internals of Twisted and autobahn: what each relies on, and whether it is on.

- **Write-through sends** (`avr.writethrough`): AudioSocket and STS frames go to the socket without waiting for
  the reactor's next pass; reads and writes `twisted.internet.tcp.Connection` internals.
- **Direct WebSocket data frames** (`avr.sts.wsframes`, used by `avr.sts.websocket.StsClientProtocol`): caller
  audio is framed and written, and the STS's complete text frames are read, around autobahn's message machinery,
  while autobahn's connection state says it is idle; the STS connection hands its reads to the protocol without
  the endpoint's forwarding wrapper.

A third, `avr.reactor` (Twisted's epoll reactor without the legacy log context around each read), is chosen
before the reactor exists, by `avr.tap`; ``FAST_PATHS=off`` keeps Twisted's default there too.

`FastPaths.detect` checks both once, at start-up, and logs which are active. A path whose check fails is off, with
a warning: calls go on through the public APIs, only slower. ``FAST_PATHS=off`` turns both off (to compare, or to
rule them out). The checks must pass on the Twisted and autobahn versions setup.cfg allows (tests/test_fastpaths.py).
"""

from __future__ import annotations

import base64
import hashlib
import re
import socket
from typing import Any, Callable

import autobahn
import twisted
from attrs import frozen
from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from autobahn.websocket.protocol import WebSocketProtocol
from twisted.internet import tcp
from twisted.internet.protocol import Protocol
from twisted.internet.testing import StringTransport
from twisted.logger import Logger

from avr.writethrough import write_through
from avr.wsclock import disable_autobahn_timers

log = Logger()

WRITE_THROUGH = "write-through sends"
DIRECT_FRAMES = "direct WebSocket data frames"

#: The `twisted.internet.tcp.Connection` attributes `write_through` uses (some private).
WRITE_THROUGH_USES = ("socket", "dataBuffer", "_tempDataLen", "disconnecting", "disconnected", "connected",
                      "producer", "_writeDisconnecting", "_writeDisconnected", "_aborting", "TLS", "reactor", "write",
                      "stopReading", "stopWriting", "connectionLost")

#: The autobahn `WebSocketProtocol` state (some private) that tells the direct frames autobahn is idle.
DIRECT_FRAMES_USE = ("state", "send_state", "send_queue", "_perMessageCompress", "current_frame", "inside_message",
                     "data")

#: RFC 6455 §1.3: the GUID of ``Sec-WebSocket-Accept``.
_WEBSOCKET_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


@frozen
class FastPaths:
    """Which fast paths are on: both by default; `detect` checks them against the installed libraries."""

    write_through: bool = True
    direct_frames: bool = True

    @classmethod
    def detect(cls, reactor: Any, enabled: bool = True) -> FastPaths:
        """
        Check each fast path (unless ``enabled`` is false) and log once which are active.

        :param reactor: given to the probes; nothing is scheduled on it or registered with it.
        """
        if not enabled:
            log.info("Fast paths off (FAST_PATHS=off): frames go through Twisted's and autobahn's public APIs")
            return cls(write_through=False, direct_frames=False)
        problems = {WRITE_THROUGH: check_write_through(reactor), DIRECT_FRAMES: check_direct_frames(reactor)}
        for name, problem in problems.items():
            if problem is not None:
                log.warn("Fast path off: {name} ({problem}; Twisted {twisted}, autobahn {autobahn}); calls go on "
                         "through the public APIs, slower", name=name, problem=problem,
                         twisted=twisted.__version__, autobahn=autobahn.__version__)
        paths = cls(write_through=problems[WRITE_THROUGH] is None, direct_frames=problems[DIRECT_FRAMES] is None)
        log.info("Fast paths active: {active}", active=", ".join(paths.active) or "none")
        return paths

    @property
    def active(self) -> tuple[str, ...]:
        """The names of the fast paths that are on."""
        return tuple(name for name, on in ((WRITE_THROUGH, self.write_through), (DIRECT_FRAMES, self.direct_frames))
                     if on)

    def writer(self, transport: Any) -> Callable[[bytes], None]:
        """The function a connection writes its frames with: `write_through` when on, else ``transport.write``."""
        return write_through(transport) if self.write_through else transport.write


def check_write_through(reactor: Any) -> str | None:
    """
    Whether `write_through` works with the installed Twisted: ``None`` when a probe `twisted.internet.tcp.Connection`
    (over a local socket pair, never registered with ``reactor``) has every attribute it uses and a write through it
    reaches the peer at once, past Twisted's buffer; else what is wrong.
    """
    try:
        ours, peer = socket.socketpair()
    except OSError as e:
        return f"the probe connection failed: {e!r}"
    try:
        connection = tcp.Connection(ours, Protocol(), reactor)
        missing = [name for name in WRITE_THROUGH_USES if not hasattr(connection, name)]
        if missing:
            return f"twisted.internet.tcp.Connection has no {', '.join(missing)}"
        connection.connected = 1
        write_through(connection)(b"probe")
        peer.setblocking(False)
        try:
            received = peer.recv(16)
        except BlockingIOError:
            received = b""
        if received != b"probe" or connection.dataBuffer or connection._tempDataLen:
            return "a write through a probe connection waited in Twisted's buffer"
        return None
    except Exception as e:
        return f"the probe connection failed: {e!r}"
    finally:
        ours.close()
        peer.close()


def check_direct_frames(reactor: Any) -> str | None:
    """
    Whether the direct WebSocket data frames work with the installed autobahn: ``None`` when a probe autobahn client,
    opened in memory, has the state they read, with the values of an open, idle connection; else what is wrong.
    """
    try:
        factory = WebSocketClientFactory("ws://127.0.0.1/", reactor=reactor)
        disable_autobahn_timers(factory)
        probe = WebSocketClientProtocol()
        probe.factory = factory
        transport = StringTransport()
        probe.makeConnection(transport)
        key = re.search(rb"Sec-WebSocket-Key: *(\S+)", transport.value(), re.IGNORECASE)
        if key is None:
            return "autobahn's opening handshake has no Sec-WebSocket-Key"
        accept = base64.b64encode(hashlib.sha1(key.group(1) + _WEBSOCKET_GUID).digest())
        probe.dataReceived(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                           b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n")
        missing = [name for name in DIRECT_FRAMES_USE if not hasattr(probe, name)]
        if missing:
            return f"autobahn's WebSocketProtocol has no {', '.join(missing)}"
        if not (probe.state == WebSocketProtocol.STATE_OPEN and probe.send_state == WebSocketProtocol.SEND_STATE_GROUND
                and not probe.send_queue and probe._perMessageCompress is None and probe.current_frame is None
                and not probe.inside_message and not probe.data):
            return "an open, idle autobahn connection does not read as idle"
        return None
    except Exception as e:
        return f"the probe connection failed: {e!r}"


__all__ = ["DIRECT_FRAMES", "WRITE_THROUGH", "FastPaths", "check_direct_frames", "check_write_through"]
