"""
AI agents on ARI calls, end to end over loopback: avr as `avr.service.build` wires it, the fake Asterisk (whose
externalMedia channels really connect back to avr's AudioSocket port) and a fake AVR STS (`avr.testing.sts`). After
every test the fake Asterisk holds no channel or bridge, and no timer is left (the ``rig`` fixture).
"""

from __future__ import annotations

import statistics
import struct
from typing import Any, AsyncIterator

import pytest
import pytest_twisted
from twisted.internet.task import deferLater

from avr.control.records import MEDIA_CHANNEL_PREFIX, call_id_for
from avr.sts.codec import ActionResult
from avr.testing.sts import FakeStsServerFactory, FakeStsServerProtocol
from tests.control_harness import EventsClient, of_call
from tests.helpers import until
from tests.test_integration_control import ServiceRig, rig  # noqa: F401 - the fixture

pytestmark = pytest.mark.integration

KIND_SLIN16 = 0x12
FRAME = 640  # 20 ms at 16 kHz


class Agents:
    """A rig with a fake STS on loopback, and the steps the tests share."""

    def __init__(self, rig: ServiceRig, echo: bool = True) -> None:  # noqa: F811 - the fixture's value
        from twisted.internet import reactor

        self.rig = rig
        self.reactor = reactor
        self.sts = FakeStsServerFactory(reactor, echo=echo)
        self.port = reactor.listenTCP(0, self.sts, interface="127.0.0.1")
        self.url = f"ws://127.0.0.1:{self.port.getHost().port}/agent"
        self.client: EventsClient | None = None

    async def start(self, **settings: Any) -> EventsClient:
        fake = self.rig.fake
        fake.add_endpoint("1001", answer="manual")
        fake.add_endpoint("1002", answer="auto", delay=0.1)
        fake.add_endpoint("1003", answer="busy", delay=0.1)
        fake.add_endpoint("1004", answer="never")
        self.rig.start(sts_url=self.url, sts_sample_rate=16000, inbound_ring_delay=0, **settings)
        await self.rig.until_ari(lambda ari: ari == "connected")
        await self.rig.until_synced(1)
        self.client = await self.rig.events()
        await self.client.wait(lambda m: m["type"] == "snapshot")
        return self.client

    async def outbound_with_agent(self, endpoint: str = "1001", agent: dict | None = None) -> str:
        status, body = await self.rig.request("POST", "/calls", {"endpoint": f"PJSIP/{endpoint}",
                                                                 "agent": agent or {}})
        assert status == 201, body
        call_id = body["call"]["id"]
        self.rig.channel_ids[call_id] = body["call"]["channelId"]
        assert self.client is not None
        await self.client.wait(of_call(call_id, "call.created"))
        self.rig.fake.answer_remote(self.channel(call_id))
        return call_id

    def channel(self, call_id: str) -> str:
        """The channel id of a call the rig originated."""
        return self.rig.channel_ids[call_id]

    async def agent_of(self, call_id: str) -> tuple[str, FakeStsServerProtocol]:
        """Wait for the call's agent: its UUID and its STS session."""
        assert self.client is not None
        started = await self.client.wait(of_call(call_id, "agent.started"))
        uuid = started["data"]["uuid"]
        session = await self.sts.session_opened(uuid).addTimeout(5, self.reactor)
        return uuid, session

    async def hang_up(self, call_id: str) -> None:
        status, body = await self.rig.request("DELETE", f"/calls/{call_id}")
        assert status == 200, body
        assert self.client is not None
        await self.client.wait(of_call(call_id, "call.ended"))

    def events(self, call_id: str, type_: str) -> list[dict]:
        assert self.client is not None
        return [m for m in self.client.messages if of_call(call_id, type_)(m)]

    async def close(self) -> None:
        for connection in list(self.sts.open_connections):
            connection.drop()
        await self.port.stopListening()


