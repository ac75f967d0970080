"""
The events webhook (``EVENTS_WEBHOOK_URL``): every call-control event, as the same JSON object ``/events`` sends,
POSTed to one receiver.

Delivery never blocks the publisher: events wait in one bounded queue and are sent one at a time, in order. Each
attempt is bounded by a timeout; a failed one (connection error, timeout, non-2xx) is retried with exponential
backoff on the injected clock, and given up with a log line after the last retry. When the receiver stays down long
enough for the queue to fill, the oldest events are dropped (logged once per outage, with the count when delivery
works again).
"""

from __future__ import annotations

import json
from collections import deque
from typing import Any

from attrs import define, field
from twisted.internet import defer, task
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.http import PotentialDataLoss
from zope.interface import implementer

from avr.config import redact_url
from avr.interfaces import IEventSink


class _AttemptFailed(Exception):
    """One POST did not get a 2xx answer in time; the message says why (no secrets)."""


@implementer(IEventSink)
@define(eq=False)
class EventsWebhook:
    """
    POSTs each published event to ``url``.

    :param http: a treq ``HTTPClient`` (or ``StubTreq``).
    :param clock: times attempts and backoff.
    :param url: the receiver.
    :param timeout: seconds per attempt (request and reading the reply).
    :param retries: extra attempts after a failed one.
    :param max_queue: events kept while the receiver is slow or down; the oldest are dropped beyond it.
    :param backoff_base: seconds before the first retry, doubled before each further one ...
    :param backoff_cap: ... up to this many seconds.
    """

    http: Any
    clock: IReactorTime
    url: str = field(repr=lambda url: repr(redact_url(url)))
    timeout: float = 3.0
    retries: int = 2
    max_queue: int = 1000
    backoff_base: float = 0.5
    backoff_cap: float = 30.0
    _queue: deque[tuple[str, bytes]] = field(factory=deque, init=False)
    _running: bool = field(default=False, init=False)
    _worker: Deferred | None = field(default=None, init=False)
    _waiting: Deferred | None = field(default=None, init=False)
    _dropped: int = field(default=0, init=False)
    _stopped: bool = field(default=False, init=False)
    log = Logger()

    @property
    def pending(self) -> int:
        """Events not yet delivered (queued, not counting the one being sent)."""
        return len(self._queue)

    def publish(self, event: dict) -> None:
        """Queue ``event`` for delivery (`IEventSink`). Never raises, never blocks."""
        if self._stopped:
            return
        kind = str(event.get("type", "?"))
        try:
            body = json.dumps(event, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")
        except (TypeError, ValueError):
            self.log.failure("Events webhook: dropping a {type} event that is not JSON", type=kind)
            return
        if len(self._queue) >= self.max_queue:
            self._queue.popleft()
            self._dropped += 1
            if self._dropped == 1:
                self.log.warn(
                    "Events webhook {url}: receiver not keeping up, {limit} events queued; dropping the oldest",
                    url=redact_url(self.url), limit=self.max_queue)
        self._queue.append((kind, body))
        if not self._running:
            self._running = True
            worker = Deferred.fromCoroutine(self._drain())
            worker.addErrback(lambda f: self.log.failure("Events webhook worker failed", f))
            if self._running:  # it may have finished already: deliveries can complete synchronously
                self._worker = worker

    def stop(self) -> Deferred:
        """
        Stop delivering: drop the queue and cancel the attempt or backoff in progress.

        :return: a Deferred firing when nothing is in flight any more.
        """
        self._stopped = True
        if self._queue:
            self.log.info("Events webhook: {count} undelivered events dropped at shutdown", count=len(self._queue))
        self._queue.clear()
        if self._waiting is not None:
            self._waiting.cancel()
        if self._worker is None:
            return succeed(None)
        done: Deferred = Deferred()
        self._worker.addBoth(lambda _: done.callback(None))
        return done

    async def _drain(self) -> None:
        try:
            while self._queue and not self._stopped:
                kind, body = self._queue.popleft()
                await self._deliver(kind, body)
        finally:
            self._running = False
            self._worker = None

    async def _deliver(self, kind: str, body: bytes) -> None:
        attempts = self.retries + 1
        for attempt in range(1, attempts + 1):
            if attempt > 1:
                delay = min(self.backoff_base * 2 ** (attempt - 2), self.backoff_cap)
                try:
                    await self._wait(task.deferLater(self.clock, delay, lambda: None))
                except CancelledError:
                    return
            try:
                status = await self._wait(self._attempt(body))
            except CancelledError:
                return
            except defer.TimeoutError:
                error = f"no answer within {self.timeout:g} s"
            except _AttemptFailed as e:
                error = str(e)
            except Exception as e:
                error = _describe(e).replace(self.url, redact_url(self.url))
            else:
                if self._dropped:
                    self.log.warn("Events webhook {url} delivering again; {count} events were dropped meanwhile",
                                  url=redact_url(self.url), count=self._dropped)
                    self._dropped = 0
                self.log.debug("Events webhook: {type} delivered (HTTP {status})", type=kind, status=status)
                return
            if self._stopped:
                return
            if attempt < attempts:
                self.log.info("Events webhook: {type} attempt {attempt}/{attempts} failed ({error}); retrying",
                              type=kind, attempt=attempt, attempts=attempts, error=error)
            else:
                self.log.error("Events webhook {url}: {type} event not delivered after {attempts} attempt(s): {error}",
                               url=redact_url(self.url), type=kind, attempts=attempts, error=error)

    async def _wait(self, d: Deferred) -> Any:
        self._waiting = d
        try:
            return await d
        finally:
            self._waiting = None

    def _attempt(self, body: bytes) -> Deferred:
        d = Deferred.fromCoroutine(self._post(body))
        return d.addTimeout(self.timeout, self.clock)

    async def _post(self, body: bytes) -> int:
        response = await self.http.post(self.url, data=body, headers={"Content-Type": "application/json"})
        await _discard_body(response)
        if not 200 <= response.code < 300:
            raise _AttemptFailed(f"HTTP {response.code}")
        return response.code


class _Discard(Protocol):
    """Reads a reply body to its end without keeping it (the connection can then be reused)."""

    def __init__(self) -> None:
        self.done: Deferred = Deferred(lambda _: self.transport and self.transport.stopProducing())

    def dataReceived(self, data: bytes) -> None:
        """Ignored."""

    def connectionLost(self, reason: Failure = Failure(ResponseDone())) -> None:  # noqa: B008
        if self.done.called:
            return
        if reason.check(ResponseDone, PotentialDataLoss):
            self.done.callback(None)
        else:
            self.done.errback(reason)


def _discard_body(response: Any) -> Deferred:
    reader = _Discard()
    response.deliverBody(reader)
    return reader.done


def _describe(error: BaseException) -> str:
    reasons = getattr(error, "reasons", None)
    if reasons:
        inner = "; ".join(_describe(r.value) for r in reasons if isinstance(r, Failure))
        return f"{type(error).__name__} ({inner})"
    text = str(error).strip()
    return f"{type(error).__name__}: {text}" if text else type(error).__name__
