"""
The ARI events WebSocket (``/ari/events?app=<app>``), kept connected by `AriEventStream`.

Asterisk restarting answers ``404`` on ``/ari/events`` while its modules load, refuses connections for a moment, and
sends no close frame when it stops (a stopping Asterisk can even hold a silent socket for 15 s). So the stream
retries refused connections, failed upgrades and drops alike, with capped exponential backoff and jitter, and pings
the server so that a silent socket is noticed. After every successful (re)connect the listener's `ari_connected`
runs, so that the call model re-reads Asterisk's state: events sent while nobody listened are lost for good.

autobahn's own timers run on txaio's global reactor, so they are all turned off and replaced by timers on the
injected clock (connect attempt timeout, keep-alive ping, closing handshake).
"""

from __future__ import annotations

import json
import random
from typing import Any, Callable
from urllib.parse import quote, urlsplit, urlunsplit

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from autobahn.websocket.protocol import WebSocketProtocol
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.ssl import optionsForClientTLS
from twisted.logger import Logger
from twisted.python.failure import Failure

from avr.ari.client import describe_connection_failure
from avr.config import redact_url
from avr.interfaces import IAriEventListener

#: The three values of `AriEventStream.state`.
CONNECTING = "connecting"
CONNECTED = "connected"
DISCONNECTED = "disconnected"

#: Largest event accepted (a GET /channels-sized event is a few kB; beyond this the peer is broken).
MAX_MESSAGE_BYTES = 4 * 1024 * 1024


def events_url(ari_url: str, app: str, username: str, password: str) -> str:
    """
    The events WebSocket URL for ``ARI_URL`` (``http://host:8088`` → ``ws://host:8088/ari/events?app=…&api_key=…``).

    The URL holds the password: log it only through `avr.config.redact_url`.
    """
    parts = urlsplit(ari_url.rstrip("/"))
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    query = f"app={quote(app, safe='')}&api_key={quote(f'{username}:{password}', safe=':')}"
    return urlunsplit((scheme, parts.netloc, parts.path + "/ari/events", query, ""))


def endpoint_connector(reactor: Any) -> Callable[[WebSocketClientFactory], Deferred]:
    """
    The production ``ws_connect`` for `AriEventStream`: a TCP (or TLS, for ``wss://``) connection to the factory's
    host and port. The returned Deferred fires with the protocol once TCP is connected.
    """

    def connect(factory: WebSocketClientFactory) -> Deferred:
        endpoint: Any = HostnameEndpoint(reactor, factory.host, factory.port)
        if factory.isSecure:
            endpoint = wrapClientTLS(optionsForClientTLS(factory.host), endpoint)
        return endpoint.connect(factory)

    return connect


def _disable_autobahn_timers(factory: WebSocketClientFactory) -> None:
    factory.setProtocolOptions(openHandshakeTimeout=0, closeHandshakeTimeout=0, autoPingInterval=0,
                               serverConnectionDropTimeout=0, maxMessagePayloadSize=MAX_MESSAGE_BYTES)


