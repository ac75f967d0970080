"""
Media in the fake Asterisk against the numbers the captures pin down: playback lengths and queueing, pause and
playlists, recordings' files and ``ifExists``, ``terminateOn``, and DTMF timing, all on the injected clock.
"""

from __future__ import annotations

import pytest
from fake_ari_harness import Harness, load_fixture, types_since, wav_duration


def test_hello_world_lasts_1_40_seconds() -> None:
    """PlaybackStarted at once, PlaybackFinished ``done`` 1.40 s later (fact 20)."""
    h = Harness()
    sock = h.connect()
    cid = h.originate_local()["id"]
    start = len(sock.events)
    status, headers, body = h.request("POST", f"/channels/{cid}/play", {"media": "sound:hello-world"})
    assert status == 201 and headers.getRawHeaders(b"location") == [f"/ari/playbacks/{body['id']}".encode()]
    assert types_since(sock, start, "Playback") == ["PlaybackStarted"]
    h.advance(1.39)
    assert types_since(sock, start, "Playback") == ["PlaybackStarted"]
    h.advance(0.02)
    assert types_since(sock, start, "Playback") == ["PlaybackStarted", "PlaybackFinished"]
    assert sock.events[-1]["playback"]["state"] == "done"
    assert h.request("GET", f"/playbacks/{body['id']}")[0] == 404


def test_playbacks_queue_and_pause() -> None:
    """A second play waits for the first; pause stops the clock with no event; unpause sends PlaybackStarted."""
    h = Harness()
    sock = h.connect()
    cid = h.originate_local()["id"]
    start = len(sock.events)
    first = h.request("POST", f"/channels/{cid}/play", {"media": "sound:hello-world"})[2]
    second = h.request("POST", f"/channels/{cid}/play/p2", {"media": "sound:beep"})[2]
    assert second["state"] == "queued" and h.request("GET", "/playbacks/p2")[2]["state"] == "queued"
    assert h.request("POST", "/playbacks/p2/control", {"operation": "pause"})[0] == 409
    h.advance(0.4)
    assert h.request("POST", f"/playbacks/{first['id']}/control", {"operation": "pause"})[0] == 204
    assert h.request("GET", f"/playbacks/{first['id']}")[2]["state"] == "paused"
    h.advance(5)
    assert types_since(sock, start, "Playback") == ["PlaybackStarted"]
    h.request("POST", f"/playbacks/{first['id']}/control", {"operation": "unpause"})
    h.advance(0.99)
    assert types_since(sock, start, "Playback") == ["PlaybackStarted", "PlaybackStarted"]
    h.advance(0.02)
    assert types_since(sock, start, "Playback") == ["PlaybackStarted", "PlaybackStarted", "PlaybackFinished",
                                               "PlaybackStarted"]  # fmt: skip
    assert [e for e in sock.events if e["type"] == "PlaybackStarted"][-1]["playback"]["id"] == "p2"


def test_a_queued_playback_stopped_before_it_starts_never_plays() -> None:
    """``DELETE /playbacks/{id}`` of a queued playback: 204, no event, gone; the next command starts as usual."""
    h = Harness()
    sock = h.connect()
    cid = h.originate_local()["id"]
    start = len(sock.events)
    h.request("POST", f"/channels/{cid}/play/p1", {"media": "sound:hello-world"})
    h.request("POST", f"/channels/{cid}/play/p2", {"media": "sound:beep"})
    h.request("POST", f"/channels/{cid}/play/p3", {"media": "sound:beep"})
    assert h.request("DELETE", "/playbacks/p2")[0] == 204
    assert h.request("GET", "/playbacks/p2")[0] == 404
    h.advance(3.0)
    played = [(e["type"], e["playback"]["id"]) for e in sock.events[start:] if e["type"].startswith("Playback")]
    assert played == [("PlaybackStarted", "p1"), ("PlaybackFinished", "p1"), ("PlaybackStarted", "p3"),
                      ("PlaybackFinished", "p3")]  # fmt: skip


