"""
The fake Asterisk ARI against the real Asterisk 22.10.1 captures: every capture's REST requests are replayed at
their recorded times and the fake's statuses, bodies, headers and event sequences are compared with the capture,
programmatically (ids and names Asterisk chose are mapped onto the fake's; only documented races are tolerated).
"""

from __future__ import annotations

import json
import re

import pytest
from fake_ari_harness import FIXTURES, Harness, basic, load_fixture
from fake_ari_replay import Replay
from twisted.internet.address import IPv4Address
from twisted.internet.protocol import Protocol
from twisted.logger import capturedLogs
from twisted.test import iosim

#: Captures replayed as a whole (the app the capture used is the fake's default app).
REPLAYED = [
    "applications",
    "asterisk_info_ping",
    "bridges",
    "channel_variables",
    "continue_redirect_move",
    "dtmf",
    "endpoints",
    "errors",
    "external_media_audiosocket",
    "hangup",
    "originate_local_channel",
    "originate_no_answer_busy_bad_target",
    "playback",
    "recording",
    "snoop",
    "stasis_without_websocket",
]


def _replay(name: str) -> Replay:
    replay = Replay(name, app="avr-ari", global_variables={"AVR_AUDIOSOCKET": "127.0.0.1:5001"})
    if name == "recording":
        # a recording another session left in the spool (listed by GET /recordings/stored in the capture)
        replay.h.fake.add_stored_recording("rec-1795261307.55")
    return replay.run()


def _race_free(entry: dict, body: object) -> object:
    """Drop the fields the capture documents as racy: 201 states (fact 20/21) and externalMedia channelvars."""
    if not isinstance(body, dict):
        return body
    body = dict(body)
    if entry["status"] == 201:
        body.pop("state", None)
    if isinstance(body.get("channelvars"), dict):
        body["channelvars"] = {k: v for k, v in body["channelvars"].items()
                               if k not in ("STASISSTATUS", "UNICASTRTP_LOCAL_PORT")}  # fmt: skip
    return body


@pytest.fixture(scope="module", params=REPLAYED)
def replay(request: pytest.FixtureRequest) -> Replay:
    """One capture, replayed (module-scoped: several tests look at the same run)."""
    return _replay(request.param)


def test_replayed_statuses_match_the_capture(replay: Replay) -> None:
    """Every REST request gets the status Asterisk gave."""
    mismatches = [(e["method"], e["url"], e["status"], code) for e, code, _h, _b in replay.rest if code != e["status"]]
    assert replay.rest and not mismatches


def test_replayed_bodies_match_the_capture(replay: Replay) -> None:
    """JSON bodies equal the capture's (ids mapped, timestamps dropped, list order ignored, races tolerated)."""
    for entry, _code, _headers, raw in replay.rest:
        theirs = entry.get("response_body")
        if entry.get("response_body_binary") or theirs is None:
            continue
        ours = json.loads(raw)
        a = replay.normalize(_race_free(entry, theirs), True)
        b = replay.normalize(_race_free(entry, ours), False)
        if isinstance(a, list):
            a, b = sorted(map(json.dumps, a)), sorted(map(json.dumps, b))
        assert a == b, (entry["method"], entry["url"])


def test_replayed_headers_match_the_capture(replay: Replay) -> None:
    """Content type, Location, Allow and WWW-Authenticate values equal the capture's (fact 9)."""
    for entry, _code, headers, _raw in replay.rest:
        expected = {k.lower(): v for k, v in entry["response_headers"]}
        for name in ("location", "allow", "www-authenticate", "content-type", "server", "cache-control"):
            ours = headers.getRawHeaders(name.encode())
            if name in expected:
                assert ours is not None, (entry["url"], name)
                assert ours[0].decode() == replay.map_text(expected[name]), (entry["url"], name)
            elif name == "content-type":
                assert ours is None, entry["url"]


