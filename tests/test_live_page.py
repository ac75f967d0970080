"""
Tests for avr.http.page and ``GET /``: content negotiation between the API overview (JSON) and the live calls page
(HTML), the page's headers and policy, and the route descriptions of the overview; through avr as `build` wires it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from typing import Any

import pytest
from treq.testing import StubTreq
from twisted.internet.testing import MemoryReactorClock
from twisted.web.test.requesthelper import DummyRequest

from avr.config import Config
from avr.http.page import LiveCallsPage, wants_html
from avr.service import build
from fakes import FakeStsConnector

KEY = "page-unit-key-5c1e"
#: What Chromium sends for a page it navigates to.
BROWSER = "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8"


def get(path: str, accept: str | None, api_key: str | None = KEY, host: str = "avr.test:6001") -> Any:
    """``GET path`` of avr built with ``api_key``, sending no key: ``(response, body)``."""
    avr = build(MemoryReactorClock(), Config(http_port=6001, api_key=api_key), http_client=StubTreq(None),
                sts_connector=FakeStsConnector())
    client = StubTreq(avr.http_app.resource())
    headers = {"Host": host, **({"Accept": accept} if accept is not None else {})}
    d = client.get(f"http://avr.test:6001{path}", headers=headers)
    client.flush()
    response = d.result  # type: ignore[attr-defined]
    body = client.content(response)
    client.flush()
    return response, body.result  # type: ignore[attr-defined]


def header(response: Any, name: str) -> str | None:
    values = response.headers.getRawHeaders(name)
    return values[0] if values else None


@pytest.mark.parametrize(("accept", "html"), [
    (BROWSER, True),
    ("text/html", True),
    ("text/*", True),
    ("text/html;q=0.5, application/json;q=0.4", True),
    ("*/*", False),  # curl
    ("application/json", False),
    ("application/json, text/html", False),  # a tie: JSON, as before the page
    ("text/html;q=0, */*", False),
    ("", False),
    (None, False),
])
def test_wants_html_follows_the_accept_header(accept: str | None, html: bool) -> None:
    """HTML only when the client prefers it to JSON; everything else keeps today's JSON."""
    request = DummyRequest([b""])
    if accept is not None:
        request.requestHeaders.setRawHeaders(b"accept", [accept.encode()])
    assert wants_html(request) is html


def test_a_browser_gets_the_page_without_the_key() -> None:
    """GET / with a browser's Accept: the HTML page, no key needed, and no key in it."""
    response, body = get("/", BROWSER)
    assert response.code == 200
    assert header(response, "Content-Type") == "text/html; charset=utf-8"
    assert body == LiveCallsPage.load().html
    text = body.decode("utf-8")
    assert text.startswith("<!DOCTYPE html>") and "/events" in text and "sessionStorage" in text
    assert KEY not in text
    assert header(response, "Vary") == "Accept"
    assert header(response, "X-Content-Type-Options") == "nosniff"
    assert header(response, "Referrer-Policy") == "no-referrer"
    assert header(response, "X-Frame-Options") == "DENY"


@pytest.mark.parametrize("accept", ["*/*", "application/json", None])
def test_json_clients_keep_the_api_overview(accept: str | None) -> None:
    """curl (``*/*``), JSON clients and clients without Accept get the overview as before, marked Vary: Accept."""
    response, body = get("/", accept)
    assert response.code == 200
    assert header(response, "Content-Type") == "application/json"
    assert header(response, "Vary") == "Accept"
    assert header(response, "Content-Security-Policy") is None
    overview = json.loads(body)
    assert overview["name"] == "avr" and "GET /calls" in overview["endpoints"]
    assert "live calls page" in overview["endpoints"]["GET /"]


def test_policy_allows_this_origin_and_the_inline_code_by_hash_only() -> None:
    """
    The CSP: default 'self', the inline style and script by their SHA-256 (those of the page as served: a changed
    script without a new hash would not run), WebSockets back to the same host, no framing.
    """
    response, body = get("/", BROWSER)
    policy = dict(d.strip().split(" ", 1) for d in header(response, "Content-Security-Policy").split(";"))
    text = body.decode("utf-8")
    (script,) = re.findall(r"<script>(.*?)</script>", text, re.DOTALL)
    (style,) = re.findall(r"<style>(.*?)</style>", text, re.DOTALL)

    def sha(source: str) -> str:
        return "'sha256-" + base64.b64encode(hashlib.sha256(source.encode()).digest()).decode() + "'"

    assert policy["default-src"] == "'self'"
    assert policy["script-src"] == sha(script)
    assert policy["style-src"] == sha(style)
    assert policy["connect-src"] == "'self' ws://avr.test:6001 wss://avr.test:6001"
    assert policy["frame-ancestors"] == "'none'" and policy["object-src"] == "'none'"
    assert "unsafe-inline" not in header(response, "Content-Security-Policy")


@pytest.mark.parametrize("host", ["evil.test; script-src *", "a b", "x'y", "[::1]x", "h:123456"])
def test_a_strange_host_header_is_not_written_into_the_policy(host: str) -> None:
    """Only a plain host[:port] goes into connect-src; anything else leaves 'self' alone."""
    policy = LiveCallsPage.load().content_security_policy(host.encode())
    assert b"connect-src 'self';" in policy and host.encode() not in policy


def test_ipv6_and_plain_hosts_are_written_into_the_policy() -> None:
    page = LiveCallsPage.load()
    assert b"connect-src 'self' ws://[::1]:6001 wss://[::1]:6001;" in page.content_security_policy(b"[::1]:6001")
    assert b"connect-src 'self';" in page.content_security_policy(None)


def test_the_page_must_hold_one_inline_style_and_script() -> None:
    """A page whose code the policy could not cover is refused when avr is built, not served broken."""
    with pytest.raises(ValueError, match="exactly one <script>"):
        LiveCallsPage.from_html(b"<style>a{}</style><script>1</script><script>2</script>")
    with pytest.raises(ValueError, match="exactly one <style>"):
        LiveCallsPage.from_html(b"<script>1</script>")


def test_the_page_writes_text_never_markup() -> None:
    """Event data (caller names, transcripts) reach the page as text nodes only: no innerHTML, no eval."""
    text = LiveCallsPage.load().html.decode("utf-8")
    for risky in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function"):
        assert risky not in text


def test_every_route_description_is_a_whole_sentence() -> None:
    """
    The overview's descriptions are the handlers' whole summary paragraphs on one line (they were cut at the end
    of the docstring's first line: ``GET /health``, ``POST /call``, the allowlist's), without RST markup.
    """
    _, body = get("/", "application/json")
    endpoints = json.loads(body)["endpoints"]
    assert len(endpoints) > 30
    for route, description in endpoints.items():
        assert description.endswith("."), route
        assert "``" not in description and "\n" not in description, route
        assert description[0].isupper(), route
    assert endpoints["GET /health"].startswith("Liveness")
    assert endpoints["POST /call"].startswith("Register an AudioSocket call")
