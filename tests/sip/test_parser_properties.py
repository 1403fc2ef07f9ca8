"""Property tests of the parser, serializer and framer (hypothesis).

* Valid messages built from typed parts (methods, URIs with parameters and escapes, name-addrs
  with quoted display names, several Vias, bodies) survive ``parse_message(bytes(m)) == m``, also
  when written the way peers write them: compact names, odd case, LWS before the colon, folded
  lines, list headers combined on one line, LF line ends.
* Byte mutations, truncations and insertions of valid messages and of the RFC 4475 fixtures
  never raise anything but :class:`SipParseError`; whatever parses is stable under re-parsing,
  and every accessor and helper the edge calls works on it.
* Any chunking of a stream of messages and keep-alives gives back exactly those messages.
"""

from __future__ import annotations

import os
import string
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pbx_edge.sip.framing import PING, StreamFramer
from pbx_edge.sip.headers import Via
from pbx_edge.sip.message import (
    COMPACT_FORMS,
    Headers,
    Request,
    Response,
    SipParseError,
    canonical_name,
    parse_message,
)
from pbx_edge.sip.responses import check_request, make_response
from pbx_edge.sip.uri import Address, SipUri

FIXTURES = sorted((Path(__file__).parent / "fixtures" / "rfc4475").glob("*.sip"))
FIXTURE_BYTES = [path.read_bytes() for path in FIXTURES]
# Example counts keep the suite quick; SIP_PROPERTY_SCALE=20 (say) makes a proper fuzzing run.
SCALE = float(os.environ.get("SIP_PROPERTY_SCALE", "1"))


