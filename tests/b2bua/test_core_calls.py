"""B2BUA call flows through the sans-I/O core: real parser, real transactions, fake clock and wire."""

from __future__ import annotations

from pbx_edge.b2bua.call import CallState, EndReason
from pbx_edge.sip.message import Request, Response

from .harness import CALLEE, CALLER, SDP, Wire, ack_for, answer, from_callee, from_caller, invite, make_core
from .steps import cancel_for, forward_invite, ping, register, stray


def _establish(wire: Wire, a_inv: Request | None = None) -> tuple[Request, Request, Response]:
    """Caller INVITE -> callee rings and answers -> both legs ACKed. Returns (A INVITE, B INVITE, A 200)."""
    a_inv = a_inv or invite()
    b_inv = forward_invite(wire, a_inv)
    assert wire.take_one(CALLER, "100")
    wire.deliver(answer(b_inv, 180, "Ringing"), CALLEE)
    wire.deliver(answer(b_inv, 200, "OK", body=SDP), CALLEE)
    assert wire.take_one(CALLEE, "ACK")
    wire.take_one(CALLER, "180")
    ok = wire.take_one(CALLER, "200")
    assert isinstance(ok, Response)
    wire.deliver(ack_for(a_inv, ok, CALLER, "z9hG4bKack1"), CALLER)
    return a_inv, b_inv, ok


def test_basic_call_has_two_independent_legs_and_ends_on_caller_bye() -> None:
    core = make_core()
    wire = Wire(core)
    a_inv = invite()
    wire.deliver(a_inv, CALLER)
    trying = wire.take(CALLER)
    assert [m.status for m in trying if isinstance(m, Response)] == [100]
    b_inv = wire.take_one(CALLEE, "INVITE")
    assert isinstance(b_inv, Request)
    assert b_inv.call_id != a_inv.call_id
    assert b_inv.from_tag != a_inv.from_tag
    assert b_inv.top_via.branch != a_inv.top_via.branch
    assert b_inv.headers.get("Max-Forwards") == "69"
    assert b_inv.body == SDP
    assert b_inv.from_addr.uri.user == "alice"  # caller identity crosses the B2BUA
    assert core.mapped_call_id(a_inv.call_id) == b_inv.call_id
    assert core.mapped_call_id(b_inv.call_id) == a_inv.call_id

    wire.deliver(answer(b_inv, 180, "Ringing"), CALLEE)
    ringing = wire.take_one(CALLER, "180")
    assert isinstance(ringing, Response)
    assert ringing.call_id == a_inv.call_id and ringing.to_tag not in (None, "bob-tag")
    call = core.call_for(a_inv.call_id)
    assert call is not None and call.state is CallState.EARLY

    wire.deliver(answer(b_inv, 200, "OK", body=SDP), CALLEE)
    ack_b = wire.take_one(CALLEE, "ACK")
    assert isinstance(ack_b, Request) and ack_b.to_tag == "bob-tag" and ack_b.cseq.seq == 1
    ok = wire.take_one(CALLER, "200")
    assert isinstance(ok, Response) and ok.body == SDP and ok.to_tag == ringing.to_tag
    assert ok.contacts and ok.contacts[0].uri.port == 5060
    assert call.state is CallState.CONFIRMED
    wire.deliver(ack_for(a_inv, ok, CALLER, "z9hG4bKack1"), CALLER)

    bye = from_caller("BYE", a_inv, ok, 2, "z9hG4bKbye1")
    wire.deliver(bye, CALLER)
    assert wire.take_one(CALLER, "200")
    b_bye = wire.take_one(CALLEE, "BYE")
    assert isinstance(b_bye, Request) and b_bye.call_id == b_inv.call_id and b_bye.cseq.seq == 2
    assert call.end_reason is EndReason.CALLER_BYE
    assert core.call_for(a_inv.call_id) is None and not core.calls
    wire.deliver(answer(b_bye, 200, "OK"), CALLEE)
    wire.advance(40)
    assert len(core.tx) == 0


def test_callee_bye_ends_caller_leg() -> None:
    core = make_core()
    wire = Wire(core)
    a_inv, b_inv, _ = _establish(wire)
    bye = from_callee("BYE", b_inv, 1, "z9hG4bKbbye")
    wire.deliver(bye, CALLEE)
    assert wire.take_one(CALLEE, "200")
    a_bye = wire.take_one(CALLER, "BYE")
    assert isinstance(a_bye, Request)
    assert a_bye.call_id == a_inv.call_id and a_bye.uri == "sip:alice@127.0.0.1:5062"
    assert a_bye.to_tag == "alice-tag"


