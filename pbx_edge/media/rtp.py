"""RTP and RTCP wire formats (RFC 3550), as the relay and the decoded-audio tap see them.

Every packet type is a dataclass with a ``parse()`` that raises :class:`ValueError` with the exact
reason a datagram cannot be used, and a ``__bytes__`` that gives back the identical bytes for any
input ``parse()`` accepted (padding, extension and unknown RTCP packets are kept raw for that).
Nothing here does I/O or reads a clock.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

RTP_VERSION = 2
RTP_HEADER_LENGTH = 12
RTCP_HEADER_LENGTH = 4

RTCP_SR = 200
RTCP_RR = 201
RTCP_SDES = 202
RTCP_BYE = 203
RTCP_APP = 204

REPORT_BLOCK_LENGTH = 24
SENDER_INFO_LENGTH = 20


def seq_distance(a: int, b: int) -> int:
    """Signed distance from RTP sequence number ``a`` to ``b`` (16-bit, wraps).

    Positive when ``b`` comes after ``a``: ``seq_distance(65535, 0) == 1``. The result lies in
    ``[-32768, 32767]``.
    """
    return ((b - a + 0x8000) & 0xFFFF) - 0x8000


def ts_distance(a: int, b: int) -> int:
    """Signed distance from RTP timestamp ``a`` to ``b`` (32-bit, wraps); positive when ``b`` is later."""
    return ((b - a + 0x80000000) & 0xFFFFFFFF) - 0x80000000


def is_rtcp(data: bytes) -> bool:
    """RFC 5761 demultiplexing: RTCP when the second byte (the RTCP packet type) is in 192..223."""
    return len(data) >= 2 and 192 <= data[1] <= 223


def _split_padding(body: bytes, what: str) -> tuple[bytes, bytes]:
    """Split ``body`` whose last byte counts the padding bytes (itself included)."""
    if not body:
        raise ValueError(f"{what} has padding flag set but no padding")
    count = body[-1]
    if count == 0:
        raise ValueError(f"{what} padding length is zero")
    if count > len(body):
        raise ValueError(f"{what} padding length {count} exceeds available {len(body)} bytes")
    return body[:-count], body[-count:]


def _check_padding(padding: bytes, what: str) -> None:
    if padding and padding[-1] != len(padding):
        raise ValueError(f"{what} padding must end with its own length {len(padding)}")


@dataclass
class RtpPacket:
    """One RTP packet (RFC 3550 §5.1).

    ``extension_profile`` is None when the X bit is clear; otherwise ``extension`` holds the header
    extension data (a multiple of 4 bytes) without its 4-byte header. ``padding`` holds the padding
    bytes as received, the final count byte included; empty when the P bit is clear.
    """

    payload_type: int = 0
    marker: bool = False
    sequence_number: int = 0
    timestamp: int = 0
    ssrc: int = 0
    csrc: list[int] = field(default_factory=list)
    extension_profile: int | None = None
    extension: bytes = b""
    payload: bytes = b""
    padding: bytes = b""

    @property
    def padding_size(self) -> int:
        return len(self.padding)

    @classmethod
    def parse(cls, data: bytes) -> RtpPacket:
        if len(data) < RTP_HEADER_LENGTH:
            raise ValueError(f"RTP packet length is less than {RTP_HEADER_LENGTH} bytes")
        first, second, sequence_number, timestamp, ssrc = struct.unpack_from("!BBHLL", data)
        version = first >> 6
        if version != RTP_VERSION:
            raise ValueError(f"RTP packet has invalid version {version}")
        has_padding = bool(first & 0x20)
        has_extension = bool(first & 0x10)
        cc = first & 0x0F
        pos = RTP_HEADER_LENGTH
        if len(data) < pos + 4 * cc:
            raise ValueError(f"RTP packet is truncated in its CSRC list ({cc} entries)")
        csrc = list(struct.unpack_from(f"!{cc}L", data, pos))
        pos += 4 * cc

        extension_profile: int | None = None
        extension = b""
        if has_extension:
            if len(data) < pos + 4:
                raise ValueError("RTP packet is truncated in its extension header")
            extension_profile, words = struct.unpack_from("!HH", data, pos)
            pos += 4
            if len(data) < pos + 4 * words:
                raise ValueError(f"RTP packet is truncated in its extension data ({words} words)")
            extension = bytes(data[pos : pos + 4 * words])
            pos += 4 * words

        body = bytes(data[pos:])
        padding = b""
        if has_padding:
            body, padding = _split_padding(body, "RTP packet")

        return cls(
            payload_type=second & 0x7F,
            marker=bool(second >> 7),
            sequence_number=sequence_number,
            timestamp=timestamp,
            ssrc=ssrc,
            csrc=csrc,
            extension_profile=extension_profile,
            extension=extension,
            payload=body,
            padding=padding,
        )

    def __bytes__(self) -> bytes:
        if len(self.csrc) > 15:
            raise ValueError(f"RTP packet cannot carry {len(self.csrc)} CSRCs (15 at most)")
        if len(self.extension) % 4:
            raise ValueError("RTP header extension length must be a multiple of 4 bytes")
        _check_padding(self.padding, "RTP packet")
        first = (RTP_VERSION << 6) | len(self.csrc)
        if self.padding:
            first |= 0x20
        if self.extension_profile is not None:
            first |= 0x10
        second = (0x80 if self.marker else 0) | (self.payload_type & 0x7F)
        out = [
            struct.pack("!BBHLL", first, second, self.sequence_number, self.timestamp, self.ssrc),
            struct.pack(f"!{len(self.csrc)}L", *self.csrc),
        ]
        if self.extension_profile is not None:
            out.append(struct.pack("!HH", self.extension_profile, len(self.extension) // 4))
            out.append(self.extension)
        out.append(self.payload)
        out.append(self.padding)
        return b"".join(out)


# ---------------------------------------------------------------------------------------------
# RTCP
# ---------------------------------------------------------------------------------------------


@dataclass
class RtcpReportBlock:
    """A reception report block (RFC 3550 §6.4.1), 24 bytes."""

    ssrc: int
    fraction_lost: int
    packets_lost: int  # signed 24-bit cumulative count
    highest_sequence: int
    jitter: int
    lsr: int
    dlsr: int

    @classmethod
    def parse(cls, data: bytes) -> RtcpReportBlock:
        if len(data) < REPORT_BLOCK_LENGTH:
            raise ValueError(f"RTCP report block length is less than {REPORT_BLOCK_LENGTH} bytes")
        ssrc, lost_word, highest, jitter, lsr, dlsr = struct.unpack_from("!LLLLLL", data)
        lost = lost_word & 0xFFFFFF
        if lost & 0x800000:
            lost -= 0x1000000
        return cls(
            ssrc=ssrc,
            fraction_lost=lost_word >> 24,
            packets_lost=lost,
            highest_sequence=highest,
            jitter=jitter,
            lsr=lsr,
            dlsr=dlsr,
        )

    def __bytes__(self) -> bytes:
        lost_word = ((self.fraction_lost & 0xFF) << 24) | (self.packets_lost & 0xFFFFFF)
        return struct.pack(
            "!LLLLLL", self.ssrc, lost_word, self.highest_sequence, self.jitter, self.lsr, self.dlsr
        )


def _header(packet_type: int, count: int, body_length: int, padding: bytes) -> bytes:
    if count > 31:
        raise ValueError(f"RTCP packet count {count} does not fit in 5 bits")
    total = RTCP_HEADER_LENGTH + body_length + len(padding)
    if total % 4:
        raise ValueError(f"RTCP packet length {total} is not a multiple of 4 bytes")
    first = (RTP_VERSION << 6) | (0x20 if padding else 0) | count
    return struct.pack("!BBH", first, packet_type, total // 4 - 1)


def _parse_reports(data: bytes, pos: int, count: int) -> list[RtcpReportBlock]:
    return [
        RtcpReportBlock.parse(data[pos + i * REPORT_BLOCK_LENGTH : pos + (i + 1) * REPORT_BLOCK_LENGTH])
        for i in range(count)
    ]


@dataclass
class RtcpSrPacket:
    """Sender report (PT 200). ``extension`` holds any profile-specific bytes after the reports."""

    ssrc: int
    ntp_timestamp: int  # 64-bit NTP format
    rtp_timestamp: int
    packet_count: int
    octet_count: int
    reports: list[RtcpReportBlock] = field(default_factory=list)
    extension: bytes = b""
    padding: bytes = b""

    packet_type = RTCP_SR

    @classmethod
    def parse(cls, count: int, body: bytes, padding: bytes = b"") -> RtcpSrPacket:
        need = 4 + SENDER_INFO_LENGTH + count * REPORT_BLOCK_LENGTH
        if len(body) < need:
            raise ValueError(f"RTCP SR packet is truncated: {count} report(s) need {need} bytes")
        ssrc, ntp, rtp_ts, packets, octets = struct.unpack_from("!LQLLL", body)
        return cls(
            ssrc=ssrc,
            ntp_timestamp=ntp,
            rtp_timestamp=rtp_ts,
            packet_count=packets,
            octet_count=octets,
            reports=_parse_reports(body, 4 + SENDER_INFO_LENGTH, count),
            extension=bytes(body[need:]),
            padding=padding,
        )

    def __bytes__(self) -> bytes:
        body = (
            struct.pack(
                "!LQLLL",
                self.ssrc,
                self.ntp_timestamp,
                self.rtp_timestamp,
                self.packet_count,
                self.octet_count,
            )
            + b"".join(bytes(r) for r in self.reports)
            + self.extension
        )
        _check_padding(self.padding, "RTCP packet")
        return _header(RTCP_SR, len(self.reports), len(body), self.padding) + body + self.padding


@dataclass
class RtcpRrPacket:
    """Receiver report (PT 201). ``extension`` holds any profile-specific bytes after the reports."""

    ssrc: int
    reports: list[RtcpReportBlock] = field(default_factory=list)
    extension: bytes = b""
    padding: bytes = b""

    packet_type = RTCP_RR

    @classmethod
    def parse(cls, count: int, body: bytes, padding: bytes = b"") -> RtcpRrPacket:
        need = 4 + count * REPORT_BLOCK_LENGTH
        if len(body) < need:
            raise ValueError(f"RTCP RR packet is truncated: {count} report(s) need {need} bytes")
        (ssrc,) = struct.unpack_from("!L", body)
        return cls(
            ssrc=ssrc,
            reports=_parse_reports(body, 4, count),
            extension=bytes(body[need:]),
            padding=padding,
        )

    def __bytes__(self) -> bytes:
        body = struct.pack("!L", self.ssrc) + b"".join(bytes(r) for r in self.reports) + self.extension
        _check_padding(self.padding, "RTCP packet")
        return _header(RTCP_RR, len(self.reports), len(body), self.padding) + body + self.padding


@dataclass
class RtcpByePacket:
    """Goodbye (PT 203). ``extra`` is everything after the SSRC list (the optional reason), raw."""

    sources: list[int] = field(default_factory=list)
    extra: bytes = b""
    padding: bytes = b""

    packet_type = RTCP_BYE

    @property
    def reason(self) -> bytes | None:
        """The length-prefixed reason text, or None when absent or malformed."""
        if not self.extra:
            return None
        length = self.extra[0]
        if len(self.extra) < 1 + length:
            return None
        return self.extra[1 : 1 + length]

    @classmethod
    def parse(cls, count: int, body: bytes, padding: bytes = b"") -> RtcpByePacket:
        need = 4 * count
        if len(body) < need:
            raise ValueError(f"RTCP BYE packet is truncated: {count} source(s) need {need} bytes")
        return cls(
            sources=list(struct.unpack_from(f"!{count}L", body)),
            extra=bytes(body[need:]),
            padding=padding,
        )

    def __bytes__(self) -> bytes:
        body = struct.pack(f"!{len(self.sources)}L", *self.sources) + self.extra
        _check_padding(self.padding, "RTCP packet")
        return _header(RTCP_BYE, len(self.sources), len(body), self.padding) + body + self.padding


@dataclass
class RtcpRawPacket:
    """SDES (202), APP (204) and any other RTCP packet type, kept raw after the common header.

    ``count`` is the 5-bit header field (source count, report count or APP subtype).
    """

    packet_type: int
    count: int = 0
    payload: bytes = b""
    padding: bytes = b""

    def __bytes__(self) -> bytes:
        _check_padding(self.padding, "RTCP packet")
        return (
            _header(self.packet_type, self.count, len(self.payload), self.padding)
            + self.payload
            + self.padding
        )


RtcpPacket = RtcpSrPacket | RtcpRrPacket | RtcpByePacket | RtcpRawPacket


def parse_rtcp(data: bytes) -> list[RtcpPacket]:
    """Parse an RTCP compound packet, walking it by each packet's length field."""
    if not data:
        raise ValueError("RTCP compound packet is empty")
    packets: list[RtcpPacket] = []
    pos = 0
    while pos < len(data):
        if len(data) - pos < RTCP_HEADER_LENGTH:
            raise ValueError(f"RTCP packet length is less than {RTCP_HEADER_LENGTH} bytes")
        first, packet_type, length = struct.unpack_from("!BBH", data, pos)
        version = first >> 6
        if version != RTP_VERSION:
            raise ValueError(f"RTCP packet has invalid version {version}")
        end = pos + 4 * (length + 1)
        if end > len(data):
            raise ValueError(
                f"RTCP packet is truncated: length field says {4 * (length + 1)} bytes, "
                f"{len(data) - pos} available"
            )
        count = first & 0x1F
        body = bytes(data[pos + RTCP_HEADER_LENGTH : end])
        padding = b""
        if first & 0x20:
            body, padding = _split_padding(body, "RTCP packet")
        packet: RtcpPacket
        if packet_type == RTCP_SR:
            packet = RtcpSrPacket.parse(count, body, padding)
        elif packet_type == RTCP_RR:
            packet = RtcpRrPacket.parse(count, body, padding)
        elif packet_type == RTCP_BYE:
            packet = RtcpByePacket.parse(count, body, padding)
        else:
            packet = RtcpRawPacket(packet_type=packet_type, count=count, payload=body, padding=padding)
        packets.append(packet)
        pos = end
    return packets
