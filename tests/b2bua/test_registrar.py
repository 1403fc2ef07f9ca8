"""Registrar: RFC 3261 §10.3 processing of REGISTER against a LocationTable, with a fake clock."""

from __future__ import annotations

import pytest

from pbx_edge.b2bua.location import LocationTable
from pbx_edge.b2bua.registrar import RegisterResult, Registrar
from pbx_edge.ops.config import SipConfig
from pbx_edge.sip.endpoint import Endpoint
from pbx_edge.sip.message import Headers, Request, Response, parse_message
from pbx_edge.sip.uri import Address

SRC = Endpoint("UDP", "192.0.2.10", 5060)
AOR = "sip:100@pbx.local"


def register(
    *contacts: str,
    expires: str | None = None,
    call_id: str = "reg-1@192.0.2.10",
    cseq: int = 1,
    to: str = "<sip:100@pbx.local>",
    extra: tuple[str, ...] = (),
) -> Request:
    lines = [
        "REGISTER sip:pbx.local SIP/2.0",
        "Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK-1;rport",
        "Via: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK-0",
        "Max-Forwards: 70",
        "From: <sip:100@pbx.local>;tag=abc",
        f"To: {to}",
        f"Call-ID: {call_id}",
        f"CSeq: {cseq} REGISTER",
    ]
    lines += [f"Contact: {c}" for c in contacts]
    if expires is not None:
        lines.append(f"Expires: {expires}")
    lines += list(extra)
    message = parse_message(("\r\n".join(lines) + "\r\n\r\n").encode())
    assert isinstance(message, Request)
    return message


def sip_config(**fields: object) -> SipConfig:
    return SipConfig.model_validate(fields)


@pytest.fixture
def table() -> LocationTable:
    return LocationTable()


@pytest.fixture
def config() -> SipConfig:
    return sip_config(min_expires=60, max_expires=3600, default_expires=1800, user_agent="Test/1")


@pytest.fixture
def registrar(table: LocationTable, config: SipConfig) -> Registrar:
    return Registrar(table, config, tag_factory=lambda: "totag")


def contact_expires(response: Response) -> dict[str, int]:
    out: dict[str, int] = {}
    for value in response.headers.get_all("Contact"):
        address = Address.parse(value)
        out[str(address.uri)] = int(address.params["expires"] or "-1")
    return out


def ok(result: RegisterResult) -> Response:
    assert result.response.status == 200, result.response.reason
    return result.response


# --- basic registration -----------------------------------------------------------------------
def test_register_binds_and_answers_200(registrar: Registrar, table: LocationTable) -> None:
    request = register("<sip:100@192.0.2.10:5060>", expires="600")
    result = registrar.handle_register(request, SRC, now=1000.0)
    response = ok(result)
    assert response.reason == "OK"
    # §8.2.6.2: Via (all), From, Call-ID, CSeq copied; To gets our tag
    assert response.headers.get_all("Via") == request.headers.get_all("Via")
    assert response.headers.get("From") == request.headers.get("From")
    assert response.headers.get("Call-ID") == request.call_id
    assert response.headers.get("CSeq") == "1 REGISTER"
    assert response.to_tag == "totag"
    assert contact_expires(response) == {"sip:100@192.0.2.10:5060": 600}
    assert response.headers.get("Expires") == "600"
    assert response.headers.get("Server") == "Test/1"
    assert response.headers.get("Date") == "Thu, 01 Jan 1970 00:16:40 GMT"
    assert [b.contact.uri.host for b in result.added] == ["192.0.2.10"]
    assert result.refreshed == [] and result.removed == []
    binding = table.lookup(AOR, 1000.0)[0]
    assert binding == result.added[0]
    assert binding.expires_at == 1600.0
    assert binding.call_id == request.call_id
    assert binding.cseq == 1
    assert binding.source == SRC
    # the response serializes and parses back
    assert parse_message(bytes(response)) == response


