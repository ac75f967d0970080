"""The old home of `avr.once.Once`, kept only until `avr.speech.streaming_asr` imports it from `avr.once`."""

from avr.once import Once

__all__ = ["Once"]
