"""
The LLM's text on its way to the TTS, sans-IO: citation markers removed, cut into sentences as soon as each is
complete (`SentenceSplitter`).
"""

from __future__ import annotations

import re

#: Citation markers some assistants add (``【4:0†source】``): never spoken, even when split across chunks.
_OPEN, _CLOSE = "【", "】"
#: A marker left open longer than this is not a marker: its text is spoken after all.
MAX_MARKER_CHARS = 200

#: What ends a sentence: terminal punctuation (Latin, CJK, ellipsis), closing quotes or brackets after it, then
#: whitespace; or a line break.
_END = re.compile(r"""[.!?…。！？]+["'”’)\]]*(?=\s)|[。！？]+|\n+""")
#: Words whose full stop does not end a sentence.
_ABBREVIATIONS = frozenset(
    "mr mrs ms dr prof sr jr st vs etc e.g i.e no approx dept est fig inc ltd co corp mt jan feb mar apr jun jul aug "
    "sep sept oct nov dec".split()
)


class CitationFilter:
    """Removes ``【…】`` markers from a text stream, holding back an unclosed marker until its end arrives."""

    def __init__(self) -> None:
        self._held = ""

    def feed(self, text: str) -> str:
        """The next piece of text, without markers (possibly empty while a marker is open)."""
        text = self._held + text
        self._held = ""
        out = []
        while text:
            start = text.find(_OPEN)
            if start < 0:
                out.append(text)
                break
            out.append(text[:start])
            end = text.find(_CLOSE, start)
            if end < 0:
                if len(text) - start > MAX_MARKER_CHARS:
                    out.append(text[start:])  # not a marker after all
                else:
                    self._held = text[start:]
                break
            text = text[end + 1:]
        return "".join(out)

    def flush(self) -> str:
        """The end of the text: an unclosed marker is spoken as it is."""
        held, self._held = self._held, ""
        return held


class SentenceSplitter:
    """
    Cuts a text stream into sentences: `feed` returns each sentence as soon as its end (punctuation followed by
    whitespace, or a line break) has arrived; `flush` returns the rest at the end of the stream. Citation markers
    are removed first, whitespace is trimmed, empty sentences are dropped. Decimal points (``3.5``) and common
    abbreviations (``Dr.``, ``e.g.``) do not end a sentence.
    """

    def __init__(self) -> None:
        self._citations = CitationFilter()
        self._buffer = ""

    def feed(self, text: str) -> list[str]:
        """The sentences completed by ``text``."""
        self._buffer += self._citations.feed(text)
        sentences = []
        start = 0
        for match in _END.finditer(self._buffer):
            end = match.end()
            candidate = self._buffer[start:end]
            if match.group().startswith(".") and _ends_with_abbreviation(candidate):
                continue
            sentence = candidate.strip()
            if sentence:
                sentences.append(sentence)
            start = end
        self._buffer = self._buffer[start:]
        return sentences

    def flush(self) -> list[str]:
        """The last sentence (end of the stream), if any."""
        rest = (self._buffer + self._citations.flush()).strip()
        self._buffer = ""
        return [rest] if rest else []


def _ends_with_abbreviation(text: str) -> bool:
    words = text.rstrip(".").split()
    return bool(words) and words[-1].lower().strip("(\"'") in _ABBREVIATIONS
