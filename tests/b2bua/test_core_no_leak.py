"""After many calls and all RFC timers, the core holds nothing: no calls, transactions, timers or objects."""

from __future__ import annotations

import gc

from pbx_edge.b2bua.core import EdgeCore
from pbx_edge.sip.message import Request, Response

from .harness import CALLEE, CALLER, SDP, Wire, ack_for, answer, from_caller, invite, make_core


def _call(wire: Wire, i: int, *, busy: bool) -> None:
    a_inv = invite(call_id=f"leak-{i}", branch=f"z9hG4bKleak{i}")
    wire.deliver(a_inv, CALLER)
    b_inv = wire.take_one(CALLEE, "INVITE")
    assert isinstance(b_inv, Request)
    wire.take(CALLER)
    if busy:
        wire.deliver(answer(b_inv, 486, "Busy Here"), CALLEE)
        wire.take(CALLER)
        wire.take(CALLEE)
        return
    wire.deliver(answer(b_inv, 200, "OK", body=SDP), CALLEE)
    ok = wire.take_one(CALLER, "200")
    assert isinstance(ok, Response)
    wire.deliver(ack_for(a_inv, ok, CALLER, f"z9hG4bKleakack{i}"), CALLER)
    wire.deliver(from_caller("BYE", a_inv, ok, 2, f"z9hG4bKleakbye{i}"), CALLER)
    bye = wire.take_one(CALLEE, "BYE")
    assert isinstance(bye, Request)
    wire.deliver(answer(bye, 200, "OK"), CALLEE)
    wire.take(CALLER)
    wire.take(CALLEE)


def _run(core: EdgeCore, start: int, count: int) -> None:
    wire = Wire(core)
    for i in range(start, start + count):
        _call(wire, i, busy=i % 3 == 0)
    wire.advance(100)  # every transaction timer (<= 64*T1) has fired


def test_calls_leave_nothing_behind() -> None:
    core = make_core()
    _run(core, 0, 50)  # warm up caches and interned strings
    gc.collect()
    before = len(gc.get_objects())
    _run(core, 50, 300)
    gc.collect()
    after = len(gc.get_objects())
    assert len(core.tx) == 0 and not core.calls and not core.by_call_id
    assert core.get_timer() is None
    assert after - before < 50, f"{after - before} objects retained after 300 calls"
