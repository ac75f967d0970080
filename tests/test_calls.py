"""Tests for avr.calls: one AudioSocket call bridged to one STS session, paced playback, call events, admission."""

from __future__ import annotations

import struct

import pytest
from twisted.internet.task import Clock
from twisted.logger import LogEvent, LogLevel, formatEvent
from zope.interface.verify import verifyObject

from avr.admissions import Admissions
from avr.audio import Resampler
from avr.audiosocket import CallRefused
from avr.calls import CallManager
from avr.control.injection import PcmInjector
from avr.interfaces import (
    IAudioInjector,
    IAudioSocketLeg,
    ICallObserver,
    ICallRouter,
    ICallSink,
    IStsConnector,
    IStsSession,
    IWebhooks,
)
from avr.observers import CallObservers, WebhookObserver
from avr.playout import FrameTicker
from avr.registrations import Registrations
from avr.testing.webhooks import FakeWebhooks
from fakes import FakeLeg, FakeStsConnector, RecordingObserver
from tests.helpers import tone

U1 = "935652e3-7c59-4edc-b17f-9646a9c2a265"
U2 = "0f6b2d9e-1111-4c1c-9d3e-5a2f7b9c0d11"


class World:
    """A CallManager wired to fakes on one Clock: its events go to the webhook adapter and a recording observer."""

    def __init__(self, **kwargs: object) -> None:
        self.clock = Clock()
        self.sts = FakeStsConnector()
        self.webhooks = FakeWebhooks()
        self.observer = RecordingObserver()
        self.admissions = Admissions(self.clock)
        self.ticker = FrameTicker(self.clock)
        options = {"sts_url": "ws://sts.example:6030", **kwargs}
        self.manager = CallManager(
            clock=self.clock,
            connector=self.sts,
            observer=CallObservers(WebhookObserver(self.webhooks), self.observer),
            ticker=self.ticker,
            admissions=self.admissions,
            **options,  # type: ignore[arg-type]
        )
        self.registrations = Registrations(self.admissions, 60, self.manager.start_call)
        self.injector = PcmInjector(self.admissions, self.ticker)

    def connect(self, uuid: str = U1) -> tuple[FakeLeg, ICallSink]:
        leg = FakeLeg(uuid, self.clock)
        return leg, self.manager.attach(leg)

    def run(self, seconds: float) -> None:
        for _ in range(round(seconds / 0.001)):
            self.clock.advance(0.001)


def test_interfaces() -> None:
    """The manager, the fakes and the call provide the interfaces they claim."""
    world = World()
    verifyObject(ICallRouter, world.manager)
    verifyObject(IAudioInjector, world.injector)
    verifyObject(IStsConnector, world.sts)
    verifyObject(IWebhooks, world.webhooks)
    verifyObject(ICallObserver, world.observer)
    verifyObject(ICallObserver, world.manager.observer)
    verifyObject(ICallObserver, WebhookObserver(world.webhooks))
    leg, call = world.connect()
    verifyObject(IAudioSocketLeg, leg)
    verifyObject(ICallSink, call)
    verifyObject(IStsSession, world.sts.open(U1))


def test_call_start_webhook_and_default_sts_url() -> None:
    """A call without POST /call uses STS_URL and announces call_started."""
    world = World()
    world.connect()
    assert world.sts.url_for(U1) == "ws://sts.example:6030"
    assert world.webhooks.types(U1) == ["call_started"]


def test_registered_call_uses_its_url_once() -> None:
    """A registration from POST /call selects the STS URL and is consumed by the connection."""
    world = World()
    world.registrations.register(U1, {"from": "2000"}, "ws://other:7000/?from=2000", True)
    world.clock.advance(5)
    _, call = world.connect()
    assert world.sts.url_for(U1) == "ws://other:7000/?from=2000"
    assert U1 not in world.registrations and len(world.admissions) == 0
    assert call.payload == {"from": "2000"} and call.started_at == 5
    assert not world.clock.getDelayedCalls()


