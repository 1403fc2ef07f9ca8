"""LocationTable: binding, replacement, ordering, expiry, NAT destination."""

from __future__ import annotations

import pytest

from pbx_edge.b2bua.location import (
    Binding,
    LocationTable,
    bare_host,
    contact_key,
    copy_address,
    default_port,
    parse_q,
)
from pbx_edge.sip.endpoint import Endpoint
from pbx_edge.sip.uri import Address, SipUri

AOR = "sip:100@pbx.local"
SRC = Endpoint("UDP", "192.0.2.10", 5060)


def addr(text: str) -> Address:
    return Address.parse(text)


def bind(
    table: LocationTable,
    contact: str,
    now: float,
    *,
    aor: str = AOR,
    expires: int = 60,
    source: Endpoint = SRC,
    call_id: str = "c1",
    cseq: int = 1,
) -> Binding:
    return table.bind(aor, addr(contact), expires, source, call_id, cseq, now)


# --- helpers ------------------------------------------------------------------------------------
def test_contact_key_ignores_host_case_and_insignificant_params() -> None:
    a = contact_key(SipUri.parse("sip:100@Phone.Example;ob;rinstance=abc"))
    b = contact_key(SipUri.parse("sip:100@phone.example;rinstance=def"))
    assert a == b == "sip:100@phone.example"


def test_contact_key_keeps_port_transport_user_and_password() -> None:
    base = contact_key(SipUri.parse("sip:100@h"))
    assert contact_key(SipUri.parse("sip:100@h:5060")) != base  # RFC 3261 §19.1.4
    assert contact_key(SipUri.parse("sip:100@h;transport=TCP")) == "sip:100@h;transport=tcp"
    assert contact_key(SipUri.parse("sip:100@h;lr;maddr")) == "sip:100@h;maddr"
    assert contact_key(SipUri.parse("sip:100:pw@h")) == "sip:100:pw@h"
    assert contact_key(SipUri.parse("sip:h")) == "sip:h"
    assert contact_key(SipUri.parse("sip:%31%30%30@h")) == base
    assert contact_key(SipUri.parse("tel:+4930123")) == "tel:+4930123"


@pytest.mark.parametrize(
    ("text", "expected"),
    [(None, 1.0), ("0.5", 0.5), ("1", 1.0), ("0", 0.0), (" 0.25 ", 0.25), ("1.5", None), ("-0.1", None)],
)
def test_parse_q(text: str | None, expected: float | None) -> None:
    assert parse_q(text) == expected


@pytest.mark.parametrize("text", ["abc", "1e-1", "nan", "inf", ""])
def test_parse_q_rejects_garbage(text: str) -> None:
    assert parse_q(text) is None


def test_default_port_and_bare_host() -> None:
    assert default_port(SipUri.parse("sip:h")) == 5060
    assert default_port(SipUri.parse("sips:h")) == 5061
    assert default_port(SipUri.parse("sip:h;transport=tls")) == 5061
    assert bare_host("[2001:db8::1]") == "2001:db8::1"
    assert bare_host("host") == "host"


def test_copy_address_shares_no_mutable_state() -> None:
    original = addr('"Bob" <sip:100@h;ob>;q=0.5')
    copied = copy_address(original)
    assert copied == original
    copied.params["x"] = "1"
    copied.uri.params["y"] = "2"
    assert "x" not in original.params
    assert "y" not in original.uri.params


# --- bind / replace -----------------------------------------------------------------------------
def test_bind_stores_binding_without_expires_param() -> None:
    table = LocationTable()
    contact = addr("<sip:100@192.0.2.10:5060>;expires=30;q=0.7")
    b = table.bind(AOR, contact, 60, SRC, "c1", 5, now=100.0)
    assert b.aor == AOR
    assert b.expires_at == 160.0
    assert b.registered_at == 100.0
    assert b.q == 0.7
    assert b.cseq == 5
    assert b.call_id == "c1"
    assert "expires" not in b.contact.params
    assert contact.params["expires"] == "30"  # caller's object untouched
    assert len(table) == 1
    assert table.get(AOR, "sip:100@192.0.2.10:5060") == b
    assert table.get(AOR, SipUri.parse("sip:100@192.0.2.10:5060")) == b
    assert table.get(AOR, "sip:other@x") is None
    assert table.get("sip:nobody@x", "sip:100@192.0.2.10:5060") is None


