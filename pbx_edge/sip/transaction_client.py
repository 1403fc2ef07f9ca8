"""Client transactions (RFC 3261 §17.1, with RFC 6026's Accepted state).

INVITE client transaction::

    Calling --1xx--> Proceeding --2xx--> Accepted --Timer M--> Terminated
       |  \\__________2xx________________^
       |  300-699 (send ACK) --> Completed --Timer D--> Terminated
       +--Timer B--> Terminated (TransactionTimeout)

A 1xx stops Timers A and B: in Proceeding the INVITE waits for its final response as long as it
takes, since RFC 3261 leaves that wait to the TU (a ring timeout, then a CANCEL). When the TU sends
the CANCEL (same branch), Timer B is armed again, so that an INVITE whose final response never
comes times out 64*T1 later (RFC 3261 §9.1).

Non-INVITE client transaction::

    Trying --1xx--> Proceeding --final--> Completed --Timer K--> Terminated
       +----------final-----------^
    Trying/Proceeding --Timer F--> Terminated (TransactionTimeout)

Timers A and E (request retransmission) run only over unreliable transports. The request is
serialized once, at creation; retransmissions re-send those bytes.
"""

from __future__ import annotations

from pbx_edge.sip.endpoint import Endpoint
from pbx_edge.sip.message import Headers, Request, Response
from pbx_edge.sip.transaction_base import (
    CLIENT_TIMERS,
    TIMER_D_UNRELIABLE,
    ClientKey,
    ResponseReceived,
    Timer,
    Transaction,
    TxState,
    _Core,
)

_CALLING = TxState.CALLING
_TRYING = TxState.TRYING
_PROCEEDING = TxState.PROCEEDING
_COMPLETED = TxState.COMPLETED
_ACCEPTED = TxState.ACCEPTED


