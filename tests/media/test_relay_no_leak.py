"""10,000 calls through the B2BUA core with the real relay (real sockets), ended every possible way:
afterwards no port is allocated, no stream is on the engine and no descriptor is left open."""

from __future__ import annotations

import os
import random
import socket
from collections.abc import Callable

import pytest

from pbx_edge.b2bua.call import EndReason
from pbx_edge.b2bua.core import EdgeCore
from pbx_edge.media.py_engine import PythonRelayEngine
from pbx_edge.media.relay import RelayMedia
from pbx_edge.ops.config import MediaConfig
from pbx_edge.sip.message import Request, Response
from tests.b2bua.harness import (
    CALLEE,
    CALLER,
    SDP,
    Wire,
    answer,
    from_callee,
    from_caller,
    in_dialog,
    make_core,
)
from tests.b2bua.harness import invite as make_invite

pytestmark = pytest.mark.timeout(300)

CALLS = 10_000
CALLEE_SDP = SDP.replace(b"6000", b"7000")


def _free_base(size: int) -> int:
    for base in range(6000, 12000 - size, size):  # below the e2e PortAllocator, above well-known ports
        socks: list[socket.socket] = []
        try:
            for port in range(base, base + size, 4):  # a sample is enough; the pool probes anyway
                sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                socks.append(sock)
                sock.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for sock in socks:
                sock.close()
    raise RuntimeError("no free range")


class Scenario:
    def __init__(self, core: EdgeCore, wire: Wire, relay: RelayMedia) -> None:
        self.core, self.wire, self.relay = core, wire, relay

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


def test_ten_thousand_calls_with_random_endings_leak_nothing() -> None:
    import asyncio

    async def run() -> None:
        base = _free_base(8 * 64)
        wire_holder: list[Wire] = []
        relay = RelayMedia(
            MediaConfig(port_start=base, port_end=base + 8 * 64 - 1),
            PythonRelayEngine(),
            clock=lambda: wire_holder[0].now if wire_holder else 0.0,
        )
        await relay.engine.start()
        core = make_core(media=relay)
        wire = Wire(core)
        wire_holder.append(wire)
        scenario = Scenario(core, wire, relay)
        endings: list[Callable[[int], None]] = [
            scenario.caller_bye,
            scenario.callee_bye,
            scenario.cancel,
            scenario.busy,
            scenario.bad_answer_sdp,
            scenario.handler_error,
            scenario.media_timeout,
            scenario.unanswered,
        ]
        rng = random.Random(4733)
        fds_before = len(os.listdir("/proc/self/fd"))
        used = {ending.__name__: 0 for ending in endings}
        peak = 0
        for i in range(CALLS):
            ending = rng.choice(endings)
            used[ending.__name__] += 1
            ending(i)
            peak = max(peak, relay.usage().allocated_calls)
            if i % 50 == 49:  # let timers run: no-answer (10 s), Timer B/F (32 s) and the rest
                wire.advance(40)
                wire.sent.clear()
        wire.advance(100)
        assert core.stats["handler_errors"] == used["handler_error"]
        assert not core.calls and not core.by_call_id
        assert relay.usage().allocated_calls == 0, relay.usage()
        assert relay.engine.stats().streams == 0 and not relay.sessions and not relay.streams
        assert len(os.listdir("/proc/self/fd")) <= fds_before
        assert min(used.values()) > CALLS // len(endings) // 2
        assert peak > 1
        await relay.stop()

    asyncio.run(run())
