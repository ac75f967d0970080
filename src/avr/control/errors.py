"""Failures of call-control operations, each with the HTTP status the REST API answers."""

from __future__ import annotations


class ControlError(Exception):
    """
    A call-control operation failed for a reason the caller can act on.

    :ivar status: HTTP status for the REST API.
    :ivar message: readable text (no secrets).
    """

    status = 400

    def __init__(self, message: str, **extra: object) -> None:
        self.message = message
        self.extra = extra
        super().__init__(message)


class NotFound(ControlError):
    """Unknown call, bridge, recording or endpoint."""

    status = 404


class Forbidden(ControlError):
    """The allowlist does not allow it (asterisk-api's 403)."""

    status = 403


class Conflict(ControlError):
    """The object exists but its state forbids the operation (ended call, name in use, ...)."""

    status = 409


class Invalid(ControlError):
    """The request is well-formed but cannot be carried out as asked."""

    status = 422


class Unavailable(ControlError):
    """ARI is not configured (503) or not reachable right now (503)."""

    status = 503


class Timeout(ControlError):
    """Asterisk did not do what was asked in time (e.g. a transfer target that never answered)."""

    status = 504


class NotAnswered(Timeout):
    """A transfer target did not answer in time: asterisk-api's 408."""

    status = 408
