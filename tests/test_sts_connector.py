"""Choosing the STS connector by URL scheme, from the registry the composition root builds."""

from __future__ import annotations

import pytest
from twisted.internet.defer import succeed
from twisted.internet.testing import MemoryReactorClock
from zope.interface import implementer
from zope.interface.verify import verifyObject

from avr.config import Config
from avr.interfaces import IStsConnector, IStsSession
from avr.service import sts_connectors
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
    """A StsConnector over three recording connectors, registered as the composition root does."""
    ws, http, echo = Named("ws"), Named("http"), Named("echo")
    return StsConnector({"ws": ws, "wss": ws, "http": http, "https": http, None: echo}), ws, http, echo


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
    """Other schemes fail with StsConnectError naming the registered ones, and reach no connector."""
    connector, *connectors = dispatcher()
    failures: list = []
    connector.connect("ftp://sts/", "u", RecordingStsHandler()).addErrback(failures.append)
    assert failures[0].check(StsConnectError)
    assert failures[0].value.reason == "unsupported STS URL scheme 'ftp' (use ws, wss, http or https)"
    assert all(not c.urls for c in connectors)


def test_another_kind_of_agent_is_one_more_entry():
    """A connector registered under a new scheme (or as the default for calls without a URL) is used as such."""
    pipeline, ws = Named("pipeline"), Named("ws")
    connector = StsConnector({"ws": ws, "pipeline": pipeline, None: pipeline})
    results: list = []
    for url in ("pipeline://local", None, "ws://sts"):
        connector.connect(url, "u", RecordingStsHandler()).addCallback(results.append)
    assert results == ["pipeline", "pipeline", "ws"]
    assert pipeline.urls == ["pipeline://local", None]


def test_no_default_agent_fails_calls_without_a_url():
    """A registry without the None entry refuses calls that have no STS URL, readably."""
    failures: list = []
    StsConnector({"ws": Named("ws")}).connect(None, "u", RecordingStsHandler()).addErrback(failures.append)
    assert failures[0].check(StsConnectError) and "no STS URL" in failures[0].value.reason


def test_production_registry_has_the_three_clients_at_the_configured_rate():
    """sts_connectors: ws/wss, http/https and the echo default, each an IStsConnector; STS_SAMPLE_RATE is the
    rate of their sessions."""
    registry = sts_connectors(MemoryReactorClock(), Config(sts_sample_rate=16000, sts_connect_timeout=2000))
    assert set(registry) == {"ws", "wss", "http", "https", None}
    assert registry["ws"] is registry["wss"] and isinstance(registry["ws"], WebSocketStsConnector)
    assert registry["http"] is registry["https"] and isinstance(registry["http"], HttpStsConnector)
    assert isinstance(registry[None], EchoStsConnector)
    assert all(verifyObject(IStsConnector, c) for c in registry.values())
    connector = StsConnector(registry)
    assert verifyObject(IStsConnector, connector)
    sessions: list = []
    connector.connect(None, "u", RecordingStsHandler()).addCallback(sessions.append)
    assert verifyObject(IStsSession, sessions[0])
    assert (sessions[0].input_rate, sessions[0].output_rate) == (16000, 16000)
