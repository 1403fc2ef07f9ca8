"""The SIP transaction layer (RFC 3261 §17, with the RFC 6026 fixes), sans-I/O.

Theory of operation
-------------------
A transaction is one request and the responses to it, plus the retransmissions and the ACK (for a
non-2xx final) that make that exchange reliable over UDP. This module owns all of them, for both
directions, and nothing else: no sockets, no clock, no asyncio. It is driven from outside, in the
style of h11 and aioquic:

* Inputs. :meth:`TransactionLayer.receive` takes a parsed message and where it came from;
  :meth:`~TransactionLayer.send_request` and :meth:`~TransactionLayer.send_response` take what the
  transaction user (the TU: here the B2BUA) wants sent; :meth:`~TransactionLayer.handle_timer`
  says that time has passed; :meth:`~TransactionLayer.transport_error` says a send failed. Every
  input that can start a timer takes ``now`` (seconds, any monotonic origin).
* Outputs. :meth:`~TransactionLayer.outgoing` drains the serialized messages to put on the wire,
  with their destination, in order; :meth:`~TransactionLayer.next_event` pops what the TU must
  handle (:class:`RequestReceived`, :class:`ResponseReceived`, :class:`TransactionTimeout`,
  :class:`TransportError`); :meth:`~TransactionLayer.get_timer` gives the earliest deadline, at
  which the driver must call ``handle_timer``.

A driver loop is therefore: feed inputs, then send everything from ``outgoing()``, handle every
``next_event()`` (which may feed more inputs), and sleep until ``get_timer()`` or the next packet.

Matching (§17.1.3, §17.2.3). A response belongs to the client transaction whose branch is the
response's top-Via branch and whose method is the response's CSeq method (so a CANCEL and the
INVITE it cancels, which share a branch, are two transactions). A request belongs to the server
transaction with the same top-Via branch, sent-by and method, where an ACK looks for the INVITE. A
branch without the ``z9hG4bK`` cookie comes from an RFC 2543 peer and is matched instead on
Request-URI, From tag, To tag, Call-ID, CSeq and the whole top Via. An ACK for a 2xx has a new
branch (it is its own transaction at the far end), so when the branch finds nothing it is looked up
by (Call-ID, CSeq number, From tag, To tag) among INVITE server transactions that sent a 2xx.
Whatever matches nothing goes up to the TU: a request as a new server transaction (or, for an ACK,
with ``tx=None``); a response with ``tx=None`` (for example a 2xx retransmitted after Timer M, which
the TU must ACK again).

State machines. Each transaction is a small explicit state machine (:class:`TxState`), in
:mod:`~pbx_edge.sip.transaction_client` and :mod:`~pbx_edge.sip.transaction_server`, where the
diagrams are. Timers carry their RFC names (:class:`Timer`). Over a reliable transport
(``Endpoint.reliable``) nothing is retransmitted (no A, E, G) and the linger timers D, I, J, K are
zero, so those transactions end at once. The two RFC 6026 Accepted states replace the RFC 3261
rule that a 2xx destroys the INVITE transaction: the client stays alive until Timer M and passes
every 2xx (retransmissions and forks alike) up to the TU, which ACKs each one itself; the server
re-sends its 2xx until the ACK comes or Timer L fires (this stack puts the §13.3.1.4 2xx
retransmission here rather than in the TU), and passes the first ACK up.

A terminated transaction is removed from every table at once, and its timers cancelled, so the
layer holds exactly the live transactions (``len(layer)``). Each message is parsed once for its top
Via and CSeq when it arrives and serialized once when it leaves; retransmissions re-send the same
bytes. Responses to a server transaction go back to the endpoint the request came from.
"""

from __future__ import annotations

from collections.abc import Callable

from pbx_edge.sip.endpoint import Endpoint
from pbx_edge.sip.headers import CSeq, Via
from pbx_edge.sip.message import Request, Response
from pbx_edge.sip.transaction_base import (
    BRANCH_COOKIE,
    ClientKey,
    RequestReceived,
    ResponseReceived,
    ServerKey,
    Timer,
    TimerSettings,
    TransactionEvent,
    TransactionTimeout,
    TransportError,
    TxState,
    _Core,
)
from pbx_edge.sip.transaction_client import ClientTransaction, build_ack
from pbx_edge.sip.transaction_server import ServerTransaction