def test_bind_malformed_q_defaults_to_one() -> None:
    table = LocationTable()
    assert bind(table, "<sip:a@h>;q=bogus", 0.0).q == 1.0


def test_bind_rejects_non_positive_expires() -> None:
    table = LocationTable()
    with pytest.raises(ValueError, match="unbind"):
        bind(table, "sip:a@h", 0.0, expires=0)


def test_bind_replaces_same_contact_uri() -> None:
    table = LocationTable()
    bind(table, "<sip:100@h;rinstance=1>", 0.0, cseq=1)
    second = bind(table, "<sip:100@H;rinstance=2>", 10.0, cseq=2, expires=120)
    assert len(table) == 1
    assert table.lookup(AOR, 10.0) == [second]
    assert table.next_expiry() == 130.0


def test_several_contacts_per_aor_and_separate_aors() -> None:
    table = LocationTable()
    bind(table, "sip:100@desk", 0.0)
    bind(table, "sip:100@mobile", 1.0)
    bind(table, "sip:200@desk", 2.0, aor="sip:200@pbx.local")
    assert len(table) == 3
    assert [b.contact.uri.host for b in table.lookup(AOR, 5.0)] == ["mobile", "desk"]
    assert table.lookup("sip:300@pbx.local", 5.0) == []


def test_lookup_orders_by_q_then_newest() -> None:
    table = LocationTable()
    bind(table, "<sip:a@h>;q=0.5", 0.0)
    bind(table, "<sip:b@h>", 1.0)
    bind(table, "<sip:c@h>;q=0.5", 2.0)
    bind(table, "<sip:d@h>", 3.0)
    assert [b.contact.uri.user for b in table.lookup(AOR, 4.0)] == ["d", "b", "c", "a"]
    # a refresh makes a binding the newest within its q
    bind(table, "<sip:b@h>", 5.0, cseq=2)
    assert [b.contact.uri.user for b in table.lookup(AOR, 6.0)] == ["b", "d", "c", "a"]


def test_lookup_many_merges_aors_in_one_order_and_ignores_duplicates() -> None:
    table = LocationTable()
    bind(table, "sip:100@a", 0.0, aor="sip:100@pbx.local")
    bind(table, "sip:100@b", 1.0, aor="sip:100@10.0.0.1")
    bind(table, "<sip:100@c>;q=0.1", 2.0, aor="sip:100@10.0.0.1")
    got = table.lookup_many(["sip:100@pbx.local", "sip:100@10.0.0.1", "sip:100@pbx.local"], 3.0)
    assert [b.contact.uri.host for b in got] == ["b", "a", "c"]


# --- unbind ---------------------------------------------------------------------------------------
def test_unbind_one_contact() -> None:
    table = LocationTable()
    a = bind(table, "sip:100@a", 0.0)
    b = bind(table, "sip:100@b", 0.0)
    assert table.unbind(AOR, "sip:100@A;ob") == [a]
    assert table.lookup(AOR, 1.0) == [b]
    assert table.unbind(AOR, "sip:100@zzz") == []
    assert table.next_expiry() == 60.0


def test_unbind_all_of_aor() -> None:
    table = LocationTable()
    a = bind(table, "sip:100@a", 0.0)
    b = bind(table, "sip:100@b", 0.0)
    other = bind(table, "sip:200@a", 0.0, aor="sip:200@pbx.local")
    assert sorted(table.unbind(AOR), key=lambda x: x.contact.uri.host) == [a, b]
    assert len(table) == 1
    assert table.all(1.0) == [other]
    assert table.unbind(AOR) == []


def test_unbind_bad_uri_raises() -> None:
    table = LocationTable()
    bind(table, "sip:100@a", 0.0)
    with pytest.raises(ValueError):
        table.unbind(AOR, "not a uri")


# --- expiry ---------------------------------------------------------------------------------------
def test_expiry_hides_then_removes_bindings() -> None:
    table = LocationTable()
    short = bind(table, "sip:100@a", 0.0, expires=30)
    long = bind(table, "sip:100@b", 0.0, expires=90)
    assert table.next_expiry() == 30.0
    assert table.expire(29.9) == []
    # at exactly expires_at the binding is dead for lookup and for expire
    assert table.lookup(AOR, 30.0) == [long]
    assert len(table) == 2  # still stored until expire() reports it
    assert table.expire(30.0) == [short]
    assert table.expire(30.0) == []
    assert table.next_expiry() == 90.0
    assert table.expire(1000.0) == [long]
    assert table.next_expiry() is None
    assert len(table) == 0


