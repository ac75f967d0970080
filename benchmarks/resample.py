"""
Per-frame cost and quality of avr's resampler (`avr.audio.Resampler`, libsoxr) against ``audioop.ratecv``, which
avr used before: CPU per 20 ms frame, the look-ahead the filter adds, and what a tone above the target's Nyquist
frequency becomes.

    .venv/bin/python -m benchmarks.resample            # prints a Markdown table
    .venv/bin/python -m benchmarks.resample --frames 2000
"""

from __future__ import annotations

import argparse
import math
import struct
import time
from typing import Callable

from avr.audio import Resampler, audioop

PAIRS = ((16000, 8000), (8000, 16000), (8000, 24000), (24000, 8000), (48000, 8000), (8000, 44100))


def tone(rate: int, seconds: float, freq: float, amplitude: int = 16000) -> bytes:
    n = int(rate * seconds)
    return struct.pack(f"<{n}h", *(int(amplitude * math.sin(2 * math.pi * freq * i / rate)) for i in range(n)))


def frames(pcm: bytes, rate: int) -> list[bytes]:
    size = rate // 50 * 2
    return [pcm[i:i + size] for i in range(0, len(pcm) - size + 1, size)]


def per_frame_us(convert: Callable[[bytes], bytes], chunks: list[bytes], count: int) -> float:
    """Mean CPU time of one call of ``convert`` on 20 ms chunks, in microseconds."""
    start = time.process_time()
    for i in range(count):
        convert(chunks[i % len(chunks)])
    return (time.process_time() - start) / count * 1e6


def ratecv(from_rate: int, to_rate: int) -> Callable[[bytes], bytes]:
    state = None

    def convert(pcm: bytes) -> bytes:
        nonlocal state
        out, state = audioop.ratecv(pcm, 2, 1, from_rate, to_rate, state)
        return out

    return convert


def level_db(out: bytes, reference: bytes) -> float:
    steady = out[len(out) // 4 & ~1:]
    return 20 * math.log10(max(audioop.rms(steady, 2), 0.1) / audioop.rms(reference, 2))


def measure(from_rate: int, to_rate: int, count: int) -> dict[str, float]:
    chunks = frames(tone(from_rate, 1.0, 1000), from_rate)
    soxr_us = per_frame_us(Resampler(from_rate, to_rate).convert, chunks, count)
    audioop_us = per_frame_us(ratecv(from_rate, to_rate), chunks, count)
    # Look-ahead: how much less comes out than went in, once the stream is steady.
    resampler = Resampler(from_rate, to_rate)
    out = sum(len(resampler.convert(c)) for c in chunks) // 2
    lookahead_ms = (len(chunks) * to_rate / 50 - out) / to_rate * 1000
    result = {"soxr_us": soxr_us, "audioop_us": audioop_us, "lookahead_ms": lookahead_ms}
    if to_rate < from_rate:
        above = tone(from_rate, 1.0, to_rate * 0.75)  # e.g. 6 kHz on the way to 8 kHz
        resampler = Resampler(from_rate, to_rate)
        result["alias_soxr_db"] = level_db(b"".join(resampler.convert(c) for c in frames(above, from_rate)), above)
        convert = ratecv(from_rate, to_rate)
        result["alias_audioop_db"] = level_db(b"".join(convert(c) for c in frames(above, from_rate)), above)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=20000, help="20 ms frames converted per measurement")
    args = parser.parse_args()
    print("| from → to (Hz) | soxr µs/frame | audioop.ratecv µs/frame | soxr look-ahead (ms) "
          "| tone at 0.75 × target rate: soxr / audioop (dB) |")
    print("|---|---|---|---|---|")
    for from_rate, to_rate in PAIRS:
        r = measure(from_rate, to_rate, args.frames)
        alias = (f"{r['alias_soxr_db']:.0f} / {r['alias_audioop_db']:.1f}" if "alias_soxr_db" in r else "—")
        print(f"| {from_rate} → {to_rate} | {r['soxr_us']:.1f} | {r['audioop_us']:.1f} | {r['lookahead_ms']:.1f} "
              f"| {alias} |")


if __name__ == "__main__":
    main()
