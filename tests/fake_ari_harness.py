"""
Test support for the fake Asterisk ARI (`avr.testing.ari`): a synchronous in-memory harness (StubTreq for REST,
iosim-pumped autobahn clients for the events WebSocket, a ``task.Clock``), and helpers to read the real ARI captures
(`avr.testing.captures`).
"""

from __future__ import annotations

import base64
import json
import struct
from typing import Any
from urllib.parse import urlencode

import treq
from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.test import iosim
from treq.testing import StubTreq

from avr.testing.ari import FakeAsterisk
from avr.testing.captures import captures_dir
from tests.helpers import fired

FIXTURES = captures_dir("ari")
BASE = "http://127.0.0.1:8088"


def load_fixture(name: str) -> dict:
    """One capture file, parsed."""
    return json.loads((FIXTURES / f"{name}.json").read_text())


def wav_duration(data: bytes) -> float:
    """Seconds of audio in a PCM 16-bit mono WAV with the 44-byte header the fake writes (0.0 if not a WAV)."""
    if len(data) < 44 or data[:4] != b"RIFF":
        return 0.0
    rate = struct.unpack("<I", data[24:28])[0] or 8000
    return (len(data) - 44) / (2 * rate)


def types_since(sock: Socket, start: int = 0, prefix: str = "") -> list[str]:
    """The types of the events ``sock`` received from index ``start`` on, those starting with ``prefix``."""
    return [e["type"] for e in sock.events[start:] if e["type"].startswith(prefix)]


def basic(user: str, password: str) -> str:
    """An ``Authorization: Basic`` header value."""
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


class EventsClient(WebSocketClientProtocol):
    """An autobahn client that keeps every event (parsed) and how the connection ended."""

    def __init__(self) -> None:
        super().__init__()
        self.events: list[dict] = []
        self.raw: list[str] = []
        self.opened = False
        self.closed: tuple | None = None
        self.handshake_status: int | None = None

    def onConnect(self, response: Any) -> None:
        """Remember the upgrade."""
        self.handshake_status = 101

    def onOpen(self) -> None:
        """Mark open."""
        self.opened = True

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        """Keep the event."""
        assert not isBinary
        text = payload.decode("utf-8")
        self.raw.append(text)
        self.events.append(json.loads(text))

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        """Remember how it ended."""
        self.closed = (wasClean, code, reason)


class Socket:
    """An iosim-connected events WebSocket client of the fake."""

    def __init__(self, client: EventsClient, server: Any, pump: iosim.IOPump) -> None:
        self.client = client
        self.server = server
        self.pump = pump

    @property
    def events(self) -> list[dict]:
        """Events received so far."""
        return self.client.events

    def types(self) -> list[str]:
        """Event types received so far."""
        return [e["type"] for e in self.client.events]

    def close(self) -> None:
        """Client close (1000)."""
        self.client.sendClose(1000)
        self.pump.flush()


class AudioSocketServer(Protocol):
    """The AudioSocket server end of an in-memory externalMedia connection: keeps every byte it receives."""

    def __init__(self) -> None:
        self.received = bytearray()
        self.lost = False

    def dataReceived(self, data: bytes) -> None:
        """Keep the bytes."""
        self.received += data

    def connectionLost(self, reason: Any = None) -> None:
        """Remember the end."""
        self.lost = True


class MemoryEndpoint:
    """An ``IStreamClientEndpoint`` that connects to an `AudioSocketServer` through iosim, or is refused."""

    def __init__(self, harness: Harness, host: str, port: int) -> None:
        self.harness = harness
        self.port = port

    def connect(self, factory: Any) -> Any:
        """Connect (ports in ``harness.audiosocket_ports``) or fail with ConnectionRefusedError."""
        if self.port not in self.harness.audiosocket_ports:
            return defer.fail(ConnectionRefusedError(f"port {self.port}"))
        client = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", self.port))
        server = AudioSocketServer()
        pump = iosim.connect(server, iosim.makeFakeServer(server), client, iosim.makeFakeClient(client), greet=False)
        pump.flush()
        self.harness.audiosocket_servers.append(server)
        self.harness.extra_pumps.append(pump)
        return defer.succeed(client)


