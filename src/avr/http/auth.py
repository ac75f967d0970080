"""The optional API key that protects avr's HTTP routes."""

from __future__ import annotations

import hmac

from twisted.web.http import combinedLogFormatter
from twisted.web.iweb import IRequest

from avr.http.json import ApiError
from avr.logtext import clip, query_parameters, redact_target, redact_url

#: Request header carrying the key.
API_KEY_HEADER = b"x-api-key"
#: Query parameter carrying the key (for clients that cannot set headers easily, e.g. a dialplan ``CURL()``).
API_KEY_PARAM = b"api_key"
#: ``Authorization: Bearer <key>`` carries the key too (the OpenClaw voice-call plugin sends it so).
AUTHORIZATION_HEADER = b"authorization"
_BEARER = b"bearer"
#: Headers that carry credentials: removed before a request is handed to code that logs requests (autobahn).
CREDENTIAL_HEADERS = (API_KEY_HEADER, AUTHORIZATION_HEADER, b"proxy-authorization", b"cookie")


def presented_api_keys(request: IRequest) -> list[bytes]:
    """
    Every value ``request`` presents as the API key: the ``X-API-Key`` headers, the tokens of ``Authorization:
    Bearer`` headers, then the ``api_key`` parameters of the query of its request target (parsed by
    `avr.logtext.query_parameters`, the parser that also masks them in logs). Nothing else counts: not a
    form-encoded body, not a cookie, not another ``Authorization`` scheme.
    """
    presented = list(request.requestHeaders.getRawHeaders(API_KEY_HEADER) or [])
    for value in request.requestHeaders.getRawHeaders(AUTHORIZATION_HEADER) or []:
        scheme, _, token = value.strip().partition(b" ")
        if scheme.lower() == _BEARER and token.strip():
            presented.append(token.strip())
    _, sep, query = request.uri.partition(b"?")
    if sep:
        presented += [value for _, name, value in query_parameters(query) if name == API_KEY_PARAM]
    return presented


def check_api_key(request: IRequest, api_key: str | None) -> None:
    """
    Require ``api_key`` in the ``X-API-Key`` header, an ``Authorization: Bearer`` header or the ``api_key`` query
    parameter of ``request``.

    Does nothing when ``api_key`` is ``None`` (no key configured). The comparison takes the same time whatever the
    presented value, and the error never repeats either key.

    :raises ApiError: 401 if the key is missing or wrong.
    """
    if api_key is None:
        return
    expected = api_key.encode("utf-8")
    presented = presented_api_keys(request)
    if not presented:
        raise ApiError(401, "API key required: send it as header X-API-Key, Authorization: Bearer <key> or "
                            "query parameter api_key")
    # Compare every presented value (no short-circuit on the first), so timing does not reveal which one matched.
    matched = False
    for value in presented:
        matched |= hmac.compare_digest(value, expected)
    if not matched:
        raise ApiError(401, "invalid API key")


def strip_credentials(request: IRequest) -> None:
    """
    Remove the credentials from an authenticated ``request`` (the headers of `CREDENTIAL_HEADERS`; secret-looking
    query values are masked), before it is handed to code that logs what it is given: autobahn writes the whole
    opening handshake of a WebSocket to its debug log.
    """
    for name in CREDENTIAL_HEADERS:
        request.requestHeaders.removeHeader(name)
    request.uri = redact_target(request.uri)


class _RedactedRequest:
    """
    A view of a request for the access log: the request target and the ``Referer`` with their secret query values
    masked, and those, the method and the ``User-Agent`` clipped to ``LOG_TEXT_LIMIT`` characters; everything else
    delegated.
    """

    def __init__(self, request: IRequest) -> None:
        self._request = request

    @property
    def uri(self) -> bytes:
        return _clip_bytes(redact_target(self._request.uri))

    @property
    def method(self) -> bytes:
        return _clip_bytes(self._request.method)

    def getHeader(self, name: bytes) -> bytes | None:
        value = self._request.getHeader(name)
        if value is not None and name.lower() in (b"referer", b"user-agent"):
            if name.lower() == b"referer":
                value = redact_url(value.decode("latin-1")).encode("latin-1")
            value = _clip_bytes(value)
        return value

    def __getattr__(self, name: str) -> object:
        return getattr(self._request, name)


def _clip_bytes(value: bytes) -> bytes:
    return clip(value.decode("latin-1")).encode("latin-1")


def redacted_access_log(timestamp: str, request: IRequest) -> str:
    """
    An access-log formatter for ``twisted.web.server.Site(..., logFormatter=redacted_access_log)``: the combined log
    format, with the values of secret-looking query parameters (``api_key``, ``token``, ...) written as ``***`` in the
    request line and the referrer. The request line is parsed as `check_api_key` parses it, so a key that
    authenticates is always a key that is masked (``?api_k%65y=``, ``?x=1#&api_key=`` included).
    """
    return combinedLogFormatter(timestamp, _RedactedRequest(request))
