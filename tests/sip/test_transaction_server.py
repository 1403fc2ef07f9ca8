"""Server transactions (RFC 3261 §17.2 + RFC 6026), driven by hand with a fake clock."""

from __future__ import annotations

import pytest

from pbx_edge.sip.endpoint import Endpoint
from pbx_edge.sip.message import Request, Response
from pbx_edge.sip.transaction import (
    RequestReceived,
    ServerTransaction,
    TransactionLayer,
    TransactionTimeout,
    TxState,
)
from tests.sip.fake_wire import (
    TCP_A,
    UDP_A,
    FakeClock,
    drain_events,
    make_2xx_ack,
    make_request,
    make_response,
)


def receive(
    method: str = "INVITE", source: Endpoint = UDP_A, **kw: object
) -> tuple[TransactionLayer, ServerTransaction, FakeClock, Request]:
    layer = TransactionLayer()
    clock = FakeClock()
    request = make_request(method, transport=source.transport, **kw)  # type: ignore[arg-type]
    layer.receive(request, source, clock.now)
    [event] = drain_events(layer)
    assert isinstance(event, RequestReceived) and event.tx is not None
    assert event.request is request and event.source == source
    return layer, event.tx, clock, request


def non_2xx_ack(invite: Request, response: Response) -> Request:
    """The ACK a UAC's transaction sends for a non-2xx: same branch as the INVITE."""
    ack = make_2xx_ack(invite, response)
    ack.headers.set("Via", invite.headers.get("Via") or "")
    return ack


def sent_times(layer: TransactionLayer, clock: FakeClock, until: float) -> list[tuple[float, bytes]]:
    out: list[tuple[float, bytes]] = []
    while (deadline := layer.get_timer()) is not None and deadline <= until:
        clock.now = deadline
        layer.handle_timer(clock.now)
        out += [(clock.now, data) for data, _ in layer.outgoing()]
    return out


# --- INVITE ---------------------------------------------------------------------------------------
def test_new_invite_proceeding_and_retransmission_before_any_response_is_absorbed() -> None:
    layer, tx, _clock, invite = receive()
    assert tx.state is TxState.PROCEEDING and tx.is_invite and tx.source == UDP_A and tx.owner is None
    assert layer.get_timer() is None and layer.outgoing() == []
    layer.receive(invite, UDP_A, 0.5)
    assert drain_events(layer) == [] and layer.outgoing() == []
    assert layer.stats["absorbed"] == 1 and len(layer) == 1


def test_invite_retransmission_resends_last_provisional() -> None:
    layer, tx, _clock, invite = receive()
    trying = make_response(invite, 100)
    ringing = make_response(invite, 180)
    layer.send_response(tx, trying, 0.0)
    layer.send_response(tx, ringing, 0.1)
    assert layer.outgoing() == [(bytes(trying), UDP_A), (bytes(ringing), UDP_A)]
    assert tx.last_response is ringing and tx.state is TxState.PROCEEDING
    layer.receive(invite, UDP_A, 0.5)
    assert layer.outgoing() == [(bytes(ringing), UDP_A)]
    assert layer.stats["retransmissions"] == 1 and layer.stats["absorbed"] == 1
    assert drain_events(layer) == []


def test_non_2xx_final_timer_g_then_timer_h() -> None:
    layer, tx, clock, invite = receive()
    busy = make_response(invite, 486)
    layer.send_response(tx, busy, 0.0)
    assert tx.state is TxState.COMPLETED
    assert layer.outgoing() == [(bytes(busy), UDP_A)]
    sends = sent_times(layer, clock, until=31.99)
    assert [t for t, _ in sends] == pytest.approx([0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5])
    assert all(data == bytes(busy) for _, data in sends)
    clock.advance_to(layer, 32.0)  # Timer H = 64*T1
    assert drain_events(layer) == [TransactionTimeout(tx)]
    assert tx.state is TxState.TERMINATED and len(layer) == 0 and layer.get_timer() is None
    assert layer.stats["timeouts"] == 1


def test_non_2xx_ack_confirms_absorbs_retransmissions_then_timer_i() -> None:
    layer, tx, clock, invite = receive()
    busy = make_response(invite, 486)
    layer.send_response(tx, busy, 0.0)
    layer.outgoing()
    layer.receive(invite, UDP_A, 0.2)  # INVITE retransmission in Completed: re-send the final
    assert layer.outgoing() == [(bytes(busy), UDP_A)]
    ack = non_2xx_ack(invite, busy)
    layer.receive(ack, UDP_A, 0.3)
    assert tx.state is TxState.CONFIRMED
    assert drain_events(layer) == []  # the ACK for a non-2xx stays in the layer
    assert layer.get_timer() == pytest.approx(0.3 + 5.0)  # G and H cancelled; Timer I = T4
    layer.receive(ack, UDP_A, 1.0)
    layer.receive(invite, UDP_A, 1.1)
    assert drain_events(layer) == [] and layer.outgoing() == []
    clock.advance_to(layer, 5.4)
    assert tx.state is TxState.TERMINATED and len(layer) == 0 and layer.get_timer() is None


