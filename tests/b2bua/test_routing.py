"""Router: registered contacts first, then static routes by longest prefix with rewriting."""

from __future__ import annotations

import pytest

from pbx_edge.b2bua.location import LocationTable
from pbx_edge.b2bua.routing import Router, RouteTarget
from pbx_edge.ops.config import ExtensionConfig, RoutingConfig, StaticRoute
from pbx_edge.sip.endpoint import Endpoint
from pbx_edge.sip.uri import Address, SipUri

DOMAIN = "PBX.local"
SRC = Endpoint("UDP", "192.0.2.10", 5060)


def uri(text: str) -> SipUri:
    return SipUri.parse(text)


def route(**fields: object) -> StaticRoute:
    return StaticRoute.model_validate(fields)


def routing(*routes: StaticRoute, extensions: dict[str, ExtensionConfig] | None = None) -> RoutingConfig:
    return RoutingConfig(static_routes=list(routes), extensions=extensions or {})


def make_router(table: LocationTable, *routes: StaticRoute) -> Router:
    return Router(table, routing(*routes), DOMAIN)


def bind(table: LocationTable, aor: str, contact: str, now: float = 0.0, source: Endpoint = SRC) -> None:
    table.bind(aor, Address.parse(contact), 600, source, "c", 1, now)


# --- location ---------------------------------------------------------------------------------------
def test_registered_contact_is_returned(tmp_table: LocationTable) -> None:
    bind(tmp_table, "sip:100@pbx.local", "<sip:100@192.0.2.10:5060;transport=udp>")
    router = make_router(tmp_table, route(prefix="", target="sip:gw.example"))
    [target] = router.resolve(uri("sip:100@pbx.local"), 1.0)
    assert target == RouteTarget(
        uri=uri("sip:100@192.0.2.10:5060;transport=udp"),
        dest=Endpoint("UDP", "192.0.2.10", 5060),
        source="location",
    )


def test_target_uri_is_a_copy(tmp_table: LocationTable) -> None:
    bind(tmp_table, "sip:100@pbx.local", "<sip:100@192.0.2.10>")
    router = make_router(tmp_table)
    router.resolve(uri("sip:100@pbx.local"), 1.0)[0].uri.params["x"] = "y"
    assert router.resolve(uri("sip:100@pbx.local"), 1.0)[0].uri.params == {}


def test_lookup_by_domain_and_by_request_uri_host(tmp_table: LocationTable) -> None:
    """Phones register with the PBX's domain or its IP; calls may address either."""
    bind(tmp_table, "sip:100@pbx.local", "<sip:100@desk>", now=0.0)
    bind(tmp_table, "sip:100@10.0.0.1", "<sip:100@softphone>", now=1.0)
    bind(tmp_table, "sip:100@10.0.0.2", "<sip:100@elsewhere>", now=2.0)
    router = make_router(tmp_table)
    hosts = [t.uri.host for t in router.resolve(uri("sip:100@10.0.0.1:5060"), 3.0)]
    assert hosts == ["softphone", "desk"]
    assert [t.uri.host for t in router.resolve(uri("sip:100@PBX.LOCAL"), 3.0)] == ["desk"]
    assert [t.uri.host for t in router.resolve(uri("sip:100@other.example"), 3.0)] == ["desk"]


def test_same_contact_under_both_aors_is_returned_once(tmp_table: LocationTable) -> None:
    bind(tmp_table, "sip:100@pbx.local", "<sip:100@desk>", now=0.0)
    bind(tmp_table, "sip:100@10.0.0.1", "<sip:100@DESK;ob>", now=1.0)
    targets = make_router(tmp_table).resolve(uri("sip:100@10.0.0.1"), 2.0)
    assert [str(t.uri) for t in targets] == ["sip:100@DESK;ob"]


def test_escaped_user_matches_aor(tmp_table: LocationTable) -> None:
    bind(tmp_table, "sip:100@pbx.local", "<sip:100@desk>")
    assert len(make_router(tmp_table).resolve(uri("sip:%31%30%30@pbx.local"), 1.0)) == 1


def test_q_order_and_nat_dest(tmp_table: LocationTable) -> None:
    natted = Endpoint("UDP", "203.0.113.9", 40000)
    bind(tmp_table, "sip:100@pbx.local", "<sip:100@10.9.9.9>;q=0.2", source=natted)
    bind(tmp_table, "sip:100@pbx.local", "<sip:100@192.0.2.10>;q=0.8")
    targets = make_router(tmp_table).resolve(uri("sip:100@pbx.local"), 1.0)
    assert [t.uri.host for t in targets] == ["192.0.2.10", "10.9.9.9"]
    assert targets[1].dest == natted
    assert targets[1].uri == uri("sip:100@10.9.9.9")  # Request-URI is still the Contact


def test_registered_contacts_shadow_static_routes(tmp_table: LocationTable) -> None:
    bind(tmp_table, "sip:100@pbx.local", "<sip:100@desk>")
    router = make_router(tmp_table, route(prefix="1", target="sip:gw.example"))
    assert [t.source for t in router.resolve(uri("sip:100@pbx.local"), 1.0)] == ["location"]
    assert [t.source for t in router.resolve(uri("sip:101@pbx.local"), 1.0)] == ["static:1"]


