"""Less travelled B2BUA paths: races, early hang-ups, reliable provisional give-up, SDP refusals."""

from __future__ import annotations

from pbx_edge.b2bua.call import EndReason
from pbx_edge.media.interface import MediaUnavailable, SdpKind, SdpRejected, Side
from pbx_edge.sip.message import Request, Response

from .harness import CALLEE, CALLER, SDP, Wire, answer, from_callee, from_caller, in_dialog, invite, make_core
from .steps import cancel_for, forward_invite
from .test_core_calls import _establish


def _b_invite(wire: Wire, a_inv: Request | None = None) -> tuple[Request, Request]:
    a_inv = a_inv or invite()
    return a_inv, forward_invite(wire, a_inv)


def test_cancel_before_any_provisional_waits_for_one() -> None:
    core = make_core()
    wire = Wire(core)
    a_inv, b_inv = _b_invite(wire)
    wire.deliver(cancel_for(a_inv), CALLER)
    assert wire.take_one(CALLER, "487")
    assert CALLEE not in wire.sent or not [
        m for m in wire.sent[CALLEE] if isinstance(m, Request) and m.method == "CANCEL"
    ]
    wire.deliver(answer(b_inv, 180, "Ringing"), CALLEE)
    assert wire.take_one(CALLEE, "CANCEL")
    assert CALLER not in wire.sent or not [m for m in wire.take(CALLER) if getattr(m, "status", 0) == 180]


def test_answer_racing_cancel_is_acked_and_hung_up() -> None:
    core = make_core()
    wire = Wire(core)
    a_inv, b_inv = _b_invite(wire)
    wire.deliver(answer(b_inv, 180, "Ringing"), CALLEE)
    wire.deliver(cancel_for(a_inv), CALLER)
    wire.take_one(CALLEE, "CANCEL")
    wire.deliver(answer(b_inv, 200, "OK", body=SDP), CALLEE)
    assert wire.take_one(CALLEE, "ACK")
    assert wire.take_one(CALLEE, "BYE")
    assert not core.calls


def test_caller_bye_in_early_dialog_acts_as_cancel() -> None:
    core = make_core()
    wire = Wire(core)
    a_inv, b_inv = _b_invite(wire)
    wire.deliver(answer(b_inv, 180, "Ringing"), CALLEE)
    ringing = wire.take_one(CALLER, "180")
    bye = from_caller(
        "BYE",
        a_inv,
        ringing,
        2,
        "z9hG4bKearlybye",
    )
    wire.deliver(bye, CALLER)
    assert wire.take_one(CALLER, "200")
    assert wire.take_one(CALLER, "487")
    assert wire.take_one(CALLEE, "CANCEL")


def test_callee_bye_in_early_dialog_fails_the_caller() -> None:
    core = make_core()
    wire = Wire(core)
    _, b_inv = _b_invite(wire)
    wire.deliver(answer(b_inv, 180, "Ringing"), CALLEE)
    bye = from_callee(
        "BYE",
        b_inv,
        1,
        "z9hG4bKcalleeearly",
    )
    wire.deliver(bye, CALLEE)
    assert wire.take_one(CALLEE, "200")
    assert wire.take_one(CALLER, "480")
    assert not core.calls


def test_caller_without_100rel_gets_unreliable_1xx_and_edge_pracks_callee() -> None:
    core = make_core()
    wire = Wire(core)
    _, b_inv = _b_invite(wire)
    wire.deliver(answer(b_inv, 180, "Ringing", extra=[("Require", "100rel"), ("RSeq", "5")]), CALLEE)
    ringing = wire.take_one(CALLER, "180")
    assert isinstance(ringing, Response) and ringing.headers.get("RSeq") is None
    prack = wire.take_one(CALLEE, "PRACK")
    assert isinstance(prack, Request) and prack.headers.get("RAck") == "5 1 INVITE"
    # a retransmission of the same reliable 1xx is not relayed again
    wire.deliver(answer(b_inv, 180, "Ringing", extra=[("Require", "100rel"), ("RSeq", "5")]), CALLEE)
    assert not [m for m in wire.take(CALLER) if isinstance(m, Response) and m.status == 180]


def test_unacknowledged_reliable_provisional_gives_up_with_5xx() -> None:
    core = make_core(calls={"no_answer_timeout": 100})
    wire = Wire(core)
    _, b_inv = _b_invite(wire, invite(extra=[("Require", "100rel")]))
    wire.deliver(answer(b_inv, 180, "Ringing", extra=[("Require", "100rel"), ("RSeq", "1")]), CALLEE)
    wire.advance(33)
    assert wire.take_one(CALLER, "504")
    assert wire.take_one(CALLEE, "CANCEL")


