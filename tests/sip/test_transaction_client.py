"""Client transactions (RFC 3261 §17.1 + RFC 6026), driven by hand with a fake clock."""

from __future__ import annotations

import pytest

from pbx_edge.sip.endpoint import Endpoint
from pbx_edge.sip.message import Request, parse_message
from pbx_edge.sip.transaction import (
    ClientTransaction,
    ResponseReceived,
    Timer,
    TimerSettings,
    TransactionLayer,
    TransactionTimeout,
    TxState,
)
from tests.sip.fake_wire import (
    TCP_B,
    UDP_A,
    UDP_B,
    FakeClock,
    drain_events,
    make_cancel,
    make_request,
    make_response,
)


def start(
    method: str = "INVITE", dest: Endpoint = UDP_B, settings: TimerSettings | None = None, **kw: object
) -> tuple[TransactionLayer, ClientTransaction, FakeClock, bytes]:
    layer = TransactionLayer(settings or TimerSettings())
    clock = FakeClock()
    request = make_request(method, transport=dest.transport, **kw)  # type: ignore[arg-type]
    tx = layer.send_request(request, dest, clock.now)
    out = layer.outgoing()
    assert out == [(bytes(request), dest)]
    return layer, tx, clock, out[0][0]


def retransmit_times(layer: TransactionLayer, clock: FakeClock, wire: bytes, until: float) -> list[float]:
    """Fire timers up to ``until``; return the times at which ``wire`` was re-sent."""
    times: list[float] = []
    while (deadline := layer.get_timer()) is not None and deadline <= until:
        clock.now = deadline
        layer.handle_timer(clock.now)
        times += [clock.now for data, _ in layer.outgoing() if data == wire]
    return times


# --- INVITE ---------------------------------------------------------------------------------------
def test_invite_timer_a_doubles_then_timer_b_times_out() -> None:
    layer, tx, clock, wire = start()
    assert tx.state is TxState.CALLING and tx.is_invite and tx.dest == UDP_B and tx.owner is None
    assert layer.get_timer() == pytest.approx(0.5)
    times = retransmit_times(layer, clock, wire, until=31.99)
    assert times == pytest.approx([0.5, 1.5, 3.5, 7.5, 15.5, 31.5])  # Timer A: T1, 2T1, 4T1, ...
    assert drain_events(layer) == []
    clock.advance_to(layer, 32.0)  # Timer B = 64*T1
    assert drain_events(layer) == [TransactionTimeout(tx)]
    assert tx.state is TxState.TERMINATED
    assert len(layer) == 0 and layer.get_timer() is None
    assert layer.stats["timeouts"] == 1 and layer.stats["retransmissions"] == 6


def test_invite_custom_t1_scales_timers() -> None:
    layer, tx, clock, wire = start(settings=TimerSettings(t1=0.1, t2=1.0, t4=2.0))
    assert retransmit_times(layer, clock, wire, until=6.39) == pytest.approx([0.1, 0.3, 0.7, 1.5, 3.1, 6.3])
    clock.advance_to(layer, 6.4)
    assert drain_events(layer) == [TransactionTimeout(tx)]


def test_invite_provisional_stops_retransmissions_and_timer_b() -> None:
    layer, tx, clock, wire = start()
    clock.advance_to(layer, 0.6)  # one retransmission
    assert [d for d, _ in layer.outgoing()] == [wire]
    ringing = make_response(tx.request, 180)
    layer.receive(ringing, UDP_B, clock.now)
    assert tx.state is TxState.PROCEEDING
    assert drain_events(layer) == [ResponseReceived(ringing, UDP_B, tx)]
    assert tx.last_response is ringing
    assert layer.get_timer() is None  # A and B stopped: the TU owns the wait now (Timer C, CANCEL)
    layer.receive(make_response(tx.request, 183), UDP_B, 1.0)  # more 1xx still go up
    assert [type(e) for e in drain_events(layer)] == [ResponseReceived]
    assert tx.state is TxState.PROCEEDING and len(layer) == 1