def test_replayed_event_sequences_match_the_capture(replay: Replay) -> None:
    """
    Per socket, the events about each channel, bridge, playback and recording come in the capture's order with the
    capture's content (snapshots included). Only the interleaving between unrelated objects may differ (fact 17).
    """
    assert replay.sockets or replay.fixture["entries"][0]["kind"] != "ws_handshake"
    for label, sock in replay.sockets.items():
        theirs = replay.groups(replay.fixture_events(label), True)
        ours = replay.groups(sock.events, False)
        assert set(ours) == set(theirs), label
        for key in theirs:
            assert ours[key] == theirs[key], (label, key)


def test_replayed_events_have_the_wire_shape(replay: Replay) -> None:
    """Every event is compact JSON with type, timestamp, asterisk_id and application, keys in the capture's order."""
    orders = {}
    for path in FIXTURES.glob("*.json"):
        for entry in json.loads(path.read_text()).get("entries", []):
            if entry.get("kind") == "event":
                orders.setdefault(entry["event"]["type"], set()).add(tuple(entry["event"]))
    for sock in replay.sockets.values():
        for text, event in zip(sock.client.raw, sock.events, strict=True):
            assert text == json.dumps(json.loads(text), separators=(",", ":"), ensure_ascii=False)
            assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+0000", event["timestamp"])
            assert event["asterisk_id"] == "02:fc:00:00:00:01" and event["application"]
            assert tuple(event) in orders[event["type"]], event["type"]


def test_replayed_stored_recording_file_is_a_wav() -> None:
    """GET /recordings/stored/{name}/file serves a RIFF PCM 16-bit mono 8 kHz WAV, like the captured one."""
    replay = _replay("recording")
    captured = (FIXTURES / "recording_avr-fixture-rec1.wav").read_bytes()
    (entry, code, headers, raw), = [r for r in replay.rest if r[0]["path"].endswith("/file")]
    assert code == 200 and headers.getRawHeaders(b"content-type") == [b"audio/wav"]
    assert raw[:4] == b"RIFF" and raw[8:16] == b"WAVEfmt "
    assert raw[20:36] == captured[20:36]  # same fmt chunk: PCM, mono, 8000 Hz, 16 bit
    assert abs(len(raw) - entry["response_body_binary"]["bytes"]) <= 16000 * 1.5


# --------------------------------------------------------------------------------------------------------------------
# Raw HTTP: exact header spelling and order, keep-alive (facts 9, 10)


class RawClient(Protocol):
    """Collects raw bytes."""

    def __init__(self) -> None:
        self.data = b""
        self.lost = False

    def dataReceived(self, data: bytes) -> None:
        """Keep them."""
        self.data += data

    def connectionLost(self, reason: object = None) -> None:
        """Remember."""
        self.lost = True


def _raw_http(harness: Harness) -> tuple[RawClient, iosim.IOPump]:
    site = harness.fake.site()
    client, _server, pump = iosim.connectedServerAndClient(
        lambda: site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1)), RawClient
    )
    return client, pump


def _split_response(data: bytes) -> tuple[str, list[tuple[str, str]], bytes, bytes]:
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = [tuple(line.split(": ", 1)) for line in lines[1:]]
    length = int(dict(headers).get("Content-Length", "0"))
    return lines[0], headers, rest[:length], rest[length:]


def test_keepalive_exchanges_match_the_raw_capture() -> None:
    """The raw keep-alive capture, replayed on one connection: same status lines, header names in order, bodies."""
    capture = load_fixture("http_keepalive_raw")
    harness = Harness()
    client, pump = _raw_http(harness)
    for exchange in capture["exchanges"]:
        request = re.sub(r"Basic <([^:>]*):([^>]*)>", lambda m: basic(m.group(1), m.group(2)), exchange["request"])
        client.data = b""
        client.transport.write(request.encode())
        pump.flush()
        status, headers, body, _ = _split_response(client.data)
        want_status, want_headers, want_body, _ = _split_response(exchange["response"].encode())
        assert status == want_status
        assert [name for name, _ in headers] == [name for name, _ in want_headers]
        for (name, value), (_, want) in zip(headers, want_headers, strict=True):
            if name != "Date":
                assert value == want or name == "Content-Length" and "timestamp" in want_body.decode(), name
        norm = lambda b: re.sub(rb'"timestamp":"[^"]+"', b"", b)  # noqa: E731
        assert norm(body) == norm(want_body)
    assert client.lost  # the last request asked for Connection: close
    harness.fake.site().stopFactory()