def test_destroying_a_bridge_stops_its_playbacks_and_recordings() -> None:
    """
    ``DELETE /bridges/{id}`` while a bridge playback runs, another waits and a bridge recording runs: the running
    playback finishes ``done``, the waiting one is dropped without an event, the recording finishes and is stored
    (the app subscribed to the bridge explicitly, so it also gets BridgeDestroyed: fact 23).
    """
    h = Harness()
    sock = h.connect()
    cid = h.call(h.fake.inbound_call, "100", "6000", answered=True)
    h.request("POST", "/bridges/b1")
    h.request("POST", "/applications/avr/subscription", {"eventSource": "bridge:b1"})
    h.request("POST", "/bridges/b1/addChannel", {"channel": cid})
    h.request("POST", "/bridges/b1/play/bp1", {"media": "sound:hello-world"})
    h.request("POST", "/bridges/b1/play/bp2", {"media": "sound:beep"})
    h.request("POST", "/bridges/b1/record", {"name": "br", "format": "wav"})
    start = len(sock.events)
    h.advance(1.0)
    assert h.request("DELETE", "/bridges/b1")[0] == 204
    media = [(e["type"], (e.get("playback") or e.get("recording") or {}).get("state")) for e in sock.events[start:]
             if e["type"].startswith(("Playback", "Recording"))]  # fmt: skip
    assert media == [("PlaybackFinished", "done"), ("RecordingFinished", "done")]
    assert sock.events[-1]["type"] == "BridgeDestroyed"
    assert h.request("GET", "/playbacks/bp2")[0] == 404 and not h.fake.playbacks and not h.fake.live_recordings
    assert h.request("GET", "/recordings/stored/br")[2] == {"name": "br", "format": "wav"}
    h.advance(2.0)
    assert not [e for e in sock.events[start:] if e["type"] == "PlaybackStarted"]


def test_playlist_missing_file_and_unknown_scheme() -> None:
    """A comma list plays in order under one id; a missing file fails at once; an unknown scheme never ends."""
    h = Harness()
    sock = h.connect()
    cid = h.originate_local()["id"]
    start = len(sock.events)
    h.request("POST", f"/channels/{cid}/play/list", {"media": "sound:beep,sound:hello-world"})
    h.advance(2)
    playbacks = [e for e in sock.events[start:] if "playback" in e]
    assert [(e["type"], e["playback"]["state"], e["playback"]["media_uri"]) for e in playbacks] == [
        ("PlaybackStarted", "playing", "sound:beep"), ("PlaybackContinuing", "continuing", "sound:beep"),
        ("PlaybackStarted", "playing", "sound:hello-world"), ("PlaybackFinished", "done", "sound:hello-world")]
    start = len(sock.events)
    h.request("POST", f"/channels/{cid}/play", {"media": "sound:no-such-file"})
    assert [e["playback"]["state"] for e in sock.events[start:] if "playback" in e] == ["playing", "failed"]
    start = len(sock.events)
    h.request("POST", f"/channels/{cid}/play/odd", {"media": "nosuchscheme:x"})
    h.advance(30)
    assert types_since(sock, start, "Playback") == ["PlaybackStarted"] and h.request("GET", "/playbacks/odd")[0] == 200
    assert h.request("POST", f"/channels/{cid}/play", {"media": "sound:beep"})[0] == 201
    h.advance(1)
    assert types_since(sock, start, "Playback")[-1] == "PlaybackFinished"  # the stuck one does not block the channel


def test_play_needs_media_and_a_valid_state() -> None:
    """No media → 500; a channel made with /channels/create (Down) → 412 Channel in invalid state."""
    h = Harness()
    h.connect()
    cid = h.originate_local()["id"]
    assert h.request("POST", f"/channels/{cid}/play")[2] == {"message": "Failed to queue media for playback"}
    created = h.request("POST", "/channels/create", {"endpoint": "Local/6100@cap-ari", "app": "avr"})[2]
    assert h.request("POST", f"/channels/{created['id']}/play", {"media": "sound:beep"})[:3:2] == (
        412, {"message": "Channel in invalid state"})  # fmt: skip


