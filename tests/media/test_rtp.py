from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pbx_edge.media.rtp import (
    RtcpByePacket,
    RtcpRawPacket,
    RtcpReportBlock,
    RtcpRrPacket,
    RtcpSrPacket,
    RtpPacket,
    is_rtcp,
    parse_rtcp,
    seq_distance,
    ts_distance,
)

# A G.711 PCMU packet: V=2, no P/X, CC=0, M=1, PT=0, seq 0x1234, ts 0x01020304, ssrc 0xdeadbeef
SIMPLE = bytes.fromhex("8080123401020304deadbeef") + b"\xff" * 160


def _padding(n: int) -> bytes:
    return b"\x00" * (n - 1) + bytes([n]) if n else b""


@st.composite
def rtp_packets(draw: st.DrawFn) -> RtpPacket:
    has_ext = draw(st.booleans())
    ext_words = draw(st.integers(0, 4))
    return RtpPacket(
        payload_type=draw(st.integers(0, 127)),
        marker=draw(st.booleans()),
        sequence_number=draw(st.integers(0, 0xFFFF)),
        timestamp=draw(st.integers(0, 0xFFFFFFFF)),
        ssrc=draw(st.integers(0, 0xFFFFFFFF)),
        csrc=draw(st.lists(st.integers(0, 0xFFFFFFFF), max_size=15)),
        extension_profile=draw(st.integers(0, 0xFFFF)) if has_ext else None,
        extension=draw(st.binary(min_size=4 * ext_words, max_size=4 * ext_words)) if has_ext else b"",
        payload=draw(st.binary(max_size=200)),
        padding=_padding(draw(st.integers(0, 12))),
    )


# ---------------------------------------------------------------------------------------------
# RTP
# ---------------------------------------------------------------------------------------------


def test_parse_simple() -> None:
    p = RtpPacket.parse(SIMPLE)
    assert p.payload_type == 0
    assert p.marker is True
    assert p.sequence_number == 0x1234
    assert p.timestamp == 0x01020304
    assert p.ssrc == 0xDEADBEEF
    assert p.csrc == []
    assert p.extension_profile is None
    assert p.extension == b""
    assert p.padding == b""
    assert p.padding_size == 0
    assert p.payload == b"\xff" * 160
    assert bytes(p) == SIMPLE


@given(rtp_packets())
def test_round_trip_from_object(packet: RtpPacket) -> None:
    data = bytes(packet)
    assert RtpPacket.parse(data) == packet
    assert bytes(RtpPacket.parse(data)) == data


@given(st.binary(min_size=0, max_size=120))
def test_round_trip_any_valid_bytes(tail: bytes) -> None:
    # Any datagram parse() accepts serializes back to the identical bytes; arbitrary ones either parse
    # or raise ValueError (never anything else).
    data = bytes([0x80 | (tail[0] & 0x3F) if tail else 0x80]) + tail[1:]
    try:
        packet = RtpPacket.parse(data)
    except ValueError:
        return
    assert bytes(packet) == data


def test_padding_kept_raw() -> None:
    # Padding bytes need not be zero; only the last one (the count) matters, and they come back as is.
    data = bytes([0xA0, 8]) + struct.pack("!HLL", 1, 2, 3) + b"abcd" + b"\x01\x02\x03"
    p = RtpPacket.parse(data)
    assert p.payload == b"abcd"
    assert p.padding == b"\x01\x02\x03"
    assert p.padding_size == 3
    assert p.payload_type == 8
    assert p.marker is False
    assert bytes(p) == data


def test_padding_whole_body() -> None:
    data = bytes([0xA0, 0]) + struct.pack("!HLL", 1, 2, 3) + b"\x00\x00\x00\x04"
    p = RtpPacket.parse(data)
    assert p.payload == b""
    assert p.padding_size == 4
    assert bytes(p) == data


