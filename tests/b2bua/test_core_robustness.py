"""Whole-core robustness: RFC 4475 torture messages and OPTIONS pings, with a fake clock."""

from __future__ import annotations

from pathlib import Path

import pytest

from pbx_edge.sip.endpoint import Endpoint
from pbx_edge.sip.message import Request, Response

from .harness import CALLER, Wire, make_core
from .steps import ping, register

FIXTURES = sorted((Path(__file__).resolve().parents[1] / "sip" / "fixtures" / "rfc4475").glob("*.sip"))


@pytest.mark.parametrize("path", FIXTURES, ids=[p.stem for p in FIXTURES])
def test_torture_message_never_crashes_nor_leaves_state(path: Path) -> None:
    core = make_core()
    wire = Wire(core)
    wire.deliver(path.read_bytes(), CALLER)
    replies = [m for msgs in wire.sent.values() for m in msgs if isinstance(m, Response)]
    finals = [r for r in replies if r.status >= 200]
    assert len(finals) <= 1, [r.status for r in finals]
    for reply in finals:
        assert reply.reason, "every error carries a reason phrase"
    wire.advance(200)  # longer than every transaction timer: nothing may be left behind
    assert len(core.tx) == 0
    assert not core.calls and not core.by_call_id


def test_options_ping_finds_dead_contacts() -> None:
    core = make_core(
        sip={
            "listen": [{"transport": "udp", "host": "127.0.0.1", "port": 5060}],
            "options_ping": {"enabled": True, "interval": 10, "failures_before_dead": 2},
        },
        routing={"static_routes": []},
    )
    wire = Wire(core)
    phone = Endpoint("UDP", "127.0.0.1", 5090)
    register(wire, phone, "carol", call_id="reg-ping", branch="z9hG4bKregping", expires=3600)
    wire.advance(10.5)
    ping = wire.take_one(phone, "OPTIONS")
    assert isinstance(ping, Request) and ping.request_uri.port == 5090
    assert core.location.lookup("sip:carol@pbx.local", wire.now)
    wire.advance(200)  # no answers: two failed pings later the binding is gone
    assert not core.location.lookup("sip:carol@pbx.local", wire.now)


def test_received_is_added_when_via_host_only_resembles_the_source() -> None:
    wire = Wire(make_core())
    wire.deliver(ping("via-1", "z9hG4bKvia1", via_host=Endpoint("UDP", "127.0.0.10", 5062)), CALLER)
    ok = wire.take_one(CALLER, "200")
    assert isinstance(ok, Response)
    assert ok.top_via.params.get("received") == "127.0.0.1"
