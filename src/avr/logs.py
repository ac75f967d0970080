"""
avr's log output: which events are shown (``LOG_LEVEL``) and how each is written (``LOG_FORMAT``): a readable text
line with a millisecond timestamp, or one JSON object per line.

Every line about a call carries the call's UUID in the field `CALL_ID` (``call_id``): in JSON as that key, in text
inside the message or, when the message does not name it, appended as ``[call <uuid>]``. The UUID is written whole,
as Asterisk's dialplan, the webhooks and ``/events`` have it, so that one ``grep`` finds a call everywhere.

Twisted's "Starting factory" / "Stopping factory" lines (a pair per outgoing HTTP connection: every webhook) count
as debug lines, below the default level.
"""

from __future__ import annotations

import json
import math
import time
from typing import IO, Any

from attrs import frozen
from twisted.logger import (
    FileLogObserver,
    FilteringLogObserver,
    ILogFilterPredicate,
    ILogObserver,
    LogEvent,
    LogLevel,
    PredicateResult,
    formatEvent,
)
from zope.interface import implementer

from avr.timestamps import iso_millis

#: ``LOG_LEVEL``'s values, lowest first.
LOG_LEVELS = ("debug", "info", "warn", "error")
#: ``LOG_FORMAT``'s values.
LOG_FORMATS = ("text", "json")

#: The log field holding the UUID of the call a line is about.
CALL_ID = "call_id"

#: Twisted's levels, lowest first (``critical`` is what ``log.failure`` logs at).
_ORDER = (LogLevel.debug, LogLevel.info, LogLevel.warn, LogLevel.error, LogLevel.critical)

#: Formats of lines logged at info that are only chatter: shown at debug level.
CHATTER = frozenset({"Starting factory {factory!r}", "Stopping factory {factory!r}"})

#: Keys of Twisted's legacy (``twisted.python.log``) events that are not fields of the line.
_LEGACY_KEYS = frozenset({"message", "isError", "system", "time", "format", "failure", "why", "printed"})


def level_of(event: LogEvent) -> LogLevel:
    """The level ``event`` is shown at: its own, but debug for `CHATTER`."""
    if event.get("log_format") in CHATTER:
        return LogLevel.debug
    level = event.get("log_level")
    return level if level in _ORDER else LogLevel.info


@implementer(ILogFilterPredicate)
@frozen
class LevelFilter:
    """Lets through the events at ``level`` or above (by `level_of`)."""

    level: LogLevel

    @classmethod
    def named(cls, name: str) -> LevelFilter:
        """The filter for a ``LOG_LEVEL`` value (one of `LOG_LEVELS`)."""
        return cls(LogLevel.levelWithName(name))

    def __call__(self, event: LogEvent) -> PredicateResult:
        if _ORDER.index(level_of(event)) >= _ORDER.index(self.level):
            return PredicateResult.maybe
        return PredicateResult.no


def _namespace(event: LogEvent) -> str:
    """Who logged ``event``: its namespace, or for a legacy ``log.msg`` line its system (``twisted`` if none)."""
    namespace = str(event.get("log_namespace") or "-")
    if namespace == "log_legacy":
        system = event.get("log_system")
        return str(system) if system and system != "-" else "twisted"
    return namespace


def _traceback(event: LogEvent) -> str | None:
    failure = event.get("log_failure")
    if failure is None:
        return None
    try:
        return str(failure.getTraceback()).rstrip("\n")
    except Exception:  # a failure that cannot describe itself must not lose the line
        return "(traceback unavailable)"


def local_millis(seconds: float) -> str:
    """``seconds`` since the epoch in local time with milliseconds and UTC offset: ``2026-01-01T12:00:00.000+0100``."""
    whole, millis = divmod(round(seconds * 1000), 1000)
    moment = time.localtime(whole)
    return time.strftime("%Y-%m-%dT%H:%M:%S", moment) + f".{millis:03d}" + time.strftime("%z", moment)


def text_line(event: LogEvent) -> str:
    """
    ``event`` as one readable line (plus its traceback, if it has one):
    ``2026-01-01T12:00:00.000+0000 INFO  [avr.calls.Call] Call started: <uuid> (STS: ...)``.
    """
    message = formatEvent(event)
    call_id = event.get(CALL_ID)
    if call_id is not None and str(call_id) not in message:
        message += f" [call {call_id}]"
    line = (f"{local_millis(event.get('log_time') or time.time())} {level_of(event).name.upper():<5} "
            f"[{_namespace(event)}] {message}")
    traceback = _traceback(event)
    if traceback is not None:
        line += "\n" + traceback
    return line + "\n"


def _scalar(value: Any) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    return value is None or isinstance(value, (str, int, bool))


def json_line(event: LogEvent) -> str:
    """
    ``event`` as one JSON object on one line: ``time`` (UTC, milliseconds), ``level``, ``namespace``, ``message``,
    then the event's own fields that are plain values (strings, numbers, booleans, null: ``call_id``, ``port``...),
    and ``traceback`` for a failure. Fields holding objects are left out (their text is in the message).
    """
    record: dict[str, Any] = {
        "time": iso_millis(event.get("log_time") or time.time()),
        "level": level_of(event).name,
        "namespace": _namespace(event),
        "message": formatEvent(event),
    }
    for key, value in event.items():
        if key in record or key.startswith("log_") or key in _LEGACY_KEYS or not _scalar(value):
            continue
        record[key] = value
    traceback = _traceback(event)
    if traceback is not None:
        record["traceback"] = traceback
    return json.dumps(record, ensure_ascii=False, allow_nan=False) + "\n"


FORMATTERS = {"text": text_line, "json": json_line}


def log_observer(stream: IO[str], level: str = "info", format: str = "text") -> ILogObserver:
    """Writes the events at ``level`` or above (`LOG_LEVELS`) to ``stream`` in ``format`` (`LOG_FORMATS`)."""
    return FilteringLogObserver(FileLogObserver(stream, FORMATTERS[format]), [LevelFilter.named(level)])
