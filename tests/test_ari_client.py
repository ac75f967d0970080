"""AriClient: ARI REST over treq (URLs, authentication, parameters, bodies, error mapping, timeouts)."""

from __future__ import annotations

import base64
import json
from typing import Any, Callable

import pytest
from treq.testing import StubTreq
from twisted.internet.defer import Deferred, fail
from twisted.internet.error import ConnectionRefusedError, DNSLookupError
from twisted.internet.task import Clock
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET
from zope.interface.verify import verifyObject

from avr.ari.client import AriClient, encode_query, error_message, path_segment
from avr.ari.errors import AriError, AriUnavailable
from avr.interfaces import IAriClient

PASSWORD = "s3cr3t-pa55"


class FakeAsterisk(Resource):
    """Records each request and answers with ``reply(request) -> (code, headers, body)``."""

    isLeaf = True

    def __init__(self, reply: Callable[[Any], tuple[int, dict, bytes]] | None = None) -> None:
        super().__init__()
        self.seen: list[dict] = []
        self.reply = reply or (lambda request: (204, {}, b""))

    def render(self, request: Any) -> Any:
        self.seen.append({
            "method": request.method.decode(), "uri": request.uri.decode(),
            "authorization": request.getHeader("authorization"), "content_type": request.getHeader("content-type"),
            "body": request.content.read(),
        })
        code, headers, body = self.reply(request)
        request.setResponseCode(code)
        for name, value in headers.items():
            request.setHeader(name, value)
        return body


def client(resource: Resource, clock: Clock | None = None) -> tuple[AriClient, Clock]:
    clock = clock or Clock()
    return AriClient(StubTreq(resource), clock, "http://127.0.0.1:8088/", "avr", PASSWORD), clock


def outcome(d: Deferred) -> Any:
    results: list[Any] = []
    d.addBoth(results.append)
    assert results, "still waiting"
    return results[0]


def json_reply(code: int, body: Any) -> Callable[[Any], tuple[int, dict, bytes]]:
    return lambda request: (code, {"Content-type": "application/json"}, json.dumps(body).encode())


def test_interface() -> None:
    """AriClient provides IAriClient."""
    verifyObject(IAriClient, client(FakeAsterisk())[0])


def test_url_auth_and_json_answer() -> None:
    """The path goes under <ARI_URL>/ari, with HTTP Basic auth; a JSON answer is parsed."""
    asterisk = FakeAsterisk(json_reply(200, [{"id": "1.2"}]))
    ari, _ = client(asterisk)
    assert outcome(ari.request("GET", "/channels")) == [{"id": "1.2"}]
    seen = asterisk.seen[0]
    assert seen["method"] == "GET" and seen["uri"] == "/ari/channels"
    assert seen["authorization"] == "Basic " + base64.b64encode(f"avr:{PASSWORD}".encode()).decode()
    assert seen["body"] == b""


def test_204_is_none() -> None:
    """A 204 (void operation) gives None."""
    ari, _ = client(FakeAsterisk())
    assert outcome(ari.request("POST", "/channels/1.2/answer")) is None


def test_query_parameters_are_encoded_for_asterisk() -> None:
    """Lists become one comma-separated value (Asterisk ignores repeated parameters), '+' is escaped (Asterisk
    decodes '+' as a space), booleans are true/false and None is left out."""
    asterisk = FakeAsterisk()
    ari, _ = client(asterisk)
    outcome(ari.request("POST", "/channels", {"endpoint": "PJSIP/1001", "callerId": "+1555 <x>", "timeout": 30,
                                              "appArgs": None, "beep": False}))
    outcome(ari.request("POST", f"/channels/{path_segment('a;2')}/play/p1",
                        {"media": ["sound:beep", "tone:ring;tonezone=us"]}))
    uris = [s["uri"] for s in asterisk.seen]
    assert uris[0] == "/ari/channels?endpoint=PJSIP/1001&callerId=%2B1555%20%3Cx%3E&timeout=30&beep=false"
    assert uris[1] == "/ari/channels/a%3B2/play/p1?media=sound:beep,tone:ring;tonezone%3Dus"


def test_encode_query_and_path_segment() -> None:
    """The helpers used to build URLs (the originate URL exactly as in Asterisk's capture)."""
    assert encode_query({"channel": ["a", "b"], "x": True, "y": None}) == "channel=a,b&x=true"
    assert encode_query({"endpoint": "Local/6100@cap-ari", "app": "avr-ari", "appArgs": "first,second"}) == \
        "endpoint=Local/6100@cap-ari&app=avr-ari&appArgs=first,second"
    assert encode_query({"a": "x&y=z%"}) == "a=x%26y%3Dz%25"
    assert path_segment("rec/../x") == "rec%2F..%2Fx"


def test_variables_go_as_a_json_body() -> None:
    """``body`` is sent as JSON with its content type (channel variables must be an object of strings)."""
    asterisk = FakeAsterisk(json_reply(200, {"id": "c1"}))
    ari, _ = client(asterisk)
    outcome(ari.request("POST", "/channels", {"endpoint": "PJSIP/1"}, {"variables": {"FOO": "bar"}}))
    assert json.loads(asterisk.seen[0]["body"]) == {"variables": {"FOO": "bar"}}
    assert asterisk.seen[0]["content_type"] == "application/json; charset=UTF-8"


