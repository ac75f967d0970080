"""In-test fakes of avr's own seams (interfaces.py). Fakes of external systems and of the webhooks: avr.testing."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure
from zope.interface import implementer

from avr.interfaces import (
    IAdmission,
    IAudioSocketLeg,
    ICallObserver,
    ICallSink,
    IStsConnector,
    IStsHandler,
    IStsSession,
)


@implementer(IAudioSocketLeg)
class FakeLeg:
    """An AudioSocket connection that records what avr sends, with the times from a clock."""

    def __init__(self, uuid: str, clock: Any = None) -> None:
        self.uuid = uuid
        self.connected = True
        self.clock = clock
        self.sent: list[tuple[int, bytes]] = []
        self.times: list[float] = []
        self.hung_up = 0

    def send_audio(self, kind: int, pcm: bytes) -> None:
        assert self.connected, "audio sent after hang-up"
        assert pcm and len(pcm) <= 65535
        self.sent.append((kind, pcm))
        if self.clock is not None:
            self.times.append(self.clock.seconds())

    def hang_up(self) -> None:
        if self.connected:
            self.hung_up += 1
            self.connected = False


@implementer(IStsSession)
class FakeStsSession:
    """An STS session that records what it was sent, at the rates it states."""

    def __init__(self, handler: IStsHandler, input_rate: int = 8000, output_rate: int = 8000) -> None:
        self.handler = handler
        self.input_rate = input_rate
        self.output_rate = output_rate
        self.audio: list[bytes] = []
        self.dtmf: list[str] = []
        #: Everything sent, in order: audio chunks (bytes) and digits (str).
        self.sent: list[bytes | str] = []
        #: The action results sent, in order.
        self.results: list[Any] = []
        self.closed = False

    def send_audio(self, pcm: bytes) -> None:
        assert not self.closed
        self.audio.append(pcm)
        self.sent.append(pcm)

    def send_dtmf(self, digit: str) -> None:
        assert not self.closed
        self.dtmf.append(digit)
        self.sent.append(digit)

    def send_action_result(self, result: Any) -> None:
        assert not self.closed
        self.results.append(result)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.handler.sts_closed("closed by avr")


@implementer(IStsConnector)
class FakeStsConnector:
    """Opens `FakeStsSession`s when the test says so (``open``) or refuses them (``refuse``)."""

    def __init__(self) -> None:
        self.pending: dict[str, tuple[Deferred, IStsHandler, str | None]] = {}
        self.sessions: dict[str, FakeStsSession] = {}
        self.cancelled: list[str] = []

    def connect(self, url: str | None, uuid: str, handler: IStsHandler) -> Deferred:
        def cancel(d: Deferred) -> None:
            self.cancelled.append(uuid)
            self.pending.pop(uuid, None)

        d: Deferred = Deferred(cancel)
        self.pending[uuid] = (d, handler, url)
        return d

    def url_for(self, uuid: str) -> str | None:
        return self.pending[uuid][2]

    def open(self, uuid: str, input_rate: int = 8000, output_rate: int = 8000) -> FakeStsSession:
        d, handler, _ = self.pending.pop(uuid)
        session = self.sessions[uuid] = FakeStsSession(handler, input_rate, output_rate)
        d.callback(session)
        return session

    def refuse(self, uuid: str, reason: str = "Connection refused") -> None:
        d, _, _ = self.pending.pop(uuid)
        d.errback(ConnectionRefusedError(reason))


@implementer(ICallObserver)
class RecordingObserver:
    """Records the typed call events as ``(event, uuid, *arguments)`` tuples, in order."""

    def __init__(self) -> None:
        self.events: list[tuple[Any, ...]] = []

    def call_started(self, call: Any) -> None:
        self.events.append(("call_started", call.uuid))

    def dtmf(self, call: Any, digit: str) -> None:
        self.events.append(("dtmf", call.uuid, digit))

    def transcript(self, call: Any, role: str, text: str) -> None:
        self.events.append(("transcript", call.uuid, role, text))

    def interruption(self, call: Any) -> None:
        self.events.append(("interruption", call.uuid))

    def agent_action(self, call: Any, request: Any, result: Any) -> None:
        self.events.append(("agent_action", call.uuid, request, result))

    def call_ended(self, call: Any, reason: str) -> None:
        self.events.append(("call_ended", call.uuid, reason))


@implementer(IAdmission)
class FakeAdmission:
    """An expected connection that records what happens to it; `admit` returns ``sink``."""

    def __init__(self, kind: str = "test", sink: Any = None) -> None:
        self.kind = kind
        self.sink = sink
        self.admitted: list[IAudioSocketLeg] = []
        self.reasons: list[Failure] = []

    def admit(self, leg: IAudioSocketLeg) -> ICallSink:
        self.admitted.append(leg)
        return self.sink

    def expired(self, reason: Failure) -> None:
        self.reasons.append(reason)
