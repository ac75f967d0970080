"""
The fake Asterisk's scenario controls and the behaviour the captures pin down in numbers (timings, causes), for the
parts the replays of ``test_fake_ari.py`` do not reach: PJSIP-like endpoints, inbound calls, far-end hangups and
DTMF, externalMedia's AudioSocket connection, leftovers, stop/start, and the helpers (media timing is in
``test_fake_ari_media.py``).
"""

from __future__ import annotations

import struct
import uuid

import pytest
from fake_ari_harness import Harness, types_since, wav_duration

from avr.testing.ari_clock import format_timestamp
from avr.testing.ari_dialplan import parse_dialplan
from avr.testing.ari_dtmf import dtmf_schedule
from avr.testing.ari_params import parse_caller_id
from avr.testing.ari_recordings import wav_bytes

# --------------------------------------------------------------------------------------------------------------------
# Inbound calls and the far end


def test_inbound_call_enters_stasis_ringing_with_args() -> None:
    """``inbound_call``: a PJSIP channel in state Ring, StasisStart with the args, caller number set (fact 18)."""
    h = Harness()
    sock = h.connect()
    cid = h.call(h.fake.inbound_call, "+15551234", "6000", args=["inbound", "6000"], caller_name="Alice")
    (event,) = sock.events
    assert event["type"] == "StasisStart" and event["args"] == ["inbound", "6000"]
    channel = event["channel"]
    assert channel["id"] == cid and channel["state"] == "Ring" and channel["name"].startswith("PJSIP/trunk-")
    assert channel["caller"] == {"name": "Alice", "number": "+15551234"}
    assert channel["dialplan"]["app_name"] == "Stasis" and channel["dialplan"]["app_data"] == "avr,inbound,6000"
    assert h.request("POST", f"/channels/{cid}/answer")[0] == 204
    assert sock.events[-1]["type"] == "ChannelStateChange" and sock.events[-1]["channel"]["state"] == "Up"
    answered = h.call(h.fake.inbound_call, "100", "6000", answered=True)
    assert h.fake.channels[answered].state == "Up"


def test_inbound_call_without_socket_is_hung_up_at_once() -> None:
    """No socket for the app: STASISSTATUS=FAILED, the channel is gone, nobody gets an event (fact 28)."""
    h = Harness()
    cid = h.call(h.fake.inbound_call, "100", "6000")
    assert cid not in h.fake.channels and h.fake.events == []


def test_remote_hangup_of_an_inbound_call() -> None:
    """
    Far-end hangup: ChannelHangupRequest with the Q.850 cause and no ``soft``, then StasisEnd. A channel that came
    in through the dialplan is unsubscribed at StasisEnd, so ChannelDestroyed is not delivered (as captured for
    ``avr-fixture-chan-1-far`` in originate_local_channel.json).
    """
    h = Harness()
    sock = h.connect()
    cid = h.call(h.fake.inbound_call, "100", "6000")
    h.call(h.fake.remote_hangup, cid, 17)
    assert types_since(sock, 1) == ["ChannelHangupRequest", "StasisEnd"]
    assert sock.events[1]["cause"] == 17 and "soft" not in sock.events[1]
    assert cid not in h.fake.channels


def test_remote_hangup_of_an_originated_channel_reports_the_destroy() -> None:
    """An originated channel stays subscribed: ChannelHangupRequest {16} → StasisEnd → … → ChannelDestroyed."""
    h = Harness()
    h.fake.add_endpoint("1000")
    sock = h.connect()
    status, _, body = h.request("POST", "/channels", {"endpoint": "PJSIP/1000", "app": "avr"})
    start = len(sock.events)
    h.call(h.fake.remote_hangup, body["id"])
    assert types_since(sock, start) == ["ChannelHangupRequest", "StasisEnd", "ChannelVarset", "ChannelDestroyed"]
    destroyed = sock.events[-1]
    assert destroyed["cause"] == 16 and destroyed["cause_txt"] == "Normal Clearing"


