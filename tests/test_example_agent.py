"""
The example agent (examples/realtime_agent): its per-call bridge in memory (deterministic, on a task.Clock), the
program on loopback as avr drives it (avr's own STS client) against a fake of the Realtime endpoint, and one whole
call: a simulated Asterisk caller, avr as `build` makes it, the example agent and the fake Realtime endpoint.
"""

from __future__ import annotations

import base64
import io
import json
from typing import Any, AsyncIterator

import pytest
import pytest_twisted
from treq.client import HTTPClient
from twisted.internet.task import Clock, deferLater
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.web.client import Agent, HTTPConnectionPool

from avr.config import Config
from avr.frames import Kind
from avr.service import build, sts_connectors
from avr.sts.codec import HangupRequest
from avr.sts.connector import StsConnector
from avr.sts.websocket import WebSocketStsConnector
from avr.testing.asterisk import Continuous, SimulatedAsterisk, connect_simulated_asterisk
from avr.testing.sts import RecordingStsHandler
from examples.realtime_agent.bridge import ACTION_MARGIN, REALTIME_RATE, AgentSettings, CallBridge, session_config
from examples.realtime_agent.server import AgentFactory, RealtimeEndpoint, build as build_agent, log_observer
from examples.realtime_agent.server import parse_args, realtime_url
from tests.helpers import tone, until
from tests.realtime_fake import FakeRealtimeFactory, FakeRealtimeProtocol

KEY = "sk-test-0123456789abcdef"
U1 = "4a0c6c55-6d0b-4a47-9f0e-2f5bd6a3c1a1"


def b64(pcm: bytes) -> str:
    return base64.b64encode(pcm).decode()


def frequency(pcm: bytes, rate: int) -> float:
    """The frequency of a PCM16 tone, from its zero crossings."""
    samples = [int.from_bytes(pcm[i:i + 2], "little", signed=True) for i in range(0, len(pcm) - 1, 2)]
    crossings = sum(1 for a, b in zip(samples, samples[1:], strict=False) if (a < 0) != (b < 0))
    return crossings / 2 / (len(samples) / rate)


