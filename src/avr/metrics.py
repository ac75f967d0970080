"""
avr's Prometheus metrics (``GET /metrics``), in a `prometheus_client.CollectorRegistry` of the server's own: built by
`avr.service.build`, never the library's global registry.

Two kinds of sources:

- Things that happen once per call or per event are counted with the library's metrics as they happen: calls
  started and ended (`CallEventMetrics`, an event sink next to ``/events``), STS connections (`MeteredStsConnector`).
- Things that happen per audio frame are never counted through the library (its ``inc``/``observe`` take a lock, and
  the frame paths were tuned to the last call): the calls keep plain ints (`avr.calls.Call.frames_in` ...), the
  playback ticker plain histogram buckets per tick (`avr.playout.FrameTicker.lateness`); so do the webhook queues,
  the ARI events stream and the pipeline (`avr.histogram.Buckets`). `AvrCollector` reads them when ``/metrics`` is
  scraped: the live calls' counters plus the running totals of the ended ones.

Every metric is listed, with its meaning, in the README's "Metrics" section.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

from attrs import define, field
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure
from zope.interface import implementer

import avr
from avr.ari.events import CONNECTED, CONNECTING, DISCONNECTED, AriEventStream
from avr.calls import CallManager
from avr.control.call_registry import CallRegistry
from avr.control.hub import EventsHub
from avr.delivery import PostQueue
from avr.histogram import Buckets
from avr.interfaces import IEventSink, IStsConnector, IStsHandler
from avr.pipeline.latency import PipelineLatencies
from avr.playout import FrameTicker, LATE_SECONDS

#: Upper bounds (seconds) of ``avr_sts_connect_seconds``.
STS_CONNECT_BOUNDS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

#: The ``reason`` of an ended AudioSocket call, by the start of `avr.calls.Call.end_reason`; any other is ``other``.
AUDIOSOCKET_END_REASONS = (
    ("Asterisk: hangup frame", "hangup"),
    ("Asterisk: connection lost", "connection_lost"),
    ("Asterisk: error frame", "asterisk_error"),
    ("Asterisk: malformed frame", "malformed_frame"),
    ("Asterisk: no frame either way", "idle_timeout"),
    ("Asterisk: internal error", "internal_error"),
    ("the agent hung up", "agent_hangup"),
    ("the agent was removed", "agent_removed"),
    ("STS unreachable", "sts_unreachable"),
    ("STS closed", "sts_closed"),
    ("server shutting down", "shutdown"),
)

#: The ``reason`` of an ended ARI call by its Q.850 cause; other causes are ``cause_<n>``.
Q850_REASONS = {
    0: "not_defined", 1: "unallocated_number", 16: "normal_clearing", 17: "user_busy", 18: "no_user_response",
    19: "no_answer", 21: "call_rejected", 27: "destination_out_of_order", 31: "normal_unspecified",
    34: "no_circuit_available", 38: "network_out_of_order", 41: "temporary_failure", 127: "interworking",
}

#: The kinds of ``avr_calls_active`` and the other per-kind metrics.
CALL_KINDS = ("audiosocket", "ari")

#: What a scrape answers when the client accepts nothing the library can write (never, in practice).
METRICS_MEDIA_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def end_reason(kind: str, data: Mapping[str, Any]) -> str:
    """
    The ``reason`` label of a ``call.ended`` event's ``data``: a short word from a fixed set (never the free text,
    which would make a series per call).

    An AudioSocket call's comes from its ``reason`` (`AUDIOSOCKET_END_REASONS`); an ARI call's is ``avr_hangup`` when
    avr hung it up (the REST API or an agent: ``hangupReason``), else its Q.850 cause (`Q850_REASONS`).
    """
    if kind == "audiosocket":
        reason = data.get("reason")
        if isinstance(reason, str):
            for prefix, label in AUDIOSOCKET_END_REASONS:
                if reason.startswith(prefix):
                    return label
        return "other"
    if data.get("hangupReason"):
        return "avr_hangup"
    cause = data.get("cause")
    if isinstance(cause, int) and not isinstance(cause, bool) and 0 <= cause <= 127:
        return Q850_REASONS.get(cause, f"cause_{cause}")
    return "unknown"


@implementer(IEventSink)
@define(eq=False)
class CallEventMetrics:
    """
    Counts ``call.created`` and ``call.ended`` events (`IEventSink`, fed what ``/events`` gets) by the call's kind,
    and the ends by reason (`end_reason`).

    :param registry: the call registry, to know the kind of an ended call (set after it is built).
    """

    metrics: CollectorRegistry
    registry: CallRegistry | None = None
    started: Counter = field(init=False)
    ended: Counter = field(init=False)

    def __attrs_post_init__(self) -> None:
        self.started = Counter("avr_calls_started", "Calls that started, by kind (audiosocket: dialplan "
                               "AudioSocket calls; ari: calls in the Stasis application)", ["kind"],
                               registry=self.metrics)
        self.ended = Counter("avr_calls_ended", "Calls that ended, by kind and reason (see the README)",
                             ["kind", "reason"], registry=self.metrics)
        for kind in CALL_KINDS:
            self.started.labels(kind)

    def publish(self, event: dict) -> None:
        """See `IEventSink.publish`: counts the calls' starts and ends; ignores the other events."""
        type_ = event.get("type")
        if type_ == "call.created":
            data = event.get("data") or {}
            self.started.labels(str(data.get("kind") or "unknown")).inc()
        elif type_ == "call.ended":
            record = self.registry.lookup(event.get("callId")) if self.registry is not None else None
            kind = record.kind if record is not None else "unknown"
            self.ended.labels(kind, end_reason(kind, event.get("data") or {})).inc()


