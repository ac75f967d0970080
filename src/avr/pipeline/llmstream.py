"""
The LLM adapters' response streams, sans-IO (`LlmStreamParser`). Two formats are in the wild:

- concatenated JSON objects with no separator, ``{"type":"text","content":"Hel"}{"type":"text","content":"lo"}``
  (avr-llm-openai, -anthropic, -openai-assistant, ...), of types ``text`` (to speak), ``status`` (the assistant
  adapter's "please wait" filler, and a final ``completed``) and ``error``; an object may be split across chunks and
  several may share one;
- raw text (avr-llm-openai before 2025, avr-llm-typebot).

The format is told from the first non-blank character: ``{`` means JSON objects. The scan is linear (a regular
expression jumps from one quote or bracket to the next; each character is looked at once), objects are bounded in
size (`MAX_OBJECT_CHARS`) and depth, and whatever cannot be parsed becomes an `LlmError` event, never an exception.
"""

from __future__ import annotations

import codecs
import re

from attrs import frozen

from avr.json_input import JsonInputError, decode_json

#: Largest JSON object accepted from the LLM (one ``text`` delta is a few bytes; a whole answer a few KB).
MAX_OBJECT_CHARS = 256 * 1024

#: What matters to the scan outside strings, and inside them (an escape pair, or the closing quote).
_STRUCTURE = re.compile(r'["{}\[\]]')
_IN_STRING = re.compile(r'\\.|"', re.DOTALL)


@frozen
class LlmText:
    """Text to speak (and to put into the conversation)."""

    content: str


@frozen
class LlmStatus:
    """A ``status`` message: a filler to speak (``OPENAI_WAITING_MESSAGE``), or the word ``completed``."""

    content: str


@frozen
class LlmError:
    """The adapter reported an error, or what it sent cannot be parsed."""

    message: str


LlmEvent = LlmText | LlmStatus | LlmError


class LlmStreamParser:
    """Incremental parser of one LLM response body: `feed` bytes as they arrive, get `LlmEvent`\\ s back."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._json: bool | None = None
        self._object: list[str] = []
        self._size = 0
        self._depth = 0
        self._in_string = False
        self._escape = False
        self._garbage = False

    def feed(self, data: bytes) -> list[LlmEvent]:
        """Parse the next piece of the body."""
        return self._text(self._decoder.decode(data))

    def end(self) -> list[LlmEvent]:
        """The body is complete: an unfinished object is an error."""
        events = self._text(self._decoder.decode(b"", final=True))
        if self._json and self._depth:
            events.append(LlmError("the LLM stream ended inside a JSON object"))
            self._reset_object()
        return events

    def _text(self, text: str) -> list[LlmEvent]:
        if not text:
            return []
        if self._json is None:
            stripped = text.lstrip()
            if not stripped:
                return []  # leading blanks: the format is still unknown
            self._json = stripped[0] == "{"
            text = stripped if self._json else text
        if not self._json:
            return [LlmText(text)]
        return self._scan(text)

    def _scan(self, text: str) -> list[LlmEvent]:
        events: list[LlmEvent] = []
        i, n = 0, len(text)
        start = 0  # where the current object's text begins in ``text``
        while i < n:
            if not self._depth:
                # Between objects: skip blanks, report anything else once, go to the next object.
                brace = text.find("{", i)
                if text[i:n if brace < 0 else brace].strip() and not self._garbage:
                    self._garbage = True
                    events.append(LlmError("text between the LLM's JSON objects was ignored"))
                if brace < 0:
                    return events
                i = start = brace
            if self._escape:  # the escaped character after a backslash that ended the previous piece
                self._escape = False
                i += 1
                continue
            token = (_IN_STRING if self._in_string else _STRUCTURE).search(text, i)
            if token is None:
                # No quote or bracket left; inside a string, a backslash can only be the last character.
                self._escape = self._in_string and text.endswith("\\")
                break
            mark = token.group()
            i = token.end()
            if self._in_string:
                if mark == '"':
                    self._in_string = False
            elif mark == '"':
                self._in_string = True
            elif mark in "{[":
                self._depth += 1
            else:
                self._depth -= 1
                if not self._depth:
                    self._object.append(text[start:i])
                    events.append(self._decode("".join(self._object)))
                    self._reset_object()
        if self._depth:
            self._object.append(text[start:])
            self._size += n - start
            if self._size > MAX_OBJECT_CHARS:
                events.append(LlmError(f"a JSON object from the LLM exceeds {MAX_OBJECT_CHARS} characters"))
                self._reset_object()
        return events

    def _reset_object(self) -> None:
        self._object = []
        self._size = 0
        self._depth = 0
        self._in_string = False
        self._escape = False

    @staticmethod
    def _decode(raw: str) -> LlmEvent:
        try:
            value = decode_json(raw)
        except JsonInputError:
            value = None
        if not isinstance(value, dict):
            return LlmError("the LLM sent an object that is not valid JSON")
        kind = value.get("type")
        content = value.get("content")
        if not isinstance(content, str):
            content = "" if content is None else str(content)
        if kind == "text":
            return LlmText(content)
        if kind == "status":
            return LlmStatus(content)
        if kind == "error":
            return LlmError(content or "the LLM reported an error")
        return LlmError(f"unknown LLM message type {str(kind)[:40]!r}")
