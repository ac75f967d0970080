"""
The graceful drain (`avr.drain`, what SIGTERM sets off through `avr.service.AvrService.stopService`) over loopback:
avr as `avr.service.build` wires it, a simulated Asterisk, a fake STS, a webhook sink and an ``/events`` client, all
on real sockets. The drain's rules on a memory reactor are tests/test_drain.py's.
"""

from __future__ import annotations

from typing import Any

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred

from avr.frames import HANGUP_FRAME, Kind
from avr.testing.asterisk import Continuous, SimulatedAsterisk
from tests.control_harness import close_events, connect_events, of_call
from tests.helpers import tone, until
from tests.test_integration_core import Rig, audio_frames

pytestmark = pytest.mark.integration

LIVE = "7e1d2c3b-4a59-4687-9a0b-1c2d3e4f5a61"
LATE = "7e1d2c3b-4a59-4687-9a0b-1c2d3e4f5a62"
REGISTERED = "7e1d2c3b-4a59-4687-9a0b-1c2d3e4f5a63"


async def refused_while_draining(core_rig: Rig) -> None:
    """A new AudioSocket connection hears a hang-up frame and is closed; POST /call and /ready answer 503."""
    late = await core_rig.dial(uuid=LATE)
    await until(core_rig.reactor, lambda: not late.connected)
    assert [f.kind for _, f in late.received] == [Kind.HANGUP]
    assert LATE not in [c.uuid for c in core_rig.sts.connections]
    code, body = await core_rig.post_call(REGISTERED, {"from": "2000"})
    assert code == 503 and body["reason"] == "draining"
    response = await core_rig.http.get(f"http://127.0.0.1:{core_rig.port_of('http')}/ready")
    assert response.code == 503 and (await response.json())["reasons"][0]["component"] == "drain"


async def live_call(core_rig: Rig) -> tuple[SimulatedAsterisk, Any]:
    asterisk = await core_rig.dial(Continuous.from_pcm(tone(8000, 200), duration=None), uuid=LIVE)
    return asterisk, await core_rig.session(LIVE)


@pytest_twisted.ensureDeferred
async def test_a_live_call_goes_on_through_the_drain_and_ends_on_its_own(core_rig: Rig) -> None:
    """
    SIGTERM's stop with a call up: nothing new is taken, the live call goes on both ways (nobody hangs it up), and
    when the caller hangs up the drain is over and avr stops, with the call's call_ended webhook and event.
    """
    core_rig.start(drain_timeout=30)
    events = await connect_events(core_rig.reactor, core_rig.port_of("http"), None)
    asterisk, sts = await live_call(core_rig)
    stopped: Deferred = core_rig.avr.service.stopService()  # type: ignore[union-attr]
    assert not stopped.called

    await refused_while_draining(core_rig)
    heard = len(sts.received_audio)
    sts.send_audio(tone(8000, 100, 300))
    await until(core_rig.reactor, lambda: len(audio_frames(asterisk)) >= 5 and len(sts.received_audio) > heard)
    assert not stopped.called and asterisk.connected

    asterisk.send_frame(HANGUP_FRAME)  # the caller hangs up
    await stopped.addTimeout(5, core_rig.reactor)
    assert Kind.HANGUP not in [f.kind for _, f in asterisk.received]  # avr never hung it up
    ended = await events.wait(of_call(LIVE, "call.ended", reason="Asterisk: hangup frame"))
    assert ended["data"]["previousState"] == "answered"
    hooks = await core_rig.sink.when_received(2).addTimeout(5, core_rig.reactor)
    assert [(h.type, h.uuid) for h in hooks] == [("call_started", LIVE), ("call_ended", LIVE)]
    assert not core_rig.avr.service.getServiceNamed("audiosocket").listening  # type: ignore[union-attr]
    await close_events(events)


@pytest_twisted.ensureDeferred
async def test_at_drain_timeout_a_lingering_call_is_hung_up_cleanly(core_rig: Rig) -> None:
    """
    DRAIN_TIMEOUT=1: a call still live a second into the drain gets a hang-up frame, its STS session is closed, its
    call_ended webhook is delivered and its call.ended event sent, and avr stops.
    """
    core_rig.start(drain_timeout=1)
    events = await connect_events(core_rig.reactor, core_rig.port_of("http"), None)
    asterisk, sts = await live_call(core_rig)
    began = core_rig.reactor.seconds()
    stopped: Deferred = core_rig.avr.service.stopService()  # type: ignore[union-attr]
    assert not stopped.called and asterisk.connected

    await stopped.addTimeout(5, core_rig.reactor)
    assert core_rig.reactor.seconds() - began >= 1
    assert [f.kind for _, f in asterisk.received][-1:] == [Kind.HANGUP] and not asterisk.connected
    was_clean, code, _ = await sts.when_closed().addTimeout(5, core_rig.reactor)
    assert was_clean and code == 1000
    ended = await events.wait(of_call(LIVE, "call.ended", reason="server shutting down"))
    assert ended["data"]["previousState"] == "answered"
    hooks = await core_rig.sink.when_received(2).addTimeout(5, core_rig.reactor)
    assert [(h.type, h.uuid) for h in hooks] == [("call_started", LIVE), ("call_ended", LIVE)]
    assert core_rig.avr.calls.get(LIVE) is None  # type: ignore[union-attr]
    await close_events(events)
