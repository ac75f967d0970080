"""
One agent reply of the pipeline (`Reply`): the LLM's streamed text cut into sentences, each sentence sent to the TTS
as soon as it is complete, and the TTS audio released strictly in sentence order, whatever order the answers come
back in. Plus the call's `Conversation` (the history the LLM adapters read).
"""

from __future__ import annotations

import json
from functools import partial
from typing import Any, Callable

from attrs import define, field, frozen
from twisted.logger import Logger

from avr.httpstream import StreamingHttpClient
from avr.pipeline.latency import PipelineLatencies
from avr.pipeline.llmstream import LlmError, LlmEvent, LlmStatus, LlmText
from avr.pipeline.services import LlmAnswer, TtsAnswer
from avr.pipeline.text import SentenceSplitter

log = Logger()

#: TTS requests of one reply open at once; later sentences wait for a free one (an LLM running on and on must not
#: open a connection per sentence).
MAX_TTS_IN_FLIGHT = 4


@frozen
class PipelineSettings:
    """
    Pipeline mode's configuration (``ASR_URL``, ``LLM_URL``, ``TTS_URL``, ...).

    :ivar tts_rate: the rate of the TTS's raw PCM (``TTS_SAMPLE_RATE``), the session's output rate.
    :ivar timeout: seconds the LLM or a TTS answer may stay silent before the turn or sentence is given up.
    :ivar barge_in: ``not INTERRUPT_LISTENING``: the VAD interrupts the agent; otherwise the ASR does not hear the
        caller while the agent speaks.
    """

    asr_url: str
    llm_url: str
    tts_url: str
    tts_rate: int = 8000
    system_message: str | None = None
    barge_in: bool = True
    timeout: float = 10.0


@define(eq=False)
class Conversation:
    """The call's history, as the LLM adapters read it: ``[{"role": "user"|"assistant", "content": …}]``."""

    messages: list[dict[str, str]] = field(factory=list)

    def user(self, text: str) -> None:
        self.messages.append({"role": "user", "content": text})

    def assistant(self, text: str) -> None:
        self.messages.append({"role": "assistant", "content": text})

    def request_body(self, uuid: str, message: str) -> bytes:
        """The LLM request: ``uuid``, the latest user ``message`` and the whole history."""
        return json.dumps({"uuid": uuid, "message": message, "messages": self.messages},
                          ensure_ascii=False).encode("utf-8")


@define(eq=False)
class _Sentence:
    text: str
    answer: TtsAnswer | None = None
    audio: list[bytes] = field(factory=list)
    done: bool = False
    #: ``clock.seconds()`` when it was sent to the TTS; ``None`` once its first audio came (measured once).
    sent_at: float | None = None


