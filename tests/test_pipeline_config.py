"""Pipeline mode's settings: mode selection, refusals at start, the report of settings without effect."""

from __future__ import annotations

import pytest
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import formatEvent, globalLogPublisher

from avr.config import ECHO_MODE, PIPELINE_MODE, STS_MODE, ConfigError, agent_mode, load_config, unused_settings
from avr.pipeline.connector import PipelineConnector
from avr.service import build, sts_connectors
from avr.sts.websocket import WebSocketStsConnector
from tests.fakes import FakeStsConnector

PIPELINE = {
    "ASR_URL": "http://avr-asr-deepgram:6010/speech-to-text-stream",
    "LLM_URL": "http://avr-llm-openai:6002/prompt-stream",
    "TTS_URL": "http://avr-tts-google:6012/text-to-speech-stream",
}


def test_mode_selection():
    """STS_URL wins; else the three pipeline URLs; else the echo agent. asterisk-api's ws:// ASR_URL and
    OpenAI-compatible TTS_URL never make a pipeline."""
    assert agent_mode(load_config({**PIPELINE, "STS_URL": "ws://sts:6030"})) == STS_MODE
    assert agent_mode(load_config(PIPELINE)) == PIPELINE_MODE
    assert agent_mode(load_config({})) == ECHO_MODE
    assert agent_mode(load_config({"ASR_URL": "ws://asr:8100/ws", "TTS_URL": "http://tts:8101"})) == ECHO_MODE


@pytest.mark.parametrize("missing", ["ASR_URL", "LLM_URL", "TTS_URL"])
def test_a_partial_pipeline_is_refused_naming_what_is_missing(missing):
    """Two of the three URLs: refused at start, the message names the third."""
    settings = {k: v for k, v in PIPELINE.items() if k != missing}
    with pytest.raises(ConfigError, match=f"incomplete: {missing} is missing"):
        load_config(settings)


def test_a_pipeline_with_the_wrong_kind_of_asr_or_tts_is_refused():
    """A ws:// ASR_URL or a TTS_URL that is not avr-core's, with LLM_URL set: refused, saying why."""
    with pytest.raises(ConfigError, match="ASR_URL must be an http"):
        load_config({**PIPELINE, "ASR_URL": "ws://asr:8100/ws"})
    with pytest.raises(ConfigError, match="TTS_URL is not avr-core's TTS"):
        load_config({**PIPELINE, "TTS_URL": "http://tts:8101"})
    assert agent_mode(load_config({**PIPELINE, "TTS_URL": "http://tts:8101/speak", "TTS_API": "avr-core"})) == \
        PIPELINE_MODE


def test_settings_without_effect_are_listed():
    """avr-core users copy whole env files: in STS mode the pipeline and VAD settings they set are listed; with
    INTERRUPT_LISTENING=true the VAD ones are."""
    sts = load_config({**PIPELINE, "STS_URL": "ws://sts:6030", "SYSTEM_MESSAGE": "Hi", "VAD_MIN_SPEECH_FRAMES": "2"})
    assert unused_settings(sts) == ["LLM_URL", "SYSTEM_MESSAGE", "VAD_MIN_SPEECH_FRAMES"]
    deaf = load_config({**PIPELINE, "INTERRUPT_LISTENING": "true", "VAD_REDEMPTION_FRAMES": "12"})
    assert unused_settings(deaf) == ["VAD_REDEMPTION_FRAMES"]
    assert unused_settings(load_config(PIPELINE)) == []


def test_calls_without_an_sts_url_go_to_the_pipeline_and_per_call_urls_still_win():
    """The connector for calls without a URL is the pipeline's; a ws:// URL from /call or the webhook still goes to
    the STS connector."""
    connectors = sts_connectors(MemoryReactorClock(), load_config(PIPELINE))
    assert isinstance(connectors[None], PipelineConnector)
    assert isinstance(connectors["ws"], WebSocketStsConnector)
    assert connectors[None].settings.barge_in and connectors[None].vad_runner is not None
    deaf = sts_connectors(MemoryReactorClock(), load_config({**PIPELINE, "INTERRUPT_LISTENING": "true"}))
    assert deaf[None].vad_runner is None  # type: ignore[attr-defined]


def test_start_up_says_which_mode_runs_and_what_is_ignored():
    """One line names the mode; one lists the settings without effect."""
    lines: list[str] = []

    def observer(event: dict) -> None:
        lines.append(formatEvent(event))

    globalLogPublisher.addObserver(observer)
    try:
        build(MemoryReactorClock(), load_config({**PIPELINE, "VAD_MODEL": "legacy"}), http_client=None,
              sts_connector=FakeStsConnector())
        build(MemoryReactorClock(), load_config({"SYSTEM_MESSAGE": "Hi"}), http_client=None,
              sts_connector=FakeStsConnector())
    finally:
        globalLogPublisher.removeObserver(observer)
    assert any(line.startswith("Pipeline mode: ASR http://avr-asr-deepgram:6010/") and "barge-in: Silero VAD" in line
               for line in lines)
    assert any("VAD_MODEL=legacy" in line for line in lines)
    assert any("built-in echo agent" in line for line in lines)
    assert any(line == "Settings with no effect in echo mode: SYSTEM_MESSAGE" for line in lines)


def test_vad_defaults_of_the_settings_table_are_the_detectors_defaults() -> None:
    """The ``VAD_*`` defaults live in the settings table and in `VadSettings`: they must not drift apart."""
    from avr.config import Config
    from avr.pipeline.connector import vad_settings
    from avr.pipeline.vad import VadSettings

    assert vad_settings(Config()) == VadSettings()
    assert vad_settings(load_config(environ={})) == VadSettings()