def test_remote_dtmf_arrives_digit_by_digit() -> None:
    """``remote_dtmf``: one ChannelDtmfReceived per digit, each when it ends (100 ms digits, 100 ms gaps)."""
    h = Harness()
    sock = h.connect()
    cid = h.call(h.fake.inbound_call, "100", "6000", answered=True)
    h.call(h.fake.remote_dtmf, cid, "1#")
    h.advance(0.099)
    assert types_since(sock, 1) == []
    h.advance(0.002)
    assert [e["digit"] for e in sock.events[1:]] == ["1"]
    h.advance(0.2)
    assert [(e["digit"], e["duration_ms"]) for e in sock.events[1:]] == [("1", 100), ("#", 100)]


# --------------------------------------------------------------------------------------------------------------------
# PJSIP-like endpoints


def test_endpoint_that_answers_after_a_delay() -> None:
    """``answer="auto", delay=2``: Ringing and Dial RINGING first, then Up, Dial ANSWER and StasisStart."""
    h = Harness()
    h.fake.add_endpoint("1000", delay=2.0)
    sock = h.connect()
    status, _, body = h.request("POST", "/channels", {"endpoint": "PJSIP/1000", "app": "avr", "appArgs": "x"})
    assert status == 200 and body["state"] == "Down" and body["name"].startswith("PJSIP/1000-")
    assert body["dialplan"]["app_name"] == "AppDial2"
    assert types_since(sock) == ["Dial", "ChannelStateChange", "Dial"]
    assert [e.get("dialstatus") for e in sock.events] == ["", None, "RINGING"]
    h.advance(1.9)
    assert len(sock.events) == 3
    h.advance(0.2)
    assert types_since(sock, 3) == ["ChannelStateChange", "Dial", "ChannelVarset", "StasisStart"]
    assert sock.events[-1]["args"] == ["x"]
    endpoint = h.request("GET", "/endpoints/PJSIP/1000")[2]
    assert endpoint == {"technology": "PJSIP", "resource": "1000", "state": "online", "channel_ids": [body["id"]]}


def test_endpoint_that_never_answers_times_out_with_cause_19() -> None:
    """``answer="never"`` with ``timeout=3``: ChannelDestroyed cause 19 after 3 s (as Local/6105 in the capture)."""
    h = Harness()
    h.fake.add_endpoint("1001", answer="never")
    sock = h.connect()
    body = h.request("POST", "/channels", {"endpoint": "PJSIP/1001", "app": "avr", "timeout": "3"})[2]
    h.advance(2.9)
    assert body["id"] in h.fake.channels
    h.advance(0.2)
    assert sock.events[-1]["type"] == "ChannelDestroyed" and sock.events[-1]["cause"] == 19
    assert sock.events[-1]["cause_txt"] == "User alerting, no answer"


def test_busy_endpoint_and_unknown_endpoint() -> None:
    """``answer="busy"``: Dial BUSY, ChannelDestroyed 17; an unconfigured endpoint: 500 Allocation failed."""
    h = Harness()
    h.fake.add_endpoint("1002", answer="busy")
    sock = h.connect()
    h.request("POST", "/channels", {"endpoint": "PJSIP/1002", "app": "avr"})
    assert [(e["type"], e.get("dialstatus"), e.get("cause")) for e in sock.events] == [
        ("Dial", "", None), ("Dial", "BUSY", None), ("ChannelDestroyed", None, 17)]  # fmt: skip
    status, _, body = h.request("POST", "/channels", {"endpoint": "PJSIP/9999", "app": "avr"})
    assert (status, body) == (500, {"error": "Allocation failed"})


def test_manual_endpoint_answers_on_command_and_dtmf_is_recorded() -> None:
    """``answer="manual"`` rings until `answer_remote`; DTMF sent to a PJSIP channel lands in ``sent_dtmf``."""
    h = Harness()
    h.fake.add_endpoint("1003", answer="manual")
    sock = h.connect()
    cid = h.request("POST", "/channels", {"endpoint": "PJSIP/1003", "app": "avr", "timeout": "-1"})[2]["id"]
    h.advance(60)
    assert h.fake.channels[cid].state == "Ringing"
    assert h.request("POST", f"/channels/{cid}/answer")[0] == 409  # not in Stasis yet
    h.call(h.fake.answer_remote, cid)
    assert sock.events[-1]["type"] == "StasisStart"
    assert h.request("POST", f"/channels/{cid}/dtmf", {"dtmf": "12"})[0] == 204
    h.advance(1)
    assert h.fake.sent_dtmf[cid] == ["1", "2"]


