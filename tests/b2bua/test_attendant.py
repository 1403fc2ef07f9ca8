"""The AI attendant's call flows through the sans-I/O core: each trigger, the fallbacks, and the
attended call's life (ACK, BYE either way, re-INVITE, INFO, a callee answering too late).

The attendant backend here answers with the real SDP answer writer
(:func:`pbx_edge.media.local_answer.build_answer`) at fixed relay ports, since the core runs on
pass-through media; whether it is "up" is the one thing a test sets.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from pbx_edge.b2bua.call import Call, CallState, EndReason
from pbx_edge.b2bua.core import EdgeCore
from pbx_edge.media.interface import MediaSession, MediaUnavailable, SdpKind, Side
from pbx_edge.media.local_answer import build_answer
from pbx_edge.media.sdp import SessionDescription, rewrite_for_relay
from pbx_edge.sip.message import Request, Response

from .harness import CALLEE, CALLER, SDP, Wire, ack_for, answer, from_caller, invite, make_core

STATIC = {"prefix": "", "target": "sip:127.0.0.1:5070"}


class OfferKeeper:
    """Pass-through media that remembers the last SDP each side sent (what a relay session keeps)."""

    def __init__(self) -> None:
        self.sdp: dict[Side, bytes] = {}

    def rewrite(self, from_side: Side, kind: SdpKind, sdp: bytes) -> bytes:
        self.sdp[from_side] = sdp
        return sdp

    def close(self) -> None:
        pass


class OfferKeepingMedia:
    def open_session(self, call_id: str) -> MediaSession:
        return OfferKeeper()


class SdpAttendant:
    """An AttendantBackend that answers the caller's last offer at relay port 30000."""

    def __init__(self, up: bool = True) -> None:
        self.up = up
        self.answered: list[str] = []

    def available(self) -> bool:
        return self.up

    def answer_sdp(self, call: Call) -> bytes:
        self.answered.append(call.id)
        assert isinstance(call.media, OfferKeeper)
        offer = call.media.sdp.get(Side.CALLER)
        if offer is None:
            raise MediaUnavailable("no offer")
        return bytes(build_answer(SessionDescription.parse(offer), "127.0.0.1", [30000, 30002]))

    def transfer_offer(self, call: Call) -> bytes:
        ours = SessionDescription.parse(self.answer_sdp(call))
        return bytes(rewrite_for_relay(ours, "127.0.0.1", [30004, 30006][: len(ours.media)]))


def _core(
    up: bool = True, *, routes: list[dict[str, Any]] | None = None, **calls: Any
) -> tuple[EdgeCore, Wire, SdpAttendant, list[str]]:
    extensions = calls.pop("extensions", {})
    core = make_core(
        OfferKeepingMedia(),
        calls={"no_answer_timeout": 10, **calls},
        routing={"static_routes": [STATIC] if routes is None else routes, "extensions": extensions},
    )
    backend = SdpAttendant(up)
    core.attendant = backend
    events: list[str] = []
    core.listeners.append(lambda name, call: events.append(name))
    return core, Wire(core), backend, events


def _ok_to_caller(wire: Wire) -> Response:
    ok = wire.take_one(CALLER, "200")
    assert isinstance(ok, Response)
    return ok


def _assert_answered_by_ai(core: EdgeCore, ok: Response, trigger: str) -> Call:
    (call,) = core.calls.values()
    assert call.state is CallState.CONFIRMED and call.b is None
    assert core.attended[call.id].trigger == trigger
    body = ok.body.decode()
    assert "m=audio 30000 RTP/AVP 0" in body and "c=IN IP4 127.0.0.1" in body  # PCMU, first offered
    assert ok.headers.get("Content-Type") == "application/sdp"
    assert ok.contacts and ok.to_tag == call.a.dialog.local_tag
    return call


