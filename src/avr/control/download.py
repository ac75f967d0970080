"""
Streaming a stored recording from ARI to the client of ``GET /recordings/:name/file``: `relay` copies the ARI
response body to the server request as it arrives, with Asterisk's content type and length. The ARI body's
transport is the request's producer, so a slow client pauses the download instead of buffering the file.
"""

from __future__ import annotations

from typing import Any, cast

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IPushProducer, ITCPTransport
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.iweb import UNKNOWN_LENGTH, IRequest
from twisted.web.server import Request

log = Logger()


class _Relay(Protocol):
    """
    Copies a response body (from ARI) to a server request as it arrives. The ARI body's transport is registered as
    the request's producer, so a slow client pauses the download instead of buffering the file.
    """

    def __init__(self, request: Request) -> None:
        self.request = request
        self.done: Deferred[None] = Deferred(self._cancel)
        self.sent = 0

    def connectionMade(self) -> None:
        self.request.registerProducer(self.transport, True)

    def dataReceived(self, data: bytes) -> None:
        self.sent += len(data)
        self.request.write(data)

    def connectionLost(self, reason: Failure = Failure(ResponseDone())) -> None:  # noqa: B008
        self.request.unregisterProducer()
        if self.done.called:
            return
        if reason.check(ResponseDone, PotentialDataLoss):
            self.done.callback(None)
        else:
            self.done.errback(reason)

    def _cancel(self, d: Deferred[None]) -> None:
        if self.transport is not None:
            cast(IPushProducer, self.transport).stopProducing()  # the response body's producer


async def relay(response: Any, request: IRequest) -> None:
    """Stream ``response``'s body to ``request`` with its content type and length."""
    content_type = (response.headers.getRawHeaders(b"content-type") or [b"audio/wav"])[0]
    request.setResponseCode(200)
    request.setHeader(b"content-type", content_type)
    if response.length is not UNKNOWN_LENGTH:
        request.setHeader(b"content-length", str(response.length).encode("ascii"))
    served = cast(Request, request)  # what Klein serves: twisted.web.server's Request, a consumer
    relay = _Relay(served)
    response.deliverBody(relay)
    try:
        await relay.done
    except CancelledError:
        raise
    except Exception:
        # The status line is gone already: all that is left is to cut the download so the client sees it short.
        log.failure("Recording download broke off after {sent} bytes", sent=relay.sent)
        transport = getattr(request, "channel", None) and served.channel.transport
        if transport is not None:
            cast(ITCPTransport, transport).abortConnection()
        await Deferred()  # Klein cancels this when the connection is gone; it must not finish the response.