def _settings(examples: int) -> settings:
    return settings(
        max_examples=max(1, int(examples * SCALE)),
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


SETTINGS = _settings(100)  # round trips of generated messages
MESSAGE_FUZZ = _settings(150)  # mutations of generated messages (generation dominates)
FIXTURE_FUZZ = _settings(1500)  # mutations of the RFC 4475 fixtures (cheap)
STREAM_SETTINGS = _settings(50)

TOKEN = string.ascii_letters + string.digits + "-.!%*_+`'~"
LOWER_TOKEN = string.ascii_lowercase + string.digits + "-.!%*_+`'~"
UPPER_TOKEN = string.ascii_uppercase + string.digits + "-.!%*_+`'~"
USER_CHARS = string.ascii_letters + string.digits + "-_.!~*'()&=+$,;?/"
PASSWORD_CHARS = string.ascii_letters + string.digits + "-_.!~*'()&=+$,"
# Printable text for header values and reason phrases: no controls, no surrogates.
TEXT = st.characters(blacklist_categories=("Cc", "Cs"), blacklist_characters="\u2028\u2029")

tokens = st.text(TOKEN, min_size=1, max_size=10)
lower_tokens = st.text(LOWER_TOKEN, min_size=1, max_size=10)
methods = st.one_of(
    st.sampled_from(["INVITE", "ACK", "BYE", "CANCEL", "OPTIONS", "REGISTER", "UPDATE", "MESSAGE"]), tokens
)
labels = st.text(string.ascii_lowercase + string.digits, min_size=1, max_size=8)
hostnames = st.lists(labels, min_size=1, max_size=3).map(".".join)
ipv4 = st.tuples(*[st.integers(0, 255)] * 4).map(lambda parts: ".".join(map(str, parts)))
ipv6 = st.ip_addresses(v=6).map(lambda address: f"[{address}]")
hosts = st.one_of(hostnames, ipv4, ipv6)
ports = st.one_of(st.none(), st.integers(1, 65535))
escapes = st.integers(0, 255).map(lambda byte: f"%{byte:02X}")
users = st.lists(st.one_of(st.sampled_from(USER_CHARS), escapes), min_size=1, max_size=10).map("".join)
passwords = st.lists(st.one_of(st.sampled_from(PASSWORD_CHARS), escapes), max_size=6).map("".join)
param_values = st.one_of(st.none(), tokens, ipv4, ipv6)
uri_params = st.dictionaries(lower_tokens, param_values, max_size=3)
uri_headers = st.lists(st.tuples(tokens, tokens).map("=".join), min_size=1, max_size=2).map("&".join)


@st.composite
def sip_uris(draw: st.DrawFn, *, with_headers: bool = False) -> SipUri:
    user = draw(st.one_of(st.none(), users))
    return SipUri(
        scheme=draw(st.sampled_from(["sip", "sips"])),
        user=user,
        password=draw(st.one_of(st.none(), passwords)) if user is not None else None,
        host=draw(hosts),
        port=draw(ports),
        params=draw(uri_params),
        headers=draw(st.one_of(st.none(), uri_headers)) if with_headers else None,
    )


quoted_text = st.lists(
    st.one_of(TEXT.filter(lambda c: c not in '"\\'), st.sampled_from(['\\"', "\\\\"])), max_size=12
)
displays = st.one_of(
    st.none(),
    st.lists(tokens, min_size=1, max_size=3).map(" ".join),
    quoted_text.map(lambda parts: '"' + "".join(parts) + '"'),
)
header_param_values = st.one_of(st.none(), tokens, quoted_text.map(lambda parts: '"' + "".join(parts) + '"'))


@st.composite
def addresses(draw: st.DrawFn, *, tag: bool | None = None, with_headers: bool = False) -> Address:
    uri = draw(sip_uris(with_headers=with_headers))
    params = draw(st.dictionaries(lower_tokens.filter(lambda n: n != "tag"), header_param_values, max_size=2))
    if tag or (tag is None and draw(st.booleans())):
        params["tag"] = draw(tokens)
    display = draw(displays)
    simple = not uri.params and uri.headers is None and not set(uri.user or "") & set(";?,")
    bracketed = display is not None or not simple or draw(st.booleans())
    return Address(uri=uri, display=display, params=params, bracketed=bracketed)


transports = st.one_of(
    st.sampled_from(["UDP", "TCP", "TLS", "SCTP", "WS", "WSS"]), st.text(UPPER_TOKEN, min_size=1, max_size=6)
)


@st.composite
def vias(draw: st.DrawFn) -> Via:
    params: dict[str, str | None] = {"branch": "z9hG4bK" + draw(tokens)}
    params.update(
        draw(st.dictionaries(lower_tokens.filter(lambda n: n != "branch"), param_values, max_size=2))
    )
    return Via(transport=draw(transports), host=draw(hosts), port=draw(ports), params=params)


call_ids = st.text(TOKEN + '()<>:\\"/[]?{}@', min_size=1, max_size=30)
values = st.text(TEXT, max_size=40).map(lambda text: text.strip(" \t"))
KNOWN_EXTRA = ["Subject", "User-Agent", "Server", "Allow", "Supported", "Accept", "Organization", "Date",
               "Expires", "Content-Type", "Priority", "Warning"]  # fmt: skip


def _one_content_type(items: list[tuple[str, str]]) -> list[tuple[str, str]]:
    first = next((i for i, (name, _) in enumerate(items) if name == "Content-Type"), len(items))
    return items[: first + 1] + [item for item in items[first + 1 :] if item[0] != "Content-Type"]


extra_headers = st.lists(
    st.one_of(
        st.tuples(st.sampled_from(KNOWN_EXTRA), values), st.tuples(tokens.map(lambda t: "X-" + t), values)
    ),
    max_size=5,
).map(_one_content_type)
bodies = st.binary(max_size=200)


@st.composite
def requests(draw: st.DrawFn) -> Request:
    method = draw(methods)
    items: list[tuple[str, str]] = [("Via", str(v)) for v in draw(st.lists(vias(), min_size=1, max_size=4))]
    items += [
        ("From", str(draw(addresses(tag=True)))),
        ("To", str(draw(addresses()))),
        ("Call-ID", draw(call_ids)),
        ("CSeq", f"{draw(st.integers(0, 2**31 - 1))} {method}"),
    ]
    if draw(st.booleans()):
        items.append(("Max-Forwards", str(draw(st.integers(0, 255)))))
    items += [("Contact", str(a)) for a in draw(st.lists(addresses(with_headers=True), max_size=2))]
    items += [("Route", f"<{u}>") for u in draw(st.lists(sip_uris(), max_size=2))]
    items += draw(extra_headers)
    ordered = draw(st.permutations(items))
    ruri = draw(sip_uris())
    return Request(headers=Headers(list(ordered)), body=draw(bodies), method=method, uri=str(ruri))


@st.composite
def responses(draw: st.DrawFn) -> Response:
    items: list[tuple[str, str]] = [("Via", str(v)) for v in draw(st.lists(vias(), min_size=1, max_size=3))]
    items += [
        ("From", str(draw(addresses(tag=True)))),
        ("To", str(draw(addresses()))),
        ("Call-ID", draw(call_ids)),
        ("CSeq", f"{draw(st.integers(0, 2**31 - 1))} {draw(methods)}"),
    ]
    items += [("Contact", str(a)) for a in draw(st.lists(addresses(), max_size=1))]
    items += [("Record-Route", f"<{u}>") for u in draw(st.lists(sip_uris(), max_size=2))]
    items += draw(extra_headers)
    reason = draw(st.text(TEXT, max_size=20))
    return Response(
        headers=Headers(list(draw(st.permutations(items)))),
        body=draw(bodies),
        status=draw(st.integers(100, 699)),
        reason=reason,
    )


messages = st.one_of(requests(), responses())


def assert_usable(message: Request | Response) -> None:
    """What the edge does with a message that parsed: none of it may raise."""
    assert parse_message(bytes(message)) == message
    _ = (message.call_id, message.cseq, message.vias, message.top_via, message.from_tag, message.to_tag)
    _ = (message.from_addr, message.to_addr, message.contacts, message.option_tags("Require"))
    if isinstance(message, Request):
        _ = message.request_uri
        check_request(message, {"100rel", "timer"})
        response = make_response(message, 200, "OK", to_tag="edge1")
        assert isinstance(parse_message(bytes(response)), Response)


# --- round trips -------------------------------------------------------------------------------


@SETTINGS
@given(messages)
def test_serialized_message_parses_back_equal(message: Request | Response) -> None:
    data = bytes(message)
    assert parse_message(data) == message
    assert parse_message(data, stream=True) == message
    assert_usable(message)


@SETTINGS
@given(sip_uris(with_headers=True))
def test_uri_round_trip(uri: SipUri) -> None:
    assert SipUri.parse(str(uri)) == uri


@SETTINGS
@given(addresses(with_headers=True))
def test_address_round_trip(address: Address) -> None:
    assert Address.parse(str(address)) == address


@SETTINGS
@given(vias())
def test_via_round_trip(via: Via) -> None:
    assert Via.parse(str(via)) == via


REVERSE_COMPACT = {full: short for short, full in COMPACT_FORMS.items()}


@st.composite
def peer_spellings(draw: st.DrawFn, message: Request | Response) -> bytes:
    """``message`` as a peer might write it: same meaning, different bytes."""
    lines: list[str] = []
    items = list(message.headers)
    i = 0
    while i < len(items):
        name, value = items[i]
        values = [value]
        if name in ("Via", "Route", "Record-Route", "Contact") and draw(st.booleans()):
            while i + 1 < len(items) and items[i + 1][0] == name:  # combine on one line
                i += 1
                values.append(items[i][1])
        i += 1
        spelled = name
        if name in REVERSE_COMPACT and draw(st.booleans()):
            spelled = REVERSE_COMPACT[name]
        elif draw(st.booleans()):
            spelled = "".join(c.upper() if draw(st.booleans()) else c.lower() for c in name)
            if canonical_name(spelled) != name:  # an unknown name keeps the spelling it came with
                spelled = name
        before = draw(st.sampled_from(["", "", " ", "\t", "  "]))
        after = draw(st.sampled_from(["", " ", " ", "  ", "\t"]))
        text = draw(st.sampled_from([",", ", ", " ,", " , "])).join(values)
        if draw(st.booleans()):  # fold at lone spaces: unfolding turns the fold back into one SP
            text = "".join(
                "\r\n " if ch == " " and 0 < j < len(text) - 1 and text[j - 1] not in " \t"
                and text[j + 1] not in " \t" and draw(st.integers(0, 3)) == 0 else ch
                for j, ch in enumerate(text)
            )  # fmt: skip
        lines.append(f"{spelled}{before}:{after}{text}")
    if isinstance(message, Request):
        start = f"{message.method} {message.uri} SIP/2.0"
    else:
        start = f"SIP/2.0 {message.status} {message.reason}"
    length = f"{draw(st.sampled_from(['Content-Length', 'l', 'CONTENT-length']))}: {len(message.body)}"
    lines.insert(draw(st.integers(0, len(lines))), length)
    head = "\r\n".join([start, *lines]) + "\r\n\r\n"
    if draw(st.booleans()):
        head = head.replace("\r\n", "\n")
    return draw(st.sampled_from([b"", b"\r\n", b"\r\n\r\n"])) + head.encode() + message.body


@SETTINGS
@given(st.data())
def test_peer_spellings_parse_to_the_same_message(data: st.DataObject) -> None:
    message = data.draw(messages)
    wire = data.draw(peer_spellings(message))
    assert parse_message(wire) == message


# --- mutations -------------------------------------------------------------------------------

INTERESTING = [
    b"\r\n", b"\r", b"\n", b" ", b"\t", b":", b";", b",", b"<", b">", b'"', b"\\", b"=", b"@", b"\x00",
    b"\xff", b"\xc3", b"%", b"?", b"SIP/2.0", b"\r\n ", b"\r\n\r\n", b"Content-Length: 99\r\n",
    b"v: SIP/2.0/UDP h\r\n", b"9" * 12, "\u00e9".encode(),
]  # fmt: skip


@st.composite
def mutated(draw: st.DrawFn, source: st.SearchStrategy[bytes]) -> bytes:
    data = bytearray(draw(source))
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.sampled_from(["flip", "insert", "delete", "truncate", "duplicate", "replace"]))
        at = draw(st.integers(0, len(data)))
        if op == "flip" and data:
            data[min(at, len(data) - 1)] ^= 1 << draw(st.integers(0, 7))
        elif op == "insert":
            data[at:at] = draw(st.one_of(st.sampled_from(INTERESTING), st.binary(min_size=1, max_size=4)))
        elif op == "delete":
            del data[at : at + draw(st.integers(1, 8))]
        elif op == "truncate":
            del data[at:]
        elif op == "duplicate":
            data[at:at] = data[at : at + draw(st.integers(1, 40))]
        elif op == "replace" and data:
            data[min(at, len(data) - 1)] = draw(st.sampled_from(b'\r\n \t:;,<>"\\=@%?\x00\x7f\xff'))
    return bytes(data)


