"""
The AudioSocket connections avr expects, by UUID: one registry for every producer of expectations.

``POST /call`` registrations (`avr.registrations`), uploaded-audio playbacks (`avr.control.injection`) and agents
for ARI calls each put an `IAdmission` here with a time to live; when Asterisk connects with that UUID,
`avr.calls.CallManager.attach` takes it and lets it build the connection's sink. An expectation that is never taken
expires (its admission hears why), so nothing leaks when Asterisk never connects.
"""

from __future__ import annotations

from attrs import define, field
from twisted.internet.defer import CancelledError
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from avr.interfaces import IAdmission


@define(eq=False)
class Admissions:
    """
    Expected AudioSocket connections by UUID (compared in lower case, as Asterisk sends them), each with a timer.

    :param clock: where the time-to-live timers run.
    """

    log = Logger()

    clock: IReactorTime
    _entries: dict[str, tuple[IAdmission, IDelayedCall]] = field(factory=dict, init=False)

    def expect(self, uuid: str, admission: IAdmission, ttl: float) -> None:
        """
        Expect the connection with ``uuid`` for ``ttl`` seconds and hand it to ``admission``. An earlier expectation
        of the same UUID is replaced (it expires with `CancelledError`).
        """
        key = uuid.lower()
        previous = self._entries.pop(key, None)
        self._entries[key] = (admission, self.clock.callLater(ttl, self._expire, key, admission, ttl))
        if previous is not None:
            previous[1].cancel()
            self._tell(previous[0], key, Failure(CancelledError(f"replaced by a newer expectation of {key}")))

    def take(self, uuid: str) -> IAdmission | None:
        """Remove and return what expects ``uuid`` (any case), or ``None``."""
        entry = self._entries.pop(uuid.lower(), None)
        if entry is None:
            return None
        entry[1].cancel()
        return entry[0]

    def get(self, uuid: str) -> IAdmission | None:
        """What expects ``uuid`` (any case), left in place; ``None`` if nothing does."""
        entry = self._entries.get(uuid.lower())
        return entry[0] if entry is not None else None

    def withdraw(self, uuid: str, admission: IAdmission) -> bool:
        """
        Stop expecting ``uuid`` for ``admission`` (its producer gave up: it is not told). Another admission that
        replaced it meanwhile is left alone.

        :return: whether ``admission`` was still waiting.
        """
        entry = self._entries.get(uuid.lower())
        if entry is None or entry[0] is not admission:
            return False
        del self._entries[uuid.lower()]
        entry[1].cancel()
        return True

    def count(self, kind: str | None = None) -> int:
        """How many connections are expected (of ``kind`` only, if given)."""
        if kind is None:
            return len(self._entries)
        return sum(1 for admission, _ in self._entries.values() if admission.kind == kind)

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, uuid: object) -> bool:
        return isinstance(uuid, str) and uuid.lower() in self._entries

    def clear(self, reason: str = "server shutting down") -> None:
        """Expect nothing more (shutdown): every admission expires with `CancelledError`; every timer is cancelled."""
        entries, self._entries = self._entries, {}
        for key, (admission, timer) in entries.items():
            timer.cancel()
            self._tell(admission, key, Failure(CancelledError(reason)))

    def _expire(self, key: str, admission: IAdmission, ttl: float) -> None:
        entry = self._entries.get(key)
        if entry is None or entry[0] is not admission:
            return
        del self._entries[key]
        self._tell(admission, key, Failure(TimeoutError(f"no AudioSocket connection for {key} within {ttl:g} s")))

    def _tell(self, admission: IAdmission, key: str, reason: Failure) -> None:
        try:
            admission.expired(reason)
        except Exception:
            self.log.failure("The {kind} admission of {call_id} failed to expire", kind=admission.kind, call_id=key)