class Sides:
    """A bridge on a Clock, with what it sent each way."""

    def __init__(self, **settings: Any) -> None:
        self.clock = Clock()
        self.avr: list[dict[str, Any]] = []
        self.realtime: list[dict[str, Any]] = []
        self.bridge = CallBridge(AgentSettings(**settings), self.clock, self.avr.append, self.realtime.append)

    def of(self, side: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
        return [m for m in side if m.get("type") == kind]

    def opened(self) -> None:
        self.bridge.avr_message({"type": "init", "uuid": U1})
        self.bridge.realtime_opened()

    def agent_says(self, ms: int, item: str = "item_1") -> None:
        self.bridge.realtime_event({"type": "response.created", "response": {"id": "resp_1"}})
        self.bridge.realtime_event({"type": "response.output_audio.delta", "item_id": item,
                                    "delta": b64(tone(REALTIME_RATE, ms, 440))})


# -- the bridge, in memory ---------------------------------------------------------------------------------------------


def test_session_update_first_in_the_ga_shape_then_the_audio_that_waited() -> None:
    sides = Sides(sample_rate=8000, voice="cedar", instructions="Be brief.")
    sides.bridge.avr_message({"type": "init", "uuid": U1})
    sides.bridge.avr_message({"type": "audio", "audio": b64(tone(8000, 200, 440))})
    assert sides.realtime == []  # not open yet: kept
    sides.bridge.realtime_opened()
    update = sides.realtime[0]
    assert update["type"] == "session.update"
    session = update["session"]
    assert session["type"] == "realtime" and session["instructions"] == "Be brief."
    assert session["audio"]["input"]["format"] == {"type": "audio/pcm", "rate": 24000}
    assert session["audio"]["output"] == {"format": {"type": "audio/pcm", "rate": 24000}, "voice": "cedar"}
    assert session["audio"]["input"]["turn_detection"]["type"] == "server_vad"
    assert [t["name"] for t in session["tools"]] == ["hang_up"]
    appended = b"".join(base64.b64decode(e["audio"]) for e in sides.of(sides.realtime, "input_audio_buffer.append"))
    assert [e["type"] for e in sides.realtime[1:]] == ["input_audio_buffer.append"] * len(sides.realtime[1:])
    # 200 ms at 8 kHz became about 200 ms at 24 kHz (the filter holds back a few ms), still a 440 Hz tone.
    assert 0.16 * 48000 <= len(appended) <= 0.2 * 48000
    assert abs(frequency(appended[2400:], 24000) - 440) < 15


def test_caller_audio_at_24k_passes_through_unchanged() -> None:
    sides = Sides(sample_rate=24000)
    sides.opened()
    pcm = tone(24000, 20, 300)
    sides.bridge.avr_message({"type": "audio", "audio": b64(pcm)})
    assert base64.b64decode(sides.realtime[-1]["audio"]) == pcm


def test_agent_audio_is_resampled_to_the_sts_rate() -> None:
    sides = Sides(sample_rate=8000)
    sides.opened()
    for _ in range(10):
        sides.agent_says(100)
    pcm = b"".join(base64.b64decode(m["audio"]) for m in sides.of(sides.avr, "audio"))
    assert 0.95 * 16000 <= len(pcm) <= 16000  # 1 s at 8 kHz
    assert abs(frequency(pcm[1600:], 8000) - 440) < 15


def test_barge_in_interrupts_avr_and_truncates_the_item_at_what_was_heard() -> None:
    sides = Sides(sample_rate=24000)
    sides.opened()
    sides.agent_says(2000, item="item_7")
    assert sides.bridge.play_end == pytest.approx(2.0)
    sides.clock.advance(0.5)
    sides.bridge.realtime_event({"type": "input_audio_buffer.speech_started", "audio_start_ms": 100})
    assert sides.avr[-1] == {"type": "interruption"}
    assert sides.realtime[-1] == {"type": "conversation.item.truncate", "item_id": "item_7", "content_index": 0,
                                  "audio_end_ms": 500}
    # Speech again with nothing played since: no second interruption.
    count = len(sides.avr)
    sides.bridge.realtime_event({"type": "input_audio_buffer.speech_started"})
    assert len(sides.avr) == count


def test_barge_in_after_the_answer_played_out_interrupts_without_truncating() -> None:
    sides = Sides(sample_rate=24000)
    sides.opened()
    sides.agent_says(300)
    sides.clock.advance(1.0)
    sent = len(sides.realtime)
    sides.bridge.realtime_event({"type": "input_audio_buffer.speech_started"})
    assert sides.avr[-1] == {"type": "interruption"}
    assert len(sides.realtime) == sent


def test_transcripts_both_roles_ga_and_beta_names() -> None:
    sides = Sides()
    sides.opened()
    sides.bridge.realtime_event({"type": "conversation.item.input_audio_transcription.completed",
                                 "transcript": " I need help. "})
    sides.bridge.realtime_event({"type": "response.output_audio_transcript.done", "transcript": "Sure."})
    sides.bridge.realtime_event({"type": "response.audio_transcript.done", "transcript": "Beta name."})
    sides.bridge.realtime_event({"type": "response.output_audio_transcript.done", "transcript": "  "})
    assert sides.of(sides.avr, "transcript") == [
        {"type": "transcript", "role": "user", "text": "I need help."},
        {"type": "transcript", "role": "agent", "text": "Sure."},
        {"type": "transcript", "role": "agent", "text": "Beta name."},
    ]


def test_beta_audio_delta_name_is_played_too() -> None:
    sides = Sides(sample_rate=24000)
    sides.opened()
    pcm = tone(24000, 40)
    sides.bridge.realtime_event({"type": "response.audio.delta", "item_id": "i", "delta": b64(pcm)})
    assert base64.b64decode(sides.avr[-1]["audio"]) == pcm


def test_hang_up_waits_until_the_caller_heard_the_goodbye() -> None:
    sides = Sides(sample_rate=24000)
    sides.opened()
    sides.agent_says(1500)
    sides.bridge.realtime_event({"type": "response.function_call_arguments.done", "name": "hang_up",
                                 "call_id": "call_1", "arguments": "{}"})
    sides.bridge.realtime_event({"type": "response.done", "response": {"status": "completed"}})
    sides.clock.advance(1.5 + ACTION_MARGIN - 0.01)
    assert sides.of(sides.avr, "hangup") == []
    sides.clock.advance(0.02)
    assert sides.of(sides.avr, "hangup") == [{"type": "hangup", "reason": "the agent ended the call", "id": "call_1"}]
    # avr's answer to a hang-up that worked needs no new answer from the model.
    sides.bridge.avr_message({"type": "action_result", "action": "hangup", "ok": True, "error": None, "id": "call_1"})
    assert sides.of(sides.realtime, "response.create") == []


def test_a_pending_hang_up_is_dropped_when_the_call_ends() -> None:
    sides = Sides()
    sides.opened()
    sides.agent_says(500)
    sides.bridge.realtime_event({"type": "response.function_call_arguments.done", "name": "hang_up",
                                 "call_id": "c"})
    sides.bridge.realtime_event({"type": "response.done"})
    sides.bridge.close()
    sides.clock.advance(5)
    assert sides.of(sides.avr, "hangup") == [] and sides.clock.getDelayedCalls() == []


def test_transfer_tool_and_a_failed_transfer_goes_back_to_the_model() -> None:
    sides = Sides(transfer_endpoint="PJSIP/1002")
    assert [t["name"] for t in session_config(sides.bridge.settings)["tools"]] == ["hang_up", "transfer_call"]
    sides.opened()
    sides.bridge.realtime_event({"type": "response.created"})
    sides.bridge.realtime_event({"type": "response.function_call_arguments.done", "name": "transfer_call",
                                 "call_id": "call_9", "arguments": "{}"})
    sides.bridge.realtime_event({"type": "response.done"})
    sides.clock.advance(ACTION_MARGIN)
    assert sides.of(sides.avr, "transfer") == [{"type": "transfer", "endpoint": "PJSIP/1002", "id": "call_9"}]
    sides.bridge.avr_message({"type": "action_result", "action": "transfer", "ok": False, "error": "busy",
                              "id": "call_9"})
    output = sides.of(sides.realtime, "conversation.item.create")[-1]["item"]
    assert output["type"] == "function_call_output" and output["call_id"] == "call_9"
    assert json.loads(output["output"]) == {"ok": False, "error": "busy"}
    assert sides.realtime[-1] == {"type": "response.create"}


def test_unknown_tool_is_not_acted_on() -> None:
    sides = Sides()
    sides.opened()
    sides.bridge.realtime_event({"type": "response.function_call_arguments.done", "name": "transfer_call",
                                 "call_id": "x"})
    sides.bridge.realtime_event({"type": "response.done"})
    sides.clock.advance(10)
    assert [m["type"] for m in sides.avr] == []


def test_dtmf_becomes_a_user_message_and_an_answer_unless_one_is_under_way() -> None:
    sides = Sides()
    sides.opened()
    sides.bridge.avr_message({"type": "dtmf_digit", "digit": "5"})
    item = sides.of(sides.realtime, "conversation.item.create")[-1]["item"]
    assert item["role"] == "user" and "5" in item["content"][0]["text"]
    assert sides.realtime[-1] == {"type": "response.create"}
    sides.bridge.avr_message({"type": "dtmf_digit", "digit": "#"})
    assert len(sides.of(sides.realtime, "response.create")) == 1  # the first answer is still under way
    sides.bridge.realtime_event({"type": "response.done"})
    sides.bridge.avr_message({"type": "dtmf_digit", "digit": "1"})
    assert len(sides.of(sides.realtime, "response.create")) == 2


def test_greeting_asks_for_a_first_answer() -> None:
    sides = Sides(greeting="Welcome to Acme.")
    sides.opened()
    assert sides.realtime[-1]["type"] == "response.create"
    assert "Welcome to Acme." in sides.realtime[-1]["response"]["instructions"]


def test_realtime_errors_reach_avr_and_unknown_messages_are_ignored() -> None:
    sides = Sides()
    sides.opened()
    sides.bridge.realtime_event({"type": "error", "error": {"type": "invalid_request_error", "message": "nope"}})
    sides.bridge.avr_message({"type": "tool_invocation", "toolName": "x"})
    sides.bridge.realtime_event({"type": "rate_limits.updated"})
    assert sides.avr == [{"type": "error", "message": "nope"}]


def test_settings_from_the_environment_and_the_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STS_SAMPLE_RATE", "16000")
    monkeypatch.setenv("REALTIME_MODEL", "gpt-realtime-mini")
    monkeypatch.setenv("REALTIME_TRANSCRIPTION_MODEL", "none")
    args = parse_args(["--voice", "alloy"])
    factory = build_agent(Clock(), args, KEY)
    assert factory.settings.sample_rate == 16000 and factory.settings.voice == "alloy"
    assert factory.settings.transcription_model is None
    assert factory.endpoint.url == "wss://api.openai.com/v1/realtime?model=gpt-realtime-mini"
    assert realtime_url("ws://127.0.0.1:9/v1/realtime?model=x", "y") == "ws://127.0.0.1:9/v1/realtime?model=x"
    assert KEY not in repr(factory.endpoint)


# -- the program on loopback, driven as avr drives it ------------------------------------------------------------------


class Loopback:
    """The example agent and the fake Realtime endpoint on 127.0.0.1, and avr's STS client."""

    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor
        self.realtime = FakeRealtimeFactory(reactor, KEY)
        self.ports: list[Any] = []
        self.log = io.StringIO()
        self.observer = log_observer(LogLevel.debug, self.log)
        self.events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self.observer)
        globalLogPublisher.addObserver(self.events.append)

    def listen(self, factory: Any) -> int:
        port = self.reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.ports.append(port)
        return int(port.getHost().port)

    def start_agent(self, key: str = KEY, sample_rate: int = 8000, **settings: Any) -> int:
        realtime_port = self.listen(self.realtime)
        endpoint = RealtimeEndpoint(realtime_url(f"ws://127.0.0.1:{realtime_port}/v1/realtime", "gpt-realtime"),
                                    key)
        agent = AgentFactory(self.reactor, AgentSettings(sample_rate=sample_rate, **settings), endpoint)
        return self.listen(agent)

    async def call(self, agent_port: int, sample_rate: int = 8000) -> tuple[Any, RecordingStsHandler]:
        handler = RecordingStsHandler()
        connector = WebSocketStsConnector(self.reactor, 5.0, sample_rate=sample_rate)
        session = await connector.connect(f"ws://127.0.0.1:{agent_port}/?from=2000", U1, handler)
        return session, handler

    async def stop(self) -> None:
        globalLogPublisher.removeObserver(self.observer)
        globalLogPublisher.removeObserver(self.events.append)
        for connection in self.realtime.connections:
            if connection.state == connection.STATE_OPEN:
                connection.dropConnection(abort=True)
        for port in self.ports:
            await port.stopListening()

    def logged_text(self) -> str:
        return self.log.getvalue() + "\n".join(formatEvent(e) + repr(e) for e in self.events)


