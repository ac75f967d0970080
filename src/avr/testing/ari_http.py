"""
Asterisk's HTTP server as the fake has it: a twisted.web resource that routes ``/ari/...`` requests to the handlers
of `avr.testing.ari_rest` and writes Asterisk's exact responses (facts 9-13 of the fixtures README):
``Server: Asterisk``, ``Cache-Control: no-cache, no-store``, ``Content-type: application/json`` (lower-case t),
compact JSON, 204 with ``Content-Length: 0``, 201 with ``Location``, 401 with ``WWW-Authenticate``, 405 with
``Allow``; parameters from the query string (last value wins), a form body or a JSON body.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, unquote, urlsplit

from attrs import frozen
from autobahn.twisted.resource import WebSocketResource
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http_headers import Headers
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from avr.testing.ari_clock import http_date
from avr.testing.ari_params import AriHttpError, param_str

if TYPE_CHECKING:
    from avr.testing.ari_server import AsteriskServer

METHOD_ORDER = ("GET", "POST", "PUT", "DELETE")
REALM = "Asterisk REST Interface"


def html_error(status: int, title: str, text: str) -> bytes:
    """The HTML page Asterisk's HTTP server sends for errors outside ARI's JSON (e.g. a WebSocket without ``app``)."""
    return (
        '<!DOCTYPE HTML PUBLIC "-//IETF//DTD HTML 2.0//EN">\r\n<html><head>\r\n'
        f"<title>{status} {title}</title>\r\n</head><body>\r\n<h1>{title}</h1>\r\n<p>{text}</p>\r\n<hr />\r\n"
        "<address>Asterisk</address>\r\n</body></html>\r\n"
    ).encode()


@frozen
class RecordedRequest:
    """One REST request the fake received (for test assertions)."""

    method: str
    path: str
    params: dict
    body: Any
    authorized: bool


@frozen
class AriRequest:
    """A parsed ARI request as handlers see it."""

    method: str
    path_args: dict
    params: dict
    body: Any


@frozen
class AriResponse:
    """What a handler returns: status, JSON body (or raw bytes with their content type) and extra headers."""

    status: int = 200
    body: Any = None
    raw: bytes | None = None
    content_type: str = "application/json"
    headers: tuple = ()


class _AsteriskHeaders(Headers):
    """Response headers written with Asterisk's spelling (``Content-type``), which Twisted would canonicalise."""

    def getAllRawHeaders(self) -> Iterator[tuple[bytes, Sequence[bytes]]]:
        """Yield the headers, renaming ``Content-Type`` to ``Content-type`` for JSON responses."""
        json_body = (self.getRawHeaders(b"content-type") or [b""])[0] == b"application/json"
        for name, values in super().getAllRawHeaders():
            yield (b"Content-type" if json_body and name == b"Content-Type" else name), values


def parse_basic(header: str | None) -> tuple[str, str] | None:
    """``Authorization: Basic ...`` → ``(user, password)``; ``None`` if absent or malformed."""
    if not header or not header.lower().startswith("basic "):
        return None
    try:
        decoded = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, sep, password = decoded.partition(":")
    return (user, password) if sep else None


def write_response(request: Any, clock_wall: float, status: int, *, body: bytes = b"", content_type: str | None = None,
                   headers: tuple = ()) -> None:  # fmt: skip
    """Write a complete response with Asterisk's headers, in Asterisk's order."""
    old = request.responseHeaders
    request.responseHeaders = new = _AsteriskHeaders()
    new.setRawHeaders(b"Server", [b"Asterisk"])
    new.setRawHeaders(b"Date", [http_date(clock_wall).encode()])
    connection = old.getRawHeaders(b"connection")
    if connection:
        new.setRawHeaders(b"Connection", connection)
    new.setRawHeaders(b"Cache-Control", [b"no-cache, no-store"])
    for name, value in headers:
        new.setRawHeaders(name.encode(), [value.encode()])
    if content_type is not None and body:
        new.setRawHeaders(b"Content-Type", [content_type.encode()])
    new.setRawHeaders(b"Content-Length", [str(len(body)).encode()])
    request.setResponseCode(status)
    if body:
        request.write(body)
    request.finish()


