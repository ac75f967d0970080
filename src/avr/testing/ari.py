"""
An in-memory fake of Asterisk 22.10.1's ARI: REST (a twisted.web resource) and the events WebSocket (autobahn),
behaving like the real captures in ``avr/testing/captures/asterisk/ari`` for every operation avr's call control
uses, with scenario controls for tests (inbound calls, far-end hangups and answers, DTMF, restarts).

Usage, in memory::

    fake = FakeAsterisk(clock)                       # task.Clock
    http = StubTreq(fake.resource())                 # REST at http://asterisk/ari/...
    factory = fake.events_factory()                  # pump an autobahn client against it with twisted.test.iosim

over loopback::

    port = fake.listen(reactor)                      # Site on 127.0.0.1:<port>, /ari/events upgrades to WebSocket

Modules: `avr.testing.ari_model` (objects and JSON), `avr.testing.ari_engine` (behaviour), `avr.testing.ari_media`
(playbacks, recordings, DTMF), `avr.testing.ari_http` (REST routing and Asterisk's response format).
"""

from __future__ import annotations

import uuid
import weakref
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from autobahn.twisted.resource import WebSocketResource
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.types import ConnectionDeny
from twisted.internet import defer, task
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.web.server import NOT_DONE_YET, Site

from avr.testing.ari_engine import AsteriskEngine
from avr.testing.ari_http import (
    REALM,
    AriResource,
    RecordedRequest,
    html_error,
    parse_basic,
    valid_app_names,
    write_response,
)
from avr.testing.ari_model import DEFAULT_SOUNDS, AriHttpError, Bridge, Channel, Endpoint, parse_dialplan

#: The dialplan of the capture system (fixtures README), so ``Local/6100@cap-ari`` etc. behave as captured.
FIXTURE_DIALPLAN = """
[avr-stasis]
exten => 6000,1,NoOp(Entering Stasis app avr-ari)
 same => n,Stasis(avr-ari)
 same => n,Hangup()

[cap-caller]
exten => s,1,Answer()
 same => n,Playback(hello-world)
 same => n,SendDTMF(123#,100)
 same => n,Wait(0.5)
 same => n,Hangup()

[cap-caller-long]
exten => s,1,Answer()
 same => n,Playback(demo-congrats)
 same => n,Hangup()

[cap-caller-delayed]
exten => s,1,Answer()
 same => n,Wait(1.5)
 same => n,Playback(hello-world)
 same => n,SendDTMF(123#,100)
 same => n,Wait(0.5)
 same => n,Hangup()

[cap-caller-silent]
exten => s,1,Answer()
 same => n,Wait(6)
 same => n,Hangup()

[cap-ari]
exten => 6100,1,Answer()
 same => n,Wait(60)
 same => n,Hangup()
exten => 6101,1,Answer()
 same => n,Playback(hello-world)
 same => n,Playback(demo-congrats)
 same => n,Wait(60)
 same => n,Hangup()
exten => 6102,1,NoOp(cap-ari 6102: Stasis without Answer)
 same => n,Stasis(avr-ari,inbound,6102)
 same => n,NoOp(Stasis app returned STASISSTATUS=${STASISSTATUS})
 same => n,Hangup()
exten => 6103,1,NoOp(cap-ari 6103: continued from Stasis, STASISSTATUS=${STASISSTATUS})
 same => n,Wait(2)
 same => n,Hangup()
exten => 6104,1,Answer()
 same => n,Wait(1)
 same => n,SendDTMF(59*#,150)
 same => n,Wait(60)
 same => n,Hangup()
exten => 6105,1,Ringing()
 same => n,Wait(60)
 same => n,Hangup()
exten => 6106,1,Answer()
 same => n,Wait(2)
 same => n,Hangup(16)
exten => 6107,1,Busy(5)
"""


