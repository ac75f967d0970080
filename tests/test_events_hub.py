"""
Tests for avr.control.hub: the /events WebSocket stream, in memory (Site + Klein + WebSocketResource on iosim
transports, with autobahn's own client), and FanOut.
"""

from __future__ import annotations

import json
from typing import Any, Callable

import pytest
from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from klein import Klein
from treq.testing import StubTreq
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.test import iosim
from twisted.web.server import Site
from zope.interface import implementer
from zope.interface.verify import verifyObject

from avr.control.call_registry import CallRegistry
from avr.control.hub import EventsHub, FanOut
from avr.control.routes import ControlRoutes
from avr.control.tasks import TaskGroup
from avr.http.json import add_route, install_error_handlers
from avr.interfaces import IEventSink

API_KEY = "s3cret-key"


class BufferedTransport(iosim.FakeTransport):
    """
    An in-memory transport that behaves like Twisted's TCP transport towards a streaming producer: it pauses the
    producer when more than ``limit`` bytes wait to be sent, and resumes it once the peer has read them.
    """

    limit = 2048

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.producer_paused = False

    def write(self, data: bytes) -> None:
        super().write(data)
        if (self.producer is not None and self.streamingProducer and not self.producer_paused
                and sum(map(len, self.stream)) > self.limit):
            self.producer_paused = True
            self.producer.pauseProducing()

    def getOutBuffer(self) -> Any:
        out = super().getOutBuffer()
        if self.producer_paused and self.producer is not None:
            self.producer_paused = False
            self.producer.resumeProducing()
        return out


class Client(WebSocketClientProtocol):
    """An /events client that records what it gets."""

    def __init__(self) -> None:
        WebSocketClientProtocol.__init__(self)
        self.opened = False
        self.messages: list[dict[str, Any]] = []
        self.closed: tuple[bool, int | None, str | None] | None = None
        self.pings = 0

    def onOpen(self) -> None:
        self.opened = True

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        assert not isBinary
        self.messages.append(json.loads(payload.decode("utf-8")))

    def onPing(self, payload: bytes) -> None:
        self.pings += 1
        WebSocketClientProtocol.onPing(self, payload)  # answers with a pong

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self.closed = (wasClean, code, reason)


class Server:
    """An HTTP site on a Clock serving ``resource_route`` at /events, and a way to connect WebSocket clients."""

    def __init__(self, app: Klein, clock: Clock) -> None:
        self.clock = clock
        self.site = Site(app.resource(), reactor=clock)
        self.pumps: list[iosim.IOPump] = []

    def connect(self, path: str = "/events", headers: dict[str, str] | None = None, greet: bool = True
                ) -> tuple[Client, iosim.IOPump]:
        factory = WebSocketClientFactory(f"ws://127.0.0.1:8080{path}", headers=headers or {}, reactor=self.clock)
        factory.protocol = Client
        factory.setProtocolOptions(openHandshakeTimeout=0, closeHandshakeTimeout=0, serverConnectionDropTimeout=0,
                                   autoPingInterval=0)
        client = factory.buildProtocol(None)
        peer = IPv4Address("TCP", "127.0.0.1", 40000 + len(self.pumps))
        server_protocol = self.site.buildProtocol(peer)
        server_io = BufferedTransport(server_protocol, isServer=True, peerAddress=peer)
        client_io = iosim.FakeTransport(client, isServer=False)
        pump = iosim.connect(server_protocol, server_io, client, client_io, greet=greet, clock=self.clock)
        self.pumps.append(pump)
        return client, pump


def quiet_hub(clock: Clock, **kwargs: Any) -> EventsHub:
    """A hub without keep-alive pings, so that the clock holds only the timers a test looks at."""
    return EventsHub(clock, ping_interval=0, **kwargs)


def serve_hub(hub: EventsHub, snapshot: Callable[[], dict] | None) -> Klein:
    """A Klein app serving the hub's resource at /events, without authentication."""
    app = Klein()
    install_error_handlers(app)
    resource = hub.resource(snapshot)
    add_route(app, "/events", lambda request: resource, methods=["GET"], endpoint="test.events")
    return app


def event(n: int) -> dict[str, Any]:
    """A call event with sequence number ``n``."""
    return {"type": "call.dtmf", "callId": "c1", "timestamp": f"2025-01-01T00:00:{n % 60:02d}.000Z",
            "data": {"digit": str(n % 10), "n": n}}


@pytest.fixture
def clock() -> Clock:
    """A clock at a fixed, recognisable time."""
    c = Clock()
    c.advance(1_700_000_000.25)
    return c


