"""SIP URIs, name-addr/addr-spec, parameters, and the Via/CSeq views."""

from __future__ import annotations

import pytest

from pbx_edge.sip.headers import (
    BRANCH_MAGIC,
    CSeq,
    Via,
    is_valid_method,
    split_comma_list,
    split_list,
)
from pbx_edge.sip.uri import Address, SipUri, is_token, join_params, parse_hostport, quoted_end, split_params

# --- SipUri ------------------------------------------------------------------------------------


def test_sip_uri_parts() -> None:
    uri = SipUri.parse(
        "sips:alice:secret@Atlanta.example.com:5061;transport=TCP;Lr;maddr=[::1]?subject=x&y=z"
    )
    assert (uri.scheme, uri.user, uri.password, uri.host, uri.port) == (
        "sips",
        "alice",
        "secret",
        "Atlanta.example.com",
        5061,
    )
    assert uri.params == {"transport": "TCP", "lr": None, "maddr": "[::1]"}
    assert uri.headers == "subject=x&y=z" and uri.opaque is None
    assert uri.transport == "TLS"
    assert str(uri) == "sips:alice:secret@Atlanta.example.com:5061;transport=TCP;lr;maddr=[::1]?subject=x&y=z"


@pytest.mark.parametrize(
    "text",
    [
        "sip:h",
        "sip:host.example.com:5060",
        "sip:+15550100@gw.example;user=phone",
        "sip:alice@192.0.2.1:5062;transport=udp;ob",
        "sip:[2001:db8::1]",
        "sip:bob@[2001:db8::1]:5070;maddr=239.255.255.1;ttl=15",
        "sip:user;par=u%40example.net@example.com",
        "sip:1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*:&it+has=1,weird!*pas$wo~d_too.(doesn't-it)@h",
        "sip:%00@h",
        "sip:*98#@pbx.example",
        "sip:user@h?Route=%3Csip:sip.example.com%3E",
        "tel:+1-201-555-0123;phone-context=example.com",
        "urn:service:sos",
        "mailto:alice@example.com",
        "soap.beep://192.0.2.103:3002",
    ],
)
def test_sip_uri_round_trips(text: str) -> None:
    uri = SipUri.parse(text)
    assert str(uri) == text
    assert SipUri.parse(str(uri)) == uri


def test_scheme_is_case_insensitive_and_opaque_keeps_text() -> None:
    assert SipUri.parse("SIP:bob@h").scheme == "sip"
    tel = SipUri.parse("TEL:+4930123")
    assert (tel.scheme, tel.opaque, tel.host) == ("tel", "+4930123", "")
    assert tel.aor() == "tel:+4930123"


