"""Micro-benchmark of the SIP parser and serializer: a typical INVITE and a typical 200 OK.

Run ``python bench/sip_parser.py`` (``--runs``/``--number`` to change the effort). Prints the
machine, then for each message the median, best and worst of ``--runs`` runs, each the mean of
``--number`` calls, in microseconds per call. The edge's budget is about 7,000 messages a second
parsed and serialized in one process (500 calls/s), i.e. well under 140 µs for both together.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import timeit
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pbx_edge.sip.message import parse_message

SDP = (
    b"v=0\r\n"
    b"o=alice 2890844526 2890844526 IN IP4 192.0.2.10\r\n"
    b"s=-\r\n"
    b"c=IN IP4 192.0.2.10\r\n"
    b"t=0 0\r\n"
    b"m=audio 49170 RTP/AVP 0 8 101\r\n"
    b"a=rtpmap:0 PCMU/8000\r\n"
    b"a=rtpmap:8 PCMA/8000\r\n"
    b"a=rtpmap:101 telephone-event/8000\r\n"
    b"a=fmtp:101 0-16\r\n"
    b"a=ptime:20\r\n"
    b"a=sendrecv\r\n"
)


def _message(start: str, headers: list[str], body: bytes) -> bytes:
    head = "\r\n".join([start, *headers, f"Content-Length: {len(body)}"]) + "\r\n\r\n"
    return head.encode() + body


INVITE = _message(
    "INVITE sip:1002@pbx.example.com SIP/2.0",
    [
        "Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK776asdhds;rport",
        "Max-Forwards: 70",
        "To: <sip:1002@pbx.example.com>",
        'From: "Alice Smith" <sip:1001@pbx.example.com>;tag=1928301774',
        "Call-ID: a84b4c76e66710@pc33.example.com",
        "CSeq: 314159 INVITE",
        "Contact: <sip:1001@192.0.2.10:5060;transport=udp>",
        "Allow: INVITE, ACK, CANCEL, BYE, OPTIONS, INFO, UPDATE, PRACK, REFER, NOTIFY",
        "Supported: replaces, timer, 100rel",
        "User-Agent: Acme SoftPhone 4.2.1",
        "Content-Type: application/sdp",
    ],
    SDP,
)

OK_200 = _message(
    "SIP/2.0 200 OK",
    [
        "Via: SIP/2.0/UDP 198.51.100.5:5060;branch=z9hG4bK4b43c2ff8.1;received=198.51.100.5",
        "Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK776asdhds;rport=5060;received=192.0.2.10",
        "Record-Route: <sip:198.51.100.5;lr>",
        'From: "Alice Smith" <sip:1001@pbx.example.com>;tag=1928301774',
        "To: <sip:1002@pbx.example.com>;tag=a6c85cf",
        "Call-ID: a84b4c76e66710@pc33.example.com",
        "CSeq: 314159 INVITE",
        "Contact: <sip:1002@192.0.2.20:5060>",
        "Allow: INVITE, ACK, CANCEL, BYE, OPTIONS, INFO, UPDATE, PRACK",
        "Supported: replaces, timer",
        "Server: Acme DeskPhone 2.0",
        "Content-Type: application/sdp",
    ],
    SDP,
)


def _machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"{platform.python_implementation()} {platform.python_version()} on {platform.system()} "
        f"{platform.release()}, {cpu}, {os.cpu_count()} CPUs"
    )


def _time(fn: Callable[[], object], runs: int, number: int) -> tuple[float, float, float]:
    fn()  # warm up (and fail early)
    samples = [t / number * 1e6 for t in timeit.repeat(fn, repeat=runs, number=number)]
    return statistics.median(samples), min(samples), max(samples)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7, help="timing runs (the median is reported)")
    parser.add_argument("--number", type=int, default=5000, help="calls per run")
    args = parser.parse_args(argv)
    print(f"machine: {_machine()}")
    print(f"runs: {args.runs} x {args.number} calls; µs per call (median [min-max])")
    for name, data in (("INVITE", INVITE), ("200 OK", OK_200)):
        message = parse_message(data)
        assert parse_message(bytes(message)) == message
        parse = _time(lambda data=data: parse_message(data), args.runs, args.number)  # type: ignore[misc]
        serialize = _time(message.__bytes__, args.runs, args.number)
        print(
            f"{name:7s} ({len(data)} bytes)  parse {parse[0]:6.2f} [{parse[1]:.2f}-{parse[2]:.2f}]"
            f"  serialize {serialize[0]:6.2f} [{serialize[1]:.2f}-{serialize[2]:.2f}]"
        )


if __name__ == "__main__":
    main()