def test_2xx_is_retransmitted_until_the_ack_with_a_new_branch() -> None:
    layer, tx, clock, invite = receive()
    ok = make_response(invite, 200)
    layer.send_response(tx, ok, 0.0)
    assert tx.state is TxState.ACCEPTED
    assert layer.outgoing() == [(bytes(ok), UDP_A)]
    sends = sent_times(layer, clock, until=12.0)
    assert [t for t, _ in sends] == pytest.approx([0.5, 1.5, 3.5, 7.5, 11.5])  # T1 doubling, cap T2
    layer.receive(invite, UDP_A, 12.0)  # INVITE retransmission while unacknowledged: re-send the 2xx
    assert layer.outgoing() == [(bytes(ok), UDP_A)]
    ack = make_2xx_ack(invite, ok)
    assert ack.top_via.branch != invite.top_via.branch
    layer.receive(ack, UDP_A, 12.1)
    assert drain_events(layer) == [RequestReceived(ack, UDP_A, None)]
    assert tx.acked
    assert sent_times(layer, clock, until=31.0) == []  # retransmission stopped
    layer.receive(ack, UDP_A, 13.0)  # duplicate ACK: absorbed
    layer.receive(invite, UDP_A, 13.1)  # late INVITE copy: absorbed, 2xx not re-sent
    assert drain_events(layer) == [] and layer.outgoing() == []
    assert tx.state is TxState.ACCEPTED and len(layer) == 1
    clock.advance_to(layer, 32.0)  # Timer L after the ACK: silent end
    assert drain_events(layer) == []
    assert tx.state is TxState.TERMINATED and len(layer) == 0 and layer.get_timer() is None
    assert layer.stats["timeouts"] == 0
    layer.receive(ack, UDP_A, 40.0)  # now it matches nothing: up, without a transaction
    assert drain_events(layer) == [RequestReceived(ack, UDP_A, None)]
    assert layer.stats["stray_acks"] == 1


def test_2xx_never_acked_timer_l_times_out() -> None:
    layer, tx, clock, invite = receive()
    layer.send_response(tx, make_response(invite, 180), 0.0)
    layer.send_response(tx, make_response(invite, 200), 1.0)
    clock.advance_to(layer, 32.9)
    assert drain_events(layer) == []
    clock.advance_to(layer, 33.0)  # Timer L = 64*T1 from the 2xx
    assert drain_events(layer) == [TransactionTimeout(tx)]
    assert len(layer) == 0 and layer.get_timer() is None


def test_ack_reusing_the_invite_branch_still_acknowledges_the_2xx() -> None:
    layer, tx, _clock, invite = receive()
    ok = make_response(invite, 200)
    layer.send_response(tx, ok, 0.0)
    ack = non_2xx_ack(invite, ok)  # a broken UA: same branch as the INVITE
    layer.receive(ack, UDP_A, 0.1)
    assert drain_events(layer) == [RequestReceived(ack, UDP_A, None)]
    assert tx.acked


def test_2xx_ack_must_match_dialog_identifiers() -> None:
    layer, tx, _clock, invite = receive(call_id="dlg-1", seq=7)
    ok = make_response(invite, 200, to_tag="uas-tag")
    layer.send_response(tx, ok, 0.0)
    wrong_tag = make_2xx_ack(invite, make_response(invite, 200, to_tag="other"))
    layer.receive(wrong_tag, UDP_A, 0.1)
    assert drain_events(layer) == [RequestReceived(wrong_tag, UDP_A, None)]
    assert not tx.acked and layer.stats["stray_acks"] == 1
    layer.receive(make_2xx_ack(invite, ok), UDP_A, 0.2)
    assert tx.acked


def test_tu_2xx_retransmission_in_accepted_is_sent_other_responses_discarded() -> None:
    layer, tx, _clock, invite = receive()
    ok = make_response(invite, 200)
    layer.send_response(tx, ok, 0.0)
    layer.outgoing()
    layer.send_response(tx, ok, 0.2)  # RFC 6026: 2xx from the TU in Accepted goes out
    assert layer.outgoing() == [(bytes(ok), UDP_A)]
    layer.send_response(tx, make_response(invite, 180), 0.3)
    layer.send_response(tx, make_response(invite, 500), 0.3)
    assert layer.outgoing() == [] and layer.stats["discarded_responses"] == 2