@pytest_twisted.async_yield_fixture
async def loop() -> AsyncIterator[Loopback]:
    from twisted.internet import reactor

    rig = Loopback(reactor)
    try:
        yield rig
    finally:
        await rig.stop()


@pytest.mark.integration
@pytest_twisted.ensureDeferred
async def test_a_call_through_the_agent_both_ways_with_barge_in(loop: Loopback) -> None:
    """avr's STS client ↔ the agent ↔ the fake Realtime: the handshake, audio both ways, transcripts, barge-in."""
    port = loop.start_agent()
    session, handler = await loop.call(port)
    realtime: FakeRealtimeProtocol = await loop.realtime.session_opened().addTimeout(5, loop.reactor)
    assert realtime.headers["authorization"] == f"Bearer {KEY}" and realtime.model == "gpt-realtime"
    await until(loop.reactor, lambda: bool(realtime.of_type("session.update")))
    assert realtime.session["audio"]["input"]["format"] == {"type": "audio/pcm", "rate": 24000}

    caller = tone(8000, 500, 440)
    for start in range(0, len(caller), 320):
        session.send_audio(caller[start:start + 320])
    await until(loop.reactor, lambda: len(realtime.audio) >= 0.4 * 48000)  # the resampler holds back a little
    assert abs(frequency(realtime.audio[4800:], 24000) - 440) < 15

    realtime.user_transcript("Hello?")
    item = realtime.respond(tone(24000, 3000, 300), transcript="Hi, how can I help?", finish=False)
    await handler.wait_for("audio", int(2.9 * 16000)).addTimeout(5, loop.reactor)
    assert abs(frequency(handler.audio[1600:], 8000) - 300) < 15
    await handler.wait_for("transcript", 2).addTimeout(5, loop.reactor)
    assert [e[1:] for e in handler.events if e[0] == "transcript"] == [("user", "Hello?"),
                                                                       ("agent", "Hi, how can I help?")]

    realtime.speech_started()
    await handler.wait_for("interruption").addTimeout(5, loop.reactor)
    await until(loop.reactor, lambda: bool(realtime.of_type("conversation.item.truncate")))
    truncate = realtime.of_type("conversation.item.truncate")[0]
    assert truncate["item_id"] == item and 0 <= truncate["audio_end_ms"] < 1000
    assert realtime.errors == []  # every event the agent sent was one the API accepts

    session.close()
    await realtime.when_closed().addTimeout(5, loop.reactor)
    assert KEY not in loop.logged_text()


