"""
The legacy HTTP STS (``http://`` and ``https://``, avr-core before WebSocket STS): one streaming POST per call.

The request (header ``X-UUID: <uuid>``, chunked body) streams the caller's raw PCM as it arrives while the response
body streams the agent's raw PCM back, for the whole call: the exchange is full duplex. There is no DTMF, interruption
or transcript channel; the end of the request is the end of the call. The HTTP is `avr.httpstream`'s (treq cannot
stream both ways); TLS is the same as for wss:// (chain and host name verified).
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, fail
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

from avr import httpstream
from avr.config import redact_url
from avr.httpstream import HttpExchange, IHttpReceiver, ResponseHead, StreamingHttpClient
from avr.interfaces import IStsConnector, IStsHandler, IStsSession
from avr.sts.errors import StsConnectError

log = Logger()


def _headers(uuid: str) -> list[tuple[str, str]]:
    return [("X-UUID", uuid), ("Content-Type", "application/octet-stream")]


def request_head(url: str, uuid: str) -> bytes:
    """The head of the streaming POST for call ``uuid`` (chunked body, one request per connection), as avr-core's."""
    return httpstream.request_head(url, _headers(uuid))


@implementer(IStsSession, IHttpReceiver)
class HttpStsSession:
    """
    One call's streaming POST, as an `IStsSession`: caller audio goes out as one body chunk per `send_audio`, the
    response body is the agent's audio.

    :param uuid: the call's UUID (for logs).
    :param handler: receives agent audio, errors and the end of the session.
    :param sample_rate: the rate of the raw PCM both ways (``STS_SAMPLE_RATE``): `input_rate` and `output_rate`.
    """

    def __init__(self, uuid: str, handler: IStsHandler, sample_rate: int = 8000) -> None:
        self.uuid = uuid
        self.input_rate = self.output_rate = sample_rate
        self.exchange: HttpExchange | None = None
        self._handler = handler

    def opened(self, exchange: HttpExchange) -> HttpStsSession:
        """The POST is on the wire: the session is open."""
        self.exchange = exchange
        log.info("Legacy HTTP STS stream open for call {call_id}", call_id=self.uuid)
        return self

    # -- IStsSession

    def send_audio(self, pcm: bytes) -> None:
        """Stream caller audio as one body chunk."""
        if self.exchange is not None:
            self.exchange.send_body(pcm)

    def send_dtmf(self, digit: str) -> None:
        """The legacy protocol has no DTMF channel: ignored."""
        log.debug("Legacy HTTP STS for call {call_id}: DTMF {digit!r} not sent (no DTMF channel)", call_id=self.uuid,
                  digit=digit)

    def send_action_result(self, result: Any) -> None:
        """The legacy protocol has no messages (and its peers never ask for actions): dropped."""

    def close(self) -> None:
        """Finish the request body and stop reading the response; `IStsHandler.sts_closed` is called at once."""
        if self.exchange is not None:
            self.exchange.close("closed")

    # -- IHttpReceiver

    def response_head(self, head: ResponseHead) -> None:
        """A non-2xx answer is an error, then the end."""
        if 200 <= head.status < 300:
            return
        text = f"STS answered HTTP {head.status} {head.phrase}".rstrip()
        log.warn("Legacy HTTP STS for call {call_id}: {error}", call_id=self.uuid, error=text)
        self._handler.sts_error(text)
        if self.exchange is not None:
            self.exchange.close(f"STS answered HTTP {head.status}")

    def response_data(self, data: bytes) -> None:
        """Agent audio."""
        self._handler.sts_audio(data)

    def response_chunk_end(self) -> None:
        """Chunk boundaries mean nothing in raw PCM."""

    def response_ended(self, reason: str | None) -> None:
        """The end of the session, whoever ended it."""
        if reason is None:
            reason = "the STS ended the audio stream"
        log.info("Legacy HTTP STS session for call {call_id} ended: {reason}", call_id=self.uuid, reason=reason)
        self._handler.sts_closed(reason)


@implementer(IStsConnector)
class HttpStsConnector:
    """
    Opens legacy HTTP STS sessions.

    :param reactor: for TCP connections and the connect timeout (IReactorTCP + IReactorTime).
    :param connect_timeout: seconds until the request is on the wire (https: until the peer is verified).
    :param trust_root: ``None`` to trust the platform's CAs for https://, or a PEM CA file (read now;
        `avr.config.ConfigError` if unusable). Chain and host name are always verified.
    :param sample_rate: the rate of the raw PCM exchanged with the STS, both ways (``STS_SAMPLE_RATE``).
    """

    def __init__(self, reactor: IReactorTime, connect_timeout: float = 5.0, trust_root: str | None = None,
                 sample_rate: int = 8000) -> None:
        self._client = StreamingHttpClient(reactor, connect_timeout, trust_root)
        self._sample_rate = sample_rate

    def connect(self, url: str | None, uuid: str, handler: IStsHandler) -> Deferred:
        """
        Start the POST for call ``uuid``.

        :return: a Deferred firing with the `HttpStsSession` once open, or failing with `StsConnectError`
            (cancelling it abandons the attempt).
        """
        if url is None:
            return fail(StsConnectError("no STS HTTP URL"))
        log.info("Connecting to legacy HTTP STS: {url}", url=redact_url(url), call_id=uuid)
        session = HttpStsSession(uuid, handler, self._sample_rate)
        d = self._client.post(url, _headers(uuid), None, session, label=f"Legacy HTTP STS for call {uuid}",
                              peer="the STS", call_id=uuid)
        return d.addCallback(session.opened)
