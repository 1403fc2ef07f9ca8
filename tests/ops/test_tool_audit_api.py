"""``GET /api/tools/audit`` over real HTTP on loopback, reading rows written to a real SQLite audit
log through the writer side of :mod:`pbx_edge.ops.tool_audit` (what ``ai_serve.agents.audit`` uses)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from pbx_edge.ops.admin_api import make_admin_app, start_admin
from pbx_edge.ops.auth import hash_token
from pbx_edge.ops.config import AdminConfig, AdminToken, parse_config
from pbx_edge.ops.db import make_engine
from pbx_edge.ops.events import EventBus
from pbx_edge.ops.tool_audit import ToolAuditEntry, ToolAuditReader, create_tables, insert_entries
from tests.ops.test_admin_api import FakeCdr, FakeNode

VIEWER = "viewer-token-0123456789"
CONFIG = AdminConfig(port=0, tokens=[AdminToken(name="dash", sha256=hash_token(VIEWER), role="viewer")])
T0 = 1_764_000_000.0


def _entry(i: int, call_id: str, tool: str, status: str = "ok") -> ToolAuditEntry:
    return ToolAuditEntry(
        ts=T0 + i,
        call_id=call_id,
        agent="ivr",
        intent="balance",
        tool=tool,
        arguments=json.dumps({"account": "<account>", "n": i}),
        ok=status == "ok",
        status=status,
        http_status=200 if status == "ok" else 504,
        latency_ms=12.5 + i,
        attempts=1,
        detail=None if status == "ok" else "upstream timed out",
    )


@dataclass
class AuditApi:
    base: str
    http: aiohttp.ClientSession

    async def get(self, query: str = "", token: str | None = VIEWER) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with self.http.get(f"{self.base}/api/tools/audit{query}", headers=headers) as resp:
            return resp.status, await resp.json(content_type=None)


@pytest.fixture
async def audit_api(tmp_path: Path) -> AsyncIterator[AuditApi]:
    url = f"sqlite:///{tmp_path}/tool_audit.sqlite3"
    engine = make_engine(url)  # the AI layer's side: its own engine, its own transactions
    create_tables(engine)
    rows = [
        _entry(i, "call-a" if i < 4 else "call-b", "get_balance" if i % 2 else "lookup") for i in range(8)
    ]
    rows.append(_entry(8, "call-b", "get_balance", "timeout"))
    insert_entries(engine, rows)
    engine.dispose()
    reader = ToolAuditReader(url)
    app = make_admin_app(FakeNode(), EventBus(), FakeCdr([]), CONFIG, tool_audit=reader)
    runner = await start_admin(app, "127.0.0.1", 0)
    host, port = runner.addresses[0][:2]
    async with aiohttp.ClientSession() as http:
        yield AuditApi(f"http://{host}:{port}", http)
    await runner.cleanup()
    await reader.close()


async def test_all_rows_newest_first(audit_api: AuditApi) -> None:
    status, page = await audit_api.get()
    assert status == 200
    assert [r["ts"] for r in page["items"]] == [T0 + i for i in range(8, -1, -1)]
    assert page["next_cursor"] is None
    newest = page["items"][0]
    assert newest["status"] == "timeout" and newest["ok"] is False and newest["http_status"] == 504
    assert newest["detail"] == "upstream timed out" and newest["time"].startswith("2025-11-24T")
    assert json.loads(newest["arguments"]) == {"account": "<account>", "n": 8}


async def test_filters(audit_api: AuditApi) -> None:
    _, by_call = await audit_api.get("?call_id=call-a")
    assert {r["call_id"] for r in by_call["items"]} == {"call-a"} and len(by_call["items"]) == 4
    _, by_tool = await audit_api.get("?tool=get_balance&call_id=call-b")
    assert [r["ts"] - T0 for r in by_tool["items"]] == [8, 7, 5]
    _, failed = await audit_api.get("?status=timeout")
    assert [r["ts"] - T0 for r in failed["items"]] == [8]
    _, window = await audit_api.get(f"?since={T0 + 2}&until={T0 + 5}")
    assert [r["ts"] - T0 for r in window["items"]] == [4, 3, 2]  # since inclusive, until exclusive


async def test_pages_follow_the_cursor(audit_api: AuditApi) -> None:
    seen: list[float] = []
    query = "?limit=4"
    while True:
        status, page = await audit_api.get(query)
        assert status == 200 and len(page["items"]) <= 4
        seen += [r["ts"] - T0 for r in page["items"]]
        if page["next_cursor"] is None:
            break
        query = f"?limit=4&cursor={page['next_cursor']}"
    assert seen == [8, 7, 6, 5, 4, 3, 2, 1, 0]


@pytest.mark.parametrize(
    ("query", "parameter"),
    [
        ("?status=lost", "status"),
        ("?limit=0", "limit"),
        ("?limit=1001", "limit"),
        ("?since=inf", "since"),
        ("?cursor=-1", "cursor"),
        ("?cursor=99999999999999999999999", "cursor"),
        ("?tool_name=x", "tool_name"),
    ],
)
async def test_bad_parameters_are_400_problems(audit_api: AuditApi, query: str, parameter: str) -> None:
    status, body = await audit_api.get(query)
    assert status == 400, body
    assert body["type"] == "urn:smartpbx:problem:invalid-parameters"
    assert [e["parameter"] for e in body["errors"]] == [parameter]


async def test_needs_a_viewer_token(audit_api: AuditApi) -> None:
    status, body = await audit_api.get(token=None)
    assert status == 401 and body["status"] == 401


async def test_without_a_reader_it_is_404(tmp_path: Path) -> None:
    app = make_admin_app(FakeNode(), EventBus(), FakeCdr([]), CONFIG)
    runner = await start_admin(app, "127.0.0.1", 0)
    host, port = runner.addresses[0][:2]
    try:
        async with aiohttp.ClientSession() as http:
            api = AuditApi(f"http://{host}:{port}", http)
            status, body = await api.get()
        assert status == 404 and body["status"] == 404
    finally:
        await runner.cleanup()


def test_the_audit_url_is_configurable() -> None:
    assert parse_config({}, environ={}).admin.tool_audit_url == "sqlite:///data/tool_audit.sqlite3"
    config = parse_config({"admin": {"tool_audit_url": "postgresql://audit/db"}}, environ={})
    assert config.admin.tool_audit_url == "postgresql://audit/db"
