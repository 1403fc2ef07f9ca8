"""Call flows of the B2BUA: a new call, the callee's answers, CANCEL, no answer, failures.

Mixed into :class:`pbx_edge.b2bua.core.EdgeCore`, which supplies the transaction layer, the router,
media and bookkeeping. Flows follow RFC 3261 (INVITE/ACK/CANCEL/BYE); reliable provisional responses
(RFC 3262) are in :mod:`pbx_edge.b2bua.reliable`, in-dialog requests in :mod:`pbx_edge.b2bua.in_dialog`,
the shared helpers in :mod:`pbx_edge.b2bua.flow_base`.
"""

from __future__ import annotations

import logging

from pbx_edge.b2bua.call import Call, CalleeInvite, CallState, EndReason, Leg, Relayed, ReliableProvisional
from pbx_edge.b2bua.flow_base import int_or_none, is_sdp
from pbx_edge.b2bua.in_dialog import InDialogFlows
from pbx_edge.b2bua.messages import callee_invite, caller_identity, relayed_response
from pbx_edge.b2bua.no_answer import AnswerWithAi
from pbx_edge.media.interface import MediaUnavailable, SdpKind, SdpRejected, Side
from pbx_edge.sip.dialog import Dialog
from pbx_edge.sip.endpoint import Endpoint
from pbx_edge.sip.ids import new_call_id, new_tag
from pbx_edge.sip.message import Request, Response
from pbx_edge.sip.responses import make_response
from pbx_edge.sip.transaction import ClientTransaction, ServerTransaction, TxState

log = logging.getLogger("pbx_edge.b2bua")


