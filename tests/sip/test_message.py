"""The message model, parser and serializer, and the response helpers built on them."""

from __future__ import annotations

import pytest

from pbx_edge.sip.message import (
    MAX_MESSAGE_SIZE,
    Headers,
    Request,
    Response,
    SipParseError,
    canonical_name,
    parse_message,
)
from pbx_edge.sip.responses import check_request, make_response

SDP = b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n"
SUPPORTED = {"100rel", "timer"}


def wire(
    *lines: str, body: bytes = b"", length: bool = True, start: str = "INVITE sip:bob@b.example SIP/2.0"
) -> bytes:
    head = [start, *lines]
    if length:
        head.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


BASE = (
    "Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK1;rport",
    "Max-Forwards: 70",
    "From: Alice <sip:alice@a.example>;tag=a1",
    "To: <sip:bob@b.example>",
    "Call-ID: c1@192.0.2.1",
    "CSeq: 1 INVITE",
    "Contact: <sip:alice@192.0.2.1>",
)


def invite(*extra: str, body: bytes = SDP, **kw: object) -> bytes:
    lines = [*BASE, *extra]
    if body:
        lines.append("Content-Type: application/sdp")
    return wire(*lines, body=body, **kw)  # type: ignore[arg-type]


def parse_request(data: bytes, *, stream: bool = False) -> Request:
    message = parse_message(data, stream=stream)
    assert isinstance(message, Request)
    return message


def error(data: bytes, **kw: object) -> SipParseError:
    with pytest.raises(SipParseError) as info:
        parse_message(data, **kw)  # type: ignore[arg-type]
    exc = info.value
    assert exc.reason and exc.reason.isprintable() and len(exc.reason) <= 200
    return exc


# --- names and Headers ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "canonical"),
    [
        ("i", "Call-ID"),
        ("I", "Call-ID"),
        ("CALL-id", "Call-ID"),
        ("v", "Via"),
        ("m", "Contact"),
        ("l", "Content-Length"),
        ("cseq", "CSeq"),
        ("www-authenticate", "WWW-Authenticate"),
        ("X-Custom", "X-Custom"),
        ("x-custom", "x-custom"),
        ("x", "Session-Expires"),
        ("q", "q"),
    ],
)
def test_canonical_name(name: str, canonical: str) -> None:
    assert canonical_name(name) == canonical


def test_headers_api() -> None:
    headers = Headers([("via", "a"), ("To", "t"), ("v", "b"), ("X-A", "1")])
    assert list(headers) == [("Via", "a"), ("To", "t"), ("Via", "b"), ("X-A", "1")]
    assert headers.get("VIA") == "a" and headers.get_all("v") == ["a", "b"]
    assert headers.get("Missing") is None and headers.get("Missing", "d") == "d"
    assert "to" in headers and "From" not in headers and 3 not in headers
    headers.prepend("Via", "z")
    assert headers.get_all("Via") == ["z", "a", "b"]
    headers.prepend("Route", "r")  # none yet: goes on top
    assert next(iter(headers)) == ("Route", "r")
    copy = headers.copy()
    headers.set("Via", "only")
    assert headers.get_all("Via") == ["only"] and copy.get_all("Via") == ["z", "a", "b"]
    headers.set("New", "n")
    assert headers.get("new") == "n"
    headers.set_all("Via", ["1", "2"])
    assert headers.get_all("Via") == ["1", "2"]
    headers.set_all("Record-Route", ["rr"])
    assert headers.get("Record-Route") == "rr"
    assert headers.pop_first("via") == "1" and headers.pop_first("Nope") is None
    headers.remove("Via")
    assert headers.get_all("Via") == []
    assert len(headers) == len(list(headers))
    assert Headers([("a", "1")]) == Headers([("a", "1")]) != Headers([("a", "2")])
    assert "a" in repr(Headers([("a", "1")]))


def test_name_caches_stay_small() -> None:
    from pbx_edge.sip import message

    for i in range(50):
        with pytest.raises(SipParseError):
            parse_message(invite("x" * 5000 + str(i)))  # a long line without a colon
        parse_message(invite(f"X-Invented-{i}-{'y' * 80}: 1"))
    assert all(len(name) <= 64 for name in message._PARSE_NAME_CACHE)
    assert all(len(name) <= 64 for name in message._NAME_CACHE)


# --- round trips ------------------------------------------------------------------------------


