"""What every call flow of the B2BUA stands on: the state the core supplies, its hooks, and the
messages the flows send on a leg (local replies, ACK, BYE, CANCEL, the caller's final answer).

Mixed, through :mod:`pbx_edge.b2bua.reliable`, :mod:`pbx_edge.b2bua.in_dialog` and
:mod:`pbx_edge.b2bua.calls`, into :class:`pbx_edge.b2bua.core.EdgeCore`. In-dialog requests go to the
peer's flow (the address the caller's INVITE came from, the address the callee's INVITE went to)
unless the dialog has a route set: phones behind NAT are reachable only on their flow, and a proxy or
trunk in front of the callee routes by Request-URI.
"""

from __future__ import annotations

import logging
from typing import Any

from pbx_edge.b2bua.call import Call, CallState, CancelSent, EndReason, Hangup, Leg
from pbx_edge.b2bua.messages import cancel_for
from pbx_edge.b2bua.no_answer import NoAnswerPolicy
from pbx_edge.b2bua.routing import Router
from pbx_edge.b2bua.triggers import Trigger
from pbx_edge.media.interface import MediaManager, SdpKind, Side
from pbx_edge.ops.config import EdgeConfig
from pbx_edge.sip.endpoint import Endpoint
from pbx_edge.sip.message import Request, Response
from pbx_edge.sip.responses import make_response
from pbx_edge.sip.timers import TimerHeap
from pbx_edge.sip.transaction import (
    ClientTransaction,
    ServerTransaction,
    TimerSettings,
    TransactionLayer,
    TxState,
)

ALLOW = "INVITE, ACK, CANCEL, BYE, OPTIONS, REGISTER, PRACK, UPDATE, INFO, MESSAGE, NOTIFY"
ACCEPT = "application/sdp"
TARGET_REFRESH = frozenset({"INVITE", "UPDATE", "SUBSCRIBE", "NOTIFY", "REFER"})


log = logging.getLogger("pbx_edge.b2bua")


def is_sdp(message: Request | Response) -> bool:
    content_type = message.headers.get("Content-Type") or ""
    return bool(message.body) and content_type.lower().startswith("application/sdp")