def test_idle_keepalive_connection_is_closed_after_15_seconds() -> None:
    """``session_keep_alive = 15000``: an idle persistent connection is closed by the server after 15 s (fact 10)."""
    harness = Harness()
    client, pump = _raw_http(harness)
    client.transport.write(b"GET /ari/asterisk/ping HTTP/1.1\r\nHost: x\r\nAuthorization: " +
                           basic("avr", "avrpass").encode() + b"\r\n\r\n")  # fmt: skip
    pump.flush()
    assert client.data.startswith(b"HTTP/1.1 200 OK") and not client.lost
    harness.clock.advance(14.9)
    pump.flush()
    assert not client.lost
    harness.clock.advance(0.2)
    pump.flush()
    assert client.lost


def test_json_responses_use_asterisk_header_spelling() -> None:
    """``Content-type`` (lower-case t) for JSON, ``Content-Type`` for the recording file, as captured (fact 9)."""
    harness = Harness()
    harness.fake.add_stored_recording("greeting", seconds=0.5)
    client, pump = _raw_http(harness)
    auth = b"Authorization: " + basic("avr", "avrpass").encode() + b"\r\n"
    client.transport.write(b"GET /ari/recordings/stored HTTP/1.1\r\nHost: x\r\n" + auth + b"\r\n")
    pump.flush()
    _, headers, body, _ = _split_response(client.data)
    assert ("Content-type", "application/json") in headers and body == b'[{"name":"greeting","format":"wav"}]'
    client.data = b""
    client.transport.write(b"GET /ari/recordings/stored/greeting/file HTTP/1.1\r\nHost: x\r\n" + auth + b"\r\n")
    pump.flush()
    _, headers, body, _ = _split_response(client.data)
    assert ("Content-Type", "audio/wav") in headers and body[:4] == b"RIFF" and len(body) == 44 + 8000
    harness.fake.site().stopFactory()


# --------------------------------------------------------------------------------------------------------------------
# Authentication and the events WebSocket (facts 11, 27-30)


def _handshakes() -> dict:
    return {e["ws"]: e for e in load_fixture("websocket_handshake_auth_replace")["entries"] if e["kind"] ==
            "ws_handshake"}  # fmt: skip


@pytest.mark.parametrize("label", ["bad-key", "no-key", "no-app", "empty-app"])
def test_events_upgrade_errors_match_the_capture(label: str) -> None:
    """``/ari/events`` with bad or missing credentials → 401 JSON; without ``app`` → 400 HTML (fact 11)."""
    entry = _handshakes()[label]
    path = entry["request"][0].split(" ")[1]
    harness = Harness(app="avr-ari")
    response, raw = harness.raw_request("GET", path, {"Upgrade": "websocket", "Connection": "Upgrade"})
    assert response.code == int(entry["status_line"].split(" ")[1])
    expected = dict(entry["response_headers"])
    assert response.headers.getRawHeaders(b"content-type")[0].decode() == expected["Content-type"]
    assert raw == entry["response_body_raw"].encode()[: int(expected["Content-Length"])]
    if "WWW-Authenticate" in expected:
        assert response.headers.getRawHeaders(b"www-authenticate")[0].decode() == expected["WWW-Authenticate"]


