"""
The ``/events`` WebSocket stream: `EventsHub` fans call-control events out to every connected client.

A client first gets one ``snapshot`` message (the active calls and bridges), then every published event as one JSON
text message, in order. The snapshot is taken and the client subscribed in the same reactor turn, so no event is
lost or repeated between the two.

Each connection is a push producer for its transport: when the TCP send buffer fills, the transport pauses it and
further events wait in a bounded per-client queue; a client whose queue overflows is dropped (close code 1008) so
that it never slows the others or grows memory. Client messages are ignored.

Every timer (keep-alive pings, the closing deadline) runs on the hub's clock (`avr.wsclock`), none on autobahn's.
"""

from __future__ import annotations

import json
from collections import deque
from typing import Any, Callable, cast

from attrs import define, field
from autobahn.twisted.resource import WebSocketResource
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.interfaces import IConsumer, IPushProducer, IReactorTime
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from avr.control.records import iso
from avr.interfaces import IEventSink
from avr.wsclock import ConnectionTimers, WebSocketTimeouts, disable_autobahn_timers

#: The event of each captured audio frame: sent only to subscribers that ask (`EventsServerProtocol.audio_frames`).
AUDIO_FRAME = "call.audio_frame"

#: Close codes: policy violation (client too slow), going away (server shutting down), internal error.
CLOSE_TOO_SLOW = 1008
CLOSE_GOING_AWAY = 1001
CLOSE_INTERNAL_ERROR = 1011