@implementer(IStsConnector)
@define(eq=False)
class MeteredStsConnector:
    """
    An `IStsConnector` that times the sessions ``connector`` opens (``avr_sts_connect_seconds``) and counts those it
    cannot open (``avr_sts_connect_failures_total``); one cancelled because its call ended first is neither.
    """

    connector: IStsConnector
    clock: IReactorTime
    metrics: CollectorRegistry
    seconds: Histogram = field(init=False)
    failures: Counter = field(init=False)

    def __attrs_post_init__(self) -> None:
        self.seconds = Histogram("avr_sts_connect_seconds", "Time to open an STS session (connection, handshake "
                                 "and init), sessions that opened", buckets=STS_CONNECT_BOUNDS, registry=self.metrics)
        self.failures = Counter("avr_sts_connect_failures", "STS sessions that could not be opened (refused, "
                                "timeout, handshake rejected, bad URL)", registry=self.metrics)

    def connect(self, url: str | None, uuid: str, handler: IStsHandler) -> Deferred:
        """See `IStsConnector.connect`."""
        started = self.clock.seconds()

        def opened(session: Any) -> Any:
            self.seconds.observe(max(self.clock.seconds() - started, 0.0))
            return session

        def failed(failure: Failure) -> Failure:
            if not failure.check(CancelledError):
                self.failures.inc()
            return failure

        return self.connector.connect(url, uuid, handler).addCallbacks(opened, failed)


