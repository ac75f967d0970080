"""The call-control model: ARI playback, uploaded PCM through externalMedia, and recordings."""

from __future__ import annotations

import pytest
from avr.ari.errors import AriError
from avr.control.errors import Conflict, Invalid, NotFound, Timeout, Unavailable
from avr.control.records import call_id_for
from tests.ari_fakes import (
    answered_inbound,
    ari_404,
    entered_bridge,
    fixture_events,
    hangup_request,
    left_bridge,
    make,
    playback_event,
    recording_event,
    stasis_end,
    stasis_start,
)

# -- ARI media ------------------------------------------------------------------------------------------------------


def test_play_playlist_is_one_ari_playback_and_events_come_once() -> None:
    """A list is one ARI play with comma-joined media and a chosen id; started/finished are published once, in
    order, even when PlaybackStarted precedes the 201 and PlaybackContinuing/Started repeat for each item."""
    h = make("none", ids=["pb-1"])
    cid = answered_inbound(h)
    h.ari.on("POST", f"/channels/{cid}/play/pb-1", hold=True)
    d, outcome = h.start(h.control.play(cid, ["sound:beep", "sound:hello-world"]))
    req = h.ari.find("POST")[0]
    assert req.params == {"media": ["sound:beep", "sound:hello-world"]}
    h.feed(playback_event("PlaybackStarted", "pb-1", cid, "playing"))
    assert h.sink.types() == ["playback.started"]
    h.ari.release()
    assert outcome[0] == {"playbackId": "pb-1", "callId": call_id_for(cid), "kind": "media", "state": "playing",
                          "media": ["sound:beep", "sound:hello-world"]}
    h.feed(playback_event("PlaybackContinuing", "pb-1", cid, "continuing"),
           playback_event("PlaybackStarted", "pb-1", cid, "playing", "sound:hello-world"),
           playback_event("PlaybackFinished", "pb-1", cid, "done", "sound:hello-world"))
    assert h.sink.types() == ["playback.started", "playback.finished"]
    assert h.sink.of("playback.finished")[0]["data"] == {"playbackId": "pb-1", "kind": "media", "status": "done"}
    assert h.sink.of("playback.started")[0]["callId"] == call_id_for(cid)


def test_play_from_capture_missing_file_fails() -> None:
    """The captured missing sound: 201, PlaybackStarted, PlaybackFinished state failed → status failed."""
    cid = "1795262348.261"
    pid = "d8a884e0-908e-47c7-8693-02643572ad6d"
    events = [e for e in fixture_events("playback", cid) if (e.get("playback") or {}).get("id") == pid]
    h = make("none", ids=[pid])
    answered_inbound(h, cid)
    result = h.run(h.control.play(cid, "sound:no-such-sound-file"))
    assert result["playbackId"] == pid
    h.feed(*events)
    assert [e["data"].get("status") for e in h.sink.events] == [None, "failed"]


def test_hangup_during_playback_from_capture() -> None:
    """Hanging up mid-playback: Asterisk reports the playback failed before the call ends."""
    cid = "1795262348.261"
    events = fixture_events("playback", cid)
    h = make("none", ids=["avr-fixture-pb-hangup"])
    answered_inbound(h, cid)
    h.run(h.control.play(cid, ["sound:demo-congrats"]))
    tail = events[next(i for i, e in enumerate(events)
                       if (e.get("playback") or {}).get("id") == "avr-fixture-pb-hangup"):]
    h.feed(*tail)
    assert h.sink.types() == ["playback.started", "playback.finished", "call.ended"]
    assert h.sink.of("playback.finished")[0]["data"]["status"] == "failed"


def test_playback_still_running_when_the_call_ends_is_reported_failed() -> None:
    """A playback whose finish event never came is closed at the call's end."""
    h = make("none", ids=["pb-1"])
    cid = answered_inbound(h)
    h.run(h.control.play(cid, ["sound:beep"]))
    h.feed(hangup_request(cid, 16), stasis_end(cid))
    finished = h.sink.of("playback.finished")
    assert len(finished) == 1 and finished[0]["data"]["status"] == "failed"
    assert finished[0]["data"]["error"] == "the call ended"


