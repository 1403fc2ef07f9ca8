"""The callee comes back during an attended call: the AI is told and transfers the caller to it.

A caller dials extension bob, which is not registered; the AI attendant (here a peer speaking the
contract, not the thing under test) answers. Then bob's phone registers: the edge sends the AI a
``callee_available`` control, the peer answers it with a ``transfer`` to bob, and the edge
INVITEs bob's new contact and re-bridges the caller to it: caller and bob hear each other through
the relay. The edge node and the phones are real, on loopback sockets.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import pytest
from aiohttp import WSMsgType, web

from pbx_edge.edge import EdgeNode
from pbx_edge.media.codecs import get_codec
from pbx_edge.ops.config import parse_config
from pbx_edge.ops.models import Event
from tests.e2e.harness import E2E, LOOPBACK
from tests.e2e.rtp_peer import Phone, dominant_frequency, tone_rtp

pytestmark = pytest.mark.timeout(60)

CALLER_HZ = 440.0
BOB_HZ = 1000.0


class TransferWhenAvailable:
    """The AI side: records what the edge sends; on ``callee_available`` it transfers to that extension."""

    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []
        self.runner: web.AppRunner | None = None
        self.port = 0

    async def stream(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for msg in ws:
            if msg.type != WSMsgType.TEXT:
                continue
            data = json.loads(msg.data)
            self.messages.append(data)
            if data["type"] == "callee_available":
                await ws.send_str(json.dumps({"type": "transfer", "target": data["extension"]}))
            elif data["type"] == "end":
                await ws.close()
        return ws

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/v1/calls/{call_id}/stream", self.stream)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        await web.TCPSite(self.runner, LOOPBACK, 0).start()
        self.port = self.runner.addresses[0][1]


@pytest.fixture
async def ai() -> AsyncIterator[TransferWhenAvailable]:
    peer = TransferWhenAvailable()
    await peer.start()
    yield peer
    assert peer.runner is not None
    await peer.runner.cleanup()


async def test_a_callee_who_registers_is_offered_the_caller(e2e: E2E, ai: TransferWhenAvailable) -> None:
    caller = await Phone(payload_types={8: "PCMA/8000"}).start()
    bob = await Phone(payload_types={8: "PCMA/8000"}).start()
    port = e2e.ports.port()
    settings = {
        "sip": {"listen": [{"transport": "udp", "host": LOOPBACK, "port": port}]},
        "routing": {"extensions": {"bob": {"ai_answer": {"unregistered": "ai"}}}},
        "media": {"port_start": 24800, "port_end": 25400},
        "admin": {"enabled": False},
        "metrics": {"enabled": False},
        "cdr": {"url": f"sqlite:///{e2e.workdir}/cdr.sqlite3"},
        "webhooks": {"outbox_url": f"sqlite:///{e2e.workdir}/outbox.sqlite3"},
        "ai": {"enabled": True, "url": f"ws://{LOOPBACK}:{ai.port}", "transcripts_dir": None},
    }
    node = EdgeNode(parse_config(settings, environ={}))
    events: list[Event] = []
    node.ops.bus.subscribe(events.append)
    await node.start()
    try:
        dialog = await caller.call((LOOPBACK, port), user="bob")
        assert dialog.final == 200  # answered by the AI: bob has no contact
        caller_tone = tone_rtp("PCMA", 8, seconds=4.0, freq=CALLER_HZ)
        bob_tone = tone_rtp("PCMA", 8, seconds=1.5, freq=BOB_HZ, ssrc=0xB0B)
        for i, packet in enumerate(caller_tone):
            caller.send_rtp(packet)
            if i == 25:  # half a second into the AI's call, bob's phone comes online
                assert await bob.register((LOOPBACK, port), "bob") == 200
            if bob.answered.is_set() and bob_tone:
                bob.send_rtp(bob_tone.pop(0))
            await asyncio.sleep(0.02)
        assert bob.answered.is_set()
        assert await dialog.bye() == 200
        await asyncio.wait_for(bob.byed.wait(), 5)
        await asyncio.sleep(0.3)
    finally:
        await node.stop()
        caller.close()
        bob.close()

    (start,) = [m for m in ai.messages if m["type"] == "start"]
    assert (start["mode"], start["trigger"]) == ("attendant", "unregistered")
    available = [m for m in ai.messages if m["type"] == "callee_available"]
    assert available == [{"type": "callee_available", "extension": "bob", "reason": "registered"}]
    assert {"type": "transfer", "leg": "caller", "target": "bob"} in ai.messages
    # the caller and bob heard each other through the relay
    decoder = get_codec("PCMA").new_decoder()
    at_bob = np.concatenate([decoder.decode(r.data[12:]) for r in bob.rtp])
    assert len(bob.rtp) >= 30 and abs(dominant_frequency(at_bob[800:], 8000) - CALLER_HZ) < 3.0
    from_bob = [r for r in caller.rtp if r.data[8:12] == (0xB0B).to_bytes(4, "big")]
    heard = np.concatenate([decoder.decode(r.data[12:]) for r in from_bob])
    assert len(from_bob) >= 30 and abs(dominant_frequency(heard[800:], 8000) - BOB_HZ) < 3.0
    names = [e.name for e in events if e.a_call_id == dialog.call_id]
    order = [names.index(n) for n in ("call.ai_answered", "call.callee_available", "call.transferred")]
    assert order == sorted(order)
    (news,) = [e for e in events if e.name == "call.callee_available"]
    assert news.data == {"extension": "bob"}