class FakeAudioSocketConnection(Protocol):
    """
    Asterisk's end of an externalMedia AudioSocket connection: sends the UUID frame ``01 00 10 <16 bytes>`` on
    connect (fact 1), records what the server sends, closes on a 0x00 frame and resets on an invalid kind (facts
    6-7). Tests drive it with `send_audio`/`send_dtmf`.

    :ivar frames: ``(kind, payload)`` frames received from the server.
    """

    log = Logger()

    def __init__(self, uuid_bytes: bytes, on_lost: Callable[[], None]) -> None:
        self.uuid_bytes = uuid_bytes
        self._on_lost = on_lost
        self._buffer = bytearray()
        self.frames: list[tuple[int, bytes]] = []
        self.connected = False
        self.channel_id: str | None = None

    def connectionMade(self) -> None:
        """Send the UUID frame at once."""
        self.connected = True
        set_nodelay = getattr(self.transport, "setTcpNoDelay", None)
        if set_nodelay is not None:
            set_nodelay(True)
        self.transport.write(b"\x01\x00\x10" + self.uuid_bytes)

    def dataReceived(self, data: bytes) -> None:
        """Parse server frames (kind:u8, length:u16 BE, payload)."""
        self._buffer += data
        while len(self._buffer) >= 3:
            kind = self._buffer[0]
            if kind == 0x00:
                self.frames.append((0, b""))
                self._buffer.clear()
                self.transport.loseConnection()
                return
            if not 0x10 <= kind <= 0x18:
                self.log.error("Received AudioSocket message other than hangup or audio (kind {kind:#04x})", kind=kind)
                self._buffer.clear()
                self.transport.abortConnection()
                return
            length = int.from_bytes(self._buffer[1:3], "big")
            if len(self._buffer) < 3 + length:
                return
            self.frames.append((kind, bytes(self._buffer[3 : 3 + length])))
            del self._buffer[: 3 + length]

    def send_audio(self, kind: int, payload: bytes) -> None:
        """Send one audio frame to the server (as the caller's audio would arrive)."""
        self.transport.write(bytes([kind]) + len(payload).to_bytes(2, "big") + payload)

    def send_dtmf(self, digit: str) -> None:
        """Send a DTMF frame (kind 0x03, one ASCII digit; fact 4)."""
        self.transport.write(b"\x03\x00\x01" + digit.encode("ascii"))

    def close(self) -> None:
        """Close the connection (FIN, no frame: fact 5)."""
        if self.connected and self.transport is not None:
            self.transport.loseConnection()

    def connectionLost(self, reason: Any = None) -> None:
        """Tell the fake the server side is gone."""
        self.connected = False
        try:
            self._on_lost()
        except Exception:
            self.log.failure("Handling the end of a fake AudioSocket connection failed")


class _AudioSocketFactory(Factory):
    def __init__(self, uuid_bytes: bytes, on_lost: Callable[[], None]) -> None:
        self._uuid_bytes = uuid_bytes
        self._on_lost = on_lost

    def buildProtocol(self, addr: Any) -> FakeAudioSocketConnection:
        """One connection's protocol."""
        proto = FakeAudioSocketConnection(self._uuid_bytes, self._on_lost)
        proto.factory = self
        return proto


class AriEventsProtocol(WebSocketServerProtocol):
    """One ``/ari/events`` WebSocket: JSON text frames for the apps named in ``app=``; no pings (fact 27)."""

    log = Logger()

    def __init__(self) -> None:
        super().__init__()
        self.apps: list[str] = []
        self.subscribe_all = False
        #: fires when the connection is gone
        self.gone: defer.Deferred = defer.Deferred()

    def onConnect(self, request: Any) -> None:
        """Check credentials (Basic or ``api_key``) and ``app`` as Asterisk does (401, 400; 404 while booting)."""
        fake: FakeAsterisk = self.factory.fake
        if fake.status != "up":
            raise ConnectionDeny(404, "Not Found")
        params = request.params
        api_key = (params.get("api_key") or [None])[-1]
        if not fake.authorized(request.headers.get("authorization"), api_key):
            raise ConnectionDeny(401, "Unauthorized")
        names = valid_app_names((params.get("app") or [""])[-1])
        if not names:
            raise ConnectionDeny(400, "HTTP request is missing param: [app]")
        self.apps = names
        self.subscribe_all = (params.get("subscribeAll") or ["false"])[-1] == "true"
        return None

    def onOpen(self) -> None:
        """Register the applications (a previous socket of the same app gets ApplicationReplaced)."""
        fake: FakeAsterisk = self.factory.fake
        fake.sockets.add(self)
        fake.engine.attach(self, self.apps, self.subscribe_all)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        """Unregister (apps with a channel inside stay: fact 28)."""
        fake: FakeAsterisk = self.factory.fake
        if self in fake.sockets:
            fake.sockets.discard(self)
            fake.engine.detach(self)
        if not self.gone.called:
            self.gone.callback(None)

    def deliver(self, app_name: str, text: str) -> None:
        """Send one event (a compact JSON text frame)."""
        if self.state == WebSocketServerProtocol.STATE_OPEN:
            self.sendMessage(text.encode("utf-8"), isBinary=False)