@pytest.mark.parametrize("media", [[], "", ["nosuchscheme:foo"], ["sound:a,sound:b"], [" sound:a"], [5],
                                   "beep"])
def test_play_validation(media: object) -> None:
    """Media that Asterisk would accept but never finish (unknown scheme), or that could not be joined, is 422."""
    h = make("none")
    cid = answered_inbound(h)
    with pytest.raises(Invalid):
        h.run(h.control.play(cid, media))  # type: ignore[arg-type]
    assert h.ari.requests == []


def test_play_refusals() -> None:
    """Unknown call 404; ended call 409; outbound call still dialing 409; Asterisk errors keep their status."""
    h = make("none", ids=["out-1"])
    with pytest.raises(NotFound):
        h.run(h.control.play("nope", ["sound:beep"]))
    h.run(h.control.originate("PJSIP/1"))
    with pytest.raises(Conflict, match="not been answered"):
        h.run(h.control.play("out-1", ["sound:beep"]))
    cid = answered_inbound(h)
    h.ari.on("POST", f"/channels/{cid}/play/.*", AriError(412, "Channel in invalid state"))
    with pytest.raises(AriError) as e:
        h.run(h.control.play(cid, ["sound:beep"]))
    assert e.value.status == 412 and h.sink.events == []
    h.feed(hangup_request(cid, 16), stasis_end(cid))
    with pytest.raises(Conflict, match="ended"):
        h.run(h.control.play(cid, ["sound:beep"]))


def test_stop_playback() -> None:
    """Stopping deletes the ARI playback; its PlaybackFinished (state done) is reported as stopped."""
    h = make("none", ids=["pb-1"])
    cid = answered_inbound(h)
    h.run(h.control.play(cid, ["tone:ring;tonezone=us"]))
    h.run(h.control.stop_playback(cid, "pb-1"))
    assert h.ari.find("DELETE", "/playbacks/pb-1")
    h.feed(playback_event("PlaybackFinished", "pb-1", cid, "done"))
    assert h.sink.of("playback.finished")[0]["data"]["status"] == "stopped"
    with pytest.raises(NotFound):
        h.run(h.control.stop_playback(cid, "pb-1"))


def test_stop_playback_of_another_call_or_already_gone() -> None:
    """A playback id of another call is 404; a 404 from Asterisk closes the playback as stopped."""
    h = make("none", ids=["pb-1"])
    a = answered_inbound(h, "a")
    b = answered_inbound(h, "b")
    h.run(h.control.play(a, ["sound:beep"]))
    with pytest.raises(NotFound):
        h.run(h.control.stop_playback(b, "pb-1"))
    h.ari.on("DELETE", "/playbacks/pb-1", ari_404("Playback not found"))
    h.run(h.control.stop_playback(a, "pb-1"))
    assert h.sink.of("playback.finished")[0]["data"]["status"] == "stopped"


# -- uploaded PCM ---------------------------------------------------------------------------------------------------

PCM = b"\x01\x02" * 8000  # 1 s at 8 kHz


def _start_pcm(h, cid, rate=8000):  # type: ignore[no-untyped-def]
    d, outcome = h.start(h.control.play_pcm(cid, PCM, rate))
    (uuid, (pcm, got_rate, played)), = h.injector.expected.items()
    return d, outcome, uuid, pcm, got_rate, played


