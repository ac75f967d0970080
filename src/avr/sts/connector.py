"""Chooses the STS client by URL scheme: none (echo agent), ``ws``/``wss`` (AVR STS protocol), ``http``/``https`` (legacy)."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from twisted.internet.defer import Deferred, fail
from zope.interface import implementer

from avr.interfaces import IStsConnector, IStsHandler
from avr.sts.echo import EchoStsConnector
from avr.sts.errors import StsConnectError
from avr.sts.http import HttpStsConnector
from avr.sts.websocket import WebSocketStsConnector


@implementer(IStsConnector)
class StsConnector:
    """
    Dispatches `IStsConnector.connect` by URL scheme.

    :param websocket: opens ``ws://`` and ``wss://`` sessions.
    :param http: opens ``http://`` and ``https://`` sessions.
    :param echo: opens sessions when the URL is ``None``.
    """

    def __init__(self, websocket: IStsConnector, http: IStsConnector, echo: IStsConnector) -> None:
        self._websocket = websocket
        self._http = http
        self._echo = echo

    @classmethod
    def for_reactor(cls, reactor: Any, connect_timeout: float = 5.0, trust_root: str | None = None) -> StsConnector:
        """
        The production wiring: all three connectors on ``reactor``.

        :param trust_root: PEM CA file for wss:// and https:// peers (``None``: the platform's CAs).
        :raises avr.config.ConfigError: ``trust_root`` cannot be used.
        """
        return cls(
            WebSocketStsConnector(reactor, connect_timeout, trust_root),
            HttpStsConnector(reactor, connect_timeout, trust_root),
            EchoStsConnector(reactor),
        )

    def connect(self, url: str | None, uuid: str, handler: IStsHandler) -> Deferred:
        """Open the session with the connector for ``url``'s scheme; an unsupported scheme fails with `StsConnectError`."""
        if url is None:
            return self._echo.connect(None, uuid, handler)
        try:
            scheme = urlsplit(url).scheme.lower()
        except ValueError:
            scheme = ""
        if scheme in ("ws", "wss"):
            return self._websocket.connect(url, uuid, handler)
        if scheme in ("http", "https"):
            return self._http.connect(url, uuid, handler)
        return fail(StsConnectError(f"unsupported STS URL scheme {scheme!r} (use ws, wss, http or https)"))
