"""The tool-call audit log: real calls to a real HTTP server, rows in SQLite, PII masked."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web

from ai_serve.agents.audit import AuditLog, entry_for, mask_arguments
from ai_serve.agents.tools import CallerContext, ToolRegistry, ToolResult
from pbx_edge.ops.tool_audit import ToolAuditReader

pytestmark = pytest.mark.timeout(30)

PHONE = "010-9876-5432"
IVR = CallerContext(call_id="call-A", agent="ivr", intent="check_bill", caller=PHONE)
OTHER = CallerContext(call_id="call-B", agent="sales", intent="buy")


async def _balance(request: web.Request) -> web.StreamResponse:
    if request.match_info["phone"] == "01000000000":
        return web.Response(status=500)
    return web.json_response({"balance": 1000})


async def _ticket(request: web.Request) -> web.StreamResponse:
    return web.json_response({"id": "T-9"}, status=201)


@pytest.fixture
async def base_url() -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_get("/accounts/{phone}/balance", _balance)
    app.router.add_post("/tickets", _ticket)
    runner = web.AppRunner(app, shutdown_timeout=0.2)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    await runner.cleanup()


def _tools(base: str, dead: str) -> list[dict[str, object]]:
    phone_schema = {
        "type": "object",
        "properties": {"phone": {"type": "string", "pattern": "^[0-9-]{8,15}$"}},
        "required": ["phone"],
    }
    common = {"allowed": {"agents": ["ivr"]}, "timeout_s": 2}
    return [
        {"name": "billing.lookup", "description": "d", "url": base + "/accounts/{phone}/balance"}
        | {"parameters": phone_schema}
        | common,
        {"name": "billing.dead", "description": "d", "url": dead + "/accounts/{phone}/balance"}
        | {"parameters": phone_schema}
        | common,
        {"name": "crm.create_ticket", "description": "d", "url": base + "/tickets", "method": "POST"}
        | common,
    ]


@pytest.fixture
async def audited(base_url: str, tmp_path: Path) -> AsyncIterator[tuple[ToolRegistry, AuditLog, str]]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    path = tmp_path / "tools.yaml"
    path.write_text(yaml.safe_dump({"tools": _tools(base_url, dead)}), encoding="utf-8")
    url = f"sqlite:///{tmp_path / 'audit.sqlite3'}"
    audit = AuditLog(url, flush_interval=0.05)
    await audit.start()
    async with ToolRegistry.from_yaml(path, environ={}, recorder=audit) as registry:
        yield registry, audit, url
    await audit.close()


async def _make_calls(registry: ToolRegistry) -> None:
    await registry.call("billing.lookup", {"phone": PHONE}, who=IVR)  # ok
    await registry.call("billing.lookup", {"phone": "01000000000"}, who=IVR)  # http_error 500
    await registry.call("billing.lookup", {"phone": "not a number"}, who=IVR)  # bad_arguments
    await registry.call("billing.dead", {"phone": PHONE}, who=IVR)  # unreachable
    await registry.call("billing.lookup", {"phone": PHONE}, who=OTHER)  # not_allowed
    ticket = {"summary": "Call me back at 010-1111-2222 or mail kim.minsu@example.com", "topic": "refund"}
    await registry.call("crm.create_ticket", ticket, who=IVR)  # ok, free text masked


async def test_every_call_is_audited_with_masked_arguments(
    audited: tuple[ToolRegistry, AuditLog, str],
) -> None:
    registry, audit, _ = audited
    await _make_calls(registry)
    page = await audit.query(call_id="call-A")
    statuses = [(r.tool, r.status, r.http_status) for r in reversed(page.items)]
    assert statuses == [
        ("billing.lookup", "ok", 200),
        ("billing.lookup", "http_error", 500),
        ("billing.lookup", "bad_arguments", None),
        ("billing.dead", "unreachable", None),
        ("crm.create_ticket", "ok", 201),
    ]
    for row in page.items:
        assert PHONE not in row.arguments and "9876" not in row.arguments
        assert row.agent == "ivr" and row.intent == "check_bill"
        assert row.time.tzinfo is dt.UTC and abs(row.time.timestamp() - time.time()) < 60
        assert row.latency_ms >= 0
    first = page.items[-1]
    assert json.loads(first.arguments) == {"phone": "[PHONE]"} and first.ok and first.attempts == 1
    ticket = json.loads(page.items[0].arguments)
    assert ticket == {"summary": "Call me back at [PHONE] or mail [EMAIL]", "topic": "refund"}
    bad = next(r for r in page.items if r.status == "bad_arguments")
    assert bad.detail == 'phone: fails pattern "^[0-9-]{8,15}$"' and not bad.ok  # no value in it


async def test_query_filters_and_cursor(audited: tuple[ToolRegistry, AuditLog, str]) -> None:
    registry, audit, _ = audited
    await _make_calls(registry)
    denied = await audit.query(status="not_allowed")
    assert [(r.call_id, r.agent) for r in denied.items] == [("call-B", "sales")]
    lookups = await audit.query(tool="billing.lookup")
    assert len(lookups.items) == 4 and lookups.next_cursor is None
    assert [r.status for r in (await audit.query(tool="billing.dead", status="unreachable")).items] == [
        "unreachable"
    ]
    seen: list[int] = []
    cursor = None
    while True:
        page = await audit.query(limit=2, cursor=cursor)
        seen.extend(r.id for r in page.items)
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert len(seen) == 6 and seen == sorted(seen, reverse=True)
    future = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
    assert (await audit.query(since=future)).items == []
    assert len((await audit.query(until=future)).items) == 6
    with pytest.raises(ValueError, match="naive"):
        await audit.query(since=dt.datetime(2026, 1, 1))
    typo: dict[str, Any] = {"caller_id": "call-A"}
    with pytest.raises(TypeError, match="caller_id"):
        await audit.query(**typo)


async def test_the_edge_reads_the_same_rows(audited: tuple[ToolRegistry, AuditLog, str]) -> None:
    registry, audit, url = audited
    await _make_calls(registry)
    await audit.flush()
    reader = ToolAuditReader(url)
    try:
        page = await reader.query(call_id="call-A", status="ok")
    finally:
        await reader.close()
    assert [r.tool for r in page.items] == ["crm.create_ticket", "billing.lookup"]
    assert page.model_dump(mode="json")["items"][0]["time"].endswith("Z")


async def test_rows_are_committed_in_the_background(audited: tuple[ToolRegistry, AuditLog, str]) -> None:
    registry, audit, url = audited
    await registry.call("billing.lookup", {"phone": PHONE}, who=IVR)
    deadline = time.monotonic() + 5
    while audit.pending and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    assert audit.pending == 0  # the writer task committed it; nobody flushed
    reader = ToolAuditReader(url)
    try:
        assert len((await reader.query()).items) == 1
    finally:
        await reader.close()


async def test_close_writes_what_is_buffered(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'a.sqlite3'}"
    audit = AuditLog(url, flush_interval=10)
    await audit.start()
    result = ToolResult("billing.lookup", False, None, None, "timeout", 2000.0, spoken="x", attempts=2)
    start = time.perf_counter()
    for i in range(200):
        audit.record("billing.lookup", {"phone": PHONE, "n": i}, IVR, result)
    per_record_ms = (time.perf_counter() - start) * 1000 / 200
    assert per_record_ms < 5, per_record_ms  # masking only; the database is not touched here
    assert audit.pending == 200
    await audit.close()
    reader = ToolAuditReader(url)
    try:
        page = await reader.query(limit=1000)
    finally:
        await reader.close()
    assert len(page.items) == 200 and {r.status for r in page.items} == {"timeout"}
    assert {r.attempts for r in page.items} == {2}


def test_mask_arguments_by_key_and_by_content() -> None:
    args = {
        "callerPhone": "+82 10 1234 5678",
        "customer_name": "김민수",
        "name": "John Smith",
        "email": "a@b.co",
        "card_number": "4111 1111 1111 1111",
        "address": {"street": "12 Oak Street", "zip": "94110"},
        "phone_verified": True,
        "product_name": "plan 5G",
        "notes": ["주민번호 900101-1234567 입니다", "card 4111111111111111"],
        "count": 3,
    }
    masked = mask_arguments(args)
    assert masked == {
        "callerPhone": "[PHONE]",
        "customer_name": "[NAME]",
        "name": "[NAME]",
        "email": "[EMAIL]",
        "card_number": "[CARD]",
        "address": {"street": "[ADDRESS]", "zip": "[ADDRESS]"},
        "phone_verified": True,
        "product_name": "plan 5G",
        "notes": ["주민번호 [RRN] 입니다", "card [CARD]"],
        "count": 3,
    }
    assert args["name"] == "John Smith"  # a copy, the input is untouched


def test_unparsable_arguments_are_masked_as_text() -> None:
    result = ToolResult(
        "billing.lookup", False, None, None, "bad_arguments", 0.1, detail="'010-1234-5678' bad"
    )
    entry = entry_for("billing.lookup", '{"phone": "010-1234-5678"', IVR, result)
    assert "1234" not in entry.arguments and "[PHONE]" in entry.arguments
    assert entry.detail == "'[PHONE]' bad"