@define(eq=False)
class AvrCollector(Collector):
    """
    Reads the plain counters of avr's components when ``/metrics`` is scraped (see the module).

    :param deliveries: the webhook queues, by receiver (``webhook``, ``events_webhook``, ``openclaw_webhook``).
    :param ari: the ARI events stream, when ARI is configured.
    :param pipeline: pipeline mode's latencies, when it is configured.
    """

    calls: CallManager
    ticker: FrameTicker
    registry: CallRegistry
    hub: EventsHub
    deliveries: Mapping[str, PostQueue] = field(factory=dict)
    ari: AriEventStream | None = None
    pipeline: PipelineLatencies | None = None

    def collect(self) -> Iterable[Metric]:
        """The metrics, as they are now."""
        info = GaugeMetricFamily("avr_build_info", "avr's version (always 1)", labels=["version"])
        info.add_metric([avr.__version__], 1)
        yield info
        active = GaugeMetricFamily("avr_calls_active", "Calls up now, by kind (audiosocket: dialplan AudioSocket "
                                   "calls; ari: calls in the Stasis application)", labels=["kind"])
        for kind, count in sorted(self.registry.active_by_kind().items()):
            active.add_metric([kind], count)
        yield active
        yield from self._frames()
        yield from self._webhooks()
        if self.ari is not None:
            yield from self._ari(self.ari)
        yield GaugeMetricFamily("avr_events_subscribers", "Clients connected to WS /events",
                                value=self.hub.subscriber_count)
        if self.pipeline is not None:
            yield _histogram("avr_pipeline_llm_first_text_seconds", "Pipeline mode: a user turn (transcript or "
                             "digit) to the first text of the LLM's answer", self.pipeline.llm_first_text)
            yield _histogram("avr_pipeline_tts_first_audio_seconds", "Pipeline mode: a sentence sent to the TTS to "
                             "the first byte of its audio", self.pipeline.tts_first_audio)
            yield _histogram("avr_pipeline_turn_first_audio_seconds", "Pipeline mode: a user turn to the first audio "
                             "of the agent's reply handed to playback", self.pipeline.turn_first_audio)

    def _frames(self) -> Iterable[Metric]:
        totals = self.calls.frame_totals()
        yield CounterMetricFamily("avr_audiosocket_frames_received", "Audio frames agent calls received from "
                                  "Asterisk", value=totals.frames_in)
        yield CounterMetricFamily("avr_audiosocket_frames_sent", "Audio frames agent calls sent to Asterisk",
                                  value=totals.frames_out)
        yield CounterMetricFamily("avr_playback_late_frames", f"Audio frames agent calls sent more than "
                                  f"{LATE_SECONDS * 1000:g} ms after their 20 ms playback slot",
                                  value=totals.late_frames)
        dropped = CounterMetricFamily("avr_playback_frames_dropped", "Agent audio frames dropped from playback "
                                      "queues: queue_full (more than the queue holds), overload (playback fell "
                                      "behind real time, the server overloaded), catch_up (delay that hiccups of the "
                                      "agent's stream added, taken back)", labels=["reason"])
        dropped.add_metric(["queue_full"], totals.drops.full)
        dropped.add_metric(["overload"], totals.drops.overload)
        dropped.add_metric(["catch_up"], totals.drops.caught_up)
        yield dropped
        yield _histogram("avr_playback_lateness_seconds", "How late each audio frame the playback ticker sent left, "
                         "after its 20 ms slot (frames of one tick share the tick's lateness)", self.ticker.lateness)

    def _webhooks(self) -> Iterable[Metric]:
        families = [
            (CounterMetricFamily("avr_webhook_deliveries", "Webhook events delivered (a 2xx answer), by receiver",
                                 labels=["receiver"]), "delivered"),
            (CounterMetricFamily("avr_webhook_failures", "Webhook events not delivered after every attempt, by "
                                 "receiver", labels=["receiver"]), "failed"),
            (CounterMetricFamily("avr_webhook_retries", "Webhook attempts that were retries, by receiver",
                                 labels=["receiver"]), "retried"),
            (CounterMetricFamily("avr_webhook_dropped", "Webhook events dropped because the receiver did not keep "
                                 "up, by receiver", labels=["receiver"]), "dropped"),
        ]
        for family, attribute in families:
            for receiver, queue in sorted(self.deliveries.items()):
                family.add_metric([receiver], getattr(queue, attribute))
            yield family

    def _ari(self, ari: AriEventStream) -> Iterable[Metric]:
        state = GaugeMetricFamily("avr_ari_connection_state", "The ARI events WebSocket's state: 1 for the current "
                                  "one (connected, connecting, disconnected), 0 for the others", labels=["state"])
        for name in (CONNECTED, CONNECTING, DISCONNECTED):
            state.add_metric([name], 1 if ari.state == name else 0)
        yield state
        yield CounterMetricFamily("avr_ari_reconnects", "Times the ARI events WebSocket connected again after its "
                                  "first connection", value=max(ari.connections - 1, 0))
        yield CounterMetricFamily("avr_ari_connect_failures", "ARI events WebSocket connection attempts that failed",
                                  value=ari.failed_attempts)


def _histogram(name: str, documentation: str, buckets: Buckets) -> HistogramMetricFamily:
    return HistogramMetricFamily(name, documentation, buckets=buckets.cumulative(), sum_value=buckets.total)


def exposition(metrics: CollectorRegistry, accept: str | None) -> tuple[bytes, str]:
    """``metrics`` in the format the ``Accept`` header asks for (Prometheus text by default): body, media type."""
    encoder, media_type = choose_encoder(accept or "")
    return encoder(metrics), media_type
