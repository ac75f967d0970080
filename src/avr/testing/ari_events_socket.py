"""
The ARI events WebSocket of the fake Asterisk (autobahn): ``/ari/events?app=…`` with ``api_key`` or Basic
credentials, JSON text frames for the named applications, no pings (fact 27), 401/400 as Asterisk answers and 404
while it boots (fact 30).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.types import ConnectionDeny
from twisted.internet import defer

from avr.testing.ari_http import valid_app_names

if TYPE_CHECKING:
    from avr.testing.ari_server import AsteriskServer


class AriEventsProtocol(WebSocketServerProtocol):
    """One ``/ari/events`` WebSocket: JSON text frames for the apps named in ``app=``; no pings (fact 27)."""

    # No ``log`` here: that would replace autobahn's level-gated logger, whose debug dump of the handshake (the
    # ARI password in ``api_key`` or ``Authorization``) would then reach the log.

    def __init__(self) -> None:
        super().__init__()
        self.apps: list[str] = []
        self.subscribe_all = False
        #: fires when the connection is gone
        self.gone: defer.Deferred = defer.Deferred()

    def onConnect(self, request: Any) -> None:
        """Check credentials (Basic or ``api_key``) and ``app`` as Asterisk does (401, 400; 404 while booting)."""
        server: AsteriskServer = self.factory.ari_server
        if server.status != "up":
            raise ConnectionDeny(404, "Not Found")
        params = request.params
        api_key = (params.get("api_key") or [None])[-1]
        if not server.authorized(request.headers.get("authorization"), api_key):
            raise ConnectionDeny(401, "Unauthorized")
        names = valid_app_names((params.get("app") or [""])[-1])
        if not names:
            raise ConnectionDeny(400, "HTTP request is missing param: [app]")
        self.apps = names
        self.subscribe_all = (params.get("subscribeAll") or ["false"])[-1] == "true"
        return None

    def onOpen(self) -> None:
        """Register the applications (a previous socket of the same app gets ApplicationReplaced)."""
        server: AsteriskServer = self.factory.ari_server
        server.sockets.add(self)
        server.asterisk.apps.attach(self, self.apps, self.subscribe_all)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        """Unregister (apps with a channel inside stay: fact 28)."""
        server: AsteriskServer = self.factory.ari_server
        if self in server.sockets:
            server.sockets.discard(self)
            server.asterisk.apps.detach(self)
        if not self.gone.called:
            self.gone.callback(None)

    def deliver(self, app_name: str, text: str) -> None:
        """Send one event (a compact JSON text frame)."""
        if self.state == WebSocketServerProtocol.STATE_OPEN:
            self.sendMessage(text.encode("utf-8"), isBinary=False)


class AriEventsFactory(WebSocketServerFactory):
    """The events WebSocket factory; refuses connections (no protocol) while the fake Asterisk is down."""

    protocol = AriEventsProtocol

    def __init__(self, server: AsteriskServer) -> None:
        super().__init__(url=None, server=None, reactor=server.clock)
        #: not ``server``: autobahn sends that as the ``Server`` header, which Asterisk's handshake lacks (fact 27)
        self.ari_server = server
        # No handshake timers: they would run on txaio's global reactor, not the injected clock.
        self.setProtocolOptions(openHandshakeTimeout=0, closeHandshakeTimeout=0, autoPingInterval=0)

    def buildProtocol(self, addr: Any) -> Any:
        """A protocol, or ``None`` (connection refused) while down."""
        if self.ari_server.status == "down":
            return None
        return super().buildProtocol(addr)
