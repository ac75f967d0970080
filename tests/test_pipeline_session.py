"""
Tests for avr.pipeline: whole pipeline sessions against the fake ASR, LLM and TTS, synchronous (MemoryReactorClock,
iosim): turns, sentence order, greeting, DTMF, barge-in, INTERRUPT_LISTENING, failures and stalls, cancellation.
"""

from __future__ import annotations

from pipeline_harness import U1, PipelineWorld
from zope.interface.verify import verifyObject

from avr.interfaces import IStsConnector, IStsSession
from avr.pipeline.session import PipelineSession
from avr.sts.errors import StsConnectError
from avr.testing.pipeline import FakeLlmResource, FakeTtsResource, pcm_for, value_of


def events(world: PipelineWorld, *kinds: str) -> list[tuple]:
    return [e for e in world.handler.events if e[0] in kinds]


def test_scenario_13_a_user_turn_through_llm_and_tts():
    """ASR_URL gets one chunked POST with X-UUID and the caller's PCM; "book a table" makes an LLM request with uuid,
    message and messages; its answer "Sure. " "When?" is spoken as two TTS requests in order; both transcripts are
    reported; the reply goes into the history."""
    world = PipelineWorld()
    session = world.open()
    assert isinstance(session, PipelineSession) and verifyObject(IStsSession, session)
    assert verifyObject(IStsConnector, world.connector)
    assert (session.input_rate, session.output_rate) == (8000, 8000)
    world.caller_audio(b"\x01\x02" * 160)
    call = world.asr_call
    assert call.uuid == U1 and call.violations == [] and bytes(call.received) == b"\x01\x02" * 160
    assert call.request.requestHeaders.getRawHeaders(b"transfer-encoding") == [b"chunked"]
    world.say("book a table")
    (llm,) = world.llm.requests
    assert llm.uuid == U1
    assert llm.body == {"uuid": U1, "message": "book a table",
                        "messages": [{"role": "user", "content": "book a table"}]}
    assert world.tts.texts == ["Sure.", "When?"]
    assert all(r.uuid == U1 for r in world.tts.requests)
    assert world.agent_values() == [value_of("Sure."), value_of("When?")]
    assert len(world.handler.audio) == len(pcm_for("Sure.")) + len(pcm_for("When?"))
    assert events(world, "transcript") == [("transcript", "user", "book a table"),
                                           ("transcript", "agent", "Sure. When?")]
    world.advance(2)
    world.say("for two")
    assert world.llm.requests[1].messages == [
        {"role": "user", "content": "book a table"}, {"role": "assistant", "content": "Sure. When?"},
        {"role": "user", "content": "for two"}]


def test_raw_text_llm_and_newline_terminated_transcripts():
    """A raw-text LLM stream works the same; an ASR that ends transcripts with \\n gives one turn per line (the
    second, arriving at once, supersedes the first)."""
    world = PipelineWorld(llm=FakeLlmResource(mode="text", answer=lambda m: ["Hello there. How", " can I help?"]))
    world.open()
    world.asr_call.say("hi\nis anyone there", newline=True)
    world.settle()
    assert world.llm.requests[-1].messages == [{"role": "user", "content": "hi"},
                                               {"role": "user", "content": "is anyone there"}]
    assert world.tts.texts[-2:] == ["Hello there.", "How can I help?"]


def test_sentences_play_in_order_when_the_tts_answers_out_of_order():
    """The second sentence's audio arrives first; the call still hears the first sentence first."""
    world = PipelineWorld(llm=FakeLlmResource(answer=lambda m: ["One. Two. Three."]))
    world.tts.delays = {"One.": 0.5, "Two.": 0.1}
    world.open()
    world.say("count")
    world.advance(0.2)
    assert world.agent_values() == []  # "Two." and "Three." wait for "One."
    world.advance(0.5)
    assert world.agent_values() == [value_of("One."), value_of("Two."), value_of("Three.")]


