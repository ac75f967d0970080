"""Opening STS connections: TCP and verified TLS, an overall timeout on the injected clock, cancellation, readable
failures."""

from __future__ import annotations

from typing import Any, Protocol

from attrs import define, field, frozen
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.python.failure import Failure

from avr.failures import describe_failure
from avr.sts.errors import StsConnectError
from avr.sts.tls import client_tls_options


class Opening(Protocol):
    """What `ConnectAttempt` needs from the protocol an endpoint connected."""

    def when_opened(self) -> Deferred:
        """Fires with the protocol once the session is open; fails with `StsConnectError` if it never will be."""

    def abort(self) -> None:
        """Drop the connection at once."""


@frozen
class Dialer:
    """
    Connects to STS peers: TCP to ``host:port``, then TLS when ``secure`` (chain and host name verified against
    ``trust_root``), the whole opening within ``timeout`` seconds of ``reactor``.

    :param reactor: IReactorTCP + IReactorTime (typed by the part mypy can check: `HostnameEndpoint` takes ``Any``).
    :param trust_root: from `avr.sts.tls.load_trust_root`; ``None``: the platform's CAs.
    """

    reactor: IReactorTime
    timeout: float
    trust_root: Any = None

    def dial(self, host: str, port: int, secure: bool, factory: Any) -> Deferred:
        """
        Connect ``factory`` and wait until its protocol (an `Opening`) is open.

        :return: `ConnectAttempt.result`.
        """
        endpoint: Any = HostnameEndpoint(self.reactor, host, port, timeout=self.timeout)
        if secure:
            endpoint = wrapClientTLS(client_tls_options(host, self.trust_root), endpoint)
        return ConnectAttempt(self.reactor, self.timeout, host).start(endpoint, factory)


@define(eq=False)
class ConnectAttempt:
    """
    Connects ``factory`` through ``endpoint`` and waits until the protocol says the session is open, all within
    ``timeout`` seconds of ``clock``.

    `result` fires with the open protocol or fails with `StsConnectError`; cancelling it abandons the attempt (the
    socket is dropped, the timer cancelled) and fails it with ``CancelledError``.
    """

    clock: IReactorTime
    timeout: float
    host: str
    result: Deferred = field(init=False)
    _connecting: Deferred | None = field(default=None, init=False)
    _protocol: Opening | None = field(default=None, init=False)
    _timer: IDelayedCall | None = field(default=None, init=False)
    _done: bool = field(default=False, init=False)

    def start(self, endpoint: Any, factory: Any) -> Deferred:
        """Begin; :return: `result`."""
        self.result = Deferred(self._cancelled)
        self._timer = self.clock.callLater(self.timeout, self._timed_out)
        self._connecting = endpoint.connect(factory)
        self._connecting.addCallbacks(self._connected, self._connect_failed)
        return self.result

    def _connected(self, protocol: Opening) -> None:
        self._connecting = None
        self._protocol = protocol
        if self._done:
            protocol.abort()
            return
        protocol.when_opened().addCallbacks(self._opened, self._failed)

    def _connect_failed(self, failure: Failure) -> None:
        self._connecting = None
        self._failed(failure)

    def _failed(self, failure: Failure) -> None:
        if isinstance(failure.value, StsConnectError):
            self._fail(failure.value)
        else:
            self._fail(StsConnectError(describe_failure(failure, self.host)))

    def _opened(self, protocol: Opening) -> None:
        if self._decide():
            self.result.callback(protocol)

    def _fail(self, reason: StsConnectError) -> None:
        if self._decide():
            self.result.errback(reason)

    def _timed_out(self) -> None:
        self._timer = None
        self._fail(StsConnectError(f"timed out after {self.timeout:g} s"))
        self._abandon()

    def _cancelled(self, _: Deferred) -> None:
        # The caller gave up (e.g. the call ended while connecting); `result` then fails with CancelledError.
        if self._decide():
            self._abandon()

    def _decide(self) -> bool:
        """Mark the attempt decided and stop the timer; False if it was decided already."""
        if self._done:
            return False
        self._done = True
        if self._timer is not None:
            if self._timer.active():
                self._timer.cancel()
            self._timer = None
        return True

    def _abandon(self) -> None:
        connecting, self._connecting = self._connecting, None
        if connecting is not None:
            connecting.cancel()
        if self._protocol is not None:
            self._protocol.abort()
