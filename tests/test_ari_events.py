"""AriEventStream: the ARI events WebSocket kept connected (in memory with iosim, time on a Clock)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.types import ConnectionDeny
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.logger import Logger, formatEvent
from twisted.test import iosim
from zope.interface import implementer

from avr.ari.events import AriEventStream, endpoint_connector, events_url
from avr.interfaces import IAriEventListener

PASSWORD = "pa55:w0rd"


@implementer(IAriEventListener)
class Listener:
    """Records what the stream reports."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    def ari_connected(self) -> None:
        self.calls.append(("connected", None))

    def ari_event(self, event: dict) -> None:
        if event.get("type") == "Boom":
            raise RuntimeError("listener bug")
        self.calls.append(("event", event["type"]))

    def ari_disconnected(self, reason: str) -> None:
        self.calls.append(("disconnected", reason))


class FakeAriServerProtocol(WebSocketServerProtocol):
    """The /ari/events side of a fake Asterisk."""

    def onConnect(self, request: Any) -> None:
        self.factory.requests.append(request)
        if self.factory.status != 101:
            raise ConnectionDeny(self.factory.status, "Not Found")
        return None

    def onOpen(self) -> None:
        self.factory.open.append(self)

    def send(self, event: dict) -> None:
        self.sendMessage(json.dumps(event).encode())


class Net:
    """An in-memory network: each connect builds an iosim pair with the fake server."""

    def __init__(self) -> None:
        self.server = WebSocketServerFactory()
        self.server.protocol = FakeAriServerProtocol
        self.server.setProtocolOptions(openHandshakeTimeout=0, closeHandshakeTimeout=0)
        self.server.requests = []
        self.server.open = []
        self.server.status = 101
        self.refuse = False
        self.hang = False
        self.pumps: list[iosim.IOPump] = []
        self.attempts = 0

    def connect(self, factory: Any) -> Deferred:
        self.attempts += 1
        if self.refuse:
            return fail(ConnectionRefusedError())
        if self.hang:
            return Deferred()
        client = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 8088))
        server = self.server.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        pump = iosim.connect(server, iosim.FakeTransport(server, isServer=True), client,
                             iosim.FakeTransport(client, isServer=False), greet=False)
        self.pumps.append(pump)
        return succeed(client)

    def flush(self) -> None:
        for pump in self.pumps:
            pump.flush()

    @property
    def last(self) -> FakeAriServerProtocol:
        return self.server.open[-1]


def make(**kwargs: Any) -> tuple[AriEventStream, Net, Listener, Clock]:
    net, listener, clock = Net(), Listener(), Clock()
    kwargs.setdefault("rand", lambda: 0.5)  # no jitter: exact delays
    stream = AriEventStream(clock, net.connect, "http://127.0.0.1:8088", "avr", "avr", PASSWORD, listener, **kwargs)
    return stream, net, listener, clock


def connected() -> tuple[AriEventStream, Net, Listener, Clock]:
    stream, net, listener, clock = make()
    stream.start()
    net.flush()
    assert stream.state == "connected"
    return stream, net, listener, clock


def drop(net: Net) -> None:
    """Asterisk goes away without a close frame (TCP EOF)."""
    net.last.transport.loseConnection()
    net.flush()


def stop(stream: AriEventStream, net: Net, clock: Clock) -> None:
    done: list[Any] = []
    stream.stop().addBoth(done.append)
    net.flush()
    clock.advance(stream.close_timeout)
    net.flush()
    assert done == [None]
    assert clock.getDelayedCalls() == []


def test_events_url() -> None:
    """The URL carries app and api_key; https becomes wss; the redacted form hides the password."""
    url = events_url("http://127.0.0.1:8088/", "avr", "avr", "avrpass")
    assert url == "ws://127.0.0.1:8088/ari/events?app=avr&api_key=avr:avrpass"
    assert events_url("https://pbx:8089", "a b", "u", "p&q").startswith("wss://pbx:8089/ari/events?app=a%20b&")
    assert "p%26q" in events_url("https://pbx:8089", "a", "u", "p&q")
    stream, *_ = make()
    assert PASSWORD not in stream.redacted_url and "api_key=***" in stream.redacted_url


def test_connects_at_start_and_delivers_events() -> None:
    """start() connects with app and api_key; each JSON event goes to the listener, after ari_connected."""
    stream, net, listener, clock = connected()
    request = net.server.requests[0]
    assert request.path == "/ari/events"
    assert request.params == {"app": ["avr"], "api_key": [f"avr:{PASSWORD}"]}
    net.last.send({"type": "StasisStart", "channel": {"id": "1.2"}})
    net.flush()
    assert listener.calls == [("connected", None), ("event", "StasisStart")]
    stop(stream, net, clock)
    assert listener.calls[-1] == ("disconnected", "stopped")


