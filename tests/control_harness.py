"""
Shared helpers for the call-control loopback tests: waiting on recorded items without polling, a client of avr's
``/events`` WebSocket, and an event matcher.
"""

from __future__ import annotations

import json
from typing import Any, Callable

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.internet.defer import Deferred, succeed
from twisted.internet.endpoints import TCP4ClientEndpoint

#: Seconds any single wait may take before the test fails.
WAIT = 5.0

Waiters = list[tuple[Callable[[dict], bool], Deferred]]


def matcher(predicate: Callable[[dict], bool], timeout: float, reactor: Any, seen: list[dict],
            waiters: Waiters) -> Deferred:
    """
    A Deferred firing with the first item of ``seen`` (or, later, the first item `offer` gets) matching
    ``predicate``; it fails with a timeout after ``timeout`` seconds on ``reactor``.
    """
    for item in seen:
        if predicate(item):
            return succeed(item)
    d: Deferred = Deferred()
    waiters.append((predicate, d))
    return d.addTimeout(timeout, reactor)


def offer(item: dict, waiters: Waiters) -> None:
    """Fire (and forget) every waiter whose predicate matches the new ``item``."""
    for entry in list(waiters):
        predicate, d = entry
        if not d.called and predicate(item):
            waiters.remove(entry)
            d.callback(item)


class EventsClient(WebSocketClientProtocol):
    """A client of avr's /events that records the messages and lets the test wait for one."""

    def __init__(self) -> None:
        WebSocketClientProtocol.__init__(self)
        self.messages: list[dict] = []
        self._waiters: Waiters = []
        self.opened: Deferred = Deferred()
        self.closed: Deferred = Deferred()

    def onOpen(self) -> None:
        self.opened.callback(self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        message = json.loads(payload)
        self.messages.append(message)
        offer(message, self._waiters)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        if not self.opened.called:
            self.opened.errback(RuntimeError(f"/events refused: {code} {reason}"))
        if not self.closed.called:
            self.closed.callback(code)

    def wait(self, predicate: Callable[[dict], bool]) -> Deferred:
        """The first message (already received or to come) matching ``predicate``, within `WAIT` seconds."""
        return matcher(predicate, WAIT, self.factory.reactor, self.messages, self._waiters)


async def connect_events(reactor: Any, port: int, key: str | None) -> EventsClient:
    """
    Open ``ws://127.0.0.1:<port>/events`` (with ``?api_key=`` when ``key`` is given), all autobahn timers off.

    :return: the open client. :raises RuntimeError: the upgrade was refused (the client is closed by then).
    """
    query = f"?api_key={key}" if key else ""
    factory = WebSocketClientFactory(f"ws://127.0.0.1:{port}/events{query}", reactor=reactor)
    factory.protocol = EventsClient
    factory.setProtocolOptions(openHandshakeTimeout=0, closeHandshakeTimeout=0, serverConnectionDropTimeout=0,
                               autoPingInterval=0)
    client = await TCP4ClientEndpoint(reactor, "127.0.0.1", port).connect(factory)
    try:
        await client.opened.addTimeout(WAIT, reactor)
    except BaseException:
        if not client.closed.called:
            client.dropConnection(abort=True)
        await client.closed
        raise
    return client


async def close_events(client: EventsClient) -> None:
    """Drop ``client``'s connection (if still open) and wait until it is gone."""
    if not client.closed.called:
        client.dropConnection(abort=True)
    await client.closed


def of_call(call_id: str, type_: str, **data: Any) -> Callable[[dict], bool]:
    """Matches an event of ``type_`` for ``call_id`` whose data has the given items."""
    def match(event: dict) -> bool:
        return (event.get("type") == type_ and event.get("callId") == call_id
                and all(event.get("data", {}).get(k) == v for k, v in data.items()))
    return match