def test_built_request_round_trips() -> None:
    request = Request(
        headers=Headers([(n, v) for n, _, v in (line.partition(": ") for line in BASE)]),
        body=SDP,
        method="INVITE",
        uri="sip:bob@b.example",
    )
    data = bytes(request)
    assert data.startswith(b"INVITE sip:bob@b.example SIP/2.0\r\nVia: ")
    assert f"Content-Length: {len(SDP)}\r\n\r\n".encode() + SDP in data
    assert parse_message(data) == request
    assert parse_message(data, stream=True) == request


def test_built_response_round_trips() -> None:
    response = Response(headers=Headers([("Via", "SIP/2.0/UDP h;branch=z9hG4bKx"), ("CSeq", "1 BYE")]))
    response.headers.add("From", "<sip:a@h>;tag=1")
    response.headers.add("To", "<sip:b@h>;tag=2")
    response.headers.add("Call-ID", "x")
    assert parse_message(bytes(response)) == response


def test_compact_and_odd_spelling_read_back_canonical() -> None:
    data = wire(
        "v : SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK1",
        "f:<sip:a@h>;tag=1",
        "T: sip:b@h",
        "i:  c1",
        "CSEQ: 1 INVITE",
        "l: 0",
        length=False,
    )
    request = parse_request(data)
    assert [name for name, _ in request.headers] == ["Via", "From", "To", "Call-ID", "CSeq"]
    assert request.call_id == "c1" and request.from_tag == "1" and request.cseq.seq == 1


def test_list_headers_are_split_on_top_level_commas_only() -> None:
    request = parse_request(
        invite(
            'Route: <sip:p1;lr>, "Proxy, Two" <sip:p2;lr>',
            "Record-Route: <sip:r1;lr>,<sip:r2;lr>",
            "Allow: INVITE, ACK",
            "Via: SIP/2.0/TCP h2;branch=z9hG4bK2, SIP/2.0/TCP h3;branch=z9hG4bK3",
        )
    )
    assert request.headers.get_all("Route") == ["<sip:p1;lr>", '"Proxy, Two" <sip:p2;lr>']
    assert request.headers.get_all("Record-Route") == ["<sip:r1;lr>", "<sip:r2;lr>"]
    assert request.headers.get("Allow") == "INVITE, ACK"
    assert [via.host for via in request.vias] == ["192.0.2.1", "h2", "h3"]


def test_contact_star() -> None:
    register = wire(
        *(line.replace("INVITE", "REGISTER") for line in BASE if not line.startswith("Contact")),
        "Contact: *",
        "Expires: 0",
        start="REGISTER sip:b.example SIP/2.0",
    )
    request = parse_request(register)
    assert request.headers.get("Contact") == "*" and request.contacts == []


# --- framing of the body -------------------------------------------------------------------


def test_datagram_without_content_length_takes_the_rest() -> None:
    assert parse_request(invite(length=False)).body == SDP


def test_stream_needs_content_length() -> None:
    exc = error(invite(length=False), stream=True)
    assert exc.reason == "Missing Content-Length" and exc.partial is not None


def test_content_length_shorter_than_datagram_truncates() -> None:
    data = invite() + b"trailing junk"
    assert parse_request(data).body == SDP


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("9999", "Content-Length Exceeds Body"),
        ("-1", "Invalid Content-Length '-1'"),
        ("+5", "Invalid Content-Length '+5'"),
        ("five", "Invalid Content-Length 'five'"),
        ("\u0661\u0662", "Invalid Content-Length '\u0661\u0662'"),
        ("1234567890", "Invalid Content-Length '1234567890'"),
    ],
)
def test_bad_content_length_is_400(value: str, reason: str) -> None:
    exc = error(wire(*BASE, f"Content-Length: {value}", length=False) + SDP)
    assert exc.reason == reason and exc.partial is not None and exc.status == 400


def test_content_length_repeated() -> None:
    same = wire(*BASE, "Content-Length: 3", "l: 3", length=False) + b"abc"
    assert parse_request(same).body == b"abc"
    exc = error(wire(*BASE, "Content-Length: 3", "l: 2", length=False) + b"abc")
    assert exc.reason == "Conflicting Content-Length"


def test_bare_lf_line_ends_are_tolerated() -> None:
    body = SDP.replace(b"\r\n", b"\n")
    data = invite(body=body).replace(b"\r\n", b"\n")
    request = parse_request(data)
    assert request.call_id == "c1@192.0.2.1" and request.body == body
    mixed = invite(body=body).replace(b"\r\nCall-ID", b"\nCall-ID")
    assert parse_request(mixed).call_id == "c1@192.0.2.1"
    stray_cr = invite().replace(b"\r\nCall-ID", b"\rCall-ID")
    assert error(stray_cr).reason == "Invalid Character in Header"