@define(eq=False)
class Reply:
    """
    One agent reply: `ask` the LLM (a user turn) or `say` a fixed text (the greeting); `cancel` abandons it (every
    request of the reply is closed). ``on_audio`` gets the audio in order; ``on_finished`` gets the reply's spoken
    text (citations removed; ``status`` fillers left out) once, when everything is played or given up.

    :param headers: sent with every request (``X-UUID``).
    :param latencies: where the stages' latencies are counted (``None``: nowhere).
    """

    uuid: str
    client: StreamingHttpClient
    clock: Any
    settings: PipelineSettings
    on_audio: Callable[[bytes], None]
    on_finished: Callable[[str], None]
    on_error: Callable[[str], None]
    text: str = ""
    finished: bool = False
    latencies: PipelineLatencies | None = None
    # ``clock.seconds()`` of the user's turn (`ask`); whether its first LLM text, its first audio are still awaited.
    _turn_at: float = 0.0
    _awaiting_text: bool = False
    _awaiting_audio: bool = False
    _splitter: SentenceSplitter = field(factory=SentenceSplitter)
    _sentences: list[_Sentence] = field(factory=list)
    _playing: int = 0  # index of the sentence whose audio plays now
    _started: int = 0  # sentences sent to the TTS so far
    _llm: LlmAnswer | None = None
    _llm_done: bool = True
    _pending: list[Any] = field(factory=list)  # connect Deferreds

    @property
    def headers(self) -> list[tuple[str, str]]:
        return [("X-UUID", self.uuid), ("Content-Type", "application/json")]

    # -- starting

    def ask(self, conversation: Conversation, message: str) -> None:
        """Send the conversation (whose last entry is ``message``) to the LLM and speak its answer."""
        self._llm_done = False
        self._turn_at = self.clock.seconds()
        self._awaiting_text = self._awaiting_audio = True
        self._llm = LlmAnswer.create(self.clock, self.settings.timeout, self._llm_event, self._llm_ended)
        self._post(self.settings.llm_url, conversation.request_body(self.uuid, message), self._llm, "LLM")

    def say(self, text: str) -> None:
        """Speak ``text`` (no LLM)."""
        self.text = text
        for sentence in self._splitter.feed(text) + self._splitter.flush():
            self._add(sentence)
        self._check_finished()

    def _post(self, url: str, body: bytes, receiver: Any, what: str) -> None:
        d = self.client.post(url, self.headers, body, receiver, label=f"{what} for call {self.uuid}",
                             peer=f"the {what}", call_id=self.uuid)
        self._pending.append(d)

        def opened(exchange: Any) -> None:
            self._pending.remove(d)
            receiver.io.attach(exchange)

        def failed(failure: Any) -> None:
            self._pending.remove(d)
            receiver.io.ended(f"cannot reach the {what}: {getattr(failure.value, 'reason', None) or failure.value}")

        d.addCallbacks(opened, failed)

    # -- the LLM

    def _llm_event(self, event: LlmEvent) -> None:
        if self.finished:
            return
        if isinstance(event, LlmText):
            if self._awaiting_text and event.content and self.latencies is not None:
                self._awaiting_text = False
                self.latencies.llm_first_text.observe(self.clock.seconds() - self._turn_at)
            self.text += event.content
            for sentence in self._splitter.feed(event.content):
                self._add(sentence)
        elif isinstance(event, LlmStatus):
            if event.content.strip() and event.content.strip().lower() != "completed":
                for sentence in self._splitter.flush():
                    self._add(sentence)
                self._add(event.content.strip())
        elif isinstance(event, LlmError):
            self.on_error(f"LLM: {event.message}")
            if self._llm is not None:
                self._llm.io.close(f"the LLM reported an error: {event.message}")

    def _llm_ended(self, reason: str | None) -> None:
        self._llm_done = True
        if self.finished:
            return
        if reason is not None and not reason.startswith("the LLM reported an error"):
            self.on_error(f"LLM: {reason}")
        for sentence in self._splitter.flush():
            self._add(sentence)
        self._check_finished()

    # -- the sentences

    def _add(self, text: str) -> None:
        self._sentences.append(_Sentence(text))
        self._start_more()

    def _start_more(self) -> None:
        while self._started < len(self._sentences) and self._started - self._playing < MAX_TTS_IN_FLIGHT:
            index = self._started
            self._started += 1
            sentence = self._sentences[index]
            sentence.answer = TtsAnswer.create(
                self.clock, self.settings.timeout, self.settings.tts_rate, self.settings.tts_rate,
                partial(self._audio, index), partial(self._tts_ended, index))
            body = json.dumps({"text": sentence.text}, ensure_ascii=False).encode("utf-8")
            sentence.sent_at = self.clock.seconds()
            self._post(self.settings.tts_url, body, sentence.answer, "TTS")

    def _audio(self, index: int, pcm: bytes) -> None:
        if self.finished:
            return
        sentence = self._sentences[index]
        if sentence.sent_at is not None and pcm and self.latencies is not None:
            self.latencies.tts_first_audio.observe(self.clock.seconds() - sentence.sent_at)
            sentence.sent_at = None
        if index == self._playing:
            self._play(pcm)
        else:
            sentence.audio.append(pcm)

    def _play(self, pcm: bytes) -> None:
        if self._awaiting_audio and pcm and self.latencies is not None:
            self._awaiting_audio = False
            self.latencies.turn_first_audio.observe(self.clock.seconds() - self._turn_at)
        self.on_audio(pcm)

    def _tts_ended(self, index: int, reason: str | None) -> None:
        if self.finished:
            return
        sentence = self._sentences[index]
        sentence.done = True
        if reason is not None:
            self.on_error(f"TTS ({sentence.text[:40]!r}): {reason}")
        # Release, in order, every sentence that is complete, then the audio so far of the one now playing.
        while self._playing < len(self._sentences) and self._sentences[self._playing].done:
            self._playing += 1
            if self._playing < len(self._sentences):
                waiting = self._sentences[self._playing]
                for pcm in waiting.audio:
                    self._play(pcm)
                waiting.audio.clear()
        self._start_more()
        self._check_finished()

    def _check_finished(self) -> None:
        if not self.finished and self._llm_done and self._playing >= len(self._sentences):
            self.finished = True
            self.on_finished(self.text.strip())

    # -- stopping

    def cancel(self) -> None:
        """Abandon the reply (barge-in, a new turn, the call ended): close its requests; ``on_finished`` follows."""
        if self.finished:
            return
        self.finished = True
        for d in list(self._pending):
            d.cancel()
        if self._llm is not None:
            self._llm.io.close("cancelled")
        for sentence in self._sentences:
            if sentence.answer is not None:
                sentence.answer.io.close("cancelled")
        self.on_finished(self.text.strip())
