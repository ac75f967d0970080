"""
avr-core's call webhooks: ``POST WEBHOOK_URL`` with a JSON envelope for every call event.

Each event is one envelope with exactly the keys ``uuid``, ``type``, ``timestamp`` and ``payload`` (avr-app's
receiver refuses anything else). Delivery is fire-and-forget for the caller: attempts are bounded by the webhook
timeout, failures are retried with exponential backoff, the final failure is logged. Events of one call are delivered
one after the other, in the order emitted; calls never wait on each other. Only ``call_initiated``'s reply is read: its
``sts_url`` routes the call.
"""

from __future__ import annotations

import json
import time
from collections import deque
from typing import Any, Mapping

from attrs import define, field, frozen
from twisted.internet import task
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.http import PotentialDataLoss
from zope.interface import implementer

from avr.config import redact_url
from avr.interfaces import IWebhooks
from avr.json_input import decode_json
from avr.urls import is_sts_url

#: The event types avr-core sends (and avr-app's receiver accepts), in a call's order.
WEBHOOK_TYPES = ("call_initiated", "call_started", "transcription", "interruption", "dtmf_digit", "call_ended")

#: Header carrying the shared secret (the raw secret: receivers compare it for equality).
SECRET_HEADER = "X-AVR-WEBHOOK-SECRET"

#: Largest webhook reply body read; a longer one is dropped (the event still counts as delivered).
MAX_REPLY_BYTES = 64 * 1024

#: How much of a reply body is logged.
_LOGGED_REPLY_CHARS = 1000


def webhook_timestamp(seconds: float) -> str:
    """``seconds`` since the epoch as ISO-8601 UTC with milliseconds and ``Z``: ``2026-01-01T12:00:00.000Z``."""
    whole, millis = divmod(round(seconds * 1000), 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)) + f".{millis:03d}Z"


@frozen
class _Outcome:
    """What one attempt achieved: ``error`` is ``None`` on a 2xx answer."""

    status: int | None
    body: bytes | None
    error: str | None


@define(eq=False)
class _Delivery:
    """One event on its way: its encoded envelope, and whoever waits for the reply (``call_initiated`` only)."""

    uuid: str
    type: str
    body: bytes
    result: Deferred[bytes | None] | None
    abandoned: str | None = None
    waiting: Deferred[Any] | None = None
    sleeping: bool = False
    expiry: IDelayedCall | None = None

    def settle(self, reply: bytes | None) -> None:
        """Hand the reply (or ``None``) to whoever waits, once; disarm the expiry timer."""
        if self.expiry is not None and self.expiry.active():
            self.expiry.cancel()
        if self.result is not None and not self.result.called:
            self.result.callback(reply)

    def abandon(self, reason: str) -> None:
        """Stop trying: the waiter gets ``None`` now, and the attempt or backoff in progress is cancelled."""
        if self.abandoned is None:
            self.abandoned = reason
        self.settle(None)
        if self.waiting is not None:
            self.waiting.cancel()

    async def wait(self, d: Deferred[Any]) -> Any:
        """Await ``d`` (which never fails) while letting `abandon` cancel it."""
        self.waiting = d
        try:
            return await d
        finally:
            self.waiting = None


@define(eq=False)
class _CallQueue:
    """The undelivered events of one call; one worker drains it."""

    pending: deque[_Delivery] = field(factory=deque)
    current: _Delivery | None = None

    def deliveries(self) -> list[_Delivery]:
        return ([self.current] if self.current is not None else []) + list(self.pending)