def parse_or_reject(data: bytes, *, stream: bool = False) -> None:
    try:
        message = parse_message(data, stream=stream)
    except SipParseError as exc:
        assert exc.reason and exc.reason.isprintable() and len(exc.reason) <= 200
        assert exc.status in (400, 505, 513)
        if exc.partial is not None:
            assert isinstance(exc.partial, Request)
            response = make_response(exc.partial, exc.status, exc.reason)
            bytes(response)
            check_request(exc.partial, set())
        return
    assert_usable(message)


@MESSAGE_FUZZ
@given(mutated(messages.map(bytes)), st.booleans())
def test_mutated_messages_parse_or_raise_sip_parse_error(data: bytes, stream: bool) -> None:
    parse_or_reject(data, stream=stream)


@FIXTURE_FUZZ
@given(mutated(st.sampled_from(FIXTURE_BYTES)), st.booleans())
def test_mutated_rfc4475_fixtures_parse_or_raise_sip_parse_error(data: bytes, stream: bool) -> None:
    parse_or_reject(data, stream=stream)


@FIXTURE_FUZZ
@given(st.binary(max_size=300))
def test_random_bytes_parse_or_raise_sip_parse_error(data: bytes) -> None:
    parse_or_reject(data)
    parse_or_reject(b"INVITE sip:a@b SIP/2.0\r\n" + data)