def test_user_part_rules() -> None:
    uri = SipUri.parse("sip:user;par=u%40example.net@example.com")
    assert uri.user == "user;par=u%40example.net" and uri.user_unescaped == "user;par=u@example.net"
    assert uri.host == "example.com" and uri.params == {}
    odd = SipUri.parse("sip:1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*:&it+has=1,weird@h")
    assert odd.user == "1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*"
    assert odd.password == "&it+has=1,weird"
    assert SipUri.parse("sip:%41lice@H.example").aor() == "sip:Alice@h.example"


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "URI without scheme"),
        ("bob@h", "URI without scheme"),
        (":x", "URI without scheme"),
        ("<sip:bob@h>", "invalid URI scheme"),
        ("1sip:x", "invalid URI scheme"),
        ("tel:", "invalid tel URI"),
        ("tel:+1 555", "invalid tel URI"),
        ("sip:", "invalid host:port"),
        ("sip:bob@", "invalid host:port"),
        ("sip:@h", "empty user part"),
        ("sip:bob@h b", "invalid character"),
        ('sip:bo"b@h', "invalid character"),
        ("sip:bob@h:", "invalid port"),
        ("sip:bob@h:0", "port out of range"),
        ("sip:bob@h:65536", "port out of range"),
        ("sip:bob@h:5o60", "invalid port"),
        ("sip:bob@h:\u0665\u0660", "invalid port"),
        ("sip:bob@h/x", "invalid host:port"),
        ("sip:bob@[::1", "invalid host:port"),
        ("sip:bob@[]", "invalid host:port"),
        ("sip:bob@[::1]x", "invalid host:port"),
        ("sip:%zz@h", "invalid escape"),
        ("sip:a%4@h", "invalid escape"),
        ("sip:bob@h;;lr", "empty parameter"),
        ("sip:bob@h;lr;", "empty parameter"),
        ("sip:bob@h;=x", "empty parameter"),
        ("sip:bob@h;a@b=1", "invalid parameter name"),
    ],
)
def test_bad_uris(text: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        SipUri.parse(text)


def test_transport_property() -> None:
    assert SipUri.parse("sip:h").transport == "UDP"
    assert SipUri.parse("sip:h;transport=tcp").transport == "TCP"
    assert SipUri.parse("sips:h").transport == "TLS"


# --- parameters and host:port ---------------------------------------------------------------


def test_split_params() -> None:
    assert split_params("") == {} and split_params("  ") == {}
    assert split_params(";a=1;B;c = x ") == {"a": "1", "b": None, "c": "x"}
    assert split_params("a=1") == {"a": "1"}
    assert split_params(' ; q=0.5 ; x="a;b, c" ') == {"q": "0.5", "x": '"a;b, c"'}
    assert join_params({"a": "1", "b": None}) == ";a=1;b"
    for bad in (";;a", "a;", "a;;b", 'x="open', 'x="a"b', "x=a b", "x=<y>", "a b=1"):
        with pytest.raises(ValueError):
            split_params(bad)


def test_parse_hostport() -> None:
    assert parse_hostport(" h.example:5060 ") == ("h.example", 5060)
    assert parse_hostport("192.0.2.1") == ("192.0.2.1", None)
    assert parse_hostport("[2001:db8::1]:5061") == ("[2001:db8::1]", 5061)
    assert parse_hostport("[::ffff:192.0.2.1]") == ("[::ffff:192.0.2.1]", None)
    for bad in ("", ":5060", "h:", "h:x", "h h", "[::1]5060", "[zz::1]", "h:123456"):
        with pytest.raises(ValueError):
            parse_hostport(bad)


def test_token_and_quoted_string_helpers() -> None:
    assert is_token("INVITE") and is_token("!interesting-Method0123456789_*+`.%indeed'~")
    assert not is_token("") and not is_token("IN VITE") and not is_token("a\n") and not is_token("caf\u00e9")
    assert is_valid_method("NEWMETHOD") and not is_valid_method("INVITE\n")
    assert quoted_end('"abc" rest') == 4
    assert quoted_end('"a\\"b\\\\" x') == 7
    assert quoted_end('x "y"', 2) == 4
    with pytest.raises(ValueError, match="unterminated quoted string"):
        quoted_end('"a\\"')


# --- Address ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "display", "uri", "params", "bracketed"),
    [
        ("<sip:a@h>", None, "sip:a@h", {}, True),
        ('"Alice Smith" <sip:a@h>;tag=1', '"Alice Smith"', "sip:a@h", {"tag": "1"}, True),
        ('"a \\"q\\" \\\\"<sip:a@h>', '"a \\"q\\" \\\\"', "sip:a@h", {}, True),
        ('"<sip:fake@x>" <sip:a@h>', '"<sip:fake@x>"', "sip:a@h", {}, True),
        ("Alice  B.  <sip:a@h;lr> ; tag = 7 ; q=1", "Alice  B.", "sip:a@h;lr", {"tag": "7", "q": "1"}, True),
        ("caller<sip:caller@example.com>;tag=323", "caller", "sip:caller@example.com", {"tag": "323"}, True),
        ("J\u00fcrgen <sip:j@h>", "J\u00fcrgen", "sip:j@h", {}, True),
        ("sip:a@h", None, "sip:a@h", {}, False),
        ("sip:a@h ; tag = x;expires=60", None, "sip:a@h", {"tag": "x", "expires": "60"}, False),
        ("sip:+19725552222@gw1.example.net;unknownparam", None, "sip:+19725552222@gw1.example.net",
         {"unknownparam": None}, False),
        ("<urn:service:sos>", None, "urn:service:sos", {}, True),
        ("isbn:2983792873", None, "isbn:2983792873", {}, False),
        ('sip:0;0="<"', None, "sip:0", {"0": '"<"'}, False),
        ('sip:a@h;p="x <sip:b@h>"', None, "sip:a@h", {"p": '"x <sip:b@h>"'}, False),
    ],
)  # fmt: skip
def test_address_forms(
    text: str, display: str | None, uri: str, params: dict[str, str | None], bracketed: bool
) -> None:
    address = Address.parse(text)
    assert address.display == display
    assert str(address.uri) == uri
    assert address.params == params
    assert address.bracketed is bracketed
    assert Address.parse(str(address)) == address