@implementer(IWebhooks)
@define(eq=False)
class WebhookClient:
    """
    Sends call webhooks to ``url``; with ``url=None`` every method is a no-op.

    :param http: a treq ``HTTPClient`` (or ``StubTreq``) used for the POSTs.
    :param clock: times attempts, backoff and ``call_initiated``'s deadline; stamps envelopes.
    :param url: the receiver (``WEBHOOK_URL``), or ``None``.
    :param secret: sent as header ``X-AVR-WEBHOOK-SECRET`` when not ``None``; never logged.
    :param timeout_ms: bound of each attempt (request and reply body), and of ``call_initiated`` as a whole.
    :param retries: extra attempts after a failed one (connection error, timeout, non-2xx status).
    :param backoff_base: seconds before the first retry; doubled before each further one ...
    :param backoff_cap: ... up to this many seconds.
    """

    log = Logger()

    http: Any
    clock: IReactorTime
    url: str | None = field(repr=lambda url: repr(redact_url(url) if url else url))
    secret: str | None = field(default=None, repr=False)
    timeout_ms: int = 3000
    retries: int = 0
    backoff_base: float = 0.5
    backoff_cap: float = 30.0
    _queues: dict[str, _CallQueue] = field(factory=dict, init=False)
    _stopping: bool = field(default=False, init=False)
    _stop_waiters: list[Deferred[None]] = field(factory=list, init=False)
    _stop_deadline: IDelayedCall | None = field(default=None, init=False)

    @classmethod
    def from_config(cls, http: Any, clock: IReactorTime, config: Any) -> WebhookClient:
        """A client for the ``webhook_*`` settings of an `avr.config.Config`."""
        return cls(http, clock, config.webhook_url, config.webhook_secret, config.webhook_timeout, config.webhook_retry)

    def emit(self, uuid: str, type: str, payload: Mapping[str, Any]) -> None:
        """
        Queue event ``type`` of call ``uuid`` for delivery. Never raises, never waits; problems are logged (an unknown
        type or a payload JSON cannot encode is not sent).
        """
        try:
            self._enqueue(uuid, type, payload, wants_reply=False)
        except Exception:
            self.log.failure("Webhook {type} for call {uuid} not sent", type=type, uuid=uuid)

    def call_initiated(self, uuid: str, payload: Mapping[str, Any]) -> Deferred[str | None]:
        """
        Send ``call_initiated`` with ``payload`` and read the reply's ``sts_url``.

        :return: a Deferred firing, within ``timeout_ms`` of this call (retries included), with the reply's ``sts_url``
            if it is a valid ws/wss/http/https URL, else ``None``. It never fails.
        """
        try:
            delivery = self._enqueue(uuid, "call_initiated", payload, wants_reply=True)
        except Exception:
            self.log.failure("Webhook call_initiated for call {uuid} not sent", uuid=uuid)
            delivery = None
        if delivery is None or delivery.result is None:
            return succeed(None)
        return delivery.result.addCallback(self._sts_url_from_reply, uuid)

    def stop(self) -> Deferred[None]:
        """
        Shut down: accept no more events, cancel pending retries, give events already queued one attempt each, and
        abandon whatever is still undelivered ``timeout_ms`` later.

        :return: a Deferred firing when no delivery is in progress any more (and no timer of ours is left).
        """
        if not self._stopping:
            self._stopping = True
            for queue in list(self._queues.values()):
                for delivery in queue.deliveries():
                    if delivery.sleeping and delivery.waiting is not None:
                        delivery.waiting.cancel()
            if self._queues:
                self._stop_deadline = self.clock.callLater(self.timeout_ms / 1000, self._abandon_all, "shutting down")
        if not self._queues:
            return succeed(None)
        done: Deferred[None] = Deferred()
        self._stop_waiters.append(done)
        return done

    def _enqueue(self, uuid: str, type: str, payload: Mapping[str, Any] | None, wants_reply: bool) -> _Delivery | None:
        if self.url is None:
            return None
        if type not in WEBHOOK_TYPES:
            self.log.error("Webhook {type} for call {uuid} not sent: unknown event type", type=type, uuid=uuid)
            return None
        if self._stopping:
            self.log.info("Webhook {type} for call {uuid} not sent: shutting down", type=type, uuid=uuid)
            return None
        if payload is None:
            payload = {}
        if not isinstance(payload, Mapping):
            self.log.error(
                "Webhook {type} for call {uuid} not sent: payload must be an object, not {kind}",
                type=type, uuid=uuid, kind=payload.__class__.__name__,
            )
            return None
        envelope = {"uuid": uuid, "type": type, "timestamp": webhook_timestamp(self.clock.seconds()),
                    "payload": dict(payload)}
        try:
            body = json.dumps(envelope, separators=(",", ":"), allow_nan=False).encode("utf-8")
        except (TypeError, ValueError) as e:
            self.log.error(
                "Webhook {type} for call {uuid} not sent: payload is not JSON ({error})", type=type, uuid=uuid, error=e
            )
            return None
        delivery = _Delivery(uuid, type, body, Deferred() if wants_reply else None)
        if wants_reply:
            # Armed before the worker starts: a synchronous delivery settles (and disarms) it at once.
            delivery.expiry = self.clock.callLater(
                self.timeout_ms / 1000, delivery.abandon, f"no reply within {self.timeout_ms} ms"
            )
        queue = self._queues.get(uuid)
        if queue is not None:
            queue.pending.append(delivery)
            return delivery
        queue = self._queues[uuid] = _CallQueue()
        queue.pending.append(delivery)
        Deferred.fromCoroutine(self._drain(uuid, queue)).addErrback(
            lambda f: self.log.failure("Webhook delivery for call {uuid} failed", f, uuid=uuid)
        )
        return delivery

    async def _drain(self, uuid: str, queue: _CallQueue) -> None:
        try:
            while queue.pending:
                delivery = queue.current = queue.pending.popleft()
                if delivery.abandoned is None:
                    await self._deliver(delivery)
                if delivery.abandoned is not None:
                    self.log.warn(
                        "[WEBHOOK][{tag}] {type} for call {uuid} to {url} abandoned: {reason}",
                        tag=delivery.type.upper(), type=delivery.type, uuid=uuid, url=redact_url(self.url or ""),
                        reason=delivery.abandoned,
                    )
                delivery.settle(None)
                queue.current = None
        finally:
            for delivery in queue.deliveries():
                delivery.settle(None)
            if self._queues.get(uuid) is queue:
                del self._queues[uuid]
            if self._stopping and not self._queues:
                self._stopped()

    async def _deliver(self, delivery: _Delivery) -> None:
        attempts = self.retries + 1
        error = ""
        for attempt in range(1, attempts + 1):
            if attempt > 1:
                if self._stopping:
                    error += "; not retried: shutting down"
                    break
                delay = self._backoff(attempt - 1)
                self.log.info(
                    "[WEBHOOK][{tag}] attempt {attempt}/{attempts} for call {uuid} failed ({error}); "
                    "retrying in {delay}s",
                    tag=delivery.type.upper(), attempt=attempt - 1, attempts=attempts, uuid=delivery.uuid,
                    error=error, delay=delay,
                )
                delivery.sleeping = True
                await delivery.wait(self._sleep(delay))
                delivery.sleeping = False
                if delivery.abandoned is not None:
                    return
                if self._stopping:
                    error += "; not retried: shutting down"
                    break
            outcome: _Outcome = await delivery.wait(self._attempt(delivery))
            if delivery.abandoned is not None:
                return
            if outcome.error is None:
                self.log.debug(
                    "Webhook {type} for call {uuid} delivered (HTTP {status}, attempt {attempt})",
                    type=delivery.type, uuid=delivery.uuid, status=outcome.status, attempt=attempt,
                )
                delivery.settle(outcome.body)
                return
            error = outcome.error
        self.log.error(
            "[WEBHOOK][{tag}] {type} for call {uuid} to {url} failed after {attempts} attempt(s): {error}",
            tag=delivery.type.upper(), type=delivery.type, uuid=delivery.uuid, url=redact_url(self.url or ""),
            attempts=attempts, error=error,
        )

    def _attempt(self, delivery: _Delivery) -> Deferred[_Outcome]:
        """One POST, bounded by the timeout; fires with an `_Outcome`, never fails."""
        d = Deferred.fromCoroutine(self._post(delivery))
        d.addTimeout(self.timeout_ms / 1000, self.clock, onTimeoutCancel=self._timed_out)
        return d.addCallbacks(self._judge, self._describe_failure)

    async def _post(self, delivery: _Delivery) -> tuple[int, bytes | None]:
        headers = {"Content-Type": "application/json"}
        if self.secret is not None:
            headers[SECRET_HEADER] = self.secret
        # No redirects (a 3xx is a failed attempt, never a re-sent GET); unbuffered so that `_read_body` can bound
        # and abort the body; ``reactor`` is only used by treq for its own timeout, which we do not use.
        response = await self.http.post(
            self.url, data=delivery.body, headers=headers, allow_redirects=False, unbuffered=True, reactor=self.clock
        )
        reply = await _read_body(response, MAX_REPLY_BYTES)
        if reply is None:
            self.log.warn(
                "Webhook {type} for call {uuid}: reply body over {limit} bytes ignored",
                type=delivery.type, uuid=delivery.uuid, limit=MAX_REPLY_BYTES,
            )
        return response.code, reply

    def _timed_out(self, result: Any, timeout: float) -> Any:
        if isinstance(result, Failure):
            return Failure(_AttemptTimedOut(f"no response within {self.timeout_ms} ms"))
        return result

    def _judge(self, answer: tuple[int, bytes | None]) -> _Outcome:
        status, body = answer
        if 200 <= status < 300:
            return _Outcome(status, body, None)
        return _Outcome(status, None, f"HTTP {status}")

    def _describe_failure(self, failure: Failure) -> _Outcome:
        text = _describe(failure)
        if self.url:
            text = text.replace(self.url, redact_url(self.url))
        if self.secret:
            text = text.replace(self.secret, "***")
        return _Outcome(None, None, text)

    def _sleep(self, delay: float) -> Deferred[None]:
        d: Deferred[None] = task.deferLater(self.clock, delay, lambda: None)
        return d.addErrback(_ignore_cancel)

    def _backoff(self, retry: int) -> float:
        return float(min(self.backoff_base * 2 ** (retry - 1), self.backoff_cap))

    def _abandon_all(self, reason: str) -> None:
        self._stop_deadline = None
        for queue in list(self._queues.values()):
            for delivery in queue.deliveries():
                delivery.abandon(reason)

    def _stopped(self) -> None:
        if self._stop_deadline is not None and self._stop_deadline.active():
            self._stop_deadline.cancel()
        self._stop_deadline = None
        waiters, self._stop_waiters = self._stop_waiters, []
        for waiter in waiters:
            waiter.callback(None)

    def _sts_url_from_reply(self, body: bytes | None, uuid: str) -> str | None:
        try:
            return self._parse_reply(body, uuid)
        except Exception:
            self.log.failure("Reading the call_initiated reply for call {uuid} failed", uuid=uuid)
            return None

    def _parse_reply(self, body: bytes | None, uuid: str) -> str | None:
        if body is None or not body.strip():
            return None
        try:
            reply = decode_json(body)
        except ValueError:
            self.log.info("Webhook response received: {body}", body=_shorten(body.decode("utf-8", "replace")))
            self.log.warn("Ignoring the call_initiated reply for call {uuid}: not JSON", uuid=uuid)
            return None
        self.log.info("Webhook response received: {body}", body=_loggable_reply(reply))
        if not isinstance(reply, dict) or reply.get("sts_url") is None:
            return None
        url = reply["sts_url"]
        if not is_sts_url(url):
            self.log.warn(
                "Ignoring sts_url in the call_initiated reply for call {uuid}: "
                "not a ws://, wss://, http:// or https:// URL",
                uuid=uuid,
            )
            return None
        self.log.info("Overriding STS URL: {url}", url=redact_url(url))
        return url


