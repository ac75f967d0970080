"""
The legacy HTTP STS (``http://`` and ``https://``, avr-core before WebSocket STS): one streaming POST per call.

The request (header ``X-UUID: <uuid>``, chunked body) streams the caller's raw PCM as it arrives; the response body
streams the agent's raw PCM back. There is no DTMF, interruption or transcript channel; the end of the request is the
end of the call.

The session counts as open once the request is on the wire (the body producer is started): real peers only send
response headers with their first audio, which may be long after the call starts.
"""

from __future__ import annotations

from typing import Any

from attrs import define, field
from twisted.internet.defer import Deferred, fail
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import Agent, HTTPConnectionPool, ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.iweb import UNKNOWN_LENGTH, IBodyProducer
from treq.client import HTTPClient
from zope.interface import implementer

from avr.config import redact_url
from avr.interfaces import IStsConnector, IStsHandler, IStsSession
from avr.sts.errors import StsConnectError, describe_failure
from avr.sts.tls import https_policy, load_trust_root

log = Logger()


def sts_http_client(reactor: Any, trust_root: str | None = None, pool: HTTPConnectionPool | None = None) -> HTTPClient:
    """
    A treq client for legacy HTTP STS peers, verifying https:// certificates and host names against the platform's
    CAs or the PEM CA file ``trust_root``.

    :param pool: connection pool; default a non-persistent one (each call's stream is its own connection, so nothing
        stays cached after a call).
    """
    root = load_trust_root(trust_root) if trust_root is not None else None
    agent = Agent(reactor, contextFactory=https_policy(root), pool=pool or HTTPConnectionPool(reactor, persistent=False))
    return HTTPClient(agent)


@implementer(IBodyProducer)
class CallerAudioProducer:
    """
    The request body: caller PCM written to the connection as it arrives, until `finish`.

    While the connection pushes back (paused), audio is dropped rather than queued: it is real-time and stale audio
    is worse than a gap.
    """

    length = UNKNOWN_LENGTH

    def __init__(self) -> None:
        self.started: Deferred = Deferred()
        self._consumer: Any = None
        self._finished: Deferred | None = None
        self._paused = False
        self._stopped = False
        self.dropped_bytes = 0

    def startProducing(self, consumer: Any) -> Deferred:
        """The request is being written: audio may flow."""
        self._consumer = consumer
        self._finished = Deferred()
        finished = self._finished
        if not self.started.called:
            self.started.callback(self)
        return finished

    def write(self, pcm: bytes) -> None:
        """Send caller audio, if the body is open and the connection keeps up."""
        if self._consumer is None or self._stopped or not pcm:
            return
        if self._paused:
            self.dropped_bytes += len(pcm)
            return
        self._consumer.write(pcm)

    def finish(self) -> None:
        """End the request body (idempotent)."""
        finished, self._finished = self._finished, None
        self._consumer = None
        if finished is not None and not self._stopped:
            finished.callback(None)

    def pauseProducing(self) -> None:
        """The connection's buffer is full."""
        self._paused = True

    def resumeProducing(self) -> None:
        """The connection's buffer drained."""
        self._paused = False

    def stopProducing(self) -> None:
        """The request was abandoned: the Deferred of `startProducing` must not fire."""
        self._stopped = True
        self._consumer = None
        self._finished = None


class _AudioBody(Protocol):
    """Receives the response body and hands each chunk to the session as it arrives."""

    def __init__(self, session: HttpStsSession) -> None:
        self._session = session

    def dataReceived(self, data: bytes) -> None:
        self._session._agent_audio(data)

    def connectionLost(self, reason: Failure = Failure(ResponseDone())) -> None:
        if reason.check(ResponseDone, PotentialDataLoss):
            self._session._end("the STS ended the audio stream")
        else:
            self._session._end(f"connection lost ({describe_failure(reason)})")

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.stopProducing()


