"""RFC 4733 telephone-event parsing, per-stream DTMF detection, SIP INFO DTMF."""

from __future__ import annotations

import pytest

from pbx_edge.media.dtmf import (
    DTMF_EVENTS,
    DtmfDetector,
    TelephoneEvent,
    event_to_digit,
    parse_info_dtmf,
)

Packet = tuple[int, bool, bytes]  # (RTP timestamp, marker, payload)


def payload(event: int, duration: int, end: bool = False, volume: int = 10) -> bytes:
    return TelephoneEvent(event=event, end=end, volume=volume, duration=duration).serialize()


def event_packets(event: int, ts: int, steps: int = 5, step: int = 160, end_copies: int = 3) -> list[Packet]:
    """Packets of one event as a typical sender (and SIPp's dtmf pcap) emits them:
    marker on the first, duration growing every 20 ms, then the final packet three times with E set."""
    packets: list[Packet] = [(ts, i == 0, payload(event, step * (i + 1))) for i in range(steps)]
    final = step * steps
    packets += [(ts, False, payload(event, final, end=True)) for _ in range(end_copies)]
    return packets


def run(detector: DtmfDetector, packets: list[Packet]) -> list[str]:
    digits: list[str] = []
    for ts, marker, data in packets:
        digit = detector.feed(ts, marker, data)
        if digit is not None:
            digits.append(digit)
    return digits


# --- TelephoneEvent ---


def test_parse_fields() -> None:
    te = TelephoneEvent.parse(bytes([0x05, 0x8A, 0x03, 0x20]))
    assert te == TelephoneEvent(event=5, end=True, volume=10, duration=800)
    assert te.digit == "5"


def test_parse_ignores_reserved_bit_and_trailing_bytes() -> None:
    te = TelephoneEvent.parse(bytes([0x0B, 0x7F, 0xFF, 0xFF, 0xAA]))
    assert te == TelephoneEvent(event=11, end=False, volume=63, duration=0xFFFF)
    assert te.digit == "#"


@pytest.mark.parametrize("data", [b"", b"\x01", b"\x01\x80\x00"])
def test_parse_short_payload_raises(data: bytes) -> None:
    with pytest.raises(ValueError, match="too short"):
        TelephoneEvent.parse(data)


def test_serialize_round_trip_and_validation() -> None:
    te = TelephoneEvent(event=15, end=True, volume=63, duration=65535)
    assert TelephoneEvent.parse(te.serialize()) == te
    with pytest.raises(ValueError):
        TelephoneEvent(event=256, end=False, volume=0, duration=0).serialize()
    with pytest.raises(ValueError):
        TelephoneEvent(event=1, end=False, volume=64, duration=0).serialize()
    with pytest.raises(ValueError):
        TelephoneEvent(event=1, end=False, volume=0, duration=65536).serialize()


def test_event_ids_map_to_digits() -> None:
    assert [event_to_digit(e) for e in range(16)] == list("0123456789*#ABCD")
    assert DTMF_EVENTS == "0123456789*#ABCD"
    for event in (16, 32, 100, 255, -1):
        assert event_to_digit(event) is None
    assert TelephoneEvent(event=16, end=True, volume=0, duration=0).digit is None


# --- DtmfDetector ---


def test_single_event_reported_once_on_first_end_packet() -> None:
    detector = DtmfDetector()
    packets = event_packets(1, ts=1000)
    results = [detector.feed(*p) for p in packets]
    assert results == [None] * 5 + ["1", None, None]
    assert detector.flush() == []


def test_sipp_like_sequence_with_retransmissions_yields_each_digit_once() -> None:
    digits = "1234567890*#ABCD"
    packets: list[Packet] = []
    ts = 160_000
    for i, d in enumerate(digits):
        evs = event_packets(DTMF_EVENTS.index(d), ts=ts, steps=3 + i % 4)
        if i % 3 == 0:  # a retransmitted (duplicated) mid-event packet and end packet
            evs.insert(2, evs[1])
            evs.append(evs[-1])
        packets += evs
        ts += 160 * 20  # 400 ms between event starts
    detector = DtmfDetector()
    assert "".join(run(detector, packets)) == digits
    assert detector.flush() == []


def test_repeated_same_digit_is_reported_each_time() -> None:
    packets = event_packets(5, ts=0) + event_packets(5, ts=3200) + event_packets(5, ts=6400)
    assert run(DtmfDetector(), packets) == ["5", "5", "5"]


def test_all_end_packets_lost_reported_on_next_event() -> None:
    first = event_packets(1, ts=8000, end_copies=0)
    second = event_packets(2, ts=11200)
    detector = DtmfDetector()
    results = [detector.feed(*p) for p in first + second]
    # '1' is reported on the first packet of the next event, once; '2' on its end packet
    assert results[len(first)] == "1"
    assert [r for r in results if r is not None] == ["1", "2"]
    assert detector.flush() == []


def test_lost_end_of_same_digit_then_same_digit_again() -> None:
    packets = event_packets(7, ts=100, end_copies=0) + event_packets(7, ts=3300)
    assert run(DtmfDetector(), packets) == ["7", "7"]


def test_some_end_packets_lost_not_double_counted() -> None:
    packets = event_packets(3, ts=500)
    del packets[-3]  # first end packet lost
    packets += event_packets(4, ts=3700)
    del packets[-1]
    del packets[-1]
    assert run(DtmfDetector(), packets) == ["3", "4"]