class FlowBase:
    """State and hooks that :class:`~pbx_edge.b2bua.core.EdgeCore` provides, and the sending helpers."""

    tx: TransactionLayer
    config: EdgeConfig
    router: Router
    media: MediaManager
    no_answer: NoAnswerPolicy
    calls: dict[str, Call]
    by_call_id: dict[str, Call]
    timers: TimerHeap[tuple[str, str, int]]
    settings: TimerSettings
    stats: dict[str, int]
    supported: frozenset[str]
    refusing: str | None

    def via(self, transport: str) -> str:
        raise NotImplementedError

    def contact(self, transport: str) -> str:
        raise NotImplementedError

    def local_host(self, transport: str) -> str:
        raise NotImplementedError

    def emit_dtmf(self, call: Call, side: Side, digit: str) -> None:
        raise NotImplementedError

    def notify(self, name: str, data: dict[str, Any]) -> None:
        raise NotImplementedError

    def emit(self, event: str, call: Call) -> None:
        raise NotImplementedError

    def register_call(self, call: Call) -> None:
        raise NotImplementedError

    def attach_callee(self, call: Call, leg: Leg) -> None:
        raise NotImplementedError

    def end_call(self, call: Call, reason: EndReason, now: float, status: int | None = None) -> None:
        raise NotImplementedError

    # the AI attendant (pbx_edge/b2bua/attendant.py)
    def invite_trigger(self, user: str, routable: bool, known: bool) -> Trigger | None:
        raise NotImplementedError

    def answer_with_ai(self, call: Call, trigger: Trigger, now: float) -> bool:
        raise NotImplementedError

    def busy_to_ai(self, call: Call, status: int, now: float) -> bool:
        raise NotImplementedError

    def on_transfer_timer(self, call: Call, now: float) -> None:
        raise NotImplementedError

    def _reply(
        self,
        tx: ServerTransaction,
        status: int,
        reason: str,
        now: float,
        *,
        allow: bool = False,
        capabilities: bool = False,
        to_tag: str | None = None,
    ) -> None:
        """Answer a request locally (not relayed)."""
        reply = make_response(tx.request, status, reason, to_tag=to_tag)
        if allow:
            reply.headers.add("Allow", ALLOW)
        if capabilities:
            reply.headers.add("Accept", ACCEPT)
            reply.headers.add("Supported", ", ".join(sorted(self.supported)))
        self.tx.send_response(tx, reply, now)

    # --- the caller's final answer and ending a call ------------------------------------------------
    def _fail_caller(self, call: Call, status: int, reason: str, now: float) -> None:
        out = make_response(call.a_invite_tx.request, status, reason, to_tag=call.a.dialog.local_tag)
        self._final_to_caller(call, out, now)

    def _final_to_caller(self, call: Call, out: Response, now: float) -> None:
        call.a_final_sent = True
        if call.final_status is None:
            call.final_status = out.status
        self.tx.send_response(call.a_invite_tx, out, now)

    def hangup(
        self,
        call_id: str,
        reason: EndReason,
        now: float,
        *,
        only_confirmed: bool = False,
        status: tuple[int, str] = (480, "Temporarily Unavailable"),
    ) -> bool:
        """End call ``call_id`` from the edge itself (media timeout, admin, error): BYE on both legs
        of a talking call; a call not yet answered gets ``status`` on the caller leg and CANCEL on
        the callee leg (unless ``only_confirmed``). Returns whether the call is now ending."""
        call = self.calls.get(call_id)
        if call is None or call.state in (CallState.TERMINATED, CallState.CANCELLING):
            return False
        if call.state is CallState.CONFIRMED:
            for leg in (call.a, call.b):
                if leg is not None:
                    self._send_bye(call, leg, now)
            self.end_call(call, reason, now)
            return True
        if only_confirmed:
            return False
        if not call.a_final_sent:
            self._fail_caller(call, *status, now)
        self._abandon_callee(call, reason, now)
        return True

    def _abandon_callee(self, call: Call, reason: EndReason, now: float) -> None:
        """The caller has its final answer; end the callee leg with CANCEL (or later, when possible)."""
        call.state = CallState.CANCELLING
        call.end_reason = reason
        self.timers.cancel((call.id, "no_answer", 0))
        if call.b_provisional_seen:
            self._send_cancel(call, now)
        else:
            call.cancel_b_when_possible = True  # RFC 3261 §9.1: not before a provisional response

    def _send_cancel(self, call: Call, now: float) -> None:
        call.cancel_b_when_possible = False
        self._cancel_invite(call.b_invite_tx, CancelSent(call), now)

    def _cancel_invite(self, invite_tx: ClientTransaction | None, owner: object, now: float) -> None:
        """CANCEL an INVITE that is still ringing; its CANCEL transaction gets ``owner``. The caller
        has seen a provisional response first (RFC 3261 §9.1) or keeps the CANCEL until one comes."""
        if invite_tx is None or invite_tx.state not in (TxState.CALLING, TxState.PROCEEDING):
            return
        cancel = self.tx.send_request(cancel_for(invite_tx.request), invite_tx.dest, now)
        cancel.owner = owner

    # --- sending helpers -------------------------------------------------------------------------------
    def _dest(self, leg: Leg) -> Endpoint:
        if leg.dialog.route_set:
            return leg.dialog.next_hop(leg.transport)
        return leg.peer

    def _ack(self, leg: Leg, cseq: int, body: bytes = b"") -> None:
        ack = leg.dialog.ack(cseq, self.via(leg.transport))
        if body:
            ack.headers.add("Content-Type", "application/sdp")
            ack.body = body
        dest = self._dest(leg)
        leg.last_ack = (ack, dest)
        self.tx.send_stateless(ack, dest)

    def _resend_ack(self, leg: Leg) -> None:
        if leg.last_ack is not None:
            self.tx.send_stateless(*leg.last_ack)

    def _send_bye(self, call: Call, leg: Leg, now: float) -> None:
        bye = leg.dialog.new_request("BYE", self.via(leg.transport), None)
        client_tx = self.tx.send_request(bye, self._dest(leg), now)
        client_tx.owner = Hangup(call, leg)

    def _rewrite(self, call: Call, from_side: Side, message: Request | Response) -> bytes:
        if not is_sdp(message):
            return b""
        is_offer = isinstance(message, Request) and message.method not in ("PRACK", "ACK")
        kind = SdpKind.OFFER if is_offer else SdpKind.ANSWER
        return call.media.rewrite(from_side, kind, message.body)


def int_or_none(value: str | None) -> int | None:
    if value is None or not value.strip().isdigit():
        return None
    return int(value)
