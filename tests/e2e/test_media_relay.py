"""RTP through a real edge process: SIPp plays a pcap or echoes RTP, Python phones send and capture.

What is checked is what the far side receives, byte for byte.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from tests.e2e.harness import E2E, LOOPBACK, SIPP
from tests.e2e.rtp_peer import Phone, pcap_udp_payloads, rtp_header

pytestmark = [
    pytest.mark.skipif(SIPP is None, reason="sipp not installed"),
    pytest.mark.timeout(120),
]

SIPP_PCAPS = Path("/usr/share/sip-tester")
PCAP_TEMPLATE = Path(__file__).resolve().parents[2] / "scripts" / "sipp" / "uac_pcap.xml.tmpl"
needs_pcap_play = pytest.mark.skipif(
    not (SIPP_PCAPS / "g711a.pcap").exists() or os.geteuid() != 0,
    reason="SIPp's pcaps missing, or not root (play_pcap_audio needs a raw socket)",
)


def pcap_scenario(workdir: Path, pcap: Path, pt: int, rtpmap: str, pause_ms: int) -> Path:
    template = PCAP_TEMPLATE.read_text()
    path = workdir / f"uac_pcap_{pcap.stem}.xml"
    path.write_text(template.format(pcap=pcap, pt=pt, rtpmap=rtpmap, pause_ms=pause_ms))
    return path


async def _wait_for(predicate: object, timeout: float = 5.0) -> None:
    assert callable(predicate)
    for _ in range(int(timeout / 0.02)):
        if predicate():
            return
        await asyncio.sleep(0.02)


@needs_pcap_play
async def test_pcap_audio_reaches_the_callee_byte_identical(e2e: E2E) -> None:
    callee = await Phone(payload_types={8: "PCMA/8000"}).start()
    try:
        edge = e2e.start_edge(e2e.edge_settings(uas_port=callee.sip_port))
        pcap = SIPP_PCAPS / "g711a.pcap"
        scenario = pcap_scenario(e2e.workdir, pcap, 8, "PCMA/8000", pause_ms=7800)
        result = await asyncio.to_thread(e2e.run_uac, scenario, edge.addr, calls=1, timeout_s=30)
        assert result.ok(1), result.describe()
        sent = pcap_udp_payloads(pcap)
        received = [r.data for r in callee.rtp]
        assert len(received) == len(sent) == 236
        assert received == sent  # every byte, header included, in order
        relay_ports = {r.source for r in callee.rtp}
        assert len(relay_ports) == 1 and next(iter(relay_ports))[0] == LOOPBACK
    finally:
        callee.close()


async def test_rtp_echoed_by_sipp_comes_back_byte_identical(e2e: E2E) -> None:
    uas = e2e.start_uas("uas_basic.xml", calls=1, timeout_s=30, extra=["-rtp_echo"])
    edge = e2e.start_edge(e2e.edge_settings(uas_port=uas.spec.local_port))
    caller = await Phone(payload_types={0: "PCMU/8000"}).start()
    try:
        dialog = await caller.call(edge.addr)
        assert dialog.final == 200
        assert caller.remote_media is not None and caller.remote_media[1] != 0
        sent = [
            rtp_header(0, i, i * 160, 0xCAFE) + bytes((i + k) % 256 for k in range(160)) for i in range(100)
        ]
        for packet in sent:
            caller.send_rtp(packet)
            await asyncio.sleep(0.005)
        await _wait_for(lambda: len(caller.rtp) >= len(sent))
        assert [r.data for r in caller.rtp] == sent
        assert {r.source for r in caller.rtp} == {caller.remote_media}  # from the port in the SDP
        assert await dialog.bye() == 200
    finally:
        caller.close()
    assert e2e.finish_uas(uas).ok(1)


async def test_port_exhaustion_gets_503_while_live_calls_keep_their_media(e2e: E2E) -> None:
    uas = e2e.start_uas("uas_basic.xml", calls=3, timeout_s=30, extra=["-rtp_echo"])
    settings = e2e.edge_settings(uas_port=uas.spec.local_port)
    settings.media = {**settings.media, "max_calls": 2}
    edge = e2e.start_edge(settings)
    phones = [await Phone().start() for _ in range(3)]
    try:
        live = [await phones[0].call(edge.addr), await phones[1].call(edge.addr)]
        assert [d.final for d in live] == [200, 200]
        refused = await phones[2].call(edge.addr)
        assert refused.final == 503
        for round_ in range(20):  # both live calls still relay (SIPp echoes what it gets)
            for n in (0, 1):
                phones[n].send_rtp(rtp_header(0, round_, round_ * 160, 100 + n) + bytes([n]) * 160)
            await asyncio.sleep(0.01)
        await _wait_for(lambda: all(len(p.rtp) >= 20 for p in phones[:2]))
        for n in (0, 1):
            assert len(phones[n].rtp) == 20 and all(r.data[12:] == bytes([n]) * 160 for r in phones[n].rtp)
        assert [await d.bye() for d in live] == [200, 200]
        again = await phones[2].call(edge.addr)  # the ports came back
        assert again.final == 200
        assert await again.bye() == 200
    finally:
        for phone in phones:
            phone.close()


async def test_media_inactivity_hangs_up_both_legs(e2e: E2E) -> None:
    callee = await Phone().start()
    caller = await Phone().start()
    try:
        settings = e2e.edge_settings(uas_port=callee.sip_port)
        settings.media = {**settings.media, "inactivity_timeout": 1.0}
        edge = e2e.start_edge(settings)
        dialog = await caller.call(edge.addr)
        assert dialog.final == 200
        for seq in range(25):  # 0.5 s of media, then silence on both sides
            caller.send_rtp(rtp_header(0, seq, seq * 160, 7) + bytes(160))
            callee.send_rtp(rtp_header(0, seq, seq * 160, 8) + bytes(160))
            await asyncio.sleep(0.02)
        started = asyncio.get_running_loop().time()
        await asyncio.wait_for(callee.byed.wait(), 5)
        await asyncio.wait_for(caller.byed.wait(), 5)
        waited = asyncio.get_running_loop().time() - started
        assert 0.9 < waited < 2.5  # inactivity_timeout, checked every timeout/4
        assert "no media" in edge.log_tail(20)
    finally:
        caller.close()
        callee.close()
