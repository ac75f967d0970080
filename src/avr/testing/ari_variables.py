"""
Channel and global variables of the fake Asterisk, with the few dialplan functions avr and the captures use
(``CHANNEL()``, ``CALLERID()``, ``CONNECTEDLINE()``) and ``${VAR}`` substitution for the dialplan.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from attrs import define, field

from avr.testing.ari_applications import Applications
from avr.testing.ari_channels import Channels
from avr.testing.ari_model import Channel
from avr.testing.ari_params import AriHttpError, parse_caller_id


@define(eq=False)
class Variables:
    """
    Reads and writes variables.

    :param channels: sends ChannelVarset, ChannelCallerId.
    :param apps: sends ChannelConnectedLine.
    :param config_globals: the ``[globals]`` of the configuration, restored by every restart.
    """

    _channels: Channels
    _apps: Applications
    _config_globals: Mapping[str, str]
    globals: dict[str, str] = field(init=False)

    def __attrs_post_init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Globals as configured (a restart)."""
        self.globals = dict(self._config_globals)

    def get(self, ch: Channel, name: str) -> str:
        """``GET /channels/{id}/variable``: a channel variable, a global, or a dialplan function's value."""
        if name.endswith(")"):
            value = self._read_function(ch, name)
            if value is None:
                raise AriHttpError(500, "Unable to read provided function")
            return value
        if name in ch.variables:
            return ch.variables[name]
        if name in self.globals:
            return self.globals[name]
        raise AriHttpError(404, "Provided variable was not found")

    @staticmethod
    def _read_function(ch: Channel, expr: str) -> str | None:
        match = re.fullmatch(r"([A-Z_]+)\((.*)\)", expr)
        if not match:
            return None
        func, arg = match.group(1), match.group(2).strip().lower()
        if func == "CHANNEL":
            values = {"name": ch.name, "uniqueid": ch.id, "linkedid": ch.id, "state": ch.state,
                      "language": ch.language, "channeltype": ch.tech, "context": ch.context, "exten": ch.exten,
                      "audionativeformat": f"({ch.formats.split(',')[0] if ch.formats else 'ulaw'})"}  # fmt: skip
            return values.get(arg)
        if func == "CALLERID":
            return {"name": ch.caller_name, "num": ch.caller_number, "number": ch.caller_number,
                    "all": f'"{ch.caller_name}" <{ch.caller_number}>'}.get(arg)  # fmt: skip
        if func == "CONNECTEDLINE":
            return {"name": ch.connected_name, "num": ch.connected_number, "number": ch.connected_number}.get(arg)
        return None

    def set(self, ch: Channel, name: str, value: str | None, report_events: bool = False) -> None:
        """``POST /channels/{id}/variable`` (no value unsets; ``report_events`` adds it to ``channelvars``)."""
        if report_events and name not in ch.reported:
            ch.reported.append(name)
        if not self.assign(ch, name, value):
            raise AriHttpError(400, "Failed to execute function")

    def assign_quietly(self, ch: Channel, variables: Mapping[str, str] | None) -> None:
        """The ``variables`` of an originate: set before the channel exists for anyone, so without events."""
        for name, value in (variables or {}).items():
            self.assign(ch, name, value, quiet=True)

    def assign(self, ch: Channel, name: str, value: str | None, quiet: bool = False) -> bool:
        """Set a variable or ``CALLERID(...)``/``CONNECTEDLINE(...)``; False for a function that cannot be set."""
        if not name.endswith(")"):
            if quiet:
                if value is None:
                    ch.variables.pop(name, None)
                else:
                    ch.variables[name] = value
            else:
                self._channels.setvar(ch, name, value)
            return True
        match = re.fullmatch(r"(CALLERID|CONNECTEDLINE)\((\w+)\)", name)
        if not match:
            return False
        which, field_name = match.group(1), match.group(2).lower()
        prefix = "caller" if which == "CALLERID" else "connected"
        if field_name == "name":
            setattr(ch, f"{prefix}_name", value or "")
        elif field_name in ("num", "number"):
            setattr(ch, f"{prefix}_number", value or "")
        elif field_name == "all":
            name_v, num_v = parse_caller_id(value or "")
            setattr(ch, f"{prefix}_name", name_v)
            setattr(ch, f"{prefix}_number", num_v)
        else:
            return False
        if not quiet:
            if which == "CALLERID":
                self._channels.caller_id_event(ch)
            else:
                self._apps.channel_event("ChannelConnectedLine", ch)
        return True

    def substitute(self, ch: Channel, data: str) -> str:
        """``${VAR}`` in dialplan application data (channel variables, then globals, else empty)."""
        return re.sub(r"\$\{([^}]+)\}", lambda m: ch.variables.get(m.group(1), self.globals.get(m.group(1), "")),
                      data)  # fmt: skip