def test_dtmf_loopback_option() -> None:
    """With ``dtmf_loopback=True`` digits sent to a PJSIP channel come back as ChannelDtmfReceived on it."""
    h = Harness(dtmf_loopback=True)
    sock = h.connect()
    cid = h.call(h.fake.inbound_call, "100", "6000", answered=True)
    h.request("POST", f"/channels/{cid}/dtmf", {"dtmf": "7"})
    h.advance(0.5)
    assert [(e["type"], e["digit"]) for e in sock.events if "digit" in e] == [("ChannelDtmfReceived", "7")]
    assert h.fake.sent_dtmf[cid] == ["7"]


def test_bridge_technology_follows_the_member_count() -> None:
    """A mixing bridge is simple_bridge with two members, softmix with three, simple again with two; holding."""
    h = Harness()
    h.connect()
    ids = [h.call(h.fake.inbound_call, str(n), "6000", answered=True) for n in range(3)]
    bridge = h.request("POST", "/bridges/b1", {"type": "mixing"})[2]
    assert bridge["technology"] == "simple_bridge" and bridge["channels"] == []
    h.request("POST", "/bridges/b1/addChannel", {"channel": ",".join(ids[:2])})
    assert h.request("GET", "/bridges/b1")[2]["technology"] == "simple_bridge"
    h.request("POST", "/bridges/b1/addChannel", {"channel": ids[2]})
    assert h.request("GET", "/bridges/b1")[2]["technology"] == "softmix"
    h.request("POST", "/bridges/b1/removeChannel", {"channel": ids[0]})
    assert h.request("GET", "/bridges/b1")[2]["technology"] == "simple_bridge"
    holding = h.request("POST", "/bridges", {"type": "holding", "name": "hold"})[2]
    assert (holding["technology"], holding["bridge_type"]) == ("holding_bridge", "holding")
    assert h.request("POST", "/bridges?type=bogus")[0] == 500
    assert [r.path for r in h.fake.requests][-1] == "/ari/bridges" and h.fake.requests[-1].authorized


def test_endpoint_listing() -> None:
    """``GET /endpoints`` lists configured endpoints; an unknown technology or resource is 404 as captured."""
    h = Harness()
    assert h.request("GET", "/endpoints")[2] == []
    h.fake.add_endpoint("1000")
    assert h.request("GET", "/endpoints")[2] == [
        {"technology": "PJSIP", "resource": "1000", "state": "online", "channel_ids": []}]  # fmt: skip
    assert h.request("GET", "/endpoints/PJSIP")[0] == 200
    assert h.request("GET", "/endpoints/PJSIP/2000")[2] == {"message": "Endpoint not found"}
    assert h.request("GET", "/endpoints/Local")[2] == {"message": "No Endpoints found - invalid tech Local"}


# --------------------------------------------------------------------------------------------------------------------
# externalMedia / AudioSocket


def test_external_media_connects_and_sends_the_uuid_frame() -> None:
    """During the POST the fake connects to external_host and sends ``01 00 10`` + the UUID; DELETE closes it."""
    h = Harness()
    sock = h.connect()
    data = str(uuid.uuid4())
    status, _, body = h.request("POST", "/channels/externalMedia", {
        "app": "avr", "external_host": "127.0.0.1:5101", "encapsulation": "audiosocket", "transport": "tcp",
        "format": "slin16", "data": data, "channelId": "em"})  # fmt: skip
    assert status == 200 and body["name"] == f"AudioSocket/127.0.0.1:5101-{data}" and body["state"] == "Down"
    assert body["channelvars"] == {"AUDIOSOCKET_SERVICE": "127.0.0.1:5101", "AUDIOSOCKET_UUID": data}
    (server,) = h.audiosocket_servers
    assert bytes(server.received) == b"\x01\x00\x10" + uuid.UUID(data).bytes
    assert types_since(sock) == ["Dial", "ChannelStateChange", "Dial", "ChannelVarset", "StasisStart"]
    assert sock.events[-1]["args"] == [data]
    assert h.request("GET", "/channels/em/variable", {"variable": "CHANNEL(audionativeformat)"})[2] == {
        "value": "(slin16)"}  # fmt: skip
    h.fake.audiosocket("em").send_audio(0x12, b"\x00" * 640)
    h.pump()
    assert len(server.received) == 19 + 3 + 640
    h.request("DELETE", "/channels/em")
    assert server.lost


