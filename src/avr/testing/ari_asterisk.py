"""
The composition root of the simulated Asterisk: every component of the fake, built here with its collaborators,
and the operations that concern them all (restart, teardown). `avr.testing.ari.FakeAsterisk` puts the HTTP,
WebSocket and scenario controls around it.

Every rule the components follow reproduces what Asterisk 22.10.1 did in the captured ARI exchanges (the "facts"
of ``avr/testing/captures/asterisk/README.md``); where they are silent, the rule follows the Asterisk source and says
so.

================  =====================================================================================
component         its job
================  =====================================================================================
`clock`           wall-clock time, ARI timestamps, timers owned by channels, media and commands
`apps`            Stasis applications, their subscriptions and filters, event publication
`channels`        the channel registry, ids and names, channel-change events
`variables`       channel and global variables, dialplan functions
`stasis`          entering, leaving and moving between applications; the control's checks
`commands`        each control's command queue (playbacks, recordings, DTMF one at a time)
`bridges`         bridges and their members
`playbacks`       channel and bridge playbacks
`recordings`      live recordings and the spool of stored ones
`dtmf`            digits sent, received, and pressed by far ends
`hangups`         how channels end (DELETE, far end, dialplan, shutdown)
`dialplan`        extensions.conf and its interpreter, ``continue``
`dialer`          endpoints, originate, create + dial, answering, inbound calls
`media_channels`  externalMedia (AudioSocket, RTP) and snoop channels
================  =====================================================================================
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from typing import Any

from twisted.internet.interfaces import IReactorTime

from avr.testing.ari_applications import Applications
from avr.testing.ari_bridges import Bridges
from avr.testing.ari_channels import Channels
from avr.testing.ari_clock import AsteriskClock
from avr.testing.ari_dialing import Dialer
from avr.testing.ari_dialplan import Dialplan, DialplanStep
from avr.testing.ari_dtmf import Dtmf
from avr.testing.ari_hangups import Hangups
from avr.testing.ari_media_channels import MediaChannels
from avr.testing.ari_model import Bridge
from avr.testing.ari_playbacks import Playbacks
from avr.testing.ari_recordings import Recordings
from avr.testing.ari_stasis import CommandQueue, Stasis
from avr.testing.ari_variables import Variables


class Asterisk:
    """
    The simulated Asterisk (see the module docstring for its components).

    :param clock: an ``IReactorTime`` (``task.Clock`` in unit tests).
    :param wall_start: the wall-clock time (epoch seconds) at ``clock.seconds()`` now; ids and timestamps use it.
    :param contexts: ``{context: {exten: [DialplanStep]}}`` for Local channels.
    :param sounds: ``{name: seconds}`` for ``sound:`` media and ``Playback()``.
    :param new_id: makes bridge and playback ids.
    :param global_variables: dialplan globals, restored by every restart.
    :param dtmf_loopback: see `avr.testing.ari.FakeAsterisk`.
    :param connect_audiosocket: ``(host, port) -> IStreamClientEndpoint`` for externalMedia AudioSocket channels.
    :param history: keep every delivered event (`Applications.delivered`).
    """

    def __init__(
        self,
        clock: IReactorTime,
        *,
        wall_start: float,
        contexts: dict[str, dict[str, list[DialplanStep]]],
        sounds: Mapping[str, float],
        new_id: Callable[[], str] | None = None,
        global_variables: Mapping[str, str] | None = None,
        dtmf_loopback: bool = False,
        connect_audiosocket: Callable[[str, int], Any] | None = None,
        history: bool = True,
    ) -> None:
        new_id = new_id or (lambda: str(uuid.uuid4()))
        self.clock = AsteriskClock(clock, wall_start)
        self.apps = Applications(self.clock, history)
        self.channels = Channels(self.clock, self.apps)
        self.variables = Variables(self.channels, self.apps, dict(global_variables or {}))
        # Two collaborators come later (the dependency is circular, as in Asterisk): a command that held up a
        # hangup ends its channel, and a Local half answering in the dialplan answers the half being dialled.
        self.commands = CommandQueue(self.clock, end_channel=lambda ch, cause: self.hangups.end(ch, cause))
        self.stasis = Stasis(self.apps, self.channels, self.commands)
        self.bridges = Bridges(self.clock, self.apps, self.channels, new_id, stop_media=self._stop_bridge_media)
        self.recordings = Recordings(self.clock, self.apps, self.bridges, self.commands)
        self.playbacks = Playbacks(self.clock, self.apps, self.bridges, self.commands, sounds, self.recordings.stored,
                                   new_id)  # fmt: skip
        self.dtmf = Dtmf(self.clock, self.apps, self.commands, self.recordings, loopback=dtmf_loopback)
        self.hangups = Hangups(self.clock, self.apps, self.channels, self.bridges, self.stasis, self.playbacks)
        self.dialplan = Dialplan(self.clock, self.apps, self.channels, self.variables, self.stasis, self.dtmf,
                                 self.hangups, contexts, sounds, answer=lambda ch: self.dialer.answer(ch))  # fmt: skip
        self.dialer = Dialer(self.clock, self.apps, self.channels, self.variables, self.stasis, self.dialplan,
                             self.hangups)  # fmt: skip
        self.media_channels = MediaChannels(self.clock, self.apps, self.channels, self.variables, self.stasis,
                                            self.dialer, self.hangups, connect_audiosocket)  # fmt: skip
        self.startup_time = self.clock.wall()

    def _stop_bridge_media(self, bridge: Bridge) -> None:
        self.playbacks.stop_on(bridge)
        self.recordings.stop_on(bridge)

    def reset(self) -> None:
        """Forget every channel, bridge, playback, live recording and application (a restart); counters restart."""
        for part in (self.channels, self.bridges, self.playbacks, self.recordings, self.apps, self.variables):
            part.reset()
        self.startup_time = self.clock.wall()

    def cancel_all(self) -> None:
        """Cancel every pending timer and close every AudioSocket connection (stop, restart, test teardown)."""
        for ch in self.channels.by_id.values():
            self.clock.cancel(ch)
            self.commands.cancel_timers(ch)
        self.media_channels.close_all()
        self.playbacks.cancel_timers()
        self.recordings.cancel_timers()

    def shutdown(self) -> None:
        """``core restart now``: every channel hangs up (see `Hangups.shutdown`), every bridge goes, media stops."""
        self.hangups.shutdown()
        for bridge in list(self.bridges.by_id.values()):
            self.bridges.drop(bridge)
        self.playbacks.cancel_timers()
        self.recordings.cancel_timers()
