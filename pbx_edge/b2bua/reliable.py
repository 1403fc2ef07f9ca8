"""RFC 3262 reliable provisional responses across the two legs.

Our RSeq toward the caller is mapped to the callee's RSeq and the caller's PRACK is relayed end to
end; a caller without 100rel gets the 1xx unreliably and the edge PRACKs the callee itself.
"""

from __future__ import annotations

from pbx_edge.b2bua.call import Call, EndReason, Leg, OwnPrack, Relayed
from pbx_edge.b2bua.flow_base import FlowBase, int_or_none
from pbx_edge.b2bua.messages import IN_DIALOG_PASS_HEADERS, copy_headers
from pbx_edge.media.interface import Side
from pbx_edge.sip.message import Request, Response
from pbx_edge.sip.transaction import ServerTransaction


class ReliableFlows(FlowBase):
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
        rseq = int_or_none(rack[0]) if len(rack) == 3 else None
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
