"""
avr's HTTP site: a request is admitted when its headers are complete, before any of its body is read.

twisted.web reads (and spools to a temporary file) the whole body of a request before the resource sees it, so a
500 MB upload without the API key would be received in full just to be answered 401. `GatedRequest` asks the site's
`RequestGate` as soon as the headers are in (``Request.gotLength``): a missing key is answered 401 and a declared
``Content-Length`` over the route's limit 413, at once, and the body is never read; a chunked body is counted as it
arrives and refused (413) the moment it passes the limit. The route handlers still check the key and the size
themselves; the gate only makes sure that an unacceptable body is not received first.
"""

from __future__ import annotations

from io import BytesIO
from typing import Any, Mapping
from urllib.parse import unquote_to_bytes

from attrs import define, field, frozen
from twisted.internet.interfaces import IDelayedCall, ITCPTransport
from twisted.python.failure import Failure
from twisted.web.resource import IResource
from twisted.web.server import Request, Site
from werkzeug.exceptions import HTTPException
from werkzeug.routing import Map

from avr.http.auth import check_api_key, redacted_access_log
from avr.http.json import ApiError, json_response

#: Seconds a refused client may go on sending (its bytes are discarded) after the answer, before the connection is
#: cut: closing at once, with its body unread, would make the kernel reset the connection and could destroy the
#: answer before the client reads it.
LINGER_SECONDS = 2.0


@frozen
class RoutePolicy:
    """What one route admits before its body is read."""

    #: Served without the API key.
    public: bool = False
    #: Largest body, in bytes; ``None`` = the site's ``max_body``.
    max_body: int | None = None


@define(eq=False)
class RequestGate:
    """
    Decides from a request's line and headers alone whether its body may be received.

    :param url_map: the Klein app's routes (``app.url_map``), to find the endpoint of a request.
    :param api_key: required by every route that is not public (``None``: no key configured).
    :param max_body: largest body of a route without a policy of its own, in bytes (``HTTP_MAX_BODY``).
    :param policies: `RoutePolicy` by endpoint name (see the route modules' ``policies()``); a request that matches
        no route needs the key and gets ``max_body``.
    :param keyless: endpoints the site of this gate serves without the key although they are not public (the
        ``KEYLESS_EVENTS_PORT`` listener's ``/events``; see `key_waived`).
    """

    url_map: Map
    api_key: str | None = field(repr=False)
    max_body: int
    policies: Mapping[str, RoutePolicy] = field(factory=dict)
    keyless: frozenset[str] = frozenset()

    def admit(self, request: Any, length: int | None) -> int:
        """
        Check ``request`` (its ``method``, ``uri`` and headers are set; its body is not read) whose body declares
        ``length`` bytes (``None``: chunked).

        :return: the most body bytes the request may send.
        :raises ApiError: 401 without the key; 413 for a declared length over the limit.
        """
        endpoint = self._endpoint(request.method, request.uri)
        policy = self.policies.get(endpoint, RoutePolicy()) if endpoint is not None else RoutePolicy()
        if not policy.public and endpoint not in self.keyless:
            check_api_key(request, self.api_key)
        limit = policy.max_body if policy.max_body is not None else self.max_body
        if length is not None and length > limit:
            raise too_large(limit)
        return limit

    def _endpoint(self, method: bytes, uri: bytes) -> str | None:
        # The path as Klein matches it: the target before "?", each segment percent-decoded.
        segments = uri.partition(b"?")[0].split(b"/")[1:]
        try:
            path = "/" + "/".join(unquote_to_bytes(s).decode("utf-8") for s in segments)
            endpoint, _ = self.url_map.bind("avr").match(path, method=method.decode("ascii"))
        except (HTTPException, UnicodeDecodeError):
            # No route (404/405, a redirect) or an undecodable path: treated like any protected route.
            return None
        return str(endpoint)