def encode_event(event: dict[str, Any]) -> bytes:
    """One event as the UTF-8 JSON text of a WebSocket message (raises `ValueError`/`TypeError` if not JSON-able)."""
    return json.dumps(event, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")


@implementer(IEventSink)
class FanOut:
    """
    An `IEventSink` that hands each event to several sinks, in the order given; one failing sink never stops the
    others (a sink must not raise, but if it does the error is logged).
    """

    log = Logger()

    def __init__(self, *sinks: IEventSink) -> None:
        self.sinks = sinks

    def publish(self, event: dict) -> None:
        """Publish ``event`` to every sink."""
        for sink in self.sinks:
            try:
                sink.publish(event)
            except Exception:
                self.log.failure("Event sink {sink!r} failed on a {type} event", sink=sink, type=event.get("type"))


@implementer(IEventSink)
@define(eq=False)
class EventsHub:
    """
    The subscribers of ``/events``.

    :param clock: time source for the snapshot timestamp and every timer of the connections.
    :param max_queue: events a client may have waiting while its connection is paused (send buffer full) before
        it is dropped.
    :param ping_interval: seconds between WebSocket pings (0 disables).
    :param ping_timeout: seconds to wait for a pong before dropping the client.
    :param drop_timeout: seconds a closing client (too slow, shutdown, or closing itself) may take to finish the
        closing handshake and go away before its TCP connection is aborted.
    """

    clock: IReactorTime
    max_queue: int = 1000
    ping_interval: float = 30.0
    ping_timeout: float = 10.0
    drop_timeout: float = 5.0
    _subscribers: list[EventsServerProtocol] = field(factory=list, init=False)
    _connections: set[EventsServerProtocol] = field(factory=set, init=False)
    _stopping: bool = field(default=False, init=False)
    log = Logger()

    @property
    def timeouts(self) -> WebSocketTimeouts:
        """The timers of each connection (the opening handshake is over once the HTTP upgrade request is read)."""
        return WebSocketTimeouts(close=self.drop_timeout, ping_interval=self.ping_interval or None,
                                 ping_timeout=self.ping_timeout)

    @property
    def subscriber_count(self) -> int:
        """Clients currently receiving events."""
        return len(self._subscribers)

    def resource(self, snapshot: Callable[[], dict] | None = None) -> WebSocketResource:
        """
        A ``WebSocketResource`` for a Klein route to return (check authentication before returning it).

        :param snapshot: returns ``{"calls": [...], "bridges": [...]}`` for a new client; ``None`` sends empty
            lists (ARI not configured).
        """
        return WebSocketResource(EventsServerFactory(self, snapshot))

    @property
    def wants_audio_frames(self) -> bool:
        """Some subscriber asked for ``call.audio_frame`` events (``/events?audioFrames=true``)."""
        return any(s.audio_frames for s in self._subscribers)

    def publish(self, event: dict) -> None:
        """
        Send ``event`` to every subscriber (`IEventSink`); a ``call.audio_frame`` only to those that asked for
        them (asterisk-api sent every frame to every client, D22). Never raises, never blocks.
        """
        frames = event.get("type") == AUDIO_FRAME
        subscribers = [s for s in self._subscribers if s.audio_frames] if frames else list(self._subscribers)
        if frames and not subscribers:
            return
        try:
            payload = encode_event(event)
        except (TypeError, ValueError):
            self.log.failure("Dropping an event that is not JSON: type={type}", type=event.get("type"))
            return
        for subscriber in subscribers:
            subscriber.deliver(payload)

    def stop(self) -> Deferred:
        """
        Close every client (code 1001) and refuse new ones.

        :return: a Deferred that fires when every connection is gone (stragglers are aborted after
            ``drop_timeout``).
        """
        self._stopping = True
        self._subscribers.clear()
        waits = []
        for connection in list(self._connections):
            waits.append(connection.when_lost())
            connection.close(CLOSE_GOING_AWAY, "server shutting down")
        if not waits:
            return succeed(None)
        return DeferredList(waits).addCallback(lambda _: None)

    # -- called by EventsServerProtocol ----------------------------------------------------------------------------

    def connected(self, protocol: EventsServerProtocol) -> None:
        """A TCP connection was handed to the WebSocket protocol (before the handshake)."""
        self._connections.add(protocol)

    def opened(self, protocol: EventsServerProtocol, snapshot: Callable[[], dict] | None) -> None:
        """The handshake is done: send the snapshot and subscribe, in one go."""
        if self._stopping:
            protocol.close(CLOSE_GOING_AWAY, "server shutting down")
            return
        try:
            state = snapshot() if snapshot is not None else {}
            message = {
                "type": "snapshot",
                "calls": list(state.get("calls", [])),
                "bridges": list(state.get("bridges", [])),
                "timestamp": iso(self.clock.seconds()),
            }
            payload = encode_event(message)
        except Exception:
            self.log.failure("Cannot build the /events snapshot for {peer}", peer=protocol.peer)
            protocol.close(CLOSE_INTERNAL_ERROR, "snapshot failed")
            return
        protocol.deliver(payload)
        self._subscribers.append(protocol)
        self.log.info("/events client connected: {peer} ({count} subscribed)", peer=protocol.peer,
                      count=len(self._subscribers))

    def unsubscribe(self, protocol: EventsServerProtocol) -> None:
        """Stop sending events to ``protocol`` (idempotent)."""
        if protocol in self._subscribers:
            self._subscribers.remove(protocol)

    def lost(self, protocol: EventsServerProtocol) -> None:
        """The connection is gone."""
        was_subscribed = protocol in self._subscribers
        self.unsubscribe(protocol)
        self._connections.discard(protocol)
        if was_subscribed:
            self.log.info("/events client disconnected: {peer} ({count} subscribed)", peer=protocol.peer,
                          count=len(self._subscribers))


@implementer(IPushProducer)
class EventsServerProtocol(WebSocketServerProtocol):
    """
    One ``/events`` client. Sends the hub's messages; ignores what the client sends.

    Registers itself as the streaming producer of its transport (replacing the HTTP channel that owned the
    connection before the upgrade), so the transport's ``pauseProducing`` tells it when the client is not keeping up.
    """

    # Not ``log``: that is autobahn's own logger, which keeps its debug chatter (every frame sent) out of the log.
    _log = Logger()
    #: The connection's timers, on the hub's clock (made in ``connectionMade``, once the factory is known).
    _timers: ConnectionTimers

    def __init__(self) -> None:
        WebSocketServerProtocol.__init__(self)
        self._queue: deque[bytes] = deque()
        self._paused = False
        self._closing = False
        self._lost = False
        self._lost_waiters: list[Deferred] = []
        #: The client asked for ``call.audio_frame`` events (``?audioFrames=true`` on the upgrade request).
        self.audio_frames = False

    @property
    def hub(self) -> EventsHub:
        """The hub this connection belongs to."""
        return self.factory.hub

    # -- autobahn / Twisted callbacks --------------------------------------------------------------------------

    def connectionMade(self) -> None:
        self._timers = ConnectionTimers(self, self.hub.clock, self.hub.timeouts)
        self._timers.connected()
        WebSocketServerProtocol.connectionMade(self)
        self.hub.connected(self)

    def onConnect(self, request: Any) -> None:
        values = request.params.get("audioFrames") or request.params.get("audio_frames") or [""]
        self.audio_frames = values[0].strip().lower() in ("1", "true", "yes")

    def onOpen(self) -> None:
        self._timers.opened()
        try:
            # The HTTP channel registered itself as the producer before the upgrade; it no longer uses the connection.
            transport = cast(IConsumer, self.transport)  # a TCP or TLS transport
            transport.unregisterProducer()
            transport.registerProducer(self, True)
        except Exception:
            self._log.failure("Cannot watch the send buffer of /events client {peer}", peer=self.peer)
        self.hub.opened(self, self.factory.snapshot)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        """Client messages carry no meaning: ignored."""

    def onPong(self, payload: bytes) -> None:
        self._timers.pong()

    def onCloseFrame(self, code: int, reasonRaw: bytes) -> bool | None:
        """The client started or answered the closing handshake: the connection goes within ``drop_timeout``."""
        result = WebSocketServerProtocol.onCloseFrame(self, code, reasonRaw)
        if not self._lost:
            self._timers.closing()
        return result

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self.hub.unsubscribe(self)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._timers.lost()
        WebSocketServerProtocol.connectionLost(self, reason)
        self._lost = True
        self._queue.clear()
        self.hub.lost(self)
        waiters, self._lost_waiters = self._lost_waiters, []
        for waiter in waiters:
            waiter.callback(None)

    # -- IPushProducer (driven by the transport) -----------------------------------------------------------------

    def pauseProducing(self) -> None:
        """The transport's send buffer is full: queue events from now on."""
        self._paused = True

    def resumeProducing(self) -> None:
        """The send buffer drained: send what waited, until it fills again."""
        self._paused = False
        while self._queue and not self._paused and not self._closing:
            self._send_event(self._queue.popleft())

    def stopProducing(self) -> None:
        """The connection is going away (``connectionLost`` follows)."""
        self._queue.clear()

    # -- used by the hub -----------------------------------------------------------------------------------------

    def deliver(self, payload: bytes) -> None:
        """Send one message now, or queue it while the transport is paused; drop the client on overflow."""
        if self._closing or self._lost:
            return
        if self._paused or self._queue:
            if len(self._queue) >= self.hub.max_queue:
                self._log.warn(
                    "Dropping /events client {peer}: too slow, {count} events waiting", peer=self.peer,
                    count=len(self._queue))
                self.close(CLOSE_TOO_SLOW, f"too slow: more than {self.hub.max_queue} events waiting")
                return
            self._queue.append(payload)
            return
        self._send_event(payload)

    def close(self, code: int, reason: str) -> None:
        """
        Stop sending events, send a close frame with ``code`` and ``reason``, and abort the connection if it is
        still there after the hub's ``drop_timeout``.
        """
        if self._lost:
            return
        self.hub.unsubscribe(self)
        self._queue.clear()
        if self._closing:
            return
        self._closing = True
        if self.state == self.STATE_OPEN:
            self.sendCloseFrame(code=code, reasonUtf8=reason.encode("utf-8")[:123])
            self._timers.closing()
        else:
            self.dropConnection(abort=True)

    def when_lost(self) -> Deferred:
        """A Deferred that fires once the connection is gone."""
        if self._lost:
            return succeed(None)
        waiter: Deferred = Deferred()
        self._lost_waiters.append(waiter)
        return waiter

    def _send_event(self, payload: bytes) -> None:
        if self.state == self.STATE_OPEN:
            self.sendMessage(payload, isBinary=False)


class EventsServerFactory(WebSocketServerFactory):
    """
    Builds `EventsServerProtocol` for `EventsHub.resource`; served behind a ``WebSocketResource`` (no URL, no
    external port: the HTTP site owns the port).

    :param hub: the hub the connections join.
    :param snapshot: the snapshot source for new clients (``None``: empty lists).
    """

    protocol = EventsServerProtocol

    def __init__(self, hub: EventsHub, snapshot: Callable[[], dict] | None) -> None:
        WebSocketServerFactory.__init__(self, reactor=hub.clock)
        self.hub = hub
        self.snapshot = snapshot
        self.setProtocolOptions(webStatus=False)
        disable_autobahn_timers(self)
