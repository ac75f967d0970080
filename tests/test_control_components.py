"""
The call-control model's building blocks on their own: `TaskGroup`, `CallRegistry` and the media legs (`MediaLeg`,
`MediaLegs`), which the façade (`CallControl`, tested in test_control_*) composes.
"""

from __future__ import annotations

import re
import uuid
from typing import Any

import pytest
from twisted.internet.defer import CancelledError, Deferred, TimeoutError
from twisted.internet.task import Clock
from twisted.logger import LogEvent

from avr.ari.errors import AriError
from avr.control.ari_link import AriLink
from avr.control.call_registry import CallRegistry
from avr.control.errors import Conflict, NotFound, Timeout, Unavailable
from avr.control.media_leg import MediaLeg, MediaLegs
from avr.control.records import (
    INBOUND,
    MEDIA_CHANNEL_PREFIX,
    TEMP_BRIDGE_PREFIX,
    CallRecord,
    MediaLegRecord,
    call_id_for,
)
from avr.control.tasks import TaskGroup
from tests.ari_fakes import FakeAri, FakeSink, destroyed, left_bridge, stasis_start
from tests.helpers import fired

# -- TaskGroup ------------------------------------------------------------------------------------------------------


def test_task_group_stop_cancels_timers_and_waits_and_drains_tasks() -> None:
    """`stop` cancels pending timers and fails pending waits; `drained` fires once the running tasks are done."""
    clock = Clock()
    tasks = TaskGroup(clock)
    ran: list[str] = []
    tasks.later(1, ran.append, "early")
    tasks.later(5, ran.append, "late")
    waited: Deferred = Deferred()
    outcome: list[Any] = []
    tasks.wait(waited).addBoth(outcome.append)
    gate: Deferred = Deferred()

    async def job() -> None:
        await gate

    tasks.spawn(job(), "a job")
    clock.advance(1)
    tasks.stop()
    clock.advance(10)
    assert ran == ["early"] and tasks.stopped
    assert len(outcome) == 1 and outcome[0].check(CancelledError)
    drained = tasks.drained()
    assert not drained.called
    gate.callback(None)
    assert drained.called


def test_task_group_wait_times_out_on_the_clock() -> None:
    clock = Clock()
    outcome: list[Any] = []
    TaskGroup(clock).wait(Deferred(), timeout=3).addBoth(outcome.append)
    clock.advance(2.9)
    assert outcome == []
    clock.advance(0.1)
    assert outcome[0].check(TimeoutError)


@pytest.mark.logs_errors(r"Call control: the broken job failed")
def test_task_group_logs_a_failed_task_but_not_a_cancelled_one(log_events: list[LogEvent]) -> None:
    tasks = TaskGroup(Clock())

    async def broken() -> None:
        raise RuntimeError("boom")

    gate: Deferred = Deferred()

    async def waiting() -> None:
        await gate

    tasks.spawn(broken(), "the broken job")
    tasks.spawn(waiting(), "the waiting job").cancel()
    failures = [e for e in log_events if e.get("log_failure") is not None]
    assert [e["what"] for e in failures] == ["the broken job"]
    assert failures[0]["log_failure"].check(RuntimeError)
    assert fired(tasks.drained(), "tasks left") is None


# -- AriLink --------------------------------------------------------------------------------------------------------


def test_ari_link_gone_only_on_404() -> None:
    """`AriLink.gone`: Asterisk's 404 proves a thing gone; an answer, or another error, does not."""
    ari = FakeAri()
    ari.on("GET", "/playbacks/gone", AriError(404, "Playback not found"))
    ari.on("GET", "/playbacks/broken", AriError(500, "Internal Server Error"))
    ari.on("GET", "/playbacks/here", {"id": "here", "state": "playing"})
    link = AriLink(ari, TaskGroup(Clock()))
    assert [fired(Deferred.fromCoroutine(link.gone(f"/playbacks/{name}"))) for name in ("gone", "broken", "here")] \
        == [True, False, False]
    assert [r.path for r in ari.find("GET")] == ["/playbacks/gone", "/playbacks/broken", "/playbacks/here"]
    with pytest.raises(Unavailable):
        fired(Deferred.fromCoroutine(AriLink(None, TaskGroup(Clock())).gone("/playbacks/here")))


