"""The AI attendant's ``transfer`` action: connect an attended caller to an extension.

Theory of operation. :meth:`TransferFlows.transfer` routes the target (an extension of our domain,
or of the host the caller dialled, as phones that register with the PBX's IP address are keyed;
or a SIP URI) like a new call and sends it an INVITE on a new callee leg, offering the relay's
callee-side address with the codec the caller was answered with (the relay does not transcode; the
backend writes that offer). The caller keeps hearing the AI meanwhile. When the target answers, the
leg becomes the call's callee leg: its SDP answer goes to the media session (the relay then sends
the caller's media to it), the call leaves :attr:`attended` (in-dialog requests are relayed again,
a BYE on either side ends both) and ``call.transferred`` is emitted, for the bridge to take the
caller off the injector and tell the AI. A failure (error response, timeout, the target not
answering within its no-answer timeout) emits ``call.transfer_failed`` and the AI keeps the call.
If the caller hangs up first, the target's INVITE is cancelled (or its late 2xx ACKed and hung up).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from urllib.parse import quote

from pbx_edge.b2bua.attendant import AttendantFlows
from pbx_edge.b2bua.call import Call, CallState, Leg
from pbx_edge.b2bua.messages import callee_invite, cancel_for
from pbx_edge.media.interface import MediaUnavailable, SdpKind, SdpRejected, Side
from pbx_edge.sip.dialog import Dialog
from pbx_edge.sip.ids import new_call_id, new_tag
from pbx_edge.sip.message import Response
from pbx_edge.sip.transaction import ClientTransaction, TxState
from pbx_edge.sip.uri import SipUri

log = logging.getLogger("pbx_edge.b2bua")

_USER_SAFE = "-_.!~*'()&=+$,;?/"


@dataclass(slots=True, eq=False)
class TransferInvite:
    """Owner of the INVITE to a transfer target."""

    call: Call
    leg: Leg
    target: str
    invite_tx: ClientTransaction
    cancelled: bool = False


class TransferFlows(AttendantFlows):
    transfers: dict[str, TransferInvite]  # pending transfers by our call id

    def transfer(self, call_id: str, target: str, now: float) -> bool:
        """Start connecting attended call ``call_id`` to ``target``; False when it cannot be tried
        (not an attended call, a transfer already under way, no route, no offer to make)."""
        call = self.calls.get(call_id)
        backend = self.attendant
        if call is None or call.id not in self.attended or call.id in self.transfers:
            return False
        if call.state is not CallState.CONFIRMED or backend is None:
            return False
        # routing looks for registrations under our domain and under this host, as for the caller's call
        uri = self._transfer_uri(target, call.a_invite_tx.request.request_uri.host)
        routes = self.router.resolve(uri, now) if uri is not None else []
        if not routes:
            log.info("call %s: transfer target %r has no route", call.id, target)
            return False
        try:
            body = backend.transfer_offer(call)
        except (SdpRejected, MediaUnavailable) as exc:
            log.warning("call %s: no offer for the transfer to %r: %s", call.id, target, exc)
            return False
        route = routes[0]
        transport = route.dest.transport
        invite = callee_invite(
            call.a_invite_tx.request,
            request_uri=str(route.uri),
            call_id=new_call_id(self.local_host(transport)),
            from_tag=new_tag(),
            via=self.via(transport),
            contact=self.contact(transport),
            body=body,
        )
        invite.headers.set("Content-Type", "application/sdp")
        leg = Leg(Side.CALLEE, Dialog.as_uac(invite), transport, route.dest)
        tx = self.tx.send_request(invite, route.dest, now)
        owner = TransferInvite(call, leg, target, tx)
        tx.owner = owner
        self.transfers[call.id] = owner
        call.transfer_target, call.transfer_error = target, None
        extension = self.router.extension_config(uri.user_unescaped or "") if uri is not None else None
        timeout = self.config.calls.no_answer_timeout
        if extension is not None and extension.no_answer_timeout is not None:
            timeout = extension.no_answer_timeout
        self.timers.schedule((call.id, "transfer", 0), now + timeout)
        log.info("call %s: transferring to %s (%s)", call.id, target, route.uri)
        return True

    def _transfer_uri(self, target: str, host: str) -> SipUri | None:
        """A SIP URI as it is; an extension as ``sip:target@host``."""
        if target.startswith(("sip:", "sips:")):
            try:
                return SipUri.parse(target)
            except ValueError:
                return None
        return SipUri(user=quote(target, safe=_USER_SAFE), host=host)

    # --- the target's answers ------------------------------------------------------------------
    def on_call_response(self, owner: object, tx: ClientTransaction, resp: Response, now: float) -> None:
        if not isinstance(owner, TransferInvite):
            super().on_call_response(owner, tx, resp, now)
            return
        call, leg = owner.call, owner.leg
        status = resp.status
        live = call.state is CallState.CONFIRMED and self.transfers.get(call.id) is owner
        if status < 200:
            if status > 100 and not live:
                self._cancel_transfer(owner, now)
            return
        if status >= 300:
            if self.transfers.get(call.id) is owner:
                self._transfer_failed(owner, f"{status} {resp.reason}", now)
            return
        if not leg.dialog.early:
            self._resend_ack(leg)  # a retransmitted 2xx
            return
        leg.dialog.update_from_response(resp)
        self._ack(leg, resp.cseq.seq)
        if not live:  # the caller left (or the transfer was given up) meanwhile
            self._send_bye(call, leg, now)
            return
        try:
            call.media.rewrite(Side.CALLEE, SdpKind.ANSWER, resp.body)
        except SdpRejected as exc:
            self._send_bye(call, leg, now)
            self._transfer_failed(owner, f"unusable SDP: {exc.reason}", now)
            return
        self.transfers.pop(call.id, None)
        self.timers.cancel((call.id, "transfer", 0))
        self.attach_callee(call, leg)
        self.attended.pop(call.id, None)
        log.info("call %s: transferred to %s", call.id, owner.target)
        self.emit("call.transferred", call)

    def on_call_failure(self, owner: object, tx: ClientTransaction, now: float, *, timeout: bool) -> None:
        if not isinstance(owner, TransferInvite):
            super().on_call_failure(owner, tx, now, timeout=timeout)
        elif self.transfers.get(owner.call.id) is owner:
            self._transfer_failed(owner, "timeout" if timeout else "transport error", now)

    def on_transfer_timer(self, call: Call, now: float) -> None:
        owner = self.transfers.get(call.id)
        if owner is not None:
            self._transfer_failed(owner, "no answer", now)

    def _transfer_failed(self, owner: TransferInvite, why: str, now: float) -> None:
        call = owner.call
        self.transfers.pop(call.id, None)
        self.timers.cancel((call.id, "transfer", 0))
        self._cancel_transfer(owner, now)
        log.info("call %s: transfer to %s failed: %s", call.id, owner.target, why)
        call.transfer_error = why
        if call.state is CallState.CONFIRMED:
            self.emit("call.transfer_failed", call)

    def _cancel_transfer(self, owner: TransferInvite, now: float) -> None:
        """CANCEL the target's INVITE once it may be (RFC 3261 §9.1: after a provisional; until
        then the next 1xx of a transfer no longer pending brings us back here)."""
        tx = owner.invite_tx
        if owner.cancelled or tx.state is not TxState.PROCEEDING:
            return
        owner.cancelled = True
        self.tx.send_request(cancel_for(tx.request), tx.dest, now).owner = None

    def forget_transfer(self, call: Call, now: float) -> None:
        """The call is ending: give up its pending transfer (CANCEL, or BYE a late answer)."""
        owner = self.transfers.pop(call.id, None)
        if owner is not None:
            self.timers.cancel((call.id, "transfer", 0))
            self._cancel_transfer(owner, now)