# --- no_answer ----------------------------------------------------------------------------------
def test_no_answer_hands_the_caller_to_the_ai_and_cancels_the_callee() -> None:
    core, wire, _, events = _core(ai_answer={"no_answer": "ai"})
    a_inv = invite()
    wire.deliver(a_inv, CALLER)
    b_inv = wire.take_one(CALLEE, "INVITE")
    assert isinstance(b_inv, Request)
    wire.deliver(answer(b_inv, 180, "Ringing"), CALLEE)
    wire.advance(10.1)
    ok = _ok_to_caller(wire)
    call = _assert_answered_by_ai(core, ok, "no_answer")
    assert wire.take_one(CALLEE, "CANCEL")
    assert core.call_for(b_inv.call_id) is None  # the callee leg is no longer part of the call
    wire.deliver(answer(b_inv, 487, "Request Terminated"), CALLEE)
    assert wire.take_one(CALLEE, "ACK")  # the INVITE transaction's own ACK
    assert call.state is CallState.CONFIRMED
    wire.deliver(ack_for(a_inv, ok, CALLER, "z9hG4bKack1"), CALLER)
    wire.advance(40)  # no 2xx retransmission once ACKed, no timers ending the call
    assert [m for m in wire.take(CALLER) if isinstance(m, Response) and m.status == 200] == []
    assert core.calls == {call.id: call}
    wire.take(CALLEE)  # CANCEL retransmissions: this callee never answers the CANCEL itself
    wire.deliver(from_caller("BYE", a_inv, ok, 2, "z9hG4bKbye1"), CALLER)
    assert wire.take_one(CALLER, "200")
    assert wire.take(CALLEE) == []  # no BYE to a leg that never answered
    assert core.calls == {} and core.attended == {}
    assert call.end_reason is EndReason.CALLER_BYE and call.final_status == 200
    assert events == ["call.started", "call.ringing", "call.answered", "call.ended"]


def test_no_answer_falls_back_to_the_configured_reject_when_the_ai_is_down() -> None:
    core, wire, backend, _ = _core(
        up=False,
        ai_answer={"no_answer": "ai"},
        extensions={"bob": {"no_answer_action": {"code": 486, "reason": "Busy Here"}}},
    )
    wire.deliver(invite(), CALLER)
    b_inv = wire.take_one(CALLEE, "INVITE")
    assert isinstance(b_inv, Request)
    wire.deliver(answer(b_inv, 180, "Ringing"), CALLEE)
    wire.advance(10.1)
    assert wire.take_one(CALLER, "486")
    assert wire.take_one(CALLEE, "CANCEL")
    assert backend.answered == [] and core.attended == {}


def test_no_answer_left_off_rejects_as_before() -> None:
    _, wire, backend, _ = _core()
    wire.deliver(invite(), CALLER)
    b_inv = wire.take_one(CALLEE, "INVITE")
    assert isinstance(b_inv, Request)
    wire.deliver(answer(b_inv, 180, "Ringing"), CALLEE)
    wire.advance(10.1)
    assert wire.take_one(CALLER, "480")
    assert backend.answered == []


def test_extension_override_beats_the_node_default() -> None:
    _, wire, backend, _ = _core(
        ai_answer={"no_answer": "ai"}, extensions={"bob": {"ai_answer": {"no_answer": "off"}}}
    )
    wire.deliver(invite(), CALLER)
    wire.take_one(CALLEE, "INVITE")
    wire.advance(10.1)
    assert wire.take_one(CALLER, "480")
    assert backend.answered == []


def test_no_sdp_offer_falls_back() -> None:
    _, wire, _, _ = _core(ai_answer={"no_answer": "ai"})
    wire.deliver(invite(body=b""), CALLER)
    b_inv = wire.take_one(CALLEE, "INVITE")
    assert isinstance(b_inv, Request)
    wire.deliver(answer(b_inv, 180, "Ringing"), CALLEE)
    wire.advance(10.1)
    assert wire.take_one(CALLER, "480")


def test_callee_not_yet_ringing_is_cancelled_after_its_first_provisional() -> None:
    _, wire, _, _ = _core(ai_answer={"no_answer": "ai"})
    wire.deliver(invite(), CALLER)
    b_inv = wire.take_one(CALLEE, "INVITE")
    assert isinstance(b_inv, Request)
    wire.advance(10.1)
    _ok_to_caller(wire)
    wire.take(CALLER)
    assert [m for m in wire.take(CALLEE) if isinstance(m, Request) and m.method == "CANCEL"] == []
    wire.deliver(answer(b_inv, 180, "Ringing"), CALLEE)
    assert wire.take_one(CALLEE, "CANCEL")
    assert wire.take(CALLER) == []  # the ringing is not relayed to an answered caller