@pytest.fixture(autouse=True)
def no_global_timers() -> Any:
    """autobahn's own timers would run on the global reactor: these tests must leave none behind."""
    from twisted.internet import reactor

    before = set(reactor.getDelayedCalls())
    yield
    assert set(reactor.getDelayedCalls()) <= before


def test_providers_implement_ievent_sink(clock: Clock) -> None:
    """EventsHub and FanOut provide IEventSink."""
    assert verifyObject(IEventSink, quiet_hub(clock))
    assert verifyObject(IEventSink, FanOut())


def test_snapshot_first_then_events_in_order(clock: Clock) -> None:
    """A client gets the snapshot (calls, bridges, timestamp) first, then every later event once, in order."""
    state = {"calls": [{"id": "c1", "state": "answered"}], "bridges": [{"id": "b1"}]}
    hub = quiet_hub(clock)
    server = Server(serve_hub(hub, lambda: state), clock)
    hub.publish(event(0))  # before the client: not sent
    client, pump = server.connect()
    assert client.opened
    for n in range(1, 6):
        hub.publish(event(n))
    pump.flush()
    assert client.messages[0] == {"type": "snapshot", "calls": state["calls"], "bridges": state["bridges"],
                                  "timestamp": "2023-11-14T22:13:20.250Z"}
    assert [m["data"]["n"] for m in client.messages[1:]] == [1, 2, 3, 4, 5]
    assert hub.subscriber_count == 1


def test_no_event_lost_or_repeated_between_snapshot_and_stream(clock: Clock) -> None:
    """
    A model that publishes as it changes state: a call that starts before the client connects is in the
    snapshot only; one that starts after arrives only as an event.
    """
    hub = quiet_hub(clock)
    calls: list[dict[str, Any]] = []

    def start_call(call_id: str) -> None:
        calls.append({"id": call_id})
        hub.publish({"type": "call.created", "callId": call_id, "timestamp": "t", "data": {"state": "ringing"}})

    server = Server(serve_hub(hub, lambda: {"calls": list(calls), "bridges": []}), clock)
    start_call("before")
    client, pump = server.connect(greet=False)
    pump.pump()  # the client's handshake reaches the server, which answers and subscribes
    start_call("during")  # the client has not read the handshake answer yet
    pump.flush()
    start_call("after")
    pump.flush()
    snapshot, *events = client.messages
    seen = [c["id"] for c in snapshot["calls"]] + [e["callId"] for e in events]
    assert seen == ["before", "during", "after"]


def test_empty_snapshot_without_a_source(clock: Clock) -> None:
    """With no snapshot source (ARI not configured) the snapshot has empty lists."""
    hub = quiet_hub(clock)
    client, _ = Server(serve_hub(hub, None), clock).connect()
    assert client.messages[0]["type"] == "snapshot"
    assert (client.messages[0]["calls"], client.messages[0]["bridges"]) == ([], [])


def test_every_client_gets_every_event(clock: Clock) -> None:
    """Two clients both get the whole stream."""
    hub = quiet_hub(clock)
    server = Server(serve_hub(hub, None), clock)
    (a, pump_a), (b, pump_b) = server.connect(), server.connect()
    for n in range(3):
        hub.publish(event(n))
    pump_a.flush()
    pump_b.flush()
    assert [m["data"]["n"] for m in a.messages[1:]] == [m["data"]["n"] for m in b.messages[1:]] == [0, 1, 2]


def test_client_messages_are_ignored(clock: Clock) -> None:
    """What a client sends changes nothing: it stays subscribed and keeps receiving."""
    hub = quiet_hub(clock)
    client, pump = Server(serve_hub(hub, None), clock).connect()
    client.sendMessage(b'{"type": "subscribe", "nonsense": true}')
    client.sendMessage(b"\x00\x01", isBinary=True)
    pump.flush()
    hub.publish(event(1))
    pump.flush()
    assert client.closed is None
    assert client.messages[-1]["data"]["n"] == 1