@pytest.mark.parametrize("terminator", [b"\r\n\r\n", b"\n\n", b"\r\n\n", b"\n\r\n"])
def test_every_mix_of_crlf_and_lf_ends_the_header_block(terminator: bytes) -> None:
    head = wire(*BASE, length=False)[:-4]
    request = parse_request(head + terminator + b"body\r\n\r\nmore")
    assert request.body == b"body\r\n\r\nmore" and request.call_id == "c1@192.0.2.1"


def test_continuation_after_an_lf_then_crlf_is_the_body() -> None:
    """Found by atheris: ``\n\r\n`` ends the block, so a folded line after it is body."""
    data = wire(*BASE, length=False)[:-4] + b"\nX-A: 1\n\r\n RTP/AVP 0\n"
    assert parse_request(data).body == b" RTP/AVP 0\n"


def test_header_block_without_empty_line() -> None:
    data = wire(*BASE, body=b"", length=False)[:-2]  # ends with the last header's CRLF
    assert parse_request(data).body == b""
    assert error(data, stream=True).reason == "Missing Empty Line After Headers"
    assert error(data[:-2]).reason == "Missing Empty Line After Headers"


def test_leading_crlf_and_empty_datagrams() -> None:
    assert parse_request(b"\r\n\r\n" + invite()).method == "INVITE"
    assert error(b"\r\n\r\n").reason == "Empty Message"
    assert error(b"").reason == "Empty Message"


# --- start line ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("start", "reason"),
    [
        ("INVITE  sip:bob@b.example SIP/2.0", "Malformed Request Line"),
        ("INVITE sip:bob@b.example SIP/2.0 ", "Malformed Request Line"),
        ("INVITE sip:bob@b.example;x y SIP/2.0", "Malformed Request Line"),
        ("INVITE <sip:bob@b.example> SIP/2.0", "Invalid Request-URI (invalid URI scheme '<sip')"),
        ("INVITE sip:bob@b.example?Subject=x SIP/2.0", "Request-URI Must Not Contain Headers"),
        ("INVITE sip:@b.example SIP/2.0", "Invalid Request-URI (empty user part in 'sip:@b.example')"),
    ],
)
def test_broken_request_line_is_answerable(start: str, reason: str) -> None:
    exc = error(invite(start=start))
    assert exc.reason == reason and exc.partial is not None and exc.status == 400
    assert exc.partial.method == "INVITE"


@pytest.mark.parametrize(
    "start",
    ["GET / HTTP/1.1", "INVITE sip:bob@b.example", "IN\x00VITE sip:b SIP/2.0", "INVITE sip:b SIP/2"],
)
def test_unrecognisable_request_line_is_dropped(start: str) -> None:
    exc = error(invite(start=start))
    assert exc.partial is None
    assert exc.reason.startswith("Malformed Request Line") or exc.reason == "Invalid Character in Header"


def test_other_sip_version_is_505_with_partial() -> None:
    exc = error(invite(start="INVITE sip:bob@b.example SIP/3.0"))
    assert exc.status == 505 and exc.reason == "Version Not Supported"
    assert exc.partial is not None and exc.partial.version == "SIP/3.0"
    assert check_request(exc.partial, SUPPORTED) == (505, "Version Not Supported")
    assert bytes(exc.partial).startswith(b"INVITE sip:bob@b.example SIP/3.0\r\n")


def test_lower_case_version_is_sip_2_0() -> None:
    request = parse_request(invite(start="INVITE sip:bob@b.example sip/2.0"))
    assert request.version == "SIP/2.0" and bytes(request).startswith(b"INVITE sip:bob@b.example SIP/2.0")


def test_request_version_is_not_an_init_argument() -> None:
    request = Request(method="OPTIONS", uri="sip:h")
    assert request.version == "SIP/2.0"
    assert "version" not in repr(request)


@pytest.mark.parametrize(
    ("start", "status", "reason"),
    [("SIP/2.0 200 OK", 200, "OK"), ("SIP/2.0 180 ", 180, ""), ("SIP/2.0 100", 100, ""),
     ("SIP/2.0 486 Busy  Here ", 486, "Busy  Here "), ("SIP/2.0 699 x", 699, "x")],
)  # fmt: skip
def test_status_line(start: str, status: int, reason: str) -> None:
    data = wire(*BASE, start=start)
    response = parse_message(data)
    assert isinstance(response, Response) and (response.status, response.reason) == (status, reason)
    assert parse_message(bytes(response)) == response


