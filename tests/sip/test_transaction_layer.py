"""TransactionLayer plumbing: matching rules, CANCEL lookup, RFC 2543 fallback, errors, API edges."""

from __future__ import annotations

import dataclasses

import pytest

from pbx_edge.sip.endpoint import Endpoint
from pbx_edge.sip.message import Headers, Request
from pbx_edge.sip.transaction import (
    ClientTransaction,
    RequestReceived,
    ResponseReceived,
    ServerTransaction,
    TimerSettings,
    TransactionLayer,
    TransportError,
    TxState,
)
from tests.sip.fake_wire import (
    TCP_A,
    UDP_A,
    UDP_B,
    FakeClock,
    drain_events,
    make_2xx_ack,
    make_request,
    make_response,
)

UDP_C = Endpoint("UDP", "10.0.0.3", 5060)


def server_tx(
    layer: TransactionLayer, request: Request, source: Endpoint = UDP_A, now: float = 0.0
) -> ServerTransaction:
    layer.receive(request, source, now)
    [event] = drain_events(layer)
    assert isinstance(event, RequestReceived) and event.tx is not None
    return event.tx


# --- server matching ------------------------------------------------------------------------------
def test_same_branch_different_sent_by_or_method_are_different_transactions() -> None:
    layer = TransactionLayer()
    a = server_tx(layer, make_request("INVITE", branch="z9hG4bK-x", sent_by="a.example:5060"))
    b = server_tx(layer, make_request("INVITE", branch="z9hG4bK-x", sent_by="c.example:5060"))
    c = server_tx(layer, make_request("INVITE", branch="z9hG4bK-x", sent_by="a.example"))  # no port
    d = server_tx(layer, make_request("OPTIONS", branch="z9hG4bK-x", sent_by="a.example:5060"))
    assert len({id(a), id(b), id(c), id(d)}) == 4 and len(layer) == 4


def test_sent_by_host_matches_case_insensitively() -> None:
    layer = TransactionLayer()
    server_tx(layer, make_request("INVITE", branch="z9hG4bK-y", sent_by="A.Example:5060"))
    layer.receive(make_request("INVITE", branch="z9hG4bK-y", sent_by="a.example:5060"), UDP_A, 0.1)
    assert drain_events(layer) == [] and layer.stats["absorbed"] == 1


def test_cancel_gets_its_own_transaction_and_finds_the_invite() -> None:
    layer = TransactionLayer()
    invite_tx = server_tx(layer, make_request("INVITE", branch="z9hG4bK-c"))
    layer.send_response(invite_tx, make_response(invite_tx.request, 180), 0.0)
    cancel = make_request("CANCEL", branch="z9hG4bK-c")
    cancel_tx = server_tx(layer, cancel, now=0.5)
    assert cancel_tx is not invite_tx and cancel_tx.request.method == "CANCEL"
    assert layer.find_invite_server_tx(cancel) is invite_tx
    assert layer.find_invite_server_tx(cancel_tx.request) is invite_tx
    # the B2BUA's CANCEL handling: 200 to the CANCEL, 487 to the INVITE
    layer.send_response(cancel_tx, make_response(cancel, 200), 0.5)
    layer.send_response(invite_tx, make_response(invite_tx.request, 487), 0.5)
    assert cancel_tx.state is TxState.COMPLETED and invite_tx.state is TxState.COMPLETED


def test_cancel_lookup_misses() -> None:
    layer = TransactionLayer()
    invite_tx = server_tx(layer, make_request("INVITE", branch="z9hG4bK-m"))
    assert layer.find_invite_server_tx(make_request("CANCEL", branch="z9hG4bK-other")) is None
    assert (
        layer.find_invite_server_tx(make_request("CANCEL", branch="z9hG4bK-m", sent_by="x.example")) is None
    )
    no_via = make_request("CANCEL", branch="z9hG4bK-m")
    no_via.headers.remove("Via")
    assert layer.find_invite_server_tx(no_via) is None
    bad_cseq = make_request("CANCEL", branch="z9hG4bK-m")
    bad_cseq.headers.set("CSeq", "junk")
    assert layer.find_invite_server_tx(bad_cseq) is None
    # once the INVITE transaction is over, the CANCEL finds nothing
    layer.send_response(invite_tx, make_response(invite_tx.request, 486), 0.0)
    layer.receive(make_2xx_ack(invite_tx.request, make_response(invite_tx.request, 486)), UDP_A, 0.1)
    FakeClock().advance_to(layer, 100.0)
    assert layer.find_invite_server_tx(make_request("CANCEL", branch="z9hG4bK-m")) is None


