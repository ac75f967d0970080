"""
autobahn WebSocket connections timed on an injected clock: the one timer policy of avr's three WebSocket endpoints
(the STS client, the ARI events client and the ``/events`` server).

autobahn schedules its own timers (opening and closing handshake timeouts, auto-ping, a client's wait for the server
to drop TCP) through txaio on the global reactor, whatever reactor its factory is given. So every factory is built
with `disable_autobahn_timers`, and every connection gets a `ConnectionTimers` on the injected clock instead, which
its protocol tells how the connection progresses.
"""

from __future__ import annotations

from typing import Any, Callable

from attrs import define, field, frozen
from twisted.internet.interfaces import IDelayedCall, IReactorTime


@frozen
class WebSocketTimeouts:
    """
    How long a WebSocket connection may take for each of its phases, in seconds.

    :param open: for the opening handshake once TCP is up (``None``: no limit, e.g. when an overall connect timeout
        covers it, or a server whose upgrade was already read).
    :param close: for the closing handshake, whoever started it, until the TCP connection is gone; then it is aborted.
    :param ping_interval: between keep-alive pings once open (``None``: no pings).
    :param ping_timeout: for the answer to a ping; then the connection is aborted.
    """

    open: float | None = None
    close: float = 2.0
    ping_interval: float | None = None
    ping_timeout: float = 10.0


def disable_autobahn_timers(factory: Any) -> None:
    """
    Turn off the timers autobahn would schedule on the global reactor (handshake timeouts, auto-ping, the client's
    wait for the server to drop TCP) for every connection of ``factory`` (client or server).
    """
    options: dict[str, Any] = {"openHandshakeTimeout": 0, "closeHandshakeTimeout": 0, "autoPingInterval": 0}
    if not factory.isServer:
        options["serverConnectionDropTimeout"] = 0
    factory.setProtocolOptions(**options)


_NEW, _CONNECTING, _OPEN, _CLOSING, _CLOSED = range(5)


@define(eq=False)
class ConnectionTimers:
    """
    The timers of one autobahn connection (``protocol``), on ``clock``, per ``timeouts``.

    The connection is always in one phase (connecting, open, closing, closed) and each phase needs at most one timer,
    so there is one: the opening deadline, the next ping or the wait for its pong, the closing deadline. When a
    deadline passes, the connection is aborted and `reason` says why (it is also autobahn's ``wasNotCleanReason``,
    so ``onClose`` reports it).

    The protocol calls `connected` from ``connectionMade``, `opened` from ``onOpen``, `pong` from ``onPong``,
    `closing` whenever a closing handshake starts (sent or received), and `lost` from ``connectionLost``.
    """

    protocol: Any
    clock: IReactorTime
    timeouts: WebSocketTimeouts
    #: Why these timers aborted the connection; ``None`` if they did not.
    reason: str | None = field(default=None, init=False)
    _phase: int = field(default=_NEW, init=False)
    _timer: IDelayedCall | None = field(default=None, init=False)
    _awaiting_pong: bool = field(default=False, init=False)

    def connected(self) -> None:
        """TCP is up: the opening handshake has ``timeouts.open`` seconds."""
        self._phase = _CONNECTING
        if self.timeouts.open is not None:
            self._arm(self.timeouts.open, self._expire, f"no WebSocket upgrade within {self.timeouts.open:g} s")

    def opened(self) -> None:
        """The handshake is done: start the keep-alive pings."""
        if self._phase in (_NEW, _CONNECTING):
            self._phase = _OPEN
            self._next_ping()

    def pong(self) -> None:
        """A pong arrived: the peer is alive; the next ping follows after ``timeouts.ping_interval``."""
        if self._phase == _OPEN and self._awaiting_pong:
            self._next_ping()

    def closing(self) -> None:
        """A closing handshake started: it has ``timeouts.close`` seconds (idempotent)."""
        if self._phase in (_CLOSING, _CLOSED):
            return
        self._phase = _CLOSING
        self._arm(self.timeouts.close, self._expire, f"closing handshake not finished within {self.timeouts.close:g} s")

    def lost(self) -> None:
        """The connection is gone: no timer is left."""
        self._phase = _CLOSED
        self._cancel()

    def _next_ping(self) -> None:
        self._awaiting_pong = False
        if self.timeouts.ping_interval is None:
            self._cancel()
        else:
            self._arm(self.timeouts.ping_interval, self._ping)

    def _ping(self) -> None:
        self._timer = None
        self._awaiting_pong = True
        self.protocol.sendPing()
        self._arm(self.timeouts.ping_timeout, self._expire,
                  f"no answer to a ping within {self.timeouts.ping_timeout:g} s")

    def _expire(self, reason: str) -> None:
        self._timer = None
        self.reason = reason
        self.protocol.wasNotCleanReason = reason
        self.protocol.dropConnection(abort=True)

    def _arm(self, delay: float, function: Callable[..., None], *args: Any) -> None:
        self._cancel()
        self._timer = self.clock.callLater(delay, function, *args)

    def _cancel(self) -> None:
        timer, self._timer = self._timer, None
        if timer is not None and timer.active():
            timer.cancel()