def test_play_pcm_in_a_temporary_bridge_and_cleanup() -> None:
    """Not bridged: externalMedia (audiosocket/tcp/slin, data=uuid), wait for its StasisStart, temporary bridge
    with both channels; started after bridging; at the end the media channel is hung up and the bridge destroyed."""
    h = make("none")
    cid = answered_inbound(h)
    d, outcome, uuid, pcm, rate, played = _start_pcm(h, cid)
    media = f"avr-media-{uuid}"
    assert rate == 8000 and pcm.endswith(PCM) and len(pcm) == len(PCM) + 2 * 2400 and not pcm[:4800].strip(b"\0")
    assert h.ari.find("POST", "/channels/externalMedia")[0].params == {
        "app": "avr", "external_host": "127.0.0.1:5001", "encapsulation": "audiosocket", "transport": "tcp",
        "format": "slin", "data": uuid, "channelId": media}
    assert outcome == [] and not h.ari.find("POST", "/bridges/.*")
    h.feed(stasis_start(media, args=[uuid]))
    bridge = f"avr-tmp-{uuid}"
    assert h.ari.find("POST", f"/bridges/{bridge}")[0].params == {"type": "mixing", "name": bridge}
    assert h.ari.find("POST", f"/bridges/{bridge}/addChannel")[0].params == {"channel": [cid, media]}
    assert outcome[0] == {"playbackId": uuid, "callId": call_id_for(cid), "kind": "pcm", "state": "playing",
                          "rate": 8000, "durationMs": 1000}
    assert h.sink.types() == ["playback.started"]
    h.feed(entered_bridge(bridge, cid, [cid]), entered_bridge(bridge, media, [cid, media]))
    assert h.sink.types() == ["playback.started"]  # temporary bridges are invisible
    played.callback(None)
    assert h.ari.find("DELETE", f"/channels/{media}") and h.ari.find("DELETE", f"/bridges/{bridge}")
    assert h.sink.of("playback.finished")[0]["data"] == {"playbackId": uuid, "kind": "pcm", "status": "done"}
    assert h.run(h.control.get_call(cid))["state"] == "answered"


def test_play_pcm_into_the_bridge_the_call_is_in() -> None:
    """A bridged call stays in its bridge: only the media channel is added there (D12), nothing is removed."""
    h = make("none")
    a = answered_inbound(h, "a")
    b = answered_inbound(h, "b")
    bridge = h.run(h.control.create_bridge())["id"]
    h.run(h.control.add_to_bridge(bridge, a))
    h.run(h.control.add_to_bridge(bridge, b))
    h.ari.requests.clear()
    d, outcome, uuid, pcm, rate, played = _start_pcm(h, a, 16000)
    media = f"avr-media-{uuid}"
    assert h.ari.find("POST", "/channels/externalMedia")[0].params["format"] == "slin16"
    h.feed(stasis_start(media, args=[uuid]))
    assert [r.path for r in h.ari.find("POST")][1:] == [f"/bridges/{bridge}/addChannel"]
    assert h.ari.find("POST")[1].params == {"channel": media}
    h.feed(entered_bridge(bridge, media, [a, b, media]))
    played.callback(None)
    assert not h.ari.find("POST", ".*/removeChannel") and not h.ari.find("DELETE", "/bridges/.*")
    assert h.run(h.control.get_bridge(bridge))["calls"] == [call_id_for(a), call_id_for(b)]
    assert h.run(h.control.get_call(a))["state"] == "bridged"


def test_play_pcm_media_channel_never_arrives() -> None:
    """No StasisStart within the setup timeout: 504, the injector is cancelled, the media channel hung up."""
    h = make("none")
    cid = answered_inbound(h)
    d, outcome, uuid, pcm, rate, played = _start_pcm(h, cid)
    h.clock.advance(10)
    assert outcome[0].check(Timeout)
    assert h.injector.cancelled == [uuid] and h.ari.find("DELETE", f"/channels/avr-media-{uuid}")
    assert h.sink.events == [] and h.clock.getDelayedCalls() == []


def test_play_pcm_external_media_refused() -> None:
    """Asterisk cannot reach the AudioSocket server (500): the error is raised, nothing is left behind."""
    h = make("none")
    cid = answered_inbound(h)
    h.ari.on("POST", "/channels/externalMedia",
             AriError(500, "An internal error prevented this request from being handled"))
    d, outcome, uuid, pcm, rate, played = _start_pcm(h, cid)
    assert outcome[0].check(AriError) and outcome[0].value.status == 500
    assert h.injector.cancelled == [uuid] and h.sink.events == [] and h.clock.getDelayedCalls() == []