class Harness:
    """A fake Asterisk with a ``task.Clock``, StubTreq and in-memory events sockets; every call is synchronous."""

    def __init__(self, audiosocket_ports: tuple[int, ...] = (5101,), **kwargs: Any) -> None:
        self.clock = Clock()
        self.audiosocket_ports = audiosocket_ports
        self.audiosocket_servers: list[AudioSocketServer] = []
        self.extra_pumps: list[iosim.IOPump] = []
        kwargs.setdefault("audiosocket_endpoint", lambda host, port: MemoryEndpoint(self, host, port))
        self.fake = FakeAsterisk(self.clock, **kwargs)
        self.http = StubTreq(self.fake.resource())
        self.sockets: list[Socket] = []

    def connect(self, app: str = "avr", api_key: str | None = "avr:avrpass", extra: str = "",
                headers: dict | None = None) -> Socket:  # fmt: skip
        """Open an events socket (``/ari/events?app=...&api_key=...``) and complete the handshake."""
        query = f"app={app}" + (f"&api_key={api_key}" if api_key is not None else "") + extra
        factory = WebSocketClientFactory(f"ws://127.0.0.1:8088/ari/events?{query}", headers=headers,
                                         reactor=self.clock)  # fmt: skip
        factory.protocol = EventsClient
        factory.setProtocolOptions(openHandshakeTimeout=0, closeHandshakeTimeout=0, serverConnectionDropTimeout=0,
                                   autoPingInterval=0)  # fmt: skip
        server_factory = self.fake.events_factory()
        addr = IPv4Address("TCP", "127.0.0.1", 40000 + len(self.sockets))
        client, server, pump = iosim.connectedServerAndClient(
            lambda: server_factory.buildProtocol(addr), lambda: factory.buildProtocol(addr)
        )
        sock = Socket(client, server, pump)
        self.sockets.append(sock)
        self.pump()
        return sock

    def pump(self) -> None:
        """Move pending bytes (AudioSocket connections first: what they cause may produce events)."""
        for _ in range(2):
            for pump in self.extra_pumps:
                pump.flush()
            for sock in self.sockets:
                sock.pump.flush()

    def advance(self, seconds: float) -> None:
        """Advance the clock (in small steps so that timers fire in order) and pump sockets."""
        target = self.clock.seconds() + seconds
        while True:
            due = [c.getTime() for c in self.clock.getDelayedCalls()]
            upcoming = [t for t in due if t <= target + 1e-6]
            step_to = min(upcoming, default=target)
            # jump exactly to the next timer (no float drift between a timer's time and the clock's)
            self.clock.rightNow = max(self.clock.rightNow, step_to)
            self.clock.advance(0)
            self.pump()
            if not upcoming:
                break
        self.clock.rightNow = max(self.clock.rightNow, target)

    def call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """Run a scenario method of the fake and deliver what it caused."""
        result = fn(*args, **kwargs)
        self.pump()
        return result

    def request(self, method: str, path: str, params: Any = None, *, json_body: Any = None, data: Any = None,
                auth: str | None = "avr:avrpass", headers: dict | None = None) -> tuple[int, Any, Any]:  # fmt: skip
        """
        One REST request to ``/ari{path}``.

        :param params: dict or list of pairs (repeated keys allowed).
        :return: ``(status, twisted Headers, body)``; body is parsed JSON, ``None`` when empty, or bytes.
        """
        hdrs = dict(headers or {})
        if auth is not None:
            hdrs["Authorization"] = basic(*auth.split(":", 1))
        url = BASE + "/ari" + path
        if params:
            url += "?" + urlencode(list(params.items()) if isinstance(params, dict) else params)
        kwargs: dict[str, Any] = {"headers": hdrs}
        if json_body is not None:
            kwargs["data"] = json.dumps(json_body).encode()
            hdrs["Content-Type"] = "application/json"
        elif data is not None:
            kwargs["data"] = data
        response, raw = self._exchange(self.http.request(method, url, **kwargs))
        ctype = (response.headers.getRawHeaders(b"content-type") or [b""])[0]
        if not raw:
            body: Any = None
        elif ctype.startswith(b"application/json"):
            body = json.loads(raw)
        else:
            body = raw
        return response.code, response.headers, body

    def _exchange(self, d: Any) -> tuple[Any, bytes]:
        """Flush a StubTreq request and its body read; returns ``(response, raw body bytes)``."""
        self.http.flush()
        response = fired(d, "Deferred did not fire")
        body_d = treq.content(response)
        self.http.flush()
        raw = fired(body_d, "Deferred did not fire")
        self.pump()
        return response, raw

    def raw_request(self, method: str, url: str, headers: dict | None = None, body: bytes | None = None) -> Any:
        """A request with an exact URL (for fixture replays); returns ``(response, raw body bytes)``."""
        kwargs: dict[str, Any] = {"headers": headers or {}}
        if body is not None:
            kwargs["data"] = body
        response, raw = self._exchange(self.http.request(method, BASE + url, **kwargs))
        return response, raw

    def originate_local(self, exten: str = "6100", app: str = "avr", **params: Any) -> dict:
        """Originate ``Local/<exten>@cap-ari`` into ``app`` and return the channel JSON."""
        status, _, body = self.request("POST", "/channels", {"endpoint": f"Local/{exten}@cap-ari", "app": app,
                                                             **params})  # fmt: skip
        assert status == 200, body
        return body
