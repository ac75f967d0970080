"""
asterisk-api's allowlist (``allowlist.json``): the caller numbers inbound calls may come from and the numbers
outbound calls may dial, with asterisk-api's matching rules, re-read when the file changes.

The file is ``{"inbound": ["6591234567", ...], "outbound": [...]}`` (other keys, such as ``$schema`` and
``description``, are ignored). Numbers are compared as digits only: every character that is not a digit is dropped
from the listed numbers and from the caller's number. An empty (or missing) list allows everything in its
direction, as in asterisk-api:

* inbound: the caller's number must be listed; a call without a caller number is refused;
* outbound: the number found in the endpoint must be listed — the longest run of 7 or more digits
  (``PJSIP/6591234567@trunk`` → ``6591234567``), else the longest run of digits (``PJSIP/1001`` → ``1001``; asterisk-api
  refuses such extensions whatever the list says, defect D16); an endpoint without digits is refused.

Unlike asterisk-api (D16), a file that cannot be used never opens the gates: a file that is not JSON, not of that
shape, holds a number without digits, or disappears after it was read is refused with an error in the log, and the
lists in force stay; one that cannot be used at start refuses every number until a good one is written. A file
missing at start means no allowlist (everything allowed), as in asterisk-api; one that appears later is read.
"""

from __future__ import annotations

import contextlib
import json
import re
from typing import Any

from attrs import define, field, frozen
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from avr.json_input import decode_json

#: Seconds between two looks at the file (asterisk-api's ``fs.watchFile`` interval).
POLL_INTERVAL = 5.0
#: Largest allowlist file read, in bytes.
MAX_FILE_BYTES = 1024 * 1024
#: ``extractedNumber`` of a refused endpoint without digits (asterisk-api's text).
NO_NUMBER = "(could not extract)"
#: asterisk-api's ``note`` on ``GET /allowlist``.
OPEN_MODE_NOTE = "Empty arrays = allow all (open mode)"

_NOT_DIGITS = re.compile(r"\D")
_DIGIT_RUNS = re.compile(r"\d+")


class AllowlistError(ValueError):
    """The allowlist file cannot be used (the message says why)."""


def digits(text: str | None) -> str:
    """``text`` with everything but its digits removed (asterisk-api's ``normalizeNumber``)."""
    return _NOT_DIGITS.sub("", text or "")


def number_in_endpoint(endpoint: str) -> str:
    """
    The number an outbound ``endpoint`` dials: the longest run of at least 7 digits (the first of equal ones),
    else the longest run of digits, else ``""``.
    """
    runs = _DIGIT_RUNS.findall(endpoint)
    if not runs:
        return ""
    longest = max(runs, key=len)  # max keeps the first of equal lengths
    long_runs = [r for r in runs if len(r) >= 7]
    return max(long_runs, key=len) if long_runs else longest


@frozen
class AllowlistRules:
    """The lists in force (digits only). Empty = every number allowed in that direction, unless ``closed``."""

    inbound: tuple[str, ...] = ()
    outbound: tuple[str, ...] = ()
    #: No usable file has been read although one exists: every number is refused.
    closed: bool = False

    def inbound_allowed(self, caller_number: str | None) -> bool:
        """A call from ``caller_number`` may come in."""
        if not self.inbound:
            return not self.closed
        number = digits(caller_number)
        return bool(number) and number in self.inbound

    def outbound_allowed(self, endpoint: str) -> bool:
        """``endpoint`` may be dialled."""
        if not self.outbound:
            return not self.closed
        number = number_in_endpoint(endpoint)
        return bool(number) and number in self.outbound

    def to_dict(self) -> dict[str, Any]:
        """``{"inbound": [...], "outbound": [...]}``."""
        return {"inbound": list(self.inbound), "outbound": list(self.outbound)}