def test_a_callee_answering_too_late_is_acked_and_hung_up() -> None:
    core, wire, _, _ = _core(ai_answer={"no_answer": "ai"})
    a_inv = invite()
    wire.deliver(a_inv, CALLER)
    b_inv = wire.take_one(CALLEE, "INVITE")
    assert isinstance(b_inv, Request)
    wire.deliver(answer(b_inv, 180, "Ringing"), CALLEE)
    wire.advance(10.1)
    ok = _ok_to_caller(wire)
    wire.take(CALLER)
    assert wire.take_one(CALLEE, "CANCEL")
    wire.deliver(answer(b_inv, 200, "OK", body=SDP), CALLEE)  # crossed our CANCEL
    assert wire.take_one(CALLEE, "ACK")
    bye = wire.take_one(CALLEE, "BYE")
    assert isinstance(bye, Request) and bye.call_id == b_inv.call_id
    wire.deliver(answer(bye, 200, "OK", to_tag=None), CALLEE)
    assert wire.take(CALLER) == []  # the caller never hears of it
    assert len(core.calls) == 1
    wire.deliver(from_caller("BYE", a_inv, ok, 2, "z9hG4bKbye2"), CALLER)
    assert core.calls == {}


# --- busy ---------------------------------------------------------------------------------------
def test_busy_callee_hands_the_caller_to_the_ai() -> None:
    core, wire, _, events = _core(ai_answer={"busy": "ai"})
    wire.deliver(invite(), CALLER)
    b_inv = wire.take_one(CALLEE, "INVITE")
    assert isinstance(b_inv, Request)
    wire.deliver(answer(b_inv, 486, "Busy Here"), CALLEE)
    assert wire.take_one(CALLEE, "ACK")
    ok = _ok_to_caller(wire)
    _assert_answered_by_ai(core, ok, "busy")
    assert [m.status for m in wire.take(CALLER) if isinstance(m, Response)] == [100]
    assert events == ["call.started", "call.answered"]


def test_busy_is_relayed_when_the_ai_is_down() -> None:
    core, wire, _, _ = _core(up=False, ai_answer={"busy": "ai"})
    wire.deliver(invite(), CALLER)
    b_inv = wire.take_one(CALLEE, "INVITE")
    assert isinstance(b_inv, Request)
    wire.deliver(answer(b_inv, 600, "Busy Everywhere"), CALLEE)
    assert wire.take_one(CALLER, "600")
    assert core.calls == {}


# --- unregistered, away, after hours: answered at once ------------------------------------------
def test_unregistered_extension_is_answered_by_the_ai() -> None:
    core, wire, _, events = _core(routes=[], extensions={"bob": {"ai_answer": {"unregistered": "ai"}}})
    wire.deliver(invite(), CALLER)
    ok = _ok_to_caller(wire)
    call = _assert_answered_by_ai(core, ok, "unregistered")
    assert call.route_source == "attendant"
    assert wire.take(CALLEE) == []
    assert events == ["call.started", "call.answered"]


def test_unregistered_extension_without_the_ai_gets_480_and_a_record() -> None:
    core, wire, _, events = _core(
        up=False, routes=[], extensions={"bob": {"ai_answer": {"unregistered": "ai"}}}
    )
    wire.deliver(invite(), CALLER)
    assert wire.take_one(CALLER, "480")
    assert core.calls == {} and events == []  # refused before a call existed, as before


def test_unknown_user_is_not_an_unregistered_extension() -> None:
    _, wire, backend, _ = _core(routes=[], ai_answer={"unregistered": "ai"})
    wire.deliver(invite(), CALLER)
    assert wire.take_one(CALLER, "404")
    assert backend.answered == []


def test_away_extension_is_answered_at_once_and_rings_when_back() -> None:
    core, wire, _, _ = _core(ai_answer={"away": "ai"})
    core.away.set_away("bob", True)
    a_inv = invite()
    wire.deliver(a_inv, CALLER)
    ok = _ok_to_caller(wire)
    call = _assert_answered_by_ai(core, ok, "away")
    assert wire.take(CALLEE) == []
    wire.deliver(from_caller("BYE", a_inv, ok, 2, "z9hG4bKbye3"), CALLER)
    assert call.state is CallState.TERMINATED
    core.away.set_away("bob", False)
    wire.deliver(invite(call_id="a-call-2", branch="z9hG4bKcaller2"), CALLER)
    assert wire.take_one(CALLEE, "INVITE")


