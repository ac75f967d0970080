"""
Builds avr's object graph from a `Config` and returns it as one `MultiService`.

Everything that does I/O is passed in (reactor, HTTP client, STS connector), so tests build the same graph on a
`MemoryReactorClock` or on loopback. Only `avr.tap` touches the global reactor.
"""

from __future__ import annotations

from typing import Any

from attrs import define, field
from klein import Klein
from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.endpoints import TCP4ServerEndpoint, TCP6ServerEndpoint
from twisted.internet.interfaces import IListeningPort, IProtocolFactory, IStreamServerEndpoint
from twisted.logger import Logger
from twisted.web.server import Site

from avr.audiosocket import AudioSocketFactory
from avr.calls import CallManager
from avr.config import Config, redact_url
from avr.http.auth import redacted_access_log
from avr.http.core import CoreRoutes
from avr.http.json import install_error_handlers
from avr.interfaces import IStsConnector, IWebhooks
from avr.playout import FrameTicker
from avr.registrations import Registrations
from avr.webhooks import WebhookClient


@define(eq=False)
class ListeningService(Service):
    """
    Listens on an endpoint while running, and logs the line operators look for once the port is open.

    A failure to listen (port in use) raises from `privilegedStartService`, so twistd refuses to start instead of
    running without the listener.
    """

    endpoint: IStreamServerEndpoint
    factory: IProtocolFactory
    #: Log line with a ``{port}`` field, e.g. ``AVR AudioSocket Server listening on port {port}``.
    banner: str
    port: IListeningPort | None = None
    log = Logger()

    def __attrs_post_init__(self) -> None:
        Service.__init__(self)

    def privilegedStartService(self) -> None:
        Service.privilegedStartService(self)
        outcome: list[Any] = []
        self.endpoint.listen(self.factory).addBoth(outcome.append)
        if not outcome:
            raise RuntimeError("listening did not complete synchronously")
        if not IListeningPort.providedBy(outcome[0]):
            outcome[0].raiseException()
        self.port = outcome[0]
        self.log.info(self.banner, port=self.port.getHost().port)

    def startService(self) -> None:
        if self.port is None:
            self.privilegedStartService()
        Service.startService(self)

    def stopService(self) -> Deferred:
        Service.stopService(self)
        port, self.port = self.port, None
        return maybeDeferred(port.stopListening) if port is not None else succeed(None)


@define(eq=False)
class CallsService(Service):
    """Ends live calls and cancels pending timers and deliveries at shutdown."""

    calls: CallManager
    factory: AudioSocketFactory
    registrations: Registrations
    webhooks: WebhookClient

    def __attrs_post_init__(self) -> None:
        Service.__init__(self)

    def stopService(self) -> Deferred:
        Service.stopService(self)
        self.calls.stop()
        self.factory.hang_up_all()
        d = self.webhooks.stop()
        # Cleared after the webhooks settled: a /call answered by stop() may still register.
        d.addBoth(lambda result: (self.registrations.clear(), result)[1])
        return d


def server_endpoint(reactor: Any, address: str, port: int) -> IStreamServerEndpoint:
    """A TCP listening endpoint on ``address`` (IPv4 or IPv6 literal, or ``0.0.0.0``/``::``)."""
    if ":" in address:
        return TCP6ServerEndpoint(reactor, port, interface=address)
    return TCP4ServerEndpoint(reactor, port, interface=address)


@define(eq=False)
class Avr:
    """The wired-up server: its service tree plus the parts tests want to reach."""

    service: MultiService
    calls: CallManager
    registrations: Registrations
    webhooks: IWebhooks
    http_app: Klein | None = None
    extra: dict[str, Any] = field(factory=dict)


def build(reactor: Any, config: Config, *, http_client: Any, sts_connector: IStsConnector) -> Avr:
    """
    Build avr for ``config``.

    :param reactor: provides `IReactorTCP` and `IReactorTime` (a `MemoryReactorClock` in tests).
    :param http_client: a treq `HTTPClient` (webhooks, ARI, legacy HTTP STS).
    :param sts_connector: opens STS sessions (see `avr.sts.connector`).
    """
    log = Logger(namespace="avr.service")
    top = MultiService()
    registrations = Registrations(reactor, config.call_init_ttl)
    webhooks = WebhookClient.from_config(http_client, reactor, config)
    ticker = FrameTicker(reactor)
    calls = CallManager(
        clock=reactor,
        connector=sts_connector,
        webhooks=webhooks,
        ticker=ticker,
        registrations=registrations,
        sts_url=config.sts_url,
        sts_rate=config.sts_sample_rate,
        require_registration=config.require_call_init,
    )
    factory = AudioSocketFactory(calls, reactor, uuid_timeout=config.uuid_timeout)
    CallsService(calls, factory, registrations, webhooks).setServiceParent(top)

    audiosocket = ListeningService(
        server_endpoint(reactor, config.bind_address, config.port),
        factory,
        "AVR AudioSocket Server listening on port {port}",
    )
    app = None
    if config.http_port is not None:
        app = Klein()
        install_error_handlers(app)
        CoreRoutes.from_config(config, registrations, webhooks).install(app)
        http = ListeningService(
            server_endpoint(reactor, config.bind_address, config.http_port),
            Site(app.resource(), reactor=reactor, logFormatter=redacted_access_log),
            "AVR HTTP Server listening on port {port}",
        )
        http.setName("http")
        http.setServiceParent(top)
    # The HTTP server first, as avr-core logs it: registrations can arrive before the first AudioSocket call.
    audiosocket.setName("audiosocket")
    audiosocket.setServiceParent(top)
    if config.sts_url is None:
        log.info("No STS_URL configured: calls are answered by the built-in echo agent (callers hear themselves)")
    else:
        log.info("STS: {url} at {rate} Hz", url=redact_url(config.sts_url), rate=config.sts_sample_rate)
    return Avr(service=top, calls=calls, registrations=registrations, webhooks=webhooks, http_app=app)