def test_invite_2xx_accepted_passes_every_2xx_up_until_timer_m() -> None:
    layer, tx, clock, _wire = start()
    layer.receive(make_response(tx.request, 100), UDP_B, 0.1)
    ok = make_response(tx.request, 200)
    layer.receive(ok, UDP_B, 1.0)
    assert tx.state is TxState.ACCEPTED
    assert drain_events(layer) == [
        ResponseReceived(make_response(tx.request, 100), UDP_B, tx),
        ResponseReceived(ok, UDP_B, tx),
    ]
    assert layer.outgoing() == []  # the TU ACKs a 2xx, not the transaction
    assert layer.get_timer() == pytest.approx(1.0 + 32.0)  # Timer M = 64*T1
    layer.receive(ok, UDP_B, 2.0)  # retransmission: up again, so the TU re-ACKs
    fork = make_response(tx.request, 200, to_tag="other-fork")
    layer.receive(fork, UDP_B, 2.5)
    assert drain_events(layer) == [ResponseReceived(ok, UDP_B, tx), ResponseReceived(fork, UDP_B, tx)]
    layer.receive(make_response(tx.request, 180), UDP_B, 3.0)  # late 1xx: absorbed
    layer.receive(make_response(tx.request, 486), UDP_B, 3.0)  # non-2xx final in Accepted: absorbed
    assert drain_events(layer) == [] and layer.stats["absorbed"] == 2
    clock.advance_to(layer, 33.0)
    assert tx.state is TxState.TERMINATED and len(layer) == 0 and layer.get_timer() is None
    assert drain_events(layer) == []  # Timer M is silent
    layer.receive(ok, UDP_B, 40.0)  # after Timer M: still passed up, without a transaction
    assert drain_events(layer) == [ResponseReceived(ok, UDP_B, None)]
    assert layer.stats["stray_responses"] == 1


def test_invite_2xx_straight_from_calling() -> None:
    layer, tx, clock, _ = start()
    layer.receive(make_response(tx.request, 200), UDP_B, 0.2)
    assert tx.state is TxState.ACCEPTED
    assert layer.get_timer() == pytest.approx(32.2)
    clock.advance_to(layer, 100.0)
    assert layer.outgoing() == []  # no retransmission after the 2xx
    assert len(layer) == 0


def test_invite_non_2xx_sends_ack_and_absorbs_retransmissions_until_timer_d() -> None:
    layer, tx, clock, _ = start()
    busy = make_response(tx.request, 486)
    layer.receive(busy, UDP_B, 0.3)
    assert tx.state is TxState.COMPLETED
    assert drain_events(layer) == [ResponseReceived(busy, UDP_B, tx)]
    out = layer.outgoing()
    assert tx.ack is not None and out == [(bytes(tx.ack), UDP_B)]
    assert layer.get_timer() == pytest.approx(0.3 + 32.0)  # Timer D: 32 s over UDP
    for when in (1.0, 2.0):
        layer.receive(busy, UDP_B, when)  # the ACK was lost: the final comes again
        assert layer.outgoing() == [(bytes(tx.ack), UDP_B)]
    layer.receive(make_response(tx.request, 180), UDP_B, 3.0)
    assert drain_events(layer) == []  # not passed up again
    assert layer.stats["absorbed"] == 3 and layer.stats["retransmissions"] == 2
    clock.advance_to(layer, 32.2)
    assert tx.state is TxState.COMPLETED
    clock.advance_to(layer, 32.3)
    assert tx.state is TxState.TERMINATED and len(layer) == 0 and layer.get_timer() is None
    assert drain_events(layer) == []


def test_invite_2xx_after_non_2xx_still_goes_up() -> None:
    layer, tx, _, _ = start()
    layer.receive(make_response(tx.request, 404), UDP_B, 0.1)
    drain_events(layer)
    ok = make_response(tx.request, 200)
    layer.receive(ok, UDP_B, 0.2)
    assert drain_events(layer) == [ResponseReceived(ok, UDP_B, tx)]
    assert tx.state is TxState.COMPLETED


