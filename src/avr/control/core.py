"""
The shared base of the call-control mixins (being replaced by components): the constructor's parameters, and the
collaborators the mixins reach (`CallRegistry`, `TaskGroup`, `AriLink`).
"""

from __future__ import annotations

import uuid
from typing import Callable

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from avr.config import INBOUND_POLICIES
from avr.control.ari_link import AriLink
from avr.control.call_registry import DEFAULT_RETENTION, CallRegistry
from avr.control.bridges import Bridges
from avr.control.channels import Channels
from avr.control.media_leg import MediaLegs
from avr.control.playbacks import Playbacks
from avr.control.recordings import Recordings
from avr.control.tasks import TaskGroup
from avr.interfaces import IAriClient, IAudioInjector, IEventSink


def _new_uuid() -> str:
    return str(uuid.uuid4())


class ControlCore:
    """
    State and helpers shared by the call-control mixins.

    :param ari: the ARI REST client, or ``None`` when ARI is not configured (operations then raise `Unavailable`).
    :param clock: time source for timestamps, the ended-call retention and every timeout.
    :param sink: receives every event (the /events hub and the events webhook).
    :param app: the Stasis application name.
    :param inbound_policy: ``answer``, ``ring`` or ``none`` (see `avr.config.INBOUND_POLICIES`).
    :param injector: plays uploaded PCM through an AudioSocket connection (``None``: `play_pcm` is unavailable).
    :param audiosocket_address: ``host:port`` where Asterisk reaches avr's AudioSocket server.
    :param retention: seconds an ended call stays readable.
    :param setup_timeout: seconds to wait for Asterisk during multi-step setups (a media channel entering Stasis).
    :param new_id: makes the ids of originated channels and created bridges (UUID4 strings by default).
    :param pcm_lead_in: seconds of silence played before uploaded audio, so that the moment between Asterisk
        connecting the media channel and avr bridging it (when Asterisk drops what it receives) loses no audio.
    """

    log = Logger()

    def __init__(
        self,
        ari: IAriClient | None,
        clock: IReactorTime,
        sink: IEventSink,
        app: str,
        inbound_policy: str = "answer",
        injector: IAudioInjector | None = None,
        audiosocket_address: str | None = None,
        retention: float = DEFAULT_RETENTION,
        setup_timeout: float = 10.0,
        new_id: Callable[[], str] | None = None,
        pcm_lead_in: float = 0.3,
    ) -> None:
        if inbound_policy not in INBOUND_POLICIES:
            raise ValueError(f"inbound_policy must be one of {', '.join(INBOUND_POLICIES)}, got {inbound_policy!r}")
        self.clock = clock
        self.app = app
        self.inbound_policy = inbound_policy
        self.injector = injector
        self.setup_timeout = setup_timeout
        self.pcm_lead_in = pcm_lead_in
        self._new_id = new_id or _new_uuid
        self.tasks = TaskGroup(clock)
        self.link = AriLink(ari, self.tasks)
        self.registry = CallRegistry(clock, sink, self.tasks, retention)
        self.bridges = Bridges(self.registry, self.link, clock, self._new_id)
        self.recordings = Recordings(self.registry, self.link, clock)
        self.registry.on_call_ended(self.recordings.call_ended)
        self.legs = MediaLegs(self.link, self.tasks, app, audiosocket_address, setup_timeout)
        self.playbacks = Playbacks(self.registry, self.link, clock, self.legs, injector, self._new_id, pcm_lead_in)
        self.registry.on_call_ended(self.legs.call_ended)
        self.registry.on_call_ended(self.playbacks.call_ended)
        self.registry.on_call_ended(self.bridges.call_ended)
        self.channels = Channels(self.registry, self.link, self.tasks, clock, self.legs, app, inbound_policy,
                                 self._new_id)

    @property
    def audiosocket_address(self) -> str | None:
        """``host:port`` where Asterisk reaches avr's AudioSocket server (for media legs); settable."""
        return self.legs.address

    @audiosocket_address.setter
    def audiosocket_address(self, address: str | None) -> None:
        self.legs.address = address

    # -- status -------------------------------------------------------------------------------------------------

    def status(self) -> dict:
        """``{"ari", "ariReason", "app", "inboundPolicy", "activeCalls", "bridges"}`` (see `ICallControl.status`)."""
        return {
            "ari": self.link.state,
            "ariReason": self.link.reason,
            "app": self.app,
            "inboundPolicy": self.inbound_policy,
            "activeCalls": len(self.registry.active()),
            "bridges": len(self.bridges),
        }

    def snapshot(self) -> dict:
        """``{"calls": [active calls], "bridges": [bridges]}`` for a new /events subscriber."""
        return {
            "calls": [c.to_dict() for c in self.registry.active()],
            "bridges": [b.to_dict() for b in self.bridges],
        }

    def stop(self) -> Deferred:
        """
        Shut down: cancel every timer, fail pending waits, stop uploaded-audio playbacks (their media channels are
        hung up). Live calls are left alone.

        :return: a Deferred firing once the ARI requests still in flight (cleanups) are done.
        """
        self.tasks.stop()
        self.channels.stop()
        self.registry.stop()
        self.legs.stop()
        return self.tasks.drained()