@pytest.mark.parametrize(
    "start", ["SIP/2.0 099 x", "SIP/2.0 700 x", "SIP/2.0 20 x", "SIP/3.0 200 OK", "SIP/2.0 2OO OK"]
)
def test_bad_status_line_is_dropped(start: str) -> None:
    assert error(wire(*BASE, start=start)).partial is None


# --- header lines --------------------------------------------------------------------------


def test_folded_lines_are_joined() -> None:
    data = invite("Subject: first\r\n second\r\n\t third", "X-Empty:\r\n  value")
    request = parse_request(data)
    assert request.headers.get("Subject") == "first second third"
    assert request.headers.get("X-Empty") == "value"


def test_continuation_of_the_start_line_is_400() -> None:
    data = invite().replace(b"SIP/2.0\r\n", b"SIP/2.0\r\n continued\r\n", 1)
    exc = error(data)
    assert exc.reason == "Continuation Line After Start Line" and exc.partial is not None


@pytest.mark.parametrize("line", ["No colon here", "Bad Name: x", ": empty name", "Na<me: x", "X\x7f: y"])
def test_malformed_header_line_is_400(line: str) -> None:
    exc = error(invite(line))
    assert exc.partial is not None
    assert exc.reason.startswith("Malformed Header Line") or exc.reason == "Invalid Character in Header"


@pytest.mark.parametrize(
    "value", ["a\x00b", "a\x07", "a\x1b[31m", "a\rb", "a\nb"], ids=["nul", "bel", "esc", "cr", "lf"]
)
def test_control_characters_are_400(value: str) -> None:
    exc = error(invite(f"Subject: {value}"))
    assert exc.partial is not None  # the headers copied into a response are clean


def test_control_characters_in_copied_headers_are_never_echoed() -> None:
    exc = error(wire(*(b.replace("c1@192.0.2.1", "c1\x00x") for b in BASE)))
    assert exc.reason == "Invalid Character in Header" and exc.partial is None


def test_quoted_pair_control_characters_are_allowed() -> None:
    request = parse_request(invite('X-Q: "a\\\x00b\\\x7f"'))
    assert request.headers.get("X-Q") == '"a\\\x00b\\\x7f"'


def test_non_utf8_header_bytes_round_trip() -> None:
    data = invite().replace(b"Max-Forwards: 70", b"X-Latin1: caf\xe9\r\nMax-Forwards: 70")
    request = parse_request(data)
    assert bytes(request) == data
    assert parse_message(bytes(request)) == request


def test_utf8_values_round_trip() -> None:
    data = invite('Subject: "caf\u00e9 \u2603"').replace(b"Alice", "J\u00fcrgen".encode())
    request = parse_request(data)
    assert request.headers.get("Subject") == '"caf\u00e9 \u2603"'
    assert request.from_addr.display == "J\u00fcrgen"  # unquoted UTF-8: tolerated
    assert bytes(request) == data


# --- validation ------------------------------------------------------------------------------


@pytest.mark.parametrize("missing", ["Via", "From", "To", "Call-ID", "CSeq"])
def test_missing_required_header_is_dropped(missing: str) -> None:
    exc = error(wire(*(line for line in BASE if not line.startswith(missing + ":"))))
    assert exc.reason == f"Missing {missing} Header" and exc.partial is None


@pytest.mark.parametrize(
    "duplicate",
    ["From: <sip:x@h>;tag=2", "To: <sip:y@h>", "Call-ID: other", "CSeq: 2 INVITE", "Max-Forwards: 9",
     "Content-Type: text/plain"],
)  # fmt: skip
def test_duplicate_single_header_is_400(duplicate: str) -> None:
    exc = error(invite(duplicate))
    assert exc.reason == f"Duplicate {duplicate.partition(':')[0]} Header" and exc.partial is not None


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("Via: SIP/2.0/UDP h;branch=z9hG4bK2,,", "Empty Element in Via Header"),
        ("Contact: <sip:a@h>,", "Empty Element in Contact Header"),
        ("Route: <sip:p;lr>;;", "Invalid Route Header (empty parameter in '<sip:p;lr>;;')"),
        ("Record-Route: sip:p?x=1", "Invalid Record-Route Header"),
        ("Max-Forwards: 256", "Duplicate Max-Forwards Header"),
    ],
)
def test_invalid_list_header_is_400(line: str, reason: str) -> None:
    exc = error(invite(line))
    assert exc.reason.startswith(reason) and exc.partial is not None


