"""Server transactions (RFC 3261 §17.2, with RFC 6026's Accepted state).

INVITE server transaction::

    Proceeding --TU 2xx--> Accepted --Timer L--> Terminated (TransactionTimeout if never ACKed)
       |  TU 300-699 --> Completed --ACK--> Confirmed --Timer I--> Terminated
       |                    +--Timer H--> Terminated (TransactionTimeout)

Non-INVITE server transaction::

    Trying --TU 1xx--> Proceeding --TU final--> Completed --Timer J--> Terminated
       +------------TU final--------------^

Timer G re-sends a non-2xx final in Completed and, in Accepted, the 2xx itself: RFC 3261 §13.3.1.4
gives that job to the UAS core, and RFC 6026 keeps it out of the transaction; this stack does it
here on the TU's behalf, with the same schedule (T1 doubling, capped at T2, UDP only), until the
ACK arrives. The 2xx ACK carries a new branch, so the layer finds the transaction by
(Call-ID, CSeq number, From tag, To tag) in ``_accepted``; the first such ACK stops the
retransmissions and goes up to the TU, later copies are absorbed.

Each response is serialized once, when the TU hands it over; retransmissions re-send the bytes.
"""

from __future__ import annotations

from pbx_edge.sip.endpoint import Endpoint
from pbx_edge.sip.message import Request, Response
from pbx_edge.sip.transaction_base import (
    SERVER_TIMERS,
    DialogKey,
    RequestReceived,
    ServerKey,
    Timer,
    Transaction,
    TxState,
    _Core,
)

_TRYING = TxState.TRYING
_PROCEEDING = TxState.PROCEEDING
_COMPLETED = TxState.COMPLETED
_CONFIRMED = TxState.CONFIRMED
_ACCEPTED = TxState.ACCEPTED


class ServerTransaction(Transaction):
    """One request we received and the responses the TU gives it. Responses go to ``source``."""

    __slots__ = ("_acked", "_dialog_key", "_resp_wire", "source")

    key: ServerKey

    def __init__(
        self, core: _Core, key: ServerKey, request: Request, source: Endpoint, cseq_seq: int
    ) -> None:
        super().__init__(core, key, request, source, cseq_seq)
        self.source = source
        self.state = _PROCEEDING if self.is_invite else _TRYING
        self._resp_wire = b""
        self._acked = False
        self._dialog_key: DialogKey | None = None

    @property
    def acked(self) -> bool:
        """True once the ACK for our 2xx arrived (INVITE, Accepted state)."""
        return self._acked

    def _timer_codes(self) -> tuple[Timer, ...]:
        return SERVER_TIMERS

    def _unregister(self) -> None:
        core = self._core
        if core._servers.get(self.key) is self:
            del core._servers[self.key]
        dialog_key = self._dialog_key
        if dialog_key is not None and core._accepted.get(dialog_key) is self:
            del core._accepted[dialog_key]

    # --- from the network --------------------------------------------------------------------
    def _on_retransmission(self) -> None:
        """The request came again: re-send the last response, if the state calls for it."""
        state = self.state
        if self._resp_wire and (
            state is _PROCEEDING or state is _COMPLETED or (state is _ACCEPTED and not self._acked)
        ):
            self._retransmit(self._resp_wire)
        self._absorb()

    def _on_ack(self, ack: Request, source: Endpoint, now: float) -> None:
        state = self.state
        if state is _COMPLETED:
            # ACK for our non-2xx final: it ends the exchange and stays inside the layer.
            self.state = _CONFIRMED
            self._cancel(Timer.G)
            self._cancel(Timer.H)
            self._absorb()
            if self.reliable:
                self._core._terminate(self)
            else:
                self._schedule(Timer.I, now + self._core.settings.t4)
        elif state is _ACCEPTED and not self._acked:
            # ACK for our 2xx: it belongs to the dialog, so the TU gets it (as a transaction-less
            # request); the transaction just stops re-sending the 2xx and lingers until Timer L.
            self._acked = True
            self._cancel(Timer.G)
            self._core._events.append(RequestReceived(ack, source, None))
        else:
            self._absorb()

    # --- from the TU -------------------------------------------------------------------------
    def _respond(self, response: Response, now: float) -> None:
        status = response.status
        state = self.state
        core = self._core
        settings = core.settings
        if self.is_invite:
            if state is _PROCEEDING:
                dialog_key = self._make_dialog_key(response) if 200 <= status < 300 else None
                self._emit(response)
                if status < 200:
                    return
                if not self.reliable:
                    self._interval = settings.t1
                    self._schedule(Timer.G, now + settings.t1)
                if dialog_key is not None:
                    self.state = _ACCEPTED
                    self._dialog_key = dialog_key
                    core._accepted[dialog_key] = self
                    self._schedule(Timer.L, now + 64 * settings.t1)
                else:
                    self.state = _COMPLETED
                    self._schedule(Timer.H, now + 64 * settings.t1)
            elif state is _ACCEPTED and 200 <= status < 300:
                self._emit(response)  # RFC 6026: a 2xx from the TU in Accepted goes out as is
            else:
                core.stats["discarded_responses"] += 1
        elif state is _TRYING or state is _PROCEEDING:
            self._emit(response)
            if status < 200:
                self.state = _PROCEEDING
            else:
                self.state = _COMPLETED
                if self.reliable:
                    core._terminate(self)
                else:
                    self._schedule(Timer.J, now + 64 * settings.t1)
        else:
            core.stats["discarded_responses"] += 1

    def _emit(self, response: Response) -> None:
        self.last_response = response
        self._resp_wire = wire = bytes(response)
        self._send(wire)

    def _make_dialog_key(self, response: Response) -> DialogKey:
        request = self.request
        return (request.call_id, self.cseq_seq, request.from_tag, response.to_tag)

    # --- timers ------------------------------------------------------------------------------
    def _on_timer(self, timer: Timer, now: float) -> None:
        state = self.state
        if timer is Timer.G:
            if state is _COMPLETED or (state is _ACCEPTED and not self._acked):
                self._retransmit(self._resp_wire)
                self._interval = min(self._interval * 2, self._core.settings.t2)
                self._schedule(Timer.G, now + self._interval)
        elif timer is Timer.H:
            if state is _COMPLETED:
                self._timeout()
        elif timer is Timer.L and not self._acked:
            self._timeout()
        else:  # I, J, or L after the ACK: the wait is over
            self._core._terminate(self)