class _Route:
    def __init__(self) -> None:
        self.literal: dict[str, _Route] = {}
        self.wildcard: tuple[str, _Route] | None = None
        self.methods: dict[str, Callable[..., Any]] = {}


def build_routes(table: Iterable[tuple[str, str, Callable[..., Any]]]) -> _Route:
    """Build the routing tree; literal segments win over ``{wildcards}`` as in Asterisk's ARI router."""
    root = _Route()
    for pattern, method, handler in table:
        node = root
        for segment in pattern.strip("/").split("/"):
            if segment.startswith("{"):
                if node.wildcard is None:
                    node.wildcard = (segment[1:-1], _Route())
                node = node.wildcard[1]
            else:
                node = node.literal.setdefault(segment, _Route())
        node.methods[method] = handler
    return root


class AriResource(Resource):
    """
    The whole HTTP tree of the fake Asterisk (``/ari/...`` plus the ``/ari/events`` WebSocket); other paths get
    Asterisk's HTML 404.
    """

    isLeaf = True
    log = Logger()

    def __init__(self, server: AsteriskServer, routes: Iterable[tuple[str, str, Callable[..., Any]]]) -> None:
        super().__init__()
        self._server = server
        self._routes = build_routes(routes)
        self._websocket: WebSocketResource | None = None

    # ----------------------------------------------------------------------------------------------------------------
    # Request plumbing

    def render(self, request: Any) -> Any:
        """Dispatch one request (see the class docstring)."""
        server = self._server
        if server.status == "down":
            transport = request.channel.transport
            if transport is not None:
                transport.abortConnection()
            return NOT_DONE_YET
        server.http_channels.add(request.channel)
        path = request.path.decode("latin-1")
        if server.status == "booting" or not (path == "/ari" or path.startswith("/ari/")):
            self._html(request, 404, "Not Found", "The requested URL was not found on this server.")
            return NOT_DONE_YET
        query = [(k, v) for k, v in parse_qsl(urlsplit(request.uri.decode("latin-1")).query, keep_blank_values=True)]
        if path == "/ari/events":
            return self._events(request, dict(query))
        try:
            params, body = self._params(request, query)
        except AriHttpError as error:
            server.note_request(RecordedRequest(request.method.decode(), path, dict(query), None, True))
            self._json(request, error.status, error.body)
            return NOT_DONE_YET
        authorized = server.authorized(_header(request, b"authorization"), dict(query).get("api_key"))
        server.note_request(RecordedRequest(request.method.decode(), path, params, body, authorized))
        if not authorized:
            self._unauthorized(request)
            return NOT_DONE_YET
        method = request.method.decode()
        node, path_args = self._match(path[4:])
        if node is None or not node.methods:
            self._json(request, 404, {"message": "Resource not found"})
            return NOT_DONE_YET
        if method == "OPTIONS":
            self._json(request, 204, None, headers=(("Allow", self._allow(node)),))
            return NOT_DONE_YET
        handler = node.methods.get(method)
        if handler is None:
            self._json(request, 405, {"message": "Invalid method"}, headers=(("Allow", self._allow(node)),))
            return NOT_DONE_YET
        self._invoke(request, handler, AriRequest(method, path_args, params, body))
        return NOT_DONE_YET

    def _events(self, request: Any, query: dict[str, str]) -> Any:
        """``GET /ari/events``: 401 JSON, 400 HTML without ``app`` (fact 11), else the WebSocket upgrade."""
        if not self._server.authorized(_header(request, b"authorization"), query.get("api_key")):
            self._unauthorized(request)
            return NOT_DONE_YET
        if not valid_app_names(query.get("app", "")):
            self._html(request, 400, "Bad Request", "HTTP request is missing param: [app]")
            return NOT_DONE_YET
        if self._websocket is None:
            self._websocket = WebSocketResource(self._server.events_factory())
        self._server.http_channels.discard(request.channel)
        return self._websocket.render(request)

    def _unauthorized(self, request: Any) -> None:
        self._json(request, 401, {"message": "Authentication required"},
                   headers=(("WWW-Authenticate", f'Basic realm="{REALM}"'),))  # fmt: skip

    @staticmethod
    def _allow(node: _Route) -> str:
        return ",".join(["OPTIONS", *[m for m in METHOD_ORDER if m in node.methods]])

    def _match(self, path: str) -> tuple[_Route | None, dict]:
        node = self._routes
        args: dict[str, str] = {}
        for segment in path.strip("/").split("/") if path.strip("/") else []:
            if segment in node.literal:
                node = node.literal[segment]
            elif node.wildcard is not None and segment:
                args[node.wildcard[0]] = unquote(segment)
                node = node.wildcard[1]
            else:
                return None, {}
        if path.endswith("/") and path != "/":
            return None, {}
        return node, args

    @staticmethod
    def _params(request: Any, query: list[tuple[str, str]]) -> tuple[dict, Any]:
        """Query (last value wins, fact 20), then a form or JSON body on top (``variables`` stays an object)."""
        params: dict[str, Any] = {}
        for key, value in query:
            params[key] = value
        raw = request.content.read() if request.content is not None else b""
        content_type = (_header(request, b"content-type") or "").split(";")[0].strip().lower()
        body: Any = None
        if raw and content_type == "application/json":
            try:
                body = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, ValueError):
                raise AriHttpError(400, "Error parsing request body") from None
            if isinstance(body, dict):
                for key, value in body.items():
                    params[key] = value if isinstance(value, (dict, list)) else param_str(value)
        elif raw and content_type == "application/x-www-form-urlencoded":
            for key, value in parse_qsl(raw.decode("utf-8", "replace"), keep_blank_values=True):
                params[key] = value
        return params, body

    def _invoke(self, request: Any, handler: Callable[..., Any], ari: AriRequest) -> None:
        """Run the handler; write its result (now, or when its Deferred fires, unless the client has gone)."""
        gone: list[bool] = []
        finished = request.notifyFinish()
        finished.addErrback(lambda _f: None)
        finished.addBoth(lambda _r: gone.append(True))

        def done(outcome: Any) -> None:
            if gone:
                return
            if not isinstance(outcome, Failure):
                self._respond(request, outcome)
            elif isinstance(outcome.value, AriHttpError):
                self._json(request, outcome.value.status, outcome.value.body)
            else:
                self.log.failure("Fake ARI handler for {method} {path} failed", outcome, method=ari.method,
                                 path=request.path)  # fmt: skip
                self._json(request, 500, {"message": "Internal Server Error"})

        defer.maybeDeferred(handler, self._server.asterisk, ari).addBoth(done)

    def _respond(self, request: Any, result: Any) -> None:
        if not isinstance(result, AriResponse):
            result = AriResponse(204) if result is None else AriResponse(200, result)
        if result.raw is not None:
            write_response(request, self._server.asterisk.clock.wall(), result.status, body=result.raw,
                           content_type=result.content_type, headers=result.headers)  # fmt: skip
            return
        self._json(request, result.status, result.body, headers=result.headers)

    def _json(self, request: Any, status: int, body: Any, headers: tuple = ()) -> None:
        data = b"" if body is None else json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        write_response(request, self._server.asterisk.clock.wall(), status, body=data, content_type="application/json",
                       headers=headers)  # fmt: skip

    def _html(self, request: Any, status: int, title: str, text: str) -> None:
        write_response(request, self._server.asterisk.clock.wall(), status, body=html_error(status, title, text),
                       content_type="text/html")  # fmt: skip


def _header(request: Any, name: bytes) -> str | None:
    values = request.requestHeaders.getRawHeaders(name)
    return values[-1].decode("latin-1") if values else None


def valid_app_names(value: str) -> list[str]:
    """The application names of an ``app=a,b`` parameter."""
    return [name for name in value.split(",") if name]