@pytest.mark.parametrize(
    ("old", "new", "reason"),
    [
        ("CSeq: 1 INVITE", "CSeq: 1 BYE", "CSeq Method 'BYE' Does Not Match 'INVITE'"),
        ("CSeq: 1 INVITE", "CSeq: 2147483648 INVITE", "Invalid CSeq Header (CSeq number 2147483648 exceeds"),
        ("CSeq: 1 INVITE", "CSeq: one INVITE", "Invalid CSeq Header (invalid CSeq number 'one')"),
        ("Max-Forwards: 70", "Max-Forwards: 256", "Invalid Max-Forwards Header '256'"),
        ("Max-Forwards: 70", "Max-Forwards: -1", "Invalid Max-Forwards Header '-1'"),
        ("Call-ID: c1@192.0.2.1", "Call-ID: a b", "Invalid Call-ID Header"),
        ("branch=z9hG4bK1;rport", "branch=z9hG4bK;rport", "Missing Transaction Identifier"),
        (
            "SIP/2.0/UDP 192.0.2.1:5060",
            "SIP/2.0/UDP 192.0.2.1:99999",
            "Invalid Via Header (port out of range",
        ),
        ("From: Alice <", "From: Al,ice <", "Invalid From Header (invalid display name"),
        ("To: <sip:bob@b.example>", "To: < sip:bob@b.example>", "Invalid To Header"),
        ("Contact: <sip:alice@192.0.2.1>", "Contact: <sip:alice@192.0.2.1", "Invalid Contact Header"),
    ],
)
def test_invalid_header_value_is_400(old: str, new: str, reason: str) -> None:
    data = invite()
    assert old.encode() in data
    exc = error(data.replace(old.encode(), new.encode(), 1))
    assert exc.reason.startswith(reason) and exc.partial is not None and exc.status == 400


def test_leading_zeros_and_lws_are_fine() -> None:
    data = (
        invite()
        .replace(b"CSeq: 1 INVITE", b"CSeq:  0001   INVITE")
        .replace(b"Max-Forwards: 70", b"Max-Forwards: 0070")
    )
    request = parse_request(data)
    assert request.cseq.seq == 1 and request.headers.get("Max-Forwards") == "0070"


def test_expires_and_date_are_not_judged_by_the_parser() -> None:
    request = parse_request(invite("Expires: soon", "Date: yesterday"))
    assert request.headers.get("Expires") == "soon"


def test_a_parsed_message_never_makes_an_accessor_raise() -> None:
    request = parse_request(invite("Route: <sip:p1;lr>", "Record-Route: <sip:r1;lr>"))
    assert request.call_id and request.cseq.method == "INVITE" and request.top_via.branch == "z9hG4bK1"
    assert [via.host for via in request.vias] == ["192.0.2.1"]
    assert request.from_addr.display == "Alice" and request.to_addr.uri.user == "bob"
    assert (request.from_tag, request.to_tag) == ("a1", None)
    assert [str(c.uri) for c in request.contacts] == ["sip:alice@192.0.2.1"]
    assert request.request_uri.host == "b.example"


# --- size limits -------------------------------------------------------------------------------


def test_message_too_large_is_513_with_partial() -> None:
    data = invite(body=b"x" * 2000)
    exc = error(data, max_size=1024)
    assert exc.reason == "Message Too Large" and exc.status == 513 and exc.partial is not None
    assert parse_request(data, stream=False).body == b"x" * 2000  # default limit: fine


def test_header_block_too_large_is_dropped() -> None:
    exc = error(invite("X-Big: " + "y" * 2000), max_size=1024)
    assert exc.status == 513 and exc.partial is None
    assert MAX_MESSAGE_SIZE == 65535


# --- make_response -------------------------------------------------------------------------


def test_make_response_copies_the_rfc_3261_headers() -> None:
    request = parse_request(invite("Via: SIP/2.0/TCP proxy;branch=z9hG4bKp", "Timestamp: 54"))
    response = make_response(request, 180, "Ringing", to_tag="t1")
    assert response.status == 180 and response.reason == "Ringing" and response.body == b""
    assert response.headers.get_all("Via") == request.headers.get_all("Via")
    assert [name for name, _ in response.headers] == ["Via", "Via", "From", "To", "Call-ID", "CSeq"]
    assert response.headers.get("To") == "<sip:bob@b.example>;tag=t1"
    assert response.to_tag == "t1" and response.from_tag == "a1"
    assert parse_message(bytes(response)) == response


