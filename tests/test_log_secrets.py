"""
No secret reaches the log, at any level: avr built by `avr.service.build` on loopback, every log event captured
(debug included, as ``twistd -n`` prints them) while clients authenticate in every accepted way and fail in others.
"""

from __future__ import annotations

import json
from typing import Any, Iterator

import pytest
import pytest_twisted
import txaio
from twisted.logger import LogEvent, formatEvent, globalLogPublisher
from twisted.web.test.requesthelper import DummyRequest

from avr.config import Config
from avr.frames import HANGUP_FRAME, Kind, encode_frame, encode_uuid
from avr.logs import json_line, text_line
from avr.http.auth import check_api_key, presented_api_keys, redacted_access_log, strip_credentials
from avr.http.json import ApiError
from avr.service import build, sts_connectors
from avr.sts.connector import StsConnector
from avr.testing.ari import FakeAsterisk
from tests.raw_http import connect, exchange, status_of, upgrade

pytestmark = pytest.mark.integration

KEY = "Kq7issue8apikey"
WRONG_KEY = "Zx9notthekey42"
ARI_PASSWORD = "ari-pw-3141"
WEBHOOK_SECRET = "hook-secret-2718"
STS_TOKEN = "sts-token-1618"
STS_PASSWORD = "sts-pw-1414"
SECRETS = (KEY, WRONG_KEY, ARI_PASSWORD, WEBHOOK_SECRET, STS_TOKEN, STS_PASSWORD)
UUID = "935652e3-7c59-4edc-b17f-9646a9c2a265"


def rendered(event: LogEvent) -> str:
    """
    Everything an observer could write for ``event``: its text, every field (as a JSON logger would), traceback, and
    the lines avr's own observer writes in either ``LOG_FORMAT``.
    """
    failure = event.get("log_failure")
    return "\n".join([formatEvent(event), repr(event), failure.getTraceback() if failure is not None else "",
                      text_line(event), json_line(event)])


def leaks(events: list[LogEvent]) -> list[str]:
    """Where a secret shows in a log event of avr's process (the fake Asterisk's own are left out)."""
    found = []
    for event in events:
        namespace = str(event.get("log_namespace", ""))
        if namespace.startswith("avr.testing."):
            continue
        text = rendered(event)
        for secret in SECRETS:
            at = text.find(secret)
            if at >= 0:
                found.append(f"{namespace}: ...{text[max(0, at - 150):at + 30]}")
    return found


@pytest.fixture
def every_log_event() -> Iterator[list[LogEvent]]:
    """Every log event, and autobahn's own debug chatter switched on (it is off unless txaio's level says debug)."""
    events: list[LogEvent] = []
    globalLogPublisher.addObserver(events.append)
    txaio.set_global_log_level("debug")
    try:
        yield events
    finally:
        txaio.set_global_log_level("info")
        globalLogPublisher.removeObserver(events.append)


class Avr:
    """avr from `build()`, HTTP on a loopback port."""

    def __init__(self, reactor: Any, **settings: Any) -> None:
        from treq.client import HTTPClient
        from twisted.web.client import Agent, HTTPConnectionPool

        self.pool = HTTPConnectionPool(reactor, persistent=False)
        config = Config(port=0, http_port=0, api_key=KEY, **{"sts_connect_timeout": 2000, **settings})
        self.avr = build(reactor, config, http_client=HTTPClient(Agent(reactor, pool=self.pool)),
                         sts_connector=StsConnector(sts_connectors(reactor, config)))
        self.avr.service.startService()
        self.port = self.avr.service.getServiceNamed("http").port.getHost().port

    async def stop(self) -> None:
        await self.avr.service.stopService()
        await self.pool.closeCachedConnections()


def post(target: str, body: bytes, content_type: str = "application/json", headers: str = "") -> bytes:
    return (f"POST {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n{headers}\r\n").encode("latin-1") + body


#: Ways of presenting the key that authenticate an /events client (the fragment one is then refused by autobahn).
ACCEPTED = [
    ("/events", f"X-API-Key: {KEY}\r\n"),
    ("/events", f"Authorization: Bearer {KEY}\r\n"),
    (f"/events?api_key={KEY}", ""),
    (f"/events?api_k%65y={KEY}", ""),
    (f"/events?x=1&api_key={KEY}&y=2", ""),
    (f"/events?x=1#&api_key={KEY}", ""),
]


@pytest_twisted.ensureDeferred
async def test_events_handshakes_log_no_key_even_with_autobahn_debug_on(every_log_event: list[LogEvent]) -> None:
    """
    Every accepted way to authenticate /events (header, query, percent-encoded name, after a ``#``), with autobahn's
    handshake dumps switched on: the key appears in no log event, in no field, at no level.
    """
    from twisted.internet import reactor

    server = Avr(reactor)
    try:
        statuses = [status_of(await exchange(reactor, server.port, upgrade(target, headers)))
                    for target, headers in ACCEPTED]
        refused = status_of(await exchange(reactor, server.port, upgrade(f"/events?api_key={WRONG_KEY}")))
    finally:
        await server.stop()
    assert statuses == [101, 101, 101, 101, 101, 400]  # authenticated; autobahn refuses the '#' itself
    assert refused == 401
    assert any("opening handshake" in formatEvent(e) for e in every_log_event), "autobahn's debug lines are on"
    assert leaks(every_log_event) == []