# -- CallRegistry ---------------------------------------------------------------------------------------------------


def _registry(retention: float = 300.0) -> tuple[Clock, FakeSink, CallRegistry]:
    clock, sink = Clock(), FakeSink()
    return clock, sink, CallRegistry(clock, sink, TaskGroup(clock), retention)


def test_registry_holds_back_the_events_of_a_pending_call() -> None:
    """Events of a call whose originate Asterisk has not accepted yet are sent, in order, once it is accepted."""
    _, sink, registry = _registry()
    call = CallRecord("c1", "chan-1", "outbound", 0.0, pending=True)
    registry.add(call)
    registry.publish("call.created", {}, call)
    registry.publish("call.dtmf", {"digit": "1"}, call)
    assert sink.events == [] and registry.active() == []
    registry.accepted(call)
    assert sink.types() == ["call.created", "call.dtmf"] and registry.active() == [call]
    other = CallRecord("c2", "chan-2", "outbound", 0.0, pending=True)
    registry.add(other)
    registry.publish("call.created", {}, other)
    registry.discard(other)
    assert sink.types() == ["call.created", "call.dtmf"] and "c2" not in registry


@pytest.mark.logs_errors(r"Call control: releasing what call c1 held failed")
def test_registry_ends_a_call_once_and_releases_in_subscription_order(log_events: list[LogEvent]) -> None:
    """``call.ended`` once; then every on_call_ended callback in order (a failing one does not stop the others),
    then the call's own end hooks; the record stays readable for the retention, then is forgotten."""
    clock, sink, registry = _registry(retention=60)
    call = CallRecord("c1", "chan-1", INBOUND, 0.0, in_stasis=True)
    registry.add(call)
    order: list[str] = []

    def broken(ended: CallRecord) -> None:
        order.append("broken")
        raise RuntimeError("release failed")

    registry.on_call_ended(lambda ended: order.append(f"first:{sink.types()[-1]}"))
    registry.on_call_ended(broken)
    registry.on_call_ended(lambda ended: order.append("last"))
    call.on_end.append(lambda: order.append("hook"))
    registry.end_call(call, 16, "Normal Clearing")
    registry.end_call(call, 17, "User busy")
    assert order == ["first:call.ended", "broken", "last", "hook"]
    assert sink.types() == ["call.ended"] and sink.events[0]["data"]["cause"] == 16
    assert any(e.get("log_failure") is not None and e["log_failure"].check(RuntimeError) for e in log_events)
    assert registry.require("c1") is call and not call.in_stasis
    clock.advance(60)
    assert "c1" not in registry


#: asterisk-api's call ids are ``crypto.randomUUID()``: the strictest check a client may make is a v4 UUID's.
UUID4 = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")


@pytest.mark.parametrize("channel_id", ["1712345678.42", "asterisk01-1712345678.42", str(uuid.uuid4()), "c"])
def test_call_ids_are_v4_uuids_distinct_from_their_channel_ids_and_stable(channel_id: str) -> None:
    """An ARI call's id is a v4 UUID, never its channel id, the same every time for one channel; a channel back in
    the app gets another."""
    call_id = call_id_for(channel_id)
    assert UUID4.match(call_id) and call_id != channel_id and call_id == call_id_for(channel_id)
    again = call_id_for(channel_id, call_id)
    assert UUID4.match(again) and again not in (call_id, channel_id)
    assert call_id_for(channel_id, again) not in (call_id, again)


