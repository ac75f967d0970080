"""Tests for avr.pipeline.llmstream: both LLM stream formats, parsed incrementally and robustly."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from avr.pipeline.llmstream import (
    MAX_OBJECT_CHARS,
    LlmError,
    LlmStatus,
    LlmStreamParser,
    LlmText,
)


def parse(data: bytes, cuts: list[int] | None = None) -> list:
    parser = LlmStreamParser()
    events: list = []
    i = 0
    for cut in cuts or []:
        events += parser.feed(data[i:i + cut])
        i += cut
    events += parser.feed(data[i:])
    return events + parser.end()


OBJECTS = [{"type": "status", "content": "One moment please"}, {"type": "text", "content": "Sure. "},
           {"type": "text", "content": 'When? {"not": [an object]} \\ é'}, {"type": "status", "content": "completed"}]
STREAM = "".join(json.dumps(o, ensure_ascii=False) for o in OBJECTS).encode("utf-8")
EXPECTED = [LlmStatus("One moment please"), LlmText("Sure. "), LlmText('When? {"not": [an object]} \\ é'),
            LlmStatus("completed")]


def test_concatenated_objects_several_in_one_chunk():
    """Objects with no separator, all in one chunk: each becomes an event, in order."""
    assert parse(STREAM) == EXPECTED


@given(st.lists(st.integers(min_value=1, max_value=12), max_size=60))
def test_objects_split_anywhere(cuts):
    """However the bytes are cut (inside strings, escapes, multi-byte characters), the same events come out."""
    assert parse(STREAM, cuts) == EXPECTED


def test_raw_text_streams_as_it_comes():
    """A stream that does not start with "{" is raw text, passed on piece by piece."""
    parser = LlmStreamParser()
    assert parser.feed(b"  Hello there. ") == [LlmText("  Hello there. ")]
    assert parser.feed(b"How are you?") == [LlmText("How are you?")]
    assert parser.end() == []


def test_errors_and_malformed_input_become_events_not_exceptions():
    """An error object, an unknown type, broken JSON, garbage between objects, a truncated object."""
    events = parse(b'{"type":"error","content":"quota exceeded"}{"type":"tool","content":1}{"type":"text",bad}'
                   b' junk {"type":"text","content":"ok"}{"type":"text"')
    assert events[0] == LlmError("quota exceeded")
    assert isinstance(events[1], LlmError) and "unknown" in events[1].message
    assert isinstance(events[2], LlmError) and "not valid JSON" in events[2].message
    assert isinstance(events[3], LlmError) and "between" in events[3].message
    assert events[4] == LlmText("ok")
    assert isinstance(events[5], LlmError) and "ended inside" in events[5].message
    assert len(events) == 6


def test_an_oversized_object_is_refused_and_the_stream_goes_on():
    """An object larger than the bound is an error; the parser keeps no more than the bound and recovers."""
    parser = LlmStreamParser()
    events = parser.feed(b'{"type":"text","content":"' + b"a" * (MAX_OBJECT_CHARS + 10))
    assert len(events) == 1 and "exceeds" in events[0].message
    # The rest of the giant object is not mistaken for text (at most one "ignored" notice).
    assert not [e for e in parser.feed(b'"}') if not isinstance(e, LlmError)]
    assert parser.feed(b'{"type":"text","content":"next"}') == [LlmText("next")]


def test_deep_nesting_is_an_error_event():
    """Nesting beyond the JSON depth bound is the ordinary 'not valid JSON' path."""
    events = parse(b'{"type":"text","content":"x","deep":' + b"[" * 200 + b"]" * 200 + b"}")
    assert len(events) == 1 and isinstance(events[0], LlmError)