def test_events_handshake_headers_and_close_match_the_capture() -> None:
    """The 101 has only Upgrade, Connection, Sec-WebSocket-Accept; a client close 1000 gets ``03e8`` then FIN."""
    entry = _handshakes()["events-1"]
    harness = Harness(app="avr-ari")
    factory = harness.fake.events_factory()
    client, _server, pump = iosim.connectedServerAndClient(
        lambda: factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1)), RawClient
    )
    request = "\r\n".join(entry["request"]).replace("<random>", "dGhlIHNhbXBsZSBub25jZQ==") + "\r\n\r\n"
    client.transport.write(request.encode())
    pump.flush()
    status, headers, _, _ = _split_response(client.data)
    assert status == entry["status_line"]
    assert [name.lower() for name, _ in headers] == [name.lower() for name, _ in entry["response_headers"]]
    close = next(e for e in load_fixture("hangup")["entries"] if e.get("what") == "close")
    client.data = b""
    client.transport.write(bytes([0x88, 0x82, 1, 2, 3, 4, 0x03 ^ 1, 0xE8 ^ 2]))  # masked close 1000
    pump.flush()
    assert client.data == bytes([int(close["fin_rsv_opcode_byte"], 16), 2]) + bytes.fromhex(close["payload_hex"])
    assert client.lost


def test_basic_auth_and_multiple_apps_on_one_socket() -> None:
    """``Authorization: Basic`` works instead of ``api_key``; ``app=a,b`` registers both apps (capture order)."""
    harness = Harness()
    one = harness.connect("avr-ari")
    harness.connect("avr-ari-basic", api_key=None, headers={"Authorization": basic("avr", "avrpass")})
    harness.connect("avr-ari-m1,avr-ari-m2")
    status, _, body = harness.request("GET", "/applications")
    expected = next(e for e in load_fixture("websocket_handshake_auth_replace")["entries"]
                    if e.get("kind") == "rest" and e["path"] == "/ari/applications")  # fmt: skip
    assert status == 200 and body == expected["response_body"]
    assert one.client.opened


def test_events_handshakes_do_not_log_the_ari_password() -> None:
    """The events socket leaves autobahn's level-gated logger alone: its debug dump of the handshake (``api_key``,
    ``Authorization``) is not written to the test log."""
    harness = Harness()
    with capturedLogs() as events:
        harness.connect("avr-ari").close()
        harness.connect("avr-ari-basic", api_key=None, headers={"Authorization": basic("avr", "avrpass")}).close()
    secrets = ("avrpass", basic("avr", "avrpass").split()[1])
    assert [e for e in events if any(secret in repr(e) for secret in secrets)] == []


def test_subscribe_all_lists_the_all_topics_and_sees_channel_creation() -> None:
    """``subscribeAll=true``: the app lists ``__AST_*_ALL_TOPIC`` and gets ChannelCreated for every channel."""
    entries = load_fixture("websocket_handshake_auth_replace")["entries"]
    expected = next(e for e in entries if e.get("kind") == "rest" and e["path"].endswith("avr-ari-all"))
    harness = Harness()
    sock = harness.connect("avr-ari-all", extra="&subscribeAll=true")
    assert harness.request("GET", "/applications/avr-ari-all")[2] == expected["response_body"]
    harness.request("POST", "/channels", {"endpoint": "Local/6106@cap-ari", "context": "cap-ari",
                                          "extension": "6100", "channelId": "any"})  # fmt: skip
    created = [e["channel"]["id"] for e in sock.events if e["type"] == "ChannelCreated"]
    captured = [e["event"]["channel"]["id"] for e in entries if e.get("kind") == "event" and
                e["event"]["type"] == "ChannelCreated"]  # fmt: skip
    assert [c.replace("avr-fixture-ws-", "") for c in captured] == created


def test_second_socket_replaces_the_first_without_closing_it() -> None:
    """Fact 29: the first socket gets ApplicationReplaced (captured shape), stays open and gets nothing more."""
    captured = next(e["event"] for e in load_fixture("websocket_handshake_auth_replace")["entries"]
                    if e.get("kind") == "event" and e["event"]["type"] == "ApplicationReplaced")  # fmt: skip
    harness = Harness(app="avr-ari")
    first = harness.connect("avr-ari")
    second = harness.connect("avr-ari")
    assert [list(e) for e in first.events] == [list(captured)]
    assert first.events[0]["application"] == "avr-ari" and first.client.closed is None
    harness.originate_local(app="avr-ari")
    assert len(first.events) == 1 and "StasisStart" in second.types()


