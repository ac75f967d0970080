"""
The ARI events WebSocket (``/ari/events?app=<app>``), kept connected by `AriEventStream`.

Asterisk restarting answers ``404`` on ``/ari/events`` while its modules load, refuses connections for a moment, and
sends no close frame when it stops (a stopping Asterisk can even hold a silent socket for 15 s). So the stream
retries refused connections, failed upgrades and drops alike, with capped exponential backoff and jitter, and pings
the server so that a silent socket is noticed. After every successful (re)connect the listener's `ari_connected`
runs, so that the call model re-reads Asterisk's state: events sent while nobody listened are lost for good.

The parts:

- Twisted's ``ClientService`` connects and reconnects, waiting between attempts what `AriEventStream` answers as its
  retry policy (`Backoff`, or the hold-off after ``ApplicationReplaced``, `ReplacedHoldOff`). Its
  ``prepareConnection`` waits for the WebSocket upgrade, so a refused upgrade counts as a failed attempt, like a
  refused connection.
- `AriEventsProtocol` is one connection: its timers on the injected clock (`avr.wsclock`: upgrade deadline,
  keep-alive ping, closing handshake), `decode_event` for each message, and the ``ApplicationReplaced`` rule.
"""

from __future__ import annotations

import random
from typing import Any, Callable
from urllib.parse import quote, urlsplit, urlunsplit

from attrs import define, field, frozen
from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from autobahn.websocket.protocol import WebSocketProtocol
from twisted.application.internet import ClientService
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import IProtocol, IReactorTCP, IReactorTime, IStreamClientEndpoint
from twisted.internet.protocol import Factory, connectionDone
from twisted.internet.ssl import optionsForClientTLS
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from avr.config import redact_url
from avr.failures import describe_failure
from avr.interfaces import IAriEventListener
from avr.json_input import decode_json
from avr.logtext import clip
from avr.once import Once
from avr.wsclock import ConnectionTimers, WebSocketTimeouts, disable_autobahn_timers

#: The three values of `AriEventStream.state`.
CONNECTING = "connecting"
CONNECTED = "connected"
DISCONNECTED = "disconnected"

#: Largest event accepted (a GET /channels-sized event is a few kB; beyond this the peer is broken).
MAX_MESSAGE_BYTES = 4 * 1024 * 1024

#: Why the connection ended after ``ApplicationReplaced``.
REPLACED = "application replaced by another ARI client"

log = Logger()


def events_url(ari_url: str, app: str, username: str, password: str) -> str:
    """
    The events WebSocket URL for ``ARI_URL`` (``http://host:8088`` → ``ws://host:8088/ari/events?app=…&api_key=…``).

    The URL holds the password: log it only through `avr.config.redact_url`.
    """
    parts = urlsplit(ari_url.rstrip("/"))
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    query = f"app={quote(app, safe='')}&api_key={quote(f'{username}:{password}', safe=':')}"
    return urlunsplit((scheme, parts.netloc, parts.path + "/ari/events", query, ""))


def endpoint_connector(reactor: IReactorTCP) -> Callable[[Any], Deferred]:
    """
    The production ``ws_connect`` for `AriEventStream`: a TCP (or TLS, for ``wss://``) connection to the factory's
    ``host`` and ``port``. The returned Deferred fires with the protocol once TCP is connected.

    :param reactor: IReactorTCP + IReactorTime + IReactorPluggableNameResolver, as `HostnameEndpoint` needs.
    """

    def connect(factory: Any) -> Deferred:
        endpoint: Any = HostnameEndpoint(reactor, factory.host, factory.port)
        if factory.isSecure:
            endpoint = wrapClientTLS(optionsForClientTLS(factory.host), endpoint)
        return endpoint.connect(factory)

    return connect


