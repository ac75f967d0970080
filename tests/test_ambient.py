"""Tests for avr.ambient: the looped background noise under every call's outbound audio (scenario 15)."""

from __future__ import annotations

import struct

import pytest
from test_calls import U1, World

from avr.ambient import AmbientMixer, AmbientNoise
from avr.audio import audioop
from avr.config import ConfigError, load_config
from tests.helpers import tone


def samples(pcm: bytes) -> list[int]:
    return list(struct.unpack(f"<{len(pcm) // 2}h", pcm))


def test_mixer_loops_the_file_frame_after_frame():
    """Frames of ambient follow the loop seamlessly, wrapping around its end (a loop shorter than a frame too)."""
    loop = struct.pack("<5h", 1, 2, 3, 4, 5)
    mixer = AmbientMixer(loop, 6)
    assert [samples(mixer.mix(None)) for _ in range(3)] == [[1, 2, 3], [4, 5, 1], [2, 3, 4]]


def test_level_scales_and_mixing_clips_to_int16():
    """At level 0.5 the ambient is halved; ambient + agent audio saturates at the int16 limits instead of wrapping."""
    noise = AmbientNoise(struct.pack("<4h", 20000, -20000, 1000, -1000), 0.5)
    mixer = noise.mixer(8000, 8)
    assert samples(mixer.mix(None)) == [10000, -10000, 500, -500]
    loud = struct.pack("<4h", 30000, -30000, 100, -100)
    assert samples(mixer.mix(loud)) == [32767, -32768, 600, -600]


def test_other_rates_get_the_loop_resampled_once():
    """A 16 kHz call gets the 8 kHz file at 16 kHz (twice the samples), computed once per rate."""
    noise = AmbientNoise(tone(8000, 500, 300, amplitude=10000), 1.0)
    wide = noise.at_rate(16000)
    assert len(wide) == 2 * len(noise.pcm) and noise.at_rate(16000) is wide
    assert abs(audioop.rms(wide, 2) - audioop.rms(noise.pcm, 2)) < 0.05 * audioop.rms(noise.pcm, 2)


def test_a_call_plays_ambient_alone_in_silence_and_under_the_agent():
    """Scenario 15 at level 0.5: frames flow continuously from the first caller frame, equal to ambient × 0.5 while
    the agent is silent and to the clipped sum while it speaks."""
    loop = struct.pack("<h", 4000) * 1600
    world = World(ambient=AmbientNoise(loop, 0.5))
    leg, call = world.connect()
    call.caller_audio(0x10, bytes(320))
    world.sts.open(U1)
    world.run(0.1)
    quiet = [p for _, p in leg.sent]
    assert len(quiet) >= 4 and all(samples(p) == [2000] * 160 for p in quiet)
    call.sts_audio(struct.pack("<h", 31000) * 800)
    world.run(0.2)
    speaking = [samples(p) for _, p in leg.sent[len(quiet):]]
    assert [32767] * 160 in speaking
    assert len(leg.sent) >= 13  # one frame every 20 ms, speech or not


def test_bad_ambient_files_are_refused_at_start(tmp_path):
    """A missing, empty or odd-length file is a configuration error naming AMBIENT_NOISE_FILE."""
    empty = tmp_path / "empty.raw"
    empty.write_bytes(b"")
    odd = tmp_path / "odd.raw"
    odd.write_bytes(b"\x00\x01\x02")
    for path, problem in ((tmp_path / "missing.raw", "cannot read"), (empty, "is empty"), (odd, "odd length")):
        with pytest.raises(ConfigError, match=f"AMBIENT_NOISE_FILE: .*{problem}"):
            load_config({"AMBIENT_NOISE_FILE": str(path)})
    good = tmp_path / "room.raw"
    good.write_bytes(b"\x01\x00" * 100)
    config = load_config({"AMBIENT_NOISE_FILE": str(good), "AMBIENT_NOISE_LEVEL": "0.25"})
    assert AmbientNoise.load(config.ambient_noise_file, config.ambient_noise_level).pcm == b"\x01\x00" * 100
    with pytest.raises(ConfigError, match="AMBIENT_NOISE_LEVEL"):
        load_config({"AMBIENT_NOISE_LEVEL": "1.5"})
