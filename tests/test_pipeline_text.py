"""Tests for avr.pipeline.text: citation markers and sentence splitting of the LLM's streamed text."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from avr.pipeline.text import MAX_MARKER_CHARS, CitationFilter, SentenceSplitter


def split_all(pieces: list[str]) -> list[str]:
    splitter = SentenceSplitter()
    out: list[str] = []
    for piece in pieces:
        out += splitter.feed(piece)
    return out + splitter.flush()


def test_sentences_come_out_as_soon_as_they_are_complete():
    """avr-core's example: "Sure. " then "When?" -> "Sure." at once, "When?" at the end of the stream."""
    splitter = SentenceSplitter()
    assert splitter.feed("Sure. ") == ["Sure."]
    assert splitter.feed("When?") == []
    assert splitter.flush() == ["When?"]


def test_decimals_abbreviations_and_line_breaks():
    """A decimal point or "Dr." does not end a sentence; a line break does; blank text gives nothing."""
    assert split_all(["It costs 3.5 euros. Dr. Smith", " will call!\nBye"]) == [
        "It costs 3.5 euros.", "Dr. Smith will call!", "Bye"]
    assert split_all(["   ", "\n\n"]) == []


def test_cjk_and_closing_quotes():
    """Full-width punctuation ends a sentence without a space; a closing quote stays with its sentence."""
    assert split_all(["你好。今天", "好吗？"]) == ["你好。", "今天好吗？"]
    assert split_all(['He said "yes." Then ', "left."]) == ['He said "yes."', "Then left."]


@given(st.lists(st.integers(min_value=1, max_value=8), min_size=1, max_size=40))
def test_citation_markers_are_removed_however_the_text_is_split(cuts):
    """【…】 markers vanish even when a chunk boundary falls inside them, and the sentences are the same."""
    text = "The hotel is open【4:0†source】 all year. Rooms start at 90 euros【4:1†rates.pdf】. Book now!"
    pieces, i = [], 0
    for cut in cuts:
        pieces.append(text[i:i + cut])
        i += cut
    pieces.append(text[i:])
    assert split_all(pieces) == ["The hotel is open all year.", "Rooms start at 90 euros.", "Book now!"]


def test_an_unclosed_marker_is_spoken_after_all():
    """A 【 that never closes (or runs too long) is not a marker: its text is kept."""
    f = CitationFilter()
    assert f.feed("A 【note") == "A "
    assert f.flush() == "【note"
    long = "【" + "x" * (MAX_MARKER_CHARS + 1)
    assert CitationFilter().feed(long) == long
