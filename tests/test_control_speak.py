"""
``POST /calls/:id/speak`` in the call-control model (avr.control.speak): the fake Qwen3-TTS server behind the real
TTS client, the fake ARI and the fake AudioSocket injector behind the media leg.
"""

from __future__ import annotations

from typing import Any

import pytest
from treq.testing import StubTreq

from avr.control.errors import Conflict, NotFound
from avr.control.records import call_id_for
from avr.control.speak import SpeakFailed
from avr.speech.openai_tts import OpenAiTts
from avr.testing.tts import FakeTtsServer
from tests.ari_fakes import answered_inbound, entered_bridge, make, stasis_end, stasis_start


def _speaking(server: FakeTtsServer | None = None, **kwargs: Any) -> tuple[Any, FakeTtsServer, StubTreq]:
    server = server or FakeTtsServer(seconds_per_char=0.1)
    http = StubTreq(server)
    h = make("none", **kwargs)
    h.control.speaker.tts = OpenAiTts(http, h.clock, "http://tts.test/v1/audio/speech", timeout=30)
    return h, server, http


def _speak(h: Any, http: StubTreq, call_id: str, text: str, **kwargs: Any) -> tuple[Any, list]:
    d, outcome = h.start(h.control.speak(call_id, text, **kwargs))
    http.flush()
    return d, outcome


def _leg_up(h: Any) -> tuple[str, Any]:
    """The media leg the speech asked for enters Stasis; returns its uuid and the injector's Deferred."""
    uuid, (_, _, played) = list(h.injector.expected.items())[-1]
    h.feed(stasis_start(f"avr-media-{uuid}", args=[uuid]))
    return uuid, played


def test_speak_plays_the_speech_and_answers_once_played() -> None:
    """speak_started (defaults filled), synthesis, the speech on a media leg at 24 kHz, speak_finished, 200 reply."""
    h, server, http = _speaking()
    cid = answered_inbound(h)
    d, outcome = _speak(h, http, cid, "Hello there")
    assert h.sink.of("call.speak_started")[0]["data"] == {"text": "Hello there", "voice": "vivian",
                                                          "language": "English"}
    uuid, played = _leg_up(h)
    pcm, rate, _ = h.injector.expected[uuid]
    assert rate == 24000 and pcm.endswith(server.requests[0].pcm)
    assert h.ari.find("POST", "/channels/externalMedia")[0].params["format"] == "slin24"
    assert outcome == []
    played.callback(None)
    duration = server.speech_seconds("Hello there")
    assert outcome[0] == {"status": "ok", "text": "Hello there", "voice": "vivian", "language": "English",
                          "durationSeconds": pytest.approx(duration), "playbackId": uuid}
    assert h.sink.of("call.speak_finished")[0]["data"] == {"text": "Hello there", "voice": "vivian",
                                                           "language": "English",
                                                           "durationSeconds": pytest.approx(duration)}
    assert [t for t in h.sink.types(call_id_for(cid)) if t.startswith(("call.speak", "playback"))] == [
        "call.speak_started", "playback.started", "playback.finished", "call.speak_finished"]


def test_a_bridged_call_stays_in_its_bridge() -> None:
    """Speech into a call in a bridge joins that bridge; nobody is taken out (D12)."""
    h, _, http = _speaking()
    a, b = answered_inbound(h, "a"), answered_inbound(h, "b")
    bridge = h.run(h.control.create_bridge())["id"]
    h.run(h.control.add_to_bridge(bridge, a))
    h.run(h.control.add_to_bridge(bridge, b))
    h.ari.requests.clear()
    _speak(h, http, a, "Hi")
    uuid, played = _leg_up(h)
    h.feed(entered_bridge(bridge, f"avr-media-{uuid}", [a, b, f"avr-media-{uuid}"]))
    played.callback(None)
    assert not h.ari.find("POST", ".*/removeChannel") and not h.ari.find("DELETE", "/bridges/.*")
    assert h.run(h.control.get_bridge(bridge))["calls"] == [call_id_for(a), call_id_for(b)]


def test_a_new_speak_interrupts_the_one_being_synthesised() -> None:
    """The first request's TTS call is abandoned and it answers 409; the second goes on."""
    server = FakeTtsServer(seconds_per_char=0.1)
    server.hold = True
    h, _, http = _speaking(server)
    cid = answered_inbound(h)
    _, first = _speak(h, http, cid, "first")
    _, second = _speak(h, http, cid, "second")
    assert first[0].check(Conflict) and "interrupted by a newer /speak" in first[0].value.message
    server.hold = False
    server.release()
    http.flush()
    _, played = _leg_up(h)
    played.callback(None)
    assert second[0]["text"] == "second"
    assert [e["data"]["text"] for e in h.sink.of("call.speak_error")] == ["first"]


