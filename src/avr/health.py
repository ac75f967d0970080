"""
What ``GET /health`` (liveness: always 200) and ``GET /ready`` (readiness: 503 with the reasons) report, read from
avr's components at each request.

avr is ready when its AudioSocket port is open, ARI (when configured) is connected, it is not draining and it is
below ``MAX_CALLS``: a load balancer or orchestrator should send it new calls. It is alive whenever it answers.
"""

from __future__ import annotations

from typing import Any, Callable

from attrs import define

from avr.calls import CallManager
from avr.control.model import CallControl
from avr.drain import Drain


@define(eq=False)
class Health:
    """
    :param calls: the live AudioSocket calls, and whether new ones are refused.
    :param control: call control over ARI, ``None`` when ARI is not configured.
    :param drain: whether avr is draining.
    :param listening: whether the AudioSocket port is open.
    :param mode: what answers the calls: ``sts``, ``pipeline`` or ``echo`` (`avr.config.agent_mode`).
    """

    calls: CallManager
    control: CallControl | None
    drain: Drain
    listening: Callable[[], bool]
    mode: str

    def fields(self) -> dict[str, Any]:
        """
        The component states of ``GET /health``: ``ari`` is asterisk-api's boolean (clients test
        ``if (health.ari)``), ``ariState`` the state in words (``connected``, ``connecting``, ``disconnected``,
        ``not configured``).
        """
        fields: dict[str, Any] = {
            "ready": not self.not_ready(),
            "audiosocket": "listening" if self.listening() else "not listening",
            "audiosocketCalls": len(self.calls),
            "maxCalls": self.calls.max_calls or None,
            "draining": self.drain.draining,
            "mode": self.mode,
        }
        if self.control is None:
            fields["ariState"] = "not configured"
        else:
            fields.update(self.control.status())
            fields["ariState"] = fields["ari"]
        fields["ari"] = fields["ariState"] == "connected"
        return fields

    def not_ready(self) -> list[dict[str, str]]:
        """Why avr should get no new calls now (``GET /ready``'s ``reasons``), each ``{"component", "reason"}``;
        empty when it is ready."""
        reasons = []
        if self.drain.draining:
            reasons.append({"component": "drain", "reason": "avr is draining (shutting down): it takes no new calls"})
        if not self.listening():
            reasons.append({"component": "audiosocket", "reason": "the AudioSocket port is not open"})
        if self.control is not None:
            status = self.control.status()
            if status["ari"] != "connected":
                why = f": {status['ariReason']}" if status.get("ariReason") else ""
                reasons.append({"component": "ari", "reason": f"ARI is {status['ari']}{why}"})
        refusal = self.calls.refusal()
        if refusal is not None and refusal.code == "max_calls":
            reasons.append({"component": "calls", "reason": refusal.message})
        return reasons


__all__ = ["Health"]
