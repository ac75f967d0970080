"""
asterisk-api's audio capture in the call-control model (avr.control.capture): snoop ``spy=in`` + a media leg,
their AudioSocket audio into the streaming ASR client talking to the fake Qwen3-ASR server (in memory), and
everything released when the capture stops or the call ends.
"""

from __future__ import annotations

from typing import Any, Callable

from attrs import define, field
from twisted.internet.defer import Deferred

from avr.control.errors import Conflict
from avr.control.records import call_id_for
from avr.speech.streaming_asr import StreamingAsrSession, Transcription
from avr.testing.asr import BUFFER_SIZE
from tests.ari_fakes import make, stasis_end, stasis_start, state_change
from tests.test_streaming_asr import Net

SPEECH = b"\x10\x00" * (BUFFER_SIZE // 2)


@define
class FakeListener:
    """Records `expect` calls; the test feeds audio through ``on_audio`` and ends the connection."""

    expected: dict[str, tuple[Callable[[bytes], None], Deferred]] = field(factory=dict)
    cancelled: list[str] = field(factory=list)

    def expect(self, uuid: str, on_audio: Callable[[bytes], None]) -> Deferred:
        d: Deferred = Deferred(lambda _: self.cancelled.append(uuid))
        self.expected[uuid] = (on_audio, d)
        return d


def _capturing(asr: bool = True, policy: str = "none", **kwargs: Any) -> tuple[Any, FakeListener, Net | None]:
    """A model with a capture listener and (when ``asr``) ASR sessions joined in memory to the fake ASR server."""
    listener = FakeListener()
    nets: list[Net] = []

    def sessions(call_id: str, on_result: Callable[[Transcription], None],
                 on_lost: Callable[[str], None]) -> StreamingAsrSession:
        return StreamingAsrSession(call_id, "ws://asr.test/ws/transcribe", "English", nets[0].clock, nets[0].dial,
                                   on_result, on_lost)

    h = make(policy, listener=listener, asr_sessions=sessions if asr else None, **kwargs)
    nets.append(Net(h.clock))
    return h, listener, nets[0] if asr else None


def ringing_inbound(h: Any, channel_id: str = "in-1") -> str:
    """An inbound call left ringing (policy none): in the app, not captured automatically (not answered)."""
    h.feed(stasis_start(channel_id, "Ring", number="3000"))
    h.sink.clear()
    h.ari.requests.clear()
    return channel_id


def _start(h: Any, cid: str, net: Net | None) -> tuple[list, str, str, Callable[[bytes], None]]:
    """Start the capture and bring its snoop and leg up; returns the outcome, the snoop and leg ids, the feed."""
    d, outcome = h.start(h.control.start_audio_capture(cid))
    snoop_request = h.ari.find("POST", f"/channels/{cid}/snoop/.*")[0]
    snoop = snoop_request.path.rsplit("/", 1)[1]
    h.feed(stasis_start(snoop))
    leg_request = h.ari.find("POST", "/channels/externalMedia")[0]
    uuid = leg_request.params["data"]
    h.feed(stasis_start(f"avr-media-{uuid}", args=[uuid]))
    if net is not None:
        net.flush()
    on_audio = h.control.captures.listener.expected[uuid][0]
    return outcome, snoop, f"avr-media-{uuid}", on_audio


def test_capture_snoops_the_caller_only_into_a_bridge_of_its_own() -> None:
    """snoop spy=in in the app, a slin16 leg, a temporary bridge with the two; started event with the info."""
    h, listener, net = _capturing()
    cid = ringing_inbound(h)
    outcome, snoop, leg, _ = _start(h, cid, net)
    assert snoop.startswith("avr-media-snoop-")
    assert h.ari.find("POST", f"/channels/{cid}/snoop/{snoop}")[0].params == {"app": "avr", "spy": "in",
                                                                               "whisper": "none"}
    assert h.ari.find("POST", "/channels/externalMedia")[0].params["format"] == "slin16"
    bridge = f"avr-tmp-{leg.removeprefix('avr-media-')}"
    assert h.ari.find("POST", f"/bridges/{bridge}/addChannel")[0].params == {"channel": [snoop, leg]}
    info = outcome[0]["audioCapture"]
    assert outcome[0]["status"] == "started"
    assert (info["enabled"], info["snoopChannelId"], info["externalMediaChannelId"], info["format"],
            info["sampleRate"]) == (True, snoop, leg, "slin16", 16000)
    assert h.sink.of("call.audio_capture_started")[0]["data"] == info
    assert h.run(h.control.get_call(cid))["bridgeId"] is None  # the call's own bridges are untouched


def test_caller_audio_goes_to_the_asr_and_comes_back_as_transcriptions() -> None:
    """config first, the audio as binary messages, partials as call.transcription; stop: flush, one final."""
    h, _, net = _capturing()
    assert net is not None
    cid = ringing_inbound(h)
    _, snoop, leg, on_audio = _start(h, cid, net)
    server = net.connection
    assert server.actions == [{"action": "config", "language": "English"}]
    on_audio(SPEECH[:640])
    on_audio(SPEECH[640:])
    net.flush()
    assert bytes(server.received_audio) == SPEECH
    partial = h.sink.of("call.transcription")[0]
    assert partial["callId"] == call_id_for(cid) and partial["data"] == {"text": "w1 w2 w3 w4", "is_partial": True,
                                                            "is_final": False}
    d, stopped = h.start(h.control.stop_audio_capture(cid))
    net.flush()
    assert stopped[0]["status"] == "stopped" and stopped[0]["audioCapture"]["enabled"] is False
    finals = [e for e in h.sink.of("call.transcription") if e["data"]["is_final"]]
    assert len(finals) == 1  # D9: once
    types = h.sink.types(call_id_for(cid))
    assert types.index("call.audio_capture_stopped") > types.index("call.transcription", 1)
    assert h.ari.find("DELETE", f"/channels/{snoop}") and h.ari.find("DELETE", f"/channels/{leg}")
    assert h.ari.find("DELETE", f"/bridges/avr-tmp-{leg.removeprefix('avr-media-')}")
    assert server.closed.called


def test_a_second_start_is_409_and_stop_without_capture_answers_json() -> None:
    """asterisk-api's "already exists" as a 409; stopping nothing is a JSON answer (the plugin parses it)."""
    h, _, net = _capturing()
    cid = ringing_inbound(h)
    _start(h, cid, net)
    _, outcome = h.start(h.control.start_audio_capture(cid))
    assert outcome[0].check(Conflict) and "already exists" in outcome[0].value.message
    other = ringing_inbound(h, "in-9")
    assert h.run(h.control.stop_audio_capture(other)) == {"status": "stopped", "audioCapture": None}


def test_hang_up_stops_the_capture_and_leaves_nothing() -> None:
    """The call ends: the ASR is flushed (final once), snoop, leg and bridge are gone, the ASR socket closed."""
    h, _, net = _capturing()
    assert net is not None
    cid = ringing_inbound(h)
    _, snoop, leg, on_audio = _start(h, cid, net)
    on_audio(SPEECH[:3200])
    h.feed(stasis_end(cid))
    net.flush()
    assert [e["data"]["is_final"] for e in h.sink.of("call.transcription")] == [True]
    # one stop, though the leg's end reports too
    assert h.sink.types(call_id_for(cid)).count("call.audio_capture_stopped") == 1
    assert h.ari.find("DELETE", f"/channels/{snoop}") and h.ari.find("DELETE", f"/channels/{leg}")
    assert net.connection.closed.called if net.server.connections else net.server.gone[0].closed.called
    assert h.control.captures._captures == {}


def test_inbound_calls_are_captured_once_answered_when_an_asr_is_configured() -> None:
    """asterisk-api starts capture for inbound calls after the answer; not without an ASR."""
    h, _, net = _capturing(policy="answer", ring_delay=3.0)
    h.feed(stasis_start("in-1", "Ring"))
    h.clock.advance(3)
    assert h.ari.find("POST", "/channels/in-1/answer") and not h.ari.find("POST", "/channels/in-1/snoop/.*")
    h.feed(state_change("in-1", "Up"))
    assert len(h.ari.find("POST", "/channels/in-1/snoop/.*")) == 1
    h.feed(state_change("in-1", "Up"))
    assert len(h.ari.find("POST", "/channels/in-1/snoop/.*")) == 1
    h2, _, _ = _capturing(asr=False, policy="answer")
    h2.feed(stasis_start("in-1", "Ring"), state_change("in-1", "Up"))
    assert not h2.ari.find("POST", "/channels/in-1/snoop/.*")


def test_an_asr_that_is_down_is_a_capture_error_without_retries() -> None:
    """"Failed to start ASR: ..." as call.audio_capture_error; the capture runs; no orphan reconnect loop (D10)."""
    h, _, net = _capturing()
    assert net is not None
    net.refuse = True
    cid = ringing_inbound(h)
    outcome, *_ = _start(h, cid, net)
    assert outcome[0]["status"] == "started"
    errors = h.sink.of("call.audio_capture_error")
    assert len(errors) == 1 and errors[0]["data"]["error"].startswith("Failed to start ASR: ")
    h.clock.advance(60)
    assert net.dials == 1