def test_play_pcm_call_hangs_up_mid_playback() -> None:
    """The caller leaves: the injector is cancelled, playback.finished failed, media channel and bridge removed."""
    h = make("none")
    cid = answered_inbound(h)
    d, outcome, uuid, pcm, rate, played = _start_pcm(h, cid)
    h.feed(stasis_start(f"avr-media-{uuid}", args=[uuid]))
    h.feed(hangup_request(cid, 16), stasis_end(cid))
    assert h.injector.cancelled == [uuid]
    finished = h.sink.of("playback.finished")[0]["data"]
    assert finished["status"] == "failed" and finished["error"] == "the call ended"
    assert h.ari.find("DELETE", f"/channels/avr-media-{uuid}") and h.ari.find("DELETE", f"/bridges/avr-tmp-{uuid}")
    assert h.sink.types() == ["playback.started", "call.ended", "playback.finished"]


def test_play_pcm_call_hangs_up_during_setup() -> None:
    """The call ends while the media channel is being set up: 409 and everything is released, no events."""
    h = make("none")
    cid = answered_inbound(h)
    d, outcome, uuid, pcm, rate, played = _start_pcm(h, cid)
    h.feed(hangup_request(cid, 16), stasis_end(cid))
    h.feed(stasis_start(f"avr-media-{uuid}", args=[uuid]))
    assert outcome[0].check(Conflict)
    assert h.sink.types() == ["call.ended"] and h.ari.find("DELETE", f"/channels/avr-media-{uuid}")


def test_stop_pcm_playback() -> None:
    """stop_playback of uploaded audio cancels the injector: status stopped, cleanup done."""
    h = make("none")
    cid = answered_inbound(h)
    d, outcome, uuid, pcm, rate, played = _start_pcm(h, cid)
    h.feed(stasis_start(f"avr-media-{uuid}", args=[uuid]))
    h.run(h.control.stop_playback(cid, uuid))
    assert h.injector.cancelled == [uuid]
    assert h.sink.of("playback.finished")[0]["data"]["status"] == "stopped"
    assert h.ari.find("DELETE", f"/channels/avr-media-{uuid}")


def test_play_pcm_connection_drop_is_a_failed_playback() -> None:
    """The AudioSocket connection drops mid-playback: status failed with the reason."""
    h = make("none")
    cid = answered_inbound(h)
    d, outcome, uuid, pcm, rate, played = _start_pcm(h, cid)
    h.feed(stasis_start(f"avr-media-{uuid}", args=[uuid]))
    played.errback(ConnectionError("playback connection ended early: EOF"))
    finished = h.sink.of("playback.finished")[0]["data"]
    assert finished["status"] == "failed" and "EOF" in finished["error"]


def test_play_pcm_stopped_when_the_call_is_moved_out_of_its_temporary_bridge() -> None:
    """If the call is moved to another bridge, the audio in the temporary bridge can't be heard: it is stopped."""
    h = make("none")
    cid = answered_inbound(h)
    d, outcome, uuid, pcm, rate, played = _start_pcm(h, cid)
    h.feed(stasis_start(f"avr-media-{uuid}", args=[uuid]))
    h.feed(left_bridge(f"avr-tmp-{uuid}", cid, []))
    assert h.sink.of("playback.finished")[0]["data"]["status"] == "stopped"


def test_two_pcm_playbacks_share_the_temporary_bridge() -> None:
    """A second upload while the first plays joins the same temporary bridge, destroyed after the last one."""
    h = make("none")
    cid = answered_inbound(h)
    d1, out1 = h.start(h.control.play_pcm(cid, PCM, 8000))
    first = next(iter(h.injector.expected))
    h.feed(stasis_start(f"avr-media-{first}", args=[first]))
    d2, out2 = h.start(h.control.play_pcm(cid, PCM, 8000))
    second = [u for u in h.injector.expected if u != first][0]
    h.feed(stasis_start(f"avr-media-{second}", args=[second]))
    assert h.ari.find("POST", f"/bridges/avr-tmp-{first}/addChannel")[1].params == {"channel": f"avr-media-{second}"}
    h.injector.expected[first][2].callback(None)
    assert not h.ari.find("DELETE", "/bridges/.*")
    h.injector.expected[second][2].callback(None)
    assert h.ari.find("DELETE", f"/bridges/avr-tmp-{first}")


