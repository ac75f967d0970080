"""
Text that is safe to write to a log: secrets masked, and strings from outside (URLs, message types, reasons) cut to
a bounded length, so a peer can neither read a key out of the log nor fill the disk through it.

The query of a URL is parsed here, once, for both jobs that need it: finding the API key a request presents
(`avr.http.auth`) and masking secrets when the URL is logged. So whatever authenticates is also what is masked.
"""

from __future__ import annotations

from typing import Iterator
from urllib.parse import unquote_to_bytes, urlsplit

#: Most characters of one outside string in a log line (see `clip`).
LOG_TEXT_LIMIT = 200

#: A query parameter whose (decoded, lower-cased) name contains one of these is a secret: its value is masked.
SECRET_WORDS = (b"key", b"secret", b"token", b"password", b"auth")

#: What a masked value is written as.
MASK = b"***"


def clip(text: object, limit: int = LOG_TEXT_LIMIT) -> str:
    """
    ``text`` (made a ``str``) cut to ``limit`` characters, with a note of how long it was: for any string that comes
    from outside (a URL, a message type, a close reason) and goes into a log line.
    """
    value = text if isinstance(text, str) else str(text)
    if len(value) <= limit:
        return value
    return f"{value[:limit]}... ({len(value)} characters)"


def query_parameters(query: bytes) -> Iterator[tuple[bytes, bytes, bytes]]:
    """
    The parameters of a URL query (the part after ``?``), as ``(raw, name, value)``: ``raw`` is the parameter as
    written, ``name`` and ``value`` are percent-decoded, ``+`` read as a space (as ``parse_qsl`` does).

    Parameters are separated by ``&`` only. Everything after the first ``?`` of a request target is the query,
    ``#`` included (an HTTP request target has no fragment; Twisted does not cut one off either).
    """
    for raw in query.split(b"&"):
        name, _, value = raw.partition(b"=")
        yield raw, unquote_to_bytes(name.replace(b"+", b" ")), unquote_to_bytes(value.replace(b"+", b" "))


def is_secret_name(name: bytes) -> bool:
    """Whether a decoded query parameter name looks like it carries a secret (``api_key``, ``token``, ...)."""
    lowered = name.lower()
    return any(word in lowered for word in SECRET_WORDS)


def redact_query(query: bytes) -> bytes:
    """``query`` with the value of every secret-looking parameter (see `is_secret_name`) replaced by ``***``."""
    masked = []
    for raw, name, _ in query_parameters(query):
        if is_secret_name(name) and b"=" in raw:
            raw = raw.partition(b"=")[0] + b"=" + MASK
        masked.append(raw)
    return b"&".join(masked)


def redact_target(target: bytes) -> bytes:
    """An HTTP request target (``/path?query``) with its secret-looking query values masked (see `redact_query`)."""
    path, sep, query = target.partition(b"?")
    return path + sep + redact_query(query) if sep else target


def redact_url(url: str) -> str:
    """
    ``url`` as it may be logged: any ``user:password@`` removed, the values of secret-looking query (and fragment)
    parameters masked, and the whole cut to `LOG_TEXT_LIMIT` characters (see `clip`).
    """
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable URL>"
    netloc = parts.netloc.rpartition("@")[2]
    query, fragment = (
        redact_query(part.encode("utf-8", "surrogatepass")).decode("utf-8", "surrogatepass") if part else part
        for part in (parts.query, parts.fragment)
    )
    return clip(parts._replace(netloc=netloc, query=query, fragment=fragment).geturl())


def url_repr(url: str | None) -> str:
    """The ``repr`` of an attrs field holding a URL that may carry credentials: ``field(repr=url_repr)``."""
    return repr(redact_url(url) if url else url)