def test_address_tag_and_str() -> None:
    address = Address.parse('"Bob" <sip:b@h>;tag=xyz')
    assert address.tag == "xyz"
    address.params.pop("tag")
    assert str(address) == '"Bob" <sip:b@h>' and Address.parse("<sip:b@h>").tag is None
    assert str(Address.parse("sip:b@h;tag=1")) == "sip:b@h;tag=1"


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "empty address"),
        ('"Mr. J. User <sip:j.user@example.com>', "unterminated quoted string"),
        ('"Alice" sip:a@h', "quoted display name without <uri>"),
        ('"Alice" x <sip:a@h>', "quoted display name without <uri>"),
        ("Bell, Alexander <sip:a.g.bell@example.com>", "invalid display name"),
        ('Al"ice <sip:a@h>', "invalid display name"),
        ("<sip:a@h", "unterminated <uri>"),
        ("< sip:t.watson@example.org >", "whitespace or '<' inside <uri>"),
        ("<sip:a @h>", "whitespace or '<' inside <uri>"),
        ("<<sip:a@h>>", "whitespace or '<' inside <uri>"),
        ("<>", "whitespace or '<' inside <uri>"),
        ("<sip:a@h> junk", "unexpected text after <uri>"),
        ("<sip:a@h>;;", "empty parameter"),
        ("sip:a@h junk", "whitespace in addr-spec"),
        ("sip:user@example.com?Route=%3Csip:sip.example.com%3E", "must use <>"),
        ("sip:a@h,sip:b@h", "must use <>"),
        ("<sip:a@h>;tag", None),
    ],
)
def test_bad_addresses(text: str, reason: str | None) -> None:
    if reason is None:
        assert Address.parse(text).params == {"tag": None}
        return
    with pytest.raises(ValueError, match=reason):
        Address.parse(text)


# --- Via, CSeq, lists ---------------------------------------------------------------------------


def test_via_fast_and_lws_forms() -> None:
    via = Via.parse("SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK776;rport;received=192.0.2.9")
    assert (via.transport, via.host, via.port) == ("UDP", "192.0.2.1", 5060)
    assert via.params == {"branch": "z9hG4bK776", "rport": None, "received": "192.0.2.9"}
    assert via.branch == "z9hG4bK776" and via.branch.startswith(BRANCH_MAGIC)
    assert str(via) == "SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK776;rport;received=192.0.2.9"
    folded = Via.parse("SIP  /   2.0 /udp\t spindle.example.com   ; branch  =   z9hG4bK9ikj8  ")
    assert (folded.transport, folded.host, folded.port, folded.branch) == (
        "UDP",
        "spindle.example.com",
        None,
        "z9hG4bK9ikj8",
    )
    v6 = Via.parse("sip/2.0/tls [2001:db8::9]:5061;branch=z9hG4bKx;received=[2001:db8::1]")
    assert (v6.transport, v6.host, v6.port, v6.params["received"]) == (
        "TLS",
        "[2001:db8::9]",
        5061,
        "[2001:db8::1]",
    )
    assert Via.parse("SIP/2.0/UNKNOWN t4.example.com").params == {}


@pytest.mark.parametrize(
    "text",
    [
        "",
        "SIP/2.0/UDP",
        "SIP/2.0/UDP ",
        "SIP/3.0/UDP h",
        "SIP/2.0 h",
        "HTTP/1.1/TCP h",
        "SIP/2.0/U<P h",
        "SIP/2.0/UDP h;;",
        "SIP/2.0/UDP h;",
        "SIP/2.0/UDP h:99999",
        "SIP/2.0/UDP h x",
        "SIP/2.0/UDP 192.0.2.15;;,;,,",
    ],
)
def test_bad_vias(text: str) -> None:
    with pytest.raises(ValueError):
        Via.parse(text)


def test_cseq() -> None:
    assert CSeq.parse("0009   INVITE") == CSeq(9, "INVITE")
    assert str(CSeq(2147483647, "BYE")) == "2147483647 BYE"
    for bad in ("", "1", "1 INVITE x", "x INVITE", "-1 INVITE", "2147483648 INVITE", "12345678901 A",
                "\u0661 INVITE", "1 IN<VITE"):  # fmt: skip
        with pytest.raises(ValueError):
            CSeq.parse(bad)


def test_comma_lists() -> None:
    value = '"Smith, J" <sip:a@h>;q=0.5 , <sip:b@h;x=1,2>,sip:c@h'
    assert split_comma_list(value) == ['"Smith, J" <sip:a@h>;q=0.5', "<sip:b@h;x=1,2>", "sip:c@h"]
    assert split_list("a,,b, ") == ["a", "", "b", ""]
    assert split_comma_list("a,,b, ") == ["a", "b"]
    assert split_comma_list(" single ") == ["single"]
    assert split_list('"unterminated, <x>') == ['"unterminated, <x>']
    assert split_list('"a\\", b", c') == ['"a\\", b"', "c"]