def test_make_response_keeps_an_existing_to_tag() -> None:
    data = invite().replace(b"To: <sip:bob@b.example>", b"To: sip:bob@b.example ; tag = old")
    response = make_response(parse_request(data), 200, "OK", to_tag="new")
    assert response.headers.get("To") == "sip:bob@b.example ; tag = old" and response.to_tag == "old"


def test_make_response_copies_an_unreadable_to_verbatim() -> None:
    exc = error(invite().replace(b"To: <sip:bob@b.example>", b'To: "Mr. J. User <sip:j@h>'))
    assert exc.partial is not None
    response = make_response(exc.partial, 400, exc.reason, to_tag="t")
    assert response.headers.get("To") == '"Mr. J. User <sip:j@h>'


def test_100_trying_copies_timestamp_and_reason_is_sanitised() -> None:
    request = parse_request(invite("Timestamp: 54.2 0.1"))
    assert make_response(request, 100, "Trying").headers.get("Timestamp") == "54.2 0.1"
    assert make_response(request, 180, "Ringing").headers.get("Timestamp") is None
    assert make_response(request, 400, "Bad\r\nX: y").reason == "Bad??X: y"


# --- check_request -----------------------------------------------------------------------------


def check(data: bytes, supported: set[str] = SUPPORTED) -> tuple[int, str] | None:
    return check_request(parse_request(data), supported)


def test_check_request_passes_a_plain_invite() -> None:
    assert check(invite()) is None
    assert check(invite("Require: 100rel, Timer")) is None
    assert check(invite(body=b"")) is None


def test_check_request_416_for_other_schemes() -> None:
    assert check(invite(start="INVITE tel:+15550100 SIP/2.0")) == (416, "Unsupported URI Scheme")
    assert check(invite(start="INVITE SIPS:bob@b.example SIP/2.0")) is None


def test_check_request_483() -> None:
    assert check(invite().replace(b"Max-Forwards: 70", b"Max-Forwards: 0")) == (483, "Too Many Hops")
    assert check(invite().replace(b"Max-Forwards: 70", b"Max-Forwards: 1")) is None

    def options(to: str = "<sip:bob@b.example>", method: str = "OPTIONS") -> bytes:
        lines = [line.replace("INVITE", method) for line in BASE if not line.startswith(("To", "Max"))]
        return wire(*lines, f"To: {to}", "Max-Forwards: 0", start=f"{method} sip:bob@b.example SIP/2.0")

    assert check(options()) is None  # answered by the edge itself
    assert check(options("<sip:bob@b.example>;tag=x")) == (483, "Too Many Hops")  # relayed in-dialog
    assert check(options(method="REGISTER")) is None
    assert check(options(method="CANCEL")) is None
    assert check(options(method="BYE")) == (483, "Too Many Hops")


def test_check_request_420() -> None:
    assert check(invite("Require: 100rel, foo")) == (420, "Bad Extension")
    assert check(invite("Proxy-Require: foo")) is None  # the edge is a UAS to the caller
    cancel = invite("Require: foo", body=b"").replace(b"INVITE", b"CANCEL")
    assert check(cancel) is None
    ack = invite("Require: foo", body=b"").replace(b"INVITE", b"ACK")
    assert check(ack) is None


def test_check_request_415_and_406() -> None:
    assert check(invite().replace(b"application/sdp", b"application/SDP; charset=utf-8")) is None
    assert check(invite().replace(b"application/sdp", b"text/plain")) == (415, "Unsupported Media Type")
    assert check(invite("Content-Encoding: gzip")) == (415, "Unsupported Media Type")
    assert check(invite("Accept: text/html")) == (406, "Not Acceptable")
    assert check(invite("Accept: text/html, application/*;q=0.5")) is None
    assert check(invite("Accept: */*")) is None
    message = invite(body=b"").replace(b"INVITE", b"MESSAGE")
    text_body = message.replace(b"Content-Length: 0", b"Content-Type: text/plain\r\nContent-Length: 0")
    assert check(text_body) is None


def test_check_request_never_raises_on_built_requests() -> None:
    assert check_request(Request(method="INVITE", uri=""), SUPPORTED) == (416, "Unsupported URI Scheme")
    broken = Request(headers=Headers([("To", "<<<"), ("Max-Forwards", "0")]), method="OPTIONS", uri="sip:h")
    assert check_request(broken, SUPPORTED) is None