@pytest.mark.parametrize("pcm,rate", [(b"", 8000), (b"\x00", 8000), (b"\x00\x00", 11025), ("ab", 8000)])
def test_play_pcm_validation(pcm: object, rate: int) -> None:
    """Empty or odd-length PCM and rates AudioSocket cannot carry are 422."""
    h = make("none")
    cid = answered_inbound(h)
    with pytest.raises(Invalid):
        h.run(h.control.play_pcm(cid, pcm, rate))  # type: ignore[arg-type]


def test_play_pcm_unavailable_without_an_audiosocket_address() -> None:
    """No AudioSocket address configured: 503, nothing sent."""
    h = make("none", audiosocket_address=None)
    cid = answered_inbound(h)
    with pytest.raises(Unavailable):
        h.run(h.control.play_pcm(cid, PCM, 8000))
    assert h.ari.requests == []


def test_play_pcm_needs_an_answered_call() -> None:
    """An unanswered inbound call cannot get uploaded audio (409)."""
    h = make("none")
    h.feed(stasis_start("in-1", "Ring"))
    with pytest.raises(Conflict, match="not answered"):
        h.run(h.control.play_pcm("in-1", PCM, 8000))


def test_stop_cancels_a_running_pcm_playback() -> None:
    """Shutdown stops uploaded audio and hangs up its media channel; no timer is left."""
    h = make("none")
    cid = answered_inbound(h)
    d, outcome, uuid, pcm, rate, played = _start_pcm(h, cid)
    h.feed(stasis_start(f"avr-media-{uuid}", args=[uuid]))
    h.control.stop()
    assert h.injector.cancelled == [uuid] and h.ari.find("DELETE", f"/channels/avr-media-{uuid}")
    assert h.clock.getDelayedCalls() == []


# -- recordings -------------------------------------------------------------------------------------------------------

def test_record_from_capture() -> None:
    """Recording: ARI parameters, one recording.started (event before 201), recording.finished with duration."""
    cid = "1795262358.263"
    events = [e for e in fixture_events("recording", cid) if (e.get("recording") or {}).get("name") ==
              "avr-fixture-rec1"]
    h = make("none")
    answered_inbound(h, cid)
    h.ari.on("POST", f"/channels/{cid}/record", hold=True)
    d, outcome = h.start(h.control.record(cid, "avr-fixture-rec1", max_duration=2))
    assert h.ari.find("POST")[0].params == {"name": "avr-fixture-rec1", "format": "wav", "maxDurationSeconds": 2,
                                            "beep": False, "ifExists": "fail", "terminateOn": "none"}
    h.feed(events[0])
    h.ari.release()
    assert outcome[0] == {"name": "avr-fixture-rec1", "callId": call_id_for(cid), "format": "wav",
                          "state": "recording"}
    h.feed(*events[1:])
    assert h.sink.types() == ["recording.started", "recording.finished"]
    assert h.sink.of("recording.finished")[0]["data"] == {"name": "avr-fixture-rec1", "format": "wav",
                                                           "state": "done", "duration": 1}
    assert h.run(h.control.get_call(cid))["recordings"] == ["avr-fixture-rec1"]


def test_record_default_name_and_conflicts() -> None:
    """The default name is derived from the call; a name in use or existing (409) is a Conflict."""
    h = make("none")
    cid = answered_inbound(h, "1795262358.263")
    h.clock.advance(1.5)
    result = h.run(h.control.record(cid))
    assert result["name"] == f"call-{call_id_for(cid)}-1500"  # asterisk-api's call-<callId>-<epoch ms>
    with pytest.raises(Conflict, match="in progress"):
        h.run(h.control.record(cid, result["name"]))
    h.ari.on("POST", f"/channels/{cid}/record",
             AriError(409, "Recording 'x' already exists and can not be overwritten"))
    with pytest.raises(Conflict, match="already exists"):
        h.run(h.control.record(cid, "x"))


@pytest.mark.parametrize("kwargs", [{"name": "../etc"}, {"name": "a/b"}, {"name": ""}, {"name": ".hidden"},
                                    {"name": "a..b"}])
def test_record_validation(kwargs: dict) -> None:
    """A recording name that could point outside Asterisk's recording directory is 422 before Asterisk is asked
    (the routes check the other options' wire limits)."""
    h = make("none")
    cid = answered_inbound(h)
    with pytest.raises(Invalid):
        h.run(h.control.record(cid, **kwargs))
    assert h.ari.requests == []


