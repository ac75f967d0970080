"""
Per-call limits: ``STS_MAX_MESSAGE`` (the largest message an STS may send) over loopback WebSockets, with the direct
frame reads of `avr.fastpaths` on, and ``PLAYBACK_MAX_SECONDS`` (the most agent audio a call queues) through avr as
`avr.service.build` wires it. ``MAX_CALLS`` and the body limits are tests/test_drain.py's and test_http_site.py's.
"""

from __future__ import annotations

import re

import pytest
import pytest_twisted
from twisted.logger import LogEvent, formatEvent

from avr.frames import Kind
from avr.sts.codec import encode_audio
from avr.testing.asterisk import SimulatedAsterisk
from avr.testing.sts import FakeStsServerProtocol
from tests.helpers import tone, until
from tests.test_drain import FRAME, Rig as MemoryRig
from tests.test_integration_core import Rig, audio_frames

U1 = "1d2c3b4a-5e6f-4a7b-8c9d-0e1f2a3b4c5d"
U2 = "1d2c3b4a-5e6f-4a7b-8c9d-0e1f2a3b4c5e"


def audio_message(size: int) -> bytes:
    """An STS ``audio`` message of exactly ``size`` bytes: JSON with base64 PCM, padded with spaces after it."""
    base64_chars = size - len(encode_audio(b""))
    message = encode_audio(b"\x00\x01" * (base64_chars // 8 * 3))  # 4 characters per 3 bytes
    return message + b" " * (size - len(message))


async def call(core_rig: Rig, uuid: str) -> tuple[SimulatedAsterisk, FakeStsServerProtocol]:
    asterisk = await core_rig.dial(uuid=uuid)
    return asterisk, await core_rig.session(uuid)


async def assert_ended_by_the_limit(core_rig: Rig, uuid: str, asterisk: SimulatedAsterisk, sts: FakeStsServerProtocol,
                                    limit: int) -> None:
    """The STS got close code 1009; the call is over and said so: hang-up frame, webhook, event, nothing left."""
    was_clean, code, _ = await sts.when_closed().addTimeout(5, core_rig.reactor)
    assert code == 1009
    reason = f"STS closed: message larger than STS_MAX_MESSAGE ({limit} bytes; close code 1009)"
    await until(core_rig.reactor, lambda: not asterisk.connected)
    assert [f.kind for _, f in asterisk.received][-1:] == [Kind.HANGUP]
    ended = await core_rig.sink.when_received(2).addTimeout(5, core_rig.reactor)
    assert [(w.type, w.uuid) for w in ended] == [("call_started", uuid), ("call_ended", uuid)]
    assert core_rig.avr is not None
    assert core_rig.avr.calls.get(uuid) is None and len(core_rig.avr.calls) == 0 and len(core_rig.avr.calls.ticker) == 0
    record = core_rig.avr.registry.lookup(uuid)
    assert record is not None and record.ended and record.to_dict()["endReason"] == reason


@pytest.mark.integration
@pytest.mark.logs_errors(r"STS for call 1d2c3b4a-.* sent a message larger than STS_MAX_MESSAGE \(4096 bytes; close "
                         r"code 1009\): session ended")
@pytest_twisted.ensureDeferred
async def test_a_message_over_a_small_sts_max_message_ends_the_call(core_rig: Rig, log_events: list[LogEvent]) -> None:
    """
    STS_MAX_MESSAGE=4096 (under 64 KiB: the direct frame reads are off, autobahn checks every frame): a message of
    4096 bytes plays; one of 4097 bytes (a single small frame the direct reads would have taken) closes the session
    with 1009, logged as an error, and ends the call cleanly.
    """
    core_rig.start(sts_max_message=4096)
    asterisk, sts = await call(core_rig, U1)
    sts.send_raw(audio_message(4096))
    await until(core_rig.reactor, lambda: len(audio_frames(asterisk)) >= 1)
    sts.send_raw(audio_message(4097))
    await assert_ended_by_the_limit(core_rig, U1, asterisk, sts, 4096)
    info = [formatEvent(e) for e in log_events]
    assert any(re.search(rf"STS session for call {U1} ended: message larger than STS_MAX_MESSAGE", m) for m in info)
    assert any(f"Call ended: {U1} (STS closed: message larger than STS_MAX_MESSAGE" in m for m in info)


@pytest.mark.integration
@pytest.mark.logs_errors(r"sent a message larger than STS_MAX_MESSAGE \(131072 bytes; close code 1009\)")
@pytest.mark.parametrize("fragments", [1, 3], ids=["one frame", "fragmented"])
@pytest_twisted.ensureDeferred
async def test_a_message_over_a_large_sts_max_message_ends_the_call(core_rig: Rig, fragments: int) -> None:
    """
    STS_MAX_MESSAGE=128 KiB with the direct frame reads on (they take only whole frames under 64 KiB): a message
    over the limit, in one frame or in fragments each small enough for them, still gets 1009.
    """
    limit = 128 * 1024
    core_rig.start(sts_max_message=limit)
    asterisk, sts = await call(core_rig, U1)
    sts.send_audio(tone(8000, 40))  # the session works, by the direct reads
    await until(core_rig.reactor, lambda: len(audio_frames(asterisk)) >= 2)
    message = audio_message(limit + 1)
    sts.sendMessage(message, isBinary=False, fragmentSize=len(message) // fragments + 1)
    await assert_ended_by_the_limit(core_rig, U1, asterisk, sts, limit)


def test_playback_max_seconds_bounds_a_calls_queue_and_reports_it(monkeypatch: pytest.MonkeyPatch,
                                                                  log_events: list[LogEvent]) -> None:
    """
    PLAYBACK_MAX_SECONDS=1: a call queues at most 50 frames of agent audio; beyond that audio is dropped (the oldest
    keeps playing), with one warning per call, the count in /metrics and the total when the call ends; another call
    has its own queue.
    """
    rig = MemoryRig(monkeypatch, playback_max_seconds=1)
    protocol, transport = rig.dial(U1)
    protocol.dataReceived(bytes((Kind.SLIN8, 1, 64)) + FRAME)
    agent = rig.sts.sessions[U1].handler
    first = tone(8000, 20, 300)
    agent.sts_audio(first + b"\x00\x02" * 160 * 59)  # 60 frames: 10 over
    agent.sts_audio(b"\x00\x03" * 160 * 5)  # 5 more, still full
    warnings = [formatEvent(e) for e in log_events if e.get("log_level") is not None and e["log_level"].name == "warn"]
    assert warnings == [(f"Call {U1}: the agent sent more audio than PLAYBACK_MAX_SECONDS (1 s) ahead of playback; "
                         "dropping what does not fit (one warning per call; the total is logged at its end)")]
    assert rig.avr.metrics is not None
    assert rig.avr.metrics.get_sample_value("avr_playback_frames_dropped_total", {"reason": "queue_full"}) == 15
    rig.reactor.advance(0.02)
    assert transport.value().endswith(bytes((Kind.SLIN8, 1, 64)) + first)  # the oldest plays first

    # A second call's queue is its own (and starts empty).
    other, _ = rig.dial(U2)
    other.dataReceived(bytes((Kind.SLIN8, 1, 64)) + FRAME)
    rig.sts.sessions[U2].handler.sts_audio(b"\x00\x04" * 160 * 50)
    assert rig.avr.metrics.get_sample_value("avr_playback_frames_dropped_total", {"reason": "queue_full"}) == 15

    protocol.connectionLost(None)
    messages = [formatEvent(e) for e in log_events]
    assert (f"Call {U1}: 15 frames of agent audio did not fit in the playback queue (PLAYBACK_MAX_SECONDS) and were "
            "dropped") in messages
    rig.avr.service.stopService()
