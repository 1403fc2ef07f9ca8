"""The AI attendant's transfer action through the sans-I/O core: the target rings on a new callee
leg with the caller's codec; its answer joins the call, its failure leaves the call with the AI."""

from __future__ import annotations

from pbx_edge.b2bua.call import Call, CallState, EndReason
from pbx_edge.b2bua.core import EdgeCore
from pbx_edge.sip.endpoint import Endpoint
from pbx_edge.sip.message import Request, Response

from .harness import CALLER, SDP, Wire, ack_for, answer, from_caller, invite
from .test_attendant import STATIC, _core

TARGET = Endpoint("UDP", "127.0.0.1", 5080)
CAROL_SDP = SDP.replace(b"6000", b"8000").replace(b"RTP/AVP 0 8", b"RTP/AVP 0")


def _attended() -> tuple[EdgeCore, Wire, list[str], Request, Response, Call]:
    routes = [{"prefix": "carol", "target": "sip:127.0.0.1:5080"}, STATIC]
    core, wire, _, events = _core(
        routes=routes,
        ai_answer={"away": "ai"},
        extensions={"carol": {"no_answer_timeout": 5}},
    )
    core.away.set_away("bob", True)
    a_inv = invite()
    wire.deliver(a_inv, CALLER)
    ok = wire.take_one(CALLER, "200")
    assert isinstance(ok, Response)
    wire.deliver(ack_for(a_inv, ok, CALLER, "z9hG4bKack1"), CALLER)
    wire.take(CALLER)
    (call,) = core.calls.values()
    return core, wire, events, a_inv, ok, call


def _target_invite(wire: Wire) -> Request:
    b_inv = wire.take_one(TARGET, "INVITE")
    assert isinstance(b_inv, Request)
    return b_inv


def test_transfer_connects_the_caller_to_the_target() -> None:
    core, wire, events, a_inv, ok, call = _attended()
    assert core.transfer(call.id, "carol", wire.now)
    wire._collect()
    b_inv = _target_invite(wire)
    assert b_inv.uri == "sip:carol@127.0.0.1:5080"
    assert b_inv.from_addr.uri.user == "alice"  # the caller's identity, as for any call
    offer = b_inv.body.decode()
    assert "m=audio 30004 RTP/AVP 0\r\n" in offer  # the codec the caller was answered with, only
    wire.deliver(answer(b_inv, 180, "Ringing", to_tag="carol-tag"), TARGET)
    assert wire.take(CALLER) == []  # the caller keeps hearing the AI
    wire.deliver(answer(b_inv, 200, "OK", to_tag="carol-tag", body=CAROL_SDP), TARGET)
    assert wire.take_one(TARGET, "ACK")
    assert call.b is not None and call.b.dialog.call_id == b_inv.call_id
    assert core.call_for(b_inv.call_id) is call and call.id not in core.attended
    assert events[-1] == "call.transferred"
    assert wire.take(CALLER) == []  # nothing changes for the caller's dialog
    wire.deliver(from_caller("BYE", a_inv, ok, 2, "z9hG4bKbye1"), CALLER)
    assert wire.take_one(CALLER, "200")
    bye = wire.take_one(TARGET, "BYE")  # an ordinary call now
    assert isinstance(bye, Request) and bye.call_id == b_inv.call_id
    assert call.state is CallState.TERMINATED and call.end_reason is EndReason.CALLER_BYE


def test_a_busy_target_leaves_the_call_with_the_ai_and_another_try_works() -> None:
    core, wire, events, _, _, call = _attended()
    assert core.transfer(call.id, "carol", wire.now)
    wire._collect()
    b_inv = _target_invite(wire)
    assert not core.transfer(call.id, "carol2", wire.now)  # one at a time
    wire.deliver(answer(b_inv, 486, "Busy Here", to_tag="carol-tag"), TARGET)
    assert wire.take_one(TARGET, "ACK")
    assert events[-1] == "call.transfer_failed"
    assert call.state is CallState.CONFIRMED and call.id in core.attended and call.b is None
    assert wire.take(CALLER) == []
    assert core.transfer(call.id, "carol", wire.now)
    wire._collect()
    assert _target_invite(wire).call_id != b_inv.call_id


