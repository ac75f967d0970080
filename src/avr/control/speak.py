"""
``POST /calls/:id/speak``: asterisk-api's text to speech, played through avr's own media leg (`Playbacks.play_pcm`):
the call is never taken out of a bridge it is in (asterisk-api pulled it out, D12).

One speech per call at a time: a new ``/speak`` interrupts the one in progress, whether it is being synthesised
(the TTS request is cancelled) or played (the playback is stopped); the interrupted request answers 409, the new one
goes on (asterisk-api let the older request stop the newer stream, D11). A call that ends stops its speech too.

Events, as asterisk-api publishes them: ``call.speak_started`` ``{text, voice, language}`` (the defaults filled in)
before synthesis; ``call.speak_finished`` ``{text, voice, language, durationSeconds}`` once played, or
``call.speak_error`` ``{text, error}``. The playback itself has avr's ``playback.started``/``playback.finished``
(``kind: pcm``), which asterisk-api's clients see as ``call.playback_stream_started``/``finished``
(`avr.control.dialect`).
"""

from __future__ import annotations

from attrs import define, field
from twisted.internet.defer import CancelledError, Deferred
from twisted.logger import Logger

from avr.control.call_registry import CallRegistry
from avr.control.errors import Conflict, ControlError
from avr.control.playbacks import Playbacks
from avr.control.records import CallRecord
from avr.speech.openai_tts import OpenAiTts, Speech, TtsError

#: asterisk-api's 501 text.
TTS_NOT_CONFIGURED = "TTS not configured — set TTS_URL environment variable"


class SpeakFailed(ControlError):
    """The speech could not be made or played: 501 (no TTS), 502 (TTS failed), 504 (TTS timed out)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@define(eq=False)
class _Speaking:
    """One ``/speak`` in progress: what interrupting it must cancel or stop."""

    call_id: str
    synthesis: Deferred | None = None
    playback_id: str | None = None
    #: Why it was cut short (a newer ``/speak``, the call's end), or ``None``.
    interrupted: str | None = None


@define(eq=False)
class Speaker:
    """
    Speaks text into calls.

    :param registry: the calls, and where the events go.
    :param playbacks: plays the speech through a media leg.
    :param tts: the OpenAI-compatible TTS (``None``: ``TTS_URL`` not set, 501).
    """

    registry: CallRegistry
    playbacks: Playbacks
    tts: OpenAiTts | None
    _current: dict[str, _Speaking] = field(factory=dict, init=False)
    log = Logger()

    async def speak(self, call_id: str, text: str, voice: str | None = None, language: str | None = None,
                    speed: float | None = None) -> dict:
        """
        Synthesise ``text`` and play it into the call; answers once it has been played.

        :return: ``{"status": "ok", "text", "voice", "language", "durationSeconds", "playbackId"}``.
        :raises NotFound, Conflict: unknown or ended call; interrupted by a newer ``/speak`` or the call's end.
        :raises SpeakFailed: 501 no TTS, 502/504 the TTS failed or timed out.
        """
        call = self.registry.live(call_id)
        tts = self.tts
        if tts is None:
            raise SpeakFailed(501, TTS_NOT_CONFIGURED)
        voice = voice or tts.default_voice
        language = language or tts.default_language
        previous = self._current.get(call.id)
        if previous is not None:
            self._interrupt(previous, "interrupted by a newer /speak on this call")
        speaking = self._current[call.id] = _Speaking(call.id)
        self.registry.publish("call.speak_started", {"text": text, "voice": voice, "language": language}, call)
        try:
            speech = await self._synthesize(speaking, tts, text, voice, language, speed)
            await self._play(speaking, call, speech)
        except CancelledError:
            given_up = speaking.interrupted is None
            if given_up:  # the client went away (the request was cancelled): so does its speech
                self._interrupt(speaking, "cancelled: the request was given up")
            self.registry.publish("call.speak_error", {"text": text, "error": f"Speak {speaking.interrupted}"}, call)
            if given_up:
                raise
            raise Conflict(f"Speak {speaking.interrupted}") from None
        except Exception as e:
            error = self._error(speaking, e)
            self.registry.publish("call.speak_error", {"text": text, "error": error.message}, call)
            if error is e:
                raise
            raise error from None
        finally:
            if self._current.get(call.id) is speaking:
                del self._current[call.id]
        duration = round(speech.duration, 3)
        self.registry.publish("call.speak_finished", {"text": text, "voice": speech.voice,
                                                      "language": speech.language, "durationSeconds": duration}, call)
        return {"status": "ok", "text": text, "voice": speech.voice, "language": speech.language,
                "durationSeconds": duration, "playbackId": speaking.playback_id}

    async def _synthesize(self, speaking: _Speaking, tts: OpenAiTts, text: str, voice: str, language: str,
                          speed: float | None) -> Speech:
        speaking.synthesis = tts.synthesize(text, voice, language, speed)
        try:
            return await speaking.synthesis
        finally:
            speaking.synthesis = None

    async def _play(self, speaking: _Speaking, call: CallRecord, speech: Speech) -> None:
        if speaking.interrupted is not None:
            raise CancelledError()
        playback = await self.playbacks.play_pcm(call.id, speech.pcm, speech.rate)
        speaking.playback_id = playback["playbackId"]
        if speaking.interrupted is not None:
            self._stop(speaking)
        status, error = await self.playbacks.when_finished(speaking.playback_id)
        if status != "done":
            raise Conflict(f"Speak {status}: {error or speaking.interrupted or 'the playback did not finish'}")

    def _error(self, speaking: _Speaking, error: Exception) -> ControlError:
        if speaking.interrupted is not None:
            return Conflict(f"Speak {speaking.interrupted}")
        if isinstance(error, ControlError):
            return error
        if isinstance(error, TtsError):
            prefix = "Speak timed out" if error.status == 504 else "Speak failed"
            return SpeakFailed(error.status, f"{prefix}: {error.message}")
        return SpeakFailed(502, f"Speak failed: {error}")

    def _interrupt(self, speaking: _Speaking, why: str) -> None:
        speaking.interrupted = why
        if speaking.synthesis is not None and not speaking.synthesis.called:
            speaking.synthesis.cancel()
        elif speaking.playback_id is not None:
            self._stop(speaking)

    def _stop(self, speaking: _Speaking) -> None:
        assert speaking.playback_id is not None
        d = Deferred.fromCoroutine(self.playbacks.stop_playback(speaking.call_id, speaking.playback_id))
        d.addErrback(lambda f: self.log.debug("Stopping speech {id}: {error}", id=speaking.playback_id,
                                              error=f.getErrorMessage()))

    def call_ended(self, call: CallRecord) -> None:
        """The call ended: its speech stops (its playback ends with the call's media legs)."""
        speaking = self._current.pop(call.id, None)
        if speaking is not None:
            speaking.interrupted = "stopped: the call ended"
            if speaking.synthesis is not None and not speaking.synthesis.called:
                speaking.synthesis.cancel()

    def stop(self) -> None:
        """Shutting down: every speech in progress stops."""
        for speaking in list(self._current.values()):
            self._interrupt(speaking, "stopped: avr is shutting down")

