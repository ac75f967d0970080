"""
JSON plumbing shared by every route module: reading bounded JSON bodies, writing JSON responses, and turning every
error (ours, werkzeug's routing errors, unexpected exceptions) into a JSON ``{"error": ...}`` body.
"""

from __future__ import annotations

import json
from typing import Any, Callable, Iterable

from klein import Klein
from twisted.logger import Logger
from twisted.web.iweb import IRequest
from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound

from avr.json_input import JsonInputError, decode_json
from avr.logtext import clip

log = Logger()

#: The media type of every JSON response (JSON text is UTF-8 by definition; the bodies are ASCII anyway).
JSON_CONTENT_TYPE = b"application/json"


class ApiError(Exception):
    """
    A request that cannot be served, with the HTTP status and message the client gets.

    The response body is ``{"error": message, **extra}``.

    :ivar status: the HTTP status code (4xx, or 5xx for "not available").
    :ivar message: a human-readable explanation that names the problem; never contains secrets.
    :ivar extra: further JSON-serialisable fields of the response body (must not use the key ``error``).
    """

    def __init__(self, status: int, message: str, **extra: Any) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.message = message
        self.extra = extra

    def body(self) -> dict[str, Any]:
        """The JSON object sent to the client."""
        return {"error": self.message, **{k: v for k, v in self.extra.items() if k != "error"}}


async def read_json_body(request: IRequest, max_bytes: int) -> Any:
    """
    The request body parsed as JSON.

    The body must be UTF-8 JSON text of at most ``max_bytes`` bytes, nested at most
    `avr.json_input.MAX_DEPTH` levels; ``NaN`` and ``Infinity`` are refused. The
    ``Content-Type`` is not checked (Asterisk's ``CURL()`` only sends one if the dialplan sets it).

    :raises ApiError: 413 if the body is larger than ``max_bytes``; 400 if it is empty or not valid JSON.
    """
    content = request.content
    data = b""
    if content is not None:
        content.seek(0)
        data = content.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise ApiError(413, f"request body is larger than the limit of {max_bytes} bytes", limit=max_bytes)
    if not data.strip():
        raise ApiError(400, "request body is empty: expected a JSON object")
    try:
        return decode_json(data, allow_nan=False)
    except JsonInputError as e:
        raise ApiError(400, f"request body is not valid JSON: {e}") from None


def json_response(request: IRequest, status: int, obj: Any) -> bytes:
    """
    Set ``status`` and ``Content-Type: application/json`` on ``request`` and return ``obj`` as compact JSON bytes.

    Route handlers return this value.
    """
    request.setResponseCode(status)
    request.setHeader(b"content-type", JSON_CONTENT_TYPE)
    request.setHeader(b"cache-control", b"no-store")
    return json.dumps(obj, separators=(",", ":"), allow_nan=False).encode("ascii")


def add_route(
    app: Klein, url: str, handler: Callable[..., Any], *, methods: Iterable[str], endpoint: str
) -> None:
    """
    Register ``handler(request, **url_values)`` (plain or ``async``) for ``url`` on ``app``.

    Works whether or not ``app`` is bound to an instance (Klein passes that instance first; it is dropped here), so
    route modules can be plain objects that install their bound methods on an app built elsewhere.

    :param endpoint: a name unique in ``app`` (e.g. ``"core.health"``); two route modules must not share one.
    """

    def route(*args: Any, **kwargs: Any) -> Any:
        return handler(args[-1], **kwargs)

    route.__name__ = route.__qualname__ = endpoint.replace(".", "_")
    route.__doc__ = handler.__doc__
    app.route(url, methods=list(methods), endpoint=endpoint)(route)


def install_error_handlers(app: Klein) -> None:
    """
    Make every error on ``app`` a JSON response:

    - `ApiError` → its status and ``{"error": message, ...extra}``;
    - werkzeug's routing errors → their status with ``{"error": ...}`` (404 no such route; 405 with an ``Allow``
      header and ``"allowed"``; redirects keep their ``Location``);
    - anything else → logged with its traceback, and ``500 {"error": "internal error"}`` (no details leak).

    Install once per app, before serving.
    """

    # A handler of a bound app gets its instance first: (instance,) request, failure. Klein passes no keywords
    # (``**kwargs`` makes each match the signature Klein declares).
    def api_error(*args: Any, **kwargs: Any) -> bytes:
        request, failure = args[-2:]
        error = failure.value
        return json_response(request, error.status, error.body())

    def http_error(*args: Any, **kwargs: Any) -> bytes:
        request, failure = args[-2:]
        return _http_exception_response(request, failure.value)

    def internal_error(*args: Any, **kwargs: Any) -> bytes:
        request, failure = args[-2:]
        log.failure(
            "Unhandled error serving {method} {path}",
            failure,
            method=clip(_text(request.method)),
            path=clip(_text(request.path)),
        )
        return json_response(request, 500, {"error": "internal error"})

    app.handle_errors(ApiError)(api_error)
    app.handle_errors(HTTPException)(http_error)
    app.handle_errors(Exception)(internal_error)


def _http_exception_response(request: IRequest, error: HTTPException) -> bytes:
    method, path = _text(request.method), _text(request.path)
    status = error.code or 500
    extra: dict[str, Any] = {}
    if isinstance(error, NotFound):
        message = f"no such route: {method} {path}"
    elif isinstance(error, MethodNotAllowed):
        allowed = sorted(error.valid_methods or ())
        message = f"method {method} is not allowed on {path}"
        extra["allowed"] = allowed
    else:
        message = (error.name or "error").lower()
    for name, value in error.get_response({}).headers:
        if name.lower() not in ("content-type", "content-length"):
            request.setHeader(name.encode("latin-1"), value.encode("latin-1"))
    return json_response(request, status, {"error": message, **extra})


def _text(value: bytes | str | None) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value or ""


__all__ = [
    "ApiError",
    "JSON_CONTENT_TYPE",
    "add_route",
    "install_error_handlers",
    "json_response",
    "read_json_body",
]


def json_type(value: Any) -> str:
    """How a JSON value's type reads in an error message: ``"null"``, ``"a boolean"``, ``"a number"``, ..."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"
