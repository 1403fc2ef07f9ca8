"""Two TransactionLayers over the lossy fake wire: end-to-end exchanges, loss, TCP, leaks, properties."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pbx_edge.sip.endpoint import Endpoint
from pbx_edge.sip.transaction import (
    ClientTransaction,
    RequestReceived,
    ResponseReceived,
    TimerSettings,
    TransactionLayer,
    TransactionTimeout,
    TxState,
)
from tests.sip.fake_wire import (
    UDP_A,
    UDP_B,
    FakeClock,
    Sim,
    drain_events,
    make_2xx_ack,
    make_cancel,
    make_request,
    make_response,
)

SEEDS = range(40)


# --- no loss --------------------------------------------------------------------------------------
def test_invite_200_ack_then_bye_without_loss() -> None:
    sim = Sim(seed=1)
    call = sim.start(make_request("INVITE", call_id="c-1"))
    sim.run(until=1.0)
    assert call.responses == [180, 200] and call.uas_acked == 1 and call.acks_sent == 1
    assert call.server_requests == 1
    bye = sim.start(make_request("BYE", call_id="c-1-bye", seq=2))
    sim.run()
    assert bye.responses == [200]
    sim.assert_quiescent()
    assert sim.a.layer.stats["retransmissions"] == 0 and sim.b.layer.stats["retransmissions"] == 0


def test_invite_rejected_without_loss() -> None:
    sim = Sim(final_status=486)
    call = sim.start(make_request("INVITE", call_id="c-486"))
    sim.run(until=1.0)
    assert call.responses == [180, 486] and call.uas_acked == 0
    b_tx = next(iter(sim.b.layer._servers.values()))
    assert b_tx.state is TxState.CONFIRMED  # the transaction's own ACK got there
    sim.run()
    sim.assert_quiescent()


# --- 30 % loss ------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", SEEDS)
def test_invite_200_ack_completes_under_30_percent_loss(seed: int) -> None:
    sim = Sim(loss=0.3, seed=seed)
    call = sim.start(make_request("INVITE", call_id=f"loss-{seed}"))
    sim.run()
    assert 200 in call.responses, (sim.sent, sim.dropped)
    assert call.uas_acked == 1  # exactly once to the UAS TU, however many ACKs were sent
    assert call.server_requests == 1  # INVITE retransmissions never reach the UAS TU
    assert not call.uac_timeout and not call.uas_timeout
    assert call.responses.count(180) <= 1  # 180 retransmissions are not re-sent unless asked
    sim.assert_quiescent()


@pytest.mark.parametrize("seed", SEEDS)
def test_invite_rejected_completes_under_30_percent_loss(seed: int) -> None:
    sim = Sim(loss=0.3, seed=seed, final_status=603)
    call = sim.start(make_request("INVITE", call_id=f"rej-{seed}"))
    sim.run(until=31.0)
    assert call.responses.count(603) == 1  # retransmitted finals are absorbed, not passed up
    assert not call.uac_timeout and not call.uas_timeout
    sim.run()
    sim.assert_quiescent()


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("method", ["BYE", "OPTIONS"])
def test_non_invite_completes_under_30_percent_loss(seed: int, method: str) -> None:
    sim = Sim(loss=0.3, seed=seed)
    record = sim.start(make_request(method, call_id=f"{method}-{seed}"))
    sim.run()
    assert record.responses == [200] and record.server_requests == 1
    assert not record.uac_timeout
    sim.assert_quiescent()


def test_loss_actually_happened() -> None:
    dropped = retransmitted = 0
    for seed in range(10):
        sim = Sim(loss=0.3, seed=seed)
        sim.start(make_request("INVITE", call_id=f"x-{seed}"))
        sim.run()
        dropped += sim.dropped["A"] + sim.dropped["B"]
        retransmitted += sim.a.layer.stats["retransmissions"] + sim.b.layer.stats["retransmissions"]
    assert dropped > 5 and retransmitted >= dropped // 2  # the loss was real and was repaired


# --- 100 % loss -----------------------------------------------------------------------------------
def test_invite_times_out_cleanly_under_total_loss() -> None:
    sim = Sim(loss=1.0)
    call = sim.start(make_request("INVITE", call_id="void"))
    sim.run()
    assert call.uac_timeout and call.responses == [] and call.server_requests == 0
    assert sim.now == pytest.approx(32.0)  # Timer B
    assert sim.sent["A"] == 7  # the INVITE and six Timer A retransmissions
    sim.assert_quiescent()


def test_non_invite_times_out_cleanly_under_total_loss() -> None:
    sim = Sim(loss=1.0)
    record = sim.start(make_request("OPTIONS", call_id="void-options"))
    sim.run()
    assert record.uac_timeout and record.responses == []
    assert sim.now == pytest.approx(32.0)  # Timer F
    assert sim.sent["A"] == 11
    sim.assert_quiescent()


def test_responses_all_lost_both_sides_time_out() -> None:
    sim = Sim(loss_a_to_b=0.0, loss_b_to_a=1.0)
    call = sim.start(make_request("INVITE", call_id="one-way"))
    sim.run()
    assert call.uac_timeout  # Timer B: no response ever arrived
    assert call.uas_timeout and call.uas_acked == 0  # Timer L: the 2xx was never ACKed
    assert call.server_requests == 1
    sim.assert_quiescent()


def test_acks_all_lost_uas_times_out_while_uac_re_acks_every_2xx() -> None:
    sim = Sim()
    call = sim.start(make_request("INVITE", call_id="lost-acks"))
    sim.run(until=0.03)  # the INVITE got there; 180 and 200 are in flight
    sim.loss["A"] = 1.0  # from now on every ACK from A vanishes
    sim.run()
    retransmitted = sim.b.layer.stats["retransmissions"]
    assert retransmitted == 10  # Timer G over Timer L: 0.5 1 2 4 4 4 4 4 4 4
    assert call.responses == [180] + [200] * (1 + retransmitted)  # every 2xx copy went up ...
    assert call.acks_sent == 1 + retransmitted  # ... and the TU re-ACKed each
    assert call.uas_timeout and call.uas_acked == 0  # Timer L: the TU should send BYE
    assert not call.uac_timeout
    sim.assert_quiescent()


# --- CANCEL -------------------------------------------------------------------------------------
def test_cancel_end_to_end() -> None:
    sim = Sim(answer_delay=100.0, cancel_after=5.0)
    call = sim.start(make_request("INVITE", call_id="cancel-1"))
    sim.run()
    assert call.responses == [180, 487] and call.cancel_responses == [200]
    assert call.uas_cancelled and call.uas_acked == 0  # the 487's ACK stayed in the layers
    assert not call.uac_timeout and not call.uas_timeout
    sim.assert_quiescent()


@pytest.mark.parametrize("seed", SEEDS)
def test_cancel_completes_under_30_percent_loss(seed: int) -> None:
    sim = Sim(loss=0.3, seed=seed, answer_delay=100.0, cancel_after=5.0)
    call = sim.start(make_request("INVITE", call_id=f"cancel-{seed}"))
    sim.run()
    assert call.responses[-1] == 487 and call.responses.count(487) == 1
    assert call.cancel_responses == [200]
    assert not call.uac_timeout and not call.uas_timeout
    sim.assert_quiescent()


def test_cancel_into_silence_gives_up_the_invite_64_t1_later() -> None:
    sim = Sim(answer_delay=1000.0, cancel_after=5.0)
    call = sim.start(make_request("INVITE", call_id="cancel-void"))
    sim.run(until=1.0)
    assert call.responses == [180]
    sim.loss["A"] = 1.0  # the CANCEL (and all its retransmissions) vanish
    sim.run(until=36.9)
    assert not call.uac_timeout  # Timer B, re-armed by the CANCEL at t=5, fires at 37
    sim.run(until=37.1)
    assert call.uac_timeout and call.client_tx is not None
    assert call.client_tx.state is TxState.TERMINATED
    assert len(sim.a.layer) == 0  # the CANCEL's own Timer F fired at 37 too
    assert len(sim.b.layer) == 1  # the UAS never heard the CANCEL: it still rings, as it should


# --- TCP ------------------------------------------------------------------------------------------
def test_tcp_exchanges_never_retransmit_and_leave_nothing_behind() -> None:
    sim = Sim(transport="TCP")
    call = sim.start(make_request("INVITE", call_id="tcp-1", transport="TCP"))
    reject = Sim(transport="TCP", final_status=486)
    rejected = reject.start(make_request("INVITE", call_id="tcp-2", transport="TCP"))
    bye = sim.start(make_request("BYE", call_id="tcp-bye", transport="TCP", seq=2))
    for s in (sim, reject):
        s.run(until=1.0)
    assert call.responses == [180, 200] and call.uas_acked == 1
    assert rejected.responses == [180, 486]
    assert bye.responses == [200]
    # non-INVITE and rejected INVITE transactions are already gone (K, J, D, I are zero)
    assert len(reject.a.layer) == 0 and len(reject.b.layer) == 0
    assert len(sim.a.layer) == 1 and len(sim.b.layer) == 1  # Timer M / Timer L still run
    for s in (sim, reject):
        s.run()
        s.assert_quiescent()
        for node in (s.a, s.b):
            assert node.layer.stats["retransmissions"] == 0
    assert sim.sent == {"A": 3, "B": 3}  # INVITE, ACK, BYE / 180, 200, 200


def test_tcp_total_silence_times_out_without_retransmitting() -> None:
    sim = Sim(transport="TCP", loss=1.0)  # the fake wire never drops on TCP, so silence the peer
    sim.on_uas_request = lambda s, e: True  # the UAS TU never answers ...
    call = sim.start(make_request("OPTIONS", call_id="tcp-silent", transport="TCP"))
    sim.run(until=40.0)
    assert call.uac_timeout and sim.sent["A"] == 1
    assert len(sim.a.layer) == 0
    assert len(sim.b.layer) == 1  # ... so its server transaction waits for the TU (RFC: no timer)


# --- no leaks -------------------------------------------------------------------------------------
def test_thousands_of_transactions_leave_no_state() -> None:
    sim = Sim(loss=0.05, seed=7)
    records = []
    for i in range(1500):
        records.append(sim.start(make_request("INVITE", call_id=f"bulk-{i}")))
        records.append(sim.start(make_request("BYE", call_id=f"bulk-bye-{i}", seq=2)))
        records.append(sim.start(make_request("OPTIONS", call_id=f"bulk-opt-{i}")))
        if i % 50 == 0:
            sim.run(until=sim.now + 0.5)
    peak = len(sim.a.layer) + len(sim.b.layer)
    assert peak > 100
    sim.run()
    sim.assert_quiescent()
    assert all(r.responses and r.responses[-1] == 200 for r in records)
    assert sum(r.uas_acked for r in records) == 1500
    stats_a = sim.a.layer.stats
    assert stats_a["client_transactions"] == 4500 and sim.b.layer.stats["server_transactions"] == 4500


def test_thousands_of_timeouts_leave_no_state() -> None:
    layer = TransactionLayer()
    clock = FakeClock()
    for i in range(3000):
        method = ("INVITE", "OPTIONS", "BYE")[i % 3]
        layer.send_request(make_request(method), UDP_B, clock.now)
        clock.now += 0.001
    server = [make_request(m) for m in ("INVITE", "INVITE", "MESSAGE") * 500]
    for i, request in enumerate(server):
        layer.receive(request, UDP_A, clock.now)
        tx = drain_events(layer)[-1].tx  # type: ignore[union-attr]
        assert tx is not None
        layer.send_response(tx, make_response(request, 200 if i % 3 == 0 else 404), clock.now)
    clock.advance_to(layer, 1000.0)
    assert len(layer) == 0 and layer.get_timer() is None and len(layer._timers) == 0
    assert layer.stats["timeouts"] == 3000 + 500 + 500  # B/F, H (404 never ACKed), L (200 never ACKed)
    assert not layer._clients and not layer._servers and not layer._accepted and not layer._by_peer


# --- properties -----------------------------------------------------------------------------------
@settings(max_examples=150, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    loss_ab=st.floats(0.0, 1.0),
    loss_ba=st.floats(0.0, 1.0),
    final=st.sampled_from([200, 486]),
    provisional=st.booleans(),
    latency=st.floats(0.001, 3.0),
    answer_delay=st.sampled_from([0.0, 2.0, 100.0]),
)
def test_any_loss_ends_consistently_and_cleanly(
    seed: int,
    loss_ab: float,
    loss_ba: float,
    final: int,
    provisional: bool,
    latency: float,
    answer_delay: float,
) -> None:
    sim = Sim(
        loss_a_to_b=loss_ab,
        loss_b_to_a=loss_ba,
        seed=seed,
        final_status=final,
        provisional=provisional,
        latency=latency,
        answer_delay=answer_delay,
        cancel_after=60.0,  # the UAC TU's ring timeout
    )
    call = sim.start(make_request("INVITE", call_id="prop"))
    sim.run()
    sim.assert_quiescent()  # whatever got lost, both layers end empty with no timer left
    assert call.server_requests <= 1  # retransmitted INVITEs never reach the UAS TU
    matched_acks = call.uas_acked - sim.b.layer.stats["stray_acks"]
    assert 0 <= matched_acks <= 1  # one ACK per accepted 2xx reaches the TU with a transaction
    finals = [s for s in call.responses if s >= 200]
    assert set(finals) <= {final, 487}
    if final == 486 or call.uas_cancelled:
        assert matched_acks == 0  # an ACK for a non-2xx never goes up
        assert len(finals) <= 1  # and the non-2xx final reaches the UAC TU at most once
    if matched_acks:  # the 2xx got through, with the transaction or (after Timer B) without
        assert 200 in finals or any(r.status == 200 for r in sim.stray_responses)
        assert not call.uas_timeout
    if not finals:
        assert call.uac_timeout  # no final response: Timer B said so (after the CANCEL, if 1xx)
    if call.uac_timeout:
        assert not finals


@settings(max_examples=200, deadline=None)
@given(
    steps=st.lists(
        st.tuples(st.sampled_from([100, 180, 200, 202, 404, 486, 503, 0]), st.floats(0.0, 10.0)), max_size=12
    ),
    invite=st.booleans(),
    reliable=st.booleans(),
)
def test_client_transaction_never_misbehaves(
    steps: list[tuple[int, float]], invite: bool, reliable: bool
) -> None:
    """Any order of responses and pauses: at most one non-2xx final goes up, and it all ends."""
    dest = Endpoint("TCP" if reliable else "UDP", "10.0.0.2", 5060)
    layer = TransactionLayer(TimerSettings())
    clock = FakeClock()
    tx: ClientTransaction = layer.send_request(make_request("INVITE" if invite else "OPTIONS"), dest, 0.0)
    up: list[ResponseReceived] = []
    for status, pause in steps:
        clock.advance_to(layer, clock.now + pause)
        if status:
            layer.receive(make_response(tx.request, status), dest, clock.now)
        up += [e for e in drain_events(layer) if isinstance(e, ResponseReceived)]
    non_2xx_finals = [e for e in up if e.tx is tx and e.response.status >= 300]
    assert len(non_2xx_finals) <= 1
    if not invite:
        assert len([e for e in up if e.tx is tx and e.response.status >= 200]) <= 1
    if tx.state is TxState.PROCEEDING and invite:
        layer.send_request(make_cancel(tx.request), dest, clock.now)  # the TU gives up ringing
    clock.advance_to(layer, clock.now + 100.0)
    assert tx.state is TxState.TERMINATED and len(layer) == 0 and layer.get_timer() is None


@settings(max_examples=200, deadline=None)
@given(
    actions=st.lists(
        st.tuples(
            st.sampled_from(["req", "ack", "ack2xx", "100", "180", "200", "486", "wait"]), st.floats(0, 8)
        ),
        max_size=14,
    ),
    invite=st.booleans(),
    reliable=st.booleans(),
)
def test_server_transaction_never_misbehaves(
    actions: list[tuple[str, float]], invite: bool, reliable: bool
) -> None:
    """Any order of request copies, ACKs, TU responses and pauses: the layer ends empty."""
    source = Endpoint("TCP" if reliable else "UDP", "10.0.0.1", 5060)
    layer = TransactionLayer()
    clock = FakeClock()
    request = make_request("INVITE" if invite else "OPTIONS")
    layer.receive(request, source, 0.0)
    [first] = drain_events(layer)
    assert isinstance(first, RequestReceived) and first.tx is not None
    txs = [first.tx]
    for action, pause in actions:
        clock.advance_to(layer, clock.now + pause)
        tx = txs[-1]
        if action == "req":
            layer.receive(request, source, clock.now)
        elif action in ("ack", "ack2xx") and tx.last_response is not None:
            ack = make_2xx_ack(request, tx.last_response)
            if action == "ack":
                ack.headers.set("Via", request.headers.get("Via") or "")
            layer.receive(ack, source, clock.now)
        elif action.isdigit():
            layer.send_response(tx, make_response(request, int(action)), clock.now)
        for event in drain_events(layer):
            assert isinstance(event, RequestReceived | TransactionTimeout)
            if isinstance(event, RequestReceived) and event.tx is not None:
                assert txs[-1].state is TxState.TERMINATED  # a copy is new only once the last one ended
                txs.append(event.tx)
            elif isinstance(event, RequestReceived):
                assert event.request.method == "ACK"
        for _, dest in layer.outgoing():
            assert dest == source
    for tx in txs:
        if tx.last_response is None or tx.last_response.status < 200:
            layer.send_response(tx, make_response(request, 500), clock.now)  # the TU answers at last
    clock.advance_to(layer, clock.now + 100.0)
    assert len(layer) == 0 and layer.get_timer() is None
