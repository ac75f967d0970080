"""Small helpers shared by several test modules: Deferred results, PCM and WAV builders, loopback waiting."""

from __future__ import annotations

import io
import math
import struct
import wave
from typing import Any, Callable, Iterable

from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.python.failure import Failure


def fired(d: Deferred[Any], unfired: str = "Deferred has not fired") -> Any:
    """The result of a Deferred that must already have fired (failures are raised).

    :param unfired: the assertion message when it has not fired
    """
    results: list[Any] = []
    d.addBoth(results.append)
    assert results, unfired
    if isinstance(results[0], Failure):
        results[0].raiseException()
    return results[0]


def pcm16(values: Iterable[int]) -> bytes:
    """PCM16LE of sample ``values``."""
    values = list(values)
    return struct.pack(f"<{len(values)}h", *values)


def tone(rate: int, ms: int, freq: float = 440.0, amplitude: int = 8000, phase: float = 0.0) -> bytes:
    """PCM16LE sine wave of ``ms`` milliseconds at ``rate``."""
    n = rate * ms // 1000
    return pcm16(int(amplitude * math.sin(2 * math.pi * freq * i / rate + phase)) for i in range(n))


def wav_file(frames: bytes, rate: int = 8000, channels: int = 1, width: int = 2) -> bytes:
    """A WAV file written by the standard library (the reference for well-formed files)."""
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(width)
        w.setframerate(rate)
        w.writeframes(frames)
    return out.getvalue()


async def until(reactor: Any, predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    """Let the reactor run until ``predicate()`` holds (checked every 5 ms), or fail after ``timeout`` seconds."""
    waited = 0.0
    while not predicate():
        if waited >= timeout:
            raise AssertionError(f"condition not met within {timeout} s")
        await deferLater(reactor, 0.005, lambda: None)
        waited += 0.005


async def assert_no_new_timers(reactor: Any, before: set[Any], turns: int, step: float) -> None:
    """Give closing connections up to ``turns`` reactor turns (``step`` s apart); then no timer not in ``before``
    may be left."""
    for _ in range(turns):
        if set(reactor.getDelayedCalls()) <= before:
            break
        await deferLater(reactor, step, lambda: None)
    left = [c for c in reactor.getDelayedCalls() if c not in before]
    assert not left, f"timers left behind: {left}"