def test_expire_reports_earliest_first_across_aors() -> None:
    table = LocationTable()
    b1 = bind(table, "sip:1@h", 0.0, aor="sip:1@d", expires=50)
    b2 = bind(table, "sip:2@h", 0.0, aor="sip:2@d", expires=40)
    assert table.expire(100.0) == [b2, b1]


def test_refresh_moves_expiry() -> None:
    table = LocationTable()
    bind(table, "sip:100@a", 0.0, expires=30)
    refreshed = bind(table, "sip:100@a", 20.0, expires=30, cseq=2)
    assert table.expire(30.0) == []
    assert table.next_expiry() == 50.0
    assert table.expire(50.0) == [refreshed]


def test_unbind_cancels_expiry() -> None:
    table = LocationTable()
    bind(table, "sip:100@a", 0.0)
    table.unbind(AOR)
    assert table.next_expiry() is None
    assert table.expire(1e9) == []


def test_all_and_iteration() -> None:
    table = LocationTable()
    b = bind(table, "sip:2@h", 0.0, aor="sip:2@d", expires=10)
    a = bind(table, "sip:1@h", 0.0, aor="sip:1@d", expires=100)
    assert table.all(5.0) == [a, b]
    assert table.all(50.0) == [a]
    assert set(table) == {a, b}  # iteration includes expired-but-not-removed bindings


def test_generation_moves_on_every_change() -> None:
    table = LocationTable()
    g0 = table.generation
    bind(table, "sip:1@h", 0.0, expires=10)
    g1 = table.generation
    table.lookup(AOR, 1.0)
    assert table.generation == g1 > g0
    table.expire(20.0)
    assert table.generation > g1


# --- destination / NAT ------------------------------------------------------------------------------
def test_dest_is_contact_when_register_came_from_contact_address() -> None:
    table = LocationTable()
    b = bind(table, "<sip:100@192.0.2.10;transport=udp>", 0.0, source=SRC)
    assert not b.behind_nat
    assert b.dest == Endpoint("UDP", "192.0.2.10", 5060)


def test_dest_uses_contact_transport_when_not_natted() -> None:
    table = LocationTable()
    source = Endpoint("UDP", "192.0.2.10", 5070)
    b = bind(table, "<sip:100@192.0.2.10:5070;transport=tcp>", 0.0, source=source)
    assert b.dest == Endpoint("TCP", "192.0.2.10", 5070)


def test_dest_is_source_behind_nat() -> None:
    """Private address in Contact, public one on the wire: only the public one is reachable."""
    table = LocationTable()
    public = Endpoint("UDP", "203.0.113.5", 40123)
    b = bind(table, "<sip:100@10.1.2.3:5060>", 0.0, source=public)
    assert b.behind_nat
    assert b.contact_endpoint == Endpoint("UDP", "10.1.2.3", 5060)
    assert b.dest == public


def test_dest_is_source_when_only_port_differs_tcp() -> None:
    """A TCP UA sends from an ephemeral port: reuse its connection."""
    table = LocationTable()
    source = Endpoint("TCP", "192.0.2.10", 51000)
    b = bind(table, "<sip:100@192.0.2.10:5060;transport=tcp>", 0.0, source=source)
    assert b.dest == source


def test_dest_ipv6_brackets_and_host_case() -> None:
    table = LocationTable()
    source = Endpoint("UDP", "2001:db8::1", 5060)
    b = bind(table, "<sip:100@[2001:DB8::1]>", 0.0, source=source)
    assert not b.behind_nat
    assert b.dest == Endpoint("UDP", "2001:DB8::1", 5060)


def test_binding_remaining() -> None:
    table = LocationTable()
    b = bind(table, "sip:100@h", 10.0, expires=60)
    assert b.remaining(40.0) == 30.0
    assert b.remaining(100.0) == 0.0


def test_bindings_are_hashable_and_equal_by_value() -> None:
    table = LocationTable()
    b = bind(table, "sip:100@h", 0.0)
    twin = Binding(b.aor, copy_address(b.contact), b.expires_at, b.source, b.call_id, b.cseq, b.q, 0.0)
    assert twin == b
    assert hash(twin) == hash(b)
    assert {b: 1}[twin] == 1