def test_csrc_list() -> None:
    data = bytes([0x82, 0x60]) + struct.pack("!HLL", 7, 8, 9) + struct.pack("!LL", 11, 12) + b"pl"
    p = RtpPacket.parse(data)
    assert p.csrc == [11, 12]
    assert p.payload_type == 96
    assert p.payload == b"pl"
    assert bytes(p) == data


def test_extension_header() -> None:
    ext = struct.pack("!HH", 0xBEDE, 2) + b"\x10\xaa\x00\x00" + b"\x21\xbb\xcc\x00"
    data = bytes([0x90, 0x00]) + struct.pack("!HLL", 1, 2, 3) + ext + b"payload"
    p = RtpPacket.parse(data)
    assert p.extension_profile == 0xBEDE
    assert p.extension == b"\x10\xaa\x00\x00\x21\xbb\xcc\x00"
    assert p.payload == b"payload"
    assert bytes(p) == data


def test_empty_extension() -> None:
    data = bytes([0x90, 0x00]) + struct.pack("!HLL", 1, 2, 3) + struct.pack("!HH", 0x1000, 0)
    p = RtpPacket.parse(data)
    assert p.extension_profile == 0x1000
    assert p.extension == b""
    assert p.payload == b""
    assert bytes(p) == data


def test_csrc_extension_and_padding_together() -> None:
    data = (
        bytes([0xB1, 0xE1])
        + struct.pack("!HLL", 65535, 0xFFFFFFFF, 1)
        + struct.pack("!L", 42)
        + struct.pack("!HH", 0xBEDE, 1)
        + b"\x10\x01\x00\x00"
        + b"audio"
        + b"\x00\x00\x03"
    )
    p = RtpPacket.parse(data)
    assert p.csrc == [42]
    assert p.marker is True
    assert p.payload_type == 97
    assert p.sequence_number == 65535
    assert p.extension == b"\x10\x01\x00\x00"
    assert p.payload == b"audio"
    assert p.padding_size == 3
    assert bytes(p) == data


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "RTP packet length is less than 12 bytes"),
        (SIMPLE[:11], "RTP packet length is less than 12 bytes"),
        (bytes([0x40]) + SIMPLE[1:], "RTP packet has invalid version 1"),
        (bytes([0x00]) + SIMPLE[1:], "RTP packet has invalid version 0"),
        (bytes([0xC0]) + SIMPLE[1:], "RTP packet has invalid version 3"),
        (
            bytes([0x82]) + SIMPLE[1:12] + b"\x00" * 7,
            r"RTP packet is truncated in its CSRC list \(2 entries\)",
        ),
        (bytes([0x90]) + SIMPLE[1:12] + b"\xbe\xde", "RTP packet is truncated in its extension header"),
        (
            bytes([0x90]) + SIMPLE[1:12] + b"\xbe\xde\x00\x02" + b"\x00" * 7,
            r"RTP packet is truncated in its extension data \(2 words\)",
        ),
        (bytes([0xA0]) + SIMPLE[1:12], "RTP packet has padding flag set but no padding"),
        (bytes([0xA0]) + SIMPLE[1:12] + b"ab\x00", "RTP packet padding length is zero"),
        (bytes([0xA0]) + SIMPLE[1:12] + b"ab\x04", "RTP packet padding length 4 exceeds available 3 bytes"),
    ],
)
def test_parse_errors(data: bytes, message: str) -> None:
    with pytest.raises(ValueError, match=f"^{message}$"):
        RtpPacket.parse(data)