def decode_event(payload: bytes, is_binary: bool) -> dict | None:
    """One message of the events socket as an ARI event (a JSON object with a string ``type``); ``None``, logged,
    for anything else."""
    if is_binary:
        log.warn("Skipping a binary message on the ARI events WebSocket ({size} bytes)", size=len(payload))
        return None
    try:
        event = decode_json(payload)
    except ValueError:
        log.warn("Skipping an ARI event that is not JSON: {start!r}", start=payload[:200])
        return None
    if not isinstance(event, dict) or not isinstance(event.get("type"), str):
        log.warn("Skipping an ARI message without a type: {start!r}", start=payload[:200])
        return None
    return event


@frozen
class Backoff:
    """
    Seconds before reconnect attempt ``n`` (1 for the first retry): ``initial``, multiplied by ``factor`` on each
    failure up to ``maximum``, then by a random factor in ``[1 - jitter, 1 + jitter]`` (``rand`` gives ``[0, 1)``).
    """

    initial: float
    maximum: float
    factor: float
    jitter: float
    rand: Callable[[], float]

    def __call__(self, attempt: int) -> float:
        base = min(self.maximum, self.initial * self.factor ** min(attempt - 1, 100))
        return max(0.0, base * (1 + self.jitter * (2 * self.rand() - 1)))


@define
class ReplacedHoldOff:
    """
    How long to leave the Stasis app to the other client after ``ApplicationReplaced``: ``base`` seconds, doubling
    on each replacement up to ten times ``base``, and back to ``base`` once a connection lived longer than that.
    """

    base: float
    _replacements: int = field(default=0, init=False)

    def next(self, lived: float) -> float:
        """The hold-off after a replacement that ended a connection which had been open ``lived`` seconds."""
        if lived > 10 * self.base:
            self._replacements = 0
        delay = min(self.base * 2 ** min(self._replacements, 10), 10 * self.base)
        self._replacements += 1
        return delay


