"""
Builds avr's object graph from a `Config` and returns it as one `MultiService`.

Everything that does I/O is passed in (reactor, HTTP client, STS connector), so tests build the same graph on a
`MemoryReactorClock` or on loopback. Only `avr.tap` touches the global reactor.
"""

from __future__ import annotations

from typing import Any

from attrs import define, evolve
from klein import Klein
from prometheus_client import CollectorRegistry
from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, DeferredList, maybeDeferred, succeed
from twisted.internet.endpoints import TCP4ServerEndpoint, TCP6ServerEndpoint
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort, IProtocolFactory, IReactorTCP, IStreamServerEndpoint
from twisted.logger import Logger

from avr.actions import DialplanActions
from avr.admissions import Admissions
from avr.agent_runner import AgentRunner
from avr.allowlist import Allowlist
from avr.ari.client import AriClient
from avr.ari.events import AriEventStream, endpoint_connector
from avr.audiosocket import AudioSocketFactory
from avr.call_summary import CallSummaries
from avr.calls import CallManager
from avr.drain import Drain
from avr.health import Health
from avr.ambient import AmbientNoise
from avr.config import PIPELINE_MODE, STS_MODE, Config, agent_mode, redact_url, unused_settings
from avr.control.agents import AgentSpec
from avr.control.call_observer import RegistryObserver
from avr.control.call_registry import CallRegistry
from avr.control.capture import AsrSessions, AudioListener
from avr.control.dialect import AsteriskApiEvents, OpenClawWebhook
from avr.control.hub import EventsHub, FanOut
from avr.control.injection import PcmInjector
from avr.control.model import CallControl
from avr.control.routes import ControlRoutes
from avr.control.events_webhook import EventsWebhook
from avr.control.tasks import TaskGroup
from avr.fastpaths import FastPaths
from avr.http.allowlist import AllowlistRoutes
from avr.http.core import CoreRoutes
from avr.http.json import install_error_handlers
from avr.http.metrics import MetricsRoutes, metrics_site
from avr.http.openapi import OpenApiRoutes
from avr.http.site import AvrSite, RequestGate
from avr.httpstream import StreamingHttpClient
from avr.interfaces import IAudioInjector, IEventSink, IStsConnector, IWebhooks
from avr.metrics import AvrCollector, CallEventMetrics, MeteredStsConnector
from avr.observers import CallObservers, WebhookObserver
from avr.pipeline.connector import PipelineConnector, pipeline_settings, vad_settings
from avr.pipeline.latency import PipelineLatencies
from avr.pipeline.vad import ThreadedVadRunner
from avr.playout import FRAME_SECONDS, PLAYOUT_PHASES, FrameTicker
from avr.registrations import Registrations
from avr.speech.openai_tts import OpenAiTts
from avr.speech.streaming_asr import StreamingAsrSession, asr_dialer
from avr.sts.echo import EchoStsConnector
from avr.sts.http import HttpStsConnector
from avr.sts.websocket import WebSocketStsConnector
from avr.webhooks import WebhookClient


class ListenFailed(Exception):
    """A server cannot listen (port in use, address not of this host); the message is one line naming both."""


@define(eq=False)
class ListeningService(Service):
    """
    Listens on an endpoint while running, and logs the line operators look for once the port is open.

    A failure to listen (port in use) raises `ListenFailed` from `privilegedStartService`, so twistd refuses to start
    instead of running without the listener.
    """

    endpoint: IStreamServerEndpoint
    factory: IProtocolFactory
    #: Log line with a ``{port}`` field, e.g. ``AVR AudioSocket Server listening on port {port}``.
    banner: str
    #: The settings that say where it listens, named in the error when it cannot: ``PORT, BIND_ADDRESS``.
    settings: str = ""
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
            error = outcome[0].value
            if isinstance(error, CannotListenError):
                reason = getattr(error.socketError, "strerror", None) or str(error.socketError)
                raise ListenFailed(f"cannot listen on {error.interface or '*'}:{error.port}"
                                   f"{f' ({self.settings})' if self.settings else ''}: {reason}") from None
            outcome[0].raiseException()
        self.port = outcome[0]
        address: Any = outcome[0].getHost()  # a TCP endpoint's: IPv4Address or IPv6Address
        self.log.info(self.banner, port=address.port)

    def startService(self) -> None:
        if self.port is None:
            self.privilegedStartService()
        Service.startService(self)

    @property
    def listening(self) -> bool:
        """The port is open."""
        return self.port is not None

    def stopService(self) -> Deferred:
        Service.stopService(self)
        port, self.port = self.port, None
        return maybeDeferred(port.stopListening) if port is not None else succeed(None)