__all__ = [
    "ClientTransaction",
    "RequestReceived",
    "ResponseReceived",
    "ServerTransaction",
    "Timer",
    "TimerSettings",
    "TransactionEvent",
    "TransactionLayer",
    "TransactionTimeout",
    "TransportError",
    "TxState",
    "build_ack",
]

_TIMER_OF: dict[int, Timer] = {int(t): t for t in Timer}
_RFC2543 = "rfc2543"


def _server_key(request: Request, via: Via, via_text: str, method: str, seq: int) -> ServerKey:
    """The server-transaction key of ``request`` as if its method were ``method``."""
    branch = via.branch
    if branch is not None and branch.startswith(BRANCH_COOKIE):
        return (branch, via.host.lower(), via.port, method)
    return _rfc2543_key(request, request.to_tag, via_text, method, seq)


def _rfc2543_key(request: Request, to_tag: str | None, via_text: str, method: str, seq: int) -> ServerKey:
    return (_RFC2543, request.uri, request.from_tag, to_tag, request.call_id, seq, via_text, method)


class TransactionLayer(_Core):
    """All client and server transactions of one SIP endpoint. See the module docstring."""

    def __init__(self, settings: TimerSettings = TimerSettings()) -> None:  # noqa: B008 - frozen value
        super().__init__(settings)

    def __len__(self) -> int:
        return len(self._txs)

    def pending_clients(self) -> int:
        """Client transactions still waiting for a final response (a drain waits for its BYEs)."""
        waiting = (TxState.CALLING, TxState.TRYING, TxState.PROCEEDING)
        return sum(1 for tx in self._clients.values() if tx.state in waiting)

    # --- network input -----------------------------------------------------------------------
    def receive(self, message: Request | Response, source: Endpoint, now: float) -> None:
        headers = message.headers
        via_text = headers.get("Via")
        cseq_text = headers.get("CSeq")
        if via_text is None or cseq_text is None:
            self.stats["malformed"] += 1
            return
        try:
            via = Via.parse(via_text)
            cseq = CSeq.parse(cseq_text)
        except ValueError:
            self.stats["malformed"] += 1
            return
        if isinstance(message, Response):
            self._receive_response(message, source, via, cseq, now)
        else:
            try:
                self._receive_request(message, source, via, via_text, cseq, now)
            except ValueError:  # an RFC 2543 key or a 2xx-ACK lookup met an unreadable From/To
                self.stats["malformed"] += 1

    def _receive_response(
        self, response: Response, source: Endpoint, via: Via, cseq: CSeq, now: float
    ) -> None:
        branch = via.branch
        tx = self._clients.get((branch, cseq.method)) if branch is not None else None
        if tx is None:
            self.stats["stray_responses"] += 1
            self._events.append(ResponseReceived(response, source, None))
        else:
            tx._on_response(response, source, now)

    def _receive_request(
        self, request: Request, source: Endpoint, via: Via, via_text: str, cseq: CSeq, now: float
    ) -> None:
        method = request.method
        if method == "ACK":
            self._receive_ack(request, source, via, via_text, cseq.seq, now)
            return
        key = _server_key(request, via, via_text, method, cseq.seq)
        tx = self._servers.get(key)
        if tx is not None:
            tx._on_retransmission()
            return
        tx = ServerTransaction(self, key, request, source, cseq.seq)
        self._servers[key] = tx
        self._register(tx)
        self.stats["server_transactions"] += 1
        self._events.append(RequestReceived(request, source, tx))

    def _receive_ack(
        self, ack: Request, source: Endpoint, via: Via, via_text: str, seq: int, now: float
    ) -> None:
        branch = via.branch
        servers = self._servers
        tx: ServerTransaction | None
        if branch is not None and branch.startswith(BRANCH_COOKIE):
            tx = servers.get((branch, via.host.lower(), via.port, "INVITE"))
        else:
            # RFC 2543: the ACK's To tag is the one our response added, which the INVITE (and so
            # the key) lacked unless it was a re-INVITE inside a dialog.
            to_tag = ack.to_tag
            tx = servers.get(_rfc2543_key(ack, to_tag, via_text, "INVITE", seq))
            if tx is None and to_tag is not None:
                tx = servers.get(_rfc2543_key(ack, None, via_text, "INVITE", seq))
                if tx is not None and (tx.last_response is None or tx.last_response.to_tag != to_tag):
                    tx = None
        if tx is None and self._accepted:
            tx = self._accepted.get((ack.call_id, seq, ack.from_tag, ack.to_tag))
        if tx is None:
            self.stats["stray_acks"] += 1
            self._events.append(RequestReceived(ack, source, None))
        else:
            tx._on_ack(ack, source, now)

    # --- TU input ----------------------------------------------------------------------------
    def send_request(self, request: Request, dest: Endpoint, now: float) -> ClientTransaction:
        """Start a client transaction. The request's top Via must carry a ``z9hG4bK`` branch."""
        method = request.method
        if method == "ACK":
            raise ValueError("ACK never creates a transaction: send it with send_stateless()")
        headers = request.headers
        via_text = headers.get("Via")
        if via_text is None:
            raise ValueError("request has no Via")
        branch = Via.parse(via_text).branch
        if branch is None or not branch.startswith(BRANCH_COOKIE):
            raise ValueError(f"top Via branch {branch!r} lacks the {BRANCH_COOKIE} cookie")
        cseq = CSeq.parse(headers.get("CSeq") or "")
        if cseq.method != method:
            raise ValueError(f"CSeq method {cseq.method} does not match {method}")
        key: ClientKey = (branch, method)
        if key in self._clients:
            raise ValueError(f"a live {method} client transaction already uses branch {branch}")
        tx = ClientTransaction(self, key, request, dest, cseq.seq, via_text)
        self._clients[key] = tx
        self._register(tx)
        self.stats["client_transactions"] += 1
        tx._start(now)
        if method == "CANCEL":
            invite_tx = self._clients.get((branch, "INVITE"))
            if invite_tx is not None:
                invite_tx._on_cancel_sent(now)
        return tx

    def send_response(self, tx: ServerTransaction, response: Response, now: float) -> None:
        """Send ``response`` in ``tx``. One the transaction's state forbids is discarded (counted)."""
        if tx._core is not self:
            raise ValueError("transaction belongs to another TransactionLayer")
        if tx.state is TxState.TERMINATED:
            self.stats["discarded_responses"] += 1
            return
        tx._respond(response, now)

    def send_stateless(self, message: Request | Response, dest: Endpoint) -> None:
        """Queue a message outside any transaction (the ACK for a 2xx, a 400 to garbage)."""
        self._out.append((bytes(message), dest))

    def transport_error(self, dest: Endpoint, now: float) -> None:
        """A send to ``dest`` failed: each live transaction with that peer reports and terminates."""
        peers = self._by_peer.get(dest)
        if not peers:
            return
        events = self._events
        for tx in list(peers.values()):
            self.stats["transport_errors"] += 1
            events.append(TransportError(tx))  # type: ignore[arg-type]
            self._terminate(tx)

    # --- time --------------------------------------------------------------------------------
    def get_timer(self) -> float | None:
        return self._timers.next_deadline()

    def handle_timer(self, now: float) -> None:
        pop_due: Callable[[float], list[int]] = self._timers.pop_due
        txs = self._txs
        while due := pop_due(now):
            for key in due:
                tx = txs.get(key >> 4)
                if tx is not None:
                    tx._on_timer(_TIMER_OF[key & 15], now)

    # --- output ------------------------------------------------------------------------------
    def outgoing(self) -> list[tuple[bytes, Endpoint]]:
        out = self._out
        self._out = []
        return out

    def next_event(self) -> TransactionEvent | None:
        events = self._events
        return events.popleft() if events else None

    # --- lookups -----------------------------------------------------------------------------
    def find_invite_server_tx(self, cancel: Request) -> ServerTransaction | None:
        """The INVITE server transaction ``cancel`` refers to (RFC 3261 §9.2), if it is live."""
        headers = cancel.headers
        via_text = headers.get("Via")
        if via_text is None:
            return None
        try:
            key = _server_key(cancel, Via.parse(via_text), via_text, "INVITE", cancel.cseq.seq)
        except ValueError:
            return None
        return self._servers.get(key)
