"""
Decoding JSON that comes from outside avr: STS messages, HTTP request bodies, ARI events and answers, webhook
replies. Every such decode goes through `decode_json`, which bounds the nesting depth: Python's parser recurses once
per level, so ``[[[[...]]]]`` a thousand levels deep (2 KB) would otherwise raise `RecursionError` (here or in
whatever walks the value next) instead of a clear error.
"""

from __future__ import annotations

import json
from typing import Any

#: Deepest nesting of arrays and objects accepted (``[]`` is depth 1). Real messages use less than 10.
MAX_DEPTH = 64


class JsonInputError(ValueError):
    """Input that is not acceptable JSON; the message says why, without repeating the input."""


def decode_json(data: bytes | str, *, max_depth: int = MAX_DEPTH, allow_nan: bool = True) -> Any:
    """
    The value of the JSON text ``data``.

    :param data: JSON text; bytes must be UTF-8 (decoded strictly: ``json.loads`` would also accept UTF-16/32 and lone
        surrogates).
    :param max_depth: deepest nesting of arrays and objects accepted.
    :param allow_nan: whether the non-standard ``NaN``, ``Infinity`` and ``-Infinity`` are accepted.
    :raises JsonInputError: not UTF-8, not JSON, or nested deeper than ``max_depth``.
    """
    if isinstance(data, (bytes, bytearray, memoryview)):
        try:
            text = bytes(data).decode("utf-8")
        except UnicodeDecodeError as e:
            raise JsonInputError(f"not UTF-8 (byte {e.start})") from None
    else:
        text = data
    # Fewer brackets than the limit cannot nest deeper than it: most messages skip the depth check entirely.
    may_be_deep = text.count("[") + text.count("{") > max_depth
    try:
        value = json.loads(text, parse_constant=None if allow_nan else _refuse_constant)
    except RecursionError:
        raise JsonInputError(f"nested deeper than {max_depth} levels") from None
    except ValueError as e:
        raise JsonInputError(str(e)) from None
    if may_be_deep and _deeper_than(value, max_depth):
        raise JsonInputError(f"nested deeper than {max_depth} levels")
    return value


def _deeper_than(value: Any, max_depth: int) -> bool:
    # Iterative, so that checking cannot recurse either.
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is None:
            continue
        if depth > max_depth:
            return True
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return False


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed")