def test_ack_for_non_2xx_field_by_field() -> None:
    layer = TransactionLayer()
    invite = make_request(
        "INVITE",
        branch="z9hG4bK-ack-check",
        seq=314,
        uri="sip:bob@b.example;transport=udp",
        extra_vias=("SIP/2.0/UDP proxy.example;branch=z9hG4bK-lower",),
        routes=("<sip:p1.example;lr>", "<sip:p2.example;lr>"),
        body=b"v=0\r\n",
    )
    invite.headers.add("Authorization", 'Digest username="alice"')
    tx = layer.send_request(invite, UDP_B, 0.0)
    layer.outgoing()
    response = make_response(invite, 486, to_tag="busy-tag")
    response.headers.add("Contact", "<sip:bob@10.0.0.2>")
    layer.receive(response, UDP_B, 0.5)
    [(wire, dest)] = layer.outgoing()
    assert dest == UDP_B  # same destination as the INVITE
    ack = parse_message(wire)
    assert isinstance(ack, Request)
    assert ack == tx.ack
    assert ack.method == "ACK"
    assert ack.uri == "sip:bob@b.example;transport=udp"  # the original Request-URI
    assert ack.headers.get_all("Via") == ["SIP/2.0/UDP a.example:5060;branch=z9hG4bK-ack-check"]  # top only
    assert ack.top_via.branch == "z9hG4bK-ack-check"
    assert ack.headers.get_all("Route") == ["<sip:p1.example;lr>", "<sip:p2.example;lr>"]
    assert ack.headers.get("Max-Forwards") == "70"
    assert ack.headers.get("From") == invite.headers.get("From")
    assert ack.headers.get("To") == "<sip:bob@b.example>;tag=busy-tag"  # from the response, with its tag
    assert ack.to_tag == "busy-tag"
    assert ack.call_id == invite.call_id
    assert ack.headers.get("CSeq") == "314 ACK"
    assert ack.body == b"" and b"\r\nContent-Length: 0\r\n" in wire
    for absent in ("Contact", "Content-Type", "Authorization"):
        assert ack.headers.get(absent) is None
    assert [n for n, _ in ack.headers] == [
        "Via",
        "Route",
        "Route",
        "Max-Forwards",
        "From",
        "To",
        "Call-ID",
        "CSeq",
    ]


def test_invite_over_tcp_never_retransmits_and_ends_at_once_after_ack() -> None:
    layer, tx, _clock, _ = start(dest=TCP_B)
    assert tx.reliable
    assert layer.get_timer() == pytest.approx(32.0)  # only Timer B
    layer.receive(make_response(tx.request, 603), TCP_B, 1.0)
    assert len(layer.outgoing()) == 1  # the ACK
    assert tx.state is TxState.TERMINATED and len(layer) == 0  # Timer D = 0
    assert layer.get_timer() is None


def test_invite_over_tcp_timer_b_without_retransmissions() -> None:
    layer, tx, clock, _ = start(dest=TCP_B)
    clock.advance_to(layer, 40.0)
    assert layer.outgoing() == []
    assert drain_events(layer) == [TransactionTimeout(tx)]
    assert layer.stats["retransmissions"] == 0


# --- non-INVITE -----------------------------------------------------------------------------------
def test_non_invite_timer_e_caps_at_t2_then_timer_f() -> None:
    layer, tx, clock, wire = start("OPTIONS")
    assert tx.state is TxState.TRYING and not tx.is_invite
    times = retransmit_times(layer, clock, wire, until=31.99)
    assert times == pytest.approx([0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5])
    clock.advance_to(layer, 32.0)  # Timer F
    assert drain_events(layer) == [TransactionTimeout(tx)]
    assert len(layer) == 0 and layer.get_timer() is None


def test_non_invite_proceeding_retransmits_every_t2() -> None:
    layer, tx, clock, wire = start("BYE")
    trying = make_response(tx.request, 100)
    layer.receive(trying, UDP_B, 0.2)
    assert tx.state is TxState.PROCEEDING
    assert drain_events(layer) == [ResponseReceived(trying, UDP_B, tx)]
    times = retransmit_times(layer, clock, wire, until=20.0)
    assert times == pytest.approx([0.5, 4.5, 8.5, 12.5, 16.5])
    layer.receive(make_response(tx.request, 100), UDP_B, 20.0)  # 1xx in Proceeding: up, stays
    assert tx.state is TxState.PROCEEDING
    clock.advance_to(layer, 32.0)  # Timer F still runs in Proceeding
    assert [type(e) for e in drain_events(layer)] == [ResponseReceived, TransactionTimeout]


def test_non_invite_final_then_timer_k_absorbs_retransmissions() -> None:
    layer, tx, clock, _ = start("REGISTER")
    ok = make_response(tx.request, 200)
    layer.receive(ok, UDP_B, 0.7)
    assert tx.state is TxState.COMPLETED
    assert drain_events(layer) == [ResponseReceived(ok, UDP_B, tx)]
    assert layer.get_timer() == pytest.approx(0.7 + 5.0)  # Timer K = T4
    layer.receive(ok, UDP_B, 1.0)
    layer.receive(make_response(tx.request, 100), UDP_B, 1.1)
    assert drain_events(layer) == [] and layer.outgoing() == []
    assert layer.stats["absorbed"] == 2
    clock.advance_to(layer, 5.8)
    assert tx.state is TxState.TERMINATED and len(layer) == 0 and layer.get_timer() is None


