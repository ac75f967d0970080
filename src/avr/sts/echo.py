"""The built-in echo agent, used when no STS_URL is configured: the caller hears themselves."""

from __future__ import annotations

from collections import deque
from typing import Any

from attrs import define, field
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

from avr.interfaces import IStsConnector, IStsHandler, IStsSession

log = Logger()


@implementer(IStsSession)
@define(eq=False)
class EchoStsSession:
    """
    Hands every chunk of caller audio back as agent audio: at once (``delay`` 0, from inside `send_audio`) or
    ``delay`` seconds later on ``clock``. DTMF is ignored. The audio comes back at the rate it went in: ``rate``
    (``STS_SAMPLE_RATE``), `input_rate` and `output_rate` alike.
    """

    uuid: str
    handler: IStsHandler
    clock: IReactorTime
    delay: float = 0.0
    rate: int = 8000
    _pending: deque = field(factory=deque, init=False)
    _closed: bool = field(default=False, init=False)

    @property
    def input_rate(self) -> int:
        """The rate of the caller audio."""
        return self.rate

    @property
    def output_rate(self) -> int:
        """The rate of the echo: the same."""
        return self.rate

    def send_audio(self, pcm: bytes) -> None:
        """Echo ``pcm``."""
        if self._closed or not pcm:
            return
        if self.delay <= 0:
            self.handler.sts_audio(pcm)
            return
        self._pending.append(self.clock.callLater(self.delay, self._echo, pcm))

    def _echo(self, pcm: bytes) -> None:
        # Same delay for every chunk: the calls fire in order, so the one firing is the oldest.
        self._pending.popleft()
        if not self._closed:
            self.handler.sts_audio(pcm)

    def send_dtmf(self, digit: str) -> None:
        """Ignored: the echo agent has nothing to say about keys."""
        log.debug("Echo agent for call {call_id}: ignoring DTMF {digit!r}", call_id=self.uuid, digit=digit)

    def send_action_result(self, result: Any) -> None:
        """Dropped: the echo agent never asks for actions."""

    def close(self) -> None:
        """Drop audio not yet echoed and report ``sts_closed("closed")`` before returning. Idempotent."""
        if self._closed:
            return
        self._closed = True
        while self._pending:
            call = self._pending.popleft()
            if call.active():
                call.cancel()
        self.handler.sts_closed("closed")


@implementer(IStsConnector)
class EchoStsConnector:
    """
    Opens echo sessions (the URL is ignored; it is ``None`` when used through `avr.sts.connector.StsConnector`).

    :param clock: schedules delayed echoes.
    :param delay: seconds before each chunk comes back (0: at once).
    :param sample_rate: the rate of the echoed audio (``STS_SAMPLE_RATE``).
    """

    def __init__(self, clock: IReactorTime, delay: float = 0.0, sample_rate: int = 8000) -> None:
        self._clock = clock
        self._delay = delay
        self._sample_rate = sample_rate

    def connect(self, url: str | None, uuid: str, handler: IStsHandler) -> Deferred:
        """:return: a Deferred that has already fired with an `EchoStsSession`."""
        log.info("No STS configured: call {call_id} talks to the built-in echo agent", call_id=uuid)
        return succeed(EchoStsSession(uuid, handler, self._clock, self._delay, self._sample_rate))
