"""RTP in pcap files: what SIPp's ``play_pcap_audio`` plays (Ethernet/IPv4/UDP, little-endian).

Used by ``scripts/demo_call.py`` (speech into a SIPp call) and by the end-to-end tests.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt

from pbx_edge.media.codecs import get_codec

__all__ = ["pcap_udp_payloads", "pcm_to_rtp", "rtp_header", "write_rtp_pcap"]

_PCAP_HEADER = struct.Struct("<IHHiIII")
_RECORD_HEADER = struct.Struct("<IIII")
_PCAP_MAGIC = 0xA1B2C3D4
_LINKTYPE_ETHERNET = 1


def rtp_header(pt: int, seq: int, ts: int, ssrc: int, marker: bool = False) -> bytes:
    """A 12-byte RTP header (version 2, no CSRC, no extension)."""
    return struct.pack("!BBHII", 0x80, (0x80 if marker else 0) | pt, seq & 0xFFFF, ts & 0xFFFFFFFF, ssrc)


def pcm_to_rtp(
    pcm: npt.NDArray[np.int16], codec_name: str, pt: int, ssrc: int = 0x5EEC, first_seq: int = 1000
) -> list[bytes]:
    """Mono int16 PCM at the codec's sample rate as 20 ms RTP packets (the tail is zero-padded)."""
    codec = get_codec(codec_name)
    frame = codec.info.sample_rate // 50
    step = codec.info.clock_rate // 50
    count = -(-len(pcm) // frame)
    padded = np.zeros(count * frame, dtype=np.int16)
    padded[: len(pcm)] = pcm
    encoder = codec.new_encoder()
    return [
        rtp_header(pt, first_seq + i, 5000 + i * step, ssrc, marker=i == 0)
        + encoder.encode(padded[i * frame : (i + 1) * frame])
        for i in range(count)
    ]


def write_rtp_pcap(
    path: Path, packets: Sequence[bytes], interval: float = 0.02, address: str = "127.0.0.1"
) -> Path:
    """Write ``packets`` as UDP datagrams ``interval`` seconds apart."""
    out = [_PCAP_HEADER.pack(_PCAP_MAGIC, 2, 4, 0, 0, 65535, _LINKTYPE_ETHERNET)]
    ip_address = socket.inet_aton(address)
    for i, payload in enumerate(packets):
        udp = struct.pack("!HHHH", 40000, 40002, 8 + len(payload), 0) + payload
        total = 20 + len(udp)
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, total, i & 0xFFFF, 0, 64, 17, 0, ip_address, ip_address)
        frame = b"\x00" * 12 + b"\x08\x00" + ip + udp
        usec = round(i * interval * 1e6)
        out.append(_RECORD_HEADER.pack(usec // 1_000_000, usec % 1_000_000, len(frame), len(frame)) + frame)
    path.write_bytes(b"".join(out))
    return path


def pcap_udp_payloads(path: Path) -> list[bytes]:
    """The UDP payloads of an Ethernet/IPv4 pcap, in file order (other frames are skipped)."""
    data = path.read_bytes()
    magic, _, _, _, _, _, link = _PCAP_HEADER.unpack(data[: _PCAP_HEADER.size])
    if magic != _PCAP_MAGIC or link != _LINKTYPE_ETHERNET:
        raise ValueError(f"{path}: not a little-endian Ethernet pcap")
    payloads, offset = [], _PCAP_HEADER.size
    while offset + _RECORD_HEADER.size <= len(data):
        _, _, incl, _ = _RECORD_HEADER.unpack(data[offset : offset + _RECORD_HEADER.size])
        frame = data[offset + 16 : offset + 16 + incl]
        offset += 16 + incl
        ip = frame[14:]
        if frame[12:14] != b"\x08\x00" or ip[9] != 17:
            continue
        header = (ip[0] & 0x0F) * 4
        udp_len = struct.unpack("!H", ip[header + 4 : header + 6])[0]
        payloads.append(ip[header + 8 : header + udp_len])
    return payloads
