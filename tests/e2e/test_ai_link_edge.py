"""The edge <-> AI contract end to end on loopback: an edge node (in this process, so the test can see
its event bus) streams a real call's decoded audio to a WebSocket peer playing the AI layer, turns
its transcript into a ``transcript.final`` event and plays the PCM it sends back into the callee's
leg. The AI side here is a peer (an aiohttp server speaking the contract), not the thing under test.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import pytest
from aiohttp import WSMsgType, web

from pbx_edge.ai_link.protocol import Leg, decode_batch, encode_frame
from pbx_edge.edge import EdgeNode
from pbx_edge.media.codecs import get_codec
from pbx_edge.ops.config import parse_config
from pbx_edge.ops.models import Event
from tests.e2e.harness import E2E, LOOPBACK
from tests.e2e.rtp_peer import Phone, dominant_frequency, tone_rtp

pytestmark = pytest.mark.timeout(60)


class FakeAiPeer:
    """Speaks the AI side of the contract: records what the edge sends, answers once it heard 0.5 s."""

    def __init__(self) -> None:
        self.starts: list[dict[str, Any]] = []
        self.controls: list[dict[str, Any]] = []
        self.frames: list[Any] = []
        self.paths: list[str] = []
        self.runner: web.AppRunner | None = None
        self.port = 0

    async def stream(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        self.paths.append(request.path)
        answered = False
        async for msg in ws:
            if msg.type == WSMsgType.TEXT:
                data = json.loads(msg.data)
                (self.starts if data["type"] == "start" else self.controls).append(data)
            elif msg.type == WSMsgType.BINARY:
                self.frames.extend(decode_batch(msg.data))
                caller = [f for f in self.frames if f.leg is Leg.CALLER]
                if not answered and len(caller) >= 25:
                    answered = True
                    said = {"leg": "caller", "start": 0.0, "end": 0.5, "language": "en", "id": "u1"}
                    for message in (
                        {"type": "transcript", "final": False, "text": "hello", **said},
                        {"type": "transcript", "final": True, "text": "hello there", "confidence": 0.9,
                         **said},
                        {"type": "transcript_gap", "leg": "callee", "start": 0.1, "end": 0.3,
                         "reason": "stt_failed"},
                    ):  # fmt: skip
                        await ws.send_str(json.dumps(message))
                    t = np.arange(16000) / 16000
                    tone = (np.sin(2 * np.pi * 440 * t) * 10000).astype("<i2").tobytes()
                    await ws.send_bytes(encode_frame(Leg.CALLEE, 0, 0, tone))
        return ws

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/v1/calls/{call_id}/stream", self.stream)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, LOOPBACK, 0)
        await site.start()
        self.port = self.runner.addresses[0][1]


@pytest.fixture
async def ai_peer() -> AsyncIterator[FakeAiPeer]:
    peer = FakeAiPeer()
    await peer.start()
    yield peer
    assert peer.runner is not None
    await peer.runner.cleanup()


async def test_a_call_is_streamed_transcribed_and_spoken_to(e2e: E2E, ai_peer: FakeAiPeer) -> None:
    callee, caller = await Phone().start(), await Phone().start()
    port = e2e.ports.port()
    config = parse_config(
        {
            "sip": {"listen": [{"transport": "udp", "host": LOOPBACK, "port": port}]},
            "routing": {"static_routes": [{"prefix": "", "target": f"sip:{LOOPBACK}:{callee.sip_port}"}]},
            "media": {"port_start": 22400, "port_end": 23100},
            "admin": {"enabled": False},
            "metrics": {"enabled": False},
            "cdr": {"url": f"sqlite:///{e2e.workdir}/cdr.sqlite3"},
            "webhooks": {"outbox_url": f"sqlite:///{e2e.workdir}/outbox.sqlite3"},
            "ai": {
                "enabled": True,
                "url": f"ws://{LOOPBACK}:{ai_peer.port}",
                "batch_frames": 5,
                "transcripts_dir": str(e2e.workdir / "transcripts"),
            },
        },
        environ={},
    )
    node = EdgeNode(config)
    events: list[Event] = []
    node.ops.bus.subscribe(events.append)
    await node.start()
    try:
        dialog = await caller.call((LOOPBACK, port))
        assert dialog.final == 200
        for packet in tone_rtp("PCMU", 0, seconds=1.0):
            caller.send_rtp(packet)
            await asyncio.sleep(0.02)
        await asyncio.sleep(1.3)  # the injected second of audio plays out
        live = node.ops.ai.transcript(ai_peer.starts[0]["call_id"])
        assert live is not None and live.live
        assert [(i.kind, i.text, i.reason) for i in live.items] == [
            ("segment", "hello there", None),
            ("gap", "", "stt_failed"),
        ]
        assert live.partials == []  # replaced by its final
        metrics = node.ops.metrics_snapshot()
        assert metrics.ai_transcripts == {"partial": 1, "final": 1, "gap": 1}
        assert (metrics.ai_streams_active, metrics.ai_streams_started) == (1, 1)
        assert metrics.ai_frames_sent >= 45
        assert await dialog.bye() == 200
        await asyncio.sleep(0.3)
    finally:
        await node.stop()
        caller.close()
        callee.close()
    (start,) = ai_peer.starts
    assert start["a_call_id"] == dialog.call_id and start["codec"] == "PCMU/8000"
    assert ai_peer.paths == [f"/v1/calls/{start['call_id']}/stream"]
    caller_frames = [f for f in ai_peer.frames if f.leg is Leg.CALLER]
    assert len(caller_frames) >= 45 and all(len(f.pcm) == 640 for f in caller_frames)
    assert [f.seq for f in caller_frames] == sorted(f.seq for f in caller_frames)
    heard = np.frombuffer(b"".join(f.pcm for f in caller_frames[5:45]), dtype="<i2")
    assert abs(dominant_frequency(heard, 16000) - 440.0) < 2.0
    assert any(c["type"] == "end" for c in ai_peer.controls)
    names = [e.name for e in events if e.name.startswith("transcript.")]
    assert names == ["transcript.partial", "transcript.final", "transcript.gap"]
    (final,) = [e for e in events if e.name == "transcript.final"]
    assert final.a_call_id == dialog.call_id and final.data["text"] == "hello there"
    assert final.data["leg"] == "caller"
    (stored,) = (e2e.workdir / "transcripts").glob("*/*.jsonl")  # the call store, by day
    record, gap = [json.loads(line) for line in stored.read_text().splitlines()]
    assert (record["a_call_id"], record["text"], record["leg"]) == (dialog.call_id, "hello there", "caller")
    assert (gap["kind"], gap["leg"], gap["reason"], gap["start"]) == ("gap", "callee", "stt_failed", 0.1)
    after = node.ops.ai.transcript(start["call_id"])  # the call has ended: read back from the store
    assert after is not None and not after.live
    assert [(i.kind, i.leg) for i in after.items] == [("segment", "caller"), ("gap", "callee")]
    injected = [r.data for r in callee.rtp if r.data[8:12] != callee.rtp[0].data[8:12]]
    assert len(injected) >= 45  # the callee heard the AI's second of audio (its own SSRC)
    decoder = get_codec("PCMU").new_decoder()
    pcm = np.concatenate([decoder.decode(p[12:]) for p in injected])
    assert abs(dominant_frequency(pcm[800:], 8000) - 440.0) < 2.0