# --- RFC 2543 fallback ----------------------------------------------------------------------------
def test_rfc2543_invite_retransmission_ack_and_cancel() -> None:
    layer = TransactionLayer()
    invite = make_request("INVITE", branch="old-style-1", call_id="legacy")
    tx = server_tx(layer, invite)
    assert tx.key[0] == "rfc2543"
    layer.receive(make_request("INVITE", branch="old-style-1", call_id="legacy"), UDP_A, 0.1)
    assert drain_events(layer) == [] and layer.stats["absorbed"] == 1
    other = make_request("INVITE", branch="old-style-1", call_id="legacy-2")
    assert server_tx(layer, other) is not tx
    assert layer.find_invite_server_tx(make_request("CANCEL", branch="old-style-1", call_id="legacy")) is tx
    busy = make_response(invite, 486, to_tag="t2543")
    layer.send_response(tx, busy, 0.2)
    ack = Request(
        headers=Headers(
            [
                ("Via", invite.headers.get("Via") or ""),
                ("From", invite.headers.get("From") or ""),
                ("To", busy.headers.get("To") or ""),
                ("Call-ID", "legacy"),
                ("CSeq", "1 ACK"),
            ]
        ),
        method="ACK",
        uri=invite.uri,
    )
    wrong = Request(headers=ack.headers.copy(), method="ACK", uri=invite.uri)
    wrong.headers.set("To", "<sip:bob@b.example>;tag=not-ours")
    layer.receive(wrong, UDP_A, 0.3)
    assert drain_events(layer) == [RequestReceived(wrong, UDP_A, None)]
    layer.receive(ack, UDP_A, 0.3)
    assert tx.state is TxState.CONFIRMED and drain_events(layer) == []


def test_rfc2543_reinvite_with_to_tag_and_ack() -> None:
    layer = TransactionLayer()
    reinvite = make_request("INVITE", branch=None, to_tag="dlg", seq=2)
    reinvite.headers.set("Via", "SIP/2.0/UDP a.example:5060")  # no branch at all
    tx = server_tx(layer, reinvite)
    busy = make_response(reinvite, 491)
    layer.send_response(tx, busy, 0.0)
    ack = make_2xx_ack(reinvite, busy)
    ack.headers.set("Via", "SIP/2.0/UDP a.example:5060")
    ack.uri = reinvite.uri
    layer.receive(ack, UDP_A, 0.1)
    assert tx.state is TxState.CONFIRMED


def test_rfc2543_ack_before_any_response_is_not_matched() -> None:
    layer = TransactionLayer()
    invite = make_request("INVITE", branch="old-2")
    server_tx(layer, invite)
    ack = make_2xx_ack(invite, make_response(invite, 486))
    ack.headers.set("Via", invite.headers.get("Via") or "")
    ack.uri = invite.uri
    layer.receive(ack, UDP_A, 0.1)
    assert drain_events(layer) == [RequestReceived(ack, UDP_A, None)]


# --- malformed input ------------------------------------------------------------------------------
def test_messages_without_usable_via_or_cseq_are_dropped() -> None:
    layer = TransactionLayer()
    no_via = make_request("OPTIONS")
    no_via.headers.remove("Via")
    bad_via = make_request("OPTIONS")
    bad_via.headers.set("Via", "garbage")
    bad_cseq = make_request("OPTIONS")
    bad_cseq.headers.set("CSeq", "x OPTIONS")
    bad_from = make_request("OPTIONS", branch="no-cookie")
    bad_from.headers.set("From", "<<<")
    for message in (no_via, bad_via, bad_cseq, bad_from, make_response(bad_cseq, 200)):
        layer.receive(message, UDP_A, 0.0)
    assert layer.stats["malformed"] == 5
    assert drain_events(layer) == [] and len(layer) == 0


def test_response_without_branch_is_stray() -> None:
    layer = TransactionLayer()
    response = make_response(make_request("OPTIONS"), 200)
    response.headers.set("Via", "SIP/2.0/UDP a.example:5060")
    layer.receive(response, UDP_B, 0.0)
    assert drain_events(layer) == [ResponseReceived(response, UDP_B, None)]