def test_responses_after_a_non_2xx_final_are_discarded() -> None:
    layer, tx, _clock, invite = receive()
    layer.send_response(tx, make_response(invite, 404), 0.0)
    layer.outgoing()
    layer.send_response(tx, make_response(invite, 200), 0.1)
    assert layer.outgoing() == [] and tx.state is TxState.COMPLETED
    assert layer.stats["discarded_responses"] == 1


def test_ack_in_proceeding_is_absorbed() -> None:
    layer, tx, _clock, invite = receive()
    layer.receive(non_2xx_ack(invite, make_response(invite, 486)), UDP_A, 0.1)
    assert drain_events(layer) == [] and tx.state is TxState.PROCEEDING
    assert layer.stats["absorbed"] == 1


def test_invite_over_tcp_no_retransmission_and_instant_confirmed_end() -> None:
    layer, tx, clock, invite = receive(source=TCP_A)
    busy = make_response(invite, 486)
    layer.send_response(tx, busy, 0.0)
    assert layer.get_timer() == pytest.approx(32.0)  # Timer H only
    assert sent_times(layer, clock, until=1.0) == []
    layer.receive(non_2xx_ack(invite, busy), TCP_A, 1.0)
    assert tx.state is TxState.TERMINATED and len(layer) == 0  # Timer I = 0
    assert layer.get_timer() is None


def test_2xx_over_tcp_is_not_retransmitted_but_timer_l_runs() -> None:
    layer, tx, clock, invite = receive(source=TCP_A)
    layer.send_response(tx, make_response(invite, 200), 0.0)
    layer.outgoing()
    assert layer.get_timer() == pytest.approx(32.0)
    clock.advance_to(layer, 32.0)
    assert layer.outgoing() == []
    assert drain_events(layer) == [TransactionTimeout(tx)]


# --- non-INVITE -----------------------------------------------------------------------------------
def test_non_invite_trying_absorbs_silently_then_proceeding_and_completed_resend() -> None:
    layer, tx, clock, bye = receive("BYE")
    assert tx.state is TxState.TRYING and not tx.is_invite
    layer.receive(bye, UDP_A, 0.5)
    assert layer.outgoing() == [] and drain_events(layer) == []
    trying = make_response(bye, 100)
    layer.send_response(tx, trying, 0.6)
    assert tx.state is TxState.PROCEEDING
    layer.outgoing()
    layer.receive(bye, UDP_A, 1.0)
    assert layer.outgoing() == [(bytes(trying), UDP_A)]
    ok = make_response(bye, 200)
    layer.send_response(tx, ok, 1.2)
    assert tx.state is TxState.COMPLETED and tx.last_response is ok
    layer.outgoing()
    assert layer.get_timer() == pytest.approx(1.2 + 32.0)  # Timer J = 64*T1
    layer.receive(bye, UDP_A, 2.0)
    assert layer.outgoing() == [(bytes(ok), UDP_A)]
    layer.send_response(tx, make_response(bye, 500), 2.1)  # discarded in Completed (§17.2.2)
    assert layer.outgoing() == [] and layer.stats["discarded_responses"] == 1
    assert layer.stats["absorbed"] == 3 and layer.stats["retransmissions"] == 2
    clock.advance_to(layer, 33.2)
    assert tx.state is TxState.TERMINATED and len(layer) == 0 and layer.get_timer() is None
    assert drain_events(layer) == []
    layer.send_response(tx, ok, 40.0)  # late: discarded, not an error
    assert layer.outgoing() == [] and layer.stats["discarded_responses"] == 2


def test_non_invite_final_directly_from_trying() -> None:
    layer, tx, _clock, options = receive("OPTIONS")
    layer.send_response(tx, make_response(options, 200), 0.0)
    assert tx.state is TxState.COMPLETED


def test_non_invite_over_tcp_timer_j_is_zero() -> None:
    layer, tx, _clock, options = receive("OPTIONS", source=TCP_A)
    layer.send_response(tx, make_response(options, 200), 0.0)
    assert len(layer.outgoing()) == 1
    assert tx.state is TxState.TERMINATED and len(layer) == 0 and layer.get_timer() is None
    layer.receive(options, TCP_A, 0.1)  # a copy after the end is a new request
    assert [type(e) for e in drain_events(layer)] == [RequestReceived]