def test_call_ids_of_distinct_channels_never_collide() -> None:
    """Many channels in Asterisk's forms (consecutive uniqueids, avr's UUIDs) and re-entries: all ids distinct."""
    channels = [f"1712345678.{n}" for n in range(20_000)] + [f"1712345679.{n}" for n in range(20_000)]
    channels += [str(uuid.uuid5(uuid.NAMESPACE_URL, str(n))) for n in range(10_000)]
    ids = {call_id_for(c) for c in channels} | {call_id_for(c, call_id_for(c)) for c in channels[:10_000]}
    assert len(ids) == len(channels) + 10_000 and not ids & set(channels)


def test_registry_finds_ari_calls_by_either_id_and_releases_the_channel_index() -> None:
    """Events find calls by channel id (`by_channel`); API lookups take the call id or the channel id; the index
    entry goes with the call (forget, discard) and never outlives it."""
    clock, _, registry = _registry(retention=60)
    call = CallRecord(call_id_for("1795262000.1"), "1795262000.1", INBOUND, 0.0, in_stasis=True)
    registry.add(call)
    assert registry.by_channel("1795262000.1") is call and registry.by_channel(call.id) is None
    assert registry.find(call.id) is call and registry.find("1795262000.1") is None
    assert registry.require("1795262000.1") is call and registry.live(call.id) is call
    assert registry.describe("1795262000.1")["id"] == call.id
    registry.end_call(call, 16, "Normal Clearing")
    assert registry.by_channel("1795262000.1") is call  # readable during the retention, by either id
    clock.advance(60)
    assert registry.by_channel("1795262000.1") is None and registry._by_channel == {} and registry._calls == {}
    with pytest.raises(NotFound):
        registry.require("1795262000.1")
    pending = CallRecord(call_id_for("chan-2"), "chan-2", "outbound", 0.0, pending=True)
    registry.add(pending)
    registry.discard(pending)
    assert registry.by_channel("chan-2") is None and registry._by_channel == {}


def test_registry_channel_index_holds_ari_calls_only() -> None:
    """A media leg (kept under its channel id) is not an ARI call's channel: by_channel does not see it; an
    AudioSocket call's channel is not indexed either (its id is its AudioSocket UUID)."""
    _, _, registry = _registry()
    leg = MediaLegRecord(MEDIA_CHANNEL_PREFIX + "x", "x", "call-1", 0.0)
    registry.add(leg)
    assert registry.by_channel(leg.id) is None and registry.describe(leg.id)["kind"] == "media"
    with pytest.raises(Conflict):
        registry.require(leg.id)


def test_registry_publishes_state_changes_only_on_a_real_change() -> None:
    clock, sink, registry = _registry()
    call = CallRecord("c1", "chan-1", INBOUND, 0.0)
    registry.add(call)
    registry.refresh(call)
    assert sink.events == []
    clock.advance(2)
    registry.answered(call)
    registry.answered(call)
    assert sink.types() == ["call.state_changed"]
    assert sink.events[0]["data"] == {"previousState": "ringing", "state": "answered",
                                      "answeredAt": "1970-01-01T00:00:02.000Z"}


# -- media legs -----------------------------------------------------------------------------------------------------


class Rig:
    """Media legs over a fake ARI; ``work`` is the Deferred each leg's ``connect`` returned, by UUID."""

    def __init__(self, setup_timeout: float = 10.0) -> None:
        self.clock = Clock()
        self.ari = FakeAri()
        self.tasks = TaskGroup(self.clock)
        self.link = AriLink(self.ari, self.tasks)
        self.link.up()
        self.registry = CallRegistry(self.clock, FakeSink(), self.tasks)
        self.legs = MediaLegs(self.registry, self.link, self.tasks, "avr", "127.0.0.1:5001", setup_timeout)
        self.work: dict[str, Deferred] = {}
        self.ended: list[tuple[str, str | None, bool]] = []

    def connect(self, uuid: str) -> Deferred:
        self.work[uuid] = Deferred()
        return self.work[uuid]

    def on_end(self, leg: MediaLeg) -> None:
        self.ended.append((leg.uuid, leg.error, leg.stopped))

    def feed(self, event: dict) -> None:
        handler = self.legs.handlers.get(event["type"])
        if handler is not None:
            handler(event)

    def start(self, call: CallRecord) -> tuple[MediaLeg, Deferred]:
        leg = self.legs.open(call, "slin16", "the test audio", self.on_end)
        return leg, Deferred.fromCoroutine(leg.start(self.connect))

    def paths(self, method: str) -> list[str]:
        return [r.path for r in self.ari.find(method)]


