"""
Why a connection or an HTTP request failed, in one short line an operator can act on (no traceback, no secret).

One describer for every outbound connection avr makes: STS sessions, ARI requests and its events stream, and the
webhooks. twisted.web's wrappers (`ResponseNeverReceived`, `RequestTransmissionFailed`, `ResponseFailed`) say *when*
the connection failed; the transport failure inside them says *why*.
"""

from __future__ import annotations

from twisted.internet import error
from twisted.internet.defer import CancelledError
from twisted.python.failure import Failure
from twisted.web.client import (
    RequestNotSent,
    RequestTransmissionFailed,
    ResponseFailed,
    ResponseNeverReceived,
)
from twisted.web.http import PotentialDataLoss

try:
    from OpenSSL import SSL
except ImportError:  # pragma: no cover - Twisted[tls] is a dependency
    SSL = None  # type: ignore[assignment]

try:
    from service_identity import VerificationError
except ImportError:  # pragma: no cover
    VerificationError = None  # type: ignore[assignment,misc]


def _tls_reasons(e: BaseException) -> str:
    parts = []
    for entry in e.args[0] if e.args and isinstance(e.args[0], list) else ():
        if isinstance(entry, tuple) and entry:
            parts.append(str(entry[-1]))
    return "; ".join(p for p in parts if p) or str(e) or type(e).__name__


def _exception(reason: Failure | BaseException) -> BaseException:
    if isinstance(reason, Failure):
        assert reason.value is not None
        return reason.value
    return reason


def leaves(reason: Failure | BaseException) -> list[BaseException]:
    """The transport failures inside ``reason`` (twisted.web wraps them in lists of Failures), or ``reason`` itself."""
    exception = _exception(reason)
    nested = getattr(exception, "reasons", None)
    if isinstance(nested, list) and nested:
        found: list[BaseException] = []
        for item in nested:
            found.extend(leaves(item))
        return found
    return [exception]


def tls_problem(reason: Failure | BaseException, host: str | None = None) -> str | None:
    """
    The TLS problem behind a failure (untrusted certificate, host name mismatch, handshake error), or ``None``.

    A TLS problem explains everything else that follows it (the aborted connection), so callers check it first.
    """
    for leaf in leaves(reason):
        if VerificationError is not None and isinstance(leaf, VerificationError):
            target = f" {host}" if host else ""
            return f"TLS certificate verification failed: host name mismatch (certificate is not valid for{target})"
        if SSL is not None and isinstance(leaf, SSL.Error):
            return f"TLS handshake failed: {_tls_reasons(leaf)}"
    return None


def _describe_leaf(leaf: BaseException, host: str | None) -> str:
    if isinstance(leaf, error.ConnectionRefusedError):
        return "connection refused"
    if isinstance(leaf, error.DNSLookupError):
        return f"cannot resolve host name{' ' + host if host else ''}"
    if isinstance(leaf, error.TimeoutError):
        return "TCP connection timed out"
    if isinstance(leaf, error.ConnectingCancelledError):
        return "connection attempt cancelled"
    if isinstance(leaf, CancelledError):
        return "attempt cancelled"
    if isinstance(leaf, (error.ConnectionDone, error.ConnectionLost, PotentialDataLoss)):
        return "connection closed by the peer"
    text = str(leaf).strip()
    return f"{type(leaf).__name__}: {text}" if text else type(leaf).__name__


def describe_failure(reason: Failure | BaseException, host: str | None = None) -> str:
    """
    A short readable text for a connection or request failure.

    :param reason: the failure (or exception) a connection attempt, a transport or an HTTP request reported.
    :param host: the host name that was connected to, for TLS host name mismatches and DNS failures.
    """
    problem = tls_problem(reason, host)
    if problem:
        return problem
    exception = _exception(reason)
    inner = "; ".join(dict.fromkeys(_describe_leaf(leaf, host) for leaf in leaves(exception)))
    if isinstance(exception, RequestNotSent):
        return "request not sent: the connection was already closed"
    if isinstance(exception, ResponseNeverReceived):
        return f"no response ({inner})"
    if isinstance(exception, RequestTransmissionFailed):
        return f"sending the request failed ({inner})"
    if isinstance(exception, ResponseFailed):
        return f"response cut short ({inner})"
    return inner


def closed_before_response(reason: Failure | BaseException) -> bool:
    """
    Whether an HTTP request failed because its connection closed before any byte of a response arrived (the request
    was refused by a closed connection, or could not be written, or got no answer) -- and not because it was cancelled.

    This is what a kept-alive connection that the server closed meanwhile does to the next request sent on it.
    """
    exception = _exception(reason)
    if not isinstance(exception, (RequestNotSent, RequestTransmissionFailed, ResponseNeverReceived)):
        return False
    return not any(isinstance(leaf, CancelledError) for leaf in leaves(exception))
