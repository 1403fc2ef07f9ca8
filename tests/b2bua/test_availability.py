"""``call.callee_available``: an attended call learns that its callee can be reached again, once,
and only for the reason it was answered for (pbx_edge/b2bua/availability.py)."""

from __future__ import annotations

from pbx_edge.b2bua.call import CallState, EndReason
from pbx_edge.sip.message import Request, parse_message

from .harness import CALLEE, CALLER, answer, from_callee, invite
from .test_attendant import _attended, _core, _ok_to_caller


def _register(user: str, cseq: int = 1, expires: int = 300) -> Request:
    lines = [
        "REGISTER sip:127.0.0.1:5060 SIP/2.0",
        f"Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKreg{cseq};rport",
        "Max-Forwards: 70",
        f"To: <sip:{user}@127.0.0.1>",
        f"From: <sip:{user}@127.0.0.1>;tag=reg-tag",
        "Call-ID: reg-1",
        f"CSeq: {cseq} REGISTER",
        f"Contact: <sip:{user}@127.0.0.1:5070>;expires={expires}",
        "Content-Length: 0",
    ]
    msg = parse_message(("\r\n".join(lines) + "\r\n\r\n").encode())
    assert isinstance(msg, Request)
    return msg


def _available(events: list[str]) -> int:
    return events.count("call.callee_available")


def test_an_extension_back_from_away_is_told_to_its_attended_call_once() -> None:
    core, wire, _, events = _core(ai_answer={"away": "ai"})
    _, _, call = _attended(wire, core)
    core.away.set_away("alice", False)  # someone else: nothing
    assert _available(events) == 0
    core.away.set_away("bob", False)
    assert _available(events) == 1 and core.attended[call.id].callee_available
    core.away.set_away("bob", True)
    core.away.set_away("bob", False)
    assert _available(events) == 1  # once per call


def test_registering_is_told_to_a_call_answered_for_an_unregistered_extension() -> None:
    core, wire, _, events = _core(routes=[], extensions={"bob": {"ai_answer": {"unregistered": "ai"}}})
    wire.deliver(invite(), CALLER)
    _ok_to_caller(wire)
    (call,) = core.calls.values()
    wire.deliver(_register("carol"), CALLEE)
    assert wire.take_one(CALLEE, "200") and _available(events) == 0
    wire.deliver(_register("bob", cseq=2), CALLEE)
    assert wire.take_one(CALLEE, "200")
    assert _available(events) == 1 and core.attended[call.id].callee_available
    wire.deliver(_register("bob", cseq=3), CALLEE)  # a refresh is not news
    assert _available(events) == 1


def test_a_busy_callee_is_available_when_its_own_call_ends() -> None:
    core, wire, _, events = _core(ai_answer={"busy": "ai"})
    wire.deliver(invite(), CALLER)  # bob takes the first call
    first = wire.take_one(CALLEE, "INVITE")
    assert isinstance(first, Request)
    wire.deliver(answer(first, 200, "OK"), CALLEE)
    _ok_to_caller(wire)
    wire.deliver(invite(call_id="a-call-2", branch="z9hG4bKcaller2"), CALLER)  # the second: busy
    second = wire.take_one(CALLEE, "INVITE")
    assert isinstance(second, Request)
    wire.deliver(answer(second, 486, "Busy Here", to_tag="bob-busy"), CALLEE)
    _ok_to_caller(wire)
    attended = [c for c in core.calls.values() if c.id in core.attended]
    assert len(attended) == 1 and _available(events) == 0
    wire.deliver(from_callee("BYE", first, 2, "z9hG4bKbobbye"), CALLEE)  # bob hangs up the first
    assert _available(events) == 1 and core.attended[attended[0].id].callee_available


def test_no_news_for_other_triggers_or_ended_calls() -> None:
    core, wire, _, events = _core(ai_answer={"away": "ai"})
    _, _, call = _attended(wire, core)
    assert core.callee_available("bob", "unregistered") == 0  # answered because away, not this
    assert core.hangup(call.id, EndReason.ADMIN, wire.now)
    core.away.set_away("bob", False)
    assert _available(events) == 0 and call.state is CallState.TERMINATED