@pytest.mark.integration
@pytest_twisted.ensureDeferred
async def test_a_hang_up_asked_by_the_model_reaches_avr(loop: Loopback) -> None:
    port = loop.start_agent(sample_rate=24000)
    _, handler = await loop.call(port, sample_rate=24000)
    realtime: FakeRealtimeProtocol = await loop.realtime.session_opened().addTimeout(5, loop.reactor)
    realtime.function_call("hang_up", "call_42")
    await handler.wait_for("action").addTimeout(5, loop.reactor)
    request = next(e[1] for e in handler.events if e[0] == "action")
    assert request == HangupRequest("the agent ended the call", "call_42")


@pytest.mark.integration
@pytest_twisted.ensureDeferred
async def test_a_refused_api_key_ends_the_call_with_an_error_that_does_not_quote_it(loop: Loopback) -> None:
    wrong = "sk-wrong-key-9876543210"
    port = loop.start_agent(key=wrong)
    _, handler = await loop.call(port)
    await handler.wait_for("closed").addTimeout(5, loop.reactor)
    errors = [e[1] for e in handler.events if e[0] == "error"]
    assert errors and "401" in errors[0]
    assert wrong not in errors[0] and wrong not in handler.closed[0]
    assert wrong not in loop.logged_text()


@pytest.mark.integration
@pytest_twisted.ensureDeferred
async def test_the_realtime_session_ending_ends_the_call(loop: Loopback) -> None:
    port = loop.start_agent()
    _, handler = await loop.call(port)
    realtime: FakeRealtimeProtocol = await loop.realtime.session_opened().addTimeout(5, loop.reactor)
    realtime.close_session()
    await handler.wait_for("closed").addTimeout(5, loop.reactor)
    assert "the Realtime session ended" in handler.closed[0]


