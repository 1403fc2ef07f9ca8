"""The core's hooks become operations events: registration.added/removed/expired, dtmf, call.*."""

from __future__ import annotations

from typing import Any

from pbx_edge.media.interface import Side
from pbx_edge.ops.call_events import CallEventAdapter
from tests.b2bua.harness import CALLER, Wire, make_core
from tests.b2bua.scenarios import Scenario
from tests.b2bua.test_registrar import register
from tests.ops.test_cdr_completeness import Sink


def _rig() -> tuple[Wire, Sink, CallEventAdapter]:
    core = make_core(sip={"listen": [{"transport": "udp", "port": 5060}], "domain": "pbx.local"})
    wire = Wire(core)
    sink = Sink()
    adapter = CallEventAdapter("edge-t", sink, sink, lambda: wire.now, wall=lambda: 1.7e9 + wire.now)
    core.listeners.append(adapter.on_call)
    core.notice_listeners.append(adapter.on_notice)
    return wire, sink, adapter


def _register(branch: str, contact: str, **kw: Any) -> bytes:
    return bytes(register(contact, **kw)).replace(b"z9hG4bK-1", branch.encode())


def test_registration_events_added_removed_and_expired() -> None:
    wire, sink, _ = _rig()
    wire.deliver(_register("z9hG4bKr1", "<sip:100@192.0.2.10:5060>", expires="120"), CALLER)
    wire.deliver(_register("z9hG4bKr2", "<sip:100@192.0.2.11:5060>", expires="60", call_id="reg-2"), CALLER)
    wire.deliver(_register("z9hG4bKr3", "<sip:100@192.0.2.10:5060>", expires="0", cseq=2), CALLER)
    wire.advance(61)
    names = [(e.name, e.data["contact"]) for e in sink.events]
    assert names == [
        ("registration.added", "sip:100@192.0.2.10:5060"),
        ("registration.added", "sip:100@192.0.2.11:5060"),
        ("registration.removed", "sip:100@192.0.2.10:5060"),
        ("registration.expired", "sip:100@192.0.2.11:5060"),
    ]
    added = sink.events[0]
    assert added.data["aor"] == "sip:100@pbx.local" and added.data["expires"] == 120
    assert added.time == 1.7e9 + 1000.0  # the core's monotonic time, converted once


def test_call_events_carry_both_call_ids_and_dtmf_its_leg() -> None:
    wire, sink, adapter = _rig()
    scenario = Scenario(wire.core, wire)
    a_inv, b_inv, _ = scenario.answered(1)
    call = wire.core.call_for(a_inv.call_id)
    assert call is not None
    adapter.on_dtmf(call, Side.CALLER, "7", "rfc4733")
    started, answered, dtmf = sink.events
    assert [e.name for e in sink.events] == ["call.started", "call.answered", "dtmf"]
    assert (started.a_call_id, started.b_call_id) == (a_inv.call_id, b_inv.call_id)
    assert dtmf.data == {"leg": "caller", "digit": "7", "method": "rfc4733"}
    assert answered.call_id == call.id