@pytest.mark.parametrize("code,body,message", [
    (404, {"message": "Channel not found"}, "Channel not found"),
    (409, {"message": "Channel not in Stasis application"}, "Channel not in Stasis application"),
    (412, {"message": "Channel in invalid state"}, "Channel in invalid state"),
    (422, {"message": "specified format is unknown on this system"}, "specified format is unknown on this system"),
    (500, {"error": "Allocation failed"}, "Allocation failed"),
    (400, {"message": "Invalid reason for hangup reason provided"}, "Invalid reason for hangup reason provided"),
])
def test_error_statuses_keep_asterisk_status_and_message(code: int, body: dict, message: str) -> None:
    """Non-2xx answers are AriError with Asterisk's status and its message (or error) text."""
    ari, _ = client(FakeAsterisk(json_reply(code, body)))
    failure = outcome(ari.request("DELETE", "/channels/1.2"))
    assert failure.check(AriError)
    assert (failure.value.status, failure.value.message) == (code, message)
    assert PASSWORD not in str(failure.value)


def test_error_with_a_text_body() -> None:
    """A non-JSON error body (e.g. 400 text/html) gives its raw text."""
    ari, _ = client(FakeAsterisk(lambda r: (400, {"Content-Type": "text/html"}, b"HTTP request is missing param")))
    failure = outcome(ari.request("GET", "/events"))
    assert failure.value.status == 400 and failure.value.message == "HTTP request is missing param"
    assert error_message(b"") == "(empty response)"


def test_unauthorized_is_unavailable_without_the_password() -> None:
    """401: ARI is unusable with these credentials; the message names the settings, never the password."""
    ari, _ = client(FakeAsterisk(json_reply(401, {"message": "Authentication required"})))
    failure = outcome(ari.request("GET", "/channels"))
    assert failure.check(AriUnavailable)
    assert "ARI_PASSWORD" in failure.value.message and PASSWORD not in failure.value.message


def test_503_not_booted_is_unavailable() -> None:
    """503 'Asterisk not booted' means try later."""
    ari, _ = client(FakeAsterisk(json_reply(503, {"message": "Asterisk not booted"})))
    assert outcome(ari.request("GET", "/channels")).check(AriUnavailable)


def test_success_with_a_body_that_is_not_json() -> None:
    """A 2xx whose body is not JSON is reported, not crashed on."""
    ari, _ = client(FakeAsterisk(lambda r: (200, {}, b"<html>")))
    assert outcome(ari.request("GET", "/channels")).check(AriError)


class _Http:
    """A treq-like client whose requests fail or hang as told."""

    def __init__(self, result: Any) -> None:
        self.result = result
        self.cancelled = 0

    def request(self, method: str, url: str, **kwargs: Any) -> Deferred:
        if self.result == "hang":
            def cancel(d: Deferred) -> None:
                self.cancelled += 1
            return Deferred(cancel)
        return fail(self.result)


@pytest.mark.parametrize("error,text", [(ConnectionRefusedError(), "connection refused"),
                                        (DNSLookupError("no such host"), "cannot resolve host name")])
def test_connection_errors_are_unavailable(error: Exception, text: str) -> None:
    """Connection failures are AriUnavailable with a readable reason."""
    ari = AriClient(_Http(error), Clock(), "http://avr:" + PASSWORD + "@h:8088", "avr", PASSWORD)
    failure = outcome(ari.request("GET", "/channels"))
    assert failure.check(AriUnavailable)
    assert text in failure.value.message and "GET /channels" in failure.value.message
    assert PASSWORD not in failure.value.message and PASSWORD not in repr(ari)


def test_timeout_on_the_clock() -> None:
    """A request without an answer within the timeout is cancelled and becomes AriUnavailable."""
    http = _Http("hang")
    clock = Clock()
    ari = AriClient(http, clock, "http://h:8088", "avr", PASSWORD, timeout=2.5)
    d = ari.request("POST", "/channels/1.2/answer")
    clock.advance(2.4)
    assert not d.called
    clock.advance(0.1)
    failure = outcome(d)
    assert failure.check(AriUnavailable) and "timed out after 2.5 s" in failure.value.message
    assert http.cancelled == 1 and clock.getDelayedCalls() == []


def test_no_timer_left_after_an_answer() -> None:
    """The timeout's timer is cancelled once Asterisk answered."""
    ari, clock = client(FakeAsterisk())
    outcome(ari.request("GET", "/asterisk/ping"))
    assert clock.getDelayedCalls() == []


def test_stream_returns_the_unread_response() -> None:
    """stream() hands back the response to read or relay; errors are mapped like request()."""
    wav = b"RIFF" + b"\x00" * 40
    asterisk = FakeAsterisk(lambda r: (200, {"Content-Type": "audio/wav"}, wav) if r.uri.endswith(b"/r1/file")
                            else (404, {"Content-type": "application/json"}, b'{"message":"Recording not found"}'))
    ari, _ = client(asterisk)
    response = outcome(ari.stream("/recordings/stored/r1/file"))
    assert response.code == 200 and response.headers.getRawHeaders("content-type") == ["audio/wav"]
    assert outcome(response.content()) == wav
    failure = outcome(ari.stream("/recordings/stored/r9/file"))
    assert failure.check(AriError) and failure.value.status == 404


def test_slow_body_counts_against_the_timeout() -> None:
    """The timeout covers reading the body too."""

    class Slow(Resource):
        isLeaf = True

        def render(self, request: Any) -> Any:
            request.setResponseCode(200)
            request.write(b"[")
            return NOT_DONE_YET

    clock = Clock()
    ari = AriClient(StubTreq(Slow()), clock, "http://h:8088", "avr", PASSWORD, timeout=1)
    d = ari.request("GET", "/channels")
    clock.advance(1)
    assert outcome(d).check(AriUnavailable)