def key_waived(request: Any, endpoint: str) -> bool:
    """
    The site ``request`` came in through serves ``endpoint`` without the API key (its gate lists it as
    ``keyless``): for the route handlers, which check the key themselves.
    """
    site = getattr(getattr(request, "channel", None), "site", None)
    return isinstance(site, AvrSite) and endpoint in site.gate.keyless


def too_large(limit: int) -> ApiError:
    """The 413 of a body over ``limit`` bytes (the message the route handlers give too)."""
    return ApiError(413, f"request body is larger than the limit of {limit} bytes", limit=limit)


class GatedRequest(Request):
    """
    A `twisted.web.server.Request` that asks its site's `RequestGate` before receiving a body (see the module).

    A refused request is answered (JSON, ``Connection: close``) and never processed; the rest of its body is
    discarded, the write side closed, and the connection cut `LINGER_SECONDS` later unless the client has gone.
    """

    _refused = False
    _body_limit: int | None = None
    _body_received = 0
    _linger: IDelayedCall | None = None

    def gotLength(self, length: int | None) -> None:
        """All headers are in: admit the request or answer it now (a body-less request is left to its route)."""
        channel = self.channel
        # The request line is stored on the channel until the body is complete (``requestReceived``); these are
        # HTTPChannel's attributes for it. Without them (another Twisted), the route handlers' checks remain.
        command, path, version = (getattr(channel, name, None) for name in ("_command", "_path", "_version"))
        if length == 0 or command is None or path is None or version is None:
            Request.gotLength(self, length)
            return
        self.method, self.uri, self.clientproto = command, path, version
        try:
            self._body_limit = _site(channel).gate.admit(self, length)
        except ApiError as e:
            self._refuse(e)
            return
        Request.gotLength(self, length)

    def handleContentChunk(self, data: bytes) -> None:
        """Part of the body: dropped once refused; refused (413) when it passes the limit."""
        if self._refused:
            return
        self._body_received += len(data)
        if self._body_limit is not None and self._body_received > self._body_limit:
            self._refuse(too_large(self._body_limit))
            return
        Request.handleContentChunk(self, data)

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        """The body is complete: processed as usual, unless it was refused (answered already)."""
        if not self._refused:
            Request.requestReceived(self, command, path, version)

    def connectionLost(self, reason: Failure) -> None:
        if self._linger is not None and self._linger.active():
            self._linger.cancel()
        self._linger = None
        Request.connectionLost(self, reason)

    def _refuse(self, error: ApiError) -> None:
        self._refused = True
        if self.content is not None:
            self.content.close()
        self.content = BytesIO()  # nothing more is written to it
        # The answer takes the place of "100 Continue": the channel must not send one after it.
        self.requestHeaders.removeHeader(b"expect")
        channel = self.channel
        channel.persistent = False
        self.setHeader(b"connection", b"close")
        body = json_response(self, error.status, error.body())
        self.setHeader(b"content-length", b"%d" % len(body))
        self.write(body)
        _site(channel).log(self)
        channel.dataReceived = _discard  # type: ignore[method-assign]
        transport = channel.transport
        if ITCPTransport.providedBy(transport):
            transport.loseWriteConnection()
            self._linger = channel.callLater(LINGER_SECONDS, transport.abortConnection)
        else:
            channel.loseConnection()


def _discard(data: bytes) -> None:
    """What a refused connection's further bytes go to."""


def _site(channel: Any) -> AvrSite:
    """The site of a channel (``Site.buildProtocol`` sets it)."""
    site: AvrSite = channel.site
    return site


class AvrSite(Site):
    """
    The `twisted.web.server.Site` avr serves its HTTP routes with: `GatedRequest` requests admitted by ``gate``, and
    the access log through `avr.http.auth.redacted_access_log` (no key in the log).
    """

    requestFactory = GatedRequest

    def __init__(self, resource: IResource, gate: RequestGate, **kwargs: Any) -> None:
        kwargs.setdefault("logFormatter", redacted_access_log)
        Site.__init__(self, resource, **kwargs)
        self.gate = gate