def test_admission_control_and_duplicates() -> None:
    """With admission control an unregistered UUID is refused; a UUID already connected is always refused."""
    world = World(require_registration=True)
    with pytest.raises(CallRefused, match="not registered"):
        world.connect()
    world.registrations.register(U1, {}, None, False)
    world.connect()
    with pytest.raises(CallRefused, match="already connected"):
        world.connect()


def test_audio_before_sts_opens_is_buffered_in_order_with_dtmf() -> None:
    """Caller audio and digits that arrive while the STS connects are delivered, in order, once it opens."""
    world = World()
    _, call = world.connect()
    frames = [bytes([i]) * 320 for i in range(1, 6)]
    call.caller_audio(0x10, frames[0])
    call.caller_audio(0x10, frames[1])
    call.caller_dtmf("5")
    call.caller_audio(0x10, frames[2])
    session = world.sts.open(U1)
    call.caller_audio(0x10, frames[3])
    assert session.audio == frames[:4]
    assert session.dtmf == ["5"]
    assert world.webhooks.types(U1) == ["call_started", "dtmf_digit"]
    assert world.webhooks.events[-1][2] == {"digit": "5"}


def test_pending_audio_is_bounded() -> None:
    """At most two seconds of caller audio wait for the STS; the oldest goes first."""
    world = World()
    _, call = world.connect()
    for i in range(150):  # 3 s of 20 ms frames
        call.caller_audio(0x10, struct.pack("<h", i) * 160)
    session = world.sts.open(U1)
    assert len(session.audio) == 100
    assert session.audio[0] == struct.pack("<h", 50) * 160


def test_dropping_old_pending_audio_keeps_digits_in_place() -> None:
    """When the pending buffer overflows, old audio goes, but a digit is not moved behind newer audio."""
    world = World()
    _, call = world.connect()
    frames = [struct.pack("<h", i) * 160 for i in range(102)]
    call.caller_audio(0x10, frames[0])
    call.caller_dtmf("7")
    for frame in frames[1:]:
        call.caller_audio(0x10, frame)
    session = world.sts.open(U1)
    # Two frames too many: frames 0 and 1 are dropped; the digit pressed after frame 0 now comes first.
    assert session.sent == ["7", *frames[2:]]


def test_one_second_of_agent_audio_is_paced_over_one_second() -> None:
    """16000 bytes of 8 kHz agent audio become 50 frames of 320 bytes, 20 ms apart, in the call's kind."""
    world = World()
    leg, call = world.connect()
    call.caller_audio(0x10, bytes(320))
    world.sts.open(U1)
    audio = tone(8000, 1000)
    call.sts_audio(audio)
    world.run(1.2)
    assert [k for k, _ in leg.sent] == [0x10] * 50
    assert all(len(p) == 320 for _, p in leg.sent)
    assert b"".join(p for _, p in leg.sent) == audio
    gaps = [b - a for a, b in zip(leg.times, leg.times[1:], strict=False)]
    # Released on the 20 ms grid (observed to the 1 ms resolution of this test's clock steps).
    assert min(gaps) == pytest.approx(0.020, abs=0.0011) and max(gaps) == pytest.approx(0.020, abs=0.0011)


def test_under_overload_the_agents_audio_stays_near_real_time(log_events: list[LogEvent]) -> None:
    """
    The reactor gets round only every 100 ms for a minute while the agent streams in real time: what the caller
    hears lags real time by about 2 s at most (not 24 s and growing); the dropped frames are counted in a few
    warnings, not one per frame.
    """
    world = World()
    leg, call = world.connect()
    call.caller_audio(0x10, bytes(320))
    world.sts.open(U1)
    for n in range(600):
        world.clock.advance(0.100)
        call.sts_audio(b"".join((5 * n + i).to_bytes(4, "little") * 80 for i in range(5)))  # frames 5n .. 5n+4
    newest_heard = int.from_bytes(leg.sent[-1][1][:4], "little")
    assert 3000 - newest_heard <= 110  # 2 s behind real time, plus one pass of the reactor
    warnings = [formatEvent(e) for e in log_events if e.get("log_level") == LogLevel.warn]
    assert 0 < len(warnings) < 20
    assert all(f"Call {U1}: playback fell" in w and "behind real time (server overloaded)" in w for w in warnings)
    assert warnings[-1].endswith("on this call so far)") and "dropped the oldest" in warnings[-1]


