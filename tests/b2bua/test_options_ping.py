"""OptionsPinger: scheduling against a fake clock, failure counting, death, refresh and removal."""

from __future__ import annotations

import pytest

from pbx_edge.b2bua.location import Binding, LocationTable
from pbx_edge.b2bua.options_ping import OptionsPinger
from pbx_edge.ops.config import OptionsPingConfig
from pbx_edge.sip.endpoint import Endpoint
from pbx_edge.sip.uri import Address

AOR = "sip:100@pbx.local"
SRC = Endpoint("UDP", "192.0.2.10", 5060)
CONFIG = OptionsPingConfig.model_validate({"enabled": True, "interval": 30.0, "failures_before_dead": 2})


def bind(
    table: LocationTable, contact: str, now: float, *, expires: int = 3600, cseq: int = 1, aor: str = AOR
) -> Binding:
    return table.bind(aor, Address.parse(contact), expires, SRC, "c", cseq, now)


@pytest.fixture
def table() -> LocationTable:
    return LocationTable()


@pytest.fixture
def pinger(table: LocationTable) -> OptionsPinger:
    return OptionsPinger(table, CONFIG)


def test_disabled_pinger_does_nothing(table: LocationTable) -> None:
    pinger = OptionsPinger(table, OptionsPingConfig.model_validate({"enabled": False}))
    bind(table, "sip:100@a", 0.0)
    assert not pinger.enabled
    assert pinger.get_timer() is None
    assert pinger.due(1e6) == []


def test_empty_table_has_no_timer(pinger: OptionsPinger) -> None:
    assert pinger.enabled
    assert pinger.get_timer() is None
    assert pinger.due(100.0) == []


def test_first_ping_one_interval_after_registration(table: LocationTable, pinger: OptionsPinger) -> None:
    b = bind(table, "sip:100@a", 10.0)
    assert pinger.get_timer() == 40.0
    assert pinger.due(39.9) == []
    assert pinger.due(40.0) == [b]
    assert pinger.due(40.0) == []  # not again until the next interval
    assert pinger.get_timer() == 70.0


def test_every_interval_per_binding(table: LocationTable, pinger: OptionsPinger) -> None:
    a = bind(table, "sip:100@a", 0.0)
    b = bind(table, "sip:100@b", 5.0)
    assert pinger.due(30.0) == [a]
    assert pinger.due(35.0) == [b]
    assert pinger.get_timer() == 60.0
    assert pinger.due(70.0) == [a, b]  # a late wake-up pings both, earliest first
    assert pinger.get_timer() == 100.0


def test_binding_added_after_timer_was_read(table: LocationTable, pinger: OptionsPinger) -> None:
    bind(table, "sip:100@a", 0.0)
    assert pinger.get_timer() == 30.0
    bind(table, "sip:200@a", 1.0, aor="sip:200@pbx.local")
    assert pinger.get_timer() == 30.0
    assert len(pinger.due(31.0)) == 2


def test_death_after_consecutive_failures(table: LocationTable, pinger: OptionsPinger) -> None:
    b = bind(table, "sip:100@a", 0.0)
    keep = bind(table, "sip:100@b", 0.0)
    assert b in pinger.due(30.0)
    assert pinger.on_reply(b, ok=False, now=62.0) is False
    assert pinger.failures(b) == 1
    assert b in pinger.due(62.0)
    assert pinger.on_reply(b, ok=False, now=94.0) is True
    assert table.lookup(AOR, 94.0) == [keep]
    assert pinger.failures(b) == 0
    assert pinger.due(1000.0) == [keep]  # the dead one is no longer scheduled
    assert pinger.on_reply(b, ok=False, now=1000.0) is False  # late news about a removed binding


def test_success_resets_failures(table: LocationTable, pinger: OptionsPinger) -> None:
    b = bind(table, "sip:100@a", 0.0)
    pinger.due(30.0)
    assert pinger.on_reply(b, ok=False, now=31.0) is False
    assert pinger.on_reply(b, ok=True, now=61.0) is False
    assert pinger.failures(b) == 0
    assert pinger.on_reply(b, ok=False, now=91.0) is False
    assert len(table) == 1


def test_single_failure_threshold(table: LocationTable) -> None:
    pinger = OptionsPinger(
        table,
        OptionsPingConfig.model_validate({"enabled": True, "interval": 10.0, "failures_before_dead": 1}),
    )
    b = bind(table, "sip:100@a", 0.0)
    assert pinger.due(10.0) == [b]
    assert pinger.on_reply(b, ok=False, now=15.0) is True
    assert len(table) == 0
    assert pinger.get_timer() is None


def test_refresh_restarts_interval_and_clears_failures(table: LocationTable, pinger: OptionsPinger) -> None:
    b = bind(table, "sip:100@a", 0.0)
    pinger.due(30.0)
    pinger.on_reply(b, ok=False, now=31.0)
    refreshed = bind(table, "sip:100@a", 50.0, cseq=2)
    assert pinger.get_timer() == 80.0
    assert pinger.failures(refreshed) == 0
    # the failure of a ping sent before the refresh does not count against the refreshed binding
    assert pinger.on_reply(b, ok=False, now=51.0) is False
    assert len(table) == 1
    assert pinger.due(80.0) == [refreshed]


def test_removed_binding_is_forgotten(table: LocationTable, pinger: OptionsPinger) -> None:
    b = bind(table, "sip:100@a", 0.0)
    assert pinger.get_timer() == 30.0
    table.unbind(AOR)
    assert pinger.get_timer() is None
    assert pinger.on_reply(b, ok=False, now=31.0) is False
    assert pinger.failures(b) == 0


def test_expired_binding_not_pinged(table: LocationTable, pinger: OptionsPinger) -> None:
    bind(table, "sip:100@a", 0.0, expires=20)
    assert pinger.due(30.0) == []  # expired at 20, the table's expire() reports it
    assert pinger.get_timer() is None
    assert len(table) == 1
    table.expire(30.0)
    assert len(table) == 0
    assert pinger.get_timer() is None


def test_dead_binding_reregisters(table: LocationTable) -> None:
    pinger = OptionsPinger(
        table,
        OptionsPingConfig.model_validate({"enabled": True, "interval": 10.0, "failures_before_dead": 1}),
    )
    b = bind(table, "sip:100@a", 0.0)
    pinger.due(10.0)
    assert pinger.on_reply(b, ok=False, now=12.0) is True
    again = bind(table, "sip:100@a", 20.0, cseq=2)
    assert pinger.due(30.0) == [again]
