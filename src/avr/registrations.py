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
from avr.config import redact_url
from avr.interfaces import IAdmission, IAudioSocketLeg, ICallSink

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
            self.log.info("Call {uuid} registration expired: {reason}", uuid=self.registration.uuid,
                          reason=reason.getErrorMessage())


@define(eq=False)
class Registrations:
    """
    ``POST /call`` registrations, kept in the admissions registry until their AudioSocket connection arrives, each
    expiring ``ttl_seconds`` after it was (last) registered.

    :param admissions: where the registrations wait.
    :param ttl_seconds: how long a registration waits for its AudioSocket connection.
    :param start: starts the agent call of a registered connection (`avr.calls.CallManager.start_call`).
    """

    log = Logger()

    admissions: Admissions
    ttl_seconds: float
    start: StartCall

    def register(self, uuid: str, payload: Mapping[str, Any], sts_url: str | None, override: bool) -> Registration:
        """
        Store (or replace) the registration of ``uuid`` and (re)arm its expiry timer.

        :raises ValueError: if ``uuid`` is not a UUID (see `canonical_uuid`).
        """
        key = canonical_uuid(uuid)
        if isinstance(self.admissions.get(key), RegisteredCall):
            self.log.info("Call {uuid} registered again: replacing its previous registration", uuid=key)
        registration = Registration(key, payload, sts_url, override, self.admissions.clock.seconds())
        self.admissions.expect(key, RegisteredCall(registration, self.start), self.ttl_seconds)
        self.log.debug(
            "Call {uuid} registered (STS URL {url}, override {override}); waiting {ttl}s for its AudioSocket",
            uuid=key, url=redact_url(sts_url) if sts_url else "<echo agent>", override=override, ttl=self.ttl_seconds,
        )
        return registration

    def get(self, uuid: str) -> Registration | None:
        """The registration of ``uuid`` (any case) still waiting for its connection, or ``None``."""
        admission = self.admissions.get(uuid)
        return admission.registration if isinstance(admission, RegisteredCall) else None

    def __contains__(self, uuid: object) -> bool:
        return isinstance(uuid, str) and self.get(uuid) is not None

    def __len__(self) -> int:
        return self.admissions.count(RegisteredCall.kind)
