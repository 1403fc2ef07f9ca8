"""The AI attendant end to end on loopback: a caller calls an extension that rings and never
answers; after the (short) no-answer timer the edge answers the caller itself and hands the call to
the AI layer in attendant mode. The AI side here is a peer speaking the contract (an aiohttp
WebSocket server), not the thing under test: it checks the start message, hears the caller, plays a
tone to it, publishes an agent event and hangs up. The edge node runs in this process so the test
can see its event bus; the phones are real SIP/RTP endpoints on real sockets.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from aiohttp import web

from pbx_edge.ai_link.protocol import Leg, encode_frame
from pbx_edge.media.codecs import get_codec
from pbx_edge.sip.message import Response, parse_message
from tests.e2e.ai_peer import AiPeer
from tests.e2e.edge_node import edge_config, running_edge
from tests.e2e.harness import E2E, LOOPBACK
from tests.e2e.rtp_peer import Phone, dominant_frequency, tone_rtp

pytestmark = pytest.mark.timeout(60)

AI_TONE_HZ = 1000.0
CALLER_TONE_HZ = 440.0


@dataclass
class RingingPhone(Phone):
    """A callee that rings (180) and never answers; a CANCEL gets 200, then 487 for the INVITE."""

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        message = parse_message(data)
        if isinstance(message, Response):
            return
        self.requests.append(message)
        if message.method == "INVITE":
            self._reply(message, addr, 180, "Ringing")
        elif message.method == "CANCEL":
            self._reply(message, addr, 200, "OK")
            invite = next(r for r in self.requests if r.method == "INVITE" and r.call_id == message.call_id)
            self._reply(invite, addr, 487, "Request Terminated")
        elif message.method != "ACK":
            self._reply(message, addr, 200, "OK")


class FakeAttendant(AiPeer):
    """The AI side of the contract: once it has heard 0.5 s of the caller it plays a second of a
    1 kHz tone to the caller, publishes an agent event, and hangs up when the tone is done."""

    def __init__(self) -> None:
        super().__init__()
        self.hung_up = asyncio.Event()
        self.transfer_to: str | None = None  # transfer the caller there instead of speaking

    def ready(self) -> bool:
        return len([f for f in self.frames if f.leg is Leg.CALLER]) >= 25

    async def answer(self, ws: web.WebSocketResponse) -> None:
        if self.transfer_to is not None:
            await ws.send_str(json.dumps({"type": "transfer", "target": self.transfer_to}))
        else:
            await self._speak(ws)

    async def _speak(self, ws: web.WebSocketResponse) -> None:
        await ws.send_str(json.dumps({"type": "play", "leg": "caller", "text": "Hello, Bob is away."}))
        t = np.arange(16000) / 16000
        tone = (np.sin(2 * np.pi * AI_TONE_HZ * t) * 10000).astype("<i2").tobytes()
        await ws.send_bytes(encode_frame(Leg.CALLER, 0, 0, tone))
        summary = {"type": "agent_event", "name": "attendant.summary", "data": {"reason": "callback"}}
        await ws.send_str(json.dumps(summary))
        forged = {"type": "agent_event", "name": "call.ended", "data": {"disposition": "forged"}}
        await ws.send_str(json.dumps(forged))  # not the AI's to publish: refused
        await asyncio.sleep(1.4)  # the second of audio plays out at 20 ms a packet
        await ws.send_str(json.dumps({"type": "hangup", "reason": "done"}))
        self.hung_up.set()


@pytest.fixture
async def attendant() -> AsyncIterator[FakeAttendant]:
    async with FakeAttendant() as peer:
        yield peer


def _config(e2e: E2E, sip_port: int, callee_port: int, ai_port: int) -> dict[str, Any]:
    routing = {
        "static_routes": [{"prefix": "", "target": f"sip:{LOOPBACK}:{callee_port}"}],
        "extensions": {"bob": {"no_answer_timeout": 0.5, "ai_answer": {"no_answer": "ai"}}},
    }
    return edge_config(e2e, sip_port, routing=routing, media=(24000, 24700), ai_port=ai_port)


async def test_an_unanswered_call_is_answered_by_the_ai_attendant(e2e: E2E, attendant: FakeAttendant) -> None:
    callee = await RingingPhone().start()
    caller = await Phone(payload_types={8: "PCMA/8000", 0: "PCMU/8000"}).start()
    port = e2e.ports.port()
    try:
        async with running_edge(_config(e2e, port, callee.sip_port, attendant.port)) as (node, events):
            dialog = await caller.call((LOOPBACK, port), user="bob")
            assert dialog.final == 200
            host, media_port = caller.remote_media or ("", 0)
            assert host == LOOPBACK and 24000 <= media_port <= 24700  # the relay's own address and port
            for packet in tone_rtp("PCMA", 8, seconds=1.0, freq=CALLER_TONE_HZ):
                caller.send_rtp(packet)
                await asyncio.sleep(0.02)
            await asyncio.wait_for(caller.byed.wait(), 10)  # the AI's hangup became a BYE to the caller
            await asyncio.sleep(0.3)
            assert node.core.calls == {}
    finally:
        caller.close()
        callee.close()

    # the callee rang, then was cancelled when the attendant answered
    assert [r.method for r in callee.requests] == ["INVITE", "CANCEL", "ACK"]
    # the AI got an attendant stream for this call, told why
    (start,) = attendant.starts
    assert (start["mode"], start["trigger"]) == ("attendant", "no_answer")
    assert start["a_call_id"] == dialog.call_id and start["callee"] == "bob"
    assert start["codec"] == "PCMA/8000"
    # ... and heard the caller as 20 ms frames of its tone
    heard = [f for f in attendant.frames if f.leg is Leg.CALLER]
    assert len(heard) >= 40 and all(len(f.pcm) == 640 for f in heard)
    pcm = np.frombuffer(b"".join(f.pcm for f in heard[5:40]), dtype="<i2")
    assert abs(dominant_frequency(pcm, 16000) - CALLER_TONE_HZ) < 3.0
    assert any(c["type"] == "end" for c in attendant.controls)
    # the caller heard the AI's tone, in the codec it offered first
    assert len(caller.rtp) >= 45
    assert {r.data[1] & 0x7F for r in caller.rtp} == {8}
    decoder = get_codec("PCMA").new_decoder()
    played = np.concatenate([decoder.decode(r.data[12:]) for r in caller.rtp])
    assert float(np.sqrt(np.mean(played[800:].astype(np.float64) ** 2))) > 3000  # not silence
    assert abs(dominant_frequency(played[800:], 8000) - AI_TONE_HZ) < 3.0
    # events: answered by the AI, the agent's event, ended by the AI's hangup
    mine = [e for e in events if e.a_call_id == dialog.call_id]
    names = [e.name for e in mine]
    assert names.index("call.answered") < names.index("call.ai_answered") < names.index("call.ended")
    (ai_answered,) = [e for e in mine if e.name == "call.ai_answered"]
    assert ai_answered.data == {"trigger": "no_answer", "answered_by": "ai", "codec": "PCMA/8000"}
    (summary,) = [e for e in mine if e.name == "attendant.summary"]
    assert summary.data == {"reason": "callback"} and summary.call_id == start["call_id"]
    (ended,) = [e for e in mine if e.name == "call.ended"]
    assert ended.data["disposition"] == "answered" and ended.data["sip_code"] == 200
    assert ended.data["hangup_side"] == "edge" and ended.b_call_id is None


async def test_an_unreachable_ai_never_leaves_the_caller_in_silence(e2e: E2E) -> None:
    """The AI layer is down: the first attended caller is hung up once its stream could not connect
    (not left with dead air), and later callers get the configured reject instead of an answer."""
    callee = await RingingPhone().start()
    caller = await Phone().start()
    port, dead_ai = e2e.ports.port(), e2e.ports.port()  # nothing listens on dead_ai
    settings = _config(e2e, port, callee.sip_port, dead_ai)
    settings["ai"].update(connect_timeout=0.5, reconnect_initial=0.1, reconnect_max=30)
    try:
        async with running_edge(settings) as (node, events):
            first = await caller.call((LOOPBACK, port), user="bob")
            assert first.final == 200
            loop = asyncio.get_running_loop()
            answered_at = loop.time()
            await asyncio.wait_for(caller.byed.wait(), 5)
            assert loop.time() - answered_at < 3.0  # connect_timeout + 1 s, not the media timeout
            second = await caller.call((LOOPBACK, port), user="bob")
            assert second.final == 480
            await asyncio.sleep(0.2)
            assert node.core.calls == {}
    finally:
        caller.close()
        callee.close()
    ended = {e.a_call_id: e.data for e in events if e.name == "call.ended"}
    assert ended[first.call_id]["disposition"] == "answered"
    assert ended[second.call_id]["disposition"] == "no_answer" and ended[second.call_id]["sip_code"] == 480


async def test_the_ai_transfers_the_caller_to_an_extension(e2e: E2E, attendant: FakeAttendant) -> None:
    """The AI's transfer action: the edge calls the target and, once it answers, the caller and
    the target hear each other through the relay; the AI is told and keeps listening."""
    attendant.transfer_to = "carol"
    callee = await RingingPhone().start()
    carol = await Phone(payload_types={8: "PCMA/8000"}).start()
    caller = await Phone(payload_types={8: "PCMA/8000", 0: "PCMU/8000"}).start()
    port = e2e.ports.port()
    settings = _config(e2e, port, callee.sip_port, attendant.port)
    routes = settings["routing"]["static_routes"]
    routes.insert(0, {"prefix": "carol", "target": f"sip:{LOOPBACK}:{carol.sip_port}"})
    try:
        async with running_edge(settings) as (_, events):
            dialog = await caller.call((LOOPBACK, port), user="bob")
            assert dialog.final == 200
            caller_tone = tone_rtp("PCMA", 8, seconds=3.0, freq=CALLER_TONE_HZ)
            carol_tone = tone_rtp("PCMA", 8, seconds=1.5, freq=AI_TONE_HZ, ssrc=0xCA01)
            for packet in caller_tone:
                caller.send_rtp(packet)
                if carol.answered.is_set() and carol_tone:  # carol talks once she has answered
                    carol.send_rtp(carol_tone.pop(0))
                await asyncio.sleep(0.02)
            assert carol.answered.is_set()
            assert await dialog.bye() == 200
            await asyncio.wait_for(carol.byed.wait(), 5)
            await asyncio.sleep(0.3)
    finally:
        caller.close()
        carol.close()
        callee.close()
    invite = next(r for r in carol.requests if r.method == "INVITE")
    assert "RTP/AVP 8" in invite.body.decode() and invite.from_addr.uri.user == "phone"
    # carol heard the caller through the relay, the caller heard carol
    decoder = get_codec("PCMA").new_decoder()
    at_carol = np.concatenate([decoder.decode(r.data[12:]) for r in carol.rtp])
    assert len(carol.rtp) >= 30 and abs(dominant_frequency(at_carol[800:], 8000) - CALLER_TONE_HZ) < 3.0
    from_carol = [r for r in caller.rtp if r.data[8:12] == (0xCA01).to_bytes(4, "big")]
    assert len(from_carol) >= 30
    heard = np.concatenate([decoder.decode(r.data[12:]) for r in from_carol])
    assert abs(dominant_frequency(heard[800:], 8000) - AI_TONE_HZ) < 3.0
    # the AI was told, and heard both legs after the transfer
    assert {"type": "transfer", "leg": "caller", "target": "carol"} in attendant.controls
    assert any(f.leg is Leg.CALLEE for f in attendant.frames)
    names = [e.name for e in events if e.a_call_id == dialog.call_id]
    assert names.index("call.ai_answered") < names.index("call.transferred") < names.index("call.ended")
    (ended,) = [e for e in events if e.name == "call.ended" and e.a_call_id == dialog.call_id]
    assert ended.data["reason"] == "caller_bye" and ended.b_call_id == invite.call_id