def test_greeting_is_spoken_reported_but_not_in_the_history():
    """SYSTEM_MESSAGE goes through the TTS at the start; the LLM never sees it as an assistant turn."""
    world = PipelineWorld(system_message="Hello, how can I help you today?")
    world.open()
    assert world.tts.texts == ["Hello, how can I help you today?"]
    assert world.agent_values() == [value_of("Hello, how can I help you today?")]
    assert events(world, "transcript") == [("transcript", "agent", "Hello, how can I help you today?")]
    world.advance(3)
    world.say("hi")
    assert world.llm.requests[0].messages == [{"role": "user", "content": "hi"}]


def test_dtmf_is_a_user_message():
    """A digit is sent to the LLM as the user's message."""
    world = PipelineWorld()
    session = world.open()
    session.send_dtmf("5")
    world.settle()
    assert world.llm.requests[0].message == "5"
    assert world.llm.requests[0].messages == [{"role": "user", "content": "5"}]


def test_barge_in_empties_playback_cancels_the_turn_and_reports_it():
    """Confirmed caller speech while the agent speaks: sts_interruption, the in-flight LLM and TTS requests are
    closed (the fakes see their clients go away), and later TTS audio of that turn never arrives."""
    world = PipelineWorld(llm=FakeLlmResource())  # the LLM streams only what the test writes
    world.tts.delays = {"Second sentence.": 5.0}
    world.open()
    world.say("tell me a story")
    llm = world.llm.requests[0]
    llm.text("First sentence. Second sentence. And a third")
    world.settle()
    assert world.agent_values() == [value_of("First sentence.")]
    world.model.speech = 0.9
    for _ in range(3):  # VAD_MIN_SPEECH_FRAMES of speech
        world.caller_audio(bytes(1024))
    assert events(world, "interruption") == [("interruption",)]
    assert llm.cancelled and world.tts.requests[1].cancelled
    played = len(world.handler.audio)
    world.advance(6)
    assert len(world.handler.audio) == played
    assert events(world, "transcript")[-1] == ("transcript", "agent", "First sentence. Second sentence. And a third")


def test_speech_while_the_agent_is_silent_is_not_a_barge_in():
    """The VAD firing when nothing plays interrupts nothing."""
    world = PipelineWorld()
    world.open()
    world.model.speech = 0.9
    for _ in range(5):
        world.caller_audio(bytes(1024))
    assert events(world, "interruption") == []


def test_interrupt_listening_keeps_the_asr_deaf_while_the_agent_speaks():
    """INTERRUPT_LISTENING=true: no VAD, and caller audio is not sent to the ASR until the agent's audio has played."""
    world = PipelineWorld(barge_in=False, system_message="Welcome to the restaurant.")
    world.open()
    assert world.session.vad is None
    world.caller_audio(b"\x01\x00" * 160)
    assert bytes(world.asr_call.received) == b""
    world.advance(len(pcm_for("Welcome to the restaurant.")) / 16000 + 0.05)
    world.caller_audio(b"\x02\x00" * 160)
    assert bytes(world.asr_call.received) == b"\x02\x00" * 160


def test_a_new_turn_interrupts_the_reply_still_under_way():
    """A second transcript while the first reply streams: the first is cancelled, the second answered."""
    world = PipelineWorld(llm=FakeLlmResource())
    world.open()
    world.say("first")
    world.say("second")
    first, second = world.llm.requests
    assert first.cancelled and not second.cancelled
    assert second.messages[-1] == {"role": "user", "content": "second"}


def test_llm_failures_end_the_turn_and_the_call_goes_on():
    """An LLM answering 500, or sending an error object, is reported; the next turn works."""
    world = PipelineWorld(llm=FakeLlmResource(status=500))
    world.open()
    world.say("hello")
    (error,) = events(world, "error")
    assert "the LLM answered HTTP 500" in error[1] and "Error communicating" in error[1]
    world.llm.status = 200
    world.llm.answer = None
    world.say("again")
    request = world.llm.requests[1]
    request.text("Okay. ")
    request.error("quota exceeded")
    world.settle()
    assert ("error", "LLM: quota exceeded") in world.handler.events
    assert world.tts.texts == ["Okay."] and request.cancelled
    assert world.handler.closed == []


