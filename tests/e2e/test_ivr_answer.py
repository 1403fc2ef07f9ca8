"""An IVR number end to end on loopback: a caller dials ``1200`` (``routing.ivr_numbers``) and the
edge answers it at once, ringing no one, with the AI's stream in ``ivr`` mode. The AI side is a small
WebSocket peer speaking the contract (not the thing under test): it checks the start message, waits
for the caller's digits (one SIP INFO, one RFC 4733 telephone-event), then plays a tone and hangs up.
The edge node runs in this process so the test can read its event bus; the caller is a real SIP/RTP
endpoint on real sockets.
"""

from __future__ import annotations

import asyncio
import json
import struct
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import pytest
from aiohttp import web

from pbx_edge.ai_link.protocol import Leg, encode_frame
from pbx_edge.media.codecs import get_codec
from tests.e2e.ai_peer import AiPeer
from tests.e2e.edge_node import edge_config, running_edge
from tests.e2e.harness import E2E, LOOPBACK
from tests.e2e.rtp_peer import Dialog, Phone, dominant_frequency, tone_rtp

pytestmark = pytest.mark.timeout(60)

IVR_NUMBER = "1200"
MENU_TONE_HZ = 800.0
TE_PT = 101  # telephone-event payload type the caller offers


class FakeIvr(AiPeer):
    """The AI side: once it has two DTMF controls it plays half a second of an 800 Hz tone to the
    caller, then hangs up."""

    def digits(self) -> list[str]:
        return [c["digit"] for c in self.controls if c["type"] == "dtmf"]

    def ready(self) -> bool:
        return len(self.digits()) == 2

    async def answer(self, ws: web.WebSocketResponse) -> None:
        await ws.send_str(json.dumps({"type": "play", "leg": "caller", "text": "Your balance is 10."}))
        t = np.arange(8000) / 16000
        tone = (np.sin(2 * np.pi * MENU_TONE_HZ * t) * 10000).astype("<i2").tobytes()
        await ws.send_bytes(encode_frame(Leg.CALLER, 0, 0, tone))
        await asyncio.sleep(0.8)  # the half second plays out at 20 ms a packet
        await ws.send_str(json.dumps({"type": "hangup", "reason": "done"}))


@pytest.fixture
async def ivr() -> AsyncIterator[FakeIvr]:
    async with FakeIvr() as peer:
        yield peer


def _config(e2e: E2E, sip_port: int, ai_port: int | None) -> dict[str, Any]:
    routing = {"ivr_numbers": [IVR_NUMBER]}
    return edge_config(e2e, sip_port, routing=routing, media=(24800, 25400), ai_port=ai_port)


def _info_dtmf(dialog: Dialog, cseq: int, digit: str) -> bytes:
    body = f"Signal={digit}\r\nDuration=160\r\n".encode()
    request = dialog.request("INFO", cseq, body).replace(
        b"Content-Type: application/sdp", b"Content-Type: application/dtmf-relay"
    )
    assert b"application/dtmf-relay" in request
    return request


def _telephone_event(event: int, seq: int, ts: int, ssrc: int) -> list[bytes]:
    """One RFC 4733 digit as a phone sends it: marker first, growing duration, three end packets."""
    packets = []
    for i in range(8):
        end = i >= 5
        duration = 160 * min(i + 1, 5)
        header = struct.pack("!BBHII", 0x80, TE_PT | (0x80 if i == 0 else 0), (seq + i) & 0xFFFF, ts, ssrc)
        payload = struct.pack("!BBH", event, (0x80 if end else 0) | 10, duration)
        packets.append(header + payload)
    return packets


async def test_an_ivr_number_is_answered_by_the_ai_and_gets_the_digits(e2e: E2E, ivr: FakeIvr) -> None:
    caller = await Phone(payload_types={0: "PCMU/8000", TE_PT: "telephone-event/8000"}).start()
    port = e2e.ports.port()
    try:
        async with running_edge(_config(e2e, port, ivr.port)) as (node, events):
            dialog = await caller.call((LOOPBACK, port), user=IVR_NUMBER)
            assert dialog.final == 200
            tone = tone_rtp("PCMU", 0, seconds=4.0, freq=440.0)
            for i, packet in enumerate(tone):
                if caller.byed.is_set():
                    break
                caller.send_rtp(packet)
                if i == 20:
                    caller._send(_info_dtmf(dialog, 2, "5"), (LOOPBACK, port))
                if i == 40:
                    seq, ts, ssrc = struct.unpack("!HII", packet[2:12])
                    for te in _telephone_event(7, seq + 1, ts + 160, ssrc):
                        caller.send_rtp(te)
                await asyncio.sleep(0.02)
            await asyncio.wait_for(caller.byed.wait(), 5)  # the AI's hangup became a BYE
            await asyncio.sleep(0.3)
            assert node.core.calls == {}
    finally:
        caller.close()

    (start,) = ivr.starts
    assert (start["mode"], start["trigger"]) == ("ivr", "ivr")
    assert start["callee"] == IVR_NUMBER and start["a_call_id"] == dialog.call_id
    assert ivr.digits() == ["5", "7"]
    assert all(c["leg"] == "caller" for c in ivr.controls if c["type"] == "dtmf")
    # the caller heard the AI's menu tone
    decoder = get_codec("PCMU").new_decoder()
    heard = np.concatenate([decoder.decode(r.data[12:]) for r in caller.rtp if r.data[1] & 0x7F == 0])
    assert len(heard) >= 8 * 400  # at least 0.4 s
    assert abs(dominant_frequency(heard[800:4000], 8000) - MENU_TONE_HZ) < 5.0
    mine = [e for e in events if e.a_call_id == dialog.call_id]
    names = [e.name for e in mine]
    assert "call.ringing" not in names
    assert names.index("call.answered") < names.index("call.ai_answered") < names.index("call.ended")
    (started,) = [e for e in mine if e.name == "call.started"]
    assert started.data["route"] == "ivr"
    (answered,) = [e for e in mine if e.name == "call.ai_answered"]
    assert answered.data["trigger"] == "ivr" and answered.data["answered_by"] == "ai"
    assert [(e.data["digit"], e.data["method"]) for e in mine if e.name == "dtmf"] == [
        ("5", "info"),
        ("7", "rfc4733"),
    ]
    (ended,) = [e for e in mine if e.name == "call.ended"]
    assert ended.data["reason"] == "ai_hangup" and ended.data["disposition"] == "answered"
    assert ended.data["hangup_side"] == "edge" and ended.b_call_id is None


async def test_without_the_ai_an_ivr_number_is_routed_as_before(e2e: E2E) -> None:
    caller = await Phone().start()
    port = e2e.ports.port()
    try:
        async with running_edge(_config(e2e, port, None)):
            dialog = await caller.call((LOOPBACK, port), user=IVR_NUMBER)
            assert dialog.final == 404  # no route, no extension: what the number got before
    finally:
        caller.close()
