"""
Test support for the fake Asterisk ARI (`avr.testing.ari`): a synchronous in-memory harness (StubTreq for REST,
iosim-pumped autobahn clients for the events WebSocket, a ``task.Clock``), and helpers to read the real ARI captures
(`avr.testing.captures`).
"""

from __future__ import annotations

import base64
import json
import re
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


def fixture_auth(value: str) -> str:
    """Turn a capture's ``Basic <user:pass>`` (written in clear by the capture) into a real header value."""
    match = re.fullmatch(r"Basic <([^:>]*):([^>]*)>", value)
    return basic(match.group(1), match.group(2)) if match else value


# --------------------------------------------------------------------------------------------------------------------
# Replaying a capture against the fake

GENERATED_ID = re.compile(r"^(\d+\.\d+(;2)?|[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})$")
VOLATILE_KEYS = frozenset({"timestamp", "creationtime", "startup_time", "last_reload_time", "duration", "date"})
_ID_CHARS = r"[A-Za-z0-9_.;-]"


class Replay:
    """
    Replays the REST requests of one capture against a fresh fake at the capture's request times, with the events
    sockets it used, and maps the server-chosen ids and names of the capture onto the fake's.

    :ivar rest: ``(fixture entry, our status, our headers, our raw body)`` per REST entry.
    :ivar sockets: our socket per capture socket label.
    """

    def __init__(self, name: str, *, skip_urls: tuple[str, ...] = (), **kwargs: Any) -> None:
        self.fixture = load_fixture(name)
        self.h = Harness(**kwargs)
        if self.fixture.get("dialplan"):
            self.h.fake.load_dialplan(self.fixture["dialplan"])
        self.idmap: dict[str, str] = {}
        self.namemap: dict[str, str] = {}
        self.rest: list[tuple[dict, int, Any, bytes]] = []
        self.sockets: dict[str, Socket] = {}
        self.handshakes: dict[str, Any] = {}
        self.skip_urls = skip_urls

    # -- running ------------------------------------------------------------------------------------------------------

    def actions(self) -> list[tuple[float, int, dict]]:
        """The capture's client actions, in the order the client performed them."""
        out = []
        for index, entry in enumerate(self.fixture["entries"]):
            kind = entry.get("kind")
            if kind in ("rest", "ws_handshake"):
                out.append((entry.get("t_request_ms", entry["t_ms"]), index, entry))
            elif kind == "ws_client_close_sent":
                out.append((entry["t_ms"], index, entry))
        return sorted(out, key=lambda item: (item[0], item[1]))

    def run(self) -> Replay:
        """Perform every action at its time, then let the fake run until the capture's last entry."""
        now = 0.0
        for t_ms, _index, entry in self.actions():
            self.h.advance(max(t_ms / 1000 - now, 0.0))
            now = max(now, t_ms / 1000)
            kind = entry["kind"]
            if kind == "ws_handshake":
                self._handshake(entry)
            elif kind == "rest":
                if not any(s in entry["url"] for s in self.skip_urls):
                    self._rest(entry)
            else:
                sock = self.sockets.get(entry["ws"])
                if sock is not None:
                    sock.close()
        last = max(e["t_ms"] for e in self.fixture["entries"])
        self.h.advance(max(last / 1000 - now, 0.0) + 0.2)
        return self

    def _handshake(self, entry: dict) -> None:
        request_line = entry["request"][0]
        query = request_line.split(" ")[1].partition("?")[2]
        params = dict(pair.partition("=")[::2] for pair in query.split("&") if pair)
        headers = {}
        for line in entry["request"][1:]:
            if line.lower().startswith("authorization:"):
                headers["Authorization"] = basic("avr", "avrpass")
        extra = "".join(f"&{k}={v}" for k, v in params.items() if k not in ("app", "api_key"))
        sock = self.h.connect(params.get("app", ""), params.get("api_key"), extra, headers=headers or None)
        self.handshakes[entry["ws"]] = sock
        if entry["status_line"].split(" ")[1] == "101":
            self.sockets[entry["ws"]] = sock

    def map_text(self, text: str) -> str:
        """Replace the capture's ids and names in ``text`` by the fake's."""
        for old in sorted(self.namemap, key=len, reverse=True):
            text = text.replace(old, self.namemap[old])
        for old in sorted(self.idmap, key=len, reverse=True):
            text = re.sub(rf"(?<!{_ID_CHARS}){re.escape(old)}(?!{_ID_CHARS})", self.idmap[old], text)
        return text

    def _rest(self, entry: dict) -> None:
        self._learn_from_events()
        headers = {}
        for key, value in entry["request_headers"].items():
            if key.lower() == "authorization":
                headers["Authorization"] = fixture_auth(value)
            elif key.lower() == "content-type":
                headers["Content-Type"] = value
        body = entry.get("request_body")
        raw_body = None
        if isinstance(body, (dict, list)):
            raw_body = json.dumps(body).encode()
        elif isinstance(body, str):
            raw_body = body.encode()
        response, raw = self.h.raw_request(entry["method"], self.map_text(entry["url"]), headers, raw_body)
        self.rest.append((entry, response.code, response.headers, raw))
        if raw and (response.headers.getRawHeaders(b"content-type") or [b""])[0] == b"application/json":
            if isinstance(entry.get("response_body"), dict):  # lists may come in another order
                self._learn(entry["response_body"], json.loads(raw))

    def _learn(self, theirs: Any, ours: Any) -> None:
        """Learn id/name mappings from two structurally equal JSON values."""
        if isinstance(theirs, dict) and isinstance(ours, dict):
            for key in ("id", "name"):
                a, b = theirs.get(key), ours.get(key)
                if isinstance(a, str) and isinstance(b, str) and a != b:
                    if key == "id" and GENERATED_ID.match(a):
                        self.idmap.setdefault(a, b)
                    elif "/" in a:
                        self.namemap.setdefault(a, b)
                        if a.endswith(";1") and b.endswith(";1"):
                            self.namemap.setdefault(a[:-2] + ";2", b[:-2] + ";2")
            for key in theirs.keys() & ours.keys():
                self._learn(theirs[key], ours[key])
        elif isinstance(theirs, list) and isinstance(ours, list) and len(theirs) == len(ours):
            for a, b in zip(theirs, ours):
                self._learn(a, b)

    def _learn_from_events(self) -> None:
        ours: dict[str, str] = {}
        for sock in self.sockets.values():
            for event in sock.events:
                for ch in _channels_of(event):
                    ours[ch["name"]] = ch["id"]
        for entry in self.fixture["entries"]:
            if entry.get("kind") == "event":
                for ch in _channels_of(entry["event"]):
                    mapped = self.namemap.get(ch["name"], ch["name"])
                    if mapped in ours and ours[mapped] != ch["id"] and GENERATED_ID.match(ch["id"]):
                        self.idmap.setdefault(ch["id"], ours[mapped])

    # -- comparing ----------------------------------------------------------------------------------------------------

    def normalize(self, value: Any, theirs: bool) -> Any:
        """A JSON value without volatile fields, with the capture's ids and names mapped (``theirs``)."""
        if isinstance(value, dict):
            return {k: self.normalize(v, theirs) for k, v in value.items() if k not in VOLATILE_KEYS}
        if isinstance(value, list):
            return [self.normalize(v, theirs) for v in value]
        if isinstance(value, str):
            if theirs:
                value = self.map_text(value)
            return re.sub(r"(Announcer|Recorder)/ARI-[0-9a-f]{8}", r"\1/ARI-N", value)
        return value

    def fixture_events(self, label: str) -> list[dict]:
        """The events the capture's socket ``label`` received."""
        self._learn_from_events()
        return [e["event"] for e in self.fixture["entries"] if e.get("kind") == "event" and e["ws"] == label]

    def groups(self, events: list[dict], theirs: bool) -> dict[str, list[dict]]:
        """Events grouped by the channel, bridge, playback or recording they concern, in order, normalized."""
        out: dict[str, list[dict]] = {}
        for event in events:
            norm = self.normalize(event, theirs)
            for key in _event_keys(norm):
                out.setdefault(key, []).append(norm)
        return out


def _channels_of(event: dict) -> list[dict]:
    return [event[k] for k in ("channel", "peer") if isinstance(event.get(k), dict) and "name" in event[k]]


def _event_keys(event: dict) -> list[str]:
    keys = [f"channel:{ch['id']}" for ch in _channels_of(event)]
    if isinstance(event.get("bridge"), dict):
        keys.append(f"bridge:{event['bridge']['id']}")
    for field_name in ("playback", "recording"):
        obj = event.get(field_name)
        if isinstance(obj, dict):
            keys.append(obj["target_uri"])
            keys.append(f"{field_name}:{obj.get('id') or obj.get('name')}")
    return keys or ["application"]