@pytest.mark.parametrize(
    ("packet", "message"),
    [
        (RtpPacket(csrc=list(range(16))), r"RTP packet cannot carry 16 CSRCs \(15 at most\)"),
        (RtpPacket(extension_profile=1, extension=b"abc"), "RTP header extension length must be a multiple"),
        (RtpPacket(padding=b"\x00\x00"), "RTP packet padding must end with its own length 2"),
    ],
)
def test_serialize_errors(packet: RtpPacket, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        bytes(packet)


def test_sequence_wraps_at_65535() -> None:
    a = RtpPacket.parse(bytes(RtpPacket(sequence_number=65535, timestamp=0xFFFFFF60)))
    b = RtpPacket.parse(bytes(RtpPacket(sequence_number=0, timestamp=0)))
    assert seq_distance(a.sequence_number, b.sequence_number) == 1
    assert seq_distance(b.sequence_number, a.sequence_number) == -1
    assert ts_distance(a.timestamp, b.timestamp) == 160
    assert ts_distance(b.timestamp, a.timestamp) == -160


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        (0, 0, 0),
        (1, 5, 4),
        (5, 1, -4),
        (65535, 0, 1),
        (65530, 4, 10),
        (4, 65530, -10),
        (0, 32767, 32767),
        (0, 32768, -32768),
        (100, 100 + 32768, -32768),
    ],
)
def test_seq_distance(a: int, b: int, expected: int) -> None:
    assert seq_distance(a, b) == expected


@given(st.integers(0, 0xFFFF), st.integers(-32768, 32767))
def test_seq_distance_inverts_addition(a: int, d: int) -> None:
    assert seq_distance(a, (a + d) & 0xFFFF) == d


@given(st.integers(0, 0xFFFFFFFF), st.integers(-(2**31), 2**31 - 1))
def test_ts_distance_inverts_addition(a: int, d: int) -> None:
    assert ts_distance(a, (a + d) & 0xFFFFFFFF) == d


def test_ts_distance_wraps() -> None:
    assert ts_distance(0xFFFFFFFF, 0) == 1
    assert ts_distance(0, 0xFFFFFFFF) == -1
    assert ts_distance(0, 0x7FFFFFFF) == 0x7FFFFFFF


# ---------------------------------------------------------------------------------------------
# RTCP demux
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("second", "expected"),
    [
        (191, False),
        (192, True),
        (200, True),
        (201, True),
        (223, True),
        (224, False),
        (0, False),
        (0x80, False),
    ],
)
def test_is_rtcp(second: int, expected: bool) -> None:
    assert is_rtcp(bytes([0x80, second, 0, 0])) is expected


def test_is_rtcp_short() -> None:
    assert is_rtcp(b"") is False
    assert is_rtcp(b"\x80") is False


def test_is_rtcp_on_real_packets() -> None:
    assert is_rtcp(SIMPLE) is False
    assert is_rtcp(bytes(RtcpRrPacket(ssrc=1))) is True


# ---------------------------------------------------------------------------------------------
# RTCP
# ---------------------------------------------------------------------------------------------

BLOCK = RtcpReportBlock(
    ssrc=0x11111111,
    fraction_lost=25,
    packets_lost=-3,
    highest_sequence=0x00010005,
    jitter=40,
    lsr=0xAABBCCDD,
    dlsr=65536,
)

SDES = (
    # V=2, SC=1, PT=202, length=3 words: SSRC, CNAME(1) len 4 "abcd", END, pad to 32 bits
    bytes([0x81, 202, 0, 3]) + struct.pack("!L", 0x22222222) + b"\x01\x04abcd" + b"\x00\x00"
)


def test_report_block_round_trip() -> None:
    data = bytes(BLOCK)
    assert len(data) == 24
    assert RtcpReportBlock.parse(data) == BLOCK


def test_report_block_short() -> None:
    with pytest.raises(ValueError, match=r"^RTCP report block length is less than 24 bytes$"):
        RtcpReportBlock.parse(b"\x00" * 23)