@implementer(IStsSession)
@define(eq=False)
class HttpStsSession:
    """One call's streaming POST to a legacy HTTP STS."""

    uuid: str
    handler: IStsHandler
    producer: CallerAudioProducer = field(factory=CallerAudioProducer)
    _response: Deferred | None = field(default=None, init=False)
    _body: _AudioBody | None = field(default=None, init=False)
    _closed: bool = field(default=False, init=False)

    def send_audio(self, pcm: bytes) -> None:
        """Stream caller audio in the request body."""
        if not self._closed:
            self.producer.write(pcm)

    def send_dtmf(self, digit: str) -> None:
        """The legacy protocol has no DTMF channel: ignored."""
        log.debug("Legacy HTTP STS for call {uuid}: DTMF {digit!r} not sent (no DTMF channel)", uuid=self.uuid,
                  digit=digit)

    def close(self) -> None:
        """Finish the request body, abandon the response; `IStsHandler.sts_closed` is called before this returns."""
        self._end("closed")

    def _watch(self, response: Deferred) -> None:
        self._response = response
        response.addCallbacks(self._got_response, self._no_response)

    def _got_response(self, response: Any) -> None:
        self._response = None
        if self._closed:
            self._discard(response)
            return
        if not 200 <= response.code < 300:
            phrase = response.phrase.decode("latin-1", "replace") if isinstance(response.phrase, bytes) else ""
            text = f"STS answered HTTP {response.code} {phrase}".rstrip()
            log.warn("Legacy HTTP STS for call {uuid}: {error}", uuid=self.uuid, error=text)
            try:
                self.handler.sts_error(text)
            except Exception:
                log.failure("Legacy HTTP STS for call {uuid}: the call failed to handle an error", uuid=self.uuid)
            self._end(f"STS answered HTTP {response.code}")
            self._discard(response)
            return
        self._body = _AudioBody(self)
        response.deliverBody(self._body)

    def _discard(self, response: Any) -> None:
        body = _AudioBody(self)
        response.deliverBody(body)
        body.abort()

    def _no_response(self, failure: Failure) -> None:
        self._response = None
        if not self._closed:
            self._end(f"connection lost ({describe_failure(failure)})")

    def _agent_audio(self, pcm: bytes) -> None:
        if self._closed:
            return
        try:
            self.handler.sts_audio(pcm)
        except Exception:
            log.failure("Legacy HTTP STS for call {uuid}: the call failed to handle audio", uuid=self.uuid)

    def _end(self, reason: str) -> None:
        if self._closed:
            return
        self._closed = True
        self.producer.finish()
        response, self._response = self._response, None
        if response is not None:
            response.cancel()
        body, self._body = self._body, None
        if body is not None:
            body.abort()
        if self.producer.dropped_bytes:
            log.warn("Legacy HTTP STS for call {uuid}: {dropped} bytes of caller audio dropped (connection too slow)",
                     uuid=self.uuid, dropped=self.producer.dropped_bytes)
        log.info("Legacy HTTP STS session for call {uuid} ended: {reason}", uuid=self.uuid, reason=reason)
        try:
            self.handler.sts_closed(reason)
        except Exception:
            log.failure("Legacy HTTP STS for call {uuid}: the call failed to handle the end", uuid=self.uuid)


@implementer(IStsConnector)
class HttpStsConnector:
    """
    Opens legacy HTTP STS sessions.

    :param http_client: a treq `HTTPClient` (see `sts_http_client` for one with the right TLS policy).
    :param clock: for the connect timeout.
    :param connect_timeout: seconds until the request must be on the wire.
    """

    def __init__(self, http_client: Any, clock: Any, connect_timeout: float = 5.0) -> None:
        self._http = http_client
        self._clock = clock
        self._connect_timeout = connect_timeout

    def connect(self, url: str | None, uuid: str, handler: IStsHandler) -> Deferred:
        """
        Start the POST for call ``uuid``.

        :return: a Deferred firing with an `HttpStsSession` once the request is being sent, or failing with
            `StsConnectError`.
        """
        if url is None:
            return fail(StsConnectError("no STS HTTP URL"))
        log.info("Connecting to legacy HTTP STS: {url}", url=redact_url(url))
        session = HttpStsSession(uuid, handler)
        try:
            response = self._http.request(
                "POST", url,
                headers={"X-UUID": uuid, "Content-Type": "application/octet-stream"},
                data=session.producer,
                allow_redirects=False,
                unbuffered=True,
                reactor=self._clock,
            )
        except Exception as e:
            return fail(StsConnectError(f"cannot send the request ({type(e).__name__})"))
        return _HttpAttempt(self._clock, self._connect_timeout, session, response).result


@define(eq=False)
class _HttpAttempt:
    """Waits for the request to be on the wire, within the timeout; then hands the response over to the session."""

    clock: Any
    timeout: float
    session: HttpStsSession
    response: Deferred
    result: Deferred = field(init=False)
    _timer: Any = field(default=None, init=False)
    _done: bool = field(default=False, init=False)

    def __attrs_post_init__(self) -> None:
        self.result = Deferred(self._cancelled)
        self._timer = self.clock.callLater(self.timeout, self._timed_out)
        self.session.producer.started.addCallback(self._started)
        self.response.addErrback(self._failed_early)

    def _started(self, _: Any) -> None:
        if self._done:
            return
        self._done = True
        self._stop_timer()
        self.session._watch(self.response)
        log.info("Legacy HTTP STS stream open for call {uuid}", uuid=self.session.uuid)
        self.result.callback(self.session)

    def _failed_early(self, failure: Failure) -> Any:
        if self._done:
            return failure
        self._done = True
        self._stop_timer()
        self.result.errback(StsConnectError(describe_failure(failure)))
        return None

    def _timed_out(self) -> None:
        self._timer = None
        if self._done:
            return
        self._done = True
        self.result.errback(StsConnectError(f"timed out after {self.timeout:g} s"))
        self._abandon()

    def _cancelled(self, _: Deferred) -> None:
        if self._done:
            return
        self._done = True
        self._stop_timer()
        self._abandon()

    def _abandon(self) -> None:
        self.response.addErrback(lambda _: None)
        self.response.cancel()

    def _stop_timer(self) -> None:
        if self._timer is not None:
            if self._timer.active():
                self._timer.cancel()
            self._timer = None
