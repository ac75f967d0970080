"""Tests for avr.failures: one readable line for every connection and request failure."""

from __future__ import annotations

import pytest
from twisted.internet.defer import CancelledError
from twisted.internet.error import (
    ConnectingCancelledError,
    ConnectionDone,
    ConnectionLost,
    ConnectionRefusedError,
    DNSLookupError,
    TimeoutError,
)
from twisted.python.failure import Failure
from twisted.web.client import RequestNotSent, RequestTransmissionFailed, ResponseFailed, ResponseNeverReceived

from avr.failures import closed_before_response, describe_failure

DONE = Failure(ConnectionDone("Connection was closed cleanly."))


@pytest.mark.parametrize("reason,text", [
    (ConnectionRefusedError("127.0.0.1:9"), "connection refused"),
    (DNSLookupError("no such host"), "cannot resolve host name hooks.example"),
    (TimeoutError(), "TCP connection timed out"),
    (ConnectingCancelledError(None), "connection attempt cancelled"),
    (ConnectionLost("reset"), "connection closed by the peer"),
    (ValueError("odd"), "ValueError: odd"),
    (ResponseNeverReceived([DONE]), "no response (connection closed by the peer)"),
    (ResponseNeverReceived([DONE, Failure(ConnectionLost())]), "no response (connection closed by the peer)"),
    (RequestTransmissionFailed([Failure(ConnectionLost())]),
     "sending the request failed (connection closed by the peer)"),
    (RequestNotSent(), "request not sent: the connection was already closed"),
    (ResponseFailed([DONE]), "response cut short (connection closed by the peer)"),
    (ResponseNeverReceived([Failure(CancelledError())]), "no response (attempt cancelled)"),
])
def test_describe_failure(reason: Exception, text: str) -> None:
    """The wrapper says when the request failed, the transport failure inside it why; a Failure reads the same."""
    assert describe_failure(reason, "hooks.example") == text
    assert describe_failure(Failure(reason), "hooks.example") == text


@pytest.mark.parametrize("reason,closed", [
    (ResponseNeverReceived([DONE]), True),
    (RequestTransmissionFailed([DONE]), True),
    (RequestNotSent(), True),
    (ResponseNeverReceived([Failure(CancelledError())]), False),
    (ResponseFailed([DONE]), False),
    (ConnectionRefusedError(), False),
])
def test_closed_before_response(reason: Exception, closed: bool) -> None:
    """Only a request whose connection closed before any response byte, and that was not cancelled, counts."""
    assert closed_before_response(reason) is closed
    assert closed_before_response(Failure(reason)) is closed
