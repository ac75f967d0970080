"""
avr's one HTTP delivery engine: JSON bodies POSTed to one receiver, in order, never blocking whoever sends them.

Both webhooks are configurations of `PostQueue`: the AVR Core call webhooks (`avr.webhooks`) and the events webhook
(`avr.control.events_webhook`).

- **Lanes.** Every event has an ordering key (the AVR webhooks: the call's UUID; the events webhook: one key for
  all). Events of one key are sent one at a time, in the order posted; keys never wait for each other.
- **Attempts.** Each attempt is bounded by ``timeout`` seconds, request and reply body together. A failed attempt
  (connection error, timeout, non-2xx answer -- a redirect included: redirects are never followed) is retried
  ``retries`` times with capped exponential backoff. A request whose connection closed before any byte of a response
  arrived -- what a kept-alive connection that the receiver has closed does to the next request -- is sent again at
  once on a fresh connection, whatever ``retries`` says (within the same attempt).
- **Replies.** A post may ask for the reply body (at most ``max_reply`` bytes; a longer one is dropped with its
  connection). It gets it within ``timeout`` seconds of posting, retries included, or ``None``.
- **Bound.** At most ``max_queued`` droppable events wait per receiver. One more pushes out the oldest droppable event
  of the key that has the most of them queued (so a chatty call pays for itself and spares the quiet ones). Dropping
  is logged when it starts, every minute while it lasts, and with the count once the queue has drained to half. Kinds
  in ``never_dropped`` are always queued (a call has a handful of them) and are not counted against the bound.
- **Shutdown.** `stop` refuses new events, discards the droppable ones (queued or in flight) and pending retries, and
  gives every remaining event one attempt, in order, for at most ``shutdown_grace`` seconds (`SHUTDOWN_GRACE`); then
  it abandons what is left.
"""

from __future__ import annotations

import itertools
from collections import Counter, OrderedDict
from collections.abc import Callable, Hashable, Iterator, Mapping
from typing import Any, cast
from urllib.parse import urlsplit

from attrs import define, field, frozen, validators
from twisted.internet import task
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.http import PotentialDataLoss

from avr.failures import closed_before_response, describe_failure
from avr.logtext import redact_url, url_repr

#: Seconds `PostQueue.stop` gives undelivered never-dropped events (a call's ``call_ended``...), then abandons them.
#: A constant, not a setting: shutdown must stay well inside the grace a supervisor gives before it kills the
#: process (``docker stop``: 10 s).
SHUTDOWN_GRACE = 5.0

#: Droppable events kept per receiver while it is slow or down.
MAX_QUEUED = 1000

#: Largest reply body read; a longer one is dropped (the event still counts as delivered).
MAX_REPLY_BYTES = 64 * 1024

#: Seconds between two warnings while events are being dropped.
_DROP_REPORT_INTERVAL = 60.0


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms"


@frozen
class _Outcome:
    """What one attempt achieved: ``error`` is ``None`` on a 2xx answer."""

    status: int | None
    body: bytes | None
    error: str | None


class _AttemptTimedOut(Exception):
    """An attempt got no complete answer within the timeout."""


@define(eq=False)
class _Delivery:
    """One event on its way: its body, and whoever waits for the reply."""

    seq: int
    key: Hashable
    kind: str
    #: How log lines name it, e.g. ``[WEBHOOK][CALL_ENDED] call_ended for call <uuid>``.
    what: str
    body: bytes
    droppable: bool
    result: Deferred[bytes | None] | None
    abandoned: str | None = None
    waiting: Deferred[Any] | None = None
    sleeping: bool = False
    expiry: IDelayedCall | None = None

    def settle(self, reply: bytes | None) -> None:
        """Hand the reply (or ``None``) to whoever waits, once; disarm the expiry timer."""
        if self.expiry is not None and self.expiry.active():
            self.expiry.cancel()
        self.expiry = None
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
class _Lane:
    """The undelivered events of one ordering key, oldest first; one worker drains it."""

    queue: OrderedDict[int, _Delivery] = field(factory=OrderedDict)
    droppable: OrderedDict[int, _Delivery] = field(factory=OrderedDict)
    current: _Delivery | None = None


