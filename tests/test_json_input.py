"""
Deeply nested JSON from outside (issue 8): `avr.json_input.decode_json` bounds the depth, and every place that decodes
outside JSON turns too deep into its ordinary "not JSON" handling: an ignored STS message, a 400, a skipped ARI event,
an ignored webhook reply. Never a `RecursionError`.
"""

from __future__ import annotations

import json

import pytest
from autobahn.twisted.websocket import WebSocketClientFactory
from klein import Klein
from treq.testing import StubTreq
from twisted.internet.task import Clock
from twisted.logger import LogEvent, LogLevel
from twisted.test import iosim

from avr.ari.errors import AriError
from avr.control.call_registry import CallRegistry
from avr.control.hub import EventsHub
from avr.control.routes import ControlRoutes
from avr.control.tasks import TaskGroup
from avr.http.json import install_error_handlers
from avr.json_input import MAX_DEPTH, JsonInputError, decode_json
from avr.sts.codec import StsProtocolError, decode_message
from avr.sts.websocket import StsClientProtocol, disable_autobahn_timers
from avr.testing.sts import FakeStsServerFactory, RecordingStsHandler
from avr.testing.webhooks import WebhookReply
from tests.helpers import fired
from tests.test_ari_client import FakeAsterisk, client, outcome
from tests.test_ari_events import connected, stop
from tests.test_http_core import Api
from tests.test_webhooks import Rig

UUID = "935652e3-7c59-4edc-b17f-9646a9c2a265"


def nested(depth: int, inner: str = "1") -> str:
    """``inner`` inside ``depth`` arrays."""
    return "[" * depth + inner + "]" * depth


#: The probe's message: 980 levels, 2 KB.
DEEP = '{"type":"audio","audio":"AAAA","x":' + nested(980) + "}"


def failures(events: list[LogEvent]) -> list[LogEvent]:
    return [e for e in events if e.get("log_failure") is not None or e["log_level"] == LogLevel.critical]


def test_depth_is_bounded_exactly() -> None:
    """MAX_DEPTH levels decode; one more is refused with a clear reason, however the text is laid out."""
    assert decode_json(nested(MAX_DEPTH - 1, "{}")) == json.loads(nested(MAX_DEPTH - 1, "{}"))
    for text in (nested(MAX_DEPTH, "{}"), '{"a":' * (MAX_DEPTH + 1) + "1" + "}" * (MAX_DEPTH + 1), DEEP,
                 nested(100_000)):
        with pytest.raises(JsonInputError, match=f"nested deeper than {MAX_DEPTH} levels"):
            decode_json(text)


def test_wide_documents_with_many_brackets_are_fine() -> None:
    """Many shallow containers (an ARI channel list) and brackets inside strings are not depth."""
    wide = json.dumps([{"id": str(i), "caller": {"number": "[{[{"}} for i in range(500)])
    assert len(decode_json(wide.encode())) == 500
    assert decode_json(json.dumps({"text": "[" * 1000})) == {"text": "[" * 1000}


def test_strict_utf8_and_constants() -> None:
    """Bytes must be UTF-8 (no UTF-16 guess); NaN and Infinity only where allowed."""
    with pytest.raises(JsonInputError, match="not UTF-8"):
        decode_json('{"a":1}'.encode("utf-16"))
    assert decode_json("[NaN]")[0] != decode_json("[NaN]")[0]
    with pytest.raises(JsonInputError, match="NaN is not allowed"):
        decode_json("[NaN]", allow_nan=False)