# --- TU input validation --------------------------------------------------------------------------
def test_send_request_validation() -> None:
    layer = TransactionLayer()
    with pytest.raises(ValueError, match="send_stateless"):
        layer.send_request(make_request("ACK"), UDP_B, 0.0)
    no_via = make_request("OPTIONS")
    no_via.headers.remove("Via")
    with pytest.raises(ValueError, match="no Via"):
        layer.send_request(no_via, UDP_B, 0.0)
    with pytest.raises(ValueError, match="cookie"):
        layer.send_request(make_request("OPTIONS", branch="1234"), UDP_B, 0.0)
    with pytest.raises(ValueError, match="does not match"):
        layer.send_request(make_request("OPTIONS", cseq_method="INFO"), UDP_B, 0.0)
    layer.send_request(make_request("OPTIONS", branch="z9hG4bK-dup"), UDP_B, 0.0)
    with pytest.raises(ValueError, match="already"):
        layer.send_request(make_request("OPTIONS", branch="z9hG4bK-dup"), UDP_B, 0.0)
    assert len(layer) == 1


def test_send_response_on_foreign_transaction() -> None:
    one, other = TransactionLayer(), TransactionLayer()
    tx = server_tx(one, make_request("OPTIONS"))
    with pytest.raises(ValueError, match="another"):
        other.send_response(tx, make_response(tx.request, 200), 0.0)


def test_send_stateless_queues_in_order() -> None:
    layer = TransactionLayer()
    invite = make_request("INVITE")
    ok = make_response(invite, 200)
    ack = make_2xx_ack(invite, ok)
    tx = layer.send_request(make_request("OPTIONS"), UDP_B, 0.0)
    layer.send_stateless(ack, UDP_B)
    layer.send_stateless(ok, UDP_A)
    assert layer.outgoing() == [(bytes(tx.request), UDP_B), (bytes(ack), UDP_B), (bytes(ok), UDP_A)]
    assert layer.outgoing() == []
    assert len(layer) == 1  # stateless sends create nothing


def test_settings_validation_and_defaults() -> None:
    assert TimerSettings() == TimerSettings(t1=0.5, t2=4.0, t4=5.0)
    for bad in ({"t1": 0.0}, {"t1": 1.0, "t2": 0.5}, {"t4": -1.0}):
        with pytest.raises(ValueError):
            TimerSettings(**bad)
    with pytest.raises(dataclasses.FrozenInstanceError):
        TimerSettings().t1 = 1.0  # type: ignore[misc]


def test_events_are_frozen() -> None:
    event = RequestReceived(make_request("ACK"), UDP_A, None)
    with pytest.raises(dataclasses.FrozenInstanceError):
        event.tx = None  # type: ignore[misc]
    assert not hasattr(event, "__dict__")


# --- transport errors -----------------------------------------------------------------------------
def test_transport_error_ends_every_transaction_with_that_peer() -> None:
    layer = TransactionLayer()
    to_b = [layer.send_request(make_request("OPTIONS"), UDP_B, 0.0) for _ in range(3)]
    to_c = layer.send_request(make_request("OPTIONS"), UDP_C, 0.0)
    from_b = server_tx(layer, make_request("INVITE"), source=UDP_B)
    from_a = server_tx(layer, make_request("INVITE"), source=UDP_A)
    layer.send_response(from_b, make_response(from_b.request, 200), 0.0)
    layer.transport_error(UDP_B, 0.1)
    events = drain_events(layer)
    assert events == [TransportError(tx) for tx in [*to_b, from_b]]
    assert all(tx.state is TxState.TERMINATED for tx in [*to_b, from_b])
    assert to_c.state is TxState.TRYING and from_a.state is TxState.PROCEEDING
    assert len(layer) == 2 and layer.stats["transport_errors"] == 4
    assert not layer._accepted  # the accepted 2xx index was cleaned too
    layer.transport_error(UDP_B, 0.2)  # nothing left there
    layer.transport_error(TCP_A, 0.2)  # never seen
    assert drain_events(layer) == []
    FakeClock().advance_to(layer, 1000.0)
    assert layer.get_timer() is None


def test_owner_slot_and_repr() -> None:
    layer = TransactionLayer()
    tx: ClientTransaction = layer.send_request(make_request("OPTIONS", branch="z9hG4bK-r"), UDP_B, 0.0)
    tx.owner = "call-leg-7"
    assert tx.owner == "call-leg-7"
    assert "OPTIONS" in repr(tx) and "Trying" in repr(tx)
    with pytest.raises(AttributeError):
        tx.whatever = 1  # type: ignore[attr-defined]


def test_next_event_on_empty_layer() -> None:
    layer = TransactionLayer()
    assert layer.next_event() is None and layer.get_timer() is None and len(layer) == 0
    layer.handle_timer(10.0)  # nothing due: fine