@define(eq=False)
class _Lengths:
    """The lanes by how many droppable events they hold, so that the longest is found at once."""

    #: Droppable events queued, in all lanes.
    total: int = 0
    _by_length: dict[int, dict[_Lane, None]] = field(factory=dict)
    _longest: int = 0

    def grew(self, lane: _Lane) -> None:
        """``lane`` holds one droppable event more."""
        self.total += 1
        self._move(lane, len(lane.droppable) - 1)

    def shrank(self, lane: _Lane) -> None:
        """``lane`` holds one droppable event less."""
        self.total -= 1
        self._move(lane, len(lane.droppable) + 1)

    def longest(self) -> _Lane:
        """A lane with the most droppable events (the first to get there, of several)."""
        return next(iter(self._by_length[self._longest]))

    def _move(self, lane: _Lane, before: int) -> None:
        after = len(lane.droppable)
        if before:
            lanes = self._by_length[before]
            del lanes[lane]
            if not lanes:
                del self._by_length[before]
        if after:
            self._by_length.setdefault(after, {})[lane] = None
        self._longest = max(self._longest, after)
        while self._longest and self._longest not in self._by_length:
            self._longest -= 1


@define(eq=False)
class PostQueue:
    """
    Delivers POSTs to ``url``: per-key lanes, a bounded queue, timeouts, retries, clean shutdown (see the module).

    :param http: a treq ``HTTPClient`` (or ``StubTreq``) for the POSTs.
    :param clock: times attempts, backoff, reply deadlines and shutdown.
    :param url: the receiver.
    :param label: names the receiver in log lines, e.g. ``Events webhook``.
    :param secret_headers: headers sent with every POST whose values are secrets: never logged.
    :param timeout: seconds per attempt (request and reply body), and for a reply as a whole.
    :param retries: extra attempts after a failed one.
    :param backoff_base: seconds before the first retry; doubled before each further one ...
    :param backoff_cap: ... up to this many seconds.
    :param max_queued: droppable events kept while the receiver is slow or down.
    :param never_dropped: event kinds that are never dropped (nor discarded at shutdown).
    :param max_reply: largest reply body read.
    :param shutdown_grace: seconds `stop` gives the events that are not dropped.
    :param fresh_http: the client that sends a request again when its connection closed before any response: give
        one that never reuses a connection (``HTTPClient(Agent(reactor))``); ``None``: ``http``.
    :param key_field: the log field a lane's key goes in, in the lines about its deliveries (``call_id`` when the
        keys are calls' UUIDs); ``None``: not logged.
    :param on_failed: told the key of each event not delivered after every attempt (a call's summary counts them).
    """

    log = Logger()

    http: Any = field(repr=False)
    clock: IReactorTime = field(repr=False)
    url: str = field(repr=url_repr)
    label: str = "Webhook"
    secret_headers: Mapping[str, str] = field(factory=dict, repr=False)
    timeout: float = 3.0
    retries: int = 0
    backoff_base: float = 0.5
    backoff_cap: float = 30.0
    max_queued: int = field(default=MAX_QUEUED, validator=validators.ge(1))
    never_dropped: frozenset[str] = frozenset()
    max_reply: int = MAX_REPLY_BYTES
    shutdown_grace: float = SHUTDOWN_GRACE
    fresh_http: Any = field(default=None, repr=False)
    key_field: str | None = None
    on_failed: Callable[[Hashable], None] | None = field(default=None, repr=False)
    #: Events dropped so far because the queue was full.
    dropped: int = field(default=0, init=False)
    #: Events delivered (a 2xx answer), failed for good (every attempt failed), and retries made, so far.
    delivered: int = field(default=0, init=False)
    failed: int = field(default=0, init=False)
    retried: int = field(default=0, init=False)
    _lanes: dict[Hashable, _Lane] = field(factory=dict, init=False, repr=False)
    _lengths: _Lengths = field(factory=_Lengths, init=False, repr=False)
    _seq: Iterator[int] = field(factory=itertools.count, init=False, repr=False)
    _dropping: int = field(default=0, init=False, repr=False)
    _reported_at: float = field(default=0.0, init=False, repr=False)
    _stopping: bool = field(default=False, init=False, repr=False)
    _stop_waiters: list[Deferred[None]] = field(factory=list, init=False, repr=False)
    _stop_deadline: IDelayedCall | None = field(default=None, init=False, repr=False)

    @property
    def pending(self) -> int:
        """Events waiting to be sent (not counting those in flight)."""
        return sum(len(lane.queue) for lane in self._lanes.values())

    def post(self, key: Hashable, kind: str, what: str, body: bytes) -> None:
        """
        Queue ``body`` (JSON) for delivery behind the undelivered events of ``key``. Never raises, never waits.

        :param kind: the event's type (the bound and the shutdown spare the `never_dropped` kinds).
        :param what: names the event in log lines.
        """
        self._enqueue(key, kind, what, body, None)

    def ask(self, key: Hashable, kind: str, what: str, body: bytes) -> Deferred[bytes | None]:
        """
        Like `post`, and read the reply.

        :return: a Deferred firing with the reply body of a 2xx answer within ``timeout`` seconds of this call
            (retries included), else with ``None``. It never fails.
        """
        reply: Deferred[bytes | None] = Deferred()
        self._enqueue(key, kind, what, body, reply)
        return reply

    def backoff(self, retry: int) -> float:
        """Seconds before retry number ``retry`` (1, 2, ...)."""
        return float(min(self.backoff_base * 2 ** (retry - 1), self.backoff_cap))

    def stop(self) -> Deferred[None]:
        """
        Shut down: accept no more events, discard the droppable ones and pending retries, give the others one attempt
        each for at most ``shutdown_grace`` seconds, then abandon them.

        :return: a Deferred firing when no delivery is in progress any more (and no timer of ours is left).
        """
        if not self._stopping:
            self._stopping = True
            self._discard_droppable()
        if not self._lanes:
            self._stopped()
            return succeed(None)
        done: Deferred[None] = Deferred()
        self._stop_waiters.append(done)
        return done

    def _enqueue(self, key: Hashable, kind: str, what: str, body: bytes, reply: Deferred[bytes | None] | None) -> None:
        if self._stopping:
            self.log.info("{what} not sent: shutting down", what=what)
            if reply is not None:
                reply.callback(None)
            return
        delivery = _Delivery(next(self._seq), key, kind, what, body, kind not in self.never_dropped, reply)
        if reply is not None:
            # Armed before the worker starts: a synchronous delivery settles (and disarms) it at once.
            delivery.expiry = self.clock.callLater(self.timeout, self._expire, delivery)
        lane = self._lanes.get(key)
        if lane is not None:
            self._admit(lane, delivery)
            return
        lane = self._lanes[key] = _Lane()
        self._admit(lane, delivery)
        Deferred.fromCoroutine(self._drain(key, lane)).addErrback(
            lambda f: self.log.failure("{label} delivery for {key} failed", f, label=self.label, key=key)
        )

    def _discard_droppable(self) -> None:
        lanes = list(self._lanes.values())
        discarded = [delivery for lane in lanes for delivery in lane.droppable.values()]
        for lane in lanes:
            for seq in lane.droppable:
                del lane.queue[seq]
            lane.droppable.clear()
        self._lengths = _Lengths()
        in_flight = [lane.current for lane in lanes if lane.current is not None and lane.current.abandoned is None]
        discarded += [d for d in in_flight if d.droppable]
        kept = sum(len(lane.queue) for lane in lanes) + sum(not d.droppable for d in in_flight)
        if discarded or kept or self.dropped:
            self.log.info(
                "{label} {url}: shutting down; {discarded} droppable events discarded ({dropped} dropped before), "
                "{kept} events get one attempt each within {grace} s",
                label=self.label, url=redact_url(self.url), discarded=len(discarded), dropped=self.dropped,
                kept=kept, grace=self.shutdown_grace,
            )
        if lanes:
            self._stop_deadline = self.clock.callLater(self.shutdown_grace, self._abandon_all)
        for delivery in discarded:
            delivery.settle(None)
        # Last: cancelling lets a lane's worker go on to its next event (or finish) at once.
        for delivery in in_flight:
            if delivery.droppable:
                delivery.abandon("shutting down")
            elif delivery.sleeping and delivery.waiting is not None:
                delivery.waiting.cancel()

    def _admit(self, lane: _Lane, delivery: _Delivery) -> None:
        if delivery.droppable:
            if self._lengths.total >= self.max_queued:
                self._drop(self._lengths.longest())
            lane.droppable[delivery.seq] = delivery
            self._lengths.grew(lane)
        lane.queue[delivery.seq] = delivery

    def _drop(self, lane: _Lane) -> None:
        seq, victim = lane.droppable.popitem(last=False)
        del lane.queue[seq]
        self._lengths.shrank(lane)
        victim.settle(None)
        self.dropped += 1
        self._dropping += 1
        now = self.clock.seconds()
        if self._dropping == 1:
            self._reported_at = now
            self.log.warn(
                "{label} {url}: receiver not keeping up, {limit} events queued; dropping the oldest "
                "(never {kept})",
                label=self.label, url=redact_url(self.url), limit=self.max_queued,
                kept=", ".join(sorted(self.never_dropped)) or "none",
            )
        elif now - self._reported_at >= _DROP_REPORT_INTERVAL:
            self._reported_at = now
            self.log.warn(
                "{label} {url}: receiver still not keeping up; {count} events dropped so far",
                label=self.label, url=redact_url(self.url), count=self._dropping,
            )

    def _delivered(self) -> None:
        if self._dropping and self._lengths.total <= self.max_queued // 2:
            self.log.warn(
                "{label} {url} delivering again; {count} events were dropped meanwhile",
                label=self.label, url=redact_url(self.url), count=self._dropping,
            )
            self._dropping = 0

    async def _drain(self, key: Hashable, lane: _Lane) -> None:
        try:
            while lane.queue:
                seq, delivery = lane.queue.popitem(last=False)
                if delivery.droppable:
                    del lane.droppable[seq]
                    self._lengths.shrank(lane)
                lane.current = delivery
                if delivery.abandoned is None:
                    await self._deliver(delivery)
                delivery.settle(None)
                lane.current = None
        finally:
            lane.current = None
            for delivery in lane.queue.values():
                delivery.settle(None)
            while lane.droppable:
                lane.droppable.popitem()
                self._lengths.shrank(lane)
            if self._lanes.get(key) is lane:
                del self._lanes[key]
            if self._stopping and not self._lanes:
                self._stopped()

    async def _deliver(self, delivery: _Delivery) -> None:
        attempts = self.retries + 1
        error = ""
        for attempt in range(1, attempts + 1):
            if attempt > 1:
                if self._stopping:
                    error += "; not retried: shutting down"
                    break
                delay = self.backoff(attempt - 1)
                self.log.info(
                    "{what}: attempt {attempt}/{attempts} failed ({error}); retrying in {delay}s",
                    what=delivery.what, attempt=attempt - 1, attempts=attempts, error=error, delay=delay,
                    **self._key(delivery.key),
                )
                delivery.sleeping = True
                await delivery.wait(self._sleep(delay))
                delivery.sleeping = False
                if delivery.abandoned is not None:
                    return
                if self._stopping:
                    error += "; not retried: shutting down"
                    break
                self.retried += 1
            outcome: _Outcome = await delivery.wait(self._attempt(delivery))
            if delivery.abandoned is not None:
                return
            if outcome.error is None:
                self.log.debug(
                    "{what} delivered (HTTP {status}, attempt {attempt})",
                    what=delivery.what, status=outcome.status, attempt=attempt, **self._key(delivery.key),
                )
                delivery.settle(outcome.body)
                self.delivered += 1
                self._delivered()
                return
            error = outcome.error
        self.failed += 1
        self.log.error(
            "{what} to {url} not delivered after {attempts} attempt(s): {error}",
            what=delivery.what, url=redact_url(self.url), attempts=attempts, error=error, **self._key(delivery.key),
        )
        if self.on_failed is not None:
            self.on_failed(delivery.key)

    def _key(self, key: Hashable) -> dict[str, Hashable]:
        """The log fields naming a lane's key (see ``key_field``)."""
        return {self.key_field: key} if self.key_field is not None else {}

    def _attempt(self, delivery: _Delivery) -> Deferred[_Outcome]:
        """One POST, bounded by the timeout; fires with an `_Outcome`, never fails."""
        d = Deferred.fromCoroutine(self._post(delivery))
        d.addTimeout(self.timeout, self.clock, onTimeoutCancel=self._timed_out)
        return d.addCallbacks(self._judge, self._describe_failure)

    async def _post(self, delivery: _Delivery) -> tuple[int, bytes | None]:
        try:
            response = await self._send(self.http, delivery)
        except Exception as e:
            if not closed_before_response(e):
                raise
            # Twisted's pool resends only idempotent requests when a kept-alive connection turns out to be closed.
            # Not one byte of an answer came back: on a reused connection that means the receiver had closed it and
            # never read the request, so the webhook is sent again, on a connection of its own. (On a new connection
            # it means a receiver that hangs up without answering: it gets the request twice, never more.)
            self.log.debug(
                "{what}: connection closed before any response ({error}); sending again on a fresh connection",
                what=delivery.what, error=describe_failure(e),
            )
            response = await self._send(self.fresh_http or self.http, delivery)
        reply = await _read_body(response, self.max_reply)
        if reply is None:
            self.log.warn("{what}: reply body over {limit} bytes ignored", what=delivery.what, limit=self.max_reply)
        return response.code, reply

    def _send(self, http: Any, delivery: _Delivery) -> Deferred[Any]:
        # No redirects (a 3xx is a failed attempt, never a re-sent GET); unbuffered so that `_read_body` can bound
        # and abort the body; ``reactor`` is only used by treq for its own timeout, which we do not use.
        return http.post(
            self.url, data=delivery.body, headers={"Content-Type": "application/json", **self.secret_headers},
            allow_redirects=False, unbuffered=True, reactor=self.clock,
        )

    def _timed_out(self, result: Any, timeout: float) -> Any:
        if isinstance(result, Failure):
            return Failure(_AttemptTimedOut(f"no response within {_ms(self.timeout)}"))
        return result

    def _judge(self, answer: tuple[int, bytes | None]) -> _Outcome:
        status, body = answer
        if 200 <= status < 300:
            return _Outcome(status, body, None)
        return _Outcome(status, None, f"HTTP {status}")

    def _describe_failure(self, failure: Failure) -> _Outcome:
        if failure.check(_AttemptTimedOut):
            text = f"timed out: {failure.value}"
        else:
            text = describe_failure(failure, urlsplit(self.url).hostname)
        text = text.replace(self.url, redact_url(self.url))
        for secret in self.secret_headers.values():
            text = text.replace(secret, "***")
        return _Outcome(None, None, text)

    def _sleep(self, delay: float) -> Deferred[None]:
        d: Deferred[None] = task.deferLater(self.clock, delay, lambda: None)
        return d.addErrback(_ignore_cancel)

    def _expire(self, delivery: _Delivery) -> None:
        delivery.expiry = None
        if delivery.abandoned is None:
            reason = f"no reply within {_ms(self.timeout)}"
            self.log.warn("{what} to {url} abandoned: {reason}", what=delivery.what, url=redact_url(self.url),
                          reason=reason)
            delivery.abandon(reason)

    def _abandon_all(self) -> None:
        self._stop_deadline = None
        lanes = list(self._lanes.values())
        left: list[_Delivery] = []
        for lane in lanes:
            left += [d for d in lane.queue.values() if d.abandoned is None]
            lane.queue.clear()
        currents = [lane.current for lane in lanes if lane.current is not None and lane.current.abandoned is None]
        left += currents
        if left:
            kinds = Counter(d.kind for d in left)
            self.log.warn(
                "{label} {url}: {count} events abandoned at shutdown after {grace} s ({kinds})",
                label=self.label, url=redact_url(self.url), count=len(left), grace=self.shutdown_grace,
                kinds=", ".join(f"{kind}: {n}" for kind, n in sorted(kinds.items())),
            )
        for delivery in left:
            delivery.abandon("shutting down")

    def _stopped(self) -> None:
        if self._stop_deadline is not None and self._stop_deadline.active():
            self._stop_deadline.cancel()
        self._stop_deadline = None
        waiters, self._stop_waiters = self._stop_waiters, []
        for waiter in waiters:
            waiter.callback(None)


def _ignore_cancel(failure: Failure) -> None:
    failure.trap(CancelledError)


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
        # twisted.web hands a body protocol a producer as its transport; stopping it drops the connection.
        if self.transport is not None:
            cast(IPushProducer, self.transport).stopProducing()


def _read_body(response: Any, limit: int) -> Deferred[bytes | None]:
    """The body of ``response``: its bytes, or ``None`` if longer than ``limit`` (the rest is not read)."""
    reader = _BodyReader(limit)
    response.deliverBody(reader)
    return reader.done
