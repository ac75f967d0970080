"""Chooses the STS connector of a call by the scheme of its STS URL, from a registry built in the composition root."""

from __future__ import annotations

from typing import Mapping
from urllib.parse import urlsplit

from attrs import frozen
from twisted.internet.defer import Deferred, fail
from zope.interface import implementer

from avr.interfaces import IStsConnector, IStsHandler
from avr.sts.errors import StsConnectError


@implementer(IStsConnector)
@frozen
class StsConnector:
    """
    Dispatches `IStsConnector.connect` to the connector registered for the URL's scheme (case-insensitive).

    :param by_scheme: lower-case scheme → connector (e.g. ``ws`` and ``wss`` → the WebSocket STS client); the key
        ``None`` serves calls without an STS URL (the built-in echo agent). See `avr.service.sts_connectors`.
    """

    by_scheme: Mapping[str | None, IStsConnector]

    def connect(self, url: str | None, uuid: str, handler: IStsHandler) -> Deferred:
        """Open the session with the connector for ``url``'s scheme; an unknown scheme fails with `StsConnectError`."""
        scheme: str | None = None
        if url is not None:
            try:
                scheme = urlsplit(url).scheme.lower()
            except ValueError:
                scheme = ""
        connector = self.by_scheme.get(scheme)
        if connector is None:
            if url is None:
                return fail(StsConnectError("no STS URL, and no agent for calls without one"))
            known = [s for s in self.by_scheme if s is not None]
            use = ", ".join(known[:-1]) + f" or {known[-1]}" if len(known) > 1 else "".join(known)
            return fail(StsConnectError(f"unsupported STS URL scheme {scheme!r} (use {use})"))
        return connector.connect(url, uuid, handler)