def test_away_with_the_trigger_off_or_the_ai_down_rings_as_usual() -> None:
    for up, trigger in ((True, "off"), (False, "ai")):
        core, wire, backend, _ = _core(up=up, ai_answer={"away": trigger})
        core.away.set_away("bob", True)
        wire.deliver(invite(), CALLER)
        assert wire.take_one(CALLEE, "INVITE")
        assert backend.answered == []


def _wall(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


def test_after_hours_goes_to_the_ai_and_business_hours_ring() -> None:
    hours = {"timezone": "Europe/Berlin", "hours": {"mon": ["09:00-17:00"]}}
    core, wire, _, _ = _core(ai_answer={"after_hours": "ai"}, business_hours=hours)
    core.wall_clock = lambda: _wall("2026-11-23T17:30:00")  # Monday 18:30 in Berlin (UTC+1)
    wire.deliver(invite(), CALLER)
    _assert_answered_by_ai(core, _ok_to_caller(wire), "after_hours")
    core.wall_clock = lambda: _wall("2026-11-23T15:30:00")  # Monday 16:30 in Berlin
    wire.deliver(invite(call_id="a-call-2", branch="z9hG4bKcaller2"), CALLER)
    assert wire.take_one(CALLEE, "INVITE")


# --- the attended call --------------------------------------------------------------------------
def _attended(wire: Wire, core: EdgeCore) -> tuple[Request, Response, Call]:
    core.away.set_away("bob", True)
    a_inv = invite()
    wire.deliver(a_inv, CALLER)
    ok = _ok_to_caller(wire)
    wire.deliver(ack_for(a_inv, ok, CALLER, "z9hG4bKack9"), CALLER)
    (call,) = core.calls.values()
    return a_inv, ok, call


def test_the_edge_hangs_an_attended_caller_up_with_bye() -> None:
    core, wire, _, _ = _core(ai_answer={"away": "ai"})
    _, _, call = _attended(wire, core)
    assert core.hangup(call.id, EndReason.ADMIN, wire.now)
    wire._collect()
    bye = wire.take_one(CALLER, "BYE")
    assert isinstance(bye, Request) and bye.call_id == call.a.dialog.call_id
    assert wire.take(CALLEE) == []
    assert call.state is CallState.TERMINATED and call.end_reason is EndReason.ADMIN


def test_reinvite_and_info_of_an_attended_call_are_answered_by_the_edge() -> None:
    core, wire, _, _ = _core(ai_answer={"away": "ai"})
    digits: list[tuple[str, Side, str]] = []
    core.dtmf_listeners.append(lambda call_id, side, digit: digits.append((call_id, side, digit)))
    a_inv, ok, call = _attended(wire, core)
    offer = SDP.replace(b"RTP/AVP 0 8", b"RTP/AVP 8").replace(b"o=- 1 1", b"o=- 1 2")
    wire.deliver(from_caller("INVITE", a_inv, ok, 2, "z9hG4bKre1", body=offer), CALLER)
    reok = _ok_to_caller(wire)
    assert "m=audio 30000 RTP/AVP 8" in reok.body.decode()  # the new offer answered
    wire.deliver(from_caller("INVITE", a_inv, ok, 3, "z9hG4bKre2"), CALLER)
    assert b"RTP/AVP 8" in _ok_to_caller(wire).body  # no offer: our current SDP
    info = from_caller(
        "INFO", a_inv, ok, 4, "z9hG4bKinfo", extra=[("Content-Type", "application/dtmf-relay")]
    )
    info.body = b"Signal=5\r\nDuration=160\r\n"
    wire.deliver(info, CALLER)
    assert wire.take_one(CALLER, "200")
    assert digits == [(call.id, Side.CALLER, "5")]
    wire.deliver(from_caller("REFER", a_inv, ok, 5, "z9hG4bKrefer"), CALLER)
    assert wire.take_one(CALLER, "405")
    assert call.state is CallState.CONFIRMED