@pytest.mark.logs_errors(
    r"(call_initiated|call_started|call_ended) for call .* not delivered after 1 attempt\(s\): connection refused")
@pytest_twisted.ensureDeferred
async def test_whole_service_logs_no_secret(log_events: list[LogEvent]) -> None:
    """
    avr with every secret configured (API key, ARI password, webhook secret, STS URL with a password and a token),
    connected to the fake Asterisk: starting, /events clients, /call registrations, refused requests, a call (and
    its summary line) and stopping write none of them to the log, at any level, in either format.
    """
    from twisted.internet import reactor

    fake = FakeAsterisk(reactor, app="avr", users={"avr": ARI_PASSWORD})
    fake.listen(reactor)
    server = Avr(
        reactor, ari_url=f"http://127.0.0.1:{fake.port}", ari_username="avr", ari_password=ARI_PASSWORD,
        webhook_url="http://127.0.0.1:9/hooks", webhook_secret=WEBHOOK_SECRET, webhook_timeout=500,
        sts_url=f"wss://avr:{STS_PASSWORD}@sts.invalid/s?token={STS_TOKEN}",
    )
    try:
        for target, headers in ACCEPTED:
            await exchange(reactor, server.port, upgrade(target, headers))
        body = json.dumps({"uuid": UUID, "payload": {"from": "2000"}}).encode()
        answers = [
            await exchange(reactor, server.port, post(f"/call?api_key={KEY}", body)),
            await exchange(reactor, server.port, post("/call", body, headers=f"X-API-Key: {KEY}\r\n")),
            await exchange(reactor, server.port, post(f"/call?api_key={WRONG_KEY}", body)),
            await exchange(reactor, server.port, post(f"/calls?api_k%65y={WRONG_KEY}", b"{}")),
        ]
        call = await connect(reactor, server.avr.service.getServiceNamed("audiosocket").port.getHost().port)
        call.transport.write(encode_uuid(UUID) + encode_frame(Kind.SLIN8, bytes(320)) + HANGUP_FRAME)
        await call.closed
    finally:
        await server.stop()
        await fake.close()
    assert [status_of(a) for a in answers] == [200, 200, 401, 401]
    assert any(e.get("call_id") == UUID and "Call summary" in formatEvent(e) for e in log_events)
    found = leaks(log_events)
    assert found == [], "\n".join(found)


@pytest_twisted.ensureDeferred
async def test_a_key_in_a_form_body_does_not_authenticate() -> None:
    """Only the documented places count: header X-API-Key and query ?api_key=. A form-encoded body does not."""
    from twisted.internet import reactor

    server = Avr(reactor)
    try:
        form = await exchange(reactor, server.port, post("/calls", f"api_key={KEY}".encode(),
                                                         content_type="application/x-www-form-urlencoded"))
        header = await exchange(reactor, server.port, post("/calls", b"{}", headers=f"X-API-Key: {KEY}\r\n"))
    finally:
        await server.stop()
    assert status_of(form) == 401
    assert status_of(header) == 503  # authenticated; ARI is not configured


def request_for(uri: bytes, key_header: bytes | None = None) -> DummyRequest:
    request = DummyRequest([b""])
    request.method, request.uri, request.clientproto = b"GET", uri, b"HTTP/1.1"
    request.code, request.sentLength = 200, 0
    if key_header is not None:
        request.requestHeaders.setRawHeaders(b"x-api-key", [key_header])
    return request


@pytest.mark.parametrize("uri", [
    b"/events?api_key=K", b"/events?api_k%65y=K", b"/events?%61pi_key=K", b"/events?x=1#&api_key=K",
    b"/events?x=1&api_key=K&api_key=L", b"/events?api+key=K&api_key=K", b"/events?a=%&api_key=K",
])
def test_what_authenticates_is_what_the_access_log_masks(uri: bytes) -> None:
    """The access log parses the query exactly as the key check does: a presented key is never in the log line."""
    request = request_for(uri)
    check_api_key(request, "K")
    assert b"K" in presented_api_keys(request)
    line = redacted_access_log("[01/Jan/2026:12:00:00 +0000]", request)
    assert "=K" not in line and "***" in line


def test_the_key_is_looked_up_only_in_the_header_and_the_query() -> None:
    """Request arguments that did not come from the query (Twisted merges form bodies into them) do not count."""
    request = request_for(b"/calls")
    request.args = {b"api_key": [b"K"]}
    with pytest.raises(ApiError) as info:
        check_api_key(request, "K")
    assert info.value.status == 401
    check_api_key(request_for(b"/calls", key_header=b"K"), "K")


def test_strip_credentials_leaves_nothing_to_log() -> None:
    """An authenticated request handed on (to autobahn) keeps its path and other parameters, not its credentials."""
    request = request_for(b"/events?x=1&api_k%65y=K&token=T", key_header=b"K")
    request.requestHeaders.setRawHeaders(b"authorization", [b"Basic Sw=="])
    request.requestHeaders.setRawHeaders(b"host", [b"avr"])
    strip_credentials(request)
    assert request.uri == b"/events?x=1&api_k%65y=***&token=***"
    assert [name for name, _ in request.requestHeaders.getAllRawHeaders()] == [b"Host"]
