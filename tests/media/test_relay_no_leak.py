"""10,000 calls through the B2BUA core with the real relay (real sockets), ended every possible way:
afterwards no port is allocated, no stream is on the engine and no descriptor is left open."""

from __future__ import annotations

import os
import random
import socket
from collections.abc import Callable

import pytest

from pbx_edge.media.py_engine import PythonRelayEngine
from pbx_edge.media.relay import RelayMedia
from pbx_edge.ops.config import MediaConfig
from tests.b2bua.harness import Wire, make_core
from tests.b2bua.scenarios import Scenario

pytestmark = pytest.mark.timeout(300)

CALLS = 10_000


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
        scenario = Scenario(core, wire)
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