def test_an_agent_streams_hiccup_is_taken_back_and_reported(log_events: list[LogEvent]) -> None:
    """
    The agent's real-time stream stalls for 300 ms and then delivers the held audio at once: the caller hears it
    with at most 100 ms of it standing queued a few seconds later (not 300 ms for the rest of the call), and the
    call's end says how many frames that cost.
    """
    world = World()
    leg, call = world.connect()
    call.caller_audio(0x10, bytes(320))
    world.sts.open(U1)
    frame = 0
    for tick in range(300):
        if not 100 <= tick < 115:
            while frame <= tick:
                call.sts_audio(frame.to_bytes(4, "little") * 80)
                frame += 1
        world.run(0.020)
    behind = frame - 1 - int.from_bytes(leg.sent[-1][1][:4], "little")
    assert behind <= 6  # 5 frames of cushion and the one in flight, instead of 15
    call.caller_gone("hung up")
    lines = [formatEvent(e) for e in log_events if e.get("log_level") == LogLevel.info]
    assert f"Call {U1}: 10 frames of agent audio were dropped to take back the delay that hiccups of its stream added" \
        in lines


def test_odd_chunks_are_reframed() -> None:
    """Agent audio in odd-sized chunks is re-cut into whole 20 ms frames without losing a byte."""
    world = World()
    leg, call = world.connect()
    call.caller_audio(0x10, bytes(320))
    world.sts.open(U1)
    audio = tone(8000, 500)
    for i in range(0, len(audio), 333):
        call.sts_audio(audio[i : i + 333])
    world.run(1.0)
    assert all(len(p) == 320 for _, p in leg.sent)
    assert b"".join(p for _, p in leg.sent)[: len(audio)] == audio


def test_wideband_call_gets_wideband_frames() -> None:
    """A 16 kHz (0x12) caller gets 640-byte 0x12 frames: 8 kHz agent audio is resampled up."""
    world = World()
    leg, call = world.connect()
    for _ in range(10):
        call.caller_audio(0x12, tone(16000, 20))
    session = world.sts.open(U1)
    received = sum(map(len, session.audio))
    assert 3200 - 2 * 240 <= received < 3200  # 200 ms at 8 kHz, less the resampler's look-ahead (< 30 ms)
    call.sts_audio(tone(8000, 1000))
    world.run(1.2)
    assert {k for k, _ in leg.sent} == {0x12}
    assert all(len(p) == 640 for _, p in leg.sent)
    assert 49 <= len(leg.sent) <= 51


def test_the_end_of_resampled_agent_audio_is_not_held_back() -> None:
    """What the resampler's filter holds when the agent pauses plays at once (not with the next utterance): 100 ms
    of 8 kHz speech on a 16 kHz call plays as 100 ms, then nothing."""
    world = World()
    leg, call = world.connect()
    call.caller_audio(0x12, tone(16000, 20))
    world.sts.open(U1)
    call.sts_audio(tone(8000, 100, amplitude=12000))
    world.run(0.5)
    played = b"".join(p for _, p in leg.sent)
    assert 3200 - 640 <= len(played.rstrip(b"\x00")) <= 3200 + 64
    assert len(leg.sent) <= 6