class AvrService(MultiService):
    """
    avr's service tree. Stopping it drains first (`avr.drain.Drain`: new calls refused, live ones given up to
    ``DRAIN_TIMEOUT``), every service still running meanwhile; then its services stop, in reverse order.
    """

    def __init__(self, drain: Drain) -> None:
        MultiService.__init__(self)
        self.drain = drain

    def stopService(self) -> Deferred:
        stopped: Deferred = Deferred()  # fires (``called``) only once every service has stopped
        self.drain.run().addCallback(lambda _: MultiService.stopService(self)).chainDeferred(stopped)
        return stopped


@define(eq=False)
class CallsService(Service):
    """Ends live calls and cancels pending timers and deliveries at shutdown."""

    calls: CallManager
    factory: AudioSocketFactory
    admissions: Admissions
    webhooks: WebhookClient

    def __attrs_post_init__(self) -> None:
        Service.__init__(self)

    def stopService(self) -> Deferred:
        Service.stopService(self)
        self.calls.stop()
        self.admissions.clear()
        self.factory.hang_up_all()
        d = self.webhooks.stop()

        def clear_again(result: object) -> object:
            # After the webhooks settled: a /call answered by stop() may still have registered.
            self.admissions.clear()
            return result

        return d.addBoth(clear_again)


@define(eq=False)
class ControlService(Service):
    """
    Runs the ARI events stream while running; at shutdown stops the call registry's timers, closes /events clients
    and stops deliveries.
    """

    hub: EventsHub
    registry: CallRegistry
    control: CallControl | None = None
    stream: AriEventStream | None = None
    events_webhook: EventsWebhook | None = None
    allowlist: Allowlist | None = None
    openclaw_webhook: OpenClawWebhook | None = None

    def __attrs_post_init__(self) -> None:
        Service.__init__(self)

    def startService(self) -> None:
        Service.startService(self)
        if self.allowlist is not None:
            self.allowlist.start()
        if self.stream is not None:
            self.stream.start()

    async def _stop(self) -> None:
        if self.allowlist is not None:
            self.allowlist.stop()
        if self.stream is not None:
            await self.stream.stop()
        stops = [self.hub.stop()]
        if self.control is not None:
            stops.append(self.control.stop())
        self.registry.stop()
        for webhook in (self.events_webhook, self.openclaw_webhook):
            if webhook is not None:
                stops.append(webhook.stop())
        await DeferredList(stops, consumeErrors=True)

    def stopService(self) -> Deferred:
        Service.stopService(self)
        return Deferred.fromCoroutine(self._stop())


def audiosocket_address(config: Config) -> str:
    """Where Asterisk reaches avr's AudioSocket server (``ARI_AUDIOSOCKET_ADDRESS``, else derived from the bind)."""
    if config.ari_audiosocket_address is not None:
        return config.ari_audiosocket_address
    host = config.bind_address if config.bind_address not in ("0.0.0.0", "::", "") else "127.0.0.1"
    return f"[{host}]:{config.port}" if ":" in host else f"{host}:{config.port}"


