"""
``GET /metrics`` scraped over real sockets from avr as `avr.service.build` wires it (loopback, a simulated Asterisk, a
fake STS): on the HTTP port with and without the API key, and on the keyless ``METRICS_PORT`` listener, before,
during and after real AudioSocket calls. The metrics' own arithmetic is tests/test_metrics.py's.
"""

from __future__ import annotations

from typing import Any

import pytest
import pytest_twisted
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.task import deferLater

from avr.frames import HANGUP_FRAME, Kind
from avr.testing.asterisk import Continuous
from tests.helpers import tone, until
from tests.test_integration_core import Rig, audio_frames

pytestmark = pytest.mark.integration

KEY = "loopback-metrics-key-41d2"
U1 = "6a3f0c1e-2b4d-4e8f-9a01-3c5d7e9f1a21"
U2 = "6a3f0c1e-2b4d-4e8f-9a01-3c5d7e9f1a22"

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def get(core_rig: Rig, port: int, **kwargs: Any) -> tuple[int, str, bytes]:
    """``GET /metrics`` on ``port``: status, content type and body."""
    response = await core_rig.http.get(f"http://127.0.0.1:{port}/metrics", **kwargs)
    body = await response.content()
    return response.code, (response.headers.getRawHeaders("content-type") or [""])[0], body


async def scrape(core_rig: Rig) -> Samples:
    """One scrape of each listener (the HTTP port with the key, METRICS_PORT without): they must agree."""
    code, media_type, body = await get(core_rig, core_rig.port_of("http"), headers={"X-API-Key": KEY})
    assert code == 200 and media_type.startswith("text/plain; version=0.0.4")
    keyless = await get(core_rig, core_rig.port_of("metrics"))
    assert keyless[0] == 200
    main, other = parse(body), parse(keyless[2])
    # The same registry: the call and frame counters agree (webhooks may be delivered between the two scrapes).
    assert calls_and_frames(main) == calls_and_frames(other) != {}
    return main


def parse(body: bytes) -> Samples:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(body.decode("utf-8")) for s in family.samples}


def calls_and_frames(samples: Samples) -> Samples:
    return {k: v for k, v in samples.items() if k[0].startswith(("avr_calls_", "avr_audiosocket_frames_"))}


def audiosocket(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted({"kind": "audiosocket", **labels}.items())))]


@pytest_twisted.ensureDeferred
async def test_metrics_over_loopback_follow_real_calls(core_rig: Rig) -> None:
    """
    Without the key the HTTP port answers 401 (and no metric), the METRICS_PORT listener answers; a call's frames
    in and out, its start and its end by reason (a hang-up frame; an agent hang-up for a second call) move the
    counters, identically on both listeners; the ended calls' frames stay counted.
    """
    core_rig.start(api_key=KEY, metrics_port=0)
    http_port = core_rig.port_of("http")
    code, _, body = await get(core_rig, http_port)
    assert code == 401 and b"avr_" not in body
    code, _, body = await get(core_rig, http_port, params={"api_key": "not-the-key"})
    assert code == 401 and b"avr_" not in body
    # The keyless listener serves /metrics alone.
    response = await core_rig.http.get(f"http://127.0.0.1:{core_rig.port_of('metrics')}/calls")
    await response.content()
    assert response.code == 404

    before = await scrape(core_rig)
    assert audiosocket(before, "avr_calls_active") == 0
    assert audiosocket(before, "avr_calls_started_total") == 0
    assert before[("avr_audiosocket_frames_received_total", ())] == 0
    assert before[("avr_audiosocket_frames_sent_total", ())] == 0

    # A call: 10 frames in (200 ms at 20 ms), 10 frames of agent audio out.
    asterisk = await core_rig.dial(Continuous.from_pcm(tone(8000, 200), duration=0.2, hang_up_at_end=False), uuid=U1)
    sts = await core_rig.session(U1)
    await until(core_rig.reactor, lambda: len(sts.received_audio) >= 10 * 320)
    sts.send_audio(tone(8000, 200, 300))
    await until(core_rig.reactor, lambda: len(audio_frames(asterisk)) >= 10)
    during = await scrape(core_rig)
    assert audiosocket(during, "avr_calls_active") == 1
    assert audiosocket(during, "avr_calls_started_total") == 1
    assert during[("avr_audiosocket_frames_received_total", ())] == 10
    assert during[("avr_audiosocket_frames_sent_total", ())] == 10
    assert during[("avr_playback_lateness_seconds_count", ())] == 10
    assert during[("avr_sts_connect_seconds_count", ())] == 1
    assert during[("avr_sts_connect_failures_total", ())] == 0

    asterisk.send_frame(HANGUP_FRAME)
    await sts.when_closed().addTimeout(5, core_rig.reactor)
    await until(core_rig.reactor, lambda: core_rig.avr is not None and core_rig.avr.calls.get(U1) is None)

    # A second call, hung up by its agent.
    second = await core_rig.dial(uuid=U2)
    agent = await core_rig.session(U2)
    second.send_frame(bytes((Kind.SLIN8, 1, 64)) + b"\x00" * 320)
    await until(core_rig.reactor, lambda: len(agent.received_audio) >= 320)
    agent.send_hangup("done")
    await until(core_rig.reactor, lambda: not second.connected)
    await until(core_rig.reactor, lambda: core_rig.avr is not None and core_rig.avr.calls.get(U2) is None)

    after = await scrape(core_rig)
    assert audiosocket(after, "avr_calls_active") == 0
    assert audiosocket(after, "avr_calls_started_total") == 2
    assert audiosocket(after, "avr_calls_ended_total", reason="hangup") == 1
    assert audiosocket(after, "avr_calls_ended_total", reason="agent_hangup") == 1
    assert sum(v for (name, _), v in after.items() if name == "avr_calls_ended_total") == 2
    assert after[("avr_audiosocket_frames_received_total", ())] == 11
    assert after[("avr_audiosocket_frames_sent_total", ())] == 10
    assert after[("avr_sts_connect_seconds_count", ())] == 2
    await core_rig.sink.when_received(4).addTimeout(5, core_rig.reactor)  # call_started and call_ended, twice
    delivered = await scrape(core_rig)
    for _ in range(100):  # avr counts a delivery once it has read the sink's answer
        if delivered[("avr_webhook_deliveries_total", (("receiver", "webhook"),))] == 4:
            break
        await deferLater(core_rig.reactor, 0.01, lambda: None)
        delivered = await scrape(core_rig)
    assert delivered[("avr_webhook_deliveries_total", (("receiver", "webhook"),))] == 4
    assert sorted((w.uuid, w.type) for w in core_rig.sink.received) == [
        (U1, "call_ended"), (U1, "call_started"), (U2, "call_ended"), (U2, "call_started")]
    assert delivered[("avr_webhook_failures_total", (("receiver", "webhook"),))] == 0