class CallFlows(InDialogFlows):
    """The call flows; :class:`~pbx_edge.b2bua.core.EdgeCore` provides the state and the hooks."""

    # --- new calls -------------------------------------------------------------------------------
    def on_initial_invite(self, req: Request, source: Endpoint, tx: ServerTransaction, now: float) -> None:
        self.tx.send_response(tx, make_response(req, 100, "Trying"), now)
        if len(self.calls) >= self.config.calls.max_calls or self.refusing is not None:
            self._reject(tx, 503, "Service Unavailable", now, retry_after=5)
            return
        ruri = req.request_uri
        user = ruri.user_unescaped or ""
        targets = self.router.resolve(ruri, now)
        known = self.router.extension_config(user) is not None
        trigger = self.invite_trigger(user, bool(targets), known)  # the AI attendant answers at once
        if not targets and trigger is None:
            if known:  # a configured extension that is not registered right now
                self._reject(tx, 480, "Temporarily Unavailable", now)
            else:
                self._reject(tx, 404, "Not Found", now)
            return
        target = targets[0] if targets else None
        route_source = "ivr" if trigger == "ivr" else target.source if target else "attendant"
        opened = self._open_call(req, source, tx, route_source, now)
        if opened is None:
            return
        call, body = opened
        if trigger is not None:
            self.emit("call.started", call)
            if self.answer_with_ai(call, trigger, now):
                return
            if target is None:  # what the number gets without the attendant
                status, reason = (480, "Temporarily Unavailable") if known else (404, "Not Found")
                self._fail_caller(call, status, reason, now)
                self.end_call(call, EndReason.REJECTED, now, status=status)
                return
            call.route_source = target.source
        assert target is not None  # away / after hours without an AI to answer: ring as usual
        transport = target.dest.transport
        invite = callee_invite(
            req,
            request_uri=str(target.uri),
            call_id=new_call_id(self.local_host(transport)),
            from_tag=new_tag(),
            via=self.via(transport),
            contact=self.contact(transport),
            body=body,
        )
        self.attach_callee(call, Leg(Side.CALLEE, Dialog.as_uac(invite), transport, target.dest))
        client_tx = self.tx.send_request(invite, target.dest, now)
        client_tx.owner = CalleeInvite(call)
        call.b_invite_tx = client_tx
        extension = self.router.extension_config(call.callee)
        timeout = self.config.calls.no_answer_timeout
        if extension is not None and extension.no_answer_timeout is not None:
            timeout = extension.no_answer_timeout
        self.timers.schedule((call.id, "no_answer", 0), now + timeout)
        if trigger is None:
            self.emit("call.started", call)

    def _open_call(
        self, req: Request, source: Endpoint, tx: ServerTransaction, route_source: str, now: float
    ) -> tuple[Call, bytes] | None:
        """A new call with its media, the caller's offer given to it; None when refused (answered)."""
        call_id = new_tag()
        try:
            media = self.media.open_session(call_id)
        except MediaUnavailable as exc:
            self._reject(tx, 503, "Service Unavailable", now, retry_after=exc.retry_after)
            return None
        body = b""
        if is_sdp(req):
            try:
                body = media.rewrite(Side.CALLER, SdpKind.OFFER, req.body)
            except SdpRejected as exc:
                media.close()
                self._reject(tx, exc.status, exc.reason, now)
                return None
        ruri = req.request_uri
        local_tag = new_tag()
        a_leg = Leg(Side.CALLER, Dialog.as_uas(req, local_tag), source.transport, source)
        call = Call(
            id=call_id,
            a=a_leg,
            caller=caller_identity(req),
            callee=ruri.user_unescaped or ruri.host,
            a_invite_tx=tx,
            media=media,
            created_at=now,
            route_source=route_source,
        )
        tx.owner = call
        self.register_call(call)
        return call, body

    def _reject(
        self, tx: ServerTransaction, status: int, reason: str, now: float, retry_after: int | None = None
    ) -> None:
        reply = make_response(tx.request, status, reason, to_tag=new_tag())
        if retry_after is not None:
            reply.headers.add("Retry-After", str(retry_after))
        self.stats["calls_rejected"] += 1
        self.tx.send_response(tx, reply, now)
        req = tx.request
        self.notify(
            "call.rejected",
            {
                "a_call_id": req.call_id,
                "caller": caller_identity(req),
                "callee": req.request_uri.user_unescaped or req.request_uri.host,
                "sip_code": status,
                "reason": self.refusing or reason,
                "time": now,
            },
        )

    # --- responses on the callee leg ---------------------------------------------------------------
    def on_call_response(self, owner: object, tx: ClientTransaction, resp: Response, now: float) -> None:
        if isinstance(owner, CalleeInvite):
            self._on_callee_response(owner.call, resp, now)
        elif isinstance(owner, Relayed):
            self._on_relayed_response(owner, tx, resp, now)
        # Hangup, CancelSent, OwnPrack: the answer changes nothing.

    def _on_callee_response(self, call: Call, resp: Response, now: float) -> None:
        status = resp.status
        b = call.b
        assert b is not None
        if status < 200:
            call.b_provisional_seen = True
            if call.cancel_b_when_possible:
                self._send_cancel(call, now)
            if status == 100 or call.state not in (CallState.TRYING, CallState.EARLY):
                return
            self._on_callee_provisional(call, b, resp, now)
        elif status < 300:
            self._on_callee_answer(call, b, resp, now)
        elif call.a_final_sent:
            self.end_call(call, call.end_reason or EndReason.REJECTED, now)
        elif self.busy_to_ai(call, status, now):
            return  # the AI attendant answered the caller instead
        else:
            out = relayed_response(
                call.a_invite_tx.request, resp, to_tag=call.a.dialog.local_tag, contact=None, body=b""
            )  # a failure: no Contact, no session description
            self._final_to_caller(call, out, now)
            self.end_call(call, EndReason.REJECTED, now, status=out.status)

    def _on_callee_provisional(self, call: Call, b: Leg, resp: Response, now: float) -> None:
        if resp.to_tag and (b.dialog.remote_tag is None or b.dialog.remote_tag == resp.to_tag):
            b.dialog.update_from_response(resp)
        rseq: int | None = None
        if "100rel" in resp.option_tags("Require"):
            rseq = int_or_none(resp.headers.get("RSeq"))
            if rseq is None or rseq <= call.last_callee_rseq:
                return  # a retransmission, or unusable
            call.last_callee_rseq = rseq
        try:
            out = self._callee_response_for_caller(call, resp)
        except SdpRejected as exc:  # early media we cannot relay: the ringing still goes through
            log.warning("call %s: SDP in %d from the callee dropped: %s", call.id, resp.status, exc.reason)
            out = relayed_response(
                call.a_invite_tx.request,
                resp,
                to_tag=call.a.dialog.local_tag,
                contact=self.contact(call.a.transport),
                body=b"",
            )
            rseq = None  # without its SDP the 1xx is not relayed reliably; PRACK it ourselves
            if "100rel" in resp.option_tags("Require"):
                self._own_prack(call, b, call.last_callee_rseq, resp, now)
        if rseq is not None:
            if self._caller_supports_100rel(call):
                ours = call.next_rseq
                call.next_rseq += 1
                out.headers.add("Require", "100rel")
                out.headers.add("RSeq", str(ours))
                t1 = self.settings.t1
                call.unacked_reliable[ours] = ReliableProvisional(out, rseq, now, t1)
                if call.a.transport == "UDP":
                    self.timers.schedule((call.id, "rel1xx", ours), now + t1)
            else:
                self._own_prack(call, b, rseq, resp, now)
        first = call.state is CallState.TRYING
        call.state = CallState.EARLY
        self.tx.send_response(call.a_invite_tx, out, now)
        if first:
            self.emit("call.ringing", call)

    def _on_callee_answer(self, call: Call, b: Leg, resp: Response, now: float) -> None:
        if not b.dialog.early:
            self._resend_ack(b)  # a retransmitted 2xx: our ACK was lost
            return
        b.dialog.update_from_response(resp)
        late_offer = not is_sdp(call.a_invite_tx.request) and is_sdp(resp)
        if late_offer and not call.a_final_sent and call.state in (CallState.TRYING, CallState.EARLY):
            call.late_offer_cseq = resp.cseq.seq  # RFC 3264 late offer: the answer comes in the ACK
        else:
            self._ack(b, resp.cseq.seq)
        if call.a_final_sent or call.state in (CallState.CANCELLING, CallState.TERMINATED):
            self._send_bye(call, b, now)  # answered after the caller left
            self.end_call(call, call.end_reason or EndReason.CALLER_CANCEL, now)
            return
        try:
            out = self._callee_response_for_caller(call, resp)
        except SdpRejected as exc:  # a 2xx cannot be refused: ACKed above, now hang the callee up
            self._send_bye(call, b, now)
            status, reason = (488, exc.reason) if exc.status == 488 else (502, "Bad Gateway")
            self._fail_caller(call, status, reason, now)
            self.end_call(call, EndReason.ERROR, now, status=status)
            return
        self._final_to_caller(call, out, now)
        call.state = CallState.CONFIRMED
        call.answered_at = now
        call.final_status = out.status
        call.a.dialog.early = False
        self.timers.cancel((call.id, "no_answer", 0))
        for ours in list(call.unacked_reliable):
            self.timers.cancel((call.id, "rel1xx", ours))
        call.unacked_reliable.clear()
        self.emit("call.answered", call)

    def _callee_response_for_caller(self, call: Call, resp: Response) -> Response:
        return relayed_response(
            call.a_invite_tx.request,
            resp,
            to_tag=call.a.dialog.local_tag,
            contact=self.contact(call.a.transport),
            body=self._rewrite(call, Side.CALLEE, resp),
        )

    def on_stray_response(self, resp: Response, now: float) -> None:
        """A 2xx retransmission that outlived its transaction: ACK it again."""
        if not 200 <= resp.status < 300:
            return
        call = self.by_call_id.get(resp.call_id)
        leg = call.leg_for_call_id(resp.call_id) if call else None
        if leg is not None:
            self._resend_ack(leg)

    # --- CANCEL and no-answer --------------------------------------------------------------------
    def on_cancel(self, req: Request, tx: ServerTransaction, now: float) -> None:
        invite_tx = self.tx.find_invite_server_tx(req)
        call = invite_tx.owner if invite_tx is not None else None
        if invite_tx is None:
            self._reply(tx, 481, "Call/Transaction Does Not Exist", now)
            return
        to_tag = call.a.dialog.local_tag if isinstance(call, Call) else None
        self._reply(tx, 200, "OK", now, to_tag=to_tag)
        if not isinstance(call, Call) or call.a_final_sent:
            return
        self._fail_caller(call, 487, "Request Terminated", now)
        self._abandon_callee(call, EndReason.CALLER_CANCEL, now)

    def _on_call_timer(self, key: tuple[str, str, int], now: float) -> None:
        call_id, kind, number = key
        call = self.calls.get(call_id)
        if call is None:
            return
        if kind == "no_answer":
            self._on_no_answer(call, now)
        elif kind == "rel1xx":
            self._retransmit_reliable(call, number, now)
        elif kind == "transfer":
            self.on_transfer_timer(call, now)

    def _on_no_answer(self, call: Call, now: float) -> None:
        if call.state not in (CallState.TRYING, CallState.EARLY) or call.a_final_sent:
            return
        extension = self.router.extension_config(call.callee)
        outcome = self.no_answer.on_no_answer(call, extension.no_answer_action if extension else None)
        if isinstance(outcome, AnswerWithAi):
            if self.answer_with_ai(call, outcome.trigger, now):
                return
            outcome = outcome.fallback
        self._fail_caller(call, outcome.status, outcome.reason, now)
        self._abandon_callee(call, EndReason.NO_ANSWER, now)

    # --- failures ----------------------------------------------------------------------------------------
    def on_call_failure(self, owner: object, tx: ClientTransaction, now: float, *, timeout: bool) -> None:
        if isinstance(owner, CalleeInvite):
            call = owner.call
            if call.a_final_sent or call.state is CallState.CANCELLING:
                self.end_call(call, call.end_reason or EndReason.TIMEOUT, now)
                return
            status, reason = (408, "Request Timeout") if timeout else (503, "Service Unavailable")
            self._fail_caller(call, status, reason, now)
            self.end_call(call, EndReason.TIMEOUT if timeout else EndReason.TRANSPORT_ERROR, now)
        elif isinstance(owner, Relayed):
            if tx.request.method == "INVITE":
                owner.target_leg.out_invite_pending = False
                owner.origin_leg.in_invite_pending = False
            if owner.origin.state in (TxState.TRYING, TxState.PROCEEDING):
                status, reason = (408, "Request Timeout") if timeout else (503, "Service Unavailable")
                self.tx.send_response(owner.origin, make_response(owner.origin.request, status, reason), now)
