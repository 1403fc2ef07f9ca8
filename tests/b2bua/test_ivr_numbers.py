"""IVR numbers (``routing.ivr_numbers``) through the sans-I/O core: the AI answers them at once in IVR
mode, no one rings; without the AI they are routed like any other number."""

from __future__ import annotations

from typing import Any

import pytest

from pbx_edge.b2bua.call import CallState, EndReason
from pbx_edge.b2bua.core import EdgeCore
from pbx_edge.media.interface import Side
from pbx_edge.ops.config import ConfigError, parse_config

from .harness import CALLEE, CALLER, Wire, ack_for, from_caller, invite, make_core
from .test_attendant import STATIC, OfferKeepingMedia, SdpAttendant, _assert_answered_by_ai, _ok_to_caller

IVR = "1200"


def _core(
    up: bool = True, *, routes: list[dict[str, Any]] | None = None, **routing: Any
) -> tuple[EdgeCore, Wire, SdpAttendant, list[str]]:
    core = make_core(
        OfferKeepingMedia(),
        calls={"no_answer_timeout": 10},
        routing={"static_routes": [] if routes is None else routes, "ivr_numbers": [IVR], **routing},
    )
    backend = SdpAttendant(up)
    core.attendant = backend
    events: list[str] = []
    core.listeners.append(lambda name, call: events.append(name))
    return core, Wire(core), backend, events


def test_an_ivr_number_is_answered_at_once_by_the_ai() -> None:
    core, wire, _, events = _core()
    wire.deliver(invite(user=IVR), CALLER)
    call = _assert_answered_by_ai(core, _ok_to_caller(wire), "ivr")
    assert call.route_source == "ivr" and call.callee == IVR
    assert wire.take(CALLEE) == []
    assert events == ["call.started", "call.answered"]


def test_an_ivr_number_with_a_route_still_rings_no_one() -> None:
    core, wire, _, _ = _core(routes=[STATIC])
    wire.deliver(invite(user=IVR), CALLER)
    call = _assert_answered_by_ai(core, _ok_to_caller(wire), "ivr")
    wire.advance(15)  # past the no-answer timeout: nothing happens to an answered call
    assert wire.take(CALLEE) == []
    assert call.state is CallState.CONFIRMED


def test_ivr_comes_before_the_extension_triggers() -> None:
    core, wire, _, _ = _core(extensions={IVR: {"ai_answer": {"away": "ai"}}})
    core.away.set_away(IVR, True)
    wire.deliver(invite(user=IVR), CALLER)
    _assert_answered_by_ai(core, _ok_to_caller(wire), "ivr")


def test_other_numbers_are_not_ivr() -> None:
    core, wire, backend, _ = _core(routes=[STATIC])
    wire.deliver(invite(user="1201"), CALLER)
    assert wire.take_one(CALLEE, "INVITE")
    assert backend.answered == [] and core.attended == {}


def test_without_the_ai_an_ivr_number_is_routed_as_usual() -> None:
    core, wire, backend, events = _core(up=False)
    wire.deliver(invite(user=IVR), CALLER)
    assert wire.take_one(CALLER, "404")  # not a route, not an extension: what it got before
    assert core.calls == {} and events == []
    core, wire, backend, _ = _core(up=False, routes=[STATIC])
    wire.deliver(invite(user=IVR), CALLER)
    assert wire.take_one(CALLEE, "INVITE")
    (call,) = core.calls.values()
    assert call.route_source != "ivr" and backend.answered == []


def test_an_offer_the_ai_cannot_answer_falls_back_to_routing() -> None:
    core, wire, _, events = _core()
    wire.deliver(invite(user=IVR, body=b""), CALLER)  # no SDP offer: the AI cannot answer
    assert wire.take_one(CALLER, "404")
    assert core.calls == {} and events == ["call.started", "call.ended"]
    core, wire, _, _ = _core(extensions={IVR: {}})  # a configured extension, not registered
    wire.deliver(invite(user=IVR, body=b""), CALLER)
    assert wire.take_one(CALLER, "480")
    core, wire, _, _ = _core(routes=[STATIC])
    wire.deliver(invite(user=IVR, body=b""), CALLER)
    assert wire.take_one(CALLEE, "INVITE")
    (call,) = core.calls.values()
    assert call.route_source != "ivr" and call.state is CallState.TRYING


def test_dtmf_of_an_ivr_call_is_reported_and_the_ai_hangs_up() -> None:
    core, wire, _, _ = _core()
    digits: list[tuple[str, Side, str]] = []
    core.dtmf_listeners.append(lambda call_id, side, digit: digits.append((call_id, side, digit)))
    a_inv = invite(user=IVR)
    wire.deliver(a_inv, CALLER)
    ok = _ok_to_caller(wire)
    wire.deliver(ack_for(a_inv, ok, CALLER, "z9hG4bKack9"), CALLER)
    (call,) = core.calls.values()
    for cseq, digit in ((2, "1"), (3, "#")):
        info = from_caller(
            "INFO", a_inv, ok, cseq, f"z9hG4bKinfo{cseq}", extra=[("Content-Type", "application/dtmf-relay")]
        )
        info.body = f"Signal={digit}\r\nDuration=160\r\n".encode()
        wire.deliver(info, CALLER)
        assert wire.take_one(CALLER, "200")
    assert digits == [(call.id, Side.CALLER, "1"), (call.id, Side.CALLER, "#")]
    assert core.hangup(call.id, EndReason.AI_HANGUP, wire.now)
    wire._collect()
    assert wire.take_one(CALLER, "BYE")
    assert call.state is CallState.TERMINATED and call.end_reason is EndReason.AI_HANGUP


@pytest.mark.parametrize("numbers", [[""], [" 1200"], ["1200 "]])
def test_bad_ivr_numbers_are_refused_by_the_config(numbers: list[str]) -> None:
    with pytest.raises(ConfigError, match="ivr_numbers"):
        parse_config({"routing": {"ivr_numbers": numbers}}, environ={})