def test_slow_client_is_dropped_while_a_fast_one_gets_everything(clock: Clock) -> None:
    """
    A client that stops reading fills its send buffer, then its queue; it is dropped with close code 1008 and its
    connection aborted after the grace time, while a client that reads gets every event in order.
    """
    hub = quiet_hub(clock, max_queue=10, drop_timeout=5.0)
    server = Server(serve_hub(hub, None), clock)
    fast, fast_pump = server.connect()
    slow, slow_pump = server.connect()
    assert hub.subscriber_count == 2
    for n in range(200):
        hub.publish(event(n))
        fast_pump.flush()
    assert [m["data"]["n"] for m in fast.messages[1:]] == list(range(200))
    assert hub.subscriber_count == 1
    slow_server_io = slow_pump.serverIO
    assert not slow_server_io.disconnecting
    clock.advance(5.0)
    assert slow_server_io.disconnecting  # aborted although the client never read
    slow_pump.flush()
    received = [m["data"]["n"] for m in slow.messages[1:]]
    assert received == list(range(len(received)))  # a prefix, in order, no gaps
    assert 10 < len(received) < 200
    assert slow.closed is not None and slow.closed[1] == 1008
    assert clock.getDelayedCalls() == []
    hub.publish(event(200))
    fast_pump.flush()
    assert fast.messages[-1]["data"]["n"] == 200


def test_paused_client_that_catches_up_loses_nothing(clock: Clock) -> None:
    """A client that falls behind but within the queue bound gets everything once it reads again."""
    hub = quiet_hub(clock, max_queue=100)
    server = Server(serve_hub(hub, None), clock)
    client, pump = server.connect()
    for n in range(60):  # far more than the transport's buffer, less than buffer + queue
        hub.publish(event(n))
    assert pump.serverIO.producer_paused
    pump.flush()
    assert [m["data"]["n"] for m in client.messages[1:]] == list(range(60))
    assert client.closed is None


def test_stop_closes_every_client(clock: Clock) -> None:
    """stop() sends close 1001 to all, fires once they are gone, and refuses later clients."""
    hub = quiet_hub(clock)
    server = Server(serve_hub(hub, None), clock)
    (a, pump_a), (b, pump_b) = server.connect(), server.connect()
    stopped = hub.stop()
    assert not stopped.called
    pump_a.flush()
    pump_b.flush()
    assert stopped.called
    assert a.closed is not None and a.closed[1] == 1001
    assert b.closed is not None and b.closed[1] == 1001
    assert hub.subscriber_count == 0
    late, late_pump = server.connect()
    late_pump.flush()
    assert late.messages == [] and late.closed is not None and late.closed[1] == 1001
    assert clock.getDelayedCalls() == []


def test_stop_aborts_clients_that_do_not_answer(clock: Clock) -> None:
    """A client that never answers the close frame is aborted after the drop timeout, then stop() fires."""
    hub = quiet_hub(clock, drop_timeout=2.0)
    _, pump = Server(serve_hub(hub, None), clock).connect()
    stopped = hub.stop()
    clock.advance(2.0)
    assert pump.serverIO.disconnecting
    pump.flush()
    assert stopped.called
    assert clock.getDelayedCalls() == []


def test_keep_alive_pings_run_on_the_hub_clock(clock: Clock) -> None:
    """
    With the default timers, the hub pings each client every 30 s of its clock; a client that answers stays, one
    that stops answering is dropped 10 s after the unanswered ping, and no timer is left anywhere (the autouse
    fixture checks the global reactor).
    """
    hub = EventsHub(clock)
    client, pump = Server(serve_hub(hub, None), clock).connect()
    clock.advance(29.9)
    pump.flush()
    assert client.pings == 0
    clock.advance(0.1)
    pump.flush()  # the client answers
    assert client.pings == 1 and hub.subscriber_count == 1
    clock.advance(30)  # the next ping is written, but the client does not read it any more
    clock.advance(9.9)
    assert not pump.serverIO.disconnecting
    clock.advance(0.1)
    assert pump.serverIO.disconnecting
    pump.flush()
    assert client.closed is not None and client.closed[1] == 1006
    assert hub.subscriber_count == 0
    assert clock.getDelayedCalls() == []


def test_a_client_closing_is_released_within_the_drop_timeout(clock: Clock) -> None:
    """A client's own close is answered; the server drops the connection, and no timer is left on the clock."""
    hub = EventsHub(clock, drop_timeout=2.0)
    client, pump = Server(serve_hub(hub, None), clock).connect()
    client.sendClose(1000)
    pump.flush()
    assert client.closed is not None and client.closed[0] and client.closed[1] == 1000
    assert hub.subscriber_count == 0
    assert clock.getDelayedCalls() == []


def test_stop_without_clients_fires_at_once(clock: Clock) -> None:
    """Nothing to close: stop() has fired already."""
    assert quiet_hub(clock).stop().called