def test_sr_sdes_compound_round_trip() -> None:
    sr = RtcpSrPacket(
        ssrc=0x22222222,
        ntp_timestamp=0xE1234567_89ABCDEF,
        rtp_timestamp=160000,
        packet_count=1000,
        octet_count=160000,
        reports=[BLOCK],
    )
    data = bytes(sr) + SDES
    assert len(bytes(sr)) == 28 + 24
    packets = parse_rtcp(data)
    assert len(packets) == 2
    parsed_sr, sdes = packets
    assert parsed_sr == sr
    assert isinstance(sdes, RtcpRawPacket)
    assert sdes.packet_type == 202
    assert sdes.count == 1
    assert sdes.payload == SDES[4:]
    assert b"".join(bytes(p) for p in packets) == data


def test_rr_bye_compound_round_trip() -> None:
    rr = RtcpRrPacket(ssrc=5, reports=[BLOCK, RtcpReportBlock(6, 0, 0, 0, 0, 0, 0)])
    bye = RtcpByePacket(sources=[5, 7], extra=b"\x04gone\x00\x00\x00")
    data = bytes(rr) + bytes(bye)
    packets = parse_rtcp(data)
    assert packets == [rr, bye]
    parsed_bye = packets[1]
    assert isinstance(parsed_bye, RtcpByePacket)
    assert parsed_bye.reason == b"gone"
    assert b"".join(bytes(p) for p in packets) == data


def test_bye_without_reason() -> None:
    data = bytes([0x81, 203, 0, 1]) + struct.pack("!L", 9)
    (bye,) = parse_rtcp(data)
    assert isinstance(bye, RtcpByePacket)
    assert bye.sources == [9]
    assert bye.reason is None
    assert bytes(bye) == data


def test_bye_malformed_reason() -> None:
    assert RtcpByePacket(sources=[], extra=b"\x09abc").reason is None


def test_app_and_unknown_kept_raw() -> None:
    app = bytes([0x83, 204, 0, 2]) + struct.pack("!L", 1) + b"NAME"
    rtpfb = bytes([0x81, 205, 0, 2]) + struct.pack("!LL", 1, 2)
    packets = parse_rtcp(app + rtpfb)
    assert [p.packet_type for p in packets] == [204, 205]
    assert isinstance(packets[0], RtcpRawPacket)
    assert packets[0].count == 3
    assert b"".join(bytes(p) for p in packets) == app + rtpfb


def test_rtcp_padding_round_trip() -> None:
    data = bytes([0xA0, 201, 0, 2]) + struct.pack("!L", 5) + b"\x00\x00\x00\x04"
    (rr,) = parse_rtcp(data)
    assert isinstance(rr, RtcpRrPacket)
    assert rr.ssrc == 5
    assert rr.reports == []
    assert rr.padding == b"\x00\x00\x00\x04"
    assert bytes(rr) == data


def test_sr_and_rr_profile_extension_kept() -> None:
    data = bytes([0x80, 201, 0, 2]) + struct.pack("!L", 5) + b"extn"
    (rr,) = parse_rtcp(data)
    assert isinstance(rr, RtcpRrPacket)
    assert rr.extension == b"extn"
    assert bytes(rr) == data


