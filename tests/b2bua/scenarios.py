"""Call scenarios driven through the sans-I/O core, one per way a call can end; shared by the
leak test (tests/media/test_relay_no_leak.py) and the CDR completeness test (tests/ops)."""

from __future__ import annotations

from pbx_edge.b2bua.call import EndReason
from pbx_edge.b2bua.core import EdgeCore
from pbx_edge.sip.message import Request, Response

from .harness import CALLEE, CALLER, SDP, Wire, answer, from_callee, from_caller, in_dialog
from .harness import invite as make_invite

CALLEE_SDP = SDP.replace(b"6000", b"7000")


class Scenario:
    def __init__(self, core: EdgeCore, wire: Wire) -> None:
        self.core, self.wire = core, wire

    def start(self, i: int) -> tuple[Request, Request]:
        a_inv = make_invite(call_id=f"leak-{i}", branch=f"z9hG4bKl{i}")
        self.wire.deliver(a_inv, CALLER)
        b_inv = self.wire.take_one(CALLEE, "INVITE")
        assert isinstance(b_inv, Request)
        return a_inv, b_inv

    def answered(self, i: int) -> tuple[Request, Request, Response]:
        a_inv, b_inv = self.start(i)
        self.wire.deliver(answer(b_inv, 200, "OK", body=CALLEE_SDP), CALLEE)
        ok = self.wire.take_one(CALLER, "200")
        assert isinstance(ok, Response)
        return a_inv, b_inv, ok

    def caller_bye(self, i: int) -> None:
        a_inv, _, ok = self.answered(i)
        self.wire.deliver(from_caller("BYE", a_inv, ok, 2, f"z9hG4bKlb{i}"), CALLER)

    def callee_bye(self, i: int) -> None:
        _, b_inv, _ = self.answered(i)
        self.wire.deliver(from_callee("BYE", b_inv, 1, f"z9hG4bKlcb{i}"), CALLEE)

    def cancel(self, i: int) -> None:
        a_inv, b_inv = self.start(i)
        self.wire.deliver(answer(b_inv, 180, "Ringing"), CALLEE)
        cancel = in_dialog(
            "CANCEL",
            call_id=a_inv.call_id,
            from_=a_inv.headers.get("From") or "",
            to=a_inv.headers.get("To") or "",
            cseq=1,
            uri=a_inv.uri,
            via_host=CALLER,
            branch=f"z9hG4bKl{i}",
        )
        self.wire.deliver(cancel, CALLER)
        self.wire.deliver(answer(b_inv, 487, "Request Terminated"), CALLEE)

    def busy(self, i: int) -> None:
        _, b_inv = self.start(i)
        self.wire.deliver(answer(b_inv, 486, "Busy Here"), CALLEE)

    def bad_answer_sdp(self, i: int) -> None:
        _, b_inv = self.start(i)
        self.wire.deliver(answer(b_inv, 200, "OK", body=b"v=0\r\ngarbage\r\n"), CALLEE)

    def handler_error(self, i: int) -> None:
        def explode(event: str, call: object) -> None:
            if event == "call.answered":
                raise RuntimeError("a listener failed")

        self.core.listeners.append(explode)
        try:
            self.answered(i)
        finally:
            self.core.listeners.remove(explode)

    def media_timeout(self, i: int) -> None:
        a_inv, _, _ = self.answered(i)
        call = self.core.call_for(a_inv.call_id)
        assert call is not None
        assert self.core.hangup(call.id, EndReason.MEDIA_TIMEOUT, self.wire.now, only_confirmed=True)

    def unanswered(self, i: int) -> None:
        self.start(i)  # left ringing; the no-answer timer or Timer B ends it below

    def refused(self, i: int) -> None:
        """An INVITE while the node refuses new calls (draining, memory): 503 before a call exists."""
        self.core.refusing = "draining"
        try:
            self.wire.deliver(make_invite(call_id=f"leak-{i}", branch=f"z9hG4bKl{i}"), CALLER)
        finally:
            self.core.refusing = None

    def shutdown(self, i: int) -> None:
        a_inv, _, _ = self.answered(i)
        call = self.core.call_for(a_inv.call_id)
        assert call is not None
        assert self.core.hangup(call.id, EndReason.SHUTDOWN, self.wire.now)
