"""Test helpers for the transaction layer: message builders and a lossy two-endpoint fake wire.

:class:`Sim` joins two :class:`TransactionLayer` instances over a simulated network. Every datagram a
layer queues is serialized, dropped with a seeded random probability (per direction), delayed by a
fixed latency, then parsed again with :func:`parse_message` and fed to the other layer. Time is a
fake clock that jumps to the next delivery or timer deadline, so 32-second timeouts take
microseconds. Minimal TUs (a UAC and a UAS) sit on top and record what they saw.
"""

from __future__ import annotations

import heapq
import itertools
import random
from collections.abc import Callable
from dataclasses import dataclass, field

from pbx_edge.sip.endpoint import Endpoint
from pbx_edge.sip.message import Headers, Request, Response, parse_message
from pbx_edge.sip.transaction import (
    ClientTransaction,
    RequestReceived,
    ResponseReceived,
    ServerTransaction,
    TimerSettings,
    TransactionEvent,
    TransactionLayer,
    TransactionTimeout,
    TransportError,
    TxState,
)

UDP_A = Endpoint("UDP", "10.0.0.1", 5060)
UDP_B = Endpoint("UDP", "10.0.0.2", 5060)
TCP_A = Endpoint("TCP", "10.0.0.1", 5060)
TCP_B = Endpoint("TCP", "10.0.0.2", 5060)

_branches = itertools.count(1)


def new_branch() -> str:
    return f"z9hG4bK-t{next(_branches)}"


# --- message builders -----------------------------------------------------------------------------
def make_request(
    method: str = "INVITE",
    *,
    branch: str | None = None,
    call_id: str = "call-1@a.example",
    seq: int = 1,
    from_tag: str = "fromtag1",
    to_tag: str | None = None,
    uri: str = "sip:bob@b.example",
    sent_by: str = "a.example:5060",
    transport: str = "UDP",
    extra_vias: tuple[str, ...] = (),
    routes: tuple[str, ...] = (),
    body: bytes = b"",
    cseq_method: str | None = None,
) -> Request:
    branch = new_branch() if branch is None else branch
    to = "<sip:bob@b.example>" + (f";tag={to_tag}" if to_tag else "")
    items = [("Via", f"SIP/2.0/{transport} {sent_by};branch={branch}")]
    items += [("Via", v) for v in extra_vias]
    items += [("Route", r) for r in routes]
    items += [
        ("Max-Forwards", "69"),
        ("From", f"Alice <sip:alice@a.example>;tag={from_tag}"),
        ("To", to),
        ("Call-ID", call_id),
        ("CSeq", f"{seq} {cseq_method or method}"),
        ("Contact", "<sip:alice@10.0.0.1:5060>"),
    ]
    if body:
        items.append(("Content-Type", "application/sdp"))
    return Request(headers=Headers(items), body=body, method=method, uri=uri)


def make_response(
    request: Request, status: int, reason: str = "", *, to_tag: str | None = "totag1"
) -> Response:
    headers = Headers()
    for via in request.headers.get_all("Via"):
        headers.add("Via", via)
    headers.add("From", request.headers.get("From") or "")
    to = request.headers.get("To") or ""
    if to_tag is not None and status > 100 and ";tag=" not in to:
        to += f";tag={to_tag}"
    headers.add("To", to)
    headers.add("Call-ID", request.call_id)
    headers.add("CSeq", request.headers.get("CSeq") or "")
    return Response(headers=headers, status=status, reason=reason or _REASONS.get(status, "Whatever"))


_REASONS = {100: "Trying", 180: "Ringing", 200: "OK", 404: "Not Found", 486: "Busy Here", 487: "Terminated"}


def make_2xx_ack(invite: Request, response: Response, *, branch: str | None = None) -> Request:
    """The UAC core's ACK for a 2xx (RFC 3261 §13.2.2.4): a new transaction, so a new branch."""
    via = (invite.headers.get("Via") or "").split(";branch=")[0]
    items = [
        ("Via", f"{via};branch={branch or new_branch()}"),
        ("Max-Forwards", "70"),
        ("From", invite.headers.get("From") or ""),
        ("To", response.headers.get("To") or ""),
        ("Call-ID", invite.call_id),
        ("CSeq", f"{invite.cseq.seq} ACK"),
    ]
    return Request(headers=Headers(items), method="ACK", uri="sip:bob@10.0.0.2:5060")


def make_cancel(invite: Request) -> Request:
    """CANCEL for ``invite`` (RFC 3261 §9.1): same branch, Request-URI, Call-ID, From, To, CSeq number."""
    items = [
        ("Via", invite.headers.get("Via") or ""),
        ("Max-Forwards", "70"),
        ("From", invite.headers.get("From") or ""),
        ("To", invite.headers.get("To") or ""),
        ("Call-ID", invite.call_id),
        ("CSeq", f"{invite.cseq.seq} CANCEL"),
    ]
    return Request(headers=Headers(items), method="CANCEL", uri=invite.uri)