def test_busy_is_relayed_and_acked_per_leg() -> None:
    core = make_core()
    wire = Wire(core)
    b_inv = forward_invite(wire)
    wire.deliver(answer(b_inv, 486, "Busy Here"), CALLEE)
    assert wire.take_one(CALLEE, "ACK")  # built by the client transaction
    busy = wire.take_one(CALLER, "486")
    assert isinstance(busy, Response) and busy.reason == "Busy Here"
    assert not core.calls


def test_cancel_after_ringing_gives_487_and_cancels_callee() -> None:
    core = make_core()
    wire = Wire(core)
    a_inv = invite()
    b_inv = forward_invite(wire, a_inv)
    wire.deliver(answer(b_inv, 180, "Ringing"), CALLEE)
    wire.deliver(cancel_for(a_inv), CALLER)
    assert wire.take_one(CALLER, "200")
    terminated = wire.take_one(CALLER, "487")
    assert isinstance(terminated, Response) and terminated.cseq.method == "INVITE"
    b_cancel = wire.take_one(CALLEE, "CANCEL")
    assert isinstance(b_cancel, Request)
    assert b_cancel.top_via.branch == b_inv.top_via.branch and b_cancel.cseq.seq == b_inv.cseq.seq
    wire.deliver(answer(b_cancel, 200, "OK"), CALLEE)
    wire.deliver(answer(b_inv, 487, "Request Terminated"), CALLEE)
    assert wire.take_one(CALLEE, "ACK")
    assert not core.calls


def test_cancel_for_unknown_transaction_gets_481() -> None:
    wire = Wire(make_core())
    wire.deliver(stray("CANCEL", "nope", "z9hG4bKzzz"), CALLER)
    assert wire.take_one(CALLER, "481")


def test_no_answer_timer_cancels_callee_and_rejects_caller() -> None:
    core = make_core()
    wire = Wire(core)
    b_inv = forward_invite(wire)
    wire.deliver(answer(b_inv, 180, "Ringing"), CALLEE)
    wire.take(CALLER)
    wire.advance(9.9)
    assert CALLER not in wire.sent
    wire.advance(0.2)
    rejected = wire.take_one(CALLER, "480")
    assert isinstance(rejected, Response)
    assert wire.take_one(CALLEE, "CANCEL")
    wire.deliver(answer(b_inv, 487, "Request Terminated"), CALLEE)
    assert not core.calls


def test_no_answer_timeout_per_extension() -> None:
    core = make_core(
        routing={
            "static_routes": [{"prefix": "", "target": "sip:127.0.0.1:5070"}],
            "extensions": {
                "bob": {"no_answer_timeout": 2, "no_answer_action": {"code": 486, "reason": "Busy"}}
            },
        }
    )
    wire = Wire(core)
    b_inv = forward_invite(wire)
    wire.deliver(answer(b_inv, 180, "Ringing"), CALLEE)
    wire.advance(2.1)
    assert wire.take_one(CALLER, "486")


def test_callee_timeout_gives_408() -> None:
    core = make_core(calls={"no_answer_timeout": 100})
    wire = Wire(core)
    wire.deliver(invite(), CALLER)
    wire.advance(33)  # Timer B = 64*T1
    assert wire.take_one(CALLER, "408")
    assert not core.calls


def test_unknown_user_without_route_gets_404() -> None:
    core = make_core(routing={"static_routes": []})
    wire = Wire(core)
    wire.deliver(invite(), CALLER)
    assert wire.take_one(CALLER, "404")
    assert not core.calls


def test_registered_user_is_called_at_its_contact() -> None:
    core = make_core(routing={"static_routes": []})
    wire = Wire(core)
    phone = CALLEE.__class__("UDP", "127.0.0.1", 5080)
    ok = register(wire, phone, "bob", call_id="reg-1", branch="z9hG4bKreg1", expires=300)
    assert ok.contacts
    b_inv = forward_invite(wire, invite(user="bob"), to=phone)
    assert b_inv.request_uri.port == 5080


def test_options_out_of_dialog_lists_capabilities() -> None:
    wire = Wire(make_core())
    wire.deliver(ping("opt-1", "z9hG4bKopt1"), CALLER)
    ok = wire.take_one(CALLER, "200")
    assert isinstance(ok, Response)
    assert "INVITE" in (ok.headers.get("Allow") or "")
    assert ok.headers.get("Accept") == "application/sdp"
    assert "100rel" in (ok.headers.get("Supported") or "")