def test_a_new_speak_stops_the_one_being_played() -> None:
    """Speech already playing is stopped (its leg hung up) and answers 409; only the new one finishes."""
    h, _, http = _speaking()
    cid = answered_inbound(h)
    _, first = _speak(h, http, cid, "first")
    uuid, _ = _leg_up(h)
    _, second = _speak(h, http, cid, "second")
    assert h.injector.cancelled == [uuid] and h.ari.find("DELETE", f"/channels/avr-media-{uuid}")
    assert first[0].check(Conflict) and first[0].value.status == 409
    _, played = _leg_up(h)
    played.callback(None)
    assert second[0]["status"] == "ok"
    assert [e["data"]["text"] for e in h.sink.of("call.speak_finished")] == ["second"]


def test_hang_up_during_synthesis_abandons_the_tts_request() -> None:
    """The call ends while the TTS works: its request is cancelled, the speak answers 409, nothing is played."""
    server = FakeTtsServer()
    server.hold = True
    h, _, http = _speaking(server)
    cid = answered_inbound(h)
    _, outcome = _speak(h, http, cid, "Hello")
    h.feed(stasis_end(cid))
    assert outcome[0].check(Conflict) and "the call ended" in outcome[0].value.message
    assert h.injector.expected == {} and not h.ari.find("POST", "/channels/externalMedia")
    assert h.clock.getDelayedCalls() == [] or all(c.getTime() >= 300 for c in h.clock.getDelayedCalls())


def test_hang_up_during_playback_releases_the_leg() -> None:
    """The call ends mid-speech: the leg is hung up, the temporary bridge destroyed, the speak answers 409."""
    h, _, http = _speaking()
    cid = answered_inbound(h)
    _, outcome = _speak(h, http, cid, "Hello")
    uuid, _ = _leg_up(h)
    h.feed(stasis_end(cid))
    assert outcome[0].check(Conflict)
    assert h.ari.find("DELETE", f"/channels/avr-media-{uuid}") and h.ari.find("DELETE", f"/bridges/avr-tmp-{uuid}")
    assert h.sink.of("call.speak_error")[0]["data"]["text"] == "Hello"


def test_tts_failures_map_to_asterisk_apis_statuses() -> None:
    """TTS 500: 502 "Speak failed: ..."; TTS too slow: 504 "Speak timed out: ..."; each with speak_error."""
    server = FakeTtsServer()
    server.failure = (500, b'{"code":"SYNTHESIS_FAILED","message":"boom"}')
    h, _, http = _speaking(server)
    cid = answered_inbound(h)
    _, outcome = _speak(h, http, cid, "Hello")
    assert outcome[0].check(SpeakFailed) and outcome[0].value.status == 502
    assert outcome[0].value.message.startswith("Speak failed: TTS server returned 500")
    server.failure, server.hold = None, True
    _, outcome = _speak(h, http, cid, "Hello")
    h.clock.advance(30)
    assert outcome[0].value.status == 504 and outcome[0].value.message.startswith("Speak timed out: ")
    assert len(h.sink.of("call.speak_error")) == 2


def test_no_tts_is_501_and_unknown_call_404() -> None:
    """Without TTS_URL: 501 with asterisk-api's text; an unknown call: 404 first."""
    h = make("none")
    cid = answered_inbound(h)
    with pytest.raises(SpeakFailed) as e:
        h.run(h.control.speak(cid, "Hello"))
    assert e.value.status == 501 and e.value.message == "TTS not configured — set TTS_URL environment variable"
    with pytest.raises(NotFound):
        h.run(h.control.speak("nope", "Hello"))


def test_a_speak_given_up_by_its_client_stops_its_speech() -> None:
    """The HTTP request is cancelled (client gone) while the speech plays: the playback is stopped too."""
    h, _, http = _speaking()
    cid = answered_inbound(h)
    d, outcome = _speak(h, http, cid, "Hello")
    uuid, _ = _leg_up(h)
    d.cancel()
    assert h.injector.cancelled == [uuid] and h.ari.find("DELETE", f"/channels/avr-media-{uuid}")
    assert h.sink.of("call.speak_error")[0]["data"]["error"] == "Speak cancelled: the request was given up"