def test_date_from_wall_time(registrar: Registrar) -> None:
    request = register("<sip:100@192.0.2.10>")
    response = ok(registrar.handle_register(request, SRC, now=5.0, wall_time=1_700_000_000.0))
    assert response.headers.get("Date") == "Tue, 14 Nov 2023 22:13:20 GMT"


def test_existing_to_tag_is_kept(registrar: Registrar) -> None:
    request = register("<sip:100@192.0.2.10>", to="<sip:100@pbx.local>;tag=theirs")
    assert ok(registrar.handle_register(request, SRC, 0.0)).to_tag == "theirs"


def test_default_tag_factory_makes_random_tags(table: LocationTable, config: SipConfig) -> None:
    registrar = Registrar(table, config)
    assert registrar.table is table
    t1 = ok(registrar.handle_register(register("<sip:100@h>"), SRC, 0.0)).to_tag
    t2 = ok(registrar.handle_register(register("<sip:100@h>", cseq=2), SRC, 1.0)).to_tag
    assert t1 and t2 and t1 != t2


def test_aor_key_lower_cases_host_and_accepts_any_host(registrar: Registrar, table: LocationTable) -> None:
    request = register("<sip:100@192.0.2.10>", to="<sip:100@10.0.0.5:5060>")
    ok(registrar.handle_register(request, SRC, 0.0))
    request = register("<sip:200@192.0.2.11>", to='"Two" <sip:200@PBX.Example.COM>', call_id="x")
    ok(registrar.handle_register(request, SRC, 0.0))
    assert [b.aor for b in table.all(1.0)] == ["sip:100@10.0.0.5", "sip:200@pbx.example.com"]


# --- expiry values ----------------------------------------------------------------------------------
def test_default_expires_when_none_given(registrar: Registrar, table: LocationTable) -> None:
    response = ok(registrar.handle_register(register("<sip:100@h>"), SRC, 0.0))
    assert response.headers.get("Expires") == "1800"
    assert table.lookup(AOR, 0.0)[0].expires_at == 1800.0


def test_contact_param_overrides_expires_header(registrar: Registrar, table: LocationTable) -> None:
    request = register("<sip:100@a>;expires=120", "<sip:100@b>", expires="300")
    response = ok(registrar.handle_register(request, SRC, 0.0))
    assert contact_expires(response) == {"sip:100@a": 120, "sip:100@b": 300}
    assert response.headers.get("Expires") == "300"


def test_expires_clamped_to_max(registrar: Registrar, table: LocationTable) -> None:
    response = ok(registrar.handle_register(register("<sip:100@h>", expires="99999"), SRC, 0.0))
    assert contact_expires(response) == {"sip:100@h": 3600}
    assert table.lookup(AOR, 0.0)[0].expires_at == 3600.0


def test_interval_too_brief_423(registrar: Registrar, table: LocationTable) -> None:
    result = registrar.handle_register(register("<sip:100@h>;expires=30"), SRC, 0.0)
    assert result.response.status == 423
    assert result.response.reason == "Interval Too Brief"
    assert result.response.headers.get("Min-Expires") == "60"
    assert result.response.headers.get("Contact") is None
    assert result.added == [] and result.removed == []
    assert len(table) == 0


def test_423_applies_nothing_even_for_other_contacts(registrar: Registrar, table: LocationTable) -> None:
    request = register("<sip:100@a>;expires=600", "<sip:100@b>;expires=5")
    assert registrar.handle_register(request, SRC, 0.0).response.status == 423
    assert len(table) == 0


def test_423_from_expires_header(registrar: Registrar) -> None:
    result = registrar.handle_register(register("<sip:100@h>", expires="59"), SRC, 0.0)
    assert result.response.status == 423


def test_min_expires_exactly_is_accepted(registrar: Registrar) -> None:
    response = ok(registrar.handle_register(register("<sip:100@h>", expires="60"), SRC, 0.0))
    assert contact_expires(response) == {"sip:100@h": 60}