class AttemptFailed(Exception):
    """A connection attempt ended before the WebSocket opened; ``reason`` is readable and has no secrets."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class AriEventsProtocol(WebSocketClientProtocol):
    """
    One events connection. Reports to ``factory.stream``: each event, ``ApplicationReplaced``, and the end of an
    open connection; `when_opened` tells ``prepareConnection`` how the upgrade went.
    """

    factory: AriEventsFactory
    _timers: ConnectionTimers

    def __init__(self) -> None:
        super().__init__()
        #: True once the upgrade is done (read by `_Gate` through ClientService's protocol wrapper).
        self.opened = False
        self._opening = Once()
        self._gone = Once()
        self._replaced = False
        self._abandoned = False

    def when_opened(self) -> Deferred:
        """
        Fires with this protocol once the WebSocket is open; fails with `AttemptFailed` if the connection ends
        before. Cancelling it drops the connection.
        """
        d: Deferred = Deferred(lambda _: self._abandon())

        def deliver(result: Any) -> None:
            if not d.called:  # else cancelled
                d.callback(result)

        self._opening.wait().addBoth(deliver)
        return d

    def when_lost(self) -> Deferred:
        """Fires once the connection is gone."""
        return self._gone.wait()

    def close(self) -> None:
        """Closing handshake if open (aborted after the close timeout), drop if still upgrading; else nothing."""
        if self.state == WebSocketProtocol.STATE_OPEN:
            self.sendClose(1000)
            self._timers.closing()
        elif self.state in (WebSocketProtocol.STATE_CONNECTING, WebSocketProtocol.STATE_PROXY_CONNECTING):
            self.dropConnection(abort=True)

    def end_unadmitted(self, reason: Failure) -> None:
        """The connection ended before it opened, unseen by ClientService (see `_Gate`)."""
        self.connectionLost(reason)

    def _abandon(self) -> None:
        self._abandoned = True
        self.dropConnection(abort=True)

    # -- autobahn callbacks

    def connectionMade(self) -> None:
        self._timers = ConnectionTimers(self, self.factory.clock, self.factory.timeouts)
        self._timers.connected()
        super().connectionMade()

    def onOpen(self) -> None:
        if self._abandoned:
            return
        self._timers.opened()
        self.opened = True
        self._opening.fire(self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        if self._replaced:
            return  # Asterisk keeps the socket open but sends it nothing more: another client owns the app now
        event = decode_event(payload, isBinary)
        if event is None:
            return
        if event["type"] == "ApplicationReplaced":
            self._replaced = True
            self.factory.stream.replaced()
            self.close()
            return
        self.factory.stream.event(event)

    def onPong(self, payload: bytes) -> None:
        self._timers.pong()

    def onCloseFrame(self, code: int, reasonRaw: bytes) -> bool | None:
        result = super().onCloseFrame(code, reasonRaw)
        if self.state != WebSocketProtocol.STATE_CLOSED:
            self._timers.closing()
        return result

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        why = REPLACED if self._replaced else self._timers.reason or _close_reason(code, reason)
        if self.opened:
            self.factory.stream.lost(self, why)
        else:
            self._opening.fire(Failure(AttemptFailed(why)))

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._timers.lost()
        super().connectionLost(reason)
        self._gone.fire(None)


class AriEventsFactory(WebSocketClientFactory):
    """
    Builds the `AriEventsProtocol` of each attempt (autobahn's timers off, see `avr.wsclock`).

    :param stream: receives what the connections report.
    :param clock: runs every timer of the connections.
    :param timeouts: the connections' timers.
    """

    protocol = AriEventsProtocol  # type: ignore[assignment]  # Factory[P]: see avr.audiosocket.AudioSocketFactory

    def __init__(self, url: str, stream: AriEventStream, clock: IReactorTime, timeouts: WebSocketTimeouts) -> None:
        WebSocketClientFactory.__init__(self, url, reactor=clock)
        self.stream = stream
        self.clock = clock
        self.timeouts = timeouts
        disable_autobahn_timers(self)
        self.setProtocolOptions(maxMessagePayloadSize=MAX_MESSAGE_BYTES)


@implementer(IProtocol)
class _Gate:
    """
    Between a transport and ClientService's wrapper of an `AriEventsProtocol`: ClientService hears that a connection
    is gone only if it had opened. One that ends during the upgrade has already failed its attempt through
    ``prepareConnection``, and ClientService's state machine has no transition for the loss of a connection it did
    not admit (``automat.NoTransition`` from ``connectionLost``, Twisted 26.10).
    """

    def __init__(self, wrapper: Any) -> None:
        #: ClientService's protocol wrapper (what its endpoint hands back to it).
        self.wrapper = wrapper

    def makeConnection(self, transport: Any) -> None:
        self.wrapper.makeConnection(transport)

    def connectionMade(self) -> None:
        """Part of ``makeConnection``, which the wrapper does."""

    def dataReceived(self, data: bytes) -> None:
        self.wrapper.dataReceived(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self.wrapper.opened:
            self.wrapper.connectionLost(reason)
        else:
            self.wrapper.end_unadmitted(reason)


class _GateFactory(Factory):
    """Puts a `_Gate` in front of each protocol of ``wrapped``; has the ``host``, ``port`` and ``isSecure`` of the
    events URL for ``ws_connect``."""

    def __init__(self, wrapped: Any, websocket: WebSocketClientFactory) -> None:
        self._wrapped = wrapped
        self.host = websocket.host
        self.port = websocket.port
        self.isSecure = websocket.isSecure

    # Twisted 26's Factory.buildProtocol returns its P, a Protocol with a ``factory``: the gate is an IProtocol only.
    def buildProtocol(self, addr: Any) -> _Gate | None:  # type: ignore[override]
        wrapper = self._wrapped.buildProtocol(addr)
        return None if wrapper is None else _Gate(wrapper)


@implementer(IStreamClientEndpoint)
class _AttemptEndpoint:
    """What ClientService connects through: ``ws_connect`` with a `_Gate`, TCP within ``timeout`` seconds."""

    def __init__(self, stream: AriEventStream, ws_connect: Callable[[Any], Deferred], factory: AriEventsFactory,
                 clock: IReactorTime, timeout: float) -> None:
        self._stream = stream
        self._ws_connect = ws_connect
        self._factory = factory
        self._clock = clock
        self._timeout = timeout

    def connect(self, protocolFactory: Any) -> Deferred:
        self._stream.attempt_started()
        try:
            d = self._ws_connect(_GateFactory(protocolFactory, self._factory))
        except Exception as e:
            d = Deferred()
            d.errback(AttemptFailed(f"cannot connect ({type(e).__name__}: {e})"))
        d.addTimeout(self._timeout, self._clock, onTimeoutCancel=self._timed_out)
        # ClientService gets its own wrapper back (it closes the connection through it), not the gate.
        return d.addCallbacks(lambda gate: gate.wrapper, self._stream.attempt_failed)

    def _timed_out(self, result: Any, timeout: float) -> Failure:
        return Failure(AttemptFailed(f"no connection within {timeout:g} s"))

    def __repr__(self) -> str:
        return f"<ARI events WebSocket {self._stream.redacted_url}>"


class AriEventStream:
    """
    Keeps the ARI events WebSocket of one Stasis application connected and feeds an `IAriEventListener`.

    :param clock: schedules retries, attempt timeouts and pings.
    :param ws_connect: ``ws_connect(factory) -> Deferred[protocol]`` opens the transport to ``factory.host`` and
        ``factory.port`` (see `endpoint_connector`; tests pass an in-memory or loopback one).
    :param url: ``ARI_URL`` (``http(s)://host:port``); the events URL is derived from it (see `events_url`).
    :param initial_delay: first retry delay, in seconds; it doubles (``factor``) on each failure up to
        ``max_delay`` and returns to ``initial_delay`` after a successful connect.
    :param jitter: each delay is multiplied by a random factor in ``[1 - jitter, 1 + jitter]``.
    :param connect_timeout: seconds for the TCP connection, and again for the WebSocket upgrade.
    :param ping_interval: seconds between keep-alive pings once connected (``None``: no pings).
    :param ping_timeout: seconds to wait for the pong before the connection is considered dead.
    :param close_timeout: seconds the server gets to finish the closing handshake before the socket is aborted.
    :param replaced_delay: seconds to wait before taking the application back after ``ApplicationReplaced``
        (doubles on each consecutive replacement, up to ten times this value).
    :param rand: source of randomness for the jitter (``random.random``).
    """

    log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        ws_connect: Callable[[Any], Deferred],
        url: str,
        app: str,
        username: str,
        password: str,
        listener: IAriEventListener,
        initial_delay: float = 0.5,
        max_delay: float = 30.0,
        factor: float = 2.0,
        jitter: float = 0.2,
        connect_timeout: float = 10.0,
        ping_interval: float | None = 20.0,
        ping_timeout: float = 10.0,
        close_timeout: float = 2.0,
        replaced_delay: float = 60.0,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self._clock = clock
        self._url = events_url(url, app, username, password) if "/ari/events" not in url else url
        self.app = app
        self._listener = listener
        self.close_timeout = close_timeout
        self._backoff = Backoff(initial_delay, max_delay, factor, jitter, rand)
        self._replaced = ReplacedHoldOff(replaced_delay)
        self._hold: float | None = None
        timeouts = WebSocketTimeouts(open=connect_timeout, close=close_timeout, ping_interval=ping_interval,
                                     ping_timeout=ping_timeout)
        factory = AriEventsFactory(self._url, self, clock, timeouts)
        self._service = ClientService(_AttemptEndpoint(self, ws_connect, factory, clock, connect_timeout), factory,
                                      retryPolicy=self._retry_delay, clock=clock, prepareConnection=self._prepare)
        self._state = DISCONNECTED
        self._running = False
        self._connection: AriEventsProtocol | None = None
        self._opened_at = 0.0
        #: Why the last connection or attempt ended (readable, no secrets), for status reports.
        self.last_error: str | None = None
        #: Connections opened (the first one included) and attempts that failed, so far (for ``/metrics``).
        self.connections = 0
        self.failed_attempts = 0

    @property
    def state(self) -> str:
        """``connecting`` (an attempt is under way), ``connected`` or ``disconnected``."""
        return self._state

    @property
    def redacted_url(self) -> str:
        """The events URL with the password masked."""
        return redact_url(self._url)

    def start(self) -> None:
        """Connect, and keep reconnecting until `stop` (idempotent)."""
        if self._running:
            return
        self._running = True
        self._service.startService()

    def stop(self) -> Deferred:
        """
        Stop reconnecting and close the socket (closing handshake, then abort after ``close_timeout``).

        :return: a Deferred that fires once the connection is gone.
        """
        self._running = False
        connection = self._connection
        if connection is None:
            return self._service.stopService()
        # The closing handshake first: ClientService would only close the TCP connection.
        gone = connection.when_lost()
        connection.close()
        return gone.addCallback(lambda _: self._service.stopService())

    # -- ClientService: attempts and retries ---------------------------------------------------------------------

    def attempt_started(self) -> None:
        """A connection attempt begins (`_AttemptEndpoint`)."""
        self._state = CONNECTING
        self.log.info("Connecting to the ARI events WebSocket {url}", url=self.redacted_url)

    def attempt_failed(self, failure: Failure) -> Failure:
        """An attempt failed (no connection, or no upgrade): remember why; ClientService retries."""
        self._state = DISCONNECTED
        self.failed_attempts += 1
        self.last_error = _describe(failure)
        return failure

    def _prepare(self, wrapper: Any) -> Deferred:
        return wrapper.when_opened().addCallbacks(self._opened, self.attempt_failed)

    def _retry_delay(self, attempt: int) -> float:
        delay = self._backoff(attempt) if self._hold is None else self._hold
        self._hold = None
        self._state = DISCONNECTED
        self.log.warn("ARI events WebSocket {url}: {reason}; retrying in {delay:.1f} s", url=self.redacted_url,
                      reason=self.last_error, delay=delay)
        return delay

    # -- what the open connection reports ------------------------------------------------------------------------

    def _opened(self, connection: AriEventsProtocol) -> None:
        self._connection = connection
        self._state = CONNECTED
        self.connections += 1
        self._opened_at = self._clock.seconds()
        self.last_error = None
        self.log.info("Connected to the ARI events WebSocket for Stasis app {app}", app=self.app)
        try:
            self._listener.ari_connected()
        except Exception:
            self.log.failure("The ARI listener failed on connect")

    def event(self, event: dict) -> None:
        """One event from the open connection."""
        try:
            self._listener.ari_event(event)
        except Exception:
            self.log.failure("The ARI listener failed on a {type} event", type=clip(event["type"]))

    def replaced(self) -> None:
        """``ApplicationReplaced``: the connection closes; the next attempt waits the hold-off."""
        self._hold = self._replaced.next(self._clock.seconds() - self._opened_at)
        self.log.error(
            "Another ARI client took over Stasis app {app} (ApplicationReplaced): two services use the same "
            "ARI_APP. Taking it back in {delay:g} s.", app=self.app, delay=self._hold)

    def lost(self, connection: AriEventsProtocol, why: str) -> None:
        """The open connection ended (ClientService reconnects, unless stopped)."""
        if connection is not self._connection:
            return
        self._connection = None
        self._state = DISCONNECTED
        self.last_error = why
        if self._running:
            self.log.warn("ARI events WebSocket lost ({reason})", reason=why)
        try:
            self._listener.ari_disconnected(why if self._running else "stopped")
        except Exception:
            self.log.failure("The ARI listener failed on disconnect")


def _close_reason(code: int | None, reason: str | None) -> str:
    if reason and "upgrade failed" in reason:
        # "connection was closed uncleanly (WebSocket connection upgrade failed [404]: Not Found)"
        return reason[reason.index("WebSocket connection upgrade failed"):].rstrip(")\"")
    if code in (None, 1006):
        return f"connection lost ({reason})" if reason else "connection lost"
    return f"closed with code {code}" + (f" ({reason})" if reason else "")


def _describe(failure: Failure) -> str:
    if isinstance(failure.value, AttemptFailed):
        return failure.value.reason
    return describe_failure(failure)