@pytest.mark.logs_errors(r"The ARI listener failed on a Boom event")
def test_bad_messages_are_skipped() -> None:
    """Non-JSON, binary, typeless messages and a failing listener do not break the stream."""
    stream, net, listener, clock = connected()
    net.last.sendMessage(b"not json")
    net.last.sendMessage(b"\x00\x01", isBinary=True)
    net.last.sendMessage(b"[1, 2]")
    net.last.send({"type": "Boom"})
    net.last.send({"type": "StasisEnd"})
    net.flush()
    assert listener.calls == [("connected", None), ("event", "StasisEnd")]
    stop(stream, net, clock)


def test_refused_connections_back_off_exponentially_with_a_cap() -> None:
    """Refused connections are retried after 0.5, 1, 2, 4 ... s, capped at 30 s; a success resets the delay."""
    stream, net, listener, clock = make()
    net.refuse = True
    stream.start()
    delays = []
    for _ in range(8):
        assert stream.state == "disconnected"
        (call,) = clock.getDelayedCalls()
        delays.append(call.getTime() - clock.seconds())
        clock.advance(delays[-1])
    assert delays == [0.5, 1, 2, 4, 8, 16, 30, 30]
    net.refuse = False
    clock.advance(30)
    net.flush()
    assert stream.state == "connected" and listener.calls == [("connected", None)]
    drop(net)
    (call,) = clock.getDelayedCalls()
    assert call.getTime() - clock.seconds() == 0.5
    stop(stream, net, clock)


def test_jitter_spreads_the_delay() -> None:
    """The jitter multiplies each delay by a factor within ±20 %."""
    stream, net, listener, clock = make(rand=lambda: 1.0)
    net.refuse = True
    stream.start()
    (call,) = clock.getDelayedCalls()
    assert call.getTime() == pytest.approx(0.6)
    stop(stream, net, clock)


def test_404_while_asterisk_loads_is_retried() -> None:
    """Asterisk answers 404 on /ari/events while restarting: that is a failed attempt, retried until the 101."""
    stream, net, listener, clock = make()
    net.server.status = 404
    stream.start()
    net.flush()
    assert stream.state == "disconnected" and listener.calls == []
    assert "404" in (stream.last_error or "")
    net.server.status = 101
    clock.advance(0.5)
    net.flush()
    assert stream.state == "connected" and listener.calls == [("connected", None)]
    stop(stream, net, clock)


def test_failed_upgrades_back_off_like_refused_connections() -> None:
    """Each refused upgrade is one more failed attempt: the delays grow as for refused connections."""
    stream, net, listener, clock = make()
    net.server.status = 404
    stream.start()
    delays = []
    for _ in range(4):
        net.flush()
        assert stream.state == "disconnected"
        (call,) = clock.getDelayedCalls()
        delays.append(call.getTime() - clock.seconds())
        clock.advance(delays[-1])
    assert delays == [0.5, 1, 2, 4]
    assert len(net.server.requests) == 4 and listener.calls == []
    stop(stream, net, clock)


def test_an_upgrade_that_is_never_answered_times_out() -> None:
    """TCP is up but the upgrade gets no answer: dropped after connect_timeout, retried."""
    stream, net, listener, clock = make(connect_timeout=3)
    stream.start()  # nothing is pumped: the server never sees the request
    assert stream.state == "connecting"
    clock.advance(3)
    net.flush()
    assert stream.state == "disconnected" and stream.last_error == "no WebSocket upgrade within 3 s"
    clock.advance(0.5)
    net.flush()
    assert stream.state == "connected" and net.attempts == 2
    stop(stream, net, clock)


def test_stop_during_the_upgrade_drops_the_connection() -> None:
    """stop() while the upgrade is under way drops the socket; nothing reconnects, no listener call."""
    stream, net, listener, clock = make()
    stream.start()
    done: list[Any] = []
    stream.stop().addBoth(done.append)
    net.flush()
    assert done == [None] and clock.getDelayedCalls() == []
    assert net.pumps[0].clientIO.disconnected and listener.calls == []
    clock.advance(100)
    net.flush()
    assert net.attempts == 1 and stream.state == "disconnected"