def test_brief_interval_over_an_hour_is_raised_not_refused(table: LocationTable) -> None:
    """RFC 3261 §10.3: 423 only for intervals under one hour; a longer one is raised to the minimum."""
    registrar = Registrar(table, sip_config(min_expires=7200, max_expires=86400, default_expires=7200))
    assert registrar.handle_register(register("<sip:100@h>", expires="3599"), SRC, 0.0).response.status == 423
    response = ok(registrar.handle_register(register("<sip:100@h>", expires="4000"), SRC, 0.0))
    assert contact_expires(response) == {"sip:100@h": 7200}


def test_default_below_min_is_raised_to_min(table: LocationTable) -> None:
    registrar = Registrar(table, sip_config(min_expires=600, default_expires=100))
    response = ok(registrar.handle_register(register("<sip:100@h>"), SRC, 0.0))
    assert contact_expires(response) == {"sip:100@h": 600}


def test_zero_min_expires_still_grants_at_least_one_second(table: LocationTable) -> None:
    registrar = Registrar(table, sip_config(min_expires=0))
    response = ok(
        registrar.handle_register(register("<sip:100@h>;expires=0", "<sip:100@x>;expires=1"), SRC, 0)
    )
    assert contact_expires(response) == {"sip:100@x": 1}


def test_malformed_contact_expires_treated_as_3600(registrar: Registrar) -> None:
    """RFC 3261 §20.19: malformed expiry values are equivalent to 3600."""
    response = ok(registrar.handle_register(register("<sip:100@h>;expires=soon"), SRC, 0.0))
    assert contact_expires(response) == {"sip:100@h": 3600}


def test_malformed_expires_header_in_built_request_is_400(registrar: Registrar) -> None:
    request = register("<sip:100@h>")
    request.headers.set("Expires", "tomorrow")
    assert registrar.handle_register(request, SRC, 0.0).response.status == 400


# --- several contacts, refresh, q -----------------------------------------------------------------
def test_multiple_contacts_and_q_order_in_200(registrar: Registrar, table: LocationTable) -> None:
    ok(registrar.handle_register(register("<sip:100@desk>;q=0.5"), SRC, 0.0))
    request = register("<sip:100@mobile>;q=0.9", call_id="other-device", expires="600")
    response = ok(registrar.handle_register(request, SRC, 100.0))
    contacts = [Address.parse(v) for v in response.headers.get_all("Contact")]
    assert [str(c.uri) for c in contacts] == ["sip:100@mobile", "sip:100@desk"]
    assert contacts[0].params == {"q": "0.9", "expires": "600"}
    assert contacts[1].params == {"q": "0.5", "expires": "1700"}
    assert [b.q for b in table.lookup(AOR, 100.0)] == [0.9, 0.5]


def test_remaining_expires_rounds_up(registrar: Registrar) -> None:
    ok(registrar.handle_register(register("<sip:100@desk>", expires="600"), SRC, 0.0))
    response = ok(registrar.handle_register(register(), SRC, 99.5))
    assert contact_expires(response) == {"sip:100@desk": 501}


def test_refresh_same_call_id_higher_cseq(registrar: Registrar, table: LocationTable) -> None:
    first = registrar.handle_register(register("<sip:100@h>", expires="600"), SRC, 0.0)
    second = registrar.handle_register(register("<sip:100@h>", expires="600", cseq=2), SRC, 300.0)
    ok(second)
    assert second.added == []
    assert len(second.refreshed) == 1
    assert second.refreshed[0].expires_at == 900.0
    assert second.refreshed[0].cseq == 2
    assert table.lookup(AOR, 300.0) == second.refreshed
    assert first.added[0] != second.refreshed[0]