# -- a whole call: simulated Asterisk → avr → the example agent → the fake Realtime endpoint ---------------------------


@pytest.mark.integration
@pytest_twisted.ensureDeferred
async def test_end_to_end_asterisk_avr_agent_realtime(loop: Loopback) -> None:
    """The caller's audio reaches the model at 24 kHz, the model's answer is played paced to Asterisk, and the
    caller barging in empties avr's playback queue at once."""
    agent_port = loop.start_agent(sample_rate=8000)
    config = Config(port=0, sts_url=f"ws://127.0.0.1:{agent_port}", sts_connect_timeout=2000)
    http = HTTPClient(Agent(loop.reactor, pool=HTTPConnectionPool(loop.reactor, persistent=False)))
    avr = build(loop.reactor, config, http_client=http,
                sts_connector=StsConnector(sts_connectors(loop.reactor, config)))
    avr.service.startService()
    asterisk: SimulatedAsterisk | None = None
    try:
        audiosocket = avr.service.getServiceNamed("audiosocket").port.getHost().port
        asterisk, _ = await connect_simulated_asterisk(
            loop.reactor, "127.0.0.1", audiosocket, Continuous.from_pcm(tone(8000, 1000, 440), duration=None),
            uuid=U1)
        realtime: FakeRealtimeProtocol = await loop.realtime.session_opened().addTimeout(5, loop.reactor)
        await until(loop.reactor, lambda: len(realtime.audio) >= 0.5 * 48000)
        assert abs(frequency(realtime.audio[4800:], 24000) - 440) < 20

        def played() -> list[bytes]:
            assert asterisk is not None
            return [f.payload for _, f in asterisk.received if f.kind == Kind.SLIN8]

        realtime.respond(tone(24000, 4000, 300), finish=False)  # 4 s of answer, sent at once
        await until(loop.reactor, lambda: len(played()) >= 25)
        assert abs(frequency(b"".join(played()[5:25]), 8000) - 300) < 15
        realtime.speech_started()
        await deferLater(loop.reactor, 0.2, lambda: None)
        count = len(played())
        await deferLater(loop.reactor, 0.4, lambda: None)
        assert len(played()) == count < 100  # nothing of the 4 s answer plays after the barge-in
        assert realtime.errors == [] and asterisk.violations == []
    finally:
        if asterisk is not None and asterisk.connected:
            asterisk.hang_up()
        await avr.service.stopService()