def _call(bridge_id: str | None = None) -> CallRecord:
    call = CallRecord(call_id_for("1795262000.1"), "1795262000.1", INBOUND, 0.0, in_stasis=True, answered_at=0.0)
    call.ari_bridge_id = bridge_id
    return call


def test_media_leg_in_a_temporary_bridge_from_start_to_release() -> None:
    """The channel is created with the leg's ids and format, joined once in Stasis to a new temporary bridge with
    the call; when the work ends the owner hears it once and the channel and bridge are gone."""
    rig = Rig()
    call = _call()
    leg, started = rig.start(call)
    assert list(rig.work) == [leg.uuid]  # armed before Asterisk is asked
    create = rig.ari.find("POST", "/channels/externalMedia")[0]
    assert create.params == {"app": "avr", "external_host": "127.0.0.1:5001", "encapsulation": "audiosocket",
                             "transport": "tcp", "format": "slin16", "data": leg.uuid,
                             "channelId": MEDIA_CHANNEL_PREFIX + leg.uuid}
    assert not started.called
    rig.feed(stasis_start(leg.channel_id))
    fired(started, "the leg did not start")
    bridge_id = TEMP_BRIDGE_PREFIX + leg.uuid
    assert rig.paths("POST")[1:] == [f"/bridges/{bridge_id}", f"/bridges/{bridge_id}/addChannel"]
    assert rig.ari.find("POST", f"/bridges/{bridge_id}/addChannel")[0].params == {
        "channel": [call.channel_id, leg.channel_id]}
    assert call.ari_bridge_id == bridge_id and leg.started and rig.ended == []
    rig.work[leg.uuid].callback(None)
    assert rig.ended == [(leg.uuid, None, False)]
    assert rig.paths("DELETE") == [f"/channels/{leg.channel_id}", f"/bridges/{bridge_id}"]
    leg.release()  # idempotent
    assert len(rig.ari.find("DELETE")) == 2 and rig.ended == [(leg.uuid, None, False)]


def test_media_leg_joins_the_calls_bridge_and_leaves_it_standing() -> None:
    rig = Rig()
    leg, started = rig.start(_call(bridge_id="conf-1"))
    rig.feed(stasis_start(leg.channel_id))
    fired(started, "the leg did not start")
    assert rig.ari.find("POST", "/bridges/conf-1/addChannel")[0].params == {"channel": leg.channel_id}
    leg.stop()
    assert rig.ended == [(leg.uuid, "cancelled", True)]
    assert rig.paths("DELETE") == [f"/channels/{leg.channel_id}"]


def test_a_temporary_bridge_is_destroyed_when_its_last_leg_leaves() -> None:
    rig = Rig()
    call = _call()
    first, started = rig.start(call)
    rig.feed(stasis_start(first.channel_id))
    fired(started, "the first leg did not start")
    second, started = rig.start(call)  # the call is in the first leg's temporary bridge now
    rig.feed(stasis_start(second.channel_id))
    fired(started, "the second leg did not start")
    bridge_id = TEMP_BRIDGE_PREFIX + first.uuid
    assert rig.ari.find("POST", f"/bridges/{bridge_id}/addChannel")[1].params == {"channel": second.channel_id}
    first.abort("the call ended")
    assert f"/bridges/{bridge_id}" not in rig.paths("DELETE")
    second.abort("the call ended")
    assert rig.paths("DELETE")[-1] == f"/bridges/{bridge_id}"
    assert rig.ended == [(first.uuid, "the call ended", False), (second.uuid, "the call ended", False)]