class ClientTransaction(Transaction):
    """One request we sent and the responses it gets. ``dest`` is where the request (and ACK) go."""

    __slots__ = ("_ack_wire", "_give_up_at", "_top_via", "_wire", "ack", "branch", "dest")

    key: ClientKey

    def __init__(
        self,
        core: _Core,
        key: ClientKey,
        request: Request,
        dest: Endpoint,
        cseq_seq: int,
        top_via: str,
    ) -> None:
        super().__init__(core, key, request, dest, cseq_seq)
        self.dest = dest
        self.branch = key[0]
        self.ack: Request | None = None  # the ACK this transaction built for a non-2xx final
        self._wire = bytes(request)
        self._ack_wire = b""
        self._top_via = top_via
        self._give_up_at: float | None = None  # INVITE: Timer B deadline set by a CANCEL

    def _timer_codes(self) -> tuple[Timer, ...]:
        return CLIENT_TIMERS

    def _unregister(self) -> None:
        clients = self._core._clients
        if clients.get(self.key) is self:
            del clients[self.key]

    def _start(self, now: float) -> None:
        settings = self._core.settings
        self._send(self._wire)
        if self.is_invite:
            self.state = _CALLING
            if not self.reliable:
                self._interval = settings.t1
                self._schedule(Timer.A, now + settings.t1)
            self._schedule(Timer.B, now + 64 * settings.t1)
        else:
            self.state = _TRYING
            if not self.reliable:
                self._interval = settings.t1
                self._schedule(Timer.E, now + settings.t1)
            self._schedule(Timer.F, now + 64 * settings.t1)

    def _on_cancel_sent(self, now: float) -> None:
        """RFC 3261 §9.1: with no final response 64*T1 after a CANCEL, the INVITE is given up.

        Timer B is armed (again) for that purpose; in Calling it keeps running as it is, and the
        deadline is applied when a 1xx moves the transaction to Proceeding.
        """
        state = self.state
        if state is _CALLING or state is _PROCEEDING:
            self._give_up_at = now + 64 * self._core.settings.t1
            if state is _PROCEEDING:
                self._schedule(Timer.B, self._give_up_at)

    # --- responses ---------------------------------------------------------------------------
    def _on_response(self, response: Response, source: Endpoint, now: float) -> None:
        if self.is_invite:
            self._invite_response(response, source, now)
        else:
            self._non_invite_response(response, source, now)

    def _pass_up(self, response: Response, source: Endpoint) -> None:
        self.last_response = response
        self._core._events.append(ResponseReceived(response, source, self))

    def _invite_response(self, response: Response, source: Endpoint, now: float) -> None:
        status = response.status
        state = self.state
        if state is _CALLING or state is _PROCEEDING:
            if status < 200:
                if state is _CALLING:
                    self.state = _PROCEEDING
                    self._cancel(Timer.A)
                    if self._give_up_at is None:
                        self._cancel(Timer.B)
                    else:  # cancelled while still Calling (RFC 3261 §9.1 says wait for a 1xx)
                        self._schedule(Timer.B, self._give_up_at)
                self._pass_up(response, source)
            elif status < 300:
                self.state = _ACCEPTED
                self._cancel(Timer.A)
                self._cancel(Timer.B)
                self._schedule(Timer.M, now + 64 * self._core.settings.t1)
                self._pass_up(response, source)
            else:
                self._cancel(Timer.A)
                self._cancel(Timer.B)
                self.state = _COMPLETED
                ack = self.ack = build_ack(self.request, response, self._top_via, self.cseq_seq)
                self._ack_wire = bytes(ack)
                self._send(self._ack_wire)
                self._pass_up(response, source)
                if self.reliable:
                    self._core._terminate(self)
                else:
                    self._schedule(Timer.D, now + max(TIMER_D_UNRELIABLE, 64 * self._core.settings.t1))
        elif 200 <= status < 300:
            # Accepted: every 2xx (retransmission or another fork) goes up; the TU ACKs each.
            # Completed: a 2xx after a non-2xx final is a broken peer, but it made a dialog at
            # the far end that only the TU can clean up, so it goes up too.
            self._pass_up(response, source)
        elif state is _COMPLETED and status >= 300:
            self._retransmit(self._ack_wire)  # the ACK was lost: answer the retransmitted final
            self._absorb()
        else:
            self._absorb()

    def _non_invite_response(self, response: Response, source: Endpoint, now: float) -> None:
        state = self.state
        if state is _TRYING or state is _PROCEEDING:
            if response.status < 200:
                self.state = _PROCEEDING
                self._pass_up(response, source)
                return
            self.state = _COMPLETED
            self._cancel(Timer.E)
            self._cancel(Timer.F)
            self._pass_up(response, source)
            if self.reliable:
                self._core._terminate(self)
            else:
                self._schedule(Timer.K, now + self._core.settings.t4)
        else:
            self._absorb()

    # --- timers ------------------------------------------------------------------------------
    def _on_timer(self, timer: Timer, now: float) -> None:
        state = self.state
        settings = self._core.settings
        if timer is Timer.A:
            if state is _CALLING:
                self._retransmit(self._wire)
                self._interval *= 2
                self._schedule(Timer.A, now + self._interval)
        elif timer is Timer.E:
            if state is _TRYING:
                self._retransmit(self._wire)
                self._interval = min(self._interval * 2, settings.t2)
                self._schedule(Timer.E, now + self._interval)
            elif state is _PROCEEDING:
                self._retransmit(self._wire)
                self._schedule(Timer.E, now + settings.t2)
        elif timer is Timer.B or timer is Timer.F:
            if state is _CALLING or state is _TRYING or state is _PROCEEDING:
                self._timeout()
        else:  # D, K, M: the wait is over
            self._core._terminate(self)


def build_ack(request: Request, response: Response, top_via: str, cseq_seq: int) -> Request:
    """The ACK for a non-2xx final response (RFC 3261 §17.1.1.3).

    Same Request-URI, Call-ID and From as the INVITE; To from the response (with its tag); only the
    INVITE's top Via (so the same branch); the INVITE's Route set; CSeq number of the INVITE with
    method ACK; Max-Forwards 70; no body.
    """
    src = request.headers
    items: list[tuple[str, str]] = [("Via", top_via)]
    items.extend(("Route", route) for route in src.get_all("Route"))
    items.append(("Max-Forwards", "70"))
    items.append(("From", src.get("From") or ""))
    items.append(("To", response.headers.get("To") or src.get("To") or ""))
    items.append(("Call-ID", src.get("Call-ID") or ""))
    items.append(("CSeq", f"{cseq_seq} ACK"))
    return Request(headers=Headers(items), body=b"", method="ACK", uri=request.uri)