@given(
    st.lists(
        st.one_of(
            st.builds(
                RtcpSrPacket,
                ssrc=st.integers(0, 0xFFFFFFFF),
                ntp_timestamp=st.integers(0, 2**64 - 1),
                rtp_timestamp=st.integers(0, 0xFFFFFFFF),
                packet_count=st.integers(0, 0xFFFFFFFF),
                octet_count=st.integers(0, 0xFFFFFFFF),
                reports=st.lists(
                    st.builds(
                        RtcpReportBlock,
                        ssrc=st.integers(0, 0xFFFFFFFF),
                        fraction_lost=st.integers(0, 255),
                        packets_lost=st.integers(-(2**23), 2**23 - 1),
                        highest_sequence=st.integers(0, 0xFFFFFFFF),
                        jitter=st.integers(0, 0xFFFFFFFF),
                        lsr=st.integers(0, 0xFFFFFFFF),
                        dlsr=st.integers(0, 0xFFFFFFFF),
                    ),
                    max_size=3,
                ),
            ),
            st.builds(RtcpByePacket, sources=st.lists(st.integers(0, 0xFFFFFFFF), max_size=4)),
            st.builds(
                RtcpRawPacket,
                packet_type=st.sampled_from([202, 204, 205, 206]),
                count=st.integers(0, 31),
                payload=st.integers(0, 5).map(lambda n: b"\x5a" * (4 * n)),
            ),
        ),
        min_size=1,
        max_size=4,
    )
)
def test_rtcp_compound_round_trip_property(
    packets: list[RtcpSrPacket | RtcpByePacket | RtcpRawPacket],
) -> None:
    data = b"".join(bytes(p) for p in packets)
    parsed = parse_rtcp(data)
    assert parsed == packets
    assert b"".join(bytes(p) for p in parsed) == data


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "RTCP compound packet is empty"),
        (b"\x80\xc9\x00", "RTCP packet length is less than 4 bytes"),
        (bytes([0x80, 201, 0, 1]) + b"\x00" * 4 + b"\x80\xc9", "RTCP packet length is less than 4 bytes"),
        (bytes([0x40, 201, 0, 1]) + b"\x00" * 4, "RTCP packet has invalid version 1"),
        (
            bytes([0x80, 201, 0, 2]) + b"\x00" * 4,
            "RTCP packet is truncated: length field says 12 bytes, 8 available",
        ),
        (bytes([0xA0, 201, 0, 0]), "RTCP packet has padding flag set but no padding"),
        (bytes([0xA0, 201, 0, 1]) + b"\x00" * 4, "RTCP packet padding length is zero"),
        (
            bytes([0xA0, 201, 0, 1]) + b"\x00\x00\x00\x09",
            "RTCP packet padding length 9 exceeds available 4 bytes",
        ),
        (
            bytes([0x80, 200, 0, 1]) + b"\x00" * 4,
            r"RTCP SR packet is truncated: 0 report\(s\) need 24 bytes",
        ),
        (
            bytes([0x81, 200, 0, 6]) + b"\x00" * 24,
            r"RTCP SR packet is truncated: 1 report\(s\) need 48 bytes",
        ),
        (bytes([0x80, 201, 0, 0]), r"RTCP RR packet is truncated: 0 report\(s\) need 4 bytes"),
        (
            bytes([0x81, 201, 0, 1]) + b"\x00" * 4,
            r"RTCP RR packet is truncated: 1 report\(s\) need 28 bytes",
        ),
        (
            bytes([0x82, 203, 0, 1]) + b"\x00" * 4,
            r"RTCP BYE packet is truncated: 2 source\(s\) need 8 bytes",
        ),
    ],
)
def test_rtcp_parse_errors(data: bytes, message: str) -> None:
    with pytest.raises(ValueError, match=f"^{message}$"):
        parse_rtcp(data)


@pytest.mark.parametrize(
    ("packet", "message"),
    [
        (RtcpRawPacket(packet_type=204, count=32), "RTCP packet count 32 does not fit in 5 bits"),
        (RtcpRawPacket(packet_type=204, payload=b"abc"), "RTCP packet length 7 is not a multiple of 4 bytes"),
        (
            RtcpRrPacket(ssrc=1, padding=b"\x00\x00\x00\x00"),
            "RTCP packet padding must end with its own length",
        ),
        (RtcpByePacket(sources=[1], extra=b"\x01x"), "RTCP packet length 10 is not a multiple of 4 bytes"),
    ],
)
def test_rtcp_serialize_errors(packet: RtcpRawPacket | RtcpRrPacket | RtcpByePacket, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        bytes(packet)


@given(st.binary(max_size=200))
def test_parse_rtcp_never_raises_other_errors(data: bytes) -> None:
    try:
        packets = parse_rtcp(data)
    except ValueError:
        return
    assert b"".join(bytes(p) for p in packets) == data
