"""
ARI REST over treq: `AriClient` turns ``request("POST", "/channels/1.2/answer")`` into an authenticated HTTP request
to ``<ARI_URL>/ari/channels/1.2/answer`` and maps the outcome to JSON, `AriError` or `AriUnavailable`.

The query string is built here rather than by treq/hyperlink so that it is encoded the way Asterisk decodes it
(``+`` would become a space; commas stay literal, since ARI takes lists as one comma-separated value and does not
merge repeated parameters).
"""

from __future__ import annotations

import base64
from typing import Any, Mapping
from urllib.parse import quote

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import ResponseFailed
from zope.interface import implementer

from avr.ari.errors import AriError, AriUnavailable
from avr.config import redact_url
from avr.failures import describe_failure
from avr.interfaces import IAriClient
from avr.json_input import decode_json

#: Characters left as they are in query values (as Asterisk's own captures show them): ``,`` separates list items for
#: ARI, ``:`` is in every media URI, ``/`` and ``@`` in dial strings, ``;`` in tone URIs. ``+``, ``=``, ``&``, spaces
#: and ``%`` are always escaped.
_QUERY_SAFE = ",:/@;"


def path_segment(value: str) -> str:
    """``value`` percent-encoded for use as one path segment of an ARI URL (ids, names)."""
    return quote(value, safe="")


def encode_query(params: Mapping[str, Any]) -> str:
    """
    ``params`` as a query string for Asterisk: ``None`` values are left out, booleans become ``true``/``false``,
    lists and tuples become one comma-separated value (Asterisk ignores all but one of repeated parameters).
    """
    pairs = []
    for name, value in params.items():
        if value is None:
            continue
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, (list, tuple)):
            text = ",".join(str(v) for v in value)
        else:
            text = str(value)
        pairs.append(f"{quote(name, safe='')}={quote(text, safe=_QUERY_SAFE)}")
    return "&".join(pairs)


def error_message(body: bytes) -> str:
    """Asterisk's error text from a response body: the ``message`` (or ``error``) key, else the raw text."""
    text = body.decode("utf-8", "replace").strip()
    try:
        parsed = decode_json(text)
    except ValueError:
        return text[:500] or "(empty response)"
    if isinstance(parsed, dict):
        for key in ("message", "error"):
            if isinstance(parsed.get(key), str):
                return parsed[key]
    return text[:500]


@implementer(IAriClient)
class AriClient:
    """
    `IAriClient` over a treq ``HTTPClient`` (or ``StubTreq`` in tests).

    :param http: the treq client.
    :param clock: times each request (`timeout` seconds from sending to the end of the body).
    :param base_url: ``ARI_URL``, e.g. ``http://127.0.0.1:8088`` (``/ari`` is appended).
    :param username: ARI user; sent as HTTP Basic authentication with ``password``.
    :param timeout: seconds per request.
    """

    log = Logger()

    def __init__(
        self,
        http: Any,
        clock: IReactorTime,
        base_url: str,
        username: str,
        password: str,
        timeout: float = 10.0,
    ) -> None:
        self._http = http
        self._clock = clock
        self._base = base_url.rstrip("/") + "/ari"
        credentials = base64.b64encode(f"{username}:{password}".encode()).decode("ascii")
        self._headers = {"Authorization": [f"Basic {credentials}"], "Accept": ["application/json"]}
        self.timeout = timeout

    def __repr__(self) -> str:
        return f"<AriClient {redact_url(self._base)}>"

    def url(self, path: str, params: Mapping[str, Any] | None = None) -> str:
        """The full URL of ``path`` (relative to ``/ari``) with ``params`` as its query string."""
        url = self._base + path
        query = encode_query(params or {})
        return f"{url}?{query}" if query else url

    def request(self, method: str, path: str, params: dict | None = None, body: dict | None = None) -> Deferred:
        """
        Send one ARI request.

        :param method: HTTP method.
        :param path: path under ``/ari``, already percent-encoded (see `path_segment`).
        :param params: query parameters (see `encode_query`).
        :param body: JSON body, e.g. ``{"variables": {"NAME": "value"}}``.
        :return: a Deferred firing with the parsed JSON (``None`` for an empty body, as in a 204), or failing with
            `AriError` (non-2xx) or `AriUnavailable` (unreachable, timeout, credentials refused).
        """
        return self._timed(self._request(method, path, params, body), method, path)

    def stream(self, path: str) -> Deferred:
        """
        ``GET`` a binary resource without reading its body.

        :return: a Deferred firing with the treq response (the caller reads or streams the body), or failing like
            `request`. The timeout covers the wait for the response headers only.
        """
        return self._timed(self._stream(path), "GET", path)

    def _timed(self, coroutine: Any, method: str, path: str) -> Deferred:
        d = Deferred.fromCoroutine(coroutine)

        def timed_out(result: Any, timeout: float) -> Failure:
            # Whatever the cancelled request turned into (CancelledError, a wrapped abort), it is a timeout.
            if isinstance(result, Failure) and not result.check(CancelledError, AriUnavailable):
                self.log.failure("ARI request {method} {path} failed while timing out", result, method=method,
                                 path=path)
            return Failure(AriUnavailable(f"ARI request {method} {path} timed out after {timeout:g} s"))

        d.addTimeout(self.timeout, self._clock, onTimeoutCancel=timed_out)
        return d

    async def _send(self, method: str, path: str, params: dict | None, body: dict | None, unbuffered: bool) -> Any:
        kwargs: dict[str, Any] = {"headers": self._headers, "allow_redirects": False, "unbuffered": unbuffered}
        if body is not None:
            kwargs["json"] = body
        try:
            return await self._http.request(method, self.url(path, params), **kwargs)
        except (AriError, AriUnavailable, CancelledError):
            raise
        except ResponseFailed as e:
            if any(r.check(CancelledError) for r in e.reasons):
                raise CancelledError() from None
            raise AriUnavailable(f"ARI request {method} {path} failed: {describe_failure(e)}") from None
        except Exception as e:
            raise AriUnavailable(f"ARI request {method} {path} failed: {describe_failure(e)}") from None

    async def _read(self, response: Any, method: str, path: str) -> bytes:
        try:
            return await response.content()
        except CancelledError:
            raise
        except Exception as e:
            raise AriUnavailable(f"ARI request {method} {path} failed: {describe_failure(e)}") from None

    async def _request(self, method: str, path: str, params: dict | None, body: dict | None) -> Any:
        response = await self._send(method, path, params, body, unbuffered=False)
        content = await self._read(response, method, path)
        self._check(response.code, content, method, path)
        if not content.strip():
            return None
        try:
            return decode_json(content)
        except ValueError:
            raise AriError(response.code, f"ARI answered {method} {path} with a body that is not JSON") from None

    async def _stream(self, path: str) -> Any:
        response = await self._send("GET", path, None, None, unbuffered=True)
        if not 200 <= response.code < 300:
            content = await self._read(response, "GET", path)
            self._check(response.code, content, "GET", path)
        return response

    def _check(self, code: int, content: bytes, method: str, path: str) -> None:
        if 200 <= code < 300:
            return
        message = error_message(content)
        self.log.debug("ARI {method} {path} answered {code}: {message}", method=method, path=path, code=code,
                       message=message)
        if code == 401:
            raise AriUnavailable(f"ARI refused the credentials (401 {message}): check ARI_USERNAME/ARI_PASSWORD")
        if code == 503:
            raise AriUnavailable(f"Asterisk is not ready (503 {message})")
        raise AriError(code, message)