def test_deep_sts_message_is_ignored_and_the_call_goes_on(log_events: list[LogEvent]) -> None:
    """The STS session skips the message with one warning and keeps delivering audio."""
    with pytest.raises(StsProtocolError, match="nested deeper"):
        decode_message(DEEP.encode())
    clock, handler = Clock(), RecordingStsHandler()
    factory = WebSocketClientFactory("ws://sts.example:9000/", reactor=clock)
    disable_autobahn_timers(factory)
    session = StsClientProtocol(UUID, handler, clock)
    session.factory = factory
    server = FakeStsServerFactory(clock).buildProtocol(None)
    pump = iosim.connect(server, iosim.makeFakeServer(server), session, iosim.makeFakeClient(session),
                         greet=True, clock=clock)
    server.send_raw(DEEP)
    server.send_audio(b"ok")
    pump.flush()
    assert handler.events == [("audio", b"ok")]
    assert session.state == session.STATE_OPEN
    warnings = [e for e in log_events if e["log_level"] == LogLevel.warn]
    assert len(warnings) == 1 and "nested deeper" in warnings[0]["reason"]
    assert failures(log_events) == []


def test_deep_post_call_body_is_a_400(log_events: list[LogEvent]) -> None:
    """POST /call: a clear 400, nothing registered, no traceback."""
    api = Api()
    status, _, body = api.answer(api.send("POST", "/call", f'{{"uuid":"{UUID}","payload":{nested(980)}}}'.encode()))
    assert status == 400 and f"nested deeper than {MAX_DEPTH} levels" in body["error"]
    assert len(api.registrations) == 0
    assert failures(log_events) == []


class _Model:
    """Just enough call-control model for the routes to be installed (no call reaches it)."""

    def snapshot(self) -> dict:
        return {"calls": [], "bridges": []}


def test_deep_rest_body_is_a_400(log_events: list[LogEvent]) -> None:
    """A call-control route answers 400 too (its body is read before the model is asked)."""
    clock = Clock()
    app = Klein()
    install_error_handlers(app)
    hub = EventsHub(clock, ping_interval=0)
    ControlRoutes(_Model(), hub, CallRegistry(clock, hub, TaskGroup(clock)),
                  max_body=65536, api_key=None, clock=clock).install(app)
    stub = StubTreq(app.resource())
    response = fired(stub.post("http://avr/calls", data=DEEP.encode()))
    body = fired(stub.json_content(response))
    assert response.code == 400 and "nested deeper" in body["error"]
    assert failures(log_events) == []


def test_deep_ari_event_is_skipped(log_events: list[LogEvent]) -> None:
    """The events stream skips it with a warning and goes on with the next event."""
    stream, net, listener, clock = connected()
    net.last.sendMessage(('{"type":"StasisStart","x":' + nested(980) + "}").encode())
    net.last.send({"type": "StasisEnd"})
    net.flush()
    assert listener.calls == [("connected", None), ("event", "StasisEnd")]
    assert any("not JSON" in e["log_format"] for e in log_events if e["log_level"] == LogLevel.warn)
    assert failures(log_events) == []
    stop(stream, net, clock)


def test_deep_ari_answer_is_an_ari_error() -> None:
    """A REST answer nested too deeply is an AriError ("not JSON"), which the routes answer 502."""
    ari, _ = client(FakeAsterisk(lambda r: (200, {}, nested(980).encode())))
    assert outcome(ari.request("GET", "/channels")).check(AriError)
    ari, _ = client(FakeAsterisk(lambda r: (404, {}, ('{"message":' + nested(980) + "}").encode())))
    assert outcome(ari.request("GET", "/channels")).check(AriError)


def test_deep_webhook_reply_is_ignored(log_events: list[LogEvent]) -> None:
    """call_initiated's reply nested too deeply is "not JSON": no override, a warning, no traceback."""
    rig = Rig()
    rig.sink.script("call_initiated", WebhookReply(body=('{"sts_url":"ws://x/","a":' + nested(980) + "}").encode()))
    d = rig.client.call_initiated(UUID, {})
    rig.http.flush()
    assert fired(d) is None
    assert any("not JSON" in e["log_format"] for e in log_events if e["log_level"] == LogLevel.warn)
    assert failures(log_events) == []
    rig.assert_clean()

