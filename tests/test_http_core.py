"""
Tests for the avr-core HTTP routes (avr.http.core), the JSON helpers (avr.http.json) and the API key check
(avr.http.auth), through StubTreq over a Klein app built per test; webhooks go to a WebhookSink through a second
StubTreq.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import pytest_twisted
from klein import Klein
from treq.testing import StubTreq
from twisted.internet.defer import Deferred, fail
from twisted.internet.task import Clock
from twisted.logger import LogLevel
from twisted.web.test.requesthelper import DummyRequest

from avr.config import Config
from avr.http.auth import check_api_key, redacted_access_log
from avr.http.core import CoreRoutes
from avr.http.json import ApiError, add_route, install_error_handlers, json_response, read_json_body
from avr.admissions import Admissions
from avr.registrations import Registrations
from avr.testing.webhooks import FakeWebhooks, WebhookReply, WebhookSink
from avr.webhooks import WebhookClient
from tests.helpers import fired

U = "935652e3-7c59-4edc-b17f-9646a9c2a265"
SEED_PAYLOAD = {"from": "2000", "to": "5001", "uniqueid": "1770758888.32", "channel": "PJSIP/2000-00000013"}
SEED_URL = "ws://localhost:6030/?from=2000&to=5001&uniqueid=1770758888.32&channel=PJSIP%2F2000-00000013"
HOOK = "http://hooks.example/events"


def no_connection_expected(leg: Any, sts_url: Any, payload: Any) -> Any:
    raise AssertionError("these tests make no AudioSocket connection")


class Api:
    """A Klein app with the core routes, its registrations, webhook client and sink, on one Clock."""

    def __init__(
        self, *, sts_url="ws://localhost:6030", webhook_url=None, secret=None, api_key=None, timeout_ms=3000,
        max_body=64 * 1024, webhooks=None, app=None,
    ):
        self.clock = Clock()
        self.sink = WebhookSink(self.clock, secret=secret)
        self.hooks_http = StubTreq(self.sink)
        self.webhooks = webhooks or WebhookClient(
            self.hooks_http, self.clock, webhook_url, secret, timeout_ms / 1000, 0
        )
        self.admissions = Admissions(self.clock)
        self.registrations = Registrations(self.admissions, 60, no_connection_expected)
        self.app = app if app is not None else Klein()
        install_error_handlers(self.app)
        CoreRoutes(sts_url, self.registrations, self.webhooks, max_body, api_key).install(self.app)
        self.http = StubTreq(self.app.resource())

    def flush(self) -> None:
        for _ in range(3):
            self.hooks_http.flush()
            self.http.flush()

    def send(self, method: str, path: str, body: Any = None, headers: dict | None = None) -> Deferred[Any]:
        """Start a request; ``body`` is JSON-encoded unless it is bytes."""
        data = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
        return self.http.request(method, "http://avr:6001" + path, data=data, headers=headers or {})

    def answer(self, d: Deferred[Any]) -> tuple[int, Any, Any]:
        """(status, headers, parsed JSON body) of a finished request."""
        self.flush()
        response = fired(d)
        body = fired(response.content())
        assert response.headers.getRawHeaders("content-type") == ["application/json"], body
        return response.code, response.headers, json.loads(body)

    def call(self, body: Any = None, headers: dict | None = None, path: str = "/call") -> tuple[int, Any]:
        headers = {"Content-Type": "application/json", **(headers or {})}
        status, _, obj = self.answer(self.send("POST", path, body, headers))
        return status, obj

    def assert_clean(self) -> None:
        self.admissions.clear()
        self.flush()
        assert fired(self.webhooks.stop()) is None
        assert self.clock.getDelayedCalls() == []


def test_health():
    """GET /health answers 200 with status ok (and a few extra fields)."""
    api = Api()
    status, _, body = api.answer(api.send("GET", "/health"))
    assert status == 200
    assert body["status"] == "ok" and body["service"] == "avr" and body["registrations"] == 0


def test_call_without_webhook_scenario_2():
    """avr-core §8 scenario 2: STS_URL + payload params, override false, exactly as documented."""
    api = Api()
    d = api.send("POST", "/call", {"uuid": U, "payload": SEED_PAYLOAD}, {"Content-Type": "application/json"})
    api.flush()
    response = fired(d)
    assert response.code == 200
    assert fired(response.content()) == b'{"sts_url":"' + SEED_URL.encode() + b'","override":false}'
    registration = api.registrations.get(U)
    assert registration is not None
    assert (registration.sts_url, registration.override, registration.payload) == (SEED_URL, False, SEED_PAYLOAD)
    api.assert_clean()


def test_call_with_webhook_override_scenario_3():
    """avr-core §8 scenario 3: call_initiated gets the payload verbatim and the secret; its sts_url is the base."""
    api = Api(webhook_url=HOOK, secret="sh")
    api.sink.script("call_initiated", WebhookReply.json({"sts_url": f"ws://other:7000?uuid={U}"}))
    payload = {**SEED_PAYLOAD, "recording": False}
    status, body = api.call({"uuid": U, "payload": payload})
    expected = f"ws://other:7000/?uuid={U}&" + SEED_URL.split("?", 1)[1] + "&recording=false"
    assert (status, body) == (200, {"sts_url": expected, "override": True})
    [hook] = api.sink.received
    assert hook.type == "call_initiated" and hook.uuid == U and hook.payload == payload
    assert hook.header("X-AVR-WEBHOOK-SECRET") == "sh" and hook.violations == ()
    assert api.registrations.get(U).override is True
    api.assert_clean()


def test_webhook_without_override_keeps_sts_url():
    """A webhook answering without sts_url (like avr-app's {"status":"ok"}) leaves the default route."""
    api = Api(webhook_url=HOOK)
    assert api.call({"uuid": U, "payload": SEED_PAYLOAD}) == (200, {"sts_url": SEED_URL, "override": False})
    assert len(api.sink.received) == 1
    api.assert_clean()


@pytest.mark.logs_errors(r"call_initiated for call .* not delivered after 1 attempt\(s\): HTTP 500")
def test_webhook_down_falls_back():
    """A failing webhook (500) falls back to STS_URL + params, override false."""
    api = Api(webhook_url=HOOK)
    api.sink.script("call_initiated", WebhookReply(status=500))
    assert api.call({"uuid": U, "payload": SEED_PAYLOAD}) == (200, {"sts_url": SEED_URL, "override": False})
    api.assert_clean()


def test_webhook_timeout_falls_back_within_the_timeout():
    """A silent webhook: the answer comes when WEBHOOK_TIMEOUT expires, with the default URL."""
    api = Api(webhook_url=HOOK, timeout_ms=3000)
    api.sink.script("call_initiated", WebhookReply.never())
    d = api.send("POST", "/call", {"uuid": U, "payload": SEED_PAYLOAD})
    early: list[Any] = []
    api.flush()
    api.clock.advance(2.999)
    api.flush()
    d.addBoth(lambda r: early.append(r) or r)
    assert early == []
    api.clock.advance(0.001)
    status, _, body = api.answer(d)
    assert (status, body) == (200, {"sts_url": SEED_URL, "override": False})
    assert U in api.registrations
    api.assert_clean()


def test_no_sts_url_means_echo_agent_unless_overridden():
    """Without STS_URL the answer's sts_url is null (echo agent); a webhook override still applies."""
    api = Api(sts_url=None)
    assert api.call({"uuid": U, "payload": SEED_PAYLOAD}) == (200, {"sts_url": None, "override": False})
    assert api.registrations.get(U).sts_url is None

    api = Api(sts_url=None, webhooks=FakeWebhooks(sts_url="wss://agent.example/v1"))
    assert api.call({"uuid": U, "payload": {"a": 1}}) == (
        200, {"sts_url": "wss://agent.example/v1?a=1", "override": True},
    )


def test_uuid_is_normalised_and_payload_optional():
    """An upper-case uuid is registered in lower case; an omitted payload is {} (the bare origin gains '/')."""
    api = Api()
    assert api.call({"uuid": U.upper()}) == (200, {"sts_url": "ws://localhost:6030/", "override": False})
    registration = api.registrations.get(U)
    assert registration.uuid == U and registration.payload == {}


@pytest.mark.parametrize(
    "body, fragment",
    [
        (b"{not json", "request body is not valid JSON"),
        (b"", "request body is empty"),
        (b"\xff\xfe", "not UTF-8"),
        (b'{"uuid": NaN}', "not valid JSON"),
        ([U], "must be a JSON object, got an array"),
        ("x", "must be a JSON object, got a string"),
        ({"payload": {}}, "uuid is required"),
        ({"uuid": 12}, "uuid must be a string, got a number"),
        ({"uuid": None}, "uuid must be a string, got null"),
        ({"uuid": "abc"}, "uuid must be a UUID"),
        ({"uuid": "{" + U + "}"}, "uuid must be a UUID"),
        ({"uuid": U, "payload": "from=2000"}, "payload must be a JSON object, got a string"),
        ({"uuid": U, "payload": None}, "payload must be a JSON object, got null"),
        ({"uuid": U, "payload": [1]}, "payload must be a JSON object, got an array"),
    ],
)
def test_call_bad_requests(body, fragment):
    """Every malformed /call body gets a 400 JSON error naming the problem, and nothing is registered."""
    api = Api(webhook_url=HOOK)
    status, obj = api.call(body)
    assert status == 400
    assert fragment in obj["error"]
    assert len(api.registrations) == 0 and api.sink.received == []


def test_call_oversized_body():
    """A body over HTTP_MAX_BODY is refused with 413 naming the limit."""
    api = Api(max_body=1024)
    status, obj = api.call({"uuid": U, "payload": {"pad": "x" * 2000}})
    assert status == 413 and "1024 bytes" in obj["error"] and obj["limit"] == 1024
    assert len(api.registrations) == 0


def test_unknown_route_and_wrong_method_are_json():
    """404 for an unknown route and 405 (with Allow) for a wrong method, both as JSON."""
    api = Api()
    status, _, body = api.answer(api.send("GET", "/nope"))
    assert status == 404 and body == {"error": "no such route: GET /nope"}
    status, headers, body = api.answer(api.send("GET", "/call"))
    assert status == 405 and body["allowed"] == ["POST"] and "GET" in body["error"]
    assert headers.getRawHeaders("allow") == ["POST"]
    status, _, body = api.answer(api.send("DELETE", "/health"))
    assert status == 405 and "GET" in body["allowed"]
    status, _, _ = api.answer(api.send("GET", "/health/"))
    assert status == 404


def test_api_key(log_events):
    """With API_KEY set, /call needs it (header or query); /health stays open; the key is never echoed or logged."""
    key = "k3y-value"
    api = Api(api_key=key)
    body = {"uuid": U, "payload": {"a": "1"}}
    status, obj = api.call(body)
    assert status == 401 and "X-API-Key" in obj["error"]
    status, obj = api.call(body, {"X-API-Key": "wrong"})
    assert status == 401 and obj == {"error": "invalid API key"}
    assert api.call(body, path="/call?api_key=nope")[0] == 401
    assert len(api.registrations) == 0
    assert api.call(body, {"X-API-Key": key})[0] == 200
    assert api.call(body, path=f"/call?api_key={key}")[0] == 200
    assert api.answer(api.send("GET", "/health"))[0] == 200
    assert not any(key in json.dumps(e, default=repr) for e in log_events)


def test_check_api_key_unit():
    """check_api_key is open without a key; otherwise it needs the exact key (UTF-8), in header or query."""
    request = DummyRequest([b"call"])
    check_api_key(request, None)
    with pytest.raises(ApiError) as info:
        check_api_key(request, "ключ")
    assert info.value.status == 401 and "ключ" not in info.value.message
    request.requestHeaders.setRawHeaders(b"x-api-key", ["ключ".encode()])
    check_api_key(request, "ключ")
    with pytest.raises(ApiError):
        check_api_key(request, "ключ2")
    query = DummyRequest([b"call"])
    query.uri = b"/call?api_key=secret"
    check_api_key(query, "secret")


def test_access_log_masks_the_query_key():
    """The Site access-log formatter writes ?api_key=*** instead of the key, the rest as the combined format."""
    request = DummyRequest([b"call"])
    request.method = b"POST"
    request.uri = b"/call?api_key=s3cret&x=1"
    request.clientproto = b"HTTP/1.1"
    request.code = 200
    request.sentLength = 42
    line = redacted_access_log("[01/Jan/2026:12:00:00 +0000]", request)
    assert '"POST /call?api_key=***&x=1 HTTP/1.1" 200 42' in line
    assert "s3cret" not in line


def test_client_disconnect_still_registers():
    """If the dialplan's CURL gives up while the webhook is slow, the registration still completes (fallback)."""
    api = Api(webhook_url=HOOK, timeout_ms=3000)
    api.sink.script("call_initiated", WebhookReply.never())
    d = api.send("POST", "/call", {"uuid": U, "payload": SEED_PAYLOAD})
    api.flush()
    d.addErrback(lambda f: None)
    d.cancel()  # the client hangs up
    api.flush()
    assert U not in api.registrations
    api.clock.advance(3)
    api.flush()
    registration = api.registrations.get(U)
    assert registration is not None and registration.sts_url == SEED_URL and not registration.override
    api.assert_clean()


@pytest.mark.logs_errors(r"Unhandled error serving POST /call")
def test_internal_error_is_logged_and_hidden(log_events):
    """An unexpected exception becomes 500 {"error": "internal error"}, logged with its traceback, details hidden."""

    class Broken(FakeWebhooks):
        def call_initiated(self, uuid, payload):
            return fail(RuntimeError("database password is swordfish"))

    api = Api(webhooks=Broken())
    status, obj = api.call({"uuid": U})
    assert (status, obj) == (500, {"error": "internal error"})
    failures = [e for e in log_events if e.get("log_failure") is not None]
    assert len(failures) == 1 and failures[0]["log_failure"].check(RuntimeError)
    assert failures[0]["log_level"] == LogLevel.critical


def test_json_helpers_on_a_bound_app():
    """add_route/install_error_handlers work on a Klein bound to an instance; ApiError extra fields are kept."""

    class Service:
        app = Klein()

    service = Service()

    async def conflict(request):
        body = await read_json_body(request, 100)
        raise ApiError(409, "already exists", id=body["id"], error="ignored")

    def hello(request, name):
        return json_response(request, 201, {"hello": name})

    add_route(service.app, "/things", conflict, methods=["POST"], endpoint="test.conflict")
    add_route(service.app, "/hello/<name>", hello, methods=["GET"], endpoint="test.hello")
    api = Api(app=service.app)
    status, _, body = api.answer(api.send("POST", "/things", {"id": 7}))
    assert (status, body) == (409, {"error": "already exists", "id": 7})
    status, _, body = api.answer(api.send("GET", "/hello/w%C3%B6rld"))
    assert (status, body) == (201, {"hello": "wörld"})
    assert api.answer(api.send("GET", "/health"))[0] == 200


@pytest_twisted.ensureDeferred
@pytest.mark.integration
async def test_call_over_loopback():
    """POST /call over a real loopback socket with a real treq client, webhook to a real loopback sink."""
    from twisted.internet import reactor
    from twisted.web.client import Agent, HTTPConnectionPool
    from twisted.web.server import Site
    from treq.client import HTTPClient

    sink = WebhookSink(reactor)
    sink.script("call_initiated", WebhookReply.json({"sts_url": "ws://other:7000?uuid=" + U}))
    hook_port = reactor.listenTCP(0, Site(sink), interface="127.0.0.1")
    pool = HTTPConnectionPool(reactor, persistent=True)
    http = HTTPClient(Agent(reactor, pool=pool))
    config = Config(sts_url="ws://localhost:6030", webhook_url=f"http://127.0.0.1:{hook_port.getHost().port}/e")
    webhooks = WebhookClient.from_config(http, reactor, config)
    admissions = Admissions(reactor)
    registrations = Registrations(admissions, config.call_init_ttl, no_connection_expected)
    app = Klein()
    install_error_handlers(app)
    CoreRoutes.from_config(config, registrations, webhooks).install(app)
    api_port = reactor.listenTCP(0, Site(app.resource()), interface="127.0.0.1")
    try:
        response = await http.post(
            f"http://127.0.0.1:{api_port.getHost().port}/call",
            data=json.dumps({"uuid": U, "payload": SEED_PAYLOAD}).encode(),
            headers={"Content-Type": "application/json"},
        )
        body = await response.json()
        assert response.code == 200
        assert body == {"sts_url": f"ws://other:7000/?uuid={U}&" + SEED_URL.split("?", 1)[1], "override": True}
        assert registrations.get(U) is not None
    finally:
        admissions.clear()
        await webhooks.stop()
        sink.close()
        await pool.closeCachedConnections()
        await api_port.stopListening()
        await hook_port.stopListening()
