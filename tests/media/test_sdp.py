"""Tests for the SDP parser and the relay bypass rewrite (pbx_edge.media.sdp)."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pbx_edge.media.interface import SdpRejected
from pbx_edge.media.sdp import (
    Connection,
    Direction,
    RtcpAttribute,
    SdpLine,
    SessionDescription,
    rewrite_for_relay,
)


def crlf(text: str) -> bytes:
    return "".join(f"{line}\r\n" for line in text.strip("\n").split("\n")).encode()


# SIPp's default uac/uas SDP (with its [media_ip] etc. filled in).
SIPP = crlf("""
v=0
o=user1 53655765 2353687637 IN IP4 127.0.0.1
s=-
c=IN IP4 127.0.0.1
t=0 0
m=audio 6000 RTP/AVP 0
a=rtpmap:0 PCMU/8000
""")

# A Linphone-like offer: ICE candidates, RFC 3605 rtcp, media-level c=, unknown attributes.
LINPHONE = crlf("""
v=0
o=alice 1823 2419 IN IP4 192.168.1.20
s=Talk
c=IN IP4 192.168.1.20
t=0 0
a=ice-pwd:3c5a9be2f8a1d0b7e6c4a2f1
a=ice-ufrag:7d2e9a1c
a=rtcp-xr:rcvr-rtt=all:10000 stat-summary=loss,dup,jitt,TTL voip-metrics
a=record:off
m=audio 7078 RTP/AVP 96 97 98 0 8 18 101 99 100
c=IN IP4 192.168.1.20
a=rtpmap:96 opus/48000/2
a=fmtp:96 useinbandfec=1
a=rtpmap:97 speex/16000
a=fmtp:97 vbr=on
a=rtpmap:98 speex/8000
a=fmtp:98 vbr=on
a=fmtp:18 annexb=yes
a=rtpmap:101 telephone-event/48000
a=rtpmap:99 telephone-event/16000
a=rtpmap:100 telephone-event/8000
a=rtcp:7079
a=candidate:1 1 UDP 2130706431 192.168.1.20 7078 typ host
a=candidate:1 2 UDP 2130706430 192.168.1.20 7079 typ host
a=candidate:2 1 UDP 1694498815 203.0.113.7 41822 typ srflx raddr 192.168.1.20 rport 7078
a=candidate:2 2 UDP 1694498814 203.0.113.7 41823 typ srflx raddr 192.168.1.20 rport 7079
a=rtcp-fb:* trr-int 1000
a=rtcp-fb:* ccm tmmbr
""")

# Audio accepted, video rejected with port 0 (RFC 3264 §6), bandwidth lines, rtcp with address.
AUDIO_VIDEO = crlf("""
v=0
o=- 20518 0 IN IP4 198.51.100.10
s=-
c=IN IP4 198.51.100.10
b=AS:2048
t=0 0
m=audio 49170/2 RTP/AVP 0 8 101
b=AS:64
a=rtpmap:0 PCMU/8000
a=rtpmap:8 PCMA/8000
a=rtpmap:101 telephone-event/8000
a=fmtp:101 0-16
a=rtcp:49173 IN IP4 198.51.100.10
a=ptime:20
m=video 0 RTP/AVP 31
a=rtpmap:31 H261/90000
a=x-unknown-thing
""")

HOLD_SENDONLY = crlf("""
v=0
o=bob 2808844564 2808844565 IN IP4 192.0.2.5
s=-
c=IN IP4 192.0.2.5
t=0 0
a=sendrecv
m=audio 30000 RTP/AVP 0 101
a=rtpmap:0 PCMU/8000
a=rtpmap:101 telephone-event/8000
a=sendonly
""")

HOLD_ZERO = crlf("""
v=0
o=bob 2808844564 2808844566 IN IP4 192.0.2.5
s=-
c=IN IP4 0.0.0.0
t=0 0
m=audio 30000 RTP/AVP 0
a=rtpmap:0 PCMU/8000
a=rtcp:30001
""")

IPV6 = crlf("""
v=0
o=carol 1 1 IN IP6 2001:db8::1
s=-
t=0 0
m=audio 5004 RTP/AVP 0
c=IN IP6 2001:db8::1
a=rtcp:5005 IN IP6 2001:db8::1
a=rtpmap:0 PCMU/8000
""")

ALL = {
    "sipp": SIPP,
    "linphone": LINPHONE,
    "audio_video": AUDIO_VIDEO,
    "hold_sendonly": HOLD_SENDONLY,
    "hold_zero": HOLD_ZERO,
    "ipv6": IPV6,
}


# --- parsing and round trip ---------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(ALL))
def test_round_trip_is_exact(name: str) -> None:
    data = ALL[name]
    sdp = SessionDescription.parse(data)
    assert bytes(sdp) == data
    assert [f"{t}={v}" for t, v in sdp.lines] == data.decode().split("\r\n")[:-1]


@pytest.mark.parametrize("name", sorted(ALL))
def test_bare_lf_accepted_and_written_as_crlf(name: str) -> None:
    data = ALL[name]
    sdp = SessionDescription.parse(data.replace(b"\r\n", b"\n"))
    assert bytes(sdp) == data


def test_missing_final_line_end_and_trailing_blank_line() -> None:
    assert bytes(SessionDescription.parse(SIPP[:-2])) == SIPP
    assert bytes(SessionDescription.parse(SIPP + b"\r\n")) == SIPP


def test_non_utf8_bytes_survive_round_trip() -> None:
    data = SIPP.replace(b"s=-", b"s=caf\xe9 \xff")
    assert bytes(SessionDescription.parse(data)) == data


def test_structure_sipp() -> None:
    sdp = SessionDescription.parse(SIPP)
    assert sdp.session[0] == SdpLine("v", "0")
    assert len(sdp.media) == 1
    m = sdp.media[0]
    assert (m.media, m.port, m.port_count, m.proto, m.formats) == ("audio", 6000, None, "RTP/AVP", ("0",))
    assert m.lines == (SdpLine("m", "audio 6000 RTP/AVP 0"), SdpLine("a", "rtpmap:0 PCMU/8000"))
    assert m.connection is None
    assert sdp.connection_for(0) == Connection("IN", "IP4", "127.0.0.1", "")
    assert sdp.direction_for(0) is Direction.SENDRECV
    assert m.rtcp is None


def test_structure_audio_video() -> None:
    sdp = SessionDescription.parse(AUDIO_VIDEO)
    audio, video = sdp.media
    assert (audio.port, audio.port_count, audio.formats) == (49170, 2, ("0", "8", "101"))
    assert audio.rtcp == RtcpAttribute(49173, "IN", "IP4", "198.51.100.10")
    assert (video.media, video.port, video.formats) == ("video", 0, ("31",))
    assert video.lines[-1] == SdpLine("a", "x-unknown-thing")


def test_media_connection_overrides_session() -> None:
    sdp = SessionDescription.parse(LINPHONE)
    assert sdp.media[0].connection == Connection("IN", "IP4", "192.168.1.20", "")
    assert sdp.media[0].rtcp == RtcpAttribute(7079)
    ipv6 = SessionDescription.parse(IPV6)
    assert ipv6.connection is None
    assert ipv6.connection_for(0) == Connection("IN", "IP6", "2001:db8::1", "")


def test_direction_media_overrides_session() -> None:
    sdp = SessionDescription.parse(HOLD_SENDONLY)
    assert sdp.direction is Direction.SENDRECV
    assert sdp.direction_for(0) is Direction.SENDONLY
    session_only = SessionDescription.parse(SIPP.replace(b"t=0 0\r\n", b"t=0 0\r\na=inactive\r\n"))
    assert session_only.direction_for(0) is Direction.INACTIVE


def test_hold_zero_connection_is_unspecified() -> None:
    sdp = SessionDescription.parse(HOLD_ZERO)
    conn = sdp.connection_for(0)
    assert conn is not None and conn.is_unspecified


def test_multicast_connection_suffix() -> None:
    conn = Connection.parse("IN IP4 224.2.1.1/127/3")
    assert (conn.address, conn.suffix) == ("224.2.1.1", "/127/3")


def test_port_zero_without_connection_is_accepted() -> None:
    data = crlf("v=0\no=- 1 1 IN IP4 1.2.3.4\ns=-\nt=0 0\nm=audio 0 RTP/AVP 0")
    assert SessionDescription.parse(data).media[0].port == 0


# --- errors -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "v= line"),
        (b"o=- 1 1 IN IP4 1.2.3.4\r\nv=0\r\n", "v= line"),
        (b"v=1\r\n", "version"),
        (SIPP.replace(b"s=-", b"s -"), "<type>=<value>"),
        (SIPP.replace(b"s=-", b"S=-"), "<type>=<value>"),
        (SIPP.replace(b"s=-", b"s = -"), "<type>=<value>"),
        (SIPP.replace(b"s=-\r\n", b"s=-\r\n\r\nt=1 1\r\n"), "empty line"),
        (SIPP.replace(b"s=-", b"s=a\rb"), "CR or NUL"),
        (SIPP.replace(b"s=-", b"s=a\x00b"), "CR or NUL"),
        (SIPP.replace(b"m=audio 6000 RTP/AVP 0", b"m=audio 6000 RTP/AVP"), "bad m= line"),
        (SIPP.replace(b"m=audio 6000 RTP/AVP 0", b"m=audio  6000 RTP/AVP 0"), "bad m= line"),
        (SIPP.replace(b"m=audio 6000", b"m=audio x6000"), "bad port"),
        (SIPP.replace(b"m=audio 6000", b"m=audio +600"), "bad port"),
        (SIPP.replace(b"m=audio 6000", b"m=audio 65536"), "out of range"),
        (SIPP.replace(b"m=audio 6000", b"m=audio 6000/0"), "port count"),
        (SIPP.replace(b"m=audio 6000", b"m=audio 6000/"), "port count"),
        (SIPP.replace(b"RTP/AVP 0", b"RTP/AVP 0\xc3\xa9"), "invalid fmt"),
        (SIPP.replace(b"c=IN IP4 127.0.0.1\r\n", b""), "no c= line"),
        (SIPP.replace(b"c=IN IP4 127.0.0.1", b"c=IN IP4"), "bad c= line"),
        (SIPP + b"a=rtcp:abc\r\n", "bad port"),
        (SIPP + b"a=rtcp:6001 IN IP4\r\n", "bad a=rtcp"),
    ],
)
def test_malformed_sdp_is_rejected_with_400(data: bytes, reason: str) -> None:
    with pytest.raises(SdpRejected) as info:
        SessionDescription.parse(data)
    assert info.value.status == 400
    assert reason in info.value.reason


def test_media_c_line_satisfies_missing_session_c() -> None:
    data = SIPP.replace(b"c=IN IP4 127.0.0.1\r\n", b"") + b"c=IN IP4 10.0.0.1\r\n"
    assert SessionDescription.parse(data).connection_for(0) == Connection("IN", "IP4", "10.0.0.1", "")


# --- rewrite ------------------------------------------------------------------------------------


def changed(before: SessionDescription, after: SessionDescription) -> dict[int, tuple[str, str]]:
    """Index -> (old line, new line) for every line that differs; the line counts must match."""
    old, new = before.lines, after.lines
    assert len(old) == len(new)
    assert [line.type for line in old] == [line.type for line in new]
    return {i: (str(a), str(b)) for i, (a, b) in enumerate(zip(old, new, strict=True)) if a != b}


# The lines the rewrite changes, by index; every other line must stay as it was.
REWRITES = [
    pytest.param(
        SIPP,
        "10.1.1.1",
        [20000],
        {
            3: ("c=IN IP4 127.0.0.1", "c=IN IP4 10.1.1.1"),
            5: ("m=audio 6000 RTP/AVP 0", "m=audio 20000 RTP/AVP 0"),
        },
        id="sipp",
    ),
    pytest.param(
        LINPHONE,
        "10.1.1.1",
        [30000],
        {
            3: ("c=IN IP4 192.168.1.20", "c=IN IP4 10.1.1.1"),
            9: (
                "m=audio 7078 RTP/AVP 96 97 98 0 8 18 101 99 100",
                "m=audio 30000 RTP/AVP 96 97 98 0 8 18 101 99 100",
            ),
            10: ("c=IN IP4 192.168.1.20", "c=IN IP4 10.1.1.1"),
            21: ("a=rtcp:7079", "a=rtcp:30001 IN IP4 10.1.1.1"),
        },
        id="linphone_keeps_ice_and_attributes",
    ),
    pytest.param(
        AUDIO_VIDEO,
        "10.1.1.1",
        [40000, 40002],
        {
            3: ("c=IN IP4 198.51.100.10", "c=IN IP4 10.1.1.1"),
            6: ("m=audio 49170/2 RTP/AVP 0 8 101", "m=audio 40000/2 RTP/AVP 0 8 101"),
            12: ("a=rtcp:49173 IN IP4 198.51.100.10", "a=rtcp:40001 IN IP4 10.1.1.1"),
        },
        id="audio_video_keeps_rejected_stream",
    ),
    pytest.param(
        AUDIO_VIDEO,
        "10.1.1.1",
        [None, None],
        {3: ("c=IN IP4 198.51.100.10", "c=IN IP4 10.1.1.1")},
        id="none_keeps_port",
    ),
    pytest.param(
        HOLD_SENDONLY,
        "10.1.1.1",
        [20000],
        {
            3: ("c=IN IP4 192.0.2.5", "c=IN IP4 10.1.1.1"),
            6: ("m=audio 30000 RTP/AVP 0 101", "m=audio 20000 RTP/AVP 0 101"),
        },
        id="hold_sendonly",
    ),
    pytest.param(
        HOLD_ZERO,
        "10.1.1.1",
        [20000],
        {
            5: ("m=audio 30000 RTP/AVP 0", "m=audio 20000 RTP/AVP 0"),
            7: ("a=rtcp:30001", "a=rtcp:20001 IN IP4 10.1.1.1"),
        },
        id="hold_zero_keeps_unspecified_address",
    ),
    pytest.param(
        IPV6,
        "2001:db8::99",
        [20000],
        {
            4: ("m=audio 5004 RTP/AVP 0", "m=audio 20000 RTP/AVP 0"),
            5: ("c=IN IP6 2001:db8::1", "c=IN IP6 2001:db8::99"),
            6: ("a=rtcp:5005 IN IP6 2001:db8::1", "a=rtcp:20001 IN IP6 2001:db8::99"),
        },
        id="ipv6",
    ),
]


@pytest.mark.parametrize(("data", "address", "ports", "diff"), REWRITES)
def test_rewrite_changes_only_addresses_and_ports(
    data: bytes, address: str, ports: list[int | None], diff: dict[int, tuple[str, str]]
) -> None:
    sdp = SessionDescription.parse(data)
    out = rewrite_for_relay(sdp, address, ports)
    assert changed(sdp, out) == diff
    assert SessionDescription.parse(bytes(out)) == out


def test_rewrite_sets_the_relay_port() -> None:
    assert rewrite_for_relay(SessionDescription.parse(SIPP), "10.1.1.1", [20000]).media[0].port == 20000


def test_rewrite_keeps_the_origin_line() -> None:
    # o= keeps the endpoint's address and version: the relay is transparent.
    sdp = SessionDescription.parse(LINPHONE)
    assert rewrite_for_relay(sdp, "10.1.1.1", [30000]).session[1] == sdp.session[1]


def test_rewrite_keeps_a_rejected_stream_and_the_port_count() -> None:
    out = rewrite_for_relay(SessionDescription.parse(AUDIO_VIDEO), "10.1.1.1", [40000, 40002])
    assert out.media[1].port == 0
    assert out.media[0].port_count == 2


def test_rewrite_hold_sendonly_keeps_direction() -> None:
    out = rewrite_for_relay(SessionDescription.parse(HOLD_SENDONLY), "10.1.1.1", [20000])
    assert out.direction_for(0) is Direction.SENDONLY


def test_rewrite_hold_zero_keeps_unspecified_address() -> None:
    conn = rewrite_for_relay(SessionDescription.parse(HOLD_ZERO), "10.1.1.1", [20000]).connection_for(0)
    assert conn is not None and conn.address == "0.0.0.0"


def test_rewrite_rtcp_with_unspecified_address_keeps_it() -> None:
    sdp = SessionDescription.parse(SIPP + b"a=rtcp:6001 IN IP4 0.0.0.0\r\n")
    out = rewrite_for_relay(sdp, "10.1.1.1", [20000])
    assert out.media[0].rtcp == RtcpAttribute(20001, "IN", "IP4", "0.0.0.0")


def test_rewrite_changes_address_type_across_families() -> None:
    sdp = SessionDescription.parse(IPV6)
    out = rewrite_for_relay(sdp, "10.1.1.1", [20000])
    assert out.connection_for(0) == Connection("IN", "IP4", "10.1.1.1", "")
    assert out.media[0].rtcp == RtcpAttribute(20001, "IN", "IP4", "10.1.1.1")


def test_rewrite_is_pure() -> None:
    sdp = SessionDescription.parse(LINPHONE)
    rewrite_for_relay(sdp, "10.1.1.1", [30000])
    assert bytes(sdp) == LINPHONE
    assert rewrite_for_relay(sdp, "10.1.1.1", [30000]) == rewrite_for_relay(sdp, "10.1.1.1", [30000])


def test_rewrite_caller_errors() -> None:
    sdp = SessionDescription.parse(SIPP)
    with pytest.raises(ValueError):
        rewrite_for_relay(sdp, "not-an-ip", [20000])
    with pytest.raises(ValueError):
        rewrite_for_relay(sdp, "10.1.1.1", [20000, 20002])
    with pytest.raises(ValueError):
        rewrite_for_relay(sdp, "10.1.1.1", [70000])
    with pytest.raises(ValueError):
        rewrite_for_relay(SessionDescription.parse(HOLD_ZERO), "10.1.1.1", [65535])


def test_rewrite_unsupported_network_type_is_488() -> None:
    sdp = SessionDescription.parse(SIPP.replace(b"c=IN IP4", b"c=ATM NSAP"))
    with pytest.raises(SdpRejected) as info:
        rewrite_for_relay(sdp, "10.1.1.1", [20000])
    assert info.value.status == 488


# --- fuzz ---------------------------------------------------------------------------------------

_mutation = st.one_of(
    st.tuples(st.just("replace"), st.integers(0, 10_000), st.binary(min_size=1, max_size=4)),
    st.tuples(st.just("insert"), st.integers(0, 10_000), st.binary(min_size=1, max_size=8)),
    st.tuples(st.just("delete"), st.integers(0, 10_000), st.integers(1, 16)),
    st.tuples(
        st.just("token"),
        st.integers(0, 10_000),
        st.sampled_from(
            [b" ", b"/", b"=", b"\r", b"\n", b"\r\n", b"m=", b"c=", b"a=rtcp:", b"0", b"99999", b":", b"\x00"]
        ),
    ),
)


def _mutate(data: bytes, mutations: list[tuple[str, int, object]]) -> bytes:
    buf = bytearray(data)
    for kind, position, arg in mutations:
        pos = position % (len(buf) + 1)
        if kind == "delete":
            assert isinstance(arg, int)
            del buf[pos : pos + arg]
        elif kind == "replace":
            assert isinstance(arg, bytes)
            buf[pos : pos + len(arg)] = arg
        else:
            assert isinstance(arg, bytes)
            buf[pos:pos] = arg
    return bytes(buf)


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    base=st.sampled_from(sorted(ALL)),
    mutations=st.lists(_mutation, min_size=1, max_size=4),
    lf=st.booleans(),
)
def test_fuzz_only_sdp_rejected_escapes(
    base: str, mutations: list[tuple[str, int, object]], lf: bool
) -> None:
    data = ALL[base].replace(b"\r\n", b"\n") if lf else ALL[base]
    data = _mutate(data, mutations)
    try:
        sdp = SessionDescription.parse(data)
    except SdpRejected as exc:
        assert exc.status == 400
        assert exc.reason
        return
    # Whatever parses re-serializes stably, and the accessors and the rewrite stay within SdpRejected.
    again = SessionDescription.parse(bytes(sdp))
    assert again == sdp
    for i in range(len(sdp.media)):
        sdp.connection_for(i)
        sdp.direction_for(i)
        _ = sdp.media[i].rtcp
    try:
        out = rewrite_for_relay(sdp, "10.1.1.1", [20000 + 2 * i for i in range(len(sdp.media))])
    except SdpRejected as exc:
        assert exc.status == 488
        return
    assert SessionDescription.parse(bytes(out)) == out
    assert len(out.lines) == len(sdp.lines)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=300))
def test_fuzz_arbitrary_bytes(data: bytes) -> None:
    with contextlib.suppress(SdpRejected):
        SessionDescription.parse(data)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_fuzz_bytes_after_valid_header(data: bytes) -> None:
    try:
        sdp = SessionDescription.parse(b"v=0\r\nc=IN IP4 1.2.3.4\r\n" + data)
    except SdpRejected:
        return
    rewrite_for_relay(sdp, "10.1.1.1", [None] * len(sdp.media))