def test_recording_failed_and_call_end() -> None:
    """RecordingFailed → state failed; a recording still live at the call's end → state unknown."""
    h = make("none")
    cid = answered_inbound(h)
    h.run(h.control.record(cid, "r1"))
    h.run(h.control.record(cid, "r2"))
    h.feed(recording_event("RecordingFailed", "r1", cid, "failed"))
    h.feed(hangup_request(cid, 16), stasis_end(cid))
    states = {e["data"]["name"]: e["data"]["state"] for e in h.sink.of("recording.finished")}
    assert states == {"r1": "failed", "r2": "unknown"}


def test_stop_and_cancel_recording() -> None:
    """Stop keeps the file, cancel discards it; an unknown live recording is 404."""
    h = make()
    assert h.run(h.control.stop_recording("r1")) == {"name": "r1", "status": "stopped"}
    assert h.ari.find("POST", "/recordings/live/r1/stop")
    assert h.run(h.control.cancel_recording("r1"))["status"] == "cancelled"
    assert h.ari.find("DELETE", "/recordings/live/r1")
    h.ari.on("POST", "/recordings/live/r9/stop", ari_404("Recording not found"))
    with pytest.raises(NotFound):
        h.run(h.control.stop_recording("r9"))


def test_stored_recordings() -> None:
    """List, get, copy (409 on an existing name), delete and download of stored recordings."""
    h = make()
    h.ari.on("GET", "/recordings/stored", [{"name": "r1", "format": "wav"}])
    h.ari.on("GET", "/recordings/stored/r1", {"name": "r1", "format": "wav"})
    h.ari.on("GET", "/recordings/stored/r9", ari_404("Recording not found"))
    h.ari.on("POST", "/recordings/stored/r1/copy", {"name": "r2", "format": "wav"}, once=True)
    assert h.run(h.control.list_recordings()) == [{"name": "r1", "format": "wav"}]
    assert h.run(h.control.get_recording("r1")) == {"name": "r1", "format": "wav"}
    with pytest.raises(NotFound):
        h.run(h.control.get_recording("r9"))
    assert h.run(h.control.copy_recording("r1", "r2")) == {"name": "r2", "format": "wav"}
    assert h.ari.find("POST", "/recordings/stored/r1/copy")[0].params == {"destinationRecordingName": "r2"}
    h.ari.on("POST", "/recordings/stored/r1/copy",
             AriError(409, "A recording with the same name already exists on the system"))
    with pytest.raises(Conflict):
        h.run(h.control.copy_recording("r1", "r2"))
    assert h.run(h.control.delete_recording("r1")) == {"name": "r1", "status": "deleted"}
    response = object()
    h.ari.on("STREAM", "/recordings/stored/r1/file", response)
    assert h.run(h.control.recording_file("r1")) is response
    h.ari.on("STREAM", "/recordings/stored/r9/file", ari_404("Recording not found"))
    with pytest.raises(NotFound):
        h.run(h.control.recording_file("r9"))
    with pytest.raises(Invalid):
        h.run(h.control.delete_recording("../x"))



def test_a_media_leg_is_in_the_call_registry_while_its_channel_exists() -> None:
    """An uploaded-audio playback's leg is readable by its channel id (part of its call, not listed) until released."""
    h = make("none")
    cid = answered_inbound(h)
    h.clock.advance(5)
    d, outcome, uuid, pcm, rate, played = _start_pcm(h, cid)
    media = f"avr-media-{uuid}"
    assert h.run(h.control.get_call(media)) == {"id": media, "kind": "media", "channelId": media, "uuid": uuid,
                                                "callId": call_id_for(cid), "state": "answered",
                                                "createdAt": "1970-01-01T00:00:05.000Z"}
    assert [c["id"] for c in h.run(h.control.list_calls())] == [call_id_for(cid)]
    with pytest.raises(Conflict):  # call control never acts on a leg as on a call
        h.run(h.control.hangup(media))
    h.feed(stasis_start(media, args=[uuid]))
    played.callback(None)
    with pytest.raises(NotFound):
        h.run(h.control.get_call(media))
