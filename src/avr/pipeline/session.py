"""
`PipelineSession`: one call through ASR → LLM → TTS, as an `IStsSession`, so that the call treats it like any STS.

Turn-taking:

- Caller audio goes to the call-long ASR stream (8 kHz) and, with barge-in on, to the call's VAD. With
  ``INTERRUPT_LISTENING=true`` it is not sent to the ASR while the agent speaks.
- Each transcript is a user turn (``transcription`` user); DTMF digits are user turns too. A turn starts a `Reply`
  (LLM, sentences, TTS in order); a new turn while a reply is under way or still playing interrupts it first.
- The agent "speaks" while the audio handed to the call has not had time to play (the session counts its duration
  on the clock). Confirmed speech from the VAD (``VAD_MIN_SPEECH_FRAMES``) while the agent speaks is a barge-in: the
  call's playback is emptied (`IStsHandler.sts_interruption`, which also reports ``interruption``) and the reply's
  requests are closed.
- A reply's text goes into the history when it ends (only what the LLM had sent, if interrupted) and is reported as
  the agent's ``transcription``. The greeting (``SYSTEM_MESSAGE``) is spoken and reported, but not put into the
  history (adapters such as Anthropic's refuse a history that starts with the assistant).
- An error of the LLM or a TTS ends that turn or sentence (reported through `IStsHandler.sts_error`); the call goes on.
  If the ASR stream ends or fails, it is reopened (after 0.5, 1 and 2 s); when three attempts in a row fail, or a
  stream that was reopened dies within 10 s three times, the session ends (``ASR stream lost``) and so the call.
"""

from __future__ import annotations

from typing import Any

from attrs import define, field
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from avr.httpstream import StreamingHttpClient
from avr.interfaces import IStsHandler, IStsSession
from avr.pipeline.latency import PipelineLatencies
from avr.pipeline.services import AsrStream
from avr.pipeline.turns import Conversation, PipelineSettings, Reply
from avr.pipeline.vad import SPEECH_REAL_START, VAD_RATE, CallVad

log = Logger()

#: Delays before reopening a lost ASR stream, one per attempt in a row.
ASR_RETRY_DELAYS = (0.5, 1.0, 2.0)
#: An ASR stream that stayed up this long (seconds) resets the count of attempts.
ASR_STABLE_SECONDS = 10.0


