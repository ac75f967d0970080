"""Tests for avr.registrations: POST /call registrations waiting in the admissions registry for their connection."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.task import Clock
from zope.interface.verify import verifyObject

from avr.admissions import Admissions
from avr.interfaces import IAdmission
from avr.registrations import Registration, Registrations, canonical_uuid
from fakes import FakeAdmission, FakeLeg

U = "935652e3-7c59-4edc-b17f-9646a9c2a265"


class World:
    """Registrations on an admissions registry; started calls are recorded as ``(uuid, sts_url, payload)``."""

    def __init__(self) -> None:
        self.clock = Clock()
        self.admissions = Admissions(self.clock)
        self.started: list[tuple[str, Any, Any]] = []
        self.regs = Registrations(self.admissions, 60, self.start)

    def start(self, leg: Any, sts_url: Any, payload: Any) -> Any:
        self.started.append((leg.uuid, sts_url, payload))
        return "the call's sink"


def test_register_then_admit():
    """A registration waits as an admission (any case); its connection starts the call with its URL and payload."""
    world = World()
    world.clock.advance(100)
    stored = world.regs.register(U.upper(), {"from": "2000"}, "ws://h/?from=2000", False)
    assert stored == Registration(U, {"from": "2000"}, "ws://h/?from=2000", False, 100.0)
    assert len(world.regs) == 1 and U in world.regs and U.upper() in world.regs
    assert world.regs.get(U.upper()) == stored
    assert len(world.clock.getDelayedCalls()) == 1
    admission = world.admissions.take(U)
    verifyObject(IAdmission, admission)
    assert admission.kind == "registration"
    assert admission.admit(FakeLeg(U)) == "the call's sink"
    assert world.started == [(U, "ws://h/?from=2000", {"from": "2000"})]
    assert len(world.regs) == 0 and U not in world.regs
    assert world.clock.getDelayedCalls() == []


def test_registration_expires_after_ttl(log_events):
    """Not taken within the TTL, a registration disappears, and that is logged."""
    world = World()
    world.regs.register(U, {}, None, False)
    world.clock.advance(59.9)
    assert U in world.regs
    world.clock.advance(0.1)
    assert U not in world.regs and world.admissions.take(U) is None
    assert world.clock.getDelayedCalls() == []
    assert any("registration expired" in e.get("log_format", "") for e in log_events)


def test_reregistering_replaces_and_rearms():
    """Registering the same uuid again replaces the registration and restarts its TTL with one timer."""
    world = World()
    world.regs.register(U, {"n": 1}, "ws://a/", False)
    world.clock.advance(50)
    world.regs.register(U, {"n": 2}, "ws://b/", True)
    assert len(world.clock.getDelayedCalls()) == 1 and len(world.regs) == 1
    world.clock.advance(20)  # 70 s after the first, 20 s after the second
    taken = world.regs.get(U)
    assert taken is not None and taken.payload == {"n": 2} and taken.sts_url == "ws://b/" and taken.override
    assert taken.registered_at == 50


def test_only_registrations_are_counted():
    """len() and `in` see registrations, not other expected connections (uploaded audio)."""
    world = World()
    other = "00000000-0000-0000-0000-000000000001"
    world.admissions.expect(other, FakeAdmission("playback"), 10)
    world.regs.register(U, {}, None, False)
    assert len(world.regs) == 1 and len(world.admissions) == 2
    assert other not in world.regs and world.regs.get(other) is None


def test_register_refuses_non_canonical_uuid():
    """register() only accepts the 8-4-4-4-12 form (any case), normalised to lower case."""
    world = World()
    for bad in ["not-a-uuid", "{" + U + "}", U.replace("-", ""), "urn:uuid:" + U, U + " ", ""]:
        with pytest.raises(ValueError):
            world.regs.register(bad, {}, None, False)
    assert len(world.admissions) == 0
    assert canonical_uuid("935652E3-7C59-4EDC-B17F-9646A9C2A265") == U
