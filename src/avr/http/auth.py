"""The optional API key that protects avr's HTTP routes."""

from __future__ import annotations

import hmac

from twisted.web.http import combinedLogFormatter
from twisted.web.iweb import IRequest

from avr.config import redact_url
from avr.http.json import ApiError

#: Request header carrying the key.
API_KEY_HEADER = b"x-api-key"
#: Query parameter carrying the key (for clients that cannot set headers easily, e.g. a dialplan ``CURL()``).
API_KEY_PARAM = b"api_key"


def check_api_key(request: IRequest, api_key: str | None) -> None:
    """
    Require ``api_key`` in the ``X-API-Key`` header or the ``api_key`` query parameter of ``request``.

    Does nothing when ``api_key`` is ``None`` (no key configured). The comparison takes the same time whatever the
    presented value, and the error never repeats either key.

    :raises ApiError: 401 if the key is missing or wrong.
    """
    if api_key is None:
        return
    expected = api_key.encode("utf-8")
    presented = list(request.requestHeaders.getRawHeaders(API_KEY_HEADER) or [])
    presented += (request.args or {}).get(API_KEY_PARAM, [])
    if not presented:
        raise ApiError(401, "API key required: send it as header X-API-Key or query parameter api_key")
    # Compare every presented value (no short-circuit on the first), so timing does not reveal which one matched.
    matched = False
    for value in presented:
        matched |= hmac.compare_digest(value, expected)
    if not matched:
        raise ApiError(401, "invalid API key")


class _RedactedUriRequest:
    """A view of a request whose ``uri`` has secret-looking query values masked (everything else delegated)."""

    def __init__(self, request: IRequest) -> None:
        self._request = request

    @property
    def uri(self) -> bytes:
        return redact_url(self._request.uri.decode("latin-1")).encode("latin-1")

    def __getattr__(self, name: str) -> object:
        return getattr(self._request, name)


def redacted_access_log(timestamp: str, request: IRequest) -> str:
    """
    An access-log formatter for ``twisted.web.server.Site(..., logFormatter=redacted_access_log)``: the combined log
    format, with the values of secret-looking query parameters (``api_key``, ``token``, ...) written as ``***``.
    Without it, a ``?api_key=`` in a request line would be written to the log as is.
    """
    return combinedLogFormatter(timestamp, _RedactedUriRequest(request))