class _AttemptTimedOut(Exception):
    """An attempt got no complete answer within the webhook timeout."""


class _BodyReader(Protocol):
    """Collects a response body up to a limit; cancelling it (or going over the limit) drops the connection."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.size = 0
        self.chunks: list[bytes] = []
        self.done: Deferred[bytes | None] = Deferred(self._cancel)

    def dataReceived(self, data: bytes) -> None:
        if self.done.called:
            return
        self.size += len(data)
        if self.size > self.limit:
            self.chunks = []
            self._cancel(self.done)
            self.done.callback(None)
            return
        self.chunks.append(data)

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        if self.done.called:
            return
        if reason.check(ResponseDone, PotentialDataLoss):
            self.done.callback(b"".join(self.chunks))
        else:
            self.done.errback(reason)

    def _cancel(self, d: Deferred[bytes | None]) -> None:
        if self.transport is not None:
            self.transport.stopProducing()


def _read_body(response: Any, limit: int) -> Deferred[bytes | None]:
    """The body of ``response``: its bytes, or ``None`` if longer than ``limit`` (the rest is not read)."""
    reader = _BodyReader(limit)
    response.deliverBody(reader)
    return reader.done


def _ignore_cancel(failure: Failure) -> None:
    failure.trap(CancelledError)


def _describe(failure: Failure) -> str:
    """A one-line description of why an attempt failed (no traceback)."""
    error = failure.value
    reasons = getattr(error, "reasons", None)
    if reasons:
        inner = "; ".join(_describe(r) for r in reasons if isinstance(r, Failure))
        return f"{type(error).__name__} ({inner})"
    text = str(error).strip()
    if isinstance(error, _AttemptTimedOut):
        return f"timed out: {text}"
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def _shorten(text: str) -> str:
    return text if len(text) <= _LOGGED_REPLY_CHARS else text[:_LOGGED_REPLY_CHARS] + "…"


def _loggable_reply(reply: Any) -> str:
    if isinstance(reply, dict) and isinstance(reply.get("sts_url"), str):
        reply = {**reply, "sts_url": redact_url(reply["sts_url"])}
    return _shorten(json.dumps(reply, separators=(",", ":"), ensure_ascii=False))
