"""`PipelineConnector`: opens `PipelineSession`\\ s, the agent of calls without an STS URL in pipeline mode."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from zope.interface import implementer

from avr.config import Config
from avr.httpstream import StreamingHttpClient
from avr.interfaces import IStsConnector, IStsHandler
from avr.logtext import redact_url
from avr.pipeline.latency import PipelineLatencies
from avr.pipeline.session import PipelineSession
from avr.pipeline.turns import PipelineSettings
from avr.pipeline.vad import CallVad, IVadRunner, VadSettings

log = Logger()


def pipeline_settings(config: Config) -> PipelineSettings:
    """The pipeline part of ``config`` (which must be in pipeline mode)."""
    assert config.pipeline_asr_url and config.llm_url and config.pipeline_tts_url
    return PipelineSettings(
        asr_url=config.pipeline_asr_url, llm_url=config.llm_url, tts_url=config.pipeline_tts_url,
        tts_rate=config.tts_sample_rate,
        system_message=config.system_message, barge_in=not config.interrupt_listening,
        timeout=config.pipeline_timeout / 1000,
    )


def vad_settings(config: Config) -> VadSettings:
    """The ``VAD_*`` part of ``config``."""
    return VadSettings(
        positive_threshold=config.vad_positive_speech_threshold,
        negative_threshold=config.vad_negative_speech_threshold,
        min_speech_frames=config.vad_min_speech_frames, pre_speech_pad_frames=config.vad_pre_speech_pad_frames,
        redemption_frames=config.vad_redemption_frames, frame_samples=config.vad_frame_samples,
    )


@implementer(IStsConnector)
class PipelineConnector:
    """
    Opens pipeline sessions (the URL is ignored: it is ``None``, the calls without an STS URL).

    :param client: opens the HTTP exchanges.
    :param clock: timers (timeouts, ASR reopening, greeting).
    :param vad_runner: runs the barge-in detectors (``None`` when ``settings.barge_in`` is off).
    :param latencies: where the sessions count the stages' latencies (for ``/metrics``).
    """

    def __init__(self, client: StreamingHttpClient, clock: Any, settings: PipelineSettings,
                 vad: VadSettings | None = None, vad_runner: IVadRunner | None = None,
                 latencies: PipelineLatencies | None = None) -> None:
        self.latencies = latencies if latencies is not None else PipelineLatencies()
        self.client = client
        self.clock = clock
        self.settings = settings
        self.vad = vad or VadSettings()
        self.vad_runner = vad_runner
        if settings.barge_in and vad_runner is None:
            raise ValueError("barge-in needs a VAD runner")

    def connect(self, url: str | None, uuid: str, handler: IStsHandler) -> Deferred:
        """Open the call's ASR stream; :return: a Deferred firing with the `PipelineSession`."""
        log.info("Pipeline for call {call_id}: ASR {asr}", call_id=uuid, asr=redact_url(self.settings.asr_url))
        session = PipelineSession(uuid, handler, self.client, self.clock, self.settings, latencies=self.latencies)
        if self.settings.barge_in:
            assert self.vad_runner is not None
            session.vad = CallVad(self.vad_runner, self.vad, session.vad_event, uuid)
        return session.start()