def drain_events(layer: TransactionLayer) -> list[TransactionEvent]:
    events: list[TransactionEvent] = []
    while (event := layer.next_event()) is not None:
        events.append(event)
    return events


# --- fake clock -----------------------------------------------------------------------------------
class FakeClock:
    """A clock the tests move by hand, plus a helper to fire a layer's timers up to a time."""

    def __init__(self, start: float = 0.0) -> None:
        self.now = start

    def advance_to(self, layer: TransactionLayer, when: float) -> None:
        """Fire every timer due up to ``when``, one deadline at a time, like a real driver."""
        while (deadline := layer.get_timer()) is not None and deadline <= when:
            self.now = max(self.now, deadline)
            layer.handle_timer(self.now)
        self.now = max(self.now, when)


# --- the two-endpoint simulation ------------------------------------------------------------------
@dataclass
class CallRecord:
    """What the two TUs saw of one INVITE (or one non-INVITE request)."""

    request: Request
    client_tx: ClientTransaction | None = None
    responses: list[int] = field(default_factory=list)  # statuses passed up to the UAC TU
    uac_timeout: bool = False
    uac_transport_error: bool = False
    server_requests: int = 0  # times the UAS TU saw the request as new
    uas_acked: int = 0  # ACKs passed up to the UAS TU (tx=None: 2xx ACKs, or strays)
    uas_cancelled: bool = False  # the UAS TU answered 487 because of a CANCEL
    cancel_responses: list[int] = field(default_factory=list)
    cancel_tx: ClientTransaction | None = None
    uas_timeout: bool = False
    acks_sent: int = 0


@dataclass
class Node:
    name: str
    endpoint: Endpoint
    layer: TransactionLayer