def test_prack_with_bad_or_unknown_rack() -> None:
    core = make_core()
    wire = Wire(core)
    a_inv, b_inv = _b_invite(wire, invite(extra=[("Supported", "100rel")]))
    wire.deliver(answer(b_inv, 180, "Ringing", extra=[("Require", "100rel"), ("RSeq", "1")]), CALLEE)
    ringing = wire.take_one(CALLER, "180")
    for n, rack, status in ((2, "x", "400"), (3, "9 1 INVITE", "481")):
        prack = from_caller(
            "PRACK",
            a_inv,
            ringing,
            n,
            f"z9hG4bKbadprack{n}",
            extra=[("RAck", rack)],
        )
        wire.deliver(prack, CALLER)
        assert wire.take_one(CALLER, status)


def test_in_dialog_options_info_and_out_of_order_cseq() -> None:
    core = make_core()
    wire = Wire(core)
    a_inv, b_inv, ok = _establish(wire)

    def req(method: str, cseq: int, branch: str) -> Request:
        return in_dialog(
            method,
            call_id=a_inv.call_id,
            from_=a_inv.headers.get("From") or "",
            to=ok.headers.get("To") or "",
            cseq=cseq,
            uri="sip:edge@127.0.0.1:5060",
            via_host=CALLER,
            branch=branch,
        )

    wire.deliver(req("OPTIONS", 5, "z9hG4bKo5"), CALLER)
    assert wire.take_one(CALLER, "200")
    wire.deliver(req("INFO", 6, "z9hG4bKi6"), CALLER)
    info = wire.take_one(CALLEE, "INFO")
    assert isinstance(info, Request) and info.call_id == b_inv.call_id
    wire.deliver(req("INFO", 4, "z9hG4bKi4"), CALLER)
    assert wire.take_one(CALLER, "500")
    wire.advance(33)  # the relayed INFO is never answered: the caller gets 408
    assert wire.take_one(CALLER, "408")


def test_second_reinvite_while_first_pending_gets_500_with_retry_after() -> None:
    core = make_core()
    wire = Wire(core)
    a_inv, _, ok = _establish(wire)

    def reinvite(cseq: int) -> Request:
        return from_caller(
            "INVITE",
            a_inv,
            ok,
            cseq,
            f"z9hG4bKreinv{cseq}",
            body=SDP,
        )

    wire.deliver(reinvite(2), CALLER)
    wire.take_one(CALLEE, "INVITE")
    wire.deliver(reinvite(3), CALLER)
    busy = wire.take_one(CALLER, "500")
    assert isinstance(busy, Response) and busy.headers.get("Retry-After") == "1"


class RefusingMedia:
    """A media manager that refuses: the pool is exhausted, or the SDP is unusable."""

    def __init__(self, exhausted: bool) -> None:
        self.exhausted = exhausted

    def open_session(self, call_id: str) -> RefusingMedia:
        if self.exhausted:
            raise MediaUnavailable("port pool exhausted", retry_after=7)
        return self

    def rewrite(self, from_side: Side, kind: SdpKind, sdp: bytes) -> bytes:
        raise SdpRejected("no common codec", 488)

    def close(self) -> None:
        pass


def test_media_exhaustion_gets_503_and_bad_sdp_488() -> None:
    core = make_core()
    core.media = RefusingMedia(exhausted=True)
    wire = Wire(core)
    wire.deliver(invite(), CALLER)
    unavailable = wire.take_one(CALLER, "503")
    assert isinstance(unavailable, Response) and unavailable.headers.get("Retry-After") == "7"
    core.media = RefusingMedia(exhausted=False)
    wire.deliver(invite(call_id="sdp-2", branch="z9hG4bKsdp2"), CALLER)
    assert wire.take_one(CALLER, "488")
    assert not core.calls


def test_call_limit_gets_503() -> None:
    core = make_core(calls={"max_calls": 1})
    wire = Wire(core)
    _b_invite(wire)
    wire.deliver(invite(call_id="second", branch="z9hG4bKsecond"), CALLER)
    assert wire.take_one(CALLER, "503")


def test_transport_error_to_callee_gives_503() -> None:
    core = make_core()
    wire = Wire(core)
    _b_invite(wire)
    core.transport_error(CALLEE, wire.now)
    wire._collect()
    assert wire.take_one(CALLER, "503")
    assert not core.calls


def test_ended_calls_report_reason_and_events() -> None:
    core = make_core()
    events: list[str] = []
    core.listeners.append(lambda name, call: events.append(name))
    wire = Wire(core)
    _establish(wire)
    assert events == ["call.started", "call.ringing", "call.answered"]
    _, b_inv = _b_invite(wire, invite(call_id="busy-2", branch="z9hG4bKbusy2"))
    wire.deliver(answer(b_inv, 486, "Busy Here"), CALLEE)
    assert events[-1] == "call.ended"
    ended = [c for c in [core.call_for("busy-2")] if c is not None]
    assert not ended
    assert EndReason.REJECTED.value == "rejected"