def test_new_call_id_replaces_binding_regardless_of_cseq(registrar: Registrar, table: LocationTable) -> None:
    """A rebooted phone starts a new Call-ID with a low CSeq: it must still win (§10.3 step 7)."""
    ok(registrar.handle_register(register("<sip:100@h>", cseq=50), SRC, 0.0))
    result = registrar.handle_register(register("<sip:100@h>", cseq=1, call_id="fresh"), SRC, 10.0)
    ok(result)
    assert len(result.refreshed) == 1
    [binding] = table.lookup(AOR, 10.0)
    assert (binding.call_id, binding.cseq) == ("fresh", 1)


def test_reregister_after_expiry_counts_as_added(registrar: Registrar, table: LocationTable) -> None:
    ok(registrar.handle_register(register("<sip:100@h>", expires="60"), SRC, 0.0))
    result = registrar.handle_register(register("<sip:100@h>", expires="60", cseq=1), SRC, 61.0)
    ok(result)  # the stale-CSeq rule concerns live bindings only
    assert len(result.added) == 1
    assert len(table) == 1


def test_same_contact_twice_in_one_request_counts_once(registrar: Registrar, table: LocationTable) -> None:
    result = registrar.handle_register(register("<sip:100@h>;expires=100", "<sip:100@H>;expires=200"), SRC, 0)
    response = ok(result)
    assert contact_expires(response) == {"sip:100@H": 200}
    assert len(result.added) == 1
    assert len(table) == 1


# --- stale CSeq (§10.3 step 7) ----------------------------------------------------------------------
@pytest.mark.parametrize("cseq", [5, 4])
def test_stale_or_equal_cseq_not_applied(registrar: Registrar, table: LocationTable, cseq: int) -> None:
    ok(registrar.handle_register(register("<sip:100@h>", expires="600", cseq=5), SRC, 0.0))
    before = table.lookup(AOR, 0.0)
    result = registrar.handle_register(register("<sip:100@h>", expires="0", cseq=cseq), SRC, 10.0)
    assert result.response.status == 400
    assert result.response.reason == "Invalid CSeq Number"
    assert result.added == result.removed == result.refreshed == []
    assert table.lookup(AOR, 10.0) == before


def test_stale_cseq_aborts_whole_request(registrar: Registrar, table: LocationTable) -> None:
    ok(registrar.handle_register(register("<sip:100@a>", cseq=5), SRC, 0.0))
    request = register("<sip:100@new>", "<sip:100@a>", cseq=3)
    assert registrar.handle_register(request, SRC, 1.0).response.status == 400
    assert [b.contact.uri.host for b in table.lookup(AOR, 1.0)] == ["a"]


# --- removal ------------------------------------------------------------------------------------------
def test_expires_zero_header_removes_contact(registrar: Registrar, table: LocationTable) -> None:
    ok(registrar.handle_register(register("<sip:100@a>", "<sip:100@b>"), SRC, 0.0))
    result = registrar.handle_register(register("<sip:100@a>", expires="0", cseq=2), SRC, 10.0)
    response = ok(result)
    assert [b.contact.uri.host for b in result.removed] == ["a"]
    assert contact_expires(response) == {"sip:100@b": 1790}
    assert response.headers.get("Expires") == "0"


def test_expires_zero_param_removes_only_that_contact(registrar: Registrar, table: LocationTable) -> None:
    ok(registrar.handle_register(register("<sip:100@a>", "<sip:100@b>"), SRC, 0.0))
    request = register("<sip:100@a>;expires=0", "<sip:100@c>", expires="600", cseq=2)
    result = registrar.handle_register(request, SRC, 10.0)
    response = ok(result)
    assert [b.contact.uri.host for b in result.removed] == ["a"]
    assert [b.contact.uri.host for b in result.added] == ["c"]
    assert set(contact_expires(response)) == {"sip:100@b", "sip:100@c"}
    assert response.headers.get("Expires") == "600"