class Sim:
    """Two layers (A: the UAC side, B: the UAS side) over a lossy wire with a fake clock."""

    def __init__(
        self,
        *,
        loss: float = 0.0,
        loss_a_to_b: float | None = None,
        loss_b_to_a: float | None = None,
        seed: int = 0,
        latency: float = 0.02,
        transport: str = "UDP",
        settings: TimerSettings | None = None,
        final_status: int = 200,
        provisional: bool = True,
        answer_delay: float = 0.0,
        cancel_after: float | None = None,
    ) -> None:
        settings = settings or TimerSettings()
        self.a = Node("A", Endpoint(transport, "10.0.0.1", 5060), TransactionLayer(settings))
        self.b = Node("B", Endpoint(transport, "10.0.0.2", 5060), TransactionLayer(settings))
        self.loss = {
            "A": loss if loss_a_to_b is None else loss_a_to_b,
            "B": loss if loss_b_to_a is None else loss_b_to_a,
        }
        self.rng = random.Random(seed)
        self.latency = latency
        self.now = 0.0
        self.final_status = final_status
        self.provisional = provisional
        self.answer_delay = answer_delay  # UAS: seconds between the 180 and the final response
        self.cancel_after = cancel_after  # UAC: CANCEL an INVITE with no final response by then
        self._tu_timers: list[tuple[float, int, Callable[[], None]]] = []
        self.sent = {"A": 0, "B": 0}
        self.dropped = {"A": 0, "B": 0}
        self._flight: list[tuple[float, int, str, bytes]] = []
        self._seq = itertools.count()
        self.calls: dict[str, CallRecord] = {}  # by Call-ID
        self.stray_responses: list[Response] = []
        self.on_uas_request: Callable[[Sim, RequestReceived], bool] | None = None  # True: handled

    # --- TU actions ------------------------------------------------------------------------------
    def start(self, request: Request) -> CallRecord:
        record = CallRecord(request)
        self.calls[request.call_id] = record
        record.client_tx = self.a.layer.send_request(request, self.b.endpoint, self.now)
        if request.method == "INVITE" and self.cancel_after is not None:
            self.after(self.cancel_after, lambda: self._maybe_cancel(record))
        return record

    def after(self, delay: float, action: Callable[[], None]) -> None:
        """A TU timer: run ``action`` at now + delay."""
        heapq.heappush(self._tu_timers, (self.now + delay, next(self._seq), action))

    def _maybe_cancel(self, record: CallRecord) -> None:
        if any(status >= 200 for status in record.responses) or record.uac_timeout:
            return
        record.cancel_tx = self.a.layer.send_request(make_cancel(record.request), self.b.endpoint, self.now)

    # --- the loop --------------------------------------------------------------------------------
    def run(self, until: float = 1e9) -> None:
        """Advance until nothing is in flight and no timer is pending (or ``until``)."""
        while True:
            self._flush()
            candidates = [t for t in (self.a.layer.get_timer(), self.b.layer.get_timer()) if t is not None]
            if self._flight:
                candidates.append(self._flight[0][0])
            if self._tu_timers:
                candidates.append(self._tu_timers[0][0])
            if not candidates:
                return
            when = min(candidates)
            if when > until:
                self.now = until
                return
            self.now = max(self.now, when)
            while self._flight and self._flight[0][0] <= self.now:
                _, _, to, data = heapq.heappop(self._flight)
                dst, src = (self.b, self.a) if to == "B" else (self.a, self.b)
                dst.layer.receive(parse_message(data, stream=dst.endpoint.reliable), src.endpoint, self.now)
            self.a.layer.handle_timer(self.now)
            self.b.layer.handle_timer(self.now)
            while self._tu_timers and self._tu_timers[0][0] <= self.now:
                heapq.heappop(self._tu_timers)[2]()

    def _flush(self) -> None:
        progress = True
        while progress:
            progress = False
            for node, peer in ((self.a, self.b), (self.b, self.a)):
                for event in drain_events(node.layer):
                    progress = True
                    (self._uac if node is self.a else self._uas)(event)
                for data, dest in node.layer.outgoing():
                    progress = True
                    assert dest == peer.endpoint, (dest, peer.endpoint)
                    self.sent[node.name] += 1
                    if not node.endpoint.reliable and self.rng.random() < self.loss[node.name]:
                        self.dropped[node.name] += 1
                        continue
                    heapq.heappush(self._flight, (self.now + self.latency, next(self._seq), peer.name, data))

    # --- the two TUs -----------------------------------------------------------------------------
    def _uac(self, event: TransactionEvent) -> None:
        if isinstance(event, ResponseReceived):
            response = event.response
            record = self.calls.get(response.call_id)
            if record is None:
                self.stray_responses.append(response)
                return
            if event.tx is None:
                self.stray_responses.append(response)
            elif response.cseq.method == "CANCEL":
                record.cancel_responses.append(response.status)
                return
            else:
                record.responses.append(response.status)
            if record.request.method == "INVITE" and 200 <= response.status < 300:
                ack = make_2xx_ack(record.request, response)
                self.a.layer.send_stateless(ack, self.b.endpoint)
                record.acks_sent += 1
        elif isinstance(event, TransactionTimeout):
            if event.tx.request.method != "CANCEL":
                self.calls[event.tx.request.call_id].uac_timeout = True
        elif isinstance(event, TransportError):
            self.calls[event.tx.request.call_id].uac_transport_error = True
        else:
            raise AssertionError(f"UAC got a request: {event}")

    def _uas(self, event: TransactionEvent) -> None:
        layer = self.b.layer
        if isinstance(event, RequestReceived):
            if self.on_uas_request is not None and self.on_uas_request(self, event):
                return
            request = event.request
            record = self.calls[request.call_id]
            if event.tx is None:
                assert request.method == "ACK"
                record.uas_acked += 1
                return
            tx: ServerTransaction = event.tx
            if request.method == "CANCEL":
                invite_tx = layer.find_invite_server_tx(request)
                layer.send_response(tx, make_response(request, 200 if invite_tx else 481), self.now)
                if invite_tx is not None and invite_tx.state is TxState.PROCEEDING:
                    layer.send_response(invite_tx, make_response(invite_tx.request, 487), self.now)
                    record.uas_cancelled = True
                return
            record.server_requests += 1
            if request.method == "INVITE":
                if self.provisional:
                    layer.send_response(tx, make_response(request, 180), self.now)
                final = make_response(request, self.final_status)
                if self.answer_delay:
                    self.after(self.answer_delay, lambda: self._answer(tx, final))
                else:
                    layer.send_response(tx, final, self.now)
            else:
                layer.send_response(tx, make_response(request, 200), self.now)
        elif isinstance(event, TransactionTimeout):
            self.calls[event.tx.request.call_id].uas_timeout = True
        else:
            raise AssertionError(f"UAS got {event}")

    def _answer(self, tx: ServerTransaction, final: Response) -> None:
        if tx.state is TxState.PROCEEDING:
            self.b.layer.send_response(tx, final, self.now)

    # --- checks ----------------------------------------------------------------------------------
    def assert_quiescent(self) -> None:
        for node in (self.a, self.b):
            layer = node.layer
            assert len(layer) == 0, (node.name, layer._txs)
            assert layer.get_timer() is None, node.name
            assert len(layer._timers) == 0
            assert not layer._clients and not layer._servers and not layer._accepted and not layer._by_peer
            assert layer.next_event() is None
            assert layer.outgoing() == []
        assert not self._flight and not self._tu_timers
