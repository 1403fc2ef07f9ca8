"""Call flows of the B2BUA: what the other leg gets for each event on one leg.

Mixed into :class:`pbx_edge.b2bua.core.EdgeCore`, which supplies the transaction layer, the router,
media and bookkeeping. Flows follow RFC 3261 (INVITE/ACK/CANCEL/BYE), RFC 3262 (reliable provisional
responses: our RSeq toward the caller is mapped to the callee's RSeq, PRACK relayed end to end),
RFC 3311 (UPDATE) and RFC 3261 §14 (re-INVITE, 491 on glare).

In-dialog requests go to the peer's flow (the address the caller's INVITE came from, the address the
callee's INVITE went to) unless the dialog has a route set: phones behind NAT are reachable only on
their flow, and a proxy or trunk in front of the callee routes by Request-URI.
"""

from __future__ import annotations

import logging
from typing import Any

from pbx_edge.b2bua.call import (
    Call,
    CalleeInvite,
    CallState,
    CancelSent,
    EndReason,
    Hangup,
    Leg,
    OwnPrack,
    Relayed,
    ReliableProvisional,
)
from pbx_edge.b2bua.messages import (
    IN_DIALOG_PASS_HEADERS,
    PASSABLE_REQUIRE,
    callee_invite,
    caller_identity,
    cancel_for,
    copy_headers,
    relayed_response,
)
from pbx_edge.b2bua.no_answer import AnswerWithAi, NoAnswerPolicy
from pbx_edge.b2bua.routing import Router
from pbx_edge.b2bua.triggers import Trigger
from pbx_edge.media.dtmf import parse_info_dtmf
from pbx_edge.media.interface import MediaManager, MediaUnavailable, SdpKind, SdpRejected, Side
from pbx_edge.ops.config import EdgeConfig
from pbx_edge.sip.dialog import Dialog
from pbx_edge.sip.endpoint import Endpoint
from pbx_edge.sip.ids import new_call_id, new_tag
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


class CallFlows:
    """The call flows; :class:`~pbx_edge.b2bua.core.EdgeCore` provides the state and the hooks below."""

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
            rseq = _int_or_none(resp.headers.get("RSeq"))
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

    def _fail_caller(self, call: Call, status: int, reason: str, now: float) -> None:
        out = make_response(call.a_invite_tx.request, status, reason, to_tag=call.a.dialog.local_tag)
        self._final_to_caller(call, out, now)

    def _final_to_caller(self, call: Call, out: Response, now: float) -> None:
        call.a_final_sent = True
        if call.final_status is None:
            call.final_status = out.status
        self.tx.send_response(call.a_invite_tx, out, now)

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
        invite_tx = call.b_invite_tx
        if invite_tx is None or invite_tx.state not in (TxState.CALLING, TxState.PROCEEDING):
            return
        client_tx = self.tx.send_request(cancel_for(invite_tx.request), invite_tx.dest, now)
        client_tx.owner = CancelSent(call)

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

    # --- RFC 3262 reliable provisional responses -----------------------------------------------------
    def _caller_supports_100rel(self, call: Call) -> bool:
        invite = call.a_invite_tx.request
        return "100rel" in (invite.option_tags("Supported") | invite.option_tags("Require"))

    def _retransmit_reliable(self, call: Call, ours: int, now: float) -> None:
        pending = call.unacked_reliable.get(ours)
        if pending is None or call.a_final_sent:
            return
        give_up_at = pending.sent_at + 64 * self.settings.t1
        if now >= give_up_at:
            del call.unacked_reliable[ours]
            self._fail_caller(call, 504, "Reliable Provisional Response Not Acknowledged", now)
            self._abandon_callee(call, EndReason.TIMEOUT, now)
            return
        self.tx.send_response(call.a_invite_tx, pending.response, now)
        pending.interval *= 2  # RFC 3262 §3: T1, doubling, until 64*T1
        self.timers.schedule((call.id, "rel1xx", ours), min(now + pending.interval, give_up_at))

    def _on_prack(self, call: Call, leg: Leg, req: Request, tx: ServerTransaction, now: float) -> None:
        rack = (req.headers.get("RAck") or "").split()
        rseq = _int_or_none(rack[0]) if len(rack) == 3 else None
        if rseq is None:
            self._reply(tx, 400, "Bad RAck Header", now)
            return
        pending = call.unacked_reliable.pop(rseq, None) if leg is call.a else None
        if pending is None:
            self._reply(tx, 481, "No Matching Reliable Provisional Response", now)
            return
        self.timers.cancel((call.id, "rel1xx", rseq))
        b = call.b
        if pending.callee_rseq is None or b is None or call.b_invite_tx is None:
            self._reply(tx, 200, "OK", now)
            return
        out = b.dialog.new_request("PRACK", self.via(b.transport), None)
        out.headers.add("RAck", f"{pending.callee_rseq} {call.b_invite_tx.request.cseq.seq} INVITE")
        copy_headers(req.headers, out.headers, IN_DIALOG_PASS_HEADERS)
        out.body = self._rewrite(call, Side.CALLER, req)
        client_tx = self.tx.send_request(out, self._dest(b), now)
        client_tx.owner = Relayed(call, tx, leg, b)

    def _own_prack(self, call: Call, b: Leg, rseq: int, resp: Response, now: float) -> None:
        """The caller cannot PRACK (no 100rel): acknowledge the callee's reliable 1xx ourselves."""
        out = b.dialog.new_request("PRACK", self.via(b.transport), None)
        out.headers.add("RAck", f"{rseq} {resp.cseq.seq} INVITE")
        client_tx = self.tx.send_request(out, self._dest(b), now)
        client_tx.owner = OwnPrack(call)

    # --- in-dialog requests ----------------------------------------------------------------------------
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


def _tags_match(leg: Leg, req: Request) -> bool:
    dialog = leg.dialog
    return req.to_tag == dialog.local_tag and (dialog.remote_tag is None or req.from_tag == dialog.remote_tag)


def _int_or_none(value: str | None) -> int | None:
    if value is None or not value.strip().isdigit():
        return None
    return int(value)
