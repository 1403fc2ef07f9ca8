"""In-dialog requests of a call: BYE, PRACK, OPTIONS answered here, everything else (re-INVITE with
491 on glare per RFC 3261 §14, UPDATE per RFC 3311, INFO, MESSAGE, NOTIFY) relayed to the other leg,
and the ACKs that end each leg's INVITE transaction.
"""

from __future__ import annotations

import logging

from pbx_edge.b2bua.call import Call, CallState, EndReason, Leg, Relayed
from pbx_edge.b2bua.flow_base import TARGET_REFRESH, is_sdp
from pbx_edge.b2bua.messages import IN_DIALOG_PASS_HEADERS, PASSABLE_REQUIRE, copy_headers, relayed_response
from pbx_edge.b2bua.reliable import ReliableFlows
from pbx_edge.media.dtmf import parse_info_dtmf
from pbx_edge.media.interface import SdpRejected, Side
from pbx_edge.sip.endpoint import Endpoint
from pbx_edge.sip.message import Request, Response
from pbx_edge.sip.responses import make_response
from pbx_edge.sip.transaction import ClientTransaction, ServerTransaction, TxState

log = logging.getLogger("pbx_edge.b2bua")


class InDialogFlows(ReliableFlows):
    def on_in_dialog_request(self, req: Request, source: Endpoint, tx: ServerTransaction, now: float) -> None:
        call = self.by_call_id.get(req.call_id)
        leg = call.leg_for_call_id(req.call_id) if call is not None else None
        if call is None or leg is None or not _tags_match(leg, req):
            self._reply(tx, 481, "Call/Transaction Does Not Exist", now)
            return
        if not leg.dialog.accept_remote_cseq(req):
            self._reply(tx, 500, "CSeq Out of Order", now)
            return
        method = req.method
        if method == "BYE":
            self._on_bye(call, leg, tx, now)
        elif method == "PRACK":
            self._on_prack(call, leg, req, tx, now)
        elif method == "OPTIONS":
            self._reply(tx, 200, "OK", now, allow=True, capabilities=True)
        else:
            self._relay(call, leg, req, tx, now)

    def _on_bye(self, call: Call, leg: Leg, tx: ServerTransaction, now: float) -> None:
        self._reply(tx, 200, "OK", now)
        if call.state is CallState.TERMINATED:
            return
        other = call.other(leg)
        by_caller = leg is call.a
        if call.state is CallState.CONFIRMED:
            if other is not None:
                self._send_bye(call, other, now)
            self.end_call(call, EndReason.CALLER_BYE if by_caller else EndReason.CALLEE_BYE, now)
        elif by_caller:
            if not call.a_final_sent:
                self._fail_caller(call, 487, "Request Terminated", now)
            self._abandon_callee(call, EndReason.CALLER_CANCEL, now)
        else:
            if not call.a_final_sent:
                self._fail_caller(call, 480, "Temporarily Unavailable", now)
            self.end_call(call, EndReason.CALLEE_BYE, now)

    def _relay(self, call: Call, leg: Leg, req: Request, tx: ServerTransaction, now: float) -> None:
        other = call.other(leg)
        if other is None or call.state in (CallState.CANCELLING, CallState.TERMINATED):
            self._reply(tx, 481, "Call/Transaction Does Not Exist", now)
            return
        method = req.method
        if method == "INVITE":
            if leg.out_invite_pending:
                self._reply(tx, 491, "Request Pending", now)
                return
            if leg.in_invite_pending:
                reply = make_response(req, 500, "Previous INVITE Still Pending")
                reply.headers.add("Retry-After", "1")
                self.tx.send_response(tx, reply, now)
                return
            leg.in_invite_pending = True
            other.out_invite_pending = True
        if method == "INFO" and req.body:
            digit = parse_info_dtmf(req.headers.get("Content-Type") or "", req.body)
            if digit is not None:
                self.emit_dtmf(call, leg.side, digit)
        if method in TARGET_REFRESH:
            leg.dialog.update_target(req)
        contact = self.contact(other.transport) if method in TARGET_REFRESH else None
        out = other.dialog.new_request(method, self.via(other.transport), contact)
        copy_headers(req.headers, out.headers, IN_DIALOG_PASS_HEADERS)
        required = sorted(req.option_tags("Require") & PASSABLE_REQUIRE)
        if required:
            out.headers.add("Require", ", ".join(required))
        try:
            out.body = self._rewrite(call, leg.side, req) if is_sdp(req) else req.body
        except SdpRejected as exc:
            if method == "INVITE":
                leg.in_invite_pending = other.out_invite_pending = False
            self._reply(tx, exc.status, exc.reason, now)
            return
        client_tx = self.tx.send_request(out, self._dest(other), now)
        client_tx.owner = Relayed(call, tx, leg, other)

    def _on_relayed_response(self, owner: Relayed, tx: ClientTransaction, resp: Response, now: float) -> None:
        status = resp.status
        if status == 100:
            return
        target = owner.target_leg
        if tx.request.method == "INVITE" and status >= 200:
            if status < 300:
                if not target.out_invite_pending:
                    self._resend_ack(target)  # retransmitted 2xx
                    return
                target.dialog.update_from_response(resp)
                self._ack(target, resp.cseq.seq)
            target.out_invite_pending = False
            owner.origin_leg.in_invite_pending = False
        if owner.origin.state not in (TxState.TRYING, TxState.PROCEEDING):
            return
        method = owner.origin.request.method
        out = relayed_response(
            owner.origin.request,
            resp,
            to_tag=None,
            contact=self.contact(owner.origin_leg.transport) if method in TARGET_REFRESH else None,
            body=self._rewrite(owner.call, target.side, resp),
        )
        self.tx.send_response(owner.origin, out, now)

    def on_unacknowledged(self, call: Call, tx: ServerTransaction, now: float) -> None:
        """A 2xx to an INVITE was never ACKed (Timer L): the dialog is dead, hang up both legs."""
        last = tx.last_response
        if last is None or not 200 <= last.status < 300 or call.state is CallState.TERMINATED:
            return
        for leg in (call.a, call.b):
            if leg is not None:
                self._send_bye(call, leg, now)
        self.end_call(call, EndReason.TIMEOUT, now)

    def on_ack(self, req: Request, now: float) -> None:
        """ACK for a 2xx we sent: each leg's ACK is ours to send, so nothing crosses to the other
        leg, except the SDP answer of a late offer, which the callee's ACK carries on."""
        call = self.by_call_id.get(req.call_id)
        if call is None or call.late_offer_cseq is None or call.a.dialog.call_id != req.call_id:
            return
        b = call.b
        cseq, call.late_offer_cseq = call.late_offer_cseq, None
        if b is None:
            return
        try:
            body = self._rewrite(call, Side.CALLER, req)
        except SdpRejected as exc:  # the caller's answer is unusable: the callee cannot use it either
            log.warning("call %s: SDP answer in the caller's ACK refused: %s", call.id, exc.reason)
            self._ack(b, cseq)
            self.hangup(call.id, EndReason.ERROR, now)
            return
        self._ack(b, cseq, body)


def _tags_match(leg: Leg, req: Request) -> bool:
    dialog = leg.dialog
    return req.to_tag == dialog.local_tag and (dialog.remote_tag is None or req.from_tag == dialog.remote_tag)
