"""
Ambient background noise (avr-core's ``AMBIENT_NOISE_FILE`` / ``AMBIENT_NOISE_LEVEL``): a raw PCM16LE 8 kHz mono
file, looped under every call's outbound audio at a fixed level, also while the agent is silent, so that the caller
hears a room rather than dead air. Works with any agent (STS or pipeline), at the call's own rate.
"""

from __future__ import annotations

import os

from attrs import define, field

from avr.audio import audioop, resample
from avr.config import ConfigError

#: The rate of ambient files (avr-core's format: ``sox in.wav -r 8000 -c 1 -b 16 -e signed out.raw``).
AMBIENT_RATE = 8000


def check_ambient_file(path: str) -> str | None:
    """Why ``path`` cannot be an ambient file (missing, unreadable, empty, odd length), or ``None``."""
    try:
        size = os.stat(path).st_size
    except OSError as e:
        return f"cannot read {path!r} ({e.strerror})"
    if not os.access(path, os.R_OK):
        return f"cannot read {path!r}"
    if size == 0:
        return f"{path!r} is empty"
    if size % 2:
        return f"{path!r} has an odd length ({size} bytes): not 16-bit PCM"
    return None


@define(eq=False)
class AmbientNoise:
    """
    The loaded ambient file, scaled by its level, and its versions at other call rates (made once per rate).

    :param pcm: PCM16LE mono at `AMBIENT_RATE`, not empty, even length.
    :param level: 0.0 (mute) to 1.0 (as recorded).
    """

    pcm: bytes = field(repr=False)
    level: float
    _by_rate: dict[int, bytes] = field(factory=dict, repr=False)

    @classmethod
    def load(cls, path: str, level: float) -> AmbientNoise:
        """Read ``path``. :raises ConfigError: it cannot be used."""
        problem = check_ambient_file(path)
        if problem is None:
            try:
                with open(path, "rb") as f:
                    pcm = f.read()
            except OSError as e:
                problem = f"cannot read {path!r} ({e.strerror})"
        if problem is not None:
            raise ConfigError([f"AMBIENT_NOISE_FILE: {problem}"])
        return cls(pcm, level)

    def at_rate(self, rate: int) -> bytes:
        """The scaled loop at ``rate`` Hz."""
        pcm = self._by_rate.get(rate)
        if pcm is None:
            pcm = audioop.mul(resample(self.pcm, AMBIENT_RATE, rate), 2, self.level)
            self._by_rate[rate] = pcm
        return pcm

    def mixer(self, rate: int, frame_bytes: int) -> AmbientMixer:
        """A mixer for one call's outbound frames."""
        return AmbientMixer(self.at_rate(rate), frame_bytes)


@define(eq=False)
class AmbientMixer:
    """
    One call's position in the loop, sans-IO: `mix` adds the next ``frame_bytes`` of ambient to a frame (or returns
    them alone when there is no frame), saturating at the int16 limits.
    """

    loop: bytes = field(repr=False)
    frame_bytes: int
    _position: int = 0

    def _next(self) -> bytes:
        size, loop = self.frame_bytes, self.loop
        start = self._position
        end = start + size
        if end <= len(loop):
            piece = loop[start:end]
        else:
            parts = [loop[start:]]
            remaining = size - len(parts[0])
            while remaining > 0:
                parts.append(loop[:remaining])
                remaining -= len(parts[-1])
            piece = b"".join(parts)
        self._position = end % len(loop)
        return piece

    def mix(self, frame: bytes | None) -> bytes:
        """``frame`` (one outbound frame of ``frame_bytes``, or ``None`` for silence) with the ambient under it."""
        ambient = self._next()
        if frame is None:
            return ambient
        return audioop.add(frame, ambient, 2)