def test_expired_registration_falls_back_to_static(tmp_table: LocationTable) -> None:
    bind(tmp_table, "sip:100@pbx.local", "<sip:100@desk>", now=0.0)
    router = make_router(tmp_table, route(prefix="", target="sip:gw.example"))
    assert router.resolve(uri("sip:100@pbx.local"), 599.0)[0].source == "location"
    assert router.resolve(uri("sip:100@pbx.local"), 600.0)[0].source == "static:"


# --- static ----------------------------------------------------------------------------------------------
def test_longest_prefix_wins(tmp_table: LocationTable) -> None:
    router = make_router(
        tmp_table,
        route(prefix="", target="sip:default.example"),
        route(prefix="0", target="sip:national.example"),
        route(prefix="00", target="sip:intl.example"),
    )
    assert router.resolve(uri("sip:0049301234@pbx.local"), 0.0)[0].uri.host == "intl.example"
    assert router.resolve(uri("sip:0301234@pbx.local"), 0.0)[0].uri.host == "national.example"
    [target] = router.resolve(uri("sip:301234@pbx.local"), 0.0)
    assert target.uri.host == "default.example"
    assert target.source == "static:"


def test_strip_and_add_prefix(tmp_table: LocationTable) -> None:
    router = make_router(
        tmp_table,
        route(prefix="9", target="sip:trunk@198.51.100.1:5080;transport=tcp", strip=1, add_prefix="+49"),
    )
    [target] = router.resolve(uri("sip:9301234567@pbx.local;user=phone"), 0.0)
    assert target.uri == uri("sip:+49301234567@198.51.100.1:5080;transport=tcp")
    assert target.dest == Endpoint("TCP", "198.51.100.1", 5080)
    assert target.source == "static:9"


def test_no_rewrite_keeps_user(tmp_table: LocationTable) -> None:
    router = make_router(tmp_table, route(prefix="2", target="sip:gw.example"))
    [target] = router.resolve(uri("sip:2000@pbx.local"), 0.0)
    assert str(target.uri) == "sip:2000@gw.example"
    assert target.dest == Endpoint("UDP", "gw.example", 5060)


def test_strip_everything_leaves_no_user(tmp_table: LocationTable) -> None:
    router = make_router(tmp_table, route(prefix="*97", target="sip:voicemail.example", strip=10))
    [target] = router.resolve(uri("sip:*97@pbx.local"), 0.0)
    assert str(target.uri) == "sip:voicemail.example"


def test_rewritten_user_is_escaped(tmp_table: LocationTable) -> None:
    router = make_router(tmp_table, route(prefix="", target="sip:gw.example", add_prefix="#"))
    [target] = router.resolve(uri("sip:+1-555@pbx.local"), 0.0)
    assert str(target.uri) == "sip:%23+1-555@gw.example"
    assert target.uri.user_unescaped == "#+1-555"


def test_equal_longest_prefixes_are_failover_targets_in_config_order(tmp_table: LocationTable) -> None:
    router = make_router(
        tmp_table,
        route(prefix="0", target="sip:primary.example"),
        route(prefix="", target="sip:default.example"),
        route(prefix="0", target="sips:backup.example"),
    )
    targets = router.resolve(uri("sip:0123@pbx.local"), 0.0)
    assert [t.uri.host for t in targets] == ["primary.example", "backup.example"]
    assert targets[1].dest == Endpoint("TLS", "backup.example", 5061)


def test_ipv6_target_dest_has_bare_host(tmp_table: LocationTable) -> None:
    router = make_router(tmp_table, route(prefix="", target="sip:[2001:db8::5]:5070"))
    [target] = router.resolve(uri("sip:1@pbx.local"), 0.0)
    assert target.dest == Endpoint("UDP", "2001:db8::5", 5070)
    assert str(target.uri) == "sip:1@[2001:db8::5]:5070"


# --- nothing ---------------------------------------------------------------------------------------------
def test_unknown_user_without_routes_is_empty(tmp_table: LocationTable) -> None:
    assert make_router(tmp_table).resolve(uri("sip:999@pbx.local"), 0.0) == []


def test_no_matching_prefix_is_empty(tmp_table: LocationTable) -> None:
    router = make_router(tmp_table, route(prefix="0", target="sip:gw.example"))
    assert router.resolve(uri("sip:100@pbx.local"), 0.0) == []


@pytest.mark.parametrize("text", ["sip:pbx.local", "tel:+4930123"])
def test_uri_without_user_or_not_sip_is_empty(tmp_table: LocationTable, text: str) -> None:
    router = make_router(tmp_table, route(prefix="", target="sip:gw.example"))
    assert router.resolve(uri(text), 0.0) == []


# --- extensions -----------------------------------------------------------------------------------------
def test_extension_config(tmp_table: LocationTable) -> None:
    ext = ExtensionConfig.model_validate({"no_answer_timeout": 12.0})
    router = Router(tmp_table, routing(extensions={"100": ext}), DOMAIN)
    assert router.extension_config("100") == ext
    assert router.extension_config("200") is None


@pytest.fixture
def tmp_table() -> LocationTable:
    return LocationTable()