def test_a_stalled_llm_or_tts_times_out():
    """No byte from the LLM within the timeout ends the turn; a stalled TTS sentence is skipped, the next plays."""
    world = PipelineWorld(llm=FakeLlmResource(), tts=FakeTtsResource(speak=None), timeout=2.0)
    world.open()
    world.say("hello")
    world.advance(2.1)
    assert any("no answer from the LLM for 2 s" in e[1] for e in events(world, "error"))
    assert world.llm.requests[0].cancelled
    world.llm.answer = lambda m: ["A. B."]
    world.say("again")
    first, second = world.tts.requests
    second.send(pcm_for("B."))
    world.settle()
    world.advance(2.1)
    assert any("no answer from the TTS for 2 s" in e[1] for e in events(world, "error"))
    assert first.cancelled
    assert world.agent_values() == [value_of("B.")]


def test_tts_error_skips_the_sentence():
    """A TTS answering 500 for a sentence: reported, nothing played for it, the call goes on."""
    world = PipelineWorld(tts=FakeTtsResource(status=500))
    world.open()
    world.say("hi")
    assert len([e for e in events(world, "error") if "the TTS answered HTTP 500" in e[1]]) == 2
    assert world.handler.audio == b"" and world.handler.closed == []


def test_wav_answers_at_another_rate_are_converted():
    """A TTS answering WAV at 16 kHz: the header is skipped and the audio resampled to the session's 8 kHz."""
    world = PipelineWorld(tts=FakeTtsResource(speak=lambda text: b"\x00\x10" * 16000, wav_rate=16000))
    world.open()
    world.say("hi")
    audio = world.handler.audio
    assert abs(len(audio) - 2 * len(world.tts.texts) * 8000) <= 16
    assert b"RIFF" not in audio


def test_hanging_up_mid_llm_cancels_every_request_and_leaves_nothing_behind():
    """close() while the LLM streams and a TTS request is open: both fakes see their clients go away, the ASR stream
    ends, sts_closed once, no timer left."""
    world = PipelineWorld(llm=FakeLlmResource(), tts=FakeTtsResource(speak=None))
    session = world.open()
    world.say("hello")
    world.llm.requests[0].text("Working on it. ")
    world.settle()
    session.close()
    world.settle()
    assert world.llm.requests[0].cancelled and world.tts.requests[0].cancelled
    assert world.asr_call.body_ended
    assert world.handler.closed == ["closed"]
    session.close()
    assert world.handler.closed == ["closed"]
    assert world.reactor.getDelayedCalls() == []
    assert all(p.clientIO.disconnected for p in world.pumps)
    assert world.model.resets == 1


def test_asr_stream_is_reopened_and_then_given_up():
    """The ASR ending its stream is reopened after 0.5, 1 and 2 s; after three failed reopenings the session ends."""
    world = PipelineWorld()
    world.open()
    world.asr_call.finish()
    world.settle()
    assert "reopening in 0.5 s" in events(world, "error")[0][1]
    world.advance(0.5)
    assert len(world.asr.calls) == 2
    world.asr.status = 503
    world.asr_call.finish()
    world.advance(4)
    assert len(world.asr.calls) == 4
    assert world.handler.closed and world.handler.closed[0].startswith("ASR stream lost")
    assert world.reactor.getDelayedCalls() == []


def test_unreachable_asr_fails_the_connect():
    """No ASR listening: the session does not open (the call ends as for an unreachable STS)."""
    world = PipelineWorld()
    world.reactor.tcpServers[:] = [s for s in world.reactor.tcpServers if s[0] != 6010]
    world.connector.connect(None, U1, world.handler).addBoth(world.outcome.append)
    world.reactor.advance(10)
    (failure,) = world.outcome
    assert failure.check(StsConnectError)
    assert world.handler.events == [] and world.reactor.getDelayedCalls() == []


def test_llm_request_body_is_json_with_unicode():
    """The request is JSON (UTF-8, not escaped), with the headers the adapters read."""
    world = PipelineWorld()
    world.open()
    world.say("ça va ?")
    request = world.llm.requests[0]
    assert request.request.requestHeaders.getRawHeaders(b"content-type") == [b"application/json"]
    assert request.message == "ça va ?" and request.raw.count("ça va ?".encode()) == 2  # message and messages