def test_removing_unknown_contact_is_harmless(registrar: Registrar) -> None:
    result = registrar.handle_register(register("<sip:100@a>", expires="0"), SRC, 0.0)
    assert ok(result).headers.get("Contact") is None
    assert result.removed == []


def test_wildcard_removes_all(registrar: Registrar, table: LocationTable) -> None:
    ok(registrar.handle_register(register("<sip:100@a>", "<sip:100@b>"), SRC, 0.0))
    ok(registrar.handle_register(register("<sip:100@c>", call_id="other"), SRC, 0.0))
    ok(registrar.handle_register(register("<sip:200@a>", to="<sip:200@pbx.local>"), SRC, 0.0))
    result = registrar.handle_register(register("*", expires="0", cseq=2), SRC, 10.0)
    response = ok(result)
    assert sorted(b.contact.uri.host for b in result.removed) == ["a", "b", "c"]
    assert response.headers.get("Contact") is None
    assert response.headers.get("Expires") == "0"
    assert table.lookup(AOR, 10.0) == []
    assert len(table) == 1  # 200 untouched


def test_wildcard_on_empty_aor(registrar: Registrar) -> None:
    response = ok(registrar.handle_register(register("*", expires="0"), SRC, 0.0))
    assert response.headers.get("Expires") == "0"


def test_wildcard_with_stale_cseq_fails(registrar: Registrar, table: LocationTable) -> None:
    ok(registrar.handle_register(register("<sip:100@a>", cseq=7), SRC, 0.0))
    result = registrar.handle_register(register("*", expires="0", cseq=7), SRC, 1.0)
    assert result.response.status == 400
    assert len(table.lookup(AOR, 1.0)) == 1


@pytest.mark.parametrize(
    ("contacts", "expires"),
    [(("*",), None), (("*",), "60"), (("*", "<sip:100@a>"), "0"), (("<sip:100@a>", "*"), "0")],
)
def test_wildcard_misuse_is_400(
    registrar: Registrar, table: LocationTable, contacts: tuple[str, ...], expires: str | None
) -> None:
    ok(registrar.handle_register(register("<sip:100@a>"), SRC, 0.0))
    result = registrar.handle_register(register(*contacts, expires=expires, cseq=2), SRC, 1.0)
    assert result.response.status == 400
    assert len(table.lookup(AOR, 1.0)) == 1


def test_wildcard_in_one_header_with_others_is_400(registrar: Registrar) -> None:
    request = register(expires="0")
    request.headers.add("Contact", "*, <sip:100@a>")
    request = parse_message(bytes(request))  # type: ignore[assignment]
    assert registrar.handle_register(request, SRC, 0.0).response.status == 400


# --- query ------------------------------------------------------------------------------------------
def test_no_contact_lists_current_bindings(registrar: Registrar, table: LocationTable) -> None:
    ok(registrar.handle_register(register("<sip:100@a>", expires="600"), SRC, 0.0))
    result = registrar.handle_register(register(cseq=2), SRC, 100.0)
    response = ok(result)
    assert contact_expires(response) == {"sip:100@a": 500}
    assert response.headers.get("Expires") is None
    assert result.added == result.removed == result.refreshed == []


def test_query_of_unknown_aor(registrar: Registrar) -> None:
    response = ok(registrar.handle_register(register(), SRC, 0.0))
    assert response.headers.get("Contact") is None


def test_expired_bindings_not_listed(registrar: Registrar) -> None:
    ok(registrar.handle_register(register("<sip:100@a>", expires="60"), SRC, 0.0))
    response = ok(registrar.handle_register(register(cseq=2), SRC, 60.0))
    assert response.headers.get("Contact") is None


