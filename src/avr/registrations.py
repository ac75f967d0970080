"""
Calls announced by ``POST /call`` and waiting for their AudioSocket connection.

A registration carries the call's metadata and the STS URL decided for it. It waits in the admissions registry
(`avr.admissions`); the AudioSocket side takes it (once) when the connection with the same UUID arrives. A
registration that is never taken expires after a time-to-live, so a dialplan that posts ``/call`` and never dials
leaks nothing.
"""

from __future__ import annotations

import re
from typing import Any, Callable, Mapping

from attrs import define, field, frozen
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from avr.admissions import Admissions
from avr.interfaces import IAdmission, IAudioSocketLeg, ICallSink
from avr.logtext import url_repr

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
    sts_url: str | None = field(repr=url_repr)
    override: bool
    registered_at: float


#: Starts the agent call of a connection: ``start(leg, sts_url, payload)`` (`avr.calls.CallManager.start_call`).
StartCall = Callable[[IAudioSocketLeg, "str | None", Mapping[str, Any]], ICallSink]


@implementer(IAdmission)
@frozen
class RegisteredCall:
    """The admission of a registered call: its connection becomes an agent call with the registration's STS URL."""

    registration: Registration
    start: StartCall = field(eq=False)
    kind = "registration"
    log = Logger()

    def admit(self, leg: IAudioSocketLeg) -> ICallSink:
        """See `IAdmission.admit`."""
        return self.start(leg, self.registration.sts_url, self.registration.payload)

    def expired(self, reason: Failure) -> None:
        """See `IAdmission.expired`: an expiry is logged (a replacement was logged when it was registered)."""
        if reason.check(TimeoutError):
            self.log.info("Call {call_id} registration expired: {reason}", call_id=self.registration.uuid,
                          reason=reason.getErrorMessage())


class RegistrationsFull(Exception):
    """A new registration would exceed the limit of pending registrations (``CALL_INIT_MAX``)."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"{limit} calls are already waiting for their AudioSocket connection (CALL_INIT_MAX)")
        self.limit = limit


@define(eq=False)
class Registrations:
    """
    ``POST /call`` registrations, kept in the admissions registry until their AudioSocket connection arrives, each
    expiring ``ttl_seconds`` after it was (last) registered, at most ``max_pending`` at a time.

    :param admissions: where the registrations wait.
    :param ttl_seconds: how long a registration waits for its AudioSocket connection.
    :param start: starts the agent call of a registered connection (`avr.calls.CallManager.start_call`).
    :param max_pending: most registrations waiting at once; a new UUID beyond that is refused (`RegistrationsFull`),
        registering a waiting one again is not.
    """

    log = Logger()

    admissions: Admissions
    ttl_seconds: float
    start: StartCall
    max_pending: int = 1000
    #: Registrations refused since the last one accepted (the first of a run is a warning, the rest are counted).
    _refused: int = field(default=0, init=False)

    def check_room(self, uuid: str) -> None:
        """
        Refuse ``uuid`` now if registering it would exceed ``max_pending`` (so a caller can answer before doing any
        work for it).

        :raises RegistrationsFull: no room for a new UUID.
        """
        if uuid in self or len(self) < self.max_pending:
            return
        if not self._refused:
            self.log.warn("{count} calls are waiting for their AudioSocket connection (CALL_INIT_MAX): refusing new "
                          "registrations until some are taken or expire", count=len(self))
        self._refused += 1
        raise RegistrationsFull(self.max_pending)

    def register(self, uuid: str, payload: Mapping[str, Any], sts_url: str | None, override: bool) -> Registration:
        """
        Store (or replace) the registration of ``uuid`` and (re)arm its expiry timer.

        :raises ValueError: if ``uuid`` is not a UUID (see `canonical_uuid`).
        :raises RegistrationsFull: ``uuid`` is new and ``max_pending`` registrations are waiting.
        """
        key = canonical_uuid(uuid)
        self.check_room(key)
        if self._refused:
            self.log.info("Accepting registrations again ({count} refused while full)", count=self._refused)
            self._refused = 0
        if isinstance(self.admissions.get(key), RegisteredCall):
            self.log.info("Call {call_id} registered again: replacing its previous registration", call_id=key)
        registration = Registration(key, payload, sts_url, override, self.admissions.clock.seconds())
        self.admissions.expect(key, RegisteredCall(registration, self.start), self.ttl_seconds)
        self.log.debug("Call {call_id} registered; waiting {ttl}s for its AudioSocket", call_id=key,
                       ttl=self.ttl_seconds)
        return registration

    def get(self, uuid: str) -> Registration | None:
        """The registration of ``uuid`` (any case) still waiting for its connection, or ``None``."""
        admission = self.admissions.get(uuid)
        return admission.registration if isinstance(admission, RegisteredCall) else None

    def __contains__(self, uuid: object) -> bool:
        return isinstance(uuid, str) and self.get(uuid) is not None

    def __len__(self) -> int:
        return self.admissions.count(RegisteredCall.kind)