@pytest.mark.logs_errors(r"Cannot build the /events snapshot")
def test_failing_snapshot_closes_the_client(clock: Clock) -> None:
    """If the snapshot cannot be built the client is closed (1011) rather than fed an incomplete state."""
    def broken() -> dict:
        raise RuntimeError("model exploded")

    hub = quiet_hub(clock)
    client, pump = Server(serve_hub(hub, broken), clock).connect()
    pump.flush()
    assert client.messages == []
    assert client.closed is not None and client.closed[1] == 1011
    assert hub.subscriber_count == 0


@pytest.mark.logs_errors(r"Dropping an event that is not JSON: type=call.bad")
def test_an_event_that_is_not_json_is_dropped_alone(clock: Clock) -> None:
    """publish() never raises: a non-JSON event is logged and skipped; the next one is delivered."""
    hub = quiet_hub(clock)
    client, pump = Server(serve_hub(hub, None), clock).connect()
    hub.publish({"type": "call.bad", "data": object()})
    hub.publish(event(7))
    pump.flush()
    assert [m.get("type") for m in client.messages] == ["snapshot", "call.dtmf"]


def test_plain_get_is_426_not_a_status_page(clock: Clock) -> None:
    """A GET without the upgrade headers is refused with 426 Upgrade Required (webStatus is off)."""
    hub = quiet_hub(clock)
    stub = StubTreq(serve_hub(hub, None).resource())
    response = stub.get("http://avr/events")
    stub.flush()
    assert response.result.code == 426


def routes_app(clock: Clock, hub: EventsHub, control: Any = None, api_key: str | None = API_KEY) -> Klein:
    """The real ControlRoutes (with /events behind the API key) on a Klein app."""
    app = Klein()
    install_error_handlers(app)
    registry = CallRegistry(clock, hub, TaskGroup(clock))
    ControlRoutes(control, hub, registry, max_body=65536, api_key=api_key, clock=clock).install(app)
    return app


@pytest.mark.parametrize(("path", "headers"), [
    ("/events", None),
    ("/events?api_key=wrong", None),
    ("/events", {"X-API-Key": "wrong"}),
])
def test_events_refuses_clients_without_the_key(clock: Clock, path: str, headers: dict | None) -> None:
    """With API_KEY set, /events needs it: the upgrade is answered 401 and nothing is sent."""
    hub = quiet_hub(clock)
    client, pump = Server(routes_app(clock, hub), clock).connect(path, headers)
    pump.flush()
    assert not client.opened and client.messages == []
    assert hub.subscriber_count == 0


@pytest.mark.parametrize(("path", "headers"), [
    (f"/events?api_key={API_KEY}", None),
    ("/events", {"X-API-Key": API_KEY}),
])
def test_events_accepts_the_key_in_header_or_query(clock: Clock, path: str, headers: dict | None) -> None:
    """The key works as X-API-Key header and as ?api_key=; the snapshot has the model's bridges."""

    class Model:
        def snapshot(self) -> dict:
            return {"calls": [], "bridges": [{"id": "b9"}]}

    hub = quiet_hub(clock)
    client, pump = Server(routes_app(clock, hub, control=Model()), clock).connect(path, headers)
    assert client.opened
    assert client.messages[0]["bridges"] == [{"id": "b9"}]


def test_events_401_is_json(clock: Clock) -> None:
    """A plain request to /events without the key gets the JSON 401 every route gives."""
    stub = StubTreq(routes_app(clock, quiet_hub(clock)).resource())
    response = stub.get("http://avr/events")
    stub.flush()
    assert response.result.code == 401
    body = stub.json_content(response.result)
    stub.flush()
    assert "API key" in body.result["error"]


@implementer(IEventSink)
class RecordingSink:
    """A sink that records events, or fails on demand."""

    def __init__(self, fail: bool = False) -> None:
        self.events: list[dict] = []
        self.fail = fail

    def publish(self, event: dict) -> None:
        if self.fail:
            raise RuntimeError("sink broken")
        self.events.append(event)


@pytest.mark.logs_errors(r"Event sink .* failed on a call.dtmf event")
def test_fan_out_reaches_every_sink_even_past_a_broken_one() -> None:
    """FanOut delivers to each sink in order; one raising does not stop the others, and nothing propagates."""
    first, broken, last = RecordingSink(), RecordingSink(fail=True), RecordingSink()
    fan = FanOut(first, broken, last)
    assert verifyObject(IEventSink, fan)
    fan.publish(event(1))
    fan.publish(event(2))
    assert first.events == last.events == [event(1), event(2)]
