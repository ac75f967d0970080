"""
Where the real Asterisk captures live: the one place that locates them.

The captures ship next to the fakes that replay them, in ``asterisk/`` beside this module (``asterisk/README.md``
describes them): ``asterisk/audiosocket/`` (AudioSocket byte streams) and ``asterisk/ari/`` (ARI REST + events
exchanges). ``$AVR_FIXTURES`` overrides the location for a run.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

#: Environment variable naming another captures directory (the ``asterisk`` folder, or one of its subfolders).
FIXTURES_ENV = "AVR_FIXTURES"

#: The captures shipped with avr.
BUNDLED = Path(__file__).resolve().parent / "asterisk"

CaptureKind = Literal["audiosocket", "ari"]

# A folder holds captures of a kind when it has files like these.
_MARKERS: dict[str, str] = {"audiosocket": "*.bin", "ari": "*.json"}


def captures_dir(kind: CaptureKind, fixtures: str | os.PathLike[str] | None = None) -> Path:
    """
    The directory holding one kind of capture.

    :param kind: ``"audiosocket"`` or ``"ari"``.
    :param fixtures: the ``asterisk`` captures folder (with a ``kind`` subfolder), or a folder holding the captures
        themselves; default ``$AVR_FIXTURES``, else the captures shipped with avr.
    :raises FileNotFoundError: no such directory.
    """
    if fixtures is None:
        fixtures = os.environ.get(FIXTURES_ENV) or BUNDLED
    base = Path(fixtures)
    for candidate in (base / kind, base):
        if candidate.is_dir() and any(candidate.glob(_MARKERS[kind])):
            return candidate
    raise FileNotFoundError(f"no {kind} captures under {base} (set {FIXTURES_ENV} to the asterisk captures folder)")


__all__ = ["BUNDLED", "FIXTURES_ENV", "CaptureKind", "captures_dir"]