# --- NAT -----------------------------------------------------------------------------------------------
def test_nat_source_becomes_destination(registrar: Registrar, table: LocationTable) -> None:
    public = Endpoint("UDP", "203.0.113.7", 31337)
    ok(registrar.handle_register(register("<sip:100@10.0.0.7:5060>"), public, 0.0))
    [binding] = table.lookup(AOR, 0.0)
    assert binding.source == public
    assert binding.dest == public
    # the Contact as registered is what the 200 echoes and what requests are addressed to
    assert str(binding.contact.uri) == "sip:100@10.0.0.7:5060"


def test_direct_source_keeps_contact_destination(registrar: Registrar, table: LocationTable) -> None:
    ok(registrar.handle_register(register("<sip:100@192.0.2.10:5060;transport=udp>"), SRC, 0.0))
    assert table.lookup(AOR, 0.0)[0].dest == Endpoint("UDP", "192.0.2.10", 5060)


# --- rejections -----------------------------------------------------------------------------------------
def test_require_is_420(registrar: Registrar, table: LocationTable) -> None:
    request = register("<sip:100@a>", extra=("Require: path, gruu",))
    result = registrar.handle_register(request, SRC, 0.0)
    assert result.response.status == 420
    assert result.response.headers.get("Unsupported") == "gruu, path"
    assert len(table) == 0


@pytest.mark.parametrize("to", ["<sip:pbx.local>", "<tel:+4930123>"])
def test_aor_without_user_or_not_sip_is_404(registrar: Registrar, to: str) -> None:
    result = registrar.handle_register(register("<sip:100@a>", to=to), SRC, 0.0)
    assert result.response.status == 404


@pytest.mark.parametrize("contact", ["<tel:+4930123>", "<sip:100@a>;q=2", "<sip:100@a>;q=high"])
def test_bad_contact_is_400(registrar: Registrar, table: LocationTable, contact: str) -> None:
    result = registrar.handle_register(register("<sip:100@ok>", contact), SRC, 0.0)
    assert result.response.status == 400
    assert len(table) == 0


def _built(headers: list[tuple[str, str]]) -> Request:
    return Request(headers=Headers(headers), method="REGISTER", uri="sip:pbx.local")


BASE = [
    ("Via", "SIP/2.0/UDP 192.0.2.10;branch=z9hG4bK-2"),
    ("From", "<sip:100@pbx.local>;tag=1"),
    ("Call-ID", "built"),
]


def test_unparseable_contact_in_built_request_is_400(registrar: Registrar) -> None:
    request = _built([*BASE, ("To", "<sip:100@pbx.local>"), ("CSeq", "1 REGISTER"), ("Contact", "<sip:a b>")])
    assert registrar.handle_register(request, SRC, 0.0).response.status == 400


def test_unparseable_to_in_built_request_is_400(registrar: Registrar) -> None:
    request = _built([*BASE, ("To", "<sip:100@pbx.local"), ("CSeq", "1 REGISTER")])
    response = registrar.handle_register(request, SRC, 0.0).response
    assert response.status == 400
    assert response.headers.get("To") == "<sip:100@pbx.local"  # copied verbatim, not re-tagged


def test_bad_cseq_in_built_request_is_400(registrar: Registrar) -> None:
    request = _built([*BASE, ("To", "<sip:100@pbx.local>"), ("CSeq", "x REGISTER")])
    assert registrar.handle_register(request, SRC, 0.0).response.status == 400


def test_missing_call_id_in_built_request_is_400(registrar: Registrar) -> None:
    headers = [h for h in BASE if h[0] != "Call-ID"]
    request = _built([*headers, ("To", "<sip:100@pbx.local>"), ("CSeq", "1 REGISTER")])
    response = registrar.handle_register(request, SRC, 0.0).response
    assert response.status == 400
    assert response.headers.get("Call-ID") is None


def test_non_register_is_a_programming_error(registrar: Registrar) -> None:
    request = register("<sip:100@a>")
    request.method = "INVITE"
    with pytest.raises(ValueError, match="REGISTER"):
        registrar.handle_register(request, SRC, 0.0)