@pytest.mark.logs_errors(r"Received AudioSocket message other than hangup or audio \(kind 0x01\)")
def test_external_media_server_hangup_and_invalid_kind() -> None:
    """A 0x00 frame from the server closes the connection and hangs the channel up; an invalid kind resets it."""
    h = Harness()
    sock = h.connect()
    for name in ("a", "b"):
        h.request("POST", "/channels/externalMedia", {"app": "avr", "external_host": "127.0.0.1:5101",
                  "encapsulation": "audiosocket", "transport": "tcp", "format": "slin", "channelId": name,
                  "data": str(uuid.uuid4())})  # fmt: skip
    server_a, server_b = h.audiosocket_servers
    server_a.transport.write(b"\x00\x00\x00")
    h.pump()
    assert "a" not in h.fake.channels and server_a.lost
    assert [e["type"] for e in sock.events if e.get("channel", {}).get("id") == "a"][-1] == "ChannelDestroyed"
    server_b.transport.write(b"\x01\x00\x10" + bytes(16))
    h.pump()
    assert "b" not in h.fake.channels and h.fake.audiosockets == {}


def test_external_media_refused_and_skipped() -> None:
    """Nothing listening → 500; with ``audiosocket_endpoint=None`` the channel is made without a connection."""
    h = Harness(audiosocket_ports=())
    h.connect()
    params = {"app": "avr", "external_host": "127.0.0.1:5199", "encapsulation": "audiosocket",
              "transport": "tcp", "format": "slin", "data": str(uuid.uuid4())}  # fmt: skip
    assert h.request("POST", "/channels/externalMedia", params)[:3:2] == (
        500, {"message": "An internal error prevented this request from being handled"})  # fmt: skip
    assert h.fake.channels == {}
    skip = Harness(audiosocket_endpoint=None)
    skip.connect()
    assert skip.request("POST", "/channels/externalMedia", params)[0] == 200


def test_snoop_and_bridge_with_external_media() -> None:
    """A snoop channel (spy=in) bridged with an externalMedia channel: two members, simple_bridge."""
    h = Harness()
    h.connect()
    cid = h.call(h.fake.inbound_call, "100", "6000", answered=True)
    snoop = h.request("POST", f"/channels/{cid}/snoop", {"spy": "in", "app": "avr"})[2]
    assert snoop["name"].startswith(f"Snoop/{cid}-") and snoop["state"] == "Up"
    h.request("POST", "/channels/externalMedia", {"app": "avr", "external_host": "127.0.0.1:5101", "format":
              "slin16", "encapsulation": "audiosocket", "transport": "tcp", "data": str(uuid.uuid4()),
              "channelId": "em"})  # fmt: skip
    bridge = h.request("POST", "/bridges", {"type": "mixing"})[2]
    h.request("POST", f"/bridges/{bridge['id']}/addChannel", {"channel": f"{snoop['id']},em"})
    got = h.request("GET", f"/bridges/{bridge['id']}")[2]
    assert got["technology"] == "simple_bridge" and got["channels"] == sorted([snoop["id"], "em"])
    h.call(h.fake.remote_hangup, cid)
    assert snoop["id"] not in h.fake.channels  # the snoop goes with its target


# --------------------------------------------------------------------------------------------------------------------
# Stop / start and the model's helpers


