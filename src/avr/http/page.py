"""
The live calls page: what ``GET /`` answers a browser (``Accept: text/html``; JSON clients keep the API overview).

One static HTML file (``live_calls.html`` next to this module), its style and script inline, with no secret in it:
the script asks for the API key when ``GET /calls`` answers 401, keeps it in the tab's ``sessionStorage`` and opens
``/events`` with it in the ``api_key`` query parameter (a browser WebSocket cannot send headers; the access log and
autobahn never see the key, see `avr.http.auth`). Its ``Content-Security-Policy`` allows nothing but this origin, the
page's own inline style and script (by their SHA-256) and WebSocket connections back to the same host.
"""

from __future__ import annotations

import base64
import hashlib
import re
from importlib.resources import files

from attrs import frozen
from twisted.web.iweb import IRequest
from werkzeug.datastructures import MIMEAccept
from werkzeug.http import parse_accept_header

#: The page, a file of this package.
PAGE_FILE = "live_calls.html"
HTML_CONTENT_TYPE = b"text/html; charset=utf-8"
JSON_MEDIA_TYPE = "application/json"
HTML_MEDIA_TYPE = "text/html"

_INLINE = {name: re.compile(rf"<{name}>(.*?)</{name}>", re.DOTALL) for name in ("style", "script")}
#: A ``Host`` header that may be written into the policy: a name or IPv4 address, or a bracketed IPv6 address, with
#: an optional port (anything else gets ``'self'`` alone).
_HOST = re.compile(rb"(?:[A-Za-z0-9.-]{1,253}|\[[0-9A-Fa-f:.]{2,45}\])(?::[0-9]{1,5})?")


def wants_html(request: IRequest) -> bool:
    """
    ``request`` prefers HTML to JSON by its ``Accept`` header (werkzeug's parser, q-values honoured): a browser's
    ``text/html,...,*/*;q=0.8`` does; ``*/*`` (curl), ``application/json``, a tie, or no ``Accept`` at all do not.
    """
    accept = parse_accept_header(_text(request.getHeader(b"accept")), MIMEAccept)
    return accept.best_match([JSON_MEDIA_TYPE, HTML_MEDIA_TYPE], default=JSON_MEDIA_TYPE) == HTML_MEDIA_TYPE


def _text(value: bytes | str | None) -> str:
    if isinstance(value, bytes):
        return value.decode("latin-1")
    return value or ""


def _source_hash(source: str) -> str:
    digest = hashlib.sha256(source.encode("utf-8")).digest()
    return "'sha256-" + base64.b64encode(digest).decode("ascii") + "'"


@frozen
class LiveCallsPage:
    """
    The page and the hashes of its inline style and script (which its policy allows, and nothing else inline).

    :param html: the UTF-8 page.
    :param style_hash: ``'sha256-...'`` of the text of its one ``<style>`` element.
    :param script_hash: the same for its one ``<script>`` element.
    """

    html: bytes
    style_hash: str
    script_hash: str

    @classmethod
    def from_html(cls, html: bytes) -> LiveCallsPage:
        """
        The page for ``html``, which must hold exactly one ``<style>`` and one ``<script>`` (without attributes).

        :raises ValueError: for anything else.
        """
        text = html.decode("utf-8")
        hashes = {}
        for name, pattern in _INLINE.items():
            found = pattern.findall(text)
            if len(found) != 1:
                raise ValueError(f"the live calls page must hold exactly one <{name}>, found {len(found)}")
            hashes[name] = _source_hash(found[0])
        return cls(html, hashes["style"], hashes["script"])

    @classmethod
    def load(cls) -> LiveCallsPage:
        """The page shipped with avr (`PAGE_FILE`)."""
        return cls.from_html(files("avr.http").joinpath(PAGE_FILE).read_bytes())

    def content_security_policy(self, host: bytes | None) -> bytes:
        """
        The page's ``Content-Security-Policy``: this origin only, its inline style and script by hash, and
        WebSockets to ``host`` (the request's ``Host``: ``'self'`` covers ``ws:``/``wss:`` of the same host in CSP
        level 3, the explicit URLs are for browsers before it).
        """
        connect = ["'self'"]
        if host is not None and _HOST.fullmatch(host):
            name = host.decode("ascii")
            connect += [f"ws://{name}", f"wss://{name}"]
        directives = [
            "default-src 'self'",
            f"script-src {self.script_hash}",
            f"style-src {self.style_hash}",
            "connect-src " + " ".join(connect),
            "img-src 'self' data:",
            "object-src 'none'",
            "base-uri 'none'",
            "form-action 'none'",
            "frame-ancestors 'none'",
        ]
        return "; ".join(directives).encode("ascii")

    def render(self, request: IRequest) -> bytes:
        """Set the page's status and headers on ``request`` and return its body."""
        request.setResponseCode(200)
        request.setHeader(b"content-type", HTML_CONTENT_TYPE)
        request.setHeader(b"content-security-policy", self.content_security_policy(request.getHeader(b"host")))
        request.setHeader(b"x-content-type-options", b"nosniff")
        request.setHeader(b"referrer-policy", b"no-referrer")
        request.setHeader(b"x-frame-options", b"DENY")
        request.setHeader(b"cache-control", b"no-cache")
        request.setHeader(b"vary", b"Accept")
        return self.html


__all__ = ["LiveCallsPage", "wants_html"]
