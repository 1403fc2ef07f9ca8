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

import numpy as np
import pytest
from aiohttp import web

from pbx_edge.media.codecs import get_codec
from tests.e2e.ai_peer import AiPeer
from tests.e2e.edge_node import edge_config, running_edge
from tests.e2e.harness import E2E, LOOPBACK
from tests.e2e.rtp_peer import Phone, dominant_frequency, tone_rtp

pytestmark = pytest.mark.timeout(60)

CALLER_HZ = 440.0
BOB_HZ = 1000.0


class TransferWhenAvailable(AiPeer):
    """The AI side: on ``callee_available`` it transfers the caller to that extension."""

    def ready(self) -> bool:
        return any(c["type"] == "callee_available" for c in self.controls)

    async def answer(self, ws: web.WebSocketResponse) -> None:
        news = next(c for c in self.controls if c["type"] == "callee_available")
        await ws.send_str(json.dumps({"type": "transfer", "target": news["extension"]}))


async def test_a_callee_who_registers_is_offered_the_caller(e2e: E2E) -> None:
    caller = await Phone(payload_types={8: "PCMA/8000"}).start()
    bob = await Phone(payload_types={8: "PCMA/8000"}).start()
    port = e2e.ports.port()
    routing = {"extensions": {"bob": {"ai_answer": {"unregistered": "ai"}}}}
    try:
        async with (
            TransferWhenAvailable() as ai,
            running_edge(edge_config(e2e, port, routing=routing, media=(24800, 25400), ai_port=ai.port)) as (
                _,
                events,
            ),
        ):
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
        caller.close()
        bob.close()

    (start,) = ai.starts
    assert (start["mode"], start["trigger"]) == ("attendant", "unregistered")
    available = [m for m in ai.controls if m["type"] == "callee_available"]
    assert available == [{"type": "callee_available", "extension": "bob", "reason": "registered"}]
    assert {"type": "transfer", "leg": "caller", "target": "bob"} in ai.controls
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


class TransferToCarol(AiPeer):
    """The AI side: once it hears the caller, it asks for a transfer to carol."""

    def ready(self) -> bool:
        return len(self.frames) >= 25

    async def answer(self, ws: web.WebSocketResponse) -> None:
        await ws.send_str(json.dumps({"type": "transfer", "target": "carol"}))
        await ws.send_str(json.dumps({"type": "transfer", "target": "carol"}))  # one at a time
        while not any(c["type"] == "transfer_failed" and c["target"] == "carol" for c in self.controls):
            await asyncio.sleep(0.05)
        await ws.send_str(json.dumps({"type": "transfer", "target": "nobody"}))  # no route at all


async def test_the_ai_hears_that_its_transfer_failed(e2e: E2E) -> None:
    """A second transfer while one is under way, a busy target (486), a target with no route: each
    time the AI gets ``transfer_failed`` and keeps the caller (the call is not hung up)."""
    caller = await Phone(payload_types={8: "PCMA/8000"}).start()
    carol = await Phone(payload_types={8: "PCMA/8000"}, answer_with=486).start()
    port = e2e.ports.port()
    routing = {
        "static_routes": [{"prefix": "carol", "target": f"sip:{LOOPBACK}:{carol.sip_port}"}],
        "extensions": {"bob": {"ai_answer": {"unregistered": "ai"}}},
    }
    try:
        async with (
            TransferToCarol() as ai,
            running_edge(edge_config(e2e, port, routing=routing, media=(24800, 25400), ai_port=ai.port)) as (
                node,
                events,
            ),
        ):
            dialog = await caller.call((LOOPBACK, port), user="bob")
            assert dialog.final == 200
            for packet in tone_rtp("PCMA", 8, seconds=2.0, freq=CALLER_HZ):
                caller.send_rtp(packet)
                await asyncio.sleep(0.02)
            assert len(node.core.calls) == 1  # still with the AI
            assert await dialog.bye() == 200
            await asyncio.sleep(0.3)
    finally:
        caller.close()
        carol.close()
    failed = [c for c in ai.controls if c["type"] == "transfer_failed"]
    assert failed == [
        {"type": "transfer_failed", "target": "carol", "reason": "a transfer is under way"},
        {"type": "transfer_failed", "target": "carol", "reason": "486 Busy Here"},
        {"type": "transfer_failed", "target": "nobody", "reason": "no route or no offer"},
    ]
    assert [r.method for r in carol.requests].count("INVITE") == 1
    (event,) = [e for e in events if e.name == "call.transfer_failed"]
    assert event.data == {"target": "carol", "reason": "486 Busy Here"}