def test_unknown_method_gets_501_and_in_dialog_strays_481() -> None:
    wire = Wire(make_core())
    wire.deliver(stray("FROBNICATE", "x-1", "z9hG4bKx1"), CALLER)
    assert wire.take_one(CALLER, "501")
    wire.deliver(stray("BYE", "x-2", "z9hG4bKx2", to_tag="2"), CALLER)
    assert wire.take_one(CALLER, "481")


def test_malformed_request_gets_400_and_garbage_is_dropped() -> None:
    core = make_core()
    wire = Wire(core)
    good = bytes(invite())
    broken = good.replace(b"CSeq: 1 INVITE", b"CSeq: one INVITE")
    wire.deliver(broken, CALLER)
    bad = wire.take_one(CALLER, "400")
    assert isinstance(bad, Response) and bad.reason
    wire.deliver(b"\x00\xffnot sip at all\r\n\r\n", CALLER)
    assert not wire.sent.get(CALLER)
    assert core.stats["parse_errors"] == 2


def test_max_forwards_zero_gets_483_and_unknown_require_420() -> None:
    wire = Wire(make_core())
    inv = invite(call_id="mf0")
    inv.headers.set("Max-Forwards", "0")
    wire.deliver(inv, CALLER)
    assert wire.take_one(CALLER, "483")
    wire.deliver(invite(call_id="req1", branch="z9hG4bKreq1", extra=[("Require", "foo")]), CALLER)
    unsupported = wire.take_one(CALLER, "420")
    assert isinstance(unsupported, Response) and unsupported.headers.get("Unsupported") == "foo"


def test_reinvite_hold_is_relayed_and_glare_gets_491() -> None:
    core = make_core()
    wire = Wire(core)
    a_inv, b_inv, ok = _establish(wire)
    hold_sdp = SDP.replace(b"a=sendrecv", b"a=sendonly")
    reinvite = from_caller(
        "INVITE", a_inv, ok, 2, "z9hG4bKre1", body=hold_sdp, extra=[("Contact", "<sip:alice@127.0.0.1:5062>")]
    )
    wire.deliver(reinvite, CALLER)
    b_re = wire.take_one(CALLEE, "INVITE")
    assert isinstance(b_re, Request) and b_re.body == hold_sdp and b_re.to_tag == "bob-tag"
    assert b_re.cseq.seq == 2 and b_re.call_id == b_inv.call_id
    # glare: the callee sends its own re-INVITE while ours is pending
    glare = from_callee("INVITE", b_inv, 5, "z9hG4bKglare", body=SDP)
    wire.deliver(glare, CALLEE)
    assert wire.take_one(CALLEE, "491")
    wire.deliver(answer(b_re, 200, "OK", body=SDP), CALLEE)
    assert wire.take_one(CALLEE, "ACK")
    re_ok = wire.take_one(CALLER, "200")
    assert isinstance(re_ok, Response) and re_ok.cseq.seq == 2 and re_ok.body == SDP


def test_update_is_relayed_both_ways() -> None:
    core = make_core()
    wire = Wire(core)
    a_inv, b_inv, _ = _establish(wire)
    update = from_callee("UPDATE", b_inv, 2, "z9hG4bKupd", body=SDP)
    wire.deliver(update, CALLEE)
    a_update = wire.take_one(CALLER, "UPDATE")
    assert isinstance(a_update, Request) and a_update.call_id == a_inv.call_id
    wire.deliver(answer(a_update, 200, "OK", body=SDP, to_tag=None), CALLER)
    relayed = wire.take_one(CALLEE, "200")
    assert isinstance(relayed, Response) and relayed.cseq.method == "UPDATE" and relayed.body == SDP


def test_100rel_prack_is_mapped_per_leg() -> None:
    core = make_core()
    wire = Wire(core)
    a_inv = invite(extra=[("Supported", "100rel")])
    b_inv = forward_invite(wire, a_inv)
    assert "100rel" in b_inv.option_tags("Supported")
    wire.deliver(
        answer(b_inv, 183, "Session Progress", body=SDP, extra=[("Require", "100rel"), ("RSeq", "7001")]),
        CALLEE,
    )
    progress = wire.take_one(CALLER, "183")
    assert isinstance(progress, Response)
    assert "100rel" in progress.option_tags("Require")
    our_rseq = progress.headers.get("RSeq")
    assert our_rseq == "1"
    wire.advance(0.6)  # not PRACKed yet: retransmitted after T1
    assert wire.take_one(CALLER, "183")
    prack = from_caller("PRACK", a_inv, progress, 2, "z9hG4bKprack", extra=[("RAck", f"{our_rseq} 1 INVITE")])
    wire.deliver(prack, CALLER)
    b_prack = wire.take_one(CALLEE, "PRACK")
    assert isinstance(b_prack, Request) and b_prack.headers.get("RAck") == "7001 1 INVITE"
    wire.deliver(answer(b_prack, 200, "OK", to_tag=None), CALLEE)
    prack_ok = wire.take_one(CALLER, "200")
    assert isinstance(prack_ok, Response) and prack_ok.cseq.method == "PRACK"
    wire.advance(5)
    assert not [m for m in wire.take(CALLER) if isinstance(m, Response) and m.status == 183]
    # an unknown RAck is refused
    wire.deliver(answer(b_inv, 200, "OK", body=SDP), CALLEE)
    assert wire.take_one(CALLER, "200")