def test_a_target_that_does_not_answer_is_cancelled() -> None:
    core, wire, events, _, _, call = _attended()
    assert core.transfer(call.id, "carol", wire.now)
    wire._collect()
    b_inv = _target_invite(wire)
    wire.deliver(answer(b_inv, 180, "Ringing", to_tag="carol-tag"), TARGET)
    wire.advance(5.1)  # carol's no-answer timeout
    assert wire.take_one(TARGET, "CANCEL")
    assert events[-1] == "call.transfer_failed" and call.id in core.attended
    wire.deliver(answer(b_inv, 487, "Request Terminated", to_tag="carol-tag"), TARGET)
    assert call.state is CallState.CONFIRMED


def test_the_caller_leaving_during_the_transfer_cancels_it_and_hangs_up_a_late_answer() -> None:
    core, wire, _, a_inv, ok, call = _attended()
    assert core.transfer(call.id, "carol", wire.now)
    wire._collect()
    b_inv = _target_invite(wire)
    wire.deliver(answer(b_inv, 180, "Ringing", to_tag="carol-tag"), TARGET)
    wire.deliver(from_caller("BYE", a_inv, ok, 2, "z9hG4bKbye2"), CALLER)
    assert call.state is CallState.TERMINATED
    assert wire.take_one(TARGET, "CANCEL")
    wire.deliver(answer(b_inv, 200, "OK", to_tag="carol-tag", body=CAROL_SDP), TARGET)
    assert wire.take_one(TARGET, "ACK")
    assert wire.take_one(TARGET, "BYE")
    assert core.calls == {} and core.transfers == {}


def test_a_cancel_waits_for_the_targets_first_provisional() -> None:
    core, wire, _, a_inv, ok, call = _attended()
    assert core.transfer(call.id, "carol", wire.now)
    wire._collect()
    b_inv = _target_invite(wire)
    wire.deliver(from_caller("BYE", a_inv, ok, 2, "z9hG4bKbye3"), CALLER)
    assert [m for m in wire.take(TARGET) if isinstance(m, Request) and m.method == "CANCEL"] == []
    wire.deliver(answer(b_inv, 180, "Ringing", to_tag="carol-tag"), TARGET)
    assert wire.take_one(TARGET, "CANCEL")


def test_what_cannot_be_transferred() -> None:
    core, wire, *_ = _attended()
    assert not core.transfer("no-such-call", "carol", wire.now)
    core2, wire2, *_ = _core(routes=[], ai_answer={"away": "ai"})
    core2.away.set_away("bob", True)
    wire2.deliver(invite(), CALLER)
    (attended,) = core2.calls.values()
    assert not core2.transfer(attended.id, "nobody", wire2.now)  # no route to the target
    # a call the callee answered is not the AI's to transfer
    core3, wire3, *_ = _core(routes=[STATIC])
    a_inv = invite()
    wire3.deliver(a_inv, CALLER)
    b_inv = wire3.take_one(Endpoint("UDP", "127.0.0.1", 5070), "INVITE")
    assert isinstance(b_inv, Request)
    wire3.deliver(answer(b_inv, 200, "OK", body=SDP), Endpoint("UDP", "127.0.0.1", 5070))
    (talking,) = core3.calls.values()
    assert talking.state is CallState.CONFIRMED
    assert not core3.transfer(talking.id, "bob", wire3.now)


def test_an_extension_registered_under_the_pbx_address_is_a_transfer_target() -> None:
    """Phones that register as ``dave@<the PBX's IP>`` (not the configured domain) are found too."""
    core, wire, *_ = _attended()
    register = (
        "REGISTER sip:127.0.0.1:5060 SIP/2.0\r\n"
        "Via: SIP/2.0/UDP 127.0.0.1:5080;branch=z9hG4bKregdave;rport\r\n"
        "Max-Forwards: 70\r\nTo: <sip:dave@127.0.0.1>\r\nFrom: <sip:dave@127.0.0.1>;tag=d1\r\n"
        "Call-ID: reg-dave\r\nCSeq: 1 REGISTER\r\nContact: <sip:dave@127.0.0.1:5080>\r\n"
        "Content-Length: 0\r\n\r\n"
    )
    wire.deliver(register.encode(), TARGET)
    assert wire.take_one(TARGET, "200")
    (call,) = core.calls.values()
    assert core.transfer(call.id, "dave", wire.now)
    wire._collect()
    assert _target_invite(wire).uri == "sip:dave@127.0.0.1:5080"