def build_control(
    reactor: Any, config: Config, http_client: Any, injector: IAudioInjector, fresh_http_client: Any = None,
    listener: AudioListener | None = None, call_events: CallEventMetrics | None = None,
) -> ControlService:
    """
    The call registry and where its events go (the /events hub, the events webhook, ``call_events``), with ARI
    configured the call-control side too: ARI client, events stream, model.
    """
    hub = EventsHub(reactor)
    events_webhook = None
    sinks: list[IEventSink] = [hub]
    if call_events is not None:
        sinks.append(call_events)
    if config.events_webhook_url is not None:
        events_webhook = EventsWebhook(
            http_client, reactor, config.events_webhook_url,
            timeout=config.webhook_timeout / 1000, retries=config.webhook_retry, fresh_http=fresh_http_client,
        )
        sinks.append(events_webhook)
    openclaw = None
    if config.openclaw_webhook_url is not None:
        openclaw = OpenClawWebhook(http_client, reactor, config.openclaw_webhook_url,
                                   timeout=config.webhook_timeout / 1000, retries=config.webhook_retry,
                                   fresh_http=fresh_http_client)
        sinks.append(openclaw)
    # asterisk-api's events after avr's, for every receiver (the OpenClaw webhook forwards its call.ready).
    sink = AsteriskApiEvents(FanOut(*sinks))
    registry = CallRegistry(reactor, sink, TaskGroup(reactor))
    if call_events is not None:
        call_events.registry = registry
    if openclaw is not None:
        openclaw.registry = registry
    if config.ari_url is None:
        return ControlService(hub, registry, events_webhook=events_webhook, openclaw_webhook=openclaw)
    assert config.ari_username is not None and config.ari_password is not None
    allowlist = Allowlist(config.allowlist_file, reactor)
    control = CallControl(
        AriClient(http_client, reactor, config.ari_url, config.ari_username, config.ari_password),
        reactor,
        sink,
        config.ari_app,
        config.ari_inbound,
        injector=injector,
        audiosocket_address=audiosocket_address(config),
        registry=registry,
        ring_delay=config.inbound_ring_delay / 1000,
        default_agent=AgentSpec.from_setting(config.ari_agent) if config.ari_agent is not None else None,
        sts_routes=dict(config.sts_routes),
        agent_on_failure=config.ari_agent_on_failure,
        allowlist=allowlist,
        tts=openai_tts(reactor, config, http_client),
        listener=listener,
        asr_sessions=asr_sessions(reactor, config),
        frames=hub,
    )
    stream = AriEventStream(
        reactor, endpoint_connector(reactor), config.ari_url, config.ari_app,
        config.ari_username, config.ari_password, control,
    )
    return ControlService(hub, registry, control, stream, events_webhook, allowlist, openclaw)


def asr_sessions(reactor: Any, config: Config) -> AsrSessions | None:
    """asterisk-api's streaming ASR for captured calls (``None`` when ``ASR_URL`` is not a ``ws(s)://`` URL)."""
    url = config.streaming_asr_url
    if url is None:
        return None
    dial = asr_dialer(reactor)
    return lambda call_id, on_transcription, on_lost: StreamingAsrSession(
        call_id, url, config.asr_language, reactor, dial, on_transcription, on_lost)


def openai_tts(reactor: Any, config: Config, http_client: Any) -> OpenAiTts | None:
    """asterisk-api's TTS for ``/speak`` (``None`` when ``TTS_URL`` is not an OpenAI-compatible server)."""
    url = config.openai_tts_url
    if url is None:
        return None
    return OpenAiTts(http_client, reactor, url, config.tts_default_voice, config.tts_default_language,
                     config.tts_timeout / 1000)


def server_endpoint(reactor: IReactorTCP, address: str, port: int, backlog: int) -> IStreamServerEndpoint:
    """
    A TCP listening endpoint on ``address`` (IPv4 or IPv6 literal, or ``0.0.0.0``/``::``).

    :param backlog: the ``listen()`` backlog: connections the kernel completes and queues until avr accepts them.
        When it is full the kernel drops new SYNs, and the caller only retries after 1 s, 3 s... (Asterisk gives up
        connecting after 2 s), so it must hold a whole burst of calls (see ``LISTEN_BACKLOG``).
    """
    if ":" in address:
        return TCP6ServerEndpoint(reactor, port, backlog=backlog, interface=address)
    return TCP4ServerEndpoint(reactor, port, backlog=backlog, interface=address)


@define(eq=False)
class Avr:
    """The wired-up server: its service tree plus the parts tests want to reach."""

    service: AvrService
    calls: CallManager
    admissions: Admissions
    registrations: Registrations
    webhooks: IWebhooks
    registry: CallRegistry
    control: CallControl | None = None
    http_app: Klein | None = None
    #: The server's Prometheus registry (``GET /metrics``).
    metrics: CollectorRegistry | None = None
    drain: Drain | None = None
    health: Health | None = None


