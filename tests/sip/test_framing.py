"""The TCP stream framer: message boundaries, keep-alives, and the errors that end a stream."""

from __future__ import annotations

import time

import pytest

from pbx_edge.sip.framing import PING, PONG, StreamFramer
from pbx_edge.sip.message import Request, SipParseError, parse_message


def message(n: int, body: bytes = b"", *, length: str | None = None, name: str = "Content-Length") -> bytes:
    head = [
        "OPTIONS sip:bob@b.example SIP/2.0",
        f"Via: SIP/2.0/TCP 192.0.2.1:5060;branch=z9hG4bK{n}",
        "Max-Forwards: 70",
        "From: <sip:a@a.example>;tag=a",
        "To: <sip:bob@b.example>",
        f"Call-ID: call-{n}",
        f"CSeq: {n} OPTIONS",
        f"{name}: {len(body) if length is None else length}",
    ]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


MESSAGES = [message(1), message(2, b"hello\r\n\r\nworld"), message(3, bytes(range(256)))]
STREAM = b"".join(MESSAGES)


def call_ids(out: list[bytes]) -> list[str]:
    ids = []
    for data in out:
        parsed = parse_message(data, stream=True)
        assert isinstance(parsed, Request)
        ids.append(parsed.call_id)
    return ids


def test_one_message() -> None:
    framer = StreamFramer()
    assert framer.feed(MESSAGES[1]) == [MESSAGES[1]]
    assert framer.buffered == 0 and framer.error is None


def test_many_messages_in_one_chunk() -> None:
    assert StreamFramer().feed(STREAM) == MESSAGES


def test_byte_at_a_time() -> None:
    framer = StreamFramer()
    out: list[bytes] = []
    for i in range(len(STREAM)):
        out += framer.feed(STREAM[i : i + 1])
    assert out == MESSAGES
    assert framer.buffered == 0


def test_every_split_point() -> None:
    for cut in range(1, len(STREAM)):
        framer = StreamFramer()
        assert framer.feed(STREAM[:cut]) + framer.feed(STREAM[cut:]) == MESSAGES, cut


def test_chunks_of_every_size() -> None:
    for size in (2, 3, 7, 64, 500):
        framer = StreamFramer()
        out: list[bytes] = []
        for i in range(0, len(STREAM), size):
            out += framer.feed(STREAM[i : i + size])
        assert call_ids(out) == ["call-1", "call-2", "call-3"]


def test_body_is_taken_by_length_not_by_empty_lines() -> None:
    (out,) = StreamFramer().feed(MESSAGES[1])
    assert parse_message(out, stream=True).body == b"hello\r\n\r\nworld"


def test_pings_are_counted_and_pongs_ignored() -> None:
    framer = StreamFramer()
    assert framer.feed(PING) == [] and framer.pings_received == 1
    assert framer.feed(PING + MESSAGES[0] + PING + PING + MESSAGES[1] + PONG) == MESSAGES[:2]
    assert framer.pings_received == 4
    assert framer.feed(MESSAGES[2]) == [MESSAGES[2]]  # the pong before it is dropped
    assert framer.pings_received == 4 and framer.buffered == 0


def test_ping_split_across_reads_counts_once() -> None:
    framer = StreamFramer()
    for byte in PING:
        assert framer.feed(bytes([byte])) == []
    assert framer.pings_received == 1 and framer.buffered == 0
    assert framer.feed(b"\r\n") == [] and framer.buffered == 2  # a pong, or half a ping: wait
    assert framer.feed(b"\r\n") == [] and framer.pings_received == 2
    assert framer.feed(b"\r\n") == [] and framer.feed(MESSAGES[0]) == [MESSAGES[0]]
    assert framer.pings_received == 2


def test_bare_lf_keepalive_and_header_block() -> None:
    lf = message(4).replace(b"\r\n", b"\n")
    framer = StreamFramer()
    assert framer.feed(b"\n" + lf) == [lf]
    assert call_ids([lf]) == ["call-4"]


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (message(1, b"xyz", length="-3"), "Invalid Content-Length b'-3'"),
        (message(1, b"xyz", length="three"), "Invalid Content-Length b'three'"),
        (message(1, b"xyz", length=""), "Invalid Content-Length b''"),
        (message(1).replace(b"Content-Length: 0", b"X-Length: 0"), "Missing Content-Length"),
        (
            message(1, b"ab").replace(b"Content-Length: 2", b"Content-Length: 2\r\nl: 3"),
            "Conflicting Content-Length",
        ),
    ],
)
def test_bad_content_length_ends_the_stream(data: bytes, reason: str) -> None:
    framer = StreamFramer()
    with pytest.raises(SipParseError) as info:
        framer.feed(data)
    assert info.value.reason == reason
    with pytest.raises(SipParseError):  # the stream cannot be resynchronised
        framer.feed(MESSAGES[0])
    assert framer.error is info.value


def test_content_length_forms() -> None:
    compact = message(5, b"abc", name="l")
    spaced = message(6, b"abc", name="content-LENGTH ")
    folded = message(7, b"abc").replace(b"Content-Length: 3", b"Content-Length:\r\n   3")
    same_twice = message(8, b"abc").replace(b"Content-Length: 3", b"Content-Length: 3\r\nl: 3")
    out = StreamFramer().feed(compact + spaced + folded + same_twice)
    assert out == [compact, spaced, folded, same_twice]
    assert call_ids(out) == ["call-5", "call-6", "call-7", "call-8"]


def test_messages_before_an_error_are_delivered() -> None:
    framer = StreamFramer()
    bad = message(9, length="x")
    assert framer.feed(MESSAGES[0] + bad) == [MESSAGES[0]]
    assert framer.error is not None and framer.error.reason == "Invalid Content-Length b'x'"
    with pytest.raises(SipParseError):
        framer.feed(b"")


def test_header_block_too_large() -> None:
    framer = StreamFramer(max_size=1024)
    assert framer.feed(b"OPTIONS sip:b SIP/2.0\r\nX-Filler: " + b"y" * 900) == []
    with pytest.raises(SipParseError) as info:
        framer.feed(b"y" * 200)
    assert info.value.reason == "Header Block Too Large" and info.value.status == 513


def test_message_too_large() -> None:
    with pytest.raises(SipParseError) as info:
        StreamFramer(max_size=1024).feed(message(1, length="2000"))
    assert info.value.reason == "Message Too Large"
    body = b"z" * 700
    assert StreamFramer(max_size=1024).feed(message(1, body)) == [message(1, body)]


def test_start_line_is_not_a_header() -> None:
    odd = message(1).replace(b"OPTIONS sip:bob@b.example", b"l: sip:bob@b.example", 1)
    assert StreamFramer().feed(odd) == [odd]


def test_large_body_byte_at_a_time_is_linear() -> None:
    big = message(10, b"b" * 60000)
    framer = StreamFramer()
    started = time.perf_counter()
    out: list[bytes] = []
    for i in range(len(big)):
        out += framer.feed(big[i : i + 1])
    assert out == [big]
    assert time.perf_counter() - started < 5.0  # quadratic rescanning would take far longer


def test_slow_header_block_is_not_rescanned() -> None:
    framer = StreamFramer()
    head = message(11)[:-4]
    for i in range(len(head)):
        assert framer.feed(head[i : i + 1]) == []
    assert framer.feed(b"\r\n\r\n") == [message(11)]
