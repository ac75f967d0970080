"""Tests for avr.service: the object graph built from a Config, on a memory reactor."""

from __future__ import annotations

import errno
import json

import pytest
from treq.testing import StubTreq
from twisted.internet.testing import MemoryReactorClock

from avr.config import Config
from avr.service import ListenFailed, audiosocket_address, build
from avr.tap import build_real_service
from fakes import FakeStsConnector


def make(**settings: object) -> tuple[MemoryReactorClock, object]:
    reactor = MemoryReactorClock()
    avr = build(reactor, Config(**settings), http_client=StubTreq(None), sts_connector=FakeStsConnector())
    return reactor, avr


def test_audiosocket_only_by_default() -> None:
    """Without HTTP_PORT only the AudioSocket port is opened, on the bind address, as avr-core does."""
    reactor, avr = make()
    avr.service.startService()
    assert [(port, interface) for port, _, _, interface in reactor.tcpServers] == [(5001, "127.0.0.1")]
    avr.service.stopService()


def test_http_and_audiosocket_ports() -> None:
    """With HTTP_PORT both servers listen, HTTP first (as avr-core logs them)."""
    reactor, avr = make(http_port=6001, bind_address="0.0.0.0")
    avr.service.startService()
    assert [port for port, *_ in reactor.tcpServers] == [6001, 5001]
    assert avr.service.getServiceNamed("http") and avr.service.getServiceNamed("audiosocket")
    avr.service.stopService()


def test_both_listeners_use_the_listen_backlog() -> None:
    """LISTEN_BACKLOG (default 4096, not Twisted's 50) is the backlog of the AudioSocket and the HTTP port."""
    reactor, avr = make(http_port=6001)
    avr.service.startService()
    assert [(port, backlog) for port, _, backlog, _ in reactor.tcpServers] == [(6001, 4096), (5001, 4096)]
    avr.service.stopService()
    reactor, avr = make(http_port=6001, listen_backlog=2000, bind_address="::")
    avr.service.startService()
    assert [(port, backlog, interface) for port, _, backlog, interface in reactor.tcpServers] == [
        (6001, 2000, "::"), (5001, 2000, "::")]
    avr.service.stopService()


def test_audiosocket_timeouts_come_from_the_config() -> None:
    """AUDIOSOCKET_UUID_TIMEOUT and AUDIOSOCKET_IDLE_TIMEOUT (default 30 s, 0 = never) reach the AudioSocket server."""
    for settings, idle in (({}, 30), ({"idle_timeout": 0}, 0), ({"idle_timeout": 120, "uuid_timeout": 9}, 120)):
        reactor, avr = make(**settings)
        avr.service.startService()
        factory = reactor.tcpServers[0][1]
        assert (factory.idle.timeout, factory.uuid_timeout) == (idle, settings.get("uuid_timeout", 5))
        avr.service.stopService()


def test_port_in_use_refuses_to_start() -> None:
    """A port that cannot be bound stops startup with an error instead of running without a listener."""
    from twisted.internet.error import CannotListenError
    from twisted.internet.testing import RaisingMemoryReactor

    reactor = RaisingMemoryReactor(
        listenException=CannotListenError("127.0.0.1", 5001, OSError(errno.EADDRINUSE, "Address already in use")))
    avr = build(reactor, Config(), http_client=StubTreq(None), sts_connector=FakeStsConnector())
    with pytest.raises(ListenFailed) as e:
        avr.service.privilegedStartService()
    assert str(e.value) == "cannot listen on 127.0.0.1:5001 (PORT, BIND_ADDRESS): Address already in use"


def test_health_reports_calls_and_ari_state() -> None:
    """GET /health answers ok with the AudioSocket call count and, without ARI, says ARI is not configured: ``ari``
    is asterisk-api's boolean (false), ``ariState`` says why."""
    _, avr = make(http_port=6001)
    client = StubTreq(avr.http_app.resource())
    response = client.get("http://avr/health")
    client.flush()
    body = json.loads(client.content(response.result).result)  # type: ignore[attr-defined]
    assert body["status"] == "ok" and body["audiosocketCalls"] == 0 and body["ari"] is False
    assert body["ariState"] == "not configured"
    calls = client.get("http://avr/calls")  # the call registry works without ARI ...
    client.flush()
    assert calls.result.code == 200  # type: ignore[attr-defined]
    originate = client.post("http://avr/calls", json={"endpoint": "PJSIP/1001"})  # ... call control does not
    client.flush()
    assert originate.result.code == 503  # type: ignore[attr-defined]


def test_ari_configured_builds_call_control() -> None:
    """With ARI settings the control model exists, /health shows its state and the events stream starts."""
    reactor, avr = make(
        http_port=6001, ari_url="http://127.0.0.1:8088", ari_username="avr", ari_password="pw", ari_app="avr"
    )
    assert avr.control is not None
    avr.service.startService()
    client = StubTreq(avr.http_app.resource())
    response = client.get("http://avr/health")
    client.flush()
    body = json.loads(client.content(response.result).result)  # type: ignore[attr-defined]
    assert body["ari"] is False and body["ariState"] in ("connecting", "disconnected") and body["activeCalls"] == 0
    assert reactor.tcpClients and reactor.tcpClients[0][:2] == ("127.0.0.1", 8088)
    avr.service.stopService()


def test_audiosocket_address_for_media() -> None:
    """Asterisk is told to reach avr on the bind address, or loopback when avr listens on all interfaces."""
    assert audiosocket_address(Config(port=5001, bind_address="10.0.0.5")) == "10.0.0.5:5001"
    assert audiosocket_address(Config(port=5001, bind_address="0.0.0.0")) == "127.0.0.1:5001"
    assert audiosocket_address(Config(port=5001, bind_address="::1")) == "[::1]:5001"
    assert audiosocket_address(Config(ari_audiosocket_address="pbx-side:7000")) == "pbx-side:7000"


def test_real_service_builds() -> None:
    """The twistd entry point's builder wires real clients without touching the network until started."""
    reactor = MemoryReactorClock()
    service = build_real_service(reactor, Config(http_port=6001))
    assert service.getServiceNamed("audiosocket") is not None
    assert not reactor.tcpClients