@implementer(IStsSession)
@define(eq=False)
class PipelineSession:
    """
    One call's pipeline. Build it, then `start` (opens the ASR stream).

    :param vad: the call's voice activity detector (``None``: no barge-in, ``INTERRUPT_LISTENING=true``).
    :param latencies: where the replies count the stages' latencies (``None``: nowhere).
    """

    uuid: str
    handler: IStsHandler
    client: StreamingHttpClient
    clock: Any
    settings: PipelineSettings
    vad: CallVad | None = None
    conversation: Conversation = field(factory=Conversation)
    input_rate: int = VAD_RATE
    latencies: PipelineLatencies | None = None
    _asr: AsrStream | None = None
    _asr_opened_at: float | None = None
    _asr_failures: int = 0
    _asr_connecting: Deferred | None = None
    _retry: Any = None
    _reply: Reply | None = None
    _speaking_until: float = 0.0
    _started: Deferred | None = None
    _greeting: Any = None
    _opened: bool = False
    _closed: bool = False

    @property
    def output_rate(self) -> int:
        """The TTS's rate."""
        return self.settings.tts_rate

    @property
    def speaking(self) -> bool:
        """The agent's audio handed to the call has not all played yet."""
        return self.clock.seconds() < self._speaking_until

    # -- opening

    def start(self) -> Deferred:
        """
        Open the ASR stream. :return: a Deferred firing with this session once it is open (the greeting starts just
        after), or failing with the reason the ASR cannot be reached.
        """
        self._started = Deferred(lambda _: self._finish("cancelled"))
        self._open_asr()
        return self._started

    def _open_asr(self) -> None:
        self._retry = None
        asr = AsrStream.create(self.clock, self._transcript, self._asr_ended)
        self._asr = asr
        headers = [("X-UUID", self.uuid), ("Content-Type", "application/octet-stream")]
        d = self._asr_connecting = self.client.post(self.settings.asr_url, headers, None, asr,
                                                    label=f"ASR for call {self.uuid}", peer="the ASR",
                                                    call_id=self.uuid)

        def opened(exchange: Any) -> None:
            self._asr_connecting = None
            asr.io.attach(exchange)
            self._asr_opened_at = self.clock.seconds()
            log.info("ASR stream open for call {call_id}", call_id=self.uuid)
            if self._started is not None:
                started, self._started = self._started, None
                self._opened = True
                # Just after the call has the session (agent audio from a session it does not know is dropped).
                self._greeting = self.clock.callLater(0, self._greet)
                started.callback(self)

        def failed(failure: Failure) -> None:
            self._asr_connecting = None
            reason = getattr(failure.value, "reason", None) or failure.getErrorMessage()
            if self._started is not None:
                started, self._started = self._started, None
                self._closed = True
                self._stop_all()
                started.errback(failure)
                return
            asr.io.ended(f"cannot reach the ASR: {reason}")

        d.addCallbacks(opened, failed)

    def _asr_ended(self, reason: str | None) -> None:
        if self._closed or self._asr is None:
            return
        self._asr = None
        stable = self._asr_opened_at is not None and self.clock.seconds() - self._asr_opened_at >= ASR_STABLE_SECONDS
        self._asr_opened_at = None
        self._asr_failures = 1 if stable else self._asr_failures + 1
        if self._asr_failures > len(ASR_RETRY_DELAYS):
            self._finish(f"ASR stream lost ({reason})")
            return
        delay = ASR_RETRY_DELAYS[self._asr_failures - 1]
        self.handler.sts_error(f"ASR stream ended ({reason}); reopening in {delay:g} s")
        self._retry = self.clock.callLater(delay, self._open_asr)

    def _greet(self) -> None:
        self._greeting = None
        if not self._closed and self.settings.system_message:
            self._reply_with(lambda reply: reply.say(self.settings.system_message), greeting=True)

    # -- IStsSession

    def send_audio(self, pcm: bytes) -> None:
        """Caller audio at 8 kHz: to the VAD, and to the ASR unless it must not hear the agent's turn."""
        if self._closed:
            return
        if self.vad is not None:
            self.vad.feed(pcm)
        if self._asr is not None and (self.settings.barge_in or not self.speaking):
            self._asr.send(pcm)

    def send_dtmf(self, digit: str) -> None:
        """A digit is a user message."""
        if not self._closed:
            self._user_turn(digit)

    def send_action_result(self, result: Any) -> None:
        """Dropped: the pipeline never asks for actions (the LLM adapters run their tools themselves)."""

    def close(self) -> None:
        """End the session: every request of the call is closed, then `IStsHandler.sts_closed`."""
        self._finish("closed")

    # -- turns

    def _transcript(self, text: str) -> None:
        if not self._closed:
            self._user_turn(text)

    def _user_turn(self, text: str) -> None:
        self.interrupt()
        self.handler.sts_transcript("user", text)
        self.conversation.user(text)
        self._reply_with(lambda reply: reply.ask(self.conversation, text), greeting=False)

    def _reply_with(self, begin: Any, greeting: bool) -> None:
        reply = Reply(self.uuid, self.client, self.clock, self.settings, self._agent_audio,
                      lambda text: self._replied(reply, text, greeting), self.handler.sts_error,
                      latencies=self.latencies)
        self._reply = reply
        begin(reply)

    def _replied(self, reply: Reply, text: str, greeting: bool) -> None:
        if self._reply is reply:
            self._reply = None
        if text and not self._closed:
            if not greeting:
                self.conversation.assistant(text)
            self.handler.sts_transcript("agent", text)

    def _agent_audio(self, pcm: bytes) -> None:
        if self._closed:
            return
        now = self.clock.seconds()
        self._speaking_until = max(now, self._speaking_until) + len(pcm) / 2 / self.output_rate
        self.handler.sts_audio(pcm)

    def vad_event(self, event: str) -> None:
        """From the call's VAD: confirmed speech while the agent speaks is a barge-in."""
        if event == SPEECH_REAL_START and self.speaking and not self._closed:
            log.info("Barge-in on call {call_id}", call_id=self.uuid)
            self.interrupt()

    def interrupt(self) -> None:
        """Stop the agent: the reply under way is abandoned and what it queued for playback is dropped."""
        reply, self._reply = self._reply, None
        if reply is not None:
            reply.cancel()
        if self.speaking:
            self._speaking_until = 0.0
            self.handler.sts_interruption()

    # -- the end

    def _stop_all(self) -> None:
        for timer in (self._retry, self._greeting):
            if timer is not None and timer.active():
                timer.cancel()
        self._retry = self._greeting = None
        if self._asr_connecting is not None:
            d, self._asr_connecting = self._asr_connecting, None
            d.cancel()
        asr, self._asr = self._asr, None
        if asr is not None:
            asr.io.close("closed")
        reply, self._reply = self._reply, None
        if reply is not None:
            reply.cancel()
        if self.vad is not None:
            self.vad.close()

    def _finish(self, reason: str) -> None:
        if self._closed:
            return
        self._closed = True
        self._stop_all()
        if not self._opened:
            return  # never opened: the start Deferred reports it
        log.info("Pipeline session for call {call_id} ended: {reason}", call_id=self.uuid, reason=reason)
        self.handler.sts_closed(reason)
