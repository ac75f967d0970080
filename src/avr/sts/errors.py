"""Why an STS session could not be opened, in words an operator can act on."""

from __future__ import annotations

from twisted.internet import error
from twisted.python.failure import Failure

try:
    from OpenSSL import SSL
except ImportError:  # pragma: no cover - Twisted[tls] is a dependency
    SSL = None  # type: ignore[assignment]

try:
    from service_identity import VerificationError
except ImportError:  # pragma: no cover
    VerificationError = None  # type: ignore[assignment,misc]


class StsConnectError(Exception):
    """
    An STS session could not be opened.

    :ivar reason: a readable reason (refused, host not found, timed out, TLS verification, handshake rejected...),
        without the URL or any secret.
    """

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


def _tls_reasons(e: BaseException) -> str:
    parts = []
    for entry in e.args[0] if e.args and isinstance(e.args[0], list) else ():
        if isinstance(entry, tuple) and entry:
            parts.append(str(entry[-1]))
    return "; ".join(p for p in parts if p) or str(e) or type(e).__name__


def _leaves(reason: BaseException) -> list[BaseException]:
    # twisted.web wraps transport failures (ResponseNeverReceived, RequestTransmissionFailed...) in lists of Failures.
    nested = getattr(reason, "reasons", None)
    if isinstance(nested, list) and nested:
        found: list[BaseException] = []
        for item in nested:
            found.extend(_leaves(item.value if isinstance(item, Failure) else item))
        return found
    return [reason]


def tls_problem(reason: Failure | BaseException, host: str | None = None) -> str | None:
    """
    The TLS problem behind a failure (untrusted certificate, host name mismatch, handshake error), or ``None``.

    A TLS problem explains everything else that follows it (the aborted connection), so callers check it first.
    """
    for leaf in _leaves(reason.value if isinstance(reason, Failure) else reason):
        if VerificationError is not None and isinstance(leaf, VerificationError):
            target = f" {host}" if host else ""
            return f"TLS certificate verification failed: host name mismatch (certificate is not valid for{target})"
        if SSL is not None and isinstance(leaf, SSL.Error):
            return f"TLS handshake failed: {_tls_reasons(leaf)}"
    return None


def describe_failure(reason: Failure | BaseException, host: str | None = None) -> str:
    """
    A short readable text for a connection failure.

    :param reason: the failure (or exception) a connection attempt or a transport reported.
    :param host: the host name that was connected to, for TLS host name mismatches.
    """
    problem = tls_problem(reason, host)
    if problem:
        return problem
    leaf = _leaves(reason.value if isinstance(reason, Failure) else reason)[0]
    if isinstance(leaf, error.ConnectionRefusedError):
        return "connection refused"
    if isinstance(leaf, error.DNSLookupError):
        return f"cannot resolve host name{' ' + host if host else ''}"
    if isinstance(leaf, error.TimeoutError):
        return "TCP connection timed out"
    if isinstance(leaf, error.ConnectingCancelledError):
        return "connection attempt cancelled"
    if isinstance(leaf, (error.ConnectionDone, error.ConnectionLost)):
        return "connection closed by the peer"
    text = str(leaf).strip()
    return f"{type(leaf).__name__}: {text}" if text else type(leaf).__name__
