"""Decoded audio of real calls: an edge node runs in this process (so the test can reach its tap and
injector), SIPp places the calls and plays pcaps, a Python phone answers and captures RTP.

- a 440 Hz tone sent as PCMU, PCMA and Opus comes out of the tap at 440 Hz (+-2 Hz), SNR bounded;
- the call is recorded to a stereo WAV with the tone on the caller's channel;
- RFC 4733 digits from SIPp's DTMF pcaps are reported exactly once each;
- audio played into a leg is heard by that party (captured, decoded, 440 Hz) and stops at once on
  barge-in.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import wave
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pbx_edge.b2bua.call import Call
from pbx_edge.edge import EdgeNode
from pbx_edge.media.codecs import get_codec, opus_available
from pbx_edge.media.engines import native_available
from pbx_edge.media.interface import Side
from pbx_edge.media.tap import TapFrame, TapQueue
from pbx_edge.ops.config import parse_config
from tests.e2e.harness import E2E, LOOPBACK, SIPP
from tests.e2e.rtp_peer import Phone, dominant_frequency, tone_rtp, tone_snr_db, write_rtp_pcap
from tests.e2e.test_media_relay import SIPP_PCAPS, pcap_scenario

pytestmark = [
    pytest.mark.skipif(SIPP is None, reason="sipp not installed"),
    pytest.mark.skipif(os.geteuid() != 0, reason="SIPp's play_pcap_audio needs a raw socket (root)"),
    pytest.mark.timeout(120),
]

ENGINES = [
    "python",
    pytest.param("native", marks=pytest.mark.skipif(not native_available(), reason="not built")),
]


class InProcessEdge:
    """An edge node in this process, routing every call to ``callee`` (a phone the test drives)."""

    def __init__(self, node: EdgeNode, port: int, callee: Phone) -> None:
        self.node = node
        self.callee = callee
        self.addr = (LOOPBACK, port)
        self.taps: dict[str, TapQueue] = {}
        self.digits: list[tuple[Side, str]] = []
        assert node.media is not None
        self.media = node.media
        self.media.dtmf_listeners.append(lambda call_id, leg, digit: self.digits.append((leg, digit)))

    def tap_every_call(self) -> None:
        def on_event(name: str, call: Call) -> None:
            if name == "call.started":
                self.taps[call.id] = self.media.sessions[call.id].subscribe_tap(capacity=10_000)

        self.node.core.listeners.append(on_event)


@pytest.fixture(params=ENGINES)
async def edge(request: pytest.FixtureRequest, e2e: E2E, tmp_path: Path) -> AsyncIterator[InProcessEdge]:
    engine: str = request.param
    port = e2e.ports.port()
    callee = await Phone().start()
    config: dict[str, Any] = {
        "sip": {"listen": [{"transport": "udp", "host": LOOPBACK, "port": port}]},
        "routing": {"static_routes": [{"prefix": "", "target": f"sip:{LOOPBACK}:{callee.sip_port}"}]},
        "media": {
            "port_start": 22400,
            "port_end": 23100,
            "engine": engine,
            "recording": {"enabled": True, "directory": str(tmp_path / "recordings")},
        },
    }
    node = EdgeNode(parse_config(config, environ={}))
    await node.start()
    try:
        yield InProcessEdge(node, port, callee)
    finally:
        await node.stop()
        callee.close()


def frames_of(queue: TapQueue, leg: Side) -> list[TapFrame]:
    frames = []
    while (frame := queue.get_nowait()) is not None:
        if frame.leg is leg:
            frames.append(frame)
    return frames


CODECS = [
    ("PCMU", 0, "PCMU/8000", 30.0),
    ("PCMA", 8, "PCMA/8000", 30.0),
    pytest.param(
        "opus", 111, "opus/48000/2", 25.0, marks=pytest.mark.skipif(not opus_available(), reason="no libopus")
    ),
]


@pytest.mark.parametrize(("codec", "pt", "rtpmap", "min_snr"), CODECS)
async def test_tone_from_sipp_comes_out_of_the_tap_at_440_hz(
    edge: InProcessEdge, e2e: E2E, codec: str, pt: int, rtpmap: str, min_snr: float
) -> None:
    callee = edge.callee
    callee.payload_types = {pt: rtpmap}
    edge.tap_every_call()
    pcap = write_rtp_pcap(e2e.workdir / f"tone-{codec}.pcap", tone_rtp(codec, pt, seconds=2.0))
    scenario = pcap_scenario(e2e.workdir, pcap, pt, rtpmap, pause_ms=2600)
    result = await asyncio.to_thread(e2e.run_uac, scenario, edge.addr, calls=1, timeout_s=30)
    assert result.ok(1), result.describe()
    assert len(callee.rtp) == 100  # and the callee got all of it, relayed
    ((call_id, queue),) = edge.taps.items()
    frames = frames_of(queue, Side.CALLER)
    assert 95 <= len(frames) <= 102
    assert [f.seq for f in frames] == list(range(frames[0].seq, frames[0].seq + len(frames)))
    pcm = np.frombuffer(b"".join(f.pcm for f in frames), dtype="<i2")[1600:]  # skip codec start-up
    assert abs(dominant_frequency(pcm, 16000) - 440.0) < 2.0
    snr = tone_snr_db(pcm, 16000, 440.0)
    assert snr > min_snr, f"{codec}: SNR {snr:.1f} dB"
    recording = edge.media.config.recording.directory / f"{call_id}.wav"
    with wave.open(str(recording)) as wav:
        assert (wav.getnchannels(), wav.getframerate(), wav.getsampwidth()) == (2, 16000, 2)
        stereo = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2").reshape(-1, 2)
    assert 1.8 < len(stereo) / 16000 < 2.3
    left = stereo[1600:, 0]
    assert abs(dominant_frequency(left, 16000) - 440.0) < 2.0
    assert np.abs(stereo[:, 1]).max() < 100  # the callee said nothing


@pytest.mark.parametrize("digit", ["1", "5", "star", "pound"])
async def test_rfc4733_digits_from_sipp_pcaps_are_reported_once(
    edge: InProcessEdge, e2e: E2E, digit: str
) -> None:
    callee = edge.callee
    callee.payload_types = {0: "PCMU/8000", 101: "telephone-event/8000"}
    pcap = SIPP_PCAPS / f"dtmf_2833_{digit}.pcap"
    scenario = pcap_scenario(e2e.workdir, pcap, 0, "PCMU/8000", pause_ms=800)
    result = await asyncio.to_thread(e2e.run_uac, scenario, edge.addr, calls=1, timeout_s=30)
    assert result.ok(1), result.describe()
    expected = {"star": "*", "pound": "#"}.get(digit, digit)
    assert edge.digits == [(Side.CALLER, expected)]
    assert len(callee.rtp) == 10  # the events were relayed too


async def test_audio_played_into_a_leg_is_heard_and_barge_in_stops_it(edge: InProcessEdge, e2e: E2E) -> None:
    callee = edge.callee
    callee.payload_types = {0: "PCMU/8000"}
    silence = write_rtp_pcap(e2e.workdir / "quiet.pcap", tone_rtp("PCMU", 0, 0.2, freq=0.0))
    scenario = pcap_scenario(e2e.workdir, silence, 0, "PCMU/8000", pause_ms=3500)
    sipp = asyncio.create_task(asyncio.to_thread(e2e.run_uac, scenario, edge.addr, calls=1, timeout_s=30))
    await asyncio.wait_for(callee.answered.wait(), 10)
    await asyncio.sleep(0.5)  # the caller's 0.2 s of silence has gone through
    (session,) = edge.media.sessions.values()
    heard_before = len(callee.rtp)
    t = np.arange(16000) / 16000
    duration = session.play(Side.CALLEE, (np.sin(2 * np.pi * 440 * t) * 12000).astype(np.int16))
    assert duration == 1000.0
    await asyncio.sleep(1.3)
    injected = callee.rtp[heard_before:]
    assert 48 <= len(injected) <= 51
    decoder = get_codec("PCMU").new_decoder()
    pcm = np.concatenate([decoder.decode(r.data[12:]) for r in injected])
    assert abs(dominant_frequency(pcm[800:], 8000) - 440.0) < 2.0
    seqs = [int.from_bytes(r.data[2:4], "big") for r in injected]
    assert all((b - a) % 65536 == 1 for a, b in itertools.pairwise(seqs))
    assert injected[0].data[1] & 0x80 and not any(r.data[1] & 0x80 for r in injected[1:])
    assert len({r.data[8:12] for r in injected}) == 1  # one SSRC
    # Barge-in: a 5 s prompt stopped after 0.3 s stops at once.
    before = len(callee.rtp)
    session.play(Side.CALLEE, np.zeros(5 * 16000, dtype=np.int16))
    await asyncio.sleep(0.3)
    dropped = session.stop_playback(Side.CALLEE)
    assert dropped > 4000
    await asyncio.sleep(0.3)
    assert 10 <= len(callee.rtp) - before <= 20
    result = await sipp
    assert result.ok(1), result.describe()