class AriEventsProtocol(WebSocketClientProtocol):
    """One events connection; reports everything to the `AriEventStream` that opened it (``factory.stream``)."""

    def onOpen(self) -> None:
        self.factory.stream._opened(self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.factory.stream._message(self, payload, isBinary)

    def onPong(self, payload: bytes) -> None:
        self.factory.stream._pong(self)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self.factory.stream._closed(self, code, reason)


class AriEventStream:
    """
    Keeps the ARI events WebSocket of one Stasis application connected and feeds an `IAriEventListener`.

    :param clock: schedules retries, attempt timeouts and pings.
    :param ws_connect: ``ws_connect(factory) -> Deferred[protocol]`` opens the transport (see `endpoint_connector`;
        tests pass an in-memory or loopback one).
    :param url: ``ARI_URL`` (``http(s)://host:port``); the events URL is derived from it (see `events_url`).
    :param initial_delay: first retry delay, in seconds; it doubles (``factor``) on each failure up to
        ``max_delay`` and returns to ``initial_delay`` after a successful connect.
    :param jitter: each delay is multiplied by a random factor in ``[1 - jitter, 1 + jitter]``.
    :param connect_timeout: seconds one attempt (TCP + upgrade) may take.
    :param ping_interval: seconds between keep-alive pings once connected (``None``: no pings).
    :param ping_timeout: seconds to wait for the pong before the connection is considered dead.
    :param replaced_delay: seconds to wait before taking the application back after ``ApplicationReplaced``
        (doubles on each consecutive replacement, up to ten times this value).
    :param rand: source of randomness for the jitter (``random.random``).
    """

    log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        ws_connect: Callable[[WebSocketClientFactory], Deferred],
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
        self._ws_connect = ws_connect
        self._url = events_url(url, app, username, password) if "/ari/events" not in url else url
        self.app = app
        self._listener = listener
        self.initial_delay = initial_delay
        self.max_delay = max_delay
        self.factor = factor
        self.jitter = jitter
        self.connect_timeout = connect_timeout
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.close_timeout = close_timeout
        self.replaced_delay = replaced_delay
        self._rand = rand
        self._state = DISCONNECTED
        self._running = False
        self._failures = 0
        self._replacements = 0
        self._protocol: AriEventsProtocol | None = None
        self._attempt: Deferred | None = None
        self._opened_at: float | None = None
        self._retry: IDelayedCall | None = None
        self._attempt_timer: IDelayedCall | None = None
        self._ping_timer: IDelayedCall | None = None
        self._pong_timer: IDelayedCall | None = None
        self._close_timer: IDelayedCall | None = None
        self._replaced = False
        self._replaced_delay_now = replaced_delay
        self._attempt_reason: str | None = None
        self._lost_reason: str | None = None
        self._stopped: list[Deferred] = []
        #: Why the last connection or attempt ended (readable, no secrets), for status reports.
        self.last_error: str | None = None

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
        self._failures = 0
        self._connect()

    def stop(self) -> Deferred:
        """
        Stop reconnecting, cancel every timer and close the socket (closing handshake, then abort after
        ``close_timeout``).

        :return: a Deferred that fires once the connection is gone.
        """
        self._running = False
        for name in ("_retry", "_attempt_timer", "_ping_timer", "_pong_timer"):
            self._cancel(name)
        if self._attempt is not None:
            attempt, self._attempt = self._attempt, None
            attempt.cancel()
        protocol = self._protocol
        if protocol is None:
            self._state = DISCONNECTED
            return succeed(None)
        done: Deferred = Deferred()
        self._stopped.append(done)
        if self._close_timer is None:
            self._close(protocol)
        return done

    def _close(self, protocol: AriEventsProtocol) -> None:
        """Closing handshake if the socket is open (abort after ``close_timeout``), else just drop it."""
        if protocol.state == WebSocketProtocol.STATE_OPEN:
            protocol.sendClose(1000)
            self._close_timer = self._clock.callLater(self.close_timeout, self._abort, protocol)
        else:
            protocol.dropConnection(abort=True)

    # -- attempts -------------------------------------------------------------------------------------------------

    def _connect(self) -> None:
        self._retry = None
        self._state = CONNECTING
        self._attempt_reason = None
        self.log.info("Connecting to the ARI events WebSocket {url}", url=self.redacted_url)
        factory = WebSocketClientFactory(self._url, reactor=self._clock)
        factory.protocol = AriEventsProtocol
        factory.stream = self
        _disable_autobahn_timers(factory)
        self._attempt_timer = self._clock.callLater(self.connect_timeout, self._attempt_timed_out)
        try:
            attempt = self._ws_connect(factory)
        except Exception as e:
            self._attempt_failed(f"cannot connect ({type(e).__name__}: {e})")
            return
        self._attempt = attempt
        attempt.addCallbacks(self._transport_up, self._transport_failed, errbackArgs=(attempt,),
                             callbackArgs=(attempt,))

    def _transport_up(self, protocol: AriEventsProtocol, attempt: Deferred) -> None:
        if attempt is self._attempt:
            self._attempt = None
        if protocol.state == WebSocketProtocol.STATE_CLOSED:
            return  # it already failed (in-memory transports can do that before this runs); _closed handled it
        if not self._running:
            protocol.dropConnection(abort=True)
            return
        self._protocol = protocol

    def _transport_failed(self, failure: Failure, attempt: Deferred) -> None:
        if attempt is not self._attempt:
            return None  # cancelled by stop() or by the attempt timeout, which already handled it
        self._attempt = None
        self._attempt_failed(_describe(failure))
        return None

    def _attempt_timed_out(self) -> None:
        self._attempt_timer = None
        if self._protocol is not None:
            self._attempt_reason = f"no WebSocket upgrade within {self.connect_timeout:g} s"
            self._protocol.dropConnection(abort=True)  # _closed follows and schedules the retry
            return
        attempt, self._attempt = self._attempt, None
        if attempt is not None:
            attempt.cancel()
        self._attempt_failed(f"no connection within {self.connect_timeout:g} s")

    def _attempt_failed(self, reason: str) -> None:
        self._cancel("_attempt_timer")
        self.last_error = reason
        self._state = DISCONNECTED
        if not self._running:
            return
        delay = self._next_delay()
        self.log.warn("ARI events WebSocket {url}: {reason}; retrying in {delay:.1f} s", url=self.redacted_url,
                      reason=reason, delay=delay)
        self._retry = self._clock.callLater(delay, self._connect)

    def _next_delay(self) -> float:
        base = min(self.max_delay, self.initial_delay * self.factor ** self._failures)
        self._failures += 1
        return max(0.0, base * (1 + self.jitter * (2 * self._rand() - 1)))

    # -- the open connection ----------------------------------------------------------------------------------------

    def _opened(self, protocol: AriEventsProtocol) -> None:
        self._cancel("_attempt_timer")
        if not self._running:
            protocol.dropConnection(abort=True)
            return
        self._protocol = protocol
        self._state = CONNECTED
        self._failures = 0
        self._replaced = False
        self._opened_at = self._clock.seconds()
        self.last_error = None
        self.log.info("Connected to the ARI events WebSocket for Stasis app {app}", app=self.app)
        self._schedule_ping()
        try:
            self._listener.ari_connected()
        except Exception:
            self.log.failure("The ARI listener failed on connect")

    def _message(self, protocol: AriEventsProtocol, payload: bytes, is_binary: bool) -> None:
        if protocol is not self._protocol or self._replaced:
            return
        if is_binary:
            self.log.warn("Skipping a binary message on the ARI events WebSocket ({size} bytes)", size=len(payload))
            return
        try:
            event = json.loads(payload.decode("utf-8"))
        except ValueError:
            self.log.warn("Skipping an ARI event that is not JSON: {start!r}", start=payload[:200])
            return
        if not isinstance(event, dict) or not isinstance(event.get("type"), str):
            self.log.warn("Skipping an ARI message without a type: {start!r}", start=payload[:200])
            return
        if event["type"] == "ApplicationReplaced":
            self._application_replaced(protocol)
            return
        try:
            self._listener.ari_event(event)
        except Exception:
            self.log.failure("The ARI listener failed on a {type} event", type=event["type"])

    def _application_replaced(self, protocol: AriEventsProtocol) -> None:
        # Asterisk keeps the old socket open but sends it nothing more: another client owns the app now.
        lived = self._clock.seconds() - (self._opened_at or 0.0)
        if lived > 10 * self.replaced_delay:
            self._replacements = 0
        delay = min(self.replaced_delay * 2 ** self._replacements, 10 * self.replaced_delay)
        self._replacements += 1
        self._replaced = True
        self.log.error(
            "Another ARI client took over Stasis app {app} (ApplicationReplaced): two services use the same "
            "ARI_APP. Taking it back in {delay:g} s.", app=self.app, delay=delay)
        self._replaced_delay_now = delay
        self._close(protocol)

    def _schedule_ping(self) -> None:
        if self.ping_interval is not None:
            self._ping_timer = self._clock.callLater(self.ping_interval, self._ping)

    def _ping(self) -> None:
        self._ping_timer = None
        protocol = self._protocol
        if protocol is None or self._state != CONNECTED:
            return
        protocol.sendPing()
        self._pong_timer = self._clock.callLater(self.ping_timeout, self._pong_missing, protocol)

    def _pong(self, protocol: AriEventsProtocol) -> None:
        if protocol is self._protocol and self._pong_timer is not None:
            self._cancel("_pong_timer")
            self._schedule_ping()

    def _pong_missing(self, protocol: AriEventsProtocol) -> None:
        self._pong_timer = None
        self._lost_reason = f"no answer to a ping within {self.ping_timeout:g} s"
        self.log.warn("ARI events WebSocket: no answer to a ping within {timeout:g} s; reconnecting",
                      timeout=self.ping_timeout)
        protocol.dropConnection(abort=True)

    def _abort(self, protocol: AriEventsProtocol) -> None:
        self._close_timer = None
        protocol.dropConnection(abort=True)

    def _closed(self, protocol: AriEventsProtocol, code: int | None, reason: str | None) -> None:
        if self._protocol is not None and protocol is not self._protocol:
            return
        was_connected = self._state == CONNECTED
        replaced, self._replaced = self._replaced, False
        self._protocol = None
        for name in ("_attempt_timer", "_ping_timer", "_pong_timer", "_close_timer"):
            self._cancel(name)
        if replaced:
            why = "application replaced by another ARI client"
        elif self._lost_reason is not None:
            why = self._lost_reason
        elif not was_connected and self._attempt_reason is not None:
            why = self._attempt_reason
        else:
            why = _close_reason(code, reason)
        self._lost_reason = None
        self._state = DISCONNECTED
        stopped, self._stopped = self._stopped, []
        if was_connected:
            self.last_error = why
            if self._running:
                self.log.warn("ARI events WebSocket lost ({reason})", reason=why)
            try:
                self._listener.ari_disconnected(why if self._running else "stopped")
            except Exception:
                self.log.failure("The ARI listener failed on disconnect")
        for d in stopped:
            d.callback(None)
        if not self._running:
            return
        if replaced:
            self._retry = self._clock.callLater(self._replaced_delay_now, self._connect)
        elif was_connected:
            self._failures = 0
            self._retry = self._clock.callLater(self._next_delay(), self._connect)
        else:
            self._attempt_failed(why)

    def _cancel(self, name: str) -> None:
        timer = getattr(self, name)
        setattr(self, name, None)
        if timer is not None and timer.active():
            timer.cancel()


def _close_reason(code: int | None, reason: str | None) -> str:
    if reason and "upgrade failed" in reason:
        # "connection was closed uncleanly (WebSocket connection upgrade failed [404]: Not Found)"
        return reason[reason.index("WebSocket connection upgrade failed"):].rstrip(")")
    if code in (None, 1006):
        return f"connection lost ({reason})" if reason else "connection lost"
    return f"closed with code {code}" + (f" ({reason})" if reason else "")


def _describe(failure: Failure) -> str:
    if failure.check(CancelledError):
        return "attempt cancelled"
    return describe_connection_failure(failure.value)
