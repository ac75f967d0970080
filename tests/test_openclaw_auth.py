"""
How the OpenClaw voice-call plugin authenticates: ``Authorization: Bearer <key>`` on every REST call, and an
``/events`` connection without any key, served only through the explicit ``KEYLESS_EVENTS_PORT`` (127.0.0.1).
"""

from __future__ import annotations

from typing import Any

import pytest
import pytest_twisted
from twisted.web.test.requesthelper import DummyRequest

from avr.config import Config
from avr.http.auth import check_api_key, presented_api_keys
from avr.http.json import ApiError
from avr.service import build
from tests.fakes import FakeStsConnector
from tests.raw_http import exchange, status_of, upgrade

KEY = "pl4gin-key-77"


def _request(*headers: tuple[bytes, bytes], uri: bytes = b"/calls") -> DummyRequest:
    request = DummyRequest([b"calls"])
    request.uri = uri
    for name, value in headers:
        request.requestHeaders.addRawHeader(name, value)
    return request


def test_bearer_token_is_a_presented_key() -> None:
    """The token of ``Authorization: Bearer`` counts (any case of the scheme); other schemes and empty ones do not."""
    assert presented_api_keys(_request((b"authorization", b"Bearer " + KEY.encode()))) == [KEY.encode()]
    assert presented_api_keys(_request((b"authorization", b"bearer  " + KEY.encode() + b" "))) == [KEY.encode()]
    assert presented_api_keys(_request((b"authorization", b"Basic dXNlcjpwYXNz"))) == []
    assert presented_api_keys(_request((b"authorization", b"Bearer "))) == []


def test_bearer_key_is_checked_like_the_others() -> None:
    """The right token passes; a wrong one is 401 without repeating either key."""
    check_api_key(_request((b"authorization", f"Bearer {KEY}".encode())), KEY)
    with pytest.raises(ApiError) as e:
        check_api_key(_request((b"authorization", b"Bearer nope")), KEY)
    assert e.value.status == 401 and KEY not in str(e.value.body()) and "nope" not in str(e.value.body())


class _Avr:
    """avr with an API key, its HTTP port and a keyless-events port on loopback."""

    def __init__(self, reactor: Any) -> None:
        config = Config(port=0, http_port=0, keyless_events_port=0, api_key=KEY)
        self.avr = build(reactor, config, http_client=None, sts_connector=FakeStsConnector())
        self.avr.service.startService()

    def port(self, name: str) -> int:
        return int(self.avr.service.getServiceNamed(name).port.getHost().port)


def _get(target: str, headers: str = "") -> bytes:
    return f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n{headers}\r\n".encode("latin-1")


@pytest.mark.integration
@pytest_twisted.ensureDeferred
async def test_events_without_a_key_only_on_the_keyless_port() -> None:
    """
    The plugin's keyless ``new WebSocket(ws://host/events)``: refused (401) on the ordinary port, opened on
    KEYLESS_EVENTS_PORT, whose other routes still need the key (given as the plugin's Bearer header).
    """
    from twisted.internet import reactor

    server = _Avr(reactor)
    try:
        keyless, ordinary = server.port("keyless-events"), server.port("http")
        assert server.avr.service.getServiceNamed("keyless-events").port.getHost().host == "127.0.0.1"
        refused = status_of(await exchange(reactor, ordinary, upgrade("/events")))
        opened = status_of(await exchange(reactor, keyless, upgrade("/events")))
        rest_without_key = status_of(await exchange(reactor, keyless, _get("/calls")))
        bearer = f"Authorization: Bearer {KEY}\r\n"
        rest_with_bearer = status_of(await exchange(reactor, keyless, _get("/calls", bearer)))
        bearer_events = status_of(await exchange(reactor, ordinary, upgrade("/events",
                                                                            f"Authorization: Bearer {KEY}\r\n")))
    finally:
        await server.avr.service.stopService()
    assert (refused, opened, bearer_events) == (401, 101, 101)
    assert rest_without_key == 401
    assert rest_with_bearer == 200