def test_a_leg_whose_channel_never_enters_stasis_times_out_and_is_released() -> None:
    rig = Rig(setup_timeout=2)
    leg, started = rig.start(_call())
    outcome: list[Any] = []
    started.addBoth(outcome.append)
    rig.clock.advance(2)
    assert outcome[0].check(Timeout) and "the test audio did not start in time" in str(outcome[0].value)
    assert rig.work[leg.uuid].called  # the armed work is cancelled
    rig.work[leg.uuid].addErrback(lambda _: None)
    assert rig.paths("DELETE") == [f"/channels/{leg.channel_id}"] and rig.ended == []
    assert not rig.legs.owns_channel(leg.channel_id)


def test_work_that_ends_during_setup_fails_start_not_on_end() -> None:
    """The AudioSocket work ends before the leg is joined: `start` fails with the reason and the leg is released;
    ``on_end`` is only for legs that started."""
    rig = Rig()
    rig.ari.on("POST", "/channels/externalMedia", hold=True)
    leg, started = rig.start(_call())
    outcome: list[Any] = []
    started.addBoth(outcome.append)
    rig.work[leg.uuid].errback(ConnectionError("EOF"))
    rig.ari.release()
    rig.feed(stasis_start(leg.channel_id))
    assert outcome[0].check(Conflict) and "ended before it started (EOF)" in str(outcome[0].value)
    assert rig.ended == [] and rig.paths("DELETE") == [f"/channels/{leg.channel_id}"]


@pytest.mark.parametrize("how", ["channel hung up", "call ended"])
def test_a_leg_whose_channel_or_call_goes_during_setup_fails_start(how: str) -> None:
    rig = Rig()
    call = _call()
    leg, started = rig.start(call)
    outcome: list[Any] = []
    started.addBoth(outcome.append)
    if how == "channel hung up":
        rig.feed(destroyed(leg.channel_id))
    else:
        call.ended_at = 1.0
        rig.feed(stasis_start(leg.channel_id))
    assert outcome[0].check(Conflict) and rig.ended == []
    assert rig.work[leg.uuid].called  # the armed work is cancelled
    rig.work[leg.uuid].addErrback(lambda _: None)
    assert rig.paths("DELETE") == [f"/channels/{leg.channel_id}"]


def test_the_call_leaving_a_temporary_bridge_stops_its_legs() -> None:
    rig = Rig()
    call = _call()
    leg, started = rig.start(call)
    rig.feed(stasis_start(leg.channel_id))
    fired(started, "the leg did not start")
    bridge_id = TEMP_BRIDGE_PREFIX + leg.uuid
    rig.feed(left_bridge(bridge_id, leg.channel_id, [call.channel_id]))  # the media channel itself: nothing
    assert rig.ended == []
    rig.feed(left_bridge(bridge_id, call.channel_id, [leg.channel_id]))
    assert rig.ended == [(leg.uuid, "cancelled", True)]


def test_leftover_media_channels_are_hung_up_and_shutdown_stops_every_leg() -> None:
    rig = Rig()
    rig.feed(stasis_start(MEDIA_CHANNEL_PREFIX + "0000-left-over"))
    assert rig.paths("DELETE") == [f"/channels/{MEDIA_CHANNEL_PREFIX}0000-left-over"]
    leg, started = rig.start(_call())
    rig.feed(stasis_start(leg.channel_id))
    fired(started, "the leg did not start")
    rig.legs.stop()
    assert rig.ended == [(leg.uuid, "cancelled", True)]
    assert rig.legs.is_leftover_bridge(TEMP_BRIDGE_PREFIX + leg.uuid)
