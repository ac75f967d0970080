"""
`AriLink`: the call-control model's way to Asterisk. The ARI REST client (or its absence), whether the events
socket is connected, and the clean-up requests whose failure only gets logged.
"""

from __future__ import annotations

from attrs import define, field
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from avr.ari.client import path_segment
from avr.ari.errors import AriError, AriUnavailable
from avr.control.errors import Unavailable
from avr.control.tasks import TaskGroup
from avr.interfaces import IAriClient


@define(eq=False)
class AriLink:
    """
    :param client: the ARI REST client, or ``None`` when ARI is not configured (operations then raise
        `Unavailable`).
    :param tasks: runs the clean-up requests in the background.
    """

    client: IAriClient | None
    tasks: TaskGroup
    #: ``not configured``, ``connecting``, ``connected`` or ``disconnected`` (the events socket).
    state: str = field(init=False)
    #: Why the events socket dropped, while ``disconnected``.
    reason: str | None = field(default=None, init=False)
    log = Logger()

    def __attrs_post_init__(self) -> None:
        self.state = "not configured" if self.client is None else "connecting"

    @property
    def connected(self) -> bool:
        """The events socket is up."""
        return self.state == "connected"

    def up(self) -> None:
        """The events socket connected."""
        self.state, self.reason = "connected", None

    def down(self, reason: str) -> None:
        """The events socket dropped."""
        self.state, self.reason = "disconnected", reason

    def require(self) -> IAriClient:
        """The client. :raises Unavailable: ARI is not configured."""
        if self.client is None:
            raise Unavailable("ARI is not configured (set ARI_URL, ARI_USERNAME and ARI_PASSWORD)")
        return self.client

    def require_connected(self) -> IAriClient:
        """The client, while the events socket is up. :raises Unavailable: not configured or not connected."""
        client = self.require()
        if not self.connected:
            raise Unavailable("ARI is not connected: Asterisk may be unreachable")
        return client

    async def gone(self, path: str) -> bool:
        """
        Whether Asterisk answers ``GET path`` with 404: the thing is gone. An answer, or another error, is no proof.

        :raises Unavailable: ARI is not configured.
        """
        try:
            await self.require().request("GET", path)
        except AriError as e:
            return e.status == 404
        return False

    async def quietly(self, method: str, path: str, params: dict | None = None) -> None:
        """An ARI request whose failure is only logged (404 = already gone, not even that)."""
        if self.client is None:
            return
        try:
            await self.client.request(method, path, params)
        except AriError as e:
            if e.status != 404:
                self.log.warn("ARI {method} {path} failed during cleanup: {error}", method=method, path=path,
                              error=e)
        except AriUnavailable as e:
            self.log.warn("ARI {method} {path} failed during cleanup: {error}", method=method, path=path, error=e)

    def in_background(self, method: str, path: str, what: str, params: dict | None = None) -> Deferred:
        """`quietly`, as a background task of `tasks`."""
        return self.tasks.spawn(self.quietly(method, path, params), what)

    def hang_up_quietly(self, channel_id: str, reason: str = "normal") -> Deferred:
        """Hang up ``channel_id`` in the background (already gone is fine)."""
        return self.in_background("DELETE", f"/channels/{path_segment(channel_id)}", f"hanging up {channel_id}",
                                  {"reason": reason})

    def destroy_bridge_quietly(self, bridge_id: str) -> Deferred:
        """Destroy ``bridge_id`` in the background (already gone is fine)."""
        return self.in_background("DELETE", f"/bridges/{path_segment(bridge_id)}", f"destroying bridge {bridge_id}")
