"""
`PipelineLatencies`: how long each stage of pipeline mode took to answer, kept as plain histograms
(`avr.histogram.Buckets`) that ``/metrics`` reads.

The stages are measured where avr sees them: the LLM from the user's turn (the ASR's transcript, or a digit) to the
first text of its answer; each TTS request from the sentence sent to its first audio; and the whole turn from the
transcript to the first audio of the reply handed to playback. How long the ASR took to produce the transcript is
not visible to avr (it does not know when the caller stopped speaking).
"""

from __future__ import annotations

from attrs import define, field

from avr.histogram import Buckets

#: Upper bounds (seconds) of the pipeline histograms.
LATENCY_BOUNDS = (0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)


def _buckets() -> Buckets:
    return Buckets(LATENCY_BOUNDS)


@define(eq=False)
class PipelineLatencies:
    """The pipeline's stage latencies, every call's (one per server, given to `avr.pipeline.connector`)."""

    #: The user's turn to the first text of the LLM's answer.
    llm_first_text: Buckets = field(factory=_buckets)
    #: A sentence sent to the TTS to the first byte of its audio.
    tts_first_audio: Buckets = field(factory=_buckets)
    #: The user's turn to the first audio of the agent's reply handed to playback.
    turn_first_audio: Buckets = field(factory=_buckets)
