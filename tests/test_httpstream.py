"""Tests for avr.httpstream: the sans-IO response parser, request heads, and `HttpExchange` (on iosim)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.testing import MemoryReactorClock
from twisted.test import iosim
from zope.interface import implementer
from zope.interface.verify import verifyObject

from avr.httpstream import (
    CHUNK_END,
    RESPONSE_END,
    HttpExchange,
    HttpResponseError,
    IHttpReceiver,
    ResponseHead,
    ResponseParser,
    StreamingHttpClient,
    request_head,
)
from avr.testing.sts import FakeHttpStsResource, fake_http_sts_site

# -- the response parser


def parse_all(data: bytes, step: int | None = None):
    """Feed ``data`` whole or ``step`` bytes at a time; return head, body, ended."""
    parser = ResponseParser()
    events = []
    pieces = [data] if step is None else [data[i:i + step] for i in range(0, len(data), step)]
    for piece in pieces:
        events += parser.feed(piece)
    head = [e for e in events if isinstance(e, ResponseHead)]
    body = b"".join(e for e in events if isinstance(e, bytes))
    return head, body, RESPONSE_END in events, parser


CHUNKED = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-A: 1\r\nx-a: 2\r\n\r\n"
           b"3\r\nabc\r\n10;ext=1\r\n" + b"z" * 16 + b"\r\n0\r\nTrailer: t\r\n\r\n")


@given(st.integers(min_value=1, max_value=len(CHUNKED)))
def test_parser_chunked_any_split(step):
    """A chunked response parses the same however it is split."""
    head, body, ended, _ = parse_all(CHUNKED, step)
    assert head == [ResponseHead(200, "OK", {"transfer-encoding": "chunked", "x-a": "1, 2"})]
    assert body == b"abc" + b"z" * 16
    assert ended


def test_parser_streams_partial_chunks():
    """Body bytes come out before their chunk is complete (latency)."""
    parser = ResponseParser()
    events = parser.feed(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n140\r\n" + b"a" * 100)
    assert events[1:] == [b"a" * 100]


def test_parser_content_length_and_until_close():
    """Content-Length bodies end at their length; bodies without a length end with the connection."""
    head, body, ended, _ = parse_all(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabcEXTRA")
    assert (body, ended) == (b"abc", True)
    head, body, ended, parser = parse_all(b"HTTP/1.0 200 OK\r\n\r\nabc")
    assert (body, ended) == (b"abc", False)
    assert parser.connection_lost() == [RESPONSE_END]


def test_parser_skips_interim_responses_and_handles_empty_bodies():
    """100 Continue is skipped; 204 and Content-Length 0 end at once."""
    head, body, ended, _ = parse_all(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n")
    assert [h.status for h in head] == [204] and ended
    head, body, ended, _ = parse_all(b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n\r\n")
    assert head[0].phrase == "Internal Server Error" and ended


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"SPDY/3 200 OK\r\n\r\n", "bad HTTP status line"),
        (b"HTTP/1.1 2000 OK\r\n\r\n", "bad HTTP status line"),
        (b"HTTP/1.1 200 OK\r\nno colon\r\n\r\n", "bad header line"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", "unsupported transfer encoding"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n", "bad content-length"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "bad chunk size"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\naXX", "missing CRLF"),
        (b"HTTP/1.1 200 OK\r\nX: " + b"a" * 70000, "too large"),
    ],
)
def test_parser_rejects_malformed_responses(data, reason):
    """Malformed responses raise HttpResponseError naming the problem."""
    with pytest.raises(HttpResponseError, match=reason):
        ResponseParser().feed(data)


def test_parser_incomplete_response_at_close():
    """A connection closing mid-body is an error, not a normal end."""
    parser = ResponseParser()
    parser.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
    with pytest.raises(HttpResponseError, match="before the response was complete"):
        parser.connection_lost()


def test_parser_marks_the_end_of_each_chunk():
    """Each complete chunk of a chunked body is followed by CHUNK_END, however the bytes are split."""
    data = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n3\r\nyou\r\n0\r\n\r\n"
    for step in range(1, len(data) + 1):
        parser = ResponseParser()
        events = []
        for i in range(0, len(data), step):
            events += parser.feed(data[i:i + step])
        messages, current = [], b""
        for event in events:
            if isinstance(event, bytes):
                current += event
            elif event is CHUNK_END:
                messages.append(current)
                current = b""
        assert messages == [b"hello", b"you"] and events[-1] is RESPONSE_END


def test_request_head_with_a_fixed_body():
    """A body sent at once is announced with Content-Length, the given headers in order after Host."""
    head = request_head("http://llm:6002/prompt-stream", [("X-UUID", "u"), ("Content-Type", "application/json")], 12)
    assert head.decode().split("\r\n")[:6] == [
        "POST /prompt-stream HTTP/1.1", "Host: llm:6002", "X-UUID: u", "Content-Type: application/json",
        "Content-Length: 12", "Connection: close",
    ]
    with pytest.raises(ValueError):
        request_head("http:///x", [])


@implementer(IHttpReceiver)
class Recorder:
    """Records what an exchange delivers."""

    def __init__(self) -> None:
        self.events: list = []

    def response_head(self, head: ResponseHead) -> None:
        self.events.append(("head", head.status))

    def response_data(self, data: bytes) -> None:
        self.events.append(("data", data))

    def response_chunk_end(self) -> None:
        self.events.append(("chunk",))

    def response_ended(self, reason: str | None) -> None:
        self.events.append(("ended", reason))


def exchange(body: bytes | None = None, resource: FakeHttpStsResource | None = None):
    reactor = MemoryReactorClock()
    resource = resource or FakeHttpStsResource(echo=True)
    reactor.listenTCP(8080, fake_http_sts_site(resource, reactor))
    receiver = Recorder()
    outcome: list = []
    StreamingHttpClient(reactor).post("http://svc:8080/x", [("X-UUID", "u")], body, receiver,
                                      peer="the fake").addBoth(outcome.append)
    pump = iosim.ConnectionCompleter(reactor).succeedOnce()
    pump.flush()
    return outcome[0], resource, receiver, pump, reactor


def test_a_streamed_body_and_response_flow_both_ways():
    """Body chunks reach the server while its response streams back, chunk ends marked; end_body then the server's
    end close the exchange once."""
    ex, resource, receiver, pump, _ = exchange()
    assert isinstance(ex, HttpExchange) and verifyObject(IHttpReceiver, receiver)
    ex.send_body(b"abc")
    pump.flush()
    assert resource.sessions[0].received == b"abc"
    assert receiver.events == [("head", 200), ("data", b"abc"), ("chunk",)]
    ex.end_body()
    pump.flush()
    assert receiver.events[-1] == ("ended", None) and ex.ended


def test_close_reports_its_reason_once_and_closes_the_connection():
    """close(reason): the receiver hears the reason at once, the connection is closed, later data is ignored."""
    ex, resource, receiver, pump, reactor = exchange()
    ex.close("cancelled")
    ex.close("again")
    ex.send_body(b"late")
    pump.flush()
    assert receiver.events[-1] == ("ended", "cancelled")
    assert [e for e in receiver.events if e[0] == "ended"] == [("ended", "cancelled")]
    assert pump.clientIO.disconnected and resource.sessions[0].received == b""
    assert reactor.getDelayedCalls() == []


def test_a_fixed_body_is_sent_with_the_head():
    """A body given to post goes out whole, with Content-Length."""
    ex, resource, receiver, pump, _ = exchange(body=b'{"text":"hi"}', resource=FakeHttpStsResource(echo=False))
    session = resource.sessions[0]
    assert session.received == b'{"text":"hi"}' and session.body_ended
    assert session.request.requestHeaders.getRawHeaders(b"content-length") == [b"13"]


def test_the_server_dropping_the_connection_names_the_peer():
    """A connection lost mid-response ends the exchange with a reason naming the peer."""
    ex, resource, receiver, pump, _ = exchange()
    resource.sessions[0].drop()
    pump.flush()
    (reason,) = [e[1] for e in receiver.events if e[0] == "ended"]
    assert "the fake" in reason or reason.startswith("connection lost")