def sts_connectors(
    reactor: Any, config: Config, fast_paths: FastPaths = FastPaths(),
    pipeline_latencies: PipelineLatencies | None = None,
) -> dict[str | None, IStsConnector]:
    """
    The STS connector of each URL scheme, for `avr.sts.connector.StsConnector`; the key ``None`` serves calls
    without an STS URL. Another kind of agent is one more entry.

    :param reactor: for the connections and their timers (IReactorTCP + IReactorTime).
    :param fast_paths: the fast paths the WebSocket sessions take (`FastPaths.detect`).
    :param pipeline_latencies: where pipeline mode counts its stage latencies (give the same to `build`).
    :raises avr.config.ConfigError: ``STS_CA_FILE`` cannot be used.
    """
    timeout = config.sts_connect_timeout / 1000
    rate = config.sts_sample_rate
    websocket = WebSocketStsConnector(reactor, timeout, config.sts_ca_file, sample_rate=rate, fast_paths=fast_paths,
                                      max_message=config.sts_max_message)
    http = HttpStsConnector(reactor, timeout, config.sts_ca_file, sample_rate=rate)
    default: IStsConnector = EchoStsConnector(reactor, sample_rate=rate)
    if agent_mode(config) == PIPELINE_MODE:
        settings = pipeline_settings(config)
        default = PipelineConnector(
            StreamingHttpClient(reactor, timeout, config.sts_ca_file), reactor, settings, vad_settings(config),
            ThreadedVadRunner.create(reactor) if settings.barge_in else None, pipeline_latencies,
        )
    return {"ws": websocket, "wss": websocket, "http": http, "https": http, None: default}


def build(
    reactor: Any, config: Config, *, http_client: Any, sts_connector: IStsConnector, fresh_http_client: Any = None,
    fast_paths: FastPaths = FastPaths(), pipeline_latencies: PipelineLatencies | None = None,
) -> Avr:
    """
    Build avr for ``config``.

    :param reactor: provides `IReactorTCP` and `IReactorTime` (a `MemoryReactorClock` in tests).
    :param http_client: a treq `HTTPClient` (webhooks, ARI, legacy HTTP STS).
    :param sts_connector: opens STS sessions (``StsConnector(sts_connectors(reactor, config))``, or a fake).
    :param fresh_http_client: a treq `HTTPClient` that never reuses a connection; the webhooks send a request again
        with it when its kept-alive connection closed before any response (default: ``http_client``).
    :param fast_paths: the fast paths the AudioSocket connections take (`FastPaths.detect`).
    :param pipeline_latencies: the stage latencies the pipeline connector counts (``sts_connectors``), for
        ``/metrics`` (in pipeline mode).
    """
    log = Logger(namespace="avr.service")
    # The server's own registry (never prometheus_client's global one): tests build many servers in one process.
    metrics = CollectorRegistry()
    call_events = CallEventMetrics(metrics)
    sts_connector = MeteredStsConnector(sts_connector, reactor, metrics)
    admissions = Admissions(reactor)
    summaries = CallSummaries(reactor, agent_mode(config))
    webhooks = WebhookClient.from_config(http_client, reactor, config, fresh_http_client,
                                         on_failed=summaries.webhook_failed)
    ticker = FrameTicker(reactor, phases=PLAYOUT_PHASES)
    # Added before the calls, so stopped after them: the calls ended at shutdown still reach /events.
    control = build_control(reactor, config, http_client, PcmInjector(admissions, ticker), fresh_http_client,
                            AudioListener(admissions), call_events)
    control.setName("control")
    calls = CallManager(
        clock=reactor,
        connector=sts_connector,
        observer=CallObservers(WebhookObserver(webhooks), RegistryObserver(control.registry, reactor)),
        ticker=ticker,
        admissions=admissions,
        sts_url=config.sts_url,
        require_registration=config.require_call_init,
        actions=DialplanActions(control.control, control.registry),
        ambient=(AmbientNoise.load(config.ambient_noise_file, config.ambient_noise_level)
                 if config.ambient_noise_file is not None else None),
        max_calls=config.max_calls,
        playback_frames=round(config.playback_max_seconds / FRAME_SECONDS),
        every_call=summaries,
    )
    drain = Drain(calls, reactor, config.drain_timeout)
    top = AvrService(drain)
    control.setServiceParent(top)
    if control.control is not None:
        # The agents of ARI calls run on the AudioSocket side, which needs call control first (for their actions).
        control.control.agent_runner = AgentRunner(calls, webhooks, config.sts_url)
        control.control.refusal = calls.refusal  # no originate while draining or at MAX_CALLS
    registrations = Registrations(admissions, config.call_init_ttl, calls.start_call, config.call_init_max)
    factory = AudioSocketFactory(calls, reactor, uuid_timeout=config.uuid_timeout, idle_timeout=config.idle_timeout,
                                 fast_paths=fast_paths)
    CallsService(calls, factory, admissions, webhooks).setServiceParent(top)
    senders: list[tuple[str, Any]] = [("webhook", webhooks), ("events_webhook", control.events_webhook),
                                      ("openclaw_webhook", control.openclaw_webhook)]
    deliveries = {name: sender.deliveries for name, sender in senders
                  if sender is not None and sender.deliveries is not None}
    metrics.register(AvrCollector(calls, ticker, control.registry, control.hub, deliveries, control.stream,
                                  pipeline_latencies if agent_mode(config) == PIPELINE_MODE else None))

    audiosocket = ListeningService(
        server_endpoint(reactor, config.bind_address, config.port, config.listen_backlog),
        factory,
        "AVR AudioSocket Server listening on port {port}",
        "PORT, BIND_ADDRESS",
    )
    audiosocket.setName("audiosocket")
    health = Health(calls, control.control, drain, lambda: audiosocket.listening, agent_mode(config))
    app = None
    listeners = config.http_listeners()
    if listeners:
        app = Klein()
        install_error_handlers(app)
        core = CoreRoutes.from_config(config, registrations, webhooks, health.fields, health.not_ready,
                                      calls.refusal)
        core.install(app)
        control_routes = ControlRoutes(
            control.control, control.hub, control.registry, max_body=config.http_max_body, api_key=config.api_key,
            clock=reactor,
        )
        control_routes.install(app)
        allowlist_routes = AllowlistRoutes(control.allowlist, config.api_key)
        allowlist_routes.install(app)
        metrics_routes = MetricsRoutes(metrics, config.api_key)
        metrics_routes.install(app)
        openapi_routes = OpenApiRoutes()
        openapi_routes.install(app)
        gate = RequestGate(app.url_map, config.api_key, config.http_max_body,
                           {**core.policies(), **control_routes.policies(), **allowlist_routes.policies(),
                            **metrics_routes.policies(), **openapi_routes.policies()})
        resource = app.resource()
        for listener in listeners:
            site_gate = evolve(gate, keyless=frozenset({"control.events"})) if listener.keyless_events else gate
            http = ListeningService(
                server_endpoint(reactor, listener.host, listener.port, config.listen_backlog),
                AvrSite(resource, site_gate, reactor=reactor),
                "AVR HTTP Server listening on port {port}" + (
                    " (127.0.0.1 only; /events without the API key)" if listener.keyless_events else ""),
                listener.settings,
            )
            http.setName(listener.name)
            http.setServiceParent(top)
    metrics_listener = config.metrics_listener()
    if metrics_listener is not None:
        scrape = ListeningService(
            server_endpoint(reactor, metrics_listener.host, metrics_listener.port, config.listen_backlog),
            metrics_site(metrics, config.http_max_body, reactor),
            f"AVR metrics listening on port {{port}} ({metrics_listener.host}; GET /metrics without the API key)",
            metrics_listener.settings,
        )
        scrape.setName(metrics_listener.name)
        scrape.setServiceParent(top)
    # The HTTP server first, as avr-core logs it: registrations can arrive before the first AudioSocket call.
    audiosocket.setServiceParent(top)
    _log_mode(log, config)
    return Avr(service=top, calls=calls, admissions=admissions, registrations=registrations, webhooks=webhooks,
               registry=control.registry, control=control.control, http_app=app, metrics=metrics, drain=drain,
               health=health)


