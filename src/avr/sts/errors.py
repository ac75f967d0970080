"""Why an STS session could not be opened, in words an operator can act on (the words: `avr.failures`)."""

from __future__ import annotations


class StsConnectError(Exception):
    """
    An STS session could not be opened.

    :ivar reason: a readable reason (refused, host not found, timed out, TLS verification, handshake rejected...),
        without the URL or any secret.
    """

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)
