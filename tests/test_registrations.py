"""Tests for avr.registrations: POST /call registrations waiting for their AudioSocket connection."""

from __future__ import annotations

import pytest
from twisted.internet.task import Clock

from avr.registrations import Registration, Registrations, canonical_uuid

U = "935652e3-7c59-4edc-b17f-9646a9c2a265"


def test_register_and_take():
    """A registration is returned once by take(), any case, and its timer is cancelled."""
    clock = Clock()
    clock.advance(100)
    regs = Registrations(clock, 60)
    stored = regs.register(U.upper(), {"from": "2000"}, "ws://h/?from=2000", False)
    assert stored == Registration(U, {"from": "2000"}, "ws://h/?from=2000", False, 100.0)
    assert len(regs) == 1 and U in regs and U.upper() in regs
    assert len(clock.getDelayedCalls()) == 1
    assert regs.take(U.upper()) == stored
    assert regs.take(U) is None
    assert len(regs) == 0
    assert clock.getDelayedCalls() == []


def test_registration_expires_after_ttl():
    """Not taken within the TTL, a registration disappears (and is logged)."""
    clock = Clock()
    regs = Registrations(clock, 60)
    regs.register(U, {}, None, False)
    clock.advance(59.9)
    assert U in regs
    clock.advance(0.1)
    assert U not in regs
    assert regs.take(U) is None
    assert clock.getDelayedCalls() == []


def test_reregistering_replaces_and_rearms():
    """Registering the same uuid again replaces the registration and restarts its TTL with one timer."""
    clock = Clock()
    regs = Registrations(clock, 60)
    regs.register(U, {"n": 1}, "ws://a/", False)
    clock.advance(50)
    regs.register(U, {"n": 2}, "ws://b/", True)
    assert len(clock.getDelayedCalls()) == 1
    clock.advance(20)  # 70 s after the first, 20 s after the second
    taken = regs.take(U)
    assert taken is not None and taken.payload == {"n": 2} and taken.sts_url == "ws://b/" and taken.override
    assert taken.registered_at == 50


def test_clear_cancels_every_timer():
    """clear() (shutdown) forgets everything and leaves no timer behind."""
    clock = Clock()
    regs = Registrations(clock, 60)
    regs.register(U, {}, None, False)
    regs.register("00000000-0000-0000-0000-000000000001", {}, None, False)
    regs.clear()
    assert len(regs) == 0
    assert clock.getDelayedCalls() == []


def test_register_refuses_non_canonical_uuid():
    """register() only accepts the 8-4-4-4-12 form (any case), normalised to lower case."""
    regs = Registrations(Clock(), 60)
    for bad in ["not-a-uuid", "{" + U + "}", U.replace("-", ""), "urn:uuid:" + U, U + " ", ""]:
        with pytest.raises(ValueError):
            regs.register(bad, {}, None, False)
    assert len(regs) == 0
    assert canonical_uuid("935652E3-7C59-4EDC-B17F-9646A9C2A265") == U