def test_interruption_also_drops_what_the_resampler_holds() -> None:
    """After a barge-in, no audio of the interrupted utterance comes out, not even the resampler's tail."""
    world = World()
    leg, call = world.connect()
    call.caller_audio(0x12, tone(16000, 20))
    world.sts.open(U1)
    call.sts_audio(tone(8000, 100, amplitude=12000))
    call.sts_interruption()
    world.run(0.5)
    assert leg.sent == []


def test_the_session_states_its_own_rates() -> None:
    """An 8 kHz call with a session taking 16 kHz and speaking 24 kHz (a TTS): each way is converted."""
    world = World()
    leg, call = world.connect()
    call.caller_audio(0x10, tone(8000, 20))
    session = world.sts.open(U1, input_rate=16000, output_rate=24000)
    for _ in range(9):
        call.caller_audio(0x10, tone(8000, 20))
    received = sum(map(len, session.audio))
    assert 6400 - 2 * 480 <= received < 6400  # 200 ms at 16 kHz, less the resampler's look-ahead (< 30 ms)
    call.sts_audio(tone(24000, 1000))
    world.run(1.2)
    assert {k for k, _ in leg.sent} == {0x10}
    assert all(len(p) == 320 for _, p in leg.sent)
    assert 49 <= len(leg.sent) <= 51


def test_audio_waiting_for_the_sts_joins_the_live_audio_seamlessly() -> None:
    """Caller audio kept while the STS connects goes through the same converter as what follows: the session gets
    one continuous stream, as if it had been open all along."""
    world = World()
    _, call = world.connect()
    audio = tone(8000, 200)
    frames = [audio[i:i + 320] for i in range(0, len(audio), 320)]
    for frame in frames[:4]:
        call.caller_audio(0x10, frame)
    session = world.sts.open(U1, input_rate=16000)
    for frame in frames[4:]:
        call.caller_audio(0x10, frame)
    reference = Resampler(8000, 16000)
    assert b"".join(session.audio) == b"".join(reference.convert(frame) for frame in frames)


def test_caller_audio_stays_sample_aligned_and_follows_a_kind_change() -> None:
    """
    Once frames flow to the session as they are, odd-length frames (a byte of a sample in the next frame) still
    join up exactly, a switch to 8 kHz is converted to the session's 16 kHz, and nothing reaches the session once
    the call has ended.
    """
    world = World()
    _, call = world.connect()
    session = world.sts.open(U1, input_rate=16000)
    audio = bytes(range(256)) * 15  # 3840 bytes: six 20 ms frames at 16 kHz
    for size in (640, 640, 639, 640, 641, 640):
        call.caller_audio(0x12, audio[:size])
        audio = audio[size:]
    assert b"".join(session.audio) == (bytes(range(256)) * 15)
    assert all(len(chunk) % 2 == 0 for chunk in session.audio)
    session.audio.clear()
    reference = Resampler(8000, 16000)
    low = tone(8000, 100)
    for i in range(0, len(low), 320):
        call.caller_audio(0x10, low[i:i + 320])
    assert b"".join(session.audio) == b"".join(reference.convert(low[i:i + 320]) for i in range(0, len(low), 320))
    call.end("test", linger=False)
    before = list(session.audio)
    call.caller_audio(0x10, low[:320])
    assert session.audio == before


def test_a_rate_change_before_the_sts_opens_drops_the_audio_of_the_old_rate() -> None:
    """Asterisk switching from 8 to 16 kHz while the STS connects: only audio at the new rate is kept."""
    world = World()
    _, call = world.connect()
    call.caller_audio(0x10, tone(8000, 20))
    call.caller_dtmf("1")
    call.caller_audio(0x12, tone(16000, 20))
    session = world.sts.open(U1, input_rate=16000)
    assert session.sent == ["1", tone(16000, 20)]


