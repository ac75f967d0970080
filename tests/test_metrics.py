"""Tests for avr.metrics and GET /metrics: each metric moves when its event happens; auth; the METRICS_PORT site."""

from __future__ import annotations

from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from treq.testing import StubTreq
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from zope.interface.verify import verifyObject

from avr.config import Config
from avr.delivery import PostQueue
from avr.histogram import Buckets
from avr.interfaces import IEventSink, IStsConnector
from avr.metrics import CallEventMetrics, MeteredStsConnector, end_reason, exposition
from avr.playout import LATE_SECONDS, LATENESS_BOUNDS, FrameTicker
from avr.service import Avr, build
from fakes import FakeLeg, FakeStsConnector
from pipeline_harness import PipelineWorld
from test_ari_events import connected, drop, make
from test_events_hub import Server, quiet_hub, serve_hub

U1 = "935652e3-7c59-4edc-b17f-9646a9c2a265"
U2 = "0f6b2d9e-1111-4c1c-9d3e-5a2f7b9c0d11"
KEY = "metrics-secret-key"
FRAME = b"\x01\x02" * 160  # 20 ms of 8 kHz PCM16


def scrape(metrics: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a scrape, parsed back from the text format: (name, sorted labels) → value."""
    body, media_type = exposition(metrics, None)
    assert media_type.startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(body.decode("utf-8")):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def value(metrics: CollectorRegistry, name: str, **labels: str) -> float:
    return scrape(metrics)[(name, tuple(sorted(labels.items())))]


def built(**settings: Any) -> tuple[Avr, MemoryReactorClock, FakeStsConnector]:
    reactor = MemoryReactorClock()
    sts = FakeStsConnector()
    avr = build(reactor, Config(**settings), http_client=StubTreq(None), sts_connector=sts)
    assert avr.metrics is not None
    return avr, reactor, sts


# -- the plain histogram ----------------------------------------------------------------------------------------


def test_buckets_count_by_upper_bound_and_expose_cumulative_counts() -> None:
    b = Buckets((0.01, 0.02))
    b.observe(0.005)
    b.observe(0.01, times=2)  # on a bound: that bound's bucket (le)
    b.observe(0.015)
    b.observe(1.0)
    assert b.counts == [3, 1, 1] and b.count == 5
    assert b.cumulative() == [("0.01", 3.0), ("0.02", 4.0), ("+Inf", 5.0)]
    assert b.total == pytest.approx(0.005 + 0.02 + 0.015 + 1.0)
    assert b.over(0.01) == 2
    with pytest.raises(ValueError):
        Buckets((0.02, 0.01))


# -- playback lateness -------------------------------------------------------------------------------------------


class Player:
    def __init__(self, frames: bool = True) -> None:
        self.frames = frames
        self.played = 0
        self.late_frames = 0

    def play_frame(self) -> bool:
        self.played += 1
        return self.frames

    def missed(self, ticks: int) -> None:
        pass


def test_ticker_counts_each_frame_in_its_ticks_lateness_bucket() -> None:
    """On time: frames in the first bucket; a held-up reactor: the caught-up frames are late, per player too."""
    clock = Clock()
    ticker = FrameTicker(clock, phases=2)
    players = [Player(), Player(), Player(frames=False)]
    for p in players:
        ticker.add(p)
    for _ in range(10):
        clock.advance(0.0100001)  # every step just after its slot (steps every 10 ms: 20 ms / 2 phases)
    assert ticker.lateness.counts[0] == 10  # the two sending players, 5 steps each; the silent one counts nothing
    assert ticker.lateness.count == 10 and [p.late_frames for p in players] == [0, 0, 0]
    clock.advance(0.0499)  # held up: the steps due at 0.11 .. 0.14 s are served at 0.1499 s
    lateness = ticker.lateness
    assert lateness.count == 10 + 4
    # 39.9 and 29.9 ms late: late (more than 20 ms), one frame of each sending player; 19.9 and 9.9 ms: not late.
    assert lateness.over(LATE_SECONDS) == 2
    assert [p.late_frames for p in players] == [1, 1, 0]
    assert lateness.counts[LATENESS_BOUNDS.index(0.04)] == 2
    assert lateness.counts[LATENESS_BOUNDS.index(0.02)] == 1 and lateness.counts[LATENESS_BOUNDS.index(0.01)] == 1
    assert lateness.total == pytest.approx(0.0399 + 0.0299 + 0.0199 + 0.0099, abs=1e-4)


# -- calls, frames and their end ---------------------------------------------------------------------------------


def test_call_counters_move_with_a_calls_frames_and_survive_its_end() -> None:
    avr, reactor, sts = built()
    metrics = avr.metrics
    assert metrics is not None
    assert value(metrics, "avr_calls_active", kind="audiosocket") == 0
    leg = FakeLeg(U1, reactor)
    call = avr.calls.attach(leg)
    assert value(metrics, "avr_calls_active", kind="audiosocket") == 1
    assert value(metrics, "avr_calls_started_total", kind="audiosocket") == 1
    session = sts.open(U1)
    for _ in range(7):
        call.caller_audio(0x10, FRAME)
    for _ in range(3):
        session.handler.sts_audio(FRAME)
    reactor.advance(0.005)
    for _ in range(12):
        reactor.advance(0.005)
    assert len(leg.sent) == 3
    assert value(metrics, "avr_audiosocket_frames_received_total") == 7
    assert value(metrics, "avr_audiosocket_frames_sent_total") == 3
    assert value(metrics, "avr_playback_lateness_seconds_count") == 3
    assert value(metrics, "avr_playback_late_frames_total") == 0
    call.caller_gone("hangup frame")
    samples = scrape(metrics)
    assert samples[("avr_calls_active", (("kind", "audiosocket"),))] == 0
    assert samples[("avr_calls_ended_total", (("kind", "audiosocket"), ("reason", "hangup")))] == 1
    # The ended call's counters stay in the totals, and a second call adds to them.
    assert samples[("avr_audiosocket_frames_received_total", ())] == 7
    assert samples[("avr_audiosocket_frames_sent_total", ())] == 3
    second = avr.calls.attach(FakeLeg(U2, reactor))
    sts.open(U2)
    second.caller_audio(0x10, FRAME)
    assert value(metrics, "avr_audiosocket_frames_received_total") == 8


def test_dropped_frames_are_counted_by_reason() -> None:
    avr, reactor, sts = built()
    assert avr.metrics is not None
    call = avr.calls.attach(FakeLeg(U1, reactor))
    session = sts.open(U1)
    call.caller_audio(0x10, FRAME)
    session.handler.sts_audio(FRAME * 10)
    call._queue.max_frames = 12  # type: ignore[union-attr]
    session.handler.sts_audio(FRAME * 5)  # 3 over what the queue holds
    assert value(avr.metrics, "avr_playback_frames_dropped_total", reason="queue_full") == 3
    call._queue.max_lag = 2  # type: ignore[union-attr]
    call.missed(3)  # the ticker skipped 3 ticks while 12 frames waited
    assert value(avr.metrics, "avr_playback_frames_dropped_total", reason="overload") == 3
    assert value(avr.metrics, "avr_playback_frames_dropped_total", reason="catch_up") == 0


def test_call_events_count_starts_and_ends_by_kind_and_reason() -> None:
    metrics = CollectorRegistry()
    events = CallEventMetrics(metrics)
    verifyObject(IEventSink, events)
    events.publish({"type": "call.created", "callId": "a", "data": {"kind": "ari"}})
    events.publish({"type": "call.dtmf", "callId": "a", "data": {"digit": "1"}})
    assert value(metrics, "avr_calls_started_total", kind="ari") == 1
    assert value(metrics, "avr_calls_started_total", kind="audiosocket") == 0


@pytest.mark.parametrize(("kind", "data", "reason"), [
    ("audiosocket", {"reason": "Asterisk: hangup frame"}, "hangup"),
    ("audiosocket", {"reason": "Asterisk: connection lost: Connection was closed cleanly."}, "connection_lost"),
    ("audiosocket", {"reason": "STS closed: agent went away"}, "sts_closed"),
    ("audiosocket", {"reason": "STS unreachable"}, "sts_unreachable"),
    ("audiosocket", {"reason": "the agent hung up (done)"}, "agent_hangup"),
    ("audiosocket", {"reason": "server shutting down"}, "shutdown"),
    ("audiosocket", {"reason": "something new"}, "other"),
    ("ari", {"cause": 16, "causeText": "Normal Clearing"}, "normal_clearing"),
    ("ari", {"cause": 17}, "user_busy"),
    ("ari", {"cause": 99}, "cause_99"),
    ("ari", {"cause": 16, "hangupReason": "normal"}, "avr_hangup"),
    ("ari", {"cause": None}, "unknown"),
    ("ari", {"cause": 100000}, "unknown"),
])
def test_end_reasons_are_a_fixed_set(kind: str, data: dict, reason: str) -> None:
    assert end_reason(kind, data) == reason


# -- STS connections ---------------------------------------------------------------------------------------------


def test_sts_connect_time_and_failures() -> None:
    clock, metrics, fake = Clock(), CollectorRegistry(), FakeStsConnector()
    connector = MeteredStsConnector(fake, clock, metrics)
    verifyObject(IStsConnector, connector)
    handler: Any = object()
    connector.connect("ws://sts", U1, handler)
    clock.advance(0.3)
    fake.open(U1)
    connector.connect("ws://sts", U2, handler).addErrback(lambda f: None)
    fake.refuse(U2)
    d: Deferred = connector.connect("ws://sts", "u3", handler)
    d.addErrback(lambda f: None)
    d.cancel()  # the call ended first: not a failure
    samples = scrape(metrics)
    assert samples[("avr_sts_connect_seconds_count", ())] == 1
    assert samples[("avr_sts_connect_seconds_sum", ())] == pytest.approx(0.3)
    assert samples[("avr_sts_connect_seconds_bucket", (("le", "0.25"),))] == 0
    assert samples[("avr_sts_connect_seconds_bucket", (("le", "0.5"),))] == 1
    assert samples[("avr_sts_connect_failures_total", ())] == 1


@pytest.mark.logs_errors("STS connection failed")
def test_build_times_the_calls_sts_connections() -> None:
    avr, reactor, sts = built()
    assert avr.metrics is not None
    avr.calls.attach(FakeLeg(U1, reactor))
    sts.refuse(U1)
    assert value(avr.metrics, "avr_sts_connect_failures_total") == 1
    assert value(avr.metrics, "avr_calls_ended_total", kind="audiosocket", reason="sts_unreachable") == 1


# -- webhooks ----------------------------------------------------------------------------------------------------


class Answers:
    """A treq-like client whose POSTs answer with the statuses given, in turn."""

    def __init__(self, *statuses: int) -> None:
        self.statuses = list(statuses)

    def post(self, url: str, **kwargs: Any) -> Deferred:
        from twisted.internet.defer import fail

        status = self.statuses.pop(0)
        if status == 0:
            return fail(ConnectionRefusedError())
        stub = StubTreq(_Status(status))
        return stub.post(url, **kwargs)  # type: ignore[no-any-return]


class _Status:
    isLeaf = True

    def __init__(self, status: int) -> None:
        self.status = status

    def render(self, request: Any) -> bytes:
        request.setResponseCode(self.status)
        return b"{}"

    def putChild(self, path: bytes, child: Any) -> None:  # pragma: no cover - IResource
        raise NotImplementedError

    def getChildWithDefault(self, path: bytes, request: Any) -> Any:  # pragma: no cover - isLeaf
        return self


@pytest.mark.logs_errors("not delivered after 2 attempt")
def test_webhook_deliveries_retries_and_failures() -> None:
    from zope.interface import classImplements
    from twisted.web.resource import IResource

    classImplements(_Status, IResource)
    clock = Clock()
    queue = PostQueue(Answers(500, 200, 0, 0), clock, "http://hooks.example/", retries=1, backoff_base=0.5)
    queue.post("a", "call_started", "first", b"{}")
    clock.advance(0.5)
    assert (queue.delivered, queue.retried, queue.failed) == (1, 1, 0)
    queue.post("a", "call_ended", "second", b"{}")
    clock.advance(0.5)
    assert (queue.delivered, queue.retried, queue.failed) == (1, 2, 1)


def test_the_webhook_queues_are_scraped_by_receiver() -> None:
    avr, reactor, sts = built(webhook_url="http://hooks.example/avr", events_webhook_url="http://hooks.example/ev")
    assert avr.metrics is not None
    samples = scrape(avr.metrics)
    for name in ("deliveries", "failures", "retries", "dropped"):
        for receiver in ("webhook", "events_webhook"):
            assert samples[(f"avr_webhook_{name}_total", (("receiver", receiver),))] == 0
    queue = avr.webhooks.deliveries  # type: ignore[attr-defined]
    queue.failed += 2
    assert value(avr.metrics, "avr_webhook_failures_total", receiver="webhook") == 2


# -- ARI, /events, pipeline --------------------------------------------------------------------------------------


def test_ari_connection_state_reconnects_and_failures() -> None:
    stream, net, _, clock = connected()
    assert (stream.connections, stream.failed_attempts) == (1, 0)
    net.refuse = True
    drop(net)
    clock.advance(0.5)  # the first retry is refused
    assert stream.failed_attempts == 1 and stream.state == "disconnected"
    net.refuse = False
    clock.advance(1.0)
    net.flush()
    assert stream.state == "connected" and stream.connections == 2
    fresh, _, _, _ = make()
    assert (fresh.connections, fresh.failed_attempts) == (0, 0)


def test_ari_metrics_in_a_scrape() -> None:
    avr, reactor, sts = built(ari_url="http://127.0.0.1:8088", ari_username="avr", ari_password="pw")
    assert avr.metrics is not None
    samples = scrape(avr.metrics)
    assert samples[("avr_ari_connection_state", (("state", "disconnected"),))] == 1
    assert samples[("avr_ari_connection_state", (("state", "connected"),))] == 0
    assert samples[("avr_ari_reconnects_total", ())] == 0
    assert samples[("avr_calls_active", (("kind", "ari"),))] == 0


def test_events_subscribers_gauge() -> None:
    avr, reactor, sts = built()
    assert avr.metrics is not None
    assert value(avr.metrics, "avr_events_subscribers") == 0
    clock = Clock()
    hub = quiet_hub(clock)
    server = Server(serve_hub(hub, None), clock)
    server.connect()
    from avr.metrics import AvrCollector

    metrics = CollectorRegistry()
    metrics.register(AvrCollector(avr.calls, FrameTicker(clock), avr.registry, hub))
    assert value(metrics, "avr_events_subscribers") == 1


def test_pipeline_stage_latencies() -> None:
    world = PipelineWorld()
    world.tts.clock = world.reactor
    world.tts.delays = {"Sure.": 0.3}
    world.open()
    world.caller_audio(FRAME)
    latencies = world.connector.latencies
    world.say("book a table")
    world.advance(0.5)
    assert latencies.llm_first_text.count == 1 and latencies.llm_first_text.total < 0.05
    assert latencies.tts_first_audio.count == 2
    assert latencies.tts_first_audio.total == pytest.approx(0.3, abs=0.02)
    assert latencies.turn_first_audio.count == 1
    assert latencies.turn_first_audio.total == pytest.approx(0.3, abs=0.02)


def test_pipeline_latencies_are_scraped_in_pipeline_mode() -> None:
    from avr.pipeline.latency import PipelineLatencies

    latencies = PipelineLatencies()
    latencies.turn_first_audio.observe(0.7)
    reactor = MemoryReactorClock()
    avr = build(reactor, Config(asr_url="http://a/speech-to-text-stream", llm_url="http://l/prompt-stream",
                                tts_url="http://t/text-to-speech-stream"),
                http_client=StubTreq(None), sts_connector=FakeStsConnector(), pipeline_latencies=latencies)
    assert avr.metrics is not None
    samples = scrape(avr.metrics)
    assert samples[("avr_pipeline_turn_first_audio_seconds_bucket", (("le", "0.75"),))] == 1
    assert samples[("avr_pipeline_turn_first_audio_seconds_bucket", (("le", "0.5"),))] == 0
    assert ("avr_pipeline_llm_first_text_seconds_count", ()) in samples


# -- GET /metrics --------------------------------------------------------------------------------------------------


def test_metrics_route_needs_the_key_and_parses() -> None:
    avr, reactor, sts = built(http_port=0, api_key=KEY, webhook_url="http://hooks.example/avr",
                              ari_url="http://127.0.0.1:8088", ari_username="avr", ari_password="pw")
    assert avr.http_app is not None
    http = StubTreq(avr.http_app.resource())
    refused = http.get("http://avr/metrics")
    http.flush()
    response = refused.result
    assert response.code == 401
    for kwargs in ({"headers": {"X-API-Key": KEY}}, {"params": {"api_key": KEY}},
                   {"headers": {"Authorization": f"Bearer {KEY}"}}):
        d = http.get("http://avr/metrics", **kwargs)
        http.flush()
        response = d.result
        assert response.code == 200
        assert response.headers.getRawHeaders(b"content-type")[0].startswith(b"text/plain")
        body = http.content(response)
        http.flush()
        text = body.result.decode("utf-8")
        names = {family.name for family in text_string_to_metric_families(text)}
        assert {"avr_calls_active", "avr_calls_started", "avr_audiosocket_frames_received",
                "avr_audiosocket_frames_sent", "avr_playback_lateness_seconds", "avr_playback_late_frames",
                "avr_playback_frames_dropped", "avr_sts_connect_seconds", "avr_sts_connect_failures",
                "avr_webhook_deliveries", "avr_webhook_failures", "avr_webhook_retries", "avr_ari_connection_state",
                "avr_ari_reconnects", "avr_events_subscribers", "avr_build_info"} <= names


def test_the_gate_refuses_metrics_without_the_key_before_the_route() -> None:
    avr, reactor, sts = built(http_port=0, api_key=KEY)
    site = avr.service.getServiceNamed("http").factory  # type: ignore[attr-defined]
    request: Any = type("R", (), {"method": b"GET", "uri": b"/metrics", "requestHeaders": None})()
    from twisted.web.http_headers import Headers

    from avr.http.json import ApiError

    request.requestHeaders = Headers()
    with pytest.raises(ApiError) as e:
        site.gate.admit(request, None)
    assert e.value.status == 401


def test_metrics_port_serves_metrics_alone_without_the_key() -> None:
    avr, reactor, sts = built(http_port=0, api_key=KEY, metrics_port=0)
    service = avr.service.getServiceNamed("metrics")
    assert service.endpoint._interface == "127.0.0.1"  # type: ignore[attr-defined]
    http = StubTreq(service.factory.resource)  # type: ignore[attr-defined]
    d = http.get("http://127.0.0.1/metrics")
    http.flush()
    assert d.result.code == 200
    body = http.content(d.result)
    http.flush()
    assert "avr_calls_active" in {f.name for f in text_string_to_metric_families(body.result.decode())}
    for path in ("/calls", "/health", "/call"):
        d = http.get(f"http://127.0.0.1{path}", headers={"X-API-Key": KEY})
        http.flush()
        assert d.result.code == 404, path
    # The main port still wants the key.
    assert avr.http_app is not None
    main = StubTreq(avr.http_app.resource())
    d = main.get("http://avr/metrics")
    main.flush()
    assert d.result.code == 401


def test_metrics_host_and_port_conflicts() -> None:
    from avr.config import ConfigError, load_config

    assert Config(metrics_port=9464, metrics_host="0.0.0.0").metrics_listener() is not None
    assert Config().metrics_listener() is None
    with pytest.raises(ConfigError, match="METRICS_PORT"):
        load_config({"HTTP_PORT": "9464", "METRICS_PORT": "9464"})


def test_registries_are_per_server() -> None:
    """Two servers in one process: each its own registry (the global one would refuse the second's metrics)."""
    first, _, _ = built()
    second, reactor, _ = built()
    second.calls.attach(FakeLeg(U1, reactor))
    assert first.metrics is not None and second.metrics is not None
    assert value(first.metrics, "avr_calls_started_total", kind="audiosocket") == 0
    assert value(second.metrics, "avr_calls_started_total", kind="audiosocket") == 1
