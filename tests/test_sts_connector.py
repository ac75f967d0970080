"""Choosing the STS client by URL scheme."""

from __future__ import annotations

import pytest
from twisted.internet.defer import succeed
from twisted.internet.testing import MemoryReactorClock
from zope.interface import implementer
from zope.interface.verify import verifyObject

from avr.interfaces import IStsConnector
from avr.sts.connector import StsConnector
from avr.sts.echo import EchoStsConnector
from avr.sts.errors import StsConnectError
from avr.sts.http import HttpStsConnector
from avr.sts.websocket import WebSocketStsConnector
from avr.testing.sts import RecordingStsHandler


@implementer(IStsConnector)
class Named:
    """A connector that records which URLs it was asked for."""

    def __init__(self, name):
        self.name = name
        self.urls = []

    def connect(self, url, uuid, handler):
        self.urls.append(url)
        return succeed(self.name)


def dispatcher():
    """A StsConnector over three recording connectors."""
    ws, http, echo = Named("ws"), Named("http"), Named("echo")
    return StsConnector(ws, http, echo), ws, http, echo


@pytest.mark.parametrize(
    "url, expected",
    [
        (None, "echo"),
        ("ws://sts:6030", "ws"),
        ("WSS://sts/x?a=1", "ws"),
        ("http://sts:6030/speech-to-speech-stream", "http"),
        ("https://sts/stream", "http"),
    ],
)
def test_dispatch_by_scheme(url, expected):
    """None goes to echo, ws/wss to the WebSocket client, http/https to the legacy client, URL unchanged."""
    connector, *connectors = dispatcher()
    results: list = []
    connector.connect(url, "u", RecordingStsHandler()).addCallback(results.append)
    assert results == [expected]
    (chosen,) = [c for c in connectors if c.urls]
    assert chosen.name == expected and chosen.urls == [url]


def test_unsupported_scheme_fails_readably():
    """Other schemes fail with StsConnectError and reach no connector."""
    connector, *connectors = dispatcher()
    failures: list = []
    connector.connect("ftp://sts/", "u", RecordingStsHandler()).addErrback(failures.append)
    assert failures[0].check(StsConnectError)
    assert "ftp" in failures[0].value.reason
    assert all(not c.urls for c in connectors)


def test_production_wiring_provides_the_interfaces():
    """for_reactor builds the three real connectors, each an IStsConnector."""
    connector = StsConnector.for_reactor(MemoryReactorClock(), connect_timeout=2.0)
    assert verifyObject(IStsConnector, connector)
    assert isinstance(connector._websocket, WebSocketStsConnector)
    assert isinstance(connector._http, HttpStsConnector)
    assert isinstance(connector._echo, EchoStsConnector)
    assert all(verifyObject(IStsConnector, c) for c in (connector._websocket, connector._http, connector._echo))
