"""The edge's side of the tool audit log: table, filters, cursor pages, and no import of ai_serve."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from pbx_edge.ops.db import make_engine
from pbx_edge.ops.tool_audit import (
    AUDIT_STATUSES,
    ToolAuditEntry,
    ToolAuditQuery,
    ToolAuditReader,
    create_tables,
    insert_entries,
)

pytestmark = pytest.mark.timeout(30)

T0 = 1_790_000_000.0


def entry(i: int) -> ToolAuditEntry:
    status = AUDIT_STATUSES[i % len(AUDIT_STATUSES)]
    return ToolAuditEntry(
        ts=T0 + i,
        call_id=f"call-{i % 3}",
        agent="ivr" if i % 2 else "attendant",
        intent="check_bill" if i % 2 else None,
        tool="billing.lookup" if i % 4 else "crm.create_ticket",
        arguments='{"phone": "[PHONE]"}',
        ok=status == "ok",
        status=status,
        http_status=500 if status == "http_error" else (200 if status == "ok" else None),
        latency_ms=12.5 + i,
        attempts=1,
        detail=None if status == "ok" else "why",
    )


@pytest.fixture
def url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'tool_audit.sqlite3'}"
    engine = make_engine(url)
    create_tables(engine)
    insert_entries(engine, [entry(i) for i in range(30)])
    insert_entries(engine, [])
    engine.dispose()
    return url


async def test_filters(url: str) -> None:
    reader = ToolAuditReader(url)
    try:
        by_call = await reader.query(call_id="call-1")
        assert len(by_call.items) == 10 and {r.call_id for r in by_call.items} == {"call-1"}
        by_tool = await reader.query(tool="crm.create_ticket")
        assert [r.ts - T0 for r in by_tool.items] == [28, 24, 20, 16, 12, 8, 4, 0]
        errors = await reader.query(status="http_error")
        assert {r.http_status for r in errors.items} == {500} and all(not r.ok for r in errors.items)
        window = await reader.query(since=T0 + 10, until=dt.datetime.fromtimestamp(T0 + 13, dt.UTC))
        assert [r.ts - T0 for r in window.items] == [12, 11, 10]
        both = await reader.query(ToolAuditQuery(call_id="call-0", status="ok"))
        assert [(r.call_id, r.status) for r in both.items] == [("call-0", "ok")] * len(both.items)
        assert both.items
        row = by_call.items[0]
        assert row.time == dt.datetime.fromtimestamp(row.ts, dt.UTC)
    finally:
        await reader.close()


async def test_cursor_pages_are_stable_under_new_rows(url: str) -> None:
    reader = ToolAuditReader(url)
    try:
        first = await reader.query(limit=7)
        assert len(first.items) == 7 and first.next_cursor == first.items[-1].id
        engine = make_engine(url)
        insert_entries(engine, [entry(100)])  # a newer row arrives while paging
        engine.dispose()
        ids = [r.id for r in first.items]
        cursor: int | None = first.next_cursor
        while cursor is not None:
            page = await reader.query(limit=7, cursor=cursor)
            ids.extend(r.id for r in page.items)
            cursor = page.next_cursor
        assert ids == list(range(30, 0, -1))
        assert len((await reader.query(limit=10_000)).items) == 31  # clamped to MAX_PAGE, all fit
    finally:
        await reader.close()


async def test_an_empty_database_answers_an_empty_page(tmp_path: Path) -> None:
    reader = ToolAuditReader(f"sqlite:///{tmp_path / 'new' / 'audit.sqlite3'}")
    try:
        page = await reader.query()
    finally:
        await reader.close()
    assert page.items == [] and page.next_cursor is None


async def test_json_shape_for_the_admin_api(url: str) -> None:
    reader = ToolAuditReader(url)
    try:
        page = (await reader.query(limit=2)).model_dump(mode="json")
    finally:
        await reader.close()
    assert set(page) == {"items", "next_cursor"}
    item = page["items"][0]
    assert item["time"].endswith("Z") and item["id"] == 30 and item["arguments"] == '{"phone": "[PHONE]"}'


def test_query_model_rejects_bad_filters() -> None:
    assert ToolAuditQuery.model_validate({"call_id": "c", "limit": "5", "cursor": "9"}).limit == 5
    for bad in ({"status": "exploded"}, {"limit": 0}, {"limit": 1001}, {"cursor": -1}, {"tool_name": "x"}):
        with pytest.raises(ValidationError):
            ToolAuditQuery.model_validate(bad)


async def test_naive_datetimes_are_refused(url: str) -> None:
    reader = ToolAuditReader(url)
    try:
        with pytest.raises(ValueError, match="naive"):
            await reader.query(since=dt.datetime(2026, 1, 1))
    finally:
        await reader.close()


async def test_a_misspelled_filter_is_refused(url: str) -> None:
    reader = ToolAuditReader(url)
    typo: dict[str, Any] = {"tool_name": "billing.lookup"}
    try:
        with pytest.raises(TypeError, match="tool_name"):
            await reader.query(**typo)
    finally:
        await reader.close()


def test_the_edge_side_does_not_import_ai_serve() -> None:
    code = (
        "import sys, pbx_edge.ops.tool_audit\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('ai_serve', 'pipelines', 'ray'))\n"
        "assert not bad, bad\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