def test_recording_files_and_if_exists() -> None:
    """maxDurationSeconds ends a recording; the stored file is a WAV of that length; append/overwrite/fail/copy."""
    h = Harness()
    sock = h.connect()
    cid = h.originate_local()["id"]
    start = len(sock.events)
    status, headers, body = h.request("POST", f"/channels/{cid}/record",
                                      {"name": "r1", "format": "wav", "maxDurationSeconds": "2"})  # fmt: skip
    assert status == 201 and headers.getRawHeaders(b"location") == [b"/ari/recordings/live/r1"]
    h.advance(2.01)
    assert types_since(sock, start, "Recording") == ["RecordingStarted", "RecordingFinished"]
    assert sock.events[-1]["recording"]["duration"] == 2
    data = h.request("GET", "/recordings/stored/r1/file")[2]
    assert data[:4] == b"RIFF" and wav_duration(data) == pytest.approx(2.0, abs=0.02)
    assert h.request("POST", f"/channels/{cid}/record", {"name": "r1", "format": "wav"})[0] == 409
    h.request("POST", f"/channels/{cid}/record", {"name": "r1", "format": "wav", "ifExists": "append"})
    h.advance(1)
    assert h.request("POST", "/recordings/live/r1/stop")[0] == 204
    assert wav_duration(h.request("GET", "/recordings/stored/r1/file")[2]) == pytest.approx(3.0, abs=0.02)
    assert h.request("POST", "/recordings/stored/r1/copy", {"destinationRecordingName": "r2"})[2] == {
        "name": "r2", "format": "wav"}  # fmt: skip
    h.request("POST", f"/channels/{cid}/record", {"name": "r2", "format": "wav", "ifExists": "overwrite"})
    h.advance(0.5)
    assert h.request("DELETE", "/recordings/live/r2")[0] == 204
    assert h.request("GET", "/recordings/stored/r2")[0] == 404  # cancel discards (fact 21)


def test_recording_pause_and_terminate_on_dtmf() -> None:
    """Paused time is not recorded; ``terminateOn=#`` stops on the caller's #."""
    h = Harness()
    sock = h.connect()
    cid = h.call(h.fake.inbound_call, "100", "6000", answered=True)
    h.request("POST", f"/channels/{cid}/record", {"name": "m", "format": "sln16", "terminateOn": "#"})
    h.advance(1)
    h.request("POST", "/recordings/live/m/pause")
    assert h.request("GET", "/recordings/live/m")[2]["state"] == "paused"
    h.advance(3)
    h.request("DELETE", "/recordings/live/m/pause")
    h.advance(1)
    h.call(h.fake.remote_dtmf, cid, "5#")
    h.advance(0.5)
    assert sock.events[-1]["type"] == "RecordingFinished" and sock.events[-1]["recording"]["duration"] == 2
    assert len(h.fake.stored_recordings["m"].data) == pytest.approx(2.3 * 32000, rel=0.01)


def test_dtmf_timing_matches_the_capture() -> None:
    """POST /dtmf → 204 at once; digits reach the Local peer at the captured offsets (``12#``, 120 ms, 100 ms)."""
    capture = load_fixture("dtmf")["entries"]
    request = next(e for e in capture if e.get("kind") == "rest" and e["path"].endswith("/dtmf"))
    digits = [e for e in capture if e.get("kind") == "event" and e["event"]["type"] == "ChannelDtmfReceived"][:3]
    expected = [round((e["t_ms"] - request["t_request_ms"]) / 1000, 1) for e in digits]
    h = Harness(app="avr-ari")
    sock = h.connect("avr-ari")
    h.request("POST", "/channels", {"endpoint": "Local/6102@cap-ari", "app": "avr-ari", "channelId": "a",
                                    "otherChannelId": "b"})  # fmt: skip
    h.request("POST", "/channels/b/answer")
    start = len(sock.events)
    assert h.request("POST", "/channels/a/dtmf", {"dtmf": "12#", "between": "100", "duration": "120"})[0] == 204
    seen = []
    for step in range(80):
        h.advance(0.01)
        seen += [(round((step + 1) * 0.01, 2), e) for e in sock.events[start + len(seen):]
                 if e["type"] == "ChannelDtmfReceived"]
    assert [(e["digit"], e["channel"]["id"]) for _, e in seen] == [("1", "b"), ("2", "b"), ("#", "b")]
    assert [round(t, 1) for t, _ in seen] == expected
