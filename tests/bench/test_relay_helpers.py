"""The pure pieces of the relay benchmark: bencode, SDP addresses, SIP parsing, histogram percentiles."""

from __future__ import annotations

import pytest

from bench._relay_load import LoadResult, histogram_percentile, parse_output
from bench._relay_ng import bdecode, bencode
from bench._relay_sip import Message, build_sdp, contact_uri, sdp_audio_address


def test_bencode_round_trip() -> None:
    value = {"command": "offer", "flags": ["trust-address", "x"], "n": -3, "sdp": b"v=0\r\n"}
    data = bencode(value)
    assert data == b"d7:command5:offer5:flagsl13:trust-address1:xe1:ni-3e3:sdp5:v=0\r\ne"
    assert bdecode(data) == {
        "command": b"offer",
        "flags": [b"trust-address", b"x"],
        "n": -3,
        "sdp": b"v=0\r\n",
    }


@pytest.mark.parametrize("bad", [b"i12", b"5:abc", b"d3:key", b"x", b"i1ei2e"])
def test_bdecode_rejects_malformed(bad: bytes) -> None:
    with pytest.raises(ValueError):
        bdecode(bad)


def test_sdp_audio_address_prefers_media_level_connection() -> None:
    sdp = (
        "v=0\r\no=- 1 1 IN IP4 10.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.9\r\nt=0 0\r\n"
        "m=audio 30000 RTP/AVP 0\r\nc=IN IP4 127.0.0.1\r\na=rtcp:30001\r\n"
        "m=video 30002 RTP/AVP 96\r\nc=IN IP4 127.0.0.5\r\n"
    )
    assert sdp_audio_address(sdp) == ("127.0.0.1", 30000)
    assert sdp_audio_address(build_sdp(("127.0.0.2", 10002), 7)) == ("127.0.0.2", 10002)
    with pytest.raises(ValueError):
        sdp_audio_address("v=0\r\nm=video 1 RTP/AVP 96\r\n")


def test_sip_message_parse_expands_compact_headers_and_splits_via() -> None:
    data = (
        b"SIP/2.0 200 OK\r\nv: SIP/2.0/UDP a;branch=z9hG4bK1, SIP/2.0/UDP b;branch=z9hG4bK2\r\n"
        b"i: abc@h\r\nCSeq: 1 INVITE\r\nm: <sip:edge@127.0.0.1:5060>;expires=60\r\nl: 3\r\n\r\nv=0"
    )
    msg = Message.parse(data)
    assert msg.is_response and msg.status == 200 and msg.cseq_method == "INVITE"
    assert msg.headers["via"] == ["SIP/2.0/UDP a;branch=z9hG4bK1", "SIP/2.0/UDP b;branch=z9hG4bK2"]
    assert msg.get("call-id") == "abc@h"
    assert contact_uri(msg.get("contact")) == "sip:edge@127.0.0.1:5060"
    assert msg.body == b"v=0"


def test_histogram_percentiles_and_output_parsing() -> None:
    lines = [
        "dir 0 sent 100 recv 99 late 1 dup 0 misrouted 0 stale 0",
        "dir 1 sent 100 recv 100 late 0 dup 0 misrouted 0 stale 0",
        "sendlag max_ns 1500000 over1ms 2",
        "errors send 0 recv 0 bad 0",
        "hist 1000 1000 100",
        "hist 5000 1000 99",
        "negative 0",
        "done",
    ]
    result = parse_output(lines, ends=2)
    assert result.sent == 200 and result.received == 199
    assert result.loss == pytest.approx(0.005)
    assert result.send_lag_over_1ms == 2
    assert result.percentile_ms(50) == pytest.approx(0.002, abs=1e-5)
    assert 0.005 < result.percentile_ms(99) <= 0.006
    merged = result.merge(result)
    assert merged.sent == 400 and merged.percentile_ms(50) == pytest.approx(result.percentile_ms(50))
    assert histogram_percentile([], 50) != histogram_percentile([], 50)  # NaN
    assert LoadResult(ends=0).loss == 1.0