def test_agent_speaking_first_plays_8khz_and_keeps_it() -> None:
    """If the agent speaks before any caller audio, the call plays 0x10 and does not switch rate later."""
    world = World()
    leg, call = world.connect()
    world.sts.open(U1)
    call.sts_audio(tone(8000, 100))
    world.run(0.2)
    call.caller_audio(0x12, tone(16000, 20))
    call.sts_audio(tone(8000, 100))
    world.run(0.2)
    assert {k for k, _ in leg.sent} == {0x10}


def test_interruption_drops_queued_audio_at_once() -> None:
    """After an interruption no queued frame is sent; the webhook reports it."""
    world = World()
    leg, call = world.connect()
    call.caller_audio(0x10, bytes(320))
    world.sts.open(U1)
    call.sts_audio(tone(8000, 5000))
    world.run(0.5)
    sent = len(leg.sent)
    call.sts_interruption()
    world.run(1.0)
    assert len(leg.sent) == sent
    assert world.webhooks.types(U1)[-1] == "interruption"
    call.sts_audio(tone(8000, 100))  # the agent's next turn plays again
    world.run(0.2)
    assert len(leg.sent) == sent + 5


def test_transcripts_become_webhooks() -> None:
    """STS transcripts are reported as transcription webhooks with role and text."""
    world = World()
    _, call = world.connect()
    call.sts_transcript("user", "hi")
    assert world.webhooks.events[-1] == (U1, "transcription", {"role": "user", "text": "hi"})


def test_typed_events_of_a_call_and_their_webhooks() -> None:
    """A call's events reach the observer typed, in order, and the webhook adapter sends avr-core's envelopes."""
    world = World()
    leg, call = world.connect()
    session = world.sts.open(U1)
    call.caller_audio(0x12, bytes(640))
    call.caller_dtmf("#")
    call.sts_transcript("user", "hello")
    call.sts_interruption()
    call.sts_transcript("agent", "hi")
    call.caller_gone("hang-up frame")
    call.sts_transcript("agent", "too late")  # after the end: nothing
    assert world.observer.events == [
        ("call_started", U1), ("dtmf", U1, "#"), ("transcript", U1, "user", "hello"), ("interruption", U1),
        ("transcript", U1, "agent", "hi"), ("call_ended", U1, "Asterisk: hang-up frame"),
    ]
    assert world.webhooks.events == [
        (U1, "call_started", {}), (U1, "dtmf_digit", {"digit": "#"}),
        (U1, "transcription", {"role": "user", "text": "hello"}), (U1, "interruption", {}),
        (U1, "transcription", {"role": "agent", "text": "hi"}), (U1, "call_ended", {}),
    ]
    assert (call.rate, call.codec, call.end_reason) == (16000, "SLIN", "Asterisk: hang-up frame")
    assert session.closed and session.dtmf == ["#"]


@pytest.mark.logs_errors(r"Call observer .*Broken.* failed on dtmf of call")
def test_a_failing_observer_does_not_break_the_call(log_events: list) -> None:
    """An observer that raises is logged; the other observers and the call's audio go on."""

    class Broken(RecordingObserver):
        def dtmf(self, call: object, digit: str) -> None:
            raise RuntimeError("observer bug")

    world = World()
    world.manager.observer = CallObservers(Broken(), world.observer)
    _, call = world.connect()
    session = world.sts.open(U1)
    call.caller_dtmf("1")
    call.caller_audio(0x10, bytes(320))
    assert world.observer.events[-1] == ("dtmf", U1, "1")
    assert session.dtmf == ["1"] and session.audio == [bytes(320)]
    failures = [e for e in log_events if "log_failure" in e]
    assert len(failures) == 1 and failures[0]["log_failure"].check(RuntimeError)


