"""Tell the AI attendant when the person it answered for can be reached again.

Theory of operation. A call the attendant answered because its callee was ``unregistered``,
``away`` or ``busy`` waits for that reason to go away: the extension registers a contact, is set
back from away (``PUT /api/extensions/{ext}/away``), or a call of the extension through this edge
ends. The core then emits ``call.callee_available`` for each such attended call, once per call;
the AI bridge passes it to the AI as a ``callee_available`` control, and the AI decides whether to
offer the caller a transfer (the transfer itself is :mod:`pbx_edge.b2bua.transfer`). ``no_answer``
and ``after_hours`` have no such signal: nothing tells the edge that a phone nobody picked up now
has someone in front of it.

A ``busy`` extension is only seen to become free when its call went through this edge; a transfer
to a phone that is still busy fails with ``call.transfer_failed`` and the AI keeps the call.
"""

from __future__ import annotations

import dataclasses
import logging

from pbx_edge.b2bua.call import Call, CallState
from pbx_edge.b2bua.location import Binding
from pbx_edge.b2bua.transfer import TransferFlows
from pbx_edge.b2bua.triggers import Trigger
from pbx_edge.sip.uri import SipUri

log = logging.getLogger("pbx_edge.b2bua")

# The triggers that an event can lift, and the word the AI contract uses for each
AVAILABLE_BECAUSE: dict[Trigger, str] = {"unregistered": "registered", "away": "back", "busy": "call_ended"}


class AvailabilityFlows(TransferFlows):
    def callee_available(self, extension: str, lifted: Trigger) -> int:
        """``extension`` is no longer ``lifted`` (unregistered, away, busy): tell each attended
        call that waits for it, once. Returns how many calls were told."""
        told = 0
        for call_id, attended in list(self.attended.items()):
            call = self.calls.get(call_id)
            if call is None or call.callee != extension or attended.trigger != lifted:
                continue
            if attended.callee_available or call_id in self.transfers:
                continue  # told already, or being transferred
            if call.state is not CallState.CONFIRMED:
                continue
            self.attended[call_id] = dataclasses.replace(attended, callee_available=True)
            log.info("call %s: %s is available (%s)", call_id, extension, AVAILABLE_BECAUSE[lifted])
            self.emit("call.callee_available", call)
            told += 1
        return told

    def on_registered(self, binding: Binding) -> None:
        try:
            user = SipUri.parse(binding.aor).user_unescaped
        except ValueError:
            return
        if user:
            self.callee_available(user, "unregistered")

    def on_back(self, extension: str) -> None:
        self.callee_available(extension, "away")

    def on_call_over(self, call: Call) -> None:
        """A call ended: those of its parties that an attended call waits for, and that no other call
        holds, are no longer busy. (Runs at every call's end: the common case, nobody waiting, costs
        one look at the attended calls.)"""
        if call.id in self.attended or call.answered_at is None:
            return  # the AI's own call, or one that never rang through to a conversation
        waited_for = {
            waiting.callee
            for call_id, attended in self.attended.items()
            if attended.trigger == "busy" and (waiting := self.calls.get(call_id)) is not None
        }
        parties = {call.caller, call.callee} & waited_for
        if not parties:
            return
        talking = [c for c in self.calls.values() if c.id not in self.attended]
        busy = {c.callee for c in talking} | {c.caller for c in talking}
        for party in parties - busy:
            self.callee_available(party, "busy")
