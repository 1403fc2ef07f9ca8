"""Metrics scraped over real HTTP from :func:`start_metrics`; the node is a fake MetricsSource."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from prometheus_client import REGISTRY, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from pbx_edge.ops.metrics import INVITE_TRYING_BUCKETS, EdgeMetrics, MetricsSnapshot, start_metrics
from pbx_edge.ops.models import PortUsage

DASHBOARD = Path(__file__).resolve().parents[2] / "cluster" / "grafana" / "smartpbx-edge.json"

SNAPSHOT = MetricsSnapshot(
    active_calls=3,
    calls_by_disposition={"answered": 40, "busy": 2, "no_answer": 5},
    sip_requests_received={"INVITE": 50, "BYE": 40, "ACK": 45, "XFOO": 2, "YBAR": 1},
    sip_responses_sent={100: 50, 180: 47, 200: 88, 486: 2},
    transaction_retransmissions=7,
    transaction_timeouts=1,
    port_usage=PortUsage(
        allocated_calls=3, total_calls=2500, allocated_ports=24, total_ports=20000, unusable_blocks=2
    ),
    relay_packets=123_456,
    relay_bytes=21_234_567,
    relay_dropped_packets=9,
    tap_dropped_frames=4,
    webhook_delivered=90,
    webhook_failed=6,
    webhook_outbox_depth=11,
    rate_limited_rejected=13,
    rate_limited_dropped=250,
    ai_streams_active=2,
    ai_streams_started=30,
    ai_streams_shed=5,
    ai_frames_sent=99_000,
    ai_frames_dropped={"disconnected": 40},
    ai_reconnects=3,
    ai_connect_failures=8,
    ai_transcripts={"final": 70, "partial": 200},
)


@dataclass
class FakeNode:
    snapshot: MetricsSnapshot = SNAPSHOT
    scrapes: int = 0

    def metrics_snapshot(self) -> MetricsSnapshot:
        self.scrapes += 1
        return self.snapshot


@dataclass
class Scraper:
    url: str
    node: FakeNode
    metrics: EdgeMetrics
    http: aiohttp.ClientSession

    async def text(self, accept: str | None = None) -> tuple[str, str]:
        headers = {"Accept": accept} if accept else {}
        async with self.http.get(self.url, headers=headers) as resp:
            assert resp.status == 200
            return resp.headers["Content-Type"], await resp.text()

    async def samples(self) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        _, text = await self.text()
        return {
            (s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }


@pytest.fixture
async def scraper() -> AsyncIterator[Scraper]:
    node = FakeNode()
    metrics = EdgeMetrics(node)
    runner: web.AppRunner = await start_metrics(metrics.registry, "127.0.0.1", 0)
    host, port = runner.addresses[0][:2]
    async with aiohttp.ClientSession() as http:
        yield Scraper(f"http://{host}:{port}/metrics", node, metrics, http)
    await runner.cleanup()


def _value(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


async def test_scrape_reports_the_node_state(scraper: Scraper) -> None:
    s = await scraper.samples()
    assert _value(s, "smartpbx_calls_active") == 3
    assert _value(s, "smartpbx_calls_total", disposition="answered") == 40
    assert _value(s, "smartpbx_calls_total", disposition="busy") == 2
    for disposition in ("failed", "cancelled", "rejected"):  # every disposition exists from the start
        assert _value(s, "smartpbx_calls_total", disposition=disposition) == 0
    assert _value(s, "smartpbx_sip_requests_received_total", method="INVITE") == 50
    assert (
        _value(s, "smartpbx_sip_requests_received_total", method="other") == 3
    )  # XFOO + YBAR: bounded labels
    assert _value(s, "smartpbx_sip_responses_sent_total", code="486") == 2
    assert _value(s, "smartpbx_sip_transaction_retransmissions_total") == 7
    assert _value(s, "smartpbx_sip_transaction_timeouts_total") == 1
    assert _value(s, "smartpbx_media_pool_calls_allocated") == 3
    assert _value(s, "smartpbx_media_pool_calls_capacity") == 2500
    assert _value(s, "smartpbx_media_pool_ports_allocated") == 24
    assert _value(s, "smartpbx_media_pool_ports_capacity") == 20000
    assert _value(s, "smartpbx_media_pool_unusable_blocks") == 2
    assert _value(s, "smartpbx_media_relay_packets_total") == 123_456
    assert _value(s, "smartpbx_media_relay_bytes_total") == 21_234_567
    assert _value(s, "smartpbx_media_relay_dropped_packets_total") == 9
    assert _value(s, "smartpbx_media_tap_dropped_frames_total") == 4
    assert _value(s, "smartpbx_webhook_delivery_attempts_total", result="delivered") == 90
    assert _value(s, "smartpbx_webhook_delivery_attempts_total", result="failed") == 6
    assert _value(s, "smartpbx_webhook_outbox_depth") == 11
    assert _value(s, "smartpbx_rate_limited_requests_total", action="rejected") == 13
    assert _value(s, "smartpbx_rate_limited_requests_total", action="dropped") == 250
    assert _value(s, "smartpbx_ai_streams_active") == 2
    assert _value(s, "smartpbx_ai_streams_started_total") == 30
    assert _value(s, "smartpbx_ai_streams_shed_total") == 5
    assert _value(s, "smartpbx_ai_frames_sent_total") == 99_000
    assert _value(s, "smartpbx_ai_frames_dropped_total", cause="disconnected") == 40
    assert _value(s, "smartpbx_ai_frames_dropped_total", cause="queue") == 0  # every cause from the start
    assert _value(s, "smartpbx_ai_reconnects_total") == 3
    assert _value(s, "smartpbx_ai_connect_failures_total") == 8
    assert _value(s, "smartpbx_ai_transcripts_total", kind="final") == 70
    assert _value(s, "smartpbx_ai_transcripts_total", kind="gap") == 0


async def test_values_are_read_at_scrape_time(scraper: Scraper) -> None:
    await scraper.samples()
    scraper.node.snapshot = replace(SNAPSHOT, active_calls=0, relay_packets=200_000, port_usage=None)
    s = await scraper.samples()
    assert scraper.node.scrapes == 2
    assert _value(s, "smartpbx_calls_active") == 0
    assert _value(s, "smartpbx_media_relay_packets_total") == 200_000
    assert not any(name.startswith("smartpbx_media_pool_") for name, _ in s)  # pass-through: no pool


async def test_invite_trying_histogram(scraper: Scraper) -> None:
    for seconds in (0.00005, 0.0003, 0.002, 0.2):
        scraper.metrics.invite_trying.observe(seconds)
    s = await scraper.samples()
    bucket = "smartpbx_sip_invite_trying_seconds_bucket"
    assert INVITE_TRYING_BUCKETS[0] == 0.0001 and INVITE_TRYING_BUCKETS[-1] == 0.1
    expected = {0.0001: 1, 0.00025: 1, 0.0005: 2, 0.001: 2, 0.0025: 3, 0.01: 3, 0.1: 3}
    for le, count in expected.items():
        assert _value(s, bucket, le=repr(le)) == count, le
    assert _value(s, bucket, le="+Inf") == 4
    assert _value(s, "smartpbx_sip_invite_trying_seconds_count") == 4
    assert _value(s, "smartpbx_sip_invite_trying_seconds_sum") == pytest.approx(0.20235)


async def test_openmetrics_when_asked(scraper: Scraper) -> None:
    content_type, text = await scraper.text("application/openmetrics-text; version=1.0.0")
    assert content_type.startswith("application/openmetrics-text")
    assert text.rstrip().endswith("# EOF")
    content_type, text = await scraper.text()
    assert content_type.startswith("text/plain")
    assert "# TYPE smartpbx_calls_total counter" in text


def test_own_registry_and_naming() -> None:
    first, second = EdgeMetrics(FakeNode()), EdgeMetrics(FakeNode())  # two nodes, one process: no clash
    assert b"smartpbx_" not in generate_latest(REGISTRY)
    families = list(text_string_to_metric_families(generate_latest(first.registry).decode()))
    assert generate_latest(second.registry)
    for family in families:
        assert family.name.startswith("smartpbx_")
        assert re.fullmatch(r"[a-z_]+", family.name), family.name
        if family.type == "counter":
            assert all(s.name.endswith(("_total", "_created")) for s in family.samples)
    assert EdgeMetrics().registry.get_sample_value("smartpbx_calls_active") is None  # no source yet


# --- the Grafana dashboard -------------------------------------------------------------------------
def _walk(node: Any) -> list[dict[str, Any]]:
    found = []
    if isinstance(node, dict):
        found.append(node)
        for value in node.values():
            found += _walk(value)
    elif isinstance(node, list):
        for value in node:
            found += _walk(value)
    return found


def _queries(dashboard: dict[str, Any]) -> list[str]:
    exprs = [obj["expr"] for obj in _walk(dashboard["panels"]) if isinstance(obj.get("expr"), str)]
    for variable in dashboard["templating"]["list"]:
        query = variable["query"]
        exprs.append(query["query"] if isinstance(query, dict) else query)
    return exprs


async def test_dashboard_queries_only_exported_metrics(scraper: Scraper) -> None:
    scraper.metrics.invite_trying.observe(0.001)
    dashboard = json.loads(DASHBOARD.read_text())
    _, text = await scraper.text()
    exported = {s.name for family in text_string_to_metric_families(text) for s in family.samples}
    queries = _queries(dashboard)
    assert len(queries) > 15
    used = {name for expr in queries for name in re.findall(r"\bsmartpbx_\w+", expr)}
    assert used <= exported, used - exported
    # ... and every metric we export has a panel
    families = {
        re.sub(r"_(total|bucket|sum|count)$", "", name) for name in exported if not name.endswith("_created")
    }
    shown = {re.sub(r"_(total|bucket|sum|count)$", "", name) for name in used}
    assert families <= shown, families - shown


def test_dashboard_rates_counters_and_uses_the_datasource_input() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert [i["name"] for i in dashboard["__inputs"]] == ["DS_PROMETHEUS"]
    datasources = [obj["datasource"] for obj in _walk(dashboard) if isinstance(obj.get("datasource"), dict)]
    assert datasources and all(ds["uid"] == "${DS_PROMETHEUS}" for ds in datasources)
    for expr in _queries(dashboard):
        for name in re.findall(r"\bsmartpbx_\w+_(?:total|bucket|sum|count)\b", expr):
            assert re.search(rf"rate\({name}\b", expr), f"{name} not under rate() in {expr}"
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