def test_leftovers_name_every_live_channel_and_bridge() -> None:
    """
    `leftovers` lists each live channel (where it is) and bridge (its members); `assert_no_leftovers` fails with
    that list and passes once everything has been hung up and destroyed.
    """
    h = Harness()
    h.connect()
    h.fake.add_endpoint("1000", answer="manual")
    inbound = h.call(h.fake.inbound_call, "100", "6000", answered=True, channel_id="in-1")
    ringing = h.request("POST", "/channels", {"endpoint": "PJSIP/1000", "app": "avr", "channelId": "out-1"})[2]
    h.request("POST", "/bridges/b1", {"name": "conf"})
    h.request("POST", "/bridges/b1/addChannel", {"channel": inbound})
    left = h.fake.leftovers()
    assert left == [
        f"channel in-1 {h.fake.channels['in-1'].name} (Up, in Stasis app avr, in bridge b1)",
        f"channel out-1 {ringing['name']} (Ringing, dialling)",
        "bridge b1 'conf' (mixing: in-1)",
    ]
    with pytest.raises(AssertionError, match="(?s)still holds:.*in-1.*out-1.*bridge b1"):
        h.fake.assert_no_leftovers()
    h.request("DELETE", "/channels/in-1")
    h.request("DELETE", "/channels/out-1")
    assert h.fake.leftovers() == ["bridge b1 'conf' (mixing: empty)"]
    h.request("DELETE", "/bridges/b1")
    h.fake.assert_no_leftovers()


def test_local_channels_in_the_dialplan_are_leftovers_too() -> None:
    """A Local pair whose ;2 half runs the dialplan (``Wait(60)``) is listed until it hangs up."""
    h = Harness()
    h.connect()
    one = h.originate_local("6100")
    h.advance(1.0)
    left = h.fake.leftovers()
    assert len(left) == 2 and left[0].startswith(f"channel {one['id']} ") and "in Stasis app avr" in left[0]
    assert "(Up, in dialplan cap-ari,6100,2 (Wait))" in left[1]
    h.request("DELETE", f"/channels/{one['id']}")
    assert h.fake.leftovers() == []


def test_stop_refuses_and_start_comes_back_empty() -> None:
    """``stop()``: sockets dropped without a close frame, REST connections aborted; ``start()``: fresh state."""
    h = Harness()
    sock = h.connect()
    h.originate_local()
    h.fake.stop()
    h.pump()
    assert sock.client.closed is not None and sock.client.closed[1] == 1006
    d = h.http.request("GET", "http://127.0.0.1:8088/ari/asterisk/ping")
    h.http.flush()
    failures: list = []
    d.addErrback(failures.append)
    assert failures
    h.fake.start()
    assert h.request("GET", "/channels")[2] == [] and h.connect().client.opened


def test_dialplan_parser_and_helpers() -> None:
    """extensions.conf parsing, timestamps, caller ids, WAV files, and the DTMF schedule of ``SendDTMF(59*#,150)``."""
    plan = parse_dialplan("[c]\nexten => 1,1,Answer() ; comment\n same => n,Wait(2)\nexten => s,1,Busy(5)\n")
    assert [(s.app, s.data) for s in plan["c"]["1"]] == [("Answer", ""), ("Wait", "2")]
    assert plan["c"]["s"][0].data == "5"
    with pytest.raises(ValueError):
        parse_dialplan("exten => 1,1,NoOp()")
    assert format_timestamp(1795262334.2914) == "2026-11-21T11:58:54.291+0000"
    assert parse_caller_id("AVR Fixture <2000>") == ("AVR Fixture", "2000")
    assert parse_caller_id("2000") == ("", "2000")
    wav = wav_bytes(0.5)
    assert struct.unpack("<4sI4s", wav[:12]) == (b"RIFF", len(wav) - 8, b"WAVE") and wav_duration(wav) == 0.5
    ends, total = dtmf_schedule("59*#", 0, 150, 100, 0)
    assert [round(t, 3) for t, _ in ends] == [0.2, 0.45, 0.7, 0.95] and round(total, 3) == 1.1
