"""INBOUND_RING_DELAY_MS: an inbound call rings (ringback for the caller), then avr answers it, as asterisk-api."""

from __future__ import annotations

from avr.control.records import call_id_for
from tests.ari_fakes import make, stasis_end, stasis_start, state_change


def test_inbound_call_rings_then_is_answered_after_the_delay() -> None:
    """Ring at once, answer exactly when the delay has passed, answered once."""
    h = make("answer", ring_delay=3.0)
    h.feed(stasis_start("in-1", "Ring"))
    assert [r.path for r in h.ari.find("POST")] == ["/channels/in-1/ring"]
    assert h.run(h.control.get_call("in-1"))["state"] == "ringing"
    h.clock.advance(2.999)
    assert not h.ari.find("POST", "/channels/in-1/answer")
    h.clock.advance(0.001)
    assert [r.path for r in h.ari.find("POST")] == ["/channels/in-1/ring", "/channels/in-1/answer"]
    h.feed(state_change("in-1", "Up"))
    assert [e["data"]["state"] for e in h.sink.of("call.state_changed")] == ["answered"]


def test_caller_gone_while_ringing_is_never_answered() -> None:
    """A caller who hangs up during the delay is not answered, and the call's timer is released at its end."""
    h = make("answer", ring_delay=3.0)
    h.feed(stasis_start("in-1", "Ring"))
    assert [c.getTime() for c in h.clock.getDelayedCalls()] == [3.0]
    h.feed(stasis_end("in-1"))
    assert h.sink.types(call_id_for("in-1"))[-1] == "call.ended"
    assert 3.0 not in [c.getTime() for c in h.clock.getDelayedCalls()]  # (what is left: the ended call's retention)
    h.clock.advance(10)
    assert not h.ari.find("POST", "/channels/in-1/answer")


def test_answered_through_the_api_while_ringing_is_not_answered_twice() -> None:
    """POST /calls/:id/answer during the delay answers it; the timer then does nothing."""
    h = make("answer", ring_delay=3.0)
    h.feed(stasis_start("in-1", "Ring"))
    h.run(h.control.answer("in-1"))
    h.clock.advance(3)
    assert len(h.ari.find("POST", "/channels/in-1/answer")) == 1


def test_no_delay_answers_at_once_without_ringing() -> None:
    """INBOUND_RING_DELAY_MS=0: answered at once, no ring indication."""
    h = make("answer", ring_delay=0.0)
    h.feed(stasis_start("in-1", "Ring"))
    assert [r.path for r in h.ari.find("POST")] == ["/channels/in-1/answer"]