class AriEventsFactory(WebSocketServerFactory):
    """The events WebSocket factory; refuses connections (no protocol) while the fake Asterisk is down."""

    protocol = AriEventsProtocol

    def __init__(self, fake: FakeAsterisk) -> None:
        super().__init__(url=None, server=None, reactor=fake.clock)
        self.fake = fake
        # No handshake timers: they would run on txaio's global reactor, not the injected clock.
        self.setProtocolOptions(openHandshakeTimeout=0, closeHandshakeTimeout=0, autoPingInterval=0)

    def buildProtocol(self, addr: Any) -> Any:
        """A protocol, or ``None`` (connection refused) while down."""
        if self.fake.status == "down":
            return None
        return super().buildProtocol(addr)


class FakeAsterisk:
    """
    A fake Asterisk 22.10.1 with ARI (see the module docstring).

    :param clock: ``IReactorTime`` for all timing (``task.Clock`` in unit tests, the reactor over loopback).
    :param users: ARI users and passwords (ari.conf); default ``{"avr": "avrpass"}``.
    :param app: the Stasis application `inbound_call` uses by default.
    :param dialplan: ``extensions.conf`` text for Local channels (default `FIXTURE_DIALPLAN`).
    :param sounds: extra ``{sound name: seconds}`` on top of `avr.testing.ari_model.DEFAULT_SOUNDS`.
    :param audiosocket_endpoint: ``(host, port) -> IStreamClientEndpoint`` used by externalMedia
        ``encapsulation=audiosocket``; ``None`` skips the TCP connection (pure unit tests).
    :param wall_start: epoch seconds shown at ``clock.seconds()`` now (default: the clock's time if it looks like
        a wall clock, else 2026-11-21T12:00:00Z).
    :param uuid_factory: makes bridge and playback ids.
    :param global_variables: dialplan globals (``GET /asterisk/variable``), restored by `restart`.
    :param dtmf_loopback: digits sent with ``/dtmf`` to a channel whose far end is outside the fake (PJSIP) come
        back as ChannelDtmfReceived on that channel (else they are only recorded in `sent_dtmf`). Local channels
        always deliver them to their other half, as captured.
    :param history: keep every request and delivered event in `requests` and `events` (turn off for long
        benchmark runs).
    """

    log = Logger()

    def __init__(
        self,
        clock: Any,
        *,
        users: Mapping[str, str] | None = None,
        app: str = "avr",
        dialplan: str | None = None,
        sounds: Mapping[str, float] | None = None,
        audiosocket_endpoint: Callable[[str, int], Any] | None = None,
        wall_start: float | None = None,
        uuid_factory: Callable[[], str] | None = None,
        global_variables: Mapping[str, str] | None = None,
        dtmf_loopback: bool = False,
        history: bool = True,
    ) -> None:
        self.clock = clock
        self.users = dict(users if users is not None else {"avr": "avrpass"})
        self.app = app
        now = clock.seconds()
        if wall_start is None:
            wall_start = now if now > 1e9 else 1795262400.0
        self.engine = AsteriskEngine(
            clock,
            wall_start=wall_start,
            dialplan=parse_dialplan(FIXTURE_DIALPLAN if dialplan is None else dialplan),
            sounds={**DEFAULT_SOUNDS, **(sounds or {})},
            uuid_factory=uuid_factory,
        )
        self.engine.dtmf_loopback = dtmf_loopback
        self.engine.history = history
        self.history = history
        self.engine.config_globals = dict(global_variables or {})
        self.engine.global_vars = dict(self.engine.config_globals)
        self._audiosocket_endpoint = audiosocket_endpoint
        #: ``up``, ``down`` (connections refused) or ``booting`` (404 on ``/ari/...``)
        self.status = "up"
        #: every REST request received, in order
        self.requests: list[RecordedRequest] = []
        #: open events sockets
        self.sockets: set[AriEventsProtocol] = set()
        self.http_channels: weakref.WeakSet[Any] = weakref.WeakSet()
        self.audiosockets: dict[str, FakeAudioSocketConnection] = {}
        self._resource: AriResource | None = None
        self._factory: AriEventsFactory | None = None
        self._ws_resource: WebSocketResource | None = None
        self._site: Site | None = None
        self._reactor: Any = None
        self._listening: Any = None
        self._port_number = 0
        self._interface = "127.0.0.1"
        self._timers: list[Any] = []

    # ----------------------------------------------------------------------------------------------------------------
    # Wiring

    def resource(self) -> AriResource:
        """The HTTP root resource (``/ari/...`` REST and the ``/ari/events`` WebSocket upgrade)."""
        if self._resource is None:
            self._resource = AriResource(self)
        return self._resource

    def events_factory(self) -> AriEventsFactory:
        """The autobahn factory behind ``/ari/events`` (connect an iosim-pumped client to it in memory)."""
        if self._factory is None:
            self._factory = AriEventsFactory(self)
        return self._factory

    def site(self) -> Site:
        """A ``Site`` over `resource` (keep-alive connections idle out after 15 s: fact 10)."""
        if self._site is None:
            self._site = Site(self.resource(), reactor=self.clock)
            self._site.timeOut = 15
            self._site.displayTracebacks = False
        return self._site

    def listen(self, reactor: Any, port: int = 0, interface: str = "127.0.0.1") -> Any:
        """
        Serve `site` over TCP (the port is kept across `stop`/`start`/`restart`).

        :return: the ``IListeningPort``.
        """
        self._reactor = reactor
        self._interface = interface
        self._listening = reactor.listenTCP(port, self.site(), interface=interface)
        self._port_number = self._listening.getHost().port
        return self._listening

    @property
    def port(self) -> int:
        """The TCP port `listen` bound (0 before)."""
        return self._port_number

    def close(self) -> defer.Deferred:
        """
        Cancel every timer, drop every connection and stop listening (test teardown). Over loopback the Deferred
        also waits until the dropped events sockets are really closed; in memory it fires at once.
        """
        for call in self._timers:
            if call.active():
                call.cancel()
        self._timers.clear()
        self.engine.cancel_all()
        gone = [sock.gone for sock in self.sockets] if self._reactor is not None else []
        self._drop_connections()
        stopped = self._stop_listening()
        return defer.gatherResults([stopped, *gone], consumeErrors=True).addCallback(lambda _: None)

    # ----------------------------------------------------------------------------------------------------------------
    # Configuration

    def add_endpoint(self, resource: str, *, technology: str = "PJSIP", answer: str = "auto", delay: float = 0.0,
                     state: str = "online") -> Endpoint:  # fmt: skip
        """
        Configure an endpoint (``PJSIP/<resource>``) and how its far end behaves when originated to.

        :param answer: ``auto`` (answers after ``delay`` s; ringing first if ``delay`` > 0), ``never`` (rings until
            the originate timeout, then cause 19), ``busy`` (busy after ``delay`` s, cause 17) or ``manual`` (rings
            until `answer_remote`). Unconfigured endpoints fail originate with 500 ``Allocation failed``.
        """
        if answer not in ("auto", "never", "busy", "manual"):
            raise ValueError(f"Unknown endpoint behaviour {answer!r}")
        endpoint = Endpoint(technology, resource, answer, delay, state)
        self.engine.endpoints[(technology, resource)] = endpoint
        return endpoint

    def load_dialplan(self, text: str) -> None:
        """Add extensions from ``extensions.conf`` text (an extension given again replaces the old one)."""
        for context, extensions in parse_dialplan(text).items():
            self.engine.dialplan.setdefault(context, {}).update(extensions)

    def add_stored_recording(self, name: str, fmt: str = "wav", seconds: float = 1.0,
                             data: bytes | None = None) -> None:  # fmt: skip
        """Put a recording file in the spool (``data`` defaults to a valid WAV/raw file of ``seconds`` silence)."""
        self.engine.add_stored(name, fmt, seconds, data)

    def note_request(self, request: RecordedRequest) -> None:
        """Keep a received request in `requests` (unless ``history`` is off)."""
        if self.history:
            self.requests.append(request)

    def authorized(self, authorization: str | None, api_key: str | None) -> bool:
        """Basic credentials, else ``api_key=user:password`` (both checked against `users`)."""
        creds = parse_basic(authorization)
        if creds is None and api_key:
            user, sep, password = api_key.partition(":")
            creds = (user, password) if sep else None
        return creds is not None and self.users.get(creds[0]) == creds[1]

    # ----------------------------------------------------------------------------------------------------------------
    # Scenario control

    def inbound_call(
        self,
        caller_number: str,
        exten: str,
        answered: bool = False,
        *,
        app: str | None = None,
        args: Iterable[str] = (),
        caller_name: str = "",
        endpoint: str = "trunk",
        context: str = "from-external",
        channel_id: str | None = None,
    ) -> str:
        """
        A call arriving from ``PJSIP/<endpoint>`` and running ``Stasis(app,args)`` from the dialplan: state ``Ring``
        (``Up`` if ``answered``), then StasisStart with ``args``. If the app has no socket, the channel is created
        and hung up at once (``STASISSTATUS=FAILED``), with no events (fact 28).

        :return: the channel id.
        """
        ch = self.engine.inbound_call(caller_number, exten, answered=answered, app=app or self.app, args=args,
                                      caller_name=caller_name, endpoint=endpoint, context=context,
                                      channel_id=channel_id)  # fmt: skip
        return ch.id

    def remote_hangup(self, channel_id: str, cause: int = 16) -> None:
        """
        The far end hangs up with Q.850 ``cause``: ChannelHangupRequest ``{cause}`` (no ``soft``) → StasisEnd → …
        → ChannelDestroyed (delivered only while the app is still subscribed: originated channels, not inbound ones).
        """
        self.engine.remote_hangup(self._channel(channel_id), cause)

    def answer_remote(self, channel_id: str) -> None:
        """The far end of a ringing originated channel (``manual`` or ``never`` endpoint) answers."""
        self.engine.answer_remote(self._channel(channel_id))

    def remote_dtmf(self, channel_id: str, digits: str, duration_ms: int = 100, between_ms: int = 100) -> None:
        """The far end presses ``digits``: ChannelDtmfReceived on the channel, one per digit as it ends."""
        self.engine.remote_dtmf(self._channel(channel_id), digits, duration_ms, between_ms)

    def restart(self, *, eof_after: float = 1.1, refused_for: float = 0.3, booting_for: float = 0.6) -> None:
        """
        ``core restart now`` (fact 30): every channel is hung up at once (ChannelHangupRequest ``{cause:4,
        soft:true}`` … ChannelDestroyed cause 0); ``eof_after`` s later the events sockets get TCP EOF with no close
        frame and connections are refused for ``refused_for`` s; then ``/ari/...`` answers 404 for ``booting_for`` s;
        then Asterisk is up again with no channels, bridges or applications.
        """
        self.engine.shutdown()
        self._schedule(eof_after, self._go_down)
        self._schedule(eof_after + refused_for, self._go_booting)
        self._schedule(eof_after + refused_for + booting_for, self._go_up)

    def stop(self) -> defer.Deferred:
        """Asterisk dies (no events, no close frames): sockets dropped, connections refused until `start`."""
        self.engine.cancel_all()
        self.engine.reset()
        return self._go_down()

    def start(self) -> None:
        """Asterisk is back (fresh state)."""
        self.engine.reset()
        self._listen_again()
        self.status = "up"

    # ----------------------------------------------------------------------------------------------------------------
    # State

    @property
    def channels(self) -> dict[str, Channel]:
        """Live channels by id."""
        return self.engine.channels

    @property
    def bridges(self) -> dict[str, Bridge]:
        """Bridges by id."""
        return self.engine.bridges

    @property
    def playbacks(self) -> dict:
        """Playbacks in progress by id."""
        return self.engine.playbacks

    @property
    def live_recordings(self) -> dict:
        """Recordings in progress by name."""
        return self.engine.live_recordings

    @property
    def stored_recordings(self) -> dict:
        """Stored recordings by name (``.data`` holds the file)."""
        return self.engine.stored

    @property
    def apps(self) -> dict:
        """Registered Stasis applications by name."""
        return self.engine.apps

    @property
    def events(self) -> list[tuple[str, dict]]:
        """Every event delivered to a socket, as ``(application, event)``."""
        return self.engine.delivered

    @property
    def sent_dtmf(self) -> dict[str, list[str]]:
        """Digits sent with ``/dtmf`` to channels whose far end is outside the fake (PJSIP), by channel id."""
        return self.engine.sent_dtmf

    def leftovers(self) -> list[str]:
        """
        One line per channel and bridge still alive in the fake (what a test that ended every call must not
        leave): id, name, state and where it is (Stasis app, dialplan, bridge members).
        """
        lines = []
        for ch in self.engine.channels.values():
            if ch.stasis is not None:
                where = f"in Stasis app {ch.stasis.app}"
            elif ch.dialing:
                where = "dialling"
            else:
                where = f"in dialplan {ch.context},{ch.exten},{ch.priority} ({ch.app_name or 'no app'})"
            bridged = f", in bridge {ch.bridge.id}" if ch.bridge is not None else ""
            lines.append(f"channel {ch.id} {ch.name} ({ch.state}, {where}{bridged})")
        for bridge in self.engine.bridges.values():
            members = ", ".join(c.id for c in bridge.channels) or "empty"
            lines.append(f"bridge {bridge.id} {bridge.name!r} ({bridge.bridge_type}: {members})")
        return lines

    def assert_no_leftovers(self) -> None:
        """
        Fail (AssertionError) if a channel or bridge is still alive, naming each one (see `leftovers`).

        :raises AssertionError: something is left.
        """
        left = self.leftovers()
        if left:
            raise AssertionError("the fake Asterisk still holds:\n  " + "\n  ".join(left))

    async def settle_leftovers(self, timeout: float = 5.0) -> None:
        """
        Over loopback, where avr's clean-up requests are still in flight when a test's last event arrives: wait (on
        the fake's clock, polling every 10 ms) until nothing is left, then `assert_no_leftovers`.

        :param timeout: seconds to wait before failing.
        """
        waited = 0.0
        while self.leftovers() and waited < timeout:
            await task.deferLater(self.clock, 0.01, lambda: None)
            waited += 0.01
        self.assert_no_leftovers()

    def audiosocket(self, channel_id: str) -> FakeAudioSocketConnection:
        """The AudioSocket connection of an externalMedia channel."""
        return self.audiosockets[channel_id]

    def _channel(self, channel_id: str) -> Channel:
        ch = self.engine.channels.get(channel_id)
        if ch is None:
            raise KeyError(f"No channel {channel_id!r}")
        return ch

    # ----------------------------------------------------------------------------------------------------------------
    # Internals used by the HTTP layer

    def render_events(self, request: Any, query: list[tuple[str, str]]) -> Any:
        """``GET /ari/events``: 401 JSON, 400 HTML without ``app`` (fact 11), else the WebSocket upgrade."""
        params = dict(query)
        header = request.requestHeaders.getRawHeaders(b"authorization")
        wall = self.engine.wall()
        if not self.authorized(header[-1].decode("latin-1") if header else None, params.get("api_key")):
            write_response(request, wall, 401, body=b'{"message":"Authentication required"}',
                           content_type="application/json",
                           headers=(("WWW-Authenticate", f'Basic realm="{REALM}"'),))  # fmt: skip
            return NOT_DONE_YET
        if not valid_app_names(params.get("app", "")):
            write_response(request, wall, 400, body=html_error(400, "Bad Request",
                           "HTTP request is missing param: [app]"), content_type="text/html")  # fmt: skip
            return NOT_DONE_YET
        if self._ws_resource is None:
            self._ws_resource = WebSocketResource(self.events_factory())
        self.http_channels.discard(request.channel)
        return self._ws_resource.render(request)

    def external_media(self, params: dict, variables: dict | None) -> Any:
        """``POST /channels/externalMedia``; with an AudioSocket endpoint factory, connects first (a Deferred)."""
        engine = self.engine
        checked = engine.external_media_check(params)
        kind, host, port, _fmt, data = checked
        if kind != "audiosocket" or self._audiosocket_endpoint is None:
            return engine.external_media_create(params, checked, None, variables)
        holder: dict[str, Channel] = {}

        def lost() -> None:
            """The server side closed: the channel hangs up."""
            ch = holder.get("channel")
            if ch is not None:
                self.audiosockets.pop(ch.id, None)
                engine.audiosocket_lost(ch)

        endpoint = self._audiosocket_endpoint(host, int(port))
        d = endpoint.connect(_AudioSocketFactory(uuid.UUID(data).bytes, lost))
        d.addTimeout(5, self.clock)

        def refused(failure: Any) -> None:
            """No connection: 500, as Asterisk answers."""
            self.log.info("Fake Asterisk: AudioSocket connection to {host}:{port} failed: {why}", host=host,
                          port=port, why=failure.getErrorMessage())  # fmt: skip
            raise AriHttpError(500, "An internal error prevented this request from being handled")

        def connected(conn: FakeAudioSocketConnection) -> dict:
            """Connected (UUID frame sent): create the channel."""
            try:
                body = engine.external_media_create(params, checked, conn, variables)
            except Exception:
                conn.close()
                raise
            ch = holder["channel"] = engine.channels[body["id"]]
            conn.channel_id = ch.id
            self.audiosockets[ch.id] = conn
            if not conn.connected:
                lost()
            return body

        d.addCallbacks(connected, refused)
        return d

    def _schedule(self, delay: float, fn: Callable[[], Any]) -> None:
        self._timers[:] = [c for c in self._timers if c.active()]
        self._timers.append(self.clock.callLater(delay, fn))

    def _go_down(self) -> defer.Deferred:
        self.status = "down"
        self._drop_connections()
        return self._stop_listening()

    def _go_booting(self) -> None:
        self.engine.cancel_all()
        self.engine.reset()
        self.status = "booting"
        self._listen_again()

    def _go_up(self) -> None:
        self.status = "up"

    def _drop_connections(self) -> None:
        for sock in list(self.sockets):
            self.sockets.discard(sock)
            self.engine.detach(sock)
            sock.dropConnection(abort=False)  # TCP EOF, no close frame (fact 30)
        for channel in list(self.http_channels):
            transport = getattr(channel, "transport", None)
            if transport is not None:
                transport.abortConnection()
        self.http_channels.clear()

    def _stop_listening(self) -> defer.Deferred:
        listening, self._listening = self._listening, None
        if listening is None:
            return defer.succeed(None)
        return defer.maybeDeferred(listening.stopListening)

    def _listen_again(self) -> None:
        if self._reactor is not None and self._listening is None:
            self._listening = self._reactor.listenTCP(self._port_number, self.site(), interface=self._interface)


__all__ = [
    "FIXTURE_DIALPLAN",
    "AriEventsFactory",
    "AriEventsProtocol",
    "FakeAsterisk",
    "FakeAudioSocketConnection",
]