@pytest.mark.logs_errors(r"STS connection failed for call .*: Connection refused")
def test_sts_refused_ends_only_that_call() -> None:
    """An unreachable STS ends its call (hang-up frame, call_ended once); another call is untouched."""
    world = World()
    leg1, _ = world.connect(U1)
    leg2, call2 = world.connect(U2)
    world.sts.refuse(U1)
    assert leg1.hung_up == 1 and not leg1.connected
    assert world.webhooks.types(U1) == ["call_started", "call_ended"]
    assert world.manager.get(U1) is None
    session2 = world.sts.open(U2)
    call2.caller_audio(0x10, bytes(320))
    assert session2.audio == [bytes(320)]
    assert leg2.connected


def test_sts_closing_mid_call_hangs_up() -> None:
    """When the STS closes the socket, the caller is hung up and call_ended sent once."""
    world = World()
    leg, call = world.connect()
    call.caller_audio(0x10, bytes(320))
    session = world.sts.open(U1)
    call.sts_audio(tone(8000, 1000))
    world.run(0.1)
    session.closed = True
    call.sts_closed("code 1011: provider failed")
    world.run(1.0)
    assert leg.hung_up == 1
    assert world.webhooks.types(U1).count("call_ended") == 1
    assert len(world.ticker) == 0
    assert not world.clock.getDelayedCalls()


def test_caller_hangup_releases_everything() -> None:
    """EOF from Asterisk closes the STS session, stops playback, sends call_ended once, leaves no timers."""
    world = World()
    leg, call = world.connect()
    call.caller_audio(0x10, bytes(320))
    session = world.sts.open(U1)
    call.sts_audio(tone(8000, 1000))
    world.run(0.1)
    leg.connected = False
    call.caller_gone("connection lost")
    call.caller_gone("connection lost")
    call.sts_audio(tone(8000, 100))
    assert session.closed
    assert world.webhooks.types(U1).count("call_ended") == 1
    assert len(world.manager) == 0 and len(world.ticker) == 0
    assert not world.clock.getDelayedCalls()
    assert leg.hung_up == 0


def test_hangup_while_sts_is_connecting_cancels_the_attempt() -> None:
    """A caller who hangs up before the STS answers cancels the connection attempt."""
    world = World()
    leg, call = world.connect()
    leg.connected = False
    call.caller_gone("connection lost")
    assert world.sts.cancelled == [U1]
    assert world.webhooks.types(U1) == ["call_started", "call_ended"]


def test_stop_ends_every_call() -> None:
    """At shutdown every call is hung up with a 0x00 frame and gets its call_ended."""
    world = World()
    legs = [world.connect(u)[0] for u in (U1, U2)]
    world.manager.stop()
    assert all(leg.hung_up == 1 for leg in legs)
    assert world.webhooks.types(U2) == ["call_started", "call_ended"]


def test_injected_playback_is_paced_then_hung_up() -> None:
    """Announced PCM is played paced to the connection with that UUID (even under admission control), then hung up."""
    world = World(require_registration=True)
    done = world.injector.expect(U2, tone(16000, 200), 16000)
    results: list[object] = []
    done.addBoth(results.append)
    leg, sink = world.connect(U2)
    sink.caller_audio(0x12, bytes(640))  # ignored
    world.run(0.5)
    assert [k for k, _ in leg.sent] == [0x12] * 10
    assert leg.hung_up == 1
    assert results == [None]
    assert world.webhooks.events == [] and world.observer.events == []  # not an agent call


def test_injected_playback_times_out_and_can_be_cancelled() -> None:
    """No connection in time fails the playback; cancelling one stops it and hangs up."""
    world = World()
    failures: list[object] = []
    world.injector.expect(U1, bytes(640), 16000).addErrback(failures.append)
    world.clock.advance(10.0)
    assert failures and failures[0].check(TimeoutError)  # type: ignore[attr-defined]
    d = world.injector.expect(U2, tone(16000, 1000), 16000)
    d.addErrback(failures.append)
    leg, _ = world.connect(U2)
    world.run(0.1)
    d.cancel()
    assert leg.hung_up == 1
    assert len(failures) == 2
    world.run(0.1)
    assert len(world.ticker) == 0 and not world.clock.getDelayedCalls()