def test_drop_mid_stream_reconnects_and_resyncs() -> None:
    """A dropped socket (no close frame, as when Asterisk restarts) → ari_disconnected, retry, ari_connected."""
    stream, net, listener, clock = connected()
    drop(net)
    assert stream.state == "disconnected"
    assert listener.calls[-1][0] == "disconnected" and "connection lost" in listener.calls[-1][1]
    clock.advance(0.5)
    net.flush()
    assert [c[0] for c in listener.calls] == ["connected", "disconnected", "connected"]
    assert len(net.server.requests) == 2
    stop(stream, net, clock)


def test_application_replaced_backs_off_instead_of_fighting() -> None:
    """ApplicationReplaced: an error is logged, the socket closed, and the app is taken back only after 60 s,
    then 120 s after a second replacement."""
    stream, net, listener, clock = connected()
    logged: list[dict] = []
    stream.log = Logger(observer=logged.append)
    net.last.send({"type": "ApplicationReplaced", "application": "avr"})
    net.last.send({"type": "StasisStart"})
    net.flush()
    assert listener.calls == [("connected", None), ("disconnected", "application replaced by another ARI client")]
    assert any(e["log_level"].name == "error" and "ApplicationReplaced" in formatEvent(e) for e in logged)
    clock.advance(59.9)
    net.flush()
    assert len(net.server.requests) == 1
    clock.advance(0.1)
    net.flush()
    assert stream.state == "connected"
    net.last.send({"type": "ApplicationReplaced"})
    net.flush()
    clock.advance(119.9)
    assert len(net.server.requests) == 2
    clock.advance(0.1)
    net.flush()
    assert len(net.server.requests) == 3
    stop(stream, net, clock)


def test_silent_socket_is_detected_by_ping() -> None:
    """A socket that stops answering pings (Asterisk stopping) is dropped after the pong timeout and retried."""
    stream, net, listener, clock = connected()
    clock.advance(20)
    net.flush()  # the fake server answers the ping
    assert stream.state == "connected"
    clock.advance(20)  # ping sent, but nothing is pumped: no pong
    clock.advance(10)
    net.flush()
    assert listener.calls[-1] == ("disconnected", "no answer to a ping within 10 s")
    stop(stream, net, clock)


def test_hanging_connect_attempt_times_out() -> None:
    """A connect attempt that never completes is cancelled after connect_timeout and retried."""
    stream, net, listener, clock = make(connect_timeout=3)
    net.hang = True
    stream.start()
    clock.advance(3)
    assert stream.state == "disconnected" and "no connection within 3 s" in (stream.last_error or "")
    clock.advance(0.5)
    assert net.attempts == 2
    stop(stream, net, clock)


def test_stop_while_waiting_to_retry() -> None:
    """stop() cancels the retry timer; nothing reconnects afterwards."""
    stream, net, listener, clock = make()
    net.refuse = True
    stream.start()
    stop(stream, net, clock)
    clock.advance(100)
    assert net.attempts == 1 and stream.state == "disconnected"


def test_stop_closes_a_socket_that_ignores_the_close() -> None:
    """A peer that never answers the closing handshake is aborted after close_timeout."""
    stream, net, listener, clock = connected()
    done: list[Any] = []
    stream.stop().addBoth(done.append)
    assert done == []
    clock.advance(2)
    net.flush()
    assert done == [None] and clock.getDelayedCalls() == []
    assert net.attempts == 1


def test_the_password_is_never_logged(log_events: list[dict]) -> None:
    """Log lines show the redacted URL only: the stream's, and those of Twisted's ClientService."""
    stream, net, listener, clock = make()
    logged: list[dict] = []
    stream.log = Logger(observer=logged.append)
    net.refuse = True
    stream.start()
    clock.advance(0.5)
    text = "\n".join(formatEvent(e) for e in logged)
    assert "api_key=***" in text and PASSWORD not in text and "pa55" not in text
    everything = "\n".join(formatEvent(e) for e in log_events)
    assert "Scheduling retry" in everything and "api_key=***" in everything and "pa55" not in everything
    stop(stream, net, clock)


def test_endpoint_connector_builds_tcp_and_tls_endpoints() -> None:
    """The production connector connects to the factory's host and port (memory reactor)."""
    from autobahn.twisted.websocket import WebSocketClientFactory
    from twisted.internet.testing import MemoryReactorClock

    reactor = MemoryReactorClock()
    connect = endpoint_connector(reactor)
    connect(WebSocketClientFactory("ws://pbx.example:8088/ari/events?app=a"))
    reactor.advance(0)
    assert reactor.tcpClients and reactor.tcpClients[0][1] == 8088