def test_non_invite_over_tcp() -> None:
    layer, tx, _clock, _ = start("OPTIONS", dest=TCP_B)
    assert layer.get_timer() == pytest.approx(32.0)  # Timer F only, no E
    layer.receive(make_response(tx.request, 200), TCP_B, 0.1)
    assert tx.state is TxState.TERMINATED and len(layer) == 0  # Timer K = 0


def test_cancel_is_its_own_client_transaction() -> None:
    layer, invite_tx, clock, _ = start(branch="z9hG4bK-shared")
    layer.receive(make_response(invite_tx.request, 180), UDP_B, 0.1)
    cancel = make_request("CANCEL", branch="z9hG4bK-shared")
    cancel_tx = layer.send_request(cancel, UDP_B, 0.2)
    assert cancel_tx is not invite_tx and len(layer) == 2
    assert cancel_tx.key == ("z9hG4bK-shared", "CANCEL") and invite_tx.key == ("z9hG4bK-shared", "INVITE")
    drain_events(layer)
    ok_cancel = make_response(cancel, 200)
    layer.receive(ok_cancel, UDP_B, 0.3)
    terminated = make_response(invite_tx.request, 487)
    layer.receive(terminated, UDP_B, 0.4)
    assert drain_events(layer) == [
        ResponseReceived(ok_cancel, UDP_B, cancel_tx),
        ResponseReceived(terminated, UDP_B, invite_tx),
    ]
    assert cancel_tx.state is TxState.COMPLETED and invite_tx.state is TxState.COMPLETED
    clock.advance_to(layer, 40.0)
    assert len(layer) == 0


def test_timer_enum_names_match_rfc() -> None:
    assert [t.name for t in Timer] == list("ABDEFGHIJKLM")


def test_response_from_unexpected_source_still_matches() -> None:
    layer, tx, _, _ = start()
    layer.receive(make_response(tx.request, 180), UDP_A, 0.1)  # RFC 3261 matches on branch+method only
    assert drain_events(layer) == [ResponseReceived(make_response(tx.request, 180), UDP_A, tx)]


def test_timer_d_covers_timer_h_when_t1_is_raised() -> None:
    layer, tx, clock, _ = start(settings=TimerSettings(t1=1.0, t2=4.0, t4=5.0))
    layer.receive(make_response(tx.request, 486), UDP_B, 0.0)
    assert layer.get_timer() == pytest.approx(64.0)  # max(32 s, 64*T1)
    clock.advance_to(layer, 63.0)
    layer.receive(make_response(tx.request, 486), UDP_B, 63.0)  # the server's last Timer G copy
    assert len(layer.outgoing()) == 2  # first ACK, and the re-sent one
    assert drain_events(layer) == [ResponseReceived(make_response(tx.request, 486), UDP_B, tx)]  # once


def test_cancel_rearms_timer_b_on_a_ringing_invite() -> None:
    layer, tx, clock, _ = start(branch="z9hG4bK-ring")
    layer.receive(make_response(tx.request, 180), UDP_B, 0.1)
    assert layer.get_timer() is None  # ringing: no deadline of the transaction's own
    layer.send_request(make_cancel(tx.request), UDP_B, 60.0)
    clock.advance_to(layer, 91.9)
    assert tx.state is TxState.PROCEEDING
    clock.advance_to(layer, 92.0)  # 64*T1 after the CANCEL, no final response: give up
    assert tx.state is TxState.TERMINATED
    assert [type(e) for e in drain_events(layer)] == [
        ResponseReceived,
        TransactionTimeout,
        TransactionTimeout,
    ]


def test_cancel_sent_while_calling_still_bounds_the_invite() -> None:
    layer, tx, clock, _ = start(branch="z9hG4bK-early")
    layer.send_request(make_cancel(tx.request), UDP_B, 10.0)  # too early per §9.1, but be safe
    layer.receive(make_response(tx.request, 180), UDP_B, 11.0)
    assert tx.state is TxState.PROCEEDING
    clock.advance_to(layer, 41.9)
    assert tx.state is TxState.PROCEEDING
    clock.advance_to(layer, 42.0)
    assert tx.state is TxState.TERMINATED and len(layer) == 0


def test_cancel_after_the_final_response_changes_nothing() -> None:
    layer, tx, _clock, _ = start(branch="z9hG4bK-late")
    layer.receive(make_response(tx.request, 200), UDP_B, 1.0)
    layer.send_request(make_cancel(tx.request), UDP_B, 2.0)
    assert tx.state is TxState.ACCEPTED and tx._give_up_at is None
