"""Hand a call to the AI attendant: the edge answers the caller itself and the AI talks to it.

Theory of operation. A trigger (pbx_edge/b2bua/triggers.py) fires: at the INVITE (``away``,
``after_hours``, ``unregistered``), on the callee's 486/600 (``busy``) or when the no-answer timer
runs out (``no_answer``, through the policy in pbx_edge/b2bua/no_answer.py). If the
:class:`AttendantBackend` (the node's AI bridge) says the AI layer can take a call, the caller gets
a 200 OK whose SDP the backend wrote (the relay's own address and ports, a codec the injector can
encode); a callee leg still ringing is cancelled and detached from the call (its late answers are
ACKed and hung up, never relayed). The call is then ``confirmed`` with no callee leg: the caller's
ACK is absorbed like any other, its BYE ends the call, and the edge's own ``hangup`` sends it a BYE.
``call.answered`` is emitted as for any answered call; :attr:`AttendantFlows.attended` tells the
listeners (the AI bridge) that the AI answered it and why, so they open the stream in attendant
mode. In-dialog requests of an attended call are answered here (re-INVITE/UPDATE with our SDP,
INFO with 200 and its DTMF reported) since there is no leg to relay them to.

When no AI can take the call (not configured, unreachable, no stream slot, an offer we cannot
answer: no SDP in the INVITE, no codec we encode), the caller gets what it would get without the
trigger, so it is never left in silence.

IVR numbers (``routing.ivr_numbers``) take the same path with the ``ivr`` trigger, at the INVITE and
before any other: the AI answers in IVR mode and no one rings. Without an AI to take the call such a
number is routed as usual (a route or registered contact rings; else 404, or 480 for a configured
extension that is not registered).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from pbx_edge.b2bua.away import AwayTable
from pbx_edge.b2bua.call import Call, CallState, Leg
from pbx_edge.b2bua.calls import CallFlows
from pbx_edge.b2bua.flow_base import ALLOW, is_sdp
from pbx_edge.b2bua.triggers import Trigger, TriggerPolicy
from pbx_edge.media.dtmf import parse_info_dtmf
from pbx_edge.media.interface import MediaUnavailable, SdpKind, SdpRejected, Side
from pbx_edge.sip.message import Request, Response
from pbx_edge.sip.responses import make_response
from pbx_edge.sip.transaction import ClientTransaction, ServerTransaction, TxState

log = logging.getLogger("pbx_edge.b2bua")

BUSY_STATUSES = frozenset({486, 600})
_ACCEPTED_IN_DIALOG = frozenset({"INFO", "MESSAGE", "NOTIFY"})


class AttendantBackend(Protocol):
    """What the B2BUA needs from the AI side of the node (``AiBridge`` in pbx_edge/ai_link)."""

    def available(self) -> bool:
        """Whether the AI layer is configured, believed reachable and has a stream slot free."""
        ...

    def answer_sdp(self, call: Call) -> bytes:
        """The SDP answer to the caller's offer, from the edge's own media; raises
        :class:`SdpRejected` or :class:`MediaUnavailable` when there is none to give."""
        ...

    def transfer_offer(self, call: Call) -> bytes:
        """The SDP offer for a transfer target (pbx_edge/b2bua/transfer.py): the edge's media on
        the callee side, the codec the caller was answered with; raises like :meth:`answer_sdp`."""
        ...


@dataclass(frozen=True, slots=True)
class AttendedCall:
    """A call the AI attendant answered: why, the SDP we answered with (for re-INVITEs), and whether
    the AI was told that the callee can be reached again (pbx_edge/b2bua/availability.py)."""

    trigger: Trigger
    sdp: bytes
    callee_available: bool = False


@dataclass(slots=True, eq=False)
class AbandonedCallee:
    """Owner of the INVITE of a callee leg given up when the AI answered: CANCEL it once it may be
    cancelled, ACK and BYE a late 2xx, ignore the rest."""

    call: Call
    leg: Leg
    invite_tx: ClientTransaction
    cancel_pending: bool = False


class AttendantFlows(CallFlows):
    """The attendant's call flows; :class:`~pbx_edge.b2bua.core.EdgeCore` holds the state below."""

    attendant: AttendantBackend | None
    attended: dict[str, AttendedCall]
    away: AwayTable
    triggers: TriggerPolicy
    wall_clock: Callable[[], float]

    # --- when -------------------------------------------------------------------------------------
    def ai_can_answer(self) -> bool:
        return self.attendant is not None and self.attendant.available()

    def invite_trigger(self, user: str, routable: bool, known: bool) -> Trigger | None:
        """The trigger that sends a new call to the AI at once (before any ringing), if any:
        ``ivr`` (a called number in ``routing.ivr_numbers``), then ``away``, then ``after_hours``,
        then ``unregistered`` (a configured extension, no contact)."""
        if not user or not self.ai_can_answer():
            return None
        if self.triggers.is_ivr_number(user):
            return "ivr"
        wants = self.triggers.wants_ai
        if self.away.is_away(user) and wants(user, "away"):
            return "away"
        if wants(user, "after_hours") and self.triggers.after_hours(user, self.wall_clock()):
            return "after_hours"
        if not routable and known and wants(user, "unregistered"):
            return "unregistered"
        return None

    def busy_to_ai(self, call: Call, status: int, now: float) -> bool:
        """The callee answered busy: True when the AI attendant took the call instead."""
        if status not in BUSY_STATUSES or not self.triggers.wants_ai(call.callee, "busy"):
            return False
        return self.answer_with_ai(call, "busy", now)

    # --- answering --------------------------------------------------------------------------------
    def answer_with_ai(self, call: Call, trigger: Trigger, now: float) -> bool:
        """Answer the caller with the AI attendant; False (nothing sent) when no AI can take it."""
        backend = self.attendant
        if backend is None or not backend.available():
            return False
        if call.a_final_sent or call.state not in (CallState.TRYING, CallState.EARLY):
            return False
        if not is_sdp(call.a_invite_tx.request):
            log.info("call %s: no SDP offer from the caller, the AI attendant cannot answer", call.id)
            return False
        try:
            body = backend.answer_sdp(call)
        except (SdpRejected, MediaUnavailable) as exc:
            log.warning("call %s: the AI attendant cannot answer: %s", call.id, exc)
            return False
        self._detach_callee(call, now)
        self.timers.cancel((call.id, "no_answer", 0))
        for ours in list(call.unacked_reliable):
            self.timers.cancel((call.id, "rel1xx", ours))
        call.unacked_reliable.clear()
        self._final_to_caller(call, self._ok_with_sdp(call, call.a_invite_tx.request, body), now)
        call.state = CallState.CONFIRMED
        call.answered_at = now
        call.a.dialog.early = False
        self.attended[call.id] = AttendedCall(trigger, body)
        self.stats["calls_ai_answered"] += 1
        log.info("call %s: answered by the AI attendant (%s)", call.id, trigger)
        self.emit("call.answered", call)
        return True

    def _ok_with_sdp(self, call: Call, req: Request, body: bytes) -> Response:
        ok = make_response(req, 200, "OK", to_tag=call.a.dialog.local_tag)
        ok.headers.add("Contact", self.contact(call.a.transport))
        ok.headers.add("Allow", ALLOW)
        ok.headers.add("Supported", ", ".join(sorted(self.supported)))
        ok.headers.add("Content-Type", "application/sdp")
        ok.body = body
        return ok

    def _detach_callee(self, call: Call, now: float) -> None:
        """Take the callee leg out of the call; CANCEL its INVITE if it is still ringing."""
        b = call.b
        if b is None:
            return
        if self.by_call_id.get(b.dialog.call_id) is call:
            del self.by_call_id[b.dialog.call_id]
        call.b = None
        invite_tx, call.b_invite_tx = call.b_invite_tx, None
        call.cancel_b_when_possible = False
        if invite_tx is None or invite_tx.state not in (TxState.CALLING, TxState.PROCEEDING):
            return
        owner = AbandonedCallee(call, b, invite_tx)
        invite_tx.owner = owner
        if call.b_provisional_seen:
            self._cancel_abandoned(owner, now)
        else:
            owner.cancel_pending = True  # RFC 3261 §9.1: not before a provisional response

    def _cancel_abandoned(self, owner: AbandonedCallee, now: float) -> None:
        owner.cancel_pending = False
        self._cancel_invite(owner.invite_tx, None, now)

    # --- the abandoned callee leg -----------------------------------------------------------------
    def on_call_response(self, owner: object, tx: ClientTransaction, resp: Response, now: float) -> None:
        if not isinstance(owner, AbandonedCallee):
            super().on_call_response(owner, tx, resp, now)
            return
        if 100 < resp.status < 200 and owner.cancel_pending:
            self._cancel_abandoned(owner, now)
        elif 200 <= resp.status < 300:  # answered after we gave up: ACK, then hang up
            leg = owner.leg
            if leg.dialog.early:
                leg.dialog.update_from_response(resp)
                self._ack(leg, resp.cseq.seq)
                self._send_bye(owner.call, leg, now)
            else:
                self._resend_ack(leg)

    def on_call_failure(self, owner: object, tx: ClientTransaction, now: float, *, timeout: bool) -> None:
        if isinstance(owner, AbandonedCallee):
            return  # the callee leg we gave up on; the caller's call goes on
        super().on_call_failure(owner, tx, now, timeout=timeout)

    # --- in-dialog requests of an attended call ---------------------------------------------------
    def _relay(self, call: Call, leg: Leg, req: Request, tx: ServerTransaction, now: float) -> None:
        attended = self.attended.get(call.id)
        if attended is None or leg is not call.a:
            super()._relay(call, leg, req, tx, now)
            return
        method = req.method
        if method in ("INVITE", "UPDATE"):
            self._reanswer(call, attended, req, tx, now)
        elif method in _ACCEPTED_IN_DIALOG:
            if method == "INFO" and req.body:
                digit = parse_info_dtmf(req.headers.get("Content-Type") or "", req.body)
                if digit is not None:
                    self.emit_dtmf(call, Side.CALLER, digit)
            self._reply(tx, 200, "OK", now)
        else:
            self._reply(tx, 405, "Method Not Allowed", now, allow=True)

    def _reanswer(
        self, call: Call, attended: AttendedCall, req: Request, tx: ServerTransaction, now: float
    ) -> None:
        """A session refresh or new offer from the caller: answered by the edge itself."""
        body = attended.sdp
        if is_sdp(req):
            backend = self.attendant
            try:
                if backend is None:
                    raise MediaUnavailable("no AI backend")
                call.media.rewrite(Side.CALLER, SdpKind.OFFER, req.body)
                body = backend.answer_sdp(call)
            except SdpRejected as exc:
                self._reply(tx, exc.status, exc.reason, now)
                return
            except MediaUnavailable:
                self._reply(tx, 488, "Not Acceptable Here", now)
                return
            self.attended[call.id] = AttendedCall(attended.trigger, body)
        call.a.dialog.update_target(req)
        self.tx.send_response(tx, self._ok_with_sdp(call, req, body), now)