def _log_mode(log: Logger, config: Config) -> None:
    """Say in one line what answers the calls, and once which settings have no effect in that mode."""
    mode = agent_mode(config)
    if mode == STS_MODE:
        assert config.sts_url is not None  # what STS mode means
        log.info("STS: {url} at {rate} Hz", url=redact_url(config.sts_url), rate=config.sts_sample_rate)
    elif mode == PIPELINE_MODE:
        assert config.asr_url and config.llm_url and config.tts_url  # what pipeline mode means
        log.info("Pipeline mode: ASR {asr}, LLM {llm}, TTS {tts} ({rate} Hz); barge-in: {barge_in}",
                 asr=redact_url(config.asr_url), llm=redact_url(config.llm_url), tts=redact_url(config.tts_url),
                 rate=config.tts_sample_rate,
                 barge_in="off (INTERRUPT_LISTENING=true)" if config.interrupt_listening else "Silero VAD")
        if config.vad_model != "v5" and not config.interrupt_listening:
            log.warn("VAD_MODEL={model}: the bundled Silero model is v5, which is used", model=config.vad_model)
    else:
        log.info("No STS_URL and no pipeline (ASR_URL + LLM_URL + TTS_URL) configured: calls are answered by the "
                 "built-in echo agent (callers hear themselves)")
    unused = unused_settings(config)
    if unused:
        log.warn("Settings with no effect in {mode} mode: {names}", mode=mode, names=", ".join(unused))
