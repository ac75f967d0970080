"""
The network face of the fake Asterisk: its HTTP site (ARI REST and the ``/ari/events`` upgrade), the open events
sockets, listening on TCP, the ARI users, and whether Asterisk is ``up``, ``down`` (connections refused, sockets
dropped with no close frame) or ``booting`` (404 on ``/ari/...``), as a restart shows it (facts 10, 27, 30).
"""

from __future__ import annotations

import weakref
from collections.abc import Mapping
from typing import Any

from twisted.internet import defer
from twisted.web.server import Site

from avr.testing.ari_asterisk import Asterisk
from avr.testing.ari_events_socket import AriEventsFactory, AriEventsProtocol
from avr.testing.ari_http import AriResource, RecordedRequest, parse_basic
from avr.testing.ari_rest import ROUTES


class AsteriskServer:
    """
    HTTP and WebSocket service of a simulated `Asterisk`.

    :param clock: the reactor (or ``task.Clock``) the site and sockets run on.
    :param users: ARI users and passwords (ari.conf).
    :param history: keep every REST request in `requests`.
    :ivar status: ``up``, ``down`` or ``booting``.
    :ivar sockets: the open events sockets.
    """

    def __init__(self, clock: Any, asterisk: Asterisk, users: Mapping[str, str], history: bool) -> None:
        self.clock = clock
        self.asterisk = asterisk
        self.users = dict(users)
        self.history = history
        self.status = "up"
        #: every REST request received, in order
        self.requests: list[RecordedRequest] = []
        self.sockets: set[AriEventsProtocol] = set()
        self.http_channels: weakref.WeakSet[Any] = weakref.WeakSet()
        self._resource: AriResource | None = None
        self._factory: AriEventsFactory | None = None
        self._site: Site | None = None
        self._reactor: Any = None
        self._listening: Any = None
        self.port = 0
        self._interface = "127.0.0.1"

    def resource(self) -> AriResource:
        """The HTTP root resource (``/ari/...`` REST and the ``/ari/events`` WebSocket upgrade)."""
        if self._resource is None:
            self._resource = AriResource(self, ROUTES)
        return self._resource

    def events_factory(self) -> AriEventsFactory:
        """The autobahn factory behind ``/ari/events``."""
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
        """Serve `site` over TCP; the port is kept when Asterisk comes back after being down."""
        self._reactor = reactor
        self._interface = interface
        self._listening = reactor.listenTCP(port, self.site(), interface=interface)
        self.port = self._listening.getHost().port
        return self._listening

    def authorized(self, authorization: str | None, api_key: str | None) -> bool:
        """Basic credentials, else ``api_key=user:password`` (both checked against `users`)."""
        creds = parse_basic(authorization)
        if creds is None and api_key:
            user, sep, password = api_key.partition(":")
            creds = (user, password) if sep else None
        return creds is not None and self.users.get(creds[0]) == creds[1]

    def note_request(self, request: RecordedRequest) -> None:
        """Keep a received request in `requests` (unless ``history`` is off)."""
        if self.history:
            self.requests.append(request)

    def go_down(self) -> defer.Deferred:
        """Asterisk is gone: sockets get TCP EOF with no close frame (fact 30), connections are refused."""
        self.status = "down"
        self._drop_connections()
        return self._stop_listening()

    def come_back(self, status: str = "up") -> None:
        """Asterisk listens again: ``booting`` (404 on ``/ari/...``) or ``up``."""
        if self._reactor is not None and self._listening is None:
            self._listening = self._reactor.listenTCP(self.port, self.site(), interface=self._interface)
        self.status = status

    def close(self) -> defer.Deferred:
        """Drop every connection and stop listening; over loopback, fires once the events sockets are closed."""
        gone = [sock.gone for sock in self.sockets] if self._reactor is not None else []
        self._drop_connections()
        stopped = self._stop_listening()
        return defer.gatherResults([stopped, *gone], consumeErrors=True).addCallback(lambda _: None)

    def _drop_connections(self) -> None:
        for sock in list(self.sockets):
            self.sockets.discard(sock)
            self.asterisk.apps.detach(sock)
            sock.dropConnection(abort=False)
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
