"""ConnectionTimers: the one timer policy of avr's WebSocket connections, on a Clock."""

from __future__ import annotations

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketServerFactory
from twisted.internet.task import Clock

from avr.wsclock import ConnectionTimers, WebSocketTimeouts, disable_autobahn_timers


class Peer:
    """Records what the timers do to an autobahn protocol."""

    def __init__(self) -> None:
        self.pings = 0
        self.dropped = False
        self.wasNotCleanReason: str | None = None

    def sendPing(self) -> None:
        self.pings += 1

    def dropConnection(self, abort: bool = False) -> None:
        assert abort
        self.dropped = True


def timers(**timeouts: float | None) -> tuple[ConnectionTimers, Peer, Clock]:
    peer, clock = Peer(), Clock()
    return ConnectionTimers(peer, clock, WebSocketTimeouts(**timeouts)), peer, clock  # type: ignore[arg-type]


def test_an_upgrade_that_does_not_finish_is_aborted() -> None:
    """The opening handshake has ``open`` seconds from TCP connect; then the connection is aborted, with a reason."""
    t, peer, clock = timers(open=3.0)
    t.connected()
    clock.advance(2.9)
    assert not peer.dropped
    clock.advance(0.1)
    assert peer.dropped
    assert t.reason == peer.wasNotCleanReason == "no WebSocket upgrade within 3 s"
    t.lost()
    assert clock.getDelayedCalls() == []


def test_no_open_limit_and_no_pings_leave_the_clock_empty() -> None:
    """Without an open limit or pings, an open connection has no timer at all."""
    t, peer, clock = timers()
    t.connected()
    assert clock.getDelayedCalls() == []
    t.opened()
    assert clock.getDelayedCalls() == []
    clock.advance(3600)
    assert peer.pings == 0 and not peer.dropped


def test_pings_while_answered_and_abort_when_not() -> None:
    """Open: a ping every interval while pongs come back; no pong within the timeout aborts the connection."""
    t, peer, clock = timers(open=5.0, ping_interval=20.0, ping_timeout=10.0)
    t.connected()
    clock.advance(1)
    t.opened()  # the opening deadline is gone
    clock.advance(19.9)
    assert peer.pings == 0
    clock.advance(0.1)
    assert peer.pings == 1
    t.pong()
    clock.advance(20)
    assert peer.pings == 2
    clock.advance(9.9)
    assert not peer.dropped
    clock.advance(0.1)
    assert peer.dropped and t.reason == "no answer to a ping within 10 s"


def test_an_unasked_pong_changes_nothing() -> None:
    """A pong while no ping is outstanding does not move the next ping."""
    t, peer, clock = timers(ping_interval=20.0)
    t.connected()
    t.opened()
    clock.advance(15)
    t.pong()
    clock.advance(5)
    assert peer.pings == 1


def test_closing_has_its_own_deadline_and_stops_the_pings() -> None:
    """A closing handshake (idempotent) replaces the pings by the close deadline; `lost` cancels it."""
    t, peer, clock = timers(close=2.0, ping_interval=20.0)
    t.connected()
    t.opened()
    clock.advance(19)
    t.closing()
    clock.advance(1.5)
    t.closing()  # does not restart the deadline
    clock.advance(0.5)
    assert peer.pings == 0 and peer.dropped
    assert t.reason == "closing handshake not finished within 2 s"
    t.lost()
    assert clock.getDelayedCalls() == []


def test_a_closed_connection_arms_nothing() -> None:
    """After `lost`, late calls (a close reported after the end) schedule nothing."""
    t, peer, clock = timers(close=2.0, ping_interval=20.0)
    t.connected()
    t.opened()
    t.lost()
    t.closing()
    t.pong()
    assert clock.getDelayedCalls() == []


def test_disable_autobahn_timers_turns_every_autobahn_timer_off() -> None:
    """Client and server factories: no handshake timeouts, no auto-ping, no wait for the server's drop."""
    client = WebSocketClientFactory("ws://127.0.0.1:9/")
    server = WebSocketServerFactory()
    disable_autobahn_timers(client)
    disable_autobahn_timers(server)
    for factory in (client, server):
        assert (factory.openHandshakeTimeout, factory.closeHandshakeTimeout, factory.autoPingInterval) == (0, 0, 0)
    assert client.serverConnectionDropTimeout == 0
