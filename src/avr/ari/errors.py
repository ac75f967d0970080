"""Failures of ARI requests, carrying what Asterisk said."""

from __future__ import annotations


class AriError(Exception):
    """
    Asterisk answered an ARI request with a non-2xx status.

    :ivar status: the HTTP status Asterisk returned (404 unknown object, 409 conflict or not in Stasis,
        412 invalid channel state, 422 unprocessable, 400 bad parameters, 500 internal, ...).
    :ivar message: Asterisk's ``message`` (or ``error``) text, or the raw body when it was not JSON.
    """

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        self.message = message
        super().__init__(f"ARI {status}: {message}")


class AriUnavailable(Exception):
    """ARI could not be reached (not configured, connection refused or reset, timeout, authentication failed)."""

    def __init__(self, message: str) -> None:
        self.message = message
        super().__init__(message)