@FIXTURE_FUZZ
@given(st.sampled_from(FIXTURE_BYTES), st.integers(0, 2000))
def test_truncated_fixtures(data: bytes, cut: int) -> None:
    parse_or_reject(data[:cut])
    parse_or_reject(data[:cut], stream=True)


# --- framing -------------------------------------------------------------------------------


@STREAM_SETTINGS
@given(st.lists(messages.map(bytes), min_size=1, max_size=4), st.data())
def test_any_chunking_gives_back_the_messages(wires: list[bytes], data: st.DataObject) -> None:
    stream = b"".join(data.draw(st.sampled_from([b"", PING, b"\r\n"])) + wire for wire in wires)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=10)))
    framer = StreamFramer()
    out: list[bytes] = []
    start = 0
    for cut in [*cuts, len(stream)]:
        out += framer.feed(stream[start:cut])
        start = cut
    assert out == wires
    assert [parse_message(wire, stream=True) for wire in out] == [parse_message(wire) for wire in wires]


@STREAM_SETTINGS
@given(mutated(st.lists(messages.map(bytes), min_size=1, max_size=3).map(b"".join)), st.integers(1, 64))
def test_framer_on_mutated_streams_only_raises_sip_parse_error(stream: bytes, chunk: int) -> None:
    framer = StreamFramer(max_size=4096)
    try:
        for i in range(0, len(stream), chunk):
            for wire in framer.feed(stream[i : i + chunk]):
                parse_or_reject(wire, stream=True)
    except SipParseError as exc:
        assert exc.reason and framer.error is exc