@pytest_twisted.async_yield_fixture
async def agents(rig: ServiceRig) -> AsyncIterator[Agents]:  # noqa: F811
    a = Agents(rig)
    try:
        yield a
        # Every agent session is closed once the calls are gone.
        await until(a.reactor, lambda: not a.sts.open_connections)
    finally:
        await a.close()


def numbered_frame(n: int) -> bytes:
    """A 20 ms frame at 16 kHz whose samples say which frame it is."""
    return struct.pack("<h", n) * (FRAME // 2)


@pytest_twisted.ensureDeferred
async def test_outbound_ai_call_round_trip_at_16_khz(agents: Agents) -> None:
    """
    POST /calls with an agent: once answered, an externalMedia slin16 leg is bridged with the call, the STS gets the
    payload and the call's facts as query parameters (after call_initiated), and caller audio goes to the STS and
    back to Asterisk unchanged at 16 kHz (kind 0x12, 640-byte frames). Prints the measured round-trip delay.
    """
    client = await agents.start()
    call_id = await agents.outbound_with_agent(agent={"payload": {"campaign": "spring"}})
    uuid, session = await agents.agent_of(call_id)
    assert session.path == "/agent"
    # uniqueid is Asterisk's id of the call's channel, as in a dialplan /call payload
    assert session.params["campaign"] == ["spring"] and session.params["uniqueid"] == [agents.channel(call_id)]
    assert session.params["to"] == ["PJSIP/1001"]
    media = MEDIA_CHANNEL_PREFIX + uuid
    fake = agents.rig.fake
    assert [sorted(c.id for c in b.channels) for b in fake.bridges.values()] == [sorted([agents.channel(call_id),
                                                                                          media])]
    assert fake.channels[media].formats == "slin16"
    status, body = await agents.rig.request("GET", f"/calls/{call_id}")
    assert body["call"]["agent"]["uuid"] == uuid and body["call"]["agent"]["state"] == "active"

    connection = fake.audiosocket(media)
    count = 100
    sent_at = []
    start = agents.reactor.seconds()
    for n in range(count):
        await deferLater(agents.reactor, max(0.0, start + n * 0.02 - agents.reactor.seconds()), lambda: None)
        sent_at.append(agents.reactor.seconds())
        connection.send_audio(KIND_SLIN16, numbered_frame(n))
    await until(agents.reactor, lambda: len(connection.frames) >= count)
    assert connection.frames[:count] == [(KIND_SLIN16, numbered_frame(n)) for n in range(count)]
    arrivals = agents.rig.arrivals[connection]
    delays = [next(t for have, t in arrivals if have >= n + 1) - sent_at[n] for n in range(count)]
    report = (f"\nexternalMedia round trip (fake Asterisk -> avr -> echo STS -> avr -> fake Asterisk, {count} "
              f"frames of 20 ms at 16 kHz): mean {statistics.mean(delays) * 1000:.1f} ms, median "
              f"{statistics.median(delays) * 1000:.1f} ms, min {min(delays) * 1000:.1f} ms, max "
              f"{max(delays) * 1000:.1f} ms")
    print(report)  # noqa: T201 - the measured round trip, shown with pytest -s
    assert len(session.received_audio) == count * FRAME

    await agents.hang_up(call_id)
    ended = await client.wait(of_call(call_id, "agent.ended"))
    assert ended["data"] == {"uuid": uuid, "reason": "the call ended"}
    await session.when_closed()
    types = [m["type"] for m in client.messages if m.get("callId") == call_id]
    assert types.index("call.created") < types.index("agent.started") < types.index("agent.ended")
    assert types.count("agent.ended") == types.count("call.ended") == 1


@pytest_twisted.ensureDeferred
async def test_inbound_stasis_call_gets_the_agent_the_dialplan_names(agents: Agents) -> None:
    """Stasis(app,agent,<route>) hands the call to the route's agent, with the caller's facts as parameters."""
    client = await agents.start(sts_routes=(("sales", agents.url + "/sales"),))
    channel_id = agents.rig.fake.inbound_call("5551234", "100", args=["agent", "sales"])
    call_id = call_id_for(channel_id)
    uuid, session = await agents.agent_of(call_id)
    assert session.path == "/agent/sales"
    assert session.params["from"] == ["5551234"] and session.params["to"] == ["100"]
    session.send_transcript("agent", "Hello, sales here")
    transcript = await client.wait(of_call(call_id, "call.transcript"))
    assert transcript["data"] == {"role": "agent", "text": "Hello, sales here"}
    agents.rig.fake.remote_hangup(channel_id)
    await client.wait(of_call(call_id, "agent.ended"))


@pytest_twisted.ensureDeferred
async def test_configured_default_agent_and_opting_out(agents: Agents) -> None:
    """ARI_AGENT gives inbound calls an agent; Stasis(app,noagent) declines it."""
    client = await agents.start(ari_agent="default")
    with_agent = agents.rig.fake.inbound_call("5551", "100")
    _, session = await agents.agent_of(call_id_for(with_agent))
    assert session.path == "/agent"
    without = agents.rig.fake.inbound_call("5552", "100", args=["noagent"])
    await client.wait(of_call(call_id_for(without), "call.state_changed", state="answered"))
    await deferLater(agents.reactor, 0.2, lambda: None)
    assert not agents.events(call_id_for(without), "agent.started")
    for channel_id in (with_agent, without):
        agents.rig.fake.remote_hangup(channel_id)
        await client.wait(of_call(call_id_for(channel_id), "call.ended"))


@pytest_twisted.ensureDeferred
async def test_attach_and_detach_on_a_live_call(agents: Agents) -> None:
    """An agent joins an answered call and leaves it: its channel and bridge are gone, the call stays up."""
    client = await agents.start()
    call_id = await agents.rig.answered_call(client)
    status, body = await agents.rig.request("POST", f"/calls/{call_id}/agent", {"payload": {"topic": "billing"}})
    assert status == 201, body
    uuid = body["agent"]["uuid"]
    _, session = await agents.agent_of(call_id)
    assert session.params["topic"] == ["billing"]
    status, body = await agents.rig.request("POST", f"/calls/{call_id}/agent")
    assert status == 409 and "has an agent already" in body["error"]

    status, body = await agents.rig.request("DELETE", f"/calls/{call_id}/agent")
    assert status == 200 and body["agent"]["uuid"] == uuid
    ended = await client.wait(of_call(call_id, "agent.ended"))
    assert ended["data"]["reason"] == "detached"
    await session.when_closed()
    fake = agents.rig.fake
    await until(agents.reactor, lambda: set(fake.channels) == {agents.channel(call_id)} and not fake.bridges)
    status, body = await agents.rig.request("GET", f"/calls/{call_id}")
    assert body["call"]["state"] == "answered" and body["call"]["agent"] is None
    status, body = await agents.rig.request("DELETE", f"/calls/{call_id}/agent")
    assert status == 409
    await agents.hang_up(call_id)


@pytest_twisted.ensureDeferred
async def test_ai_hangs_up(agents: Agents) -> None:
    """hangup from the STS ends the call; the agent hears ok first; agent.action tells requested, succeeded."""
    client = await agents.start()
    call_id = await agents.outbound_with_agent()
    _, session = await agents.agent_of(call_id)
    session.send_raw('{"type":"hangup","reason":"goodbye","id":"h1"}')
    results = await session.when_result()
    assert results == [ActionResult("hangup", True, None, "h1")]
    ended = await client.wait(of_call(call_id, "call.ended"))
    assert ended["data"]["cause"] == 16
    statuses = [e["data"]["status"] for e in agents.events(call_id, "agent.action")]
    assert statuses == ["requested", "succeeded"]
    assert agents.events(call_id, "agent.action")[0]["data"]["request"] == {"reason": "goodbye", "id": "h1"}
    await session.when_closed()


@pytest_twisted.ensureDeferred
async def test_ai_transfers_to_a_human_who_answers(agents: Agents) -> None:
    """
    transfer to PJSIP/1002: the caller rings, the target answers, both are bridged; the agent hears ok and then
    leaves the call (its channel and bridge are gone).
    """
    client = await agents.start()
    call_id = await agents.outbound_with_agent()
    uuid, session = await agents.agent_of(call_id)
    session.send_transfer(endpoint="PJSIP/1002", callerId="5550000")
    results = await session.when_result()
    assert results == [ActionResult("transfer", True)]
    transferred = await client.wait(of_call(call_id, "call.transferred"))
    target = transferred["data"]["targetCallId"]
    _, body = await agents.rig.request("GET", f"/calls/{target}")
    target_channel = body["call"]["channelId"]
    ended = await client.wait(of_call(call_id, "agent.ended"))
    assert ended["data"]["reason"] == "the call left the agent's bridge"
    await session.when_closed()
    fake = agents.rig.fake
    await until(agents.reactor, lambda: MEDIA_CHANNEL_PREFIX + uuid not in fake.channels)
    await until(agents.reactor, lambda: [sorted(c.id for c in b.channels) for b in fake.bridges.values()]
                == [sorted([agents.channel(call_id), target_channel])])
    assert [(e["data"]["status"]) for e in agents.events(call_id, "agent.action")] == ["requested", "succeeded"]
    for party in (call_id, target):  # avr never drops the other party when one leaves
        await agents.hang_up(party)


@pytest.mark.parametrize("endpoint, error", [("1003", "busy"), ("1004", "did not answer")])
@pytest_twisted.ensureDeferred
async def test_ai_transfer_that_fails_keeps_caller_and_agent(agents: Agents, endpoint: str, error: str) -> None:
    """A busy or unanswered target: the agent hears why, the caller is not dropped and stays with the agent."""
    client = await agents.start()
    call_id = await agents.outbound_with_agent()
    uuid, session = await agents.agent_of(call_id)
    session.send_transfer(endpoint=f"PJSIP/{endpoint}", timeout=1)
    (result,) = await session.when_result()
    assert not result.ok and error in (result.error or ""), result
    await client.wait(of_call(call_id, "call.transfer_failed"))
    fake = agents.rig.fake
    assert agents.channel(call_id) in fake.channels and MEDIA_CHANNEL_PREFIX + uuid in fake.channels
    assert session.is_connected
    # The agent still hears the caller.
    before = len(session.received_audio)
    fake.audiosocket(MEDIA_CHANNEL_PREFIX + uuid).send_audio(KIND_SLIN16, numbered_frame(1))
    await until(agents.reactor, lambda: len(session.received_audio) > before)
    action = agents.events(call_id, "agent.action")[-1]["data"]
    assert action["status"] == "failed" and error in action["error"]
    await agents.hang_up(call_id)


@pytest_twisted.ensureDeferred
async def test_ai_sends_dtmf_and_hears_the_callers(agents: Agents) -> None:
    """dtmf from the STS is played to the caller through ARI; the caller's digits reach the STS."""
    await agents.start()
    call_id = await agents.outbound_with_agent()
    _, session = await agents.agent_of(call_id)
    session.send_dtmf_request("12#")
    assert await session.when_result() == [ActionResult("dtmf", True)]
    await until(agents.reactor, lambda: agents.rig.fake.sent_dtmf.get(agents.channel(call_id)) == ["1", "2", "#"])
    agents.rig.fake.remote_dtmf(agents.channel(call_id), "5")
    await until(agents.reactor, lambda: session.dtmf == ["5"])
    session.send_dtmf_request("12x")
    results = await session.when_result(2)
    assert not results[1].ok and "DTMF characters" in (results[1].error or "")
    await agents.hang_up(call_id)


@pytest_twisted.ensureDeferred
async def test_caller_hangs_up_while_the_agent_speaks(agents: Agents) -> None:
    """The caller hangs up mid-sentence: the agent session closes and nothing is left in Asterisk."""
    client = await agents.start()
    call_id = await agents.outbound_with_agent()
    uuid, session = await agents.agent_of(call_id)
    session.send_audio(numbered_frame(7) * 100, chunk_size=FRAME)  # 2 s of speech
    connection = agents.rig.fake.audiosocket(MEDIA_CHANNEL_PREFIX + uuid)
    await until(agents.reactor, lambda: len(connection.frames) >= 5)
    agents.rig.fake.remote_hangup(agents.channel(call_id))
    await client.wait(of_call(call_id, "call.ended"))
    ended = await client.wait(of_call(call_id, "agent.ended"))
    assert ended["data"]["reason"] == "the call ended"
    await session.when_closed()
    assert len(connection.frames) < 100


@pytest_twisted.ensureDeferred
async def test_sts_dies_mid_call_hangs_up(agents: Agents) -> None:
    """The STS drops its connection: the call is hung up (ARI_AGENT_ON_FAILURE=hangup, the default)."""
    client = await agents.start()
    call_id = await agents.outbound_with_agent()
    _, session = await agents.agent_of(call_id)
    session.drop()
    ended = await client.wait(of_call(call_id, "agent.ended"))
    assert ended["data"]["reason"].startswith("STS closed")
    await client.wait(of_call(call_id, "call.ended"))


@pytest_twisted.ensureDeferred
async def test_sts_dies_mid_call_and_the_call_continues(agents: Agents) -> None:
    """With ARI_AGENT_ON_FAILURE=continue the call stays up without agent, and can get a new one."""
    client = await agents.start(ari_agent_on_failure="continue")
    call_id = await agents.outbound_with_agent()
    _, session = await agents.agent_of(call_id)
    session.drop()
    await client.wait(of_call(call_id, "agent.ended"))
    fake = agents.rig.fake
    await until(agents.reactor, lambda: set(fake.channels) == {agents.channel(call_id)} and not fake.bridges)
    status, body = await agents.rig.request("GET", f"/calls/{call_id}")
    assert body["call"]["state"] == "answered"
    status, body = await agents.rig.request("POST", f"/calls/{call_id}/agent")
    assert status == 201, body
    await until(agents.reactor, lambda: len(agents.events(call_id, "agent.started")) == 2)
    await agents.hang_up(call_id)


@pytest_twisted.ensureDeferred
async def test_twenty_concurrent_ai_calls(agents: Agents) -> None:
    """20 AI calls at once: each agent hears its own caller and answers only that caller; nothing is left."""
    client = await agents.start()
    for n in range(20):
        agents.rig.fake.add_endpoint(f"2{n:03d}", answer="auto", delay=0.05)
    ids = []
    for n in range(20):
        status, body = await agents.rig.request("POST", "/calls", {"endpoint": f"PJSIP/2{n:03d}", "agent": {}})
        assert status == 201, body
        ids.append(body["call"]["id"])
    legs = [await agents.agent_of(call_id) for call_id in ids]
    connections = [agents.rig.fake.audiosocket(MEDIA_CHANNEL_PREFIX + uuid) for uuid, _ in legs]
    for n, connection in enumerate(connections):
        for _ in range(5):
            connection.send_audio(KIND_SLIN16, numbered_frame(n))
    for n, connection in enumerate(connections):
        await until(agents.reactor, lambda c=connection: len(c.frames) >= 5)
        assert set(connection.frames[:5]) == {(KIND_SLIN16, numbered_frame(n))}
    for call_id in ids:
        status, _ = await agents.rig.request("DELETE", f"/calls/{call_id}")
        assert status == 200
    for call_id in ids:
        await client.wait(of_call(call_id, "agent.ended"))