def test_app_exists_only_while_a_socket_or_a_channel_holds_it() -> None:
    """Fact 28: no socket → no app, originate is accepted but the channel is hung up with no events."""
    harness = Harness(app="avr-ari")
    assert harness.request("GET", "/applications")[2] == []
    assert harness.request("GET", "/applications/avr-ari")[0] == 404
    body = harness.originate_local(app="avr-ari", channelId="nows")
    assert body["id"] == "nows" and "nows" not in harness.fake.channels and harness.fake.events == []
    sock = harness.connect("avr-ari")
    harness.request("POST", "/channels", {"endpoint": "Local/6102@cap-ari", "context": "cap-ari",
                                          "extension": "6100", "channelId": "c", "otherChannelId": "far"})  # fmt: skip
    assert sock.types() == ["StasisStart"]
    sock.close()
    apps = harness.request("GET", "/applications")[2]
    assert apps == [{"name": "avr-ari", "channel_ids": ["far"], "bridge_ids": [], "endpoint_ids": [],
                     "device_names": [], "events_allowed": [], "events_disallowed": []}]  # fmt: skip
    assert harness.request("DELETE", "/channels/far")[0] == 204
    assert harness.request("GET", "/applications")[2] == []


def test_an_app_without_socket_goes_when_its_last_channel_continues_in_the_dialplan() -> None:
    """Fact 28: the app stays listed while a channel is in it, and goes when that channel leaves Stasis."""
    harness = Harness(app="avr-ari")
    sock = harness.connect("avr-ari")
    harness.request("POST", "/channels", {"endpoint": "Local/6100@cap-ari", "app": "avr-ari", "channelId": "c"})
    harness.advance(1.0)
    sock.close()
    assert [a["name"] for a in harness.request("GET", "/applications")[2]] == ["avr-ari"]
    status = harness.request("POST", "/channels/c/continue", {"context": "cap-ari", "extension": "6103"})[0]
    assert status == 204 and "c" in harness.fake.channels
    assert harness.request("GET", "/applications")[2] == []


def test_restart_matches_the_core_restart_capture() -> None:
    """
    Fact 30: ``core restart now`` hangs the Stasis channel up with the captured events, then the socket gets EOF
    without a close frame, connections are refused, ``/ari/...`` answers 404, then Asterisk is back, empty.
    """
    replay = Replay("websocket_asterisk_restart", app="avr-ari")
    entries = replay.fixture["entries"]
    start = next(e for e in entries if e.get("ws") == "events-after-start" and e["kind"] == "ws_handshake")
    restart_note = next(e for e in entries if e.get("kind") == "note" and "core restart now" in e["text"])
    originate = next(e for e in entries if e.get("kind") == "rest" and e["method"] == "POST"
                     and e["t_ms"] > start["t_ms"])  # fmt: skip
    harness = replay.h
    sock = replay.sockets["events-after-start"] = harness.connect("avr-ari")
    harness.advance((originate["t_request_ms"] - start["t_request_ms"]) / 1000)
    replay._rest(originate)
    harness.advance((restart_note["t_ms"] - originate["t_request_ms"]) / 1000)
    harness.fake.restart()
    harness.advance(0.05)
    assert replay.groups(sock.events, False) == replay.groups(replay.fixture_events("events-after-start"), True)
    eof = next(e for e in entries if e.get("ws") == "events-after-start" and e.get("kind") == "ws_control")
    assert eof["what"] == "tcp_eof_without_close_frame" and sock.client.closed is None
    harness.advance(1.1)
    assert sock.client.closed is not None and sock.client.closed[1] == 1006  # EOF, no close frame
    assert harness.fake.status == "down"
    assert harness.fake.events_factory().buildProtocol(IPv4Address("TCP", "127.0.0.1", 1)) is None
    harness.advance(0.3)
    assert harness.request("GET", "/asterisk/ping")[0] == 404
    refused = harness.connect("avr-ari")
    assert not refused.client.opened
    harness.advance(0.6)
    assert harness.request("GET", "/channels")[2] == []
    again = harness.connect("avr-ari")
    assert again.client.opened and harness.request("GET", "/applications")[2][0]["name"] == "avr-ari"
    assert harness.clock.getDelayedCalls() == []
