"""
Calls announced by ``POST /call`` and waiting for their AudioSocket connection.

A registration carries the call's metadata and the STS URL decided for it; the AudioSocket side takes it (once) when the
connection with the same UUID arrives. A registration that is never taken expires after a time-to-live, so a dialplan
that posts ``/call`` and never dials leaks nothing.
"""

from __future__ import annotations

import re
from typing import Any, Mapping

from attrs import define, field, frozen
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from avr.config import redact_url

_CANONICAL_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\Z")


def canonical_uuid(text: str) -> str:
    """
    The lower-case canonical form of a UUID written as 8-4-4-4-12 hexadecimal digits, in any case.

    Other spellings Python's `uuid.UUID` would accept (braces, ``urn:uuid:``, no hyphens) are refused: the UUID must
    match, character for character, the one Asterisk sends in the AudioSocket 0x01 frame.

    :raises ValueError: if ``text`` is not such a UUID.
    """
    lowered = text.lower() if isinstance(text, str) else ""
    if not _CANONICAL_UUID.match(lowered):
        raise ValueError("must be a UUID like 935652e3-7c59-4edc-b17f-9646a9c2a265")
    return lowered


@frozen
class Registration:
    """
    What ``POST /call`` decided for one call.

    :ivar uuid: lower-case canonical UUID.
    :ivar payload: the call metadata, as posted.
    :ivar sts_url: the STS URL for the call (``None`` = the built-in echo agent).
    :ivar override: whether ``sts_url`` came from the ``call_initiated`` webhook's reply.
    :ivar registered_at: ``clock.seconds()`` when registered.
    """

    uuid: str
    payload: Mapping[str, Any]
    sts_url: str | None
    override: bool
    registered_at: float


@define(eq=False)
class Registrations:
    """
    Registrations by UUID, each expiring ``ttl_seconds`` after it was (last) registered unless taken before.

    :param clock: where expiry timers are scheduled.
    :param ttl_seconds: how long a registration waits for its AudioSocket connection.
    """

    log = Logger()

    clock: IReactorTime
    ttl_seconds: float
    _entries: dict[str, tuple[Registration, IDelayedCall]] = field(factory=dict, init=False)

    def register(self, uuid: str, payload: Mapping[str, Any], sts_url: str | None, override: bool) -> Registration:
        """
        Store (or replace) the registration of ``uuid`` and (re)arm its expiry timer.

        :raises ValueError: if ``uuid`` is not a UUID (see `canonical_uuid`).
        """
        key = canonical_uuid(uuid)
        previous = self._entries.pop(key, None)
        if previous is not None:
            previous[1].cancel()
            self.log.info("Call {uuid} registered again: replacing its previous registration", uuid=key)
        registration = Registration(key, payload, sts_url, override, self.clock.seconds())
        timer = self.clock.callLater(self.ttl_seconds, self._expire, key, registration)
        self._entries[key] = (registration, timer)
        self.log.debug(
            "Call {uuid} registered (STS URL {url}, override {override}); waiting {ttl}s for its AudioSocket",
            uuid=key, url=redact_url(sts_url) if sts_url else "<echo agent>", override=override, ttl=self.ttl_seconds,
        )
        return registration

    def take(self, uuid: str) -> Registration | None:
        """Remove and return the registration of ``uuid`` (any case), or ``None`` if there is none (or it expired)."""
        entry = self._entries.pop(uuid.lower(), None)
        if entry is None:
            return None
        registration, timer = entry
        timer.cancel()
        return registration

    def __contains__(self, uuid: object) -> bool:
        return isinstance(uuid, str) and uuid.lower() in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        """Forget every registration and cancel their timers (at shutdown)."""
        entries, self._entries = self._entries, {}
        for _, timer in entries.values():
            timer.cancel()

    def _expire(self, key: str, registration: Registration) -> None:
        entry = self._entries.get(key)
        if entry is not None and entry[0] is registration:
            del self._entries[key]
            self.log.info(
                "Call {uuid} registration expired: no AudioSocket connection within {ttl}s",
                uuid=key, ttl=self.ttl_seconds,
            )