def test_only_end_packets_survive() -> None:
    packets = event_packets(9, ts=42)[-3:]
    assert run(DtmfDetector(), packets) == ["9"]


def test_late_packets_of_finished_event_are_ignored() -> None:
    a = event_packets(1, ts=1000)
    b = event_packets(2, ts=4200)
    # reordering: a duplicate of an end packet and a mid packet of '1' arrive during '2'
    packets = a + b[:2] + [a[-1], a[1]] + b[2:]
    assert run(DtmfDetector(), packets) == ["1", "2"]


def test_late_packets_after_lost_end_are_ignored() -> None:
    a = event_packets(1, ts=1000, end_copies=0)
    b = event_packets(2, ts=4200)
    late_end = (1000, False, payload(1, 800, end=True))
    packets = a + b[:1] + [late_end] + b[1:]
    assert run(DtmfDetector(), packets) == ["1", "2"]


def test_lost_end_followed_by_end_only_event_reports_both() -> None:
    a = event_packets(1, ts=1000, end_copies=0)
    b = event_packets(2, ts=4200)[-3:]  # only '2's end packets survive
    detector = DtmfDetector()
    results = [detector.feed(*p) for p in a + b]
    assert [r for r in results if r is not None] == ["1", "2"]
    assert detector.flush() == []


def test_flush_reports_event_without_end() -> None:
    detector = DtmfDetector()
    assert run(detector, event_packets(0, ts=77, end_copies=0)) == []
    assert detector.flush() == ["0"]
    assert detector.flush() == []
    # the flushed event is not reported again when its end finally arrives
    assert detector.feed(77, False, payload(0, 800, end=True)) is None


def test_long_duration_event_segments_are_one_digit() -> None:
    # RFC 4733 2.5.1.3: at the 16-bit duration limit the sender starts a new segment with a new
    # timestamp, without the marker bit
    seg1: list[Packet] = [(0, True, payload(6, 160))]
    seg1 += [(0, False, payload(6, d)) for d in (30000, 60000, 0xFFFF)]
    seg2: list[Packet] = [(0xFFFF, False, payload(6, d)) for d in (160, 320)]
    seg2 += [(0xFFFF, False, payload(6, 480, end=True))] * 3
    detector = DtmfDetector()
    assert run(detector, seg1 + seg2) == ["6"]
    assert detector.flush() == []


def test_non_dtmf_events_and_malformed_payloads_are_ignored() -> None:
    detector = DtmfDetector()
    assert detector.feed(10, True, payload(16, 160, end=True)) is None  # flash
    assert detector.feed(10, False, payload(32, 160, end=True)) is None  # modem tone
    assert detector.feed(10, False, b"\x01\x80") is None
    assert detector.ignored_events == 2
    assert detector.malformed == 1
    assert run(detector, event_packets(8, ts=500)) == ["8"]


def test_timestamp_wraparound() -> None:
    a = event_packets(1, ts=0xFFFFFF00)
    b = event_packets(2, ts=(0xFFFFFF00 + 3200) & 0xFFFFFFFF)
    assert run(DtmfDetector(), a + b) == ["1", "2"]


def test_detectors_are_per_stream() -> None:
    a, b = DtmfDetector(), DtmfDetector()
    pa = event_packets(1, ts=100)
    pb = event_packets(2, ts=100)
    out_a: list[str] = []
    out_b: list[str] = []
    for x, y in zip(pa, pb, strict=True):
        if (d := a.feed(*x)) is not None:
            out_a.append(d)
        if (d := b.feed(*y)) is not None:
            out_b.append(d)
    assert (out_a, out_b) == (["1"], ["2"])


# --- SIP INFO ---


@pytest.mark.parametrize(
    ("content_type", "body", "digit"),
    [
        ("application/dtmf-relay", b"Signal=5\r\nDuration=160\r\n", "5"),
        ("application/dtmf-relay", b"Signal=5\r\nDuration=160", "5"),
        ("Application/DTMF-Relay; charset=utf-8", b"signal = *\nDuration=250\n", "*"),
        ("application/dtmf-relay", b"Duration=160\r\nSignal=#\r\n", "#"),
        ("application/dtmf-relay", b"Signal=a\r\nDuration=160", "A"),
        ("application/dtmf-relay", b"Signal=10\r\nDuration=160", "*"),
        ("application/dtmf-relay", b"Signal=11\r\nDuration=160", "#"),
        ("application/dtmf-relay", b"Signal=15\r\n", "D"),
        ("application/dtmf", b"5", "5"),
        ("application/dtmf", b" 9\r\n", "9"),
        ("application/dtmf", b"#", "#"),
        ("application/dtmf", b"d", "D"),
    ],
)
def test_parse_info_dtmf(content_type: str, body: bytes, digit: str) -> None:
    assert parse_info_dtmf(content_type, body) == digit


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("application/dtmf-relay", b"Duration=160\r\n"),
        ("application/dtmf-relay", b"Signal=\r\nDuration=160"),
        ("application/dtmf-relay", b"Signal=E\r\n"),
        ("application/dtmf-relay", b"Signal=16\r\n"),
        ("application/dtmf-relay", b"Signal=55\r\n"),
        ("application/dtmf-relay", b""),
        ("application/dtmf", b""),
        ("application/dtmf", b"12"),
        ("application/dtmf", b"\xff"),
        ("application/sdp", b"Signal=5\r\n"),
        ("text/plain", b"5"),
    ],
)
def test_parse_info_dtmf_rejects(content_type: str, body: bytes) -> None:
    assert parse_info_dtmf(content_type, body) is None