def parse_allowlist(data: bytes) -> AllowlistRules:
    """
    The rules of an allowlist file's bytes.

    :raises AllowlistError: not UTF-8 JSON, not an object, ``inbound``/``outbound`` not lists of strings, or a listed
        number without any digit.
    """
    try:
        document = decode_json(data)
    except ValueError as e:
        raise AllowlistError(f"not JSON ({e})") from None
    if not isinstance(document, dict):
        raise AllowlistError("must be a JSON object with inbound and outbound lists")
    lists = []
    for direction in ("inbound", "outbound"):
        entries = document.get(direction, [])
        if not isinstance(entries, list):
            raise AllowlistError(f"{direction} must be a list of numbers (strings)")
        numbers = []
        for i, entry in enumerate(entries):
            if not isinstance(entry, str):
                raise AllowlistError(f"{direction}[{i}] must be a string of digits, not {json.dumps(entry)[:40]}")
            number = digits(entry)
            if not number:
                raise AllowlistError(f"{direction}[{i}] ({entry[:40]!r}) holds no digits")
            numbers.append(number)
        lists.append(tuple(dict.fromkeys(numbers)))
    inbound, outbound = lists
    return AllowlistRules(inbound, outbound)


@define(eq=False)
class Allowlist:
    """
    The allowlist in force, read from ``path`` and looked at again every ``interval`` seconds once `start` ed.

    :param path: the file (``ALLOWLIST_FILE``).
    :param clock: runs the look every ``interval`` seconds.
    :ivar rules: the lists in force.
    :ivar error: why the file was last refused (``None`` once it is read fine).
    :ivar loaded: a file was read (its lists are in force).
    """

    path: str
    clock: IReactorTime
    interval: float = POLL_INTERVAL
    rules: AllowlistRules = field(factory=AllowlistRules, init=False)
    error: str | None = field(default=None, init=False)
    loaded: bool = field(default=False, init=False)
    #: What the file held at the last look (``None``: missing), to tell a change.
    _seen: bytes | None = field(default=None, init=False, repr=False)
    _loop: LoopingCall | None = field(default=None, init=False, repr=False)
    log = Logger()

    def start(self) -> None:
        """Read the file, then look at it every ``interval`` seconds."""
        try:
            self.reload()
        except AllowlistError:
            self.rules = AllowlistRules(closed=True)  # logged; nothing passes until a good file is written
        if not self.loaded and self.error is None:
            self.log.info("No allowlist file {path}: every number may call and be called", path=self.path)
        self._loop = LoopingCall(self.poll)
        self._loop.clock = self.clock
        self._loop.start(self.interval, now=False).addErrback(
            lambda f: self.log.failure("The allowlist watch stopped", f))

    def stop(self) -> None:
        """Stop looking at the file."""
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None

    def poll(self) -> None:
        """Look at the file; read it again if it changed."""
        try:
            content = self._read()
        except AllowlistError as e:
            self._refuse(str(e), None)
            return
        if content != self._seen:
            with contextlib.suppress(AllowlistError):  # logged
                self._apply(content)

    def reload(self) -> AllowlistRules:
        """
        Read the file now (``POST /allowlist/reload``).

        :return: the lists in force. :raises AllowlistError: the file cannot be used; the previous lists stay.
        """
        return self._apply(self._read())

    def _read(self) -> bytes | None:
        try:
            with open(self.path, "rb") as f:
                data = f.read(MAX_FILE_BYTES + 1)
        except FileNotFoundError:
            return None
        except OSError as e:
            raise AllowlistError(f"cannot be read ({e.strerror})") from None
        if len(data) > MAX_FILE_BYTES:
            raise AllowlistError(f"is larger than {MAX_FILE_BYTES} bytes")
        return data

    def _apply(self, content: bytes | None) -> AllowlistRules:
        if content is None:
            if not self.loaded:
                self._seen = None
                return self.rules
            self._refuse("has disappeared", None)
            raise AllowlistError(f"{self.path} has disappeared; the previous lists are kept")
        try:
            rules = parse_allowlist(content)
        except AllowlistError as e:
            self._refuse(str(e), content)
            raise AllowlistError(f"{self.path} {e}; the previous lists are kept") from None
        changed = rules != self.rules or not self.loaded
        self.rules, self.error, self.loaded, self._seen = rules, None, True, content
        if changed:
            self.log.info("Allowlist {path}: {inbound} inbound, {outbound} outbound numbers", path=self.path,
                          inbound=len(rules.inbound), outbound=len(rules.outbound))
        return rules

    def _refuse(self, problem: str, content: bytes | None) -> None:
        if self.error != problem or content != self._seen:
            self.log.error("Allowlist {path} {problem}: the previous lists are kept ({inbound} inbound, {outbound} "
                           "outbound numbers)", path=self.path, problem=problem, inbound=len(self.rules.inbound),
                           outbound=len(self.rules.outbound))
        self.error = problem
        self._seen = content