def test_unacknowledged_2xx_hangs_up_both_legs() -> None:
    core = make_core()
    wire = Wire(core)
    b_inv = forward_invite(wire)
    wire.deliver(answer(b_inv, 200, "OK", body=SDP), CALLEE)
    wire.advance(40)  # Timer L: the caller never ACKs
    assert wire.take_one(CALLEE, "BYE")
    assert not core.calls


def test_retransmitted_invite_is_absorbed_and_2xx_retransmission_reacked() -> None:
    core = make_core()
    wire = Wire(core)
    a_inv = invite()
    wire.deliver(a_inv, CALLER)
    wire.deliver(a_inv, CALLER)
    invites = [m for m in wire.take(CALLEE) if isinstance(m, Request) and m.method == "INVITE"]
    assert len(invites) == 1
    b_inv = invites[0]
    assert isinstance(b_inv, Request)
    ok = answer(b_inv, 200, "OK", body=SDP)
    wire.deliver(ok, CALLEE)
    wire.deliver(ok, CALLEE)
    acks = [m for m in wire.take(CALLEE) if isinstance(m, Request) and m.method == "ACK"]
    assert len(acks) == 2
    assert core.stats["calls_total"] == 1


def test_sip_info_dtmf_is_relayed_and_reported_once() -> None:
    core = make_core()
    digits: list[tuple[str, str, str]] = []
    core.dtmf_listeners.append(lambda call_id, leg, digit: digits.append((call_id, leg.value, digit)))
    wire = Wire(core)
    a_inv, b_inv, ok = _establish(wire)
    info = from_caller("INFO", a_inv, ok, 2, "z9hG4bKinfo1")
    info.headers.add("Content-Type", "application/dtmf-relay")
    info.body = b"Signal=5\r\nDuration=160\r\n"
    wire.deliver(info, CALLER)
    relayed = wire.take_one(CALLEE, "INFO")
    assert isinstance(relayed, Request) and relayed.body == info.body
    plain = from_callee("INFO", b_inv, 2, "z9hG4bKinfo2")
    plain.headers.add("Content-Type", "application/dtmf")
    plain.body = b"#"
    wire.deliver(plain, CALLEE)
    not_dtmf = from_callee("INFO", b_inv, 3, "z9hG4bKinfo3")
    not_dtmf.headers.add("Content-Type", "application/json")
    not_dtmf.body = b"{}"
    wire.deliver(not_dtmf, CALLEE)
    call = core.call_for(a_inv.call_id)
    assert call is not None
    assert digits == [(call.id, "caller", "5"), (call.id, "callee", "#")]


def test_late_offer_answer_in_the_caller_ack_reaches_the_callee_ack() -> None:
    """INVITE without SDP (RFC 3264 late offer): the callee's 2xx carries the offer and the caller's
    ACK the answer, which the callee gets in its own ACK: the edge holds that ACK until then."""
    core = make_core()
    wire = Wire(core)
    a_inv = invite(body=b"")
    b_inv = forward_invite(wire, a_inv)
    assert not b_inv.body
    wire.deliver(answer(b_inv, 200, "OK", body=SDP), CALLEE)
    assert not [m for m in wire.take(CALLEE) if isinstance(m, Request) and m.method == "ACK"]
    ok = wire.take_one(CALLER, "200")
    assert isinstance(ok, Response) and ok.body == SDP  # the offer (pass-through media here)
    answer_sdp = SDP.replace(b"6000", b"6100")
    ack = ack_for(a_inv, ok, CALLER, "z9hG4bKlateack")
    ack.headers.add("Content-Type", "application/sdp")
    ack.body = answer_sdp
    wire.deliver(ack, CALLER)
    b_ack = wire.take_one(CALLEE, "ACK")
    assert isinstance(b_ack, Request) and b_ack.body == answer_sdp
    assert b_ack.headers.get("Content-Type") == "application/sdp"
    wire.deliver(ack, CALLER)  # a retransmitted ACK crosses nothing
    assert not wire.take(CALLEE)
