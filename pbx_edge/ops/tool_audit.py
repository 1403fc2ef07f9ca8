"""The AI agents' tool-call audit log: table, row models and the read side (SQLAlchemy Core).

The AI layer (``ai_serve.agents.audit``) writes one row per tool call; the edge's admin API reads them
through :class:`ToolAuditReader`. Both sides share this module so that the edge never imports
``ai_serve`` (layering: the edge runs without Ray or model code).

What a row holds: the UTC time (epoch seconds, like the CDR), the call id, who called (agent, intent),
the tool, its arguments as JSON with personal data already masked by the writer, the outcome (``ok`` or
a failure kind), the HTTP status, the latency and the attempts. The caller's number is deliberately not
stored: the call id joins the row to its CDR, which is where the number already lives.

Storage: its own SQLite file by default (``sqlite:///data/tool_audit.sqlite3``), not the edge's CDR
file, because the AI layer runs on Ray nodes that usually do not share a disk with the edge; in
production both point at the same PostgreSQL URL. Pagination is by cursor (the last row id seen), so
rows written while an operator pages through never shift or repeat a page.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Sequence
from typing import Any, Literal, TypedDict, Unpack, get_args

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import (
    Boolean,
    Column,
    ColumnElement,
    Double,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    and_,
    insert,
    select,
    true,
)
from sqlalchemy.engine import Engine

from pbx_edge.ops.db import BigId, LazyEngine

__all__ = [
    "AUDIT_STATUSES",
    "DEFAULT_AUDIT_URL",
    "MAX_PAGE",
    "AuditFilters",
    "AuditStatus",
    "ToolAuditEntry",
    "ToolAuditPage",
    "ToolAuditQuery",
    "ToolAuditReader",
    "ToolAuditRow",
    "audit_query",
    "create_tables",
    "insert_entries",
    "select_entries",
    "to_epoch",
    "tool_audit_table",
]

DEFAULT_AUDIT_URL = "sqlite:///data/tool_audit.sqlite3"
MAX_PAGE = 1000

AuditStatus = Literal[
    "ok", "not_allowed", "bad_arguments", "timeout", "unreachable", "http_error", "bad_response"
]
AUDIT_STATUSES: tuple[str, ...] = get_args(AuditStatus)

metadata = MetaData()

tool_audit_table = Table(
    "tool_audit",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("ts", Double, nullable=False),  # UTC epoch seconds
    Column("call_id", String(128), nullable=False),
    Column("agent", String(64), nullable=False),
    Column("intent", String(64)),
    Column("tool", String(128), nullable=False),
    Column("arguments", Text, nullable=False),  # JSON, PII masked by the writer
    Column("ok", Boolean, nullable=False),
    Column("status", String(16), nullable=False),
    Column("http_status", Integer),
    Column("latency_ms", Double, nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("detail", Text),  # a short reason on failure, PII masked
    Index("ix_tool_audit_ts", "ts"),
    Index("ix_tool_audit_call_id", "call_id"),
    Index("ix_tool_audit_tool", "tool"),
    Index("ix_tool_audit_status", "status"),
    sqlite_autoincrement=True,
)


class ToolAuditEntry(BaseModel):
    """One tool call as the writer stores it (arguments already masked and JSON-encoded)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    ts: float
    call_id: str = Field(max_length=128)
    agent: str = Field(max_length=64)
    intent: str | None = Field(default=None, max_length=64)
    tool: str = Field(max_length=128)
    arguments: str
    ok: bool
    status: AuditStatus
    http_status: int | None = None
    latency_ms: float
    attempts: int = 0
    detail: str | None = None


class ToolAuditRow(ToolAuditEntry):
    """A stored entry as the admin API returns it: its id (the cursor) and the time as UTC."""

    id: int
    time: dt.datetime


class ToolAuditPage(BaseModel):
    """A page of rows, newest first; pass ``next_cursor`` back as ``cursor`` for the next page."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    items: list[ToolAuditRow]
    next_cursor: int | None = None


class ToolAuditQuery(BaseModel):
    """The filters of ``GET /api/tools/audit`` (build it from the query string; unknown keys are 400s)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    call_id: str | None = None
    tool: str | None = None
    status: AuditStatus | None = None
    since: float | None = Field(default=None, description="UTC epoch seconds, inclusive")
    until: float | None = Field(default=None, description="UTC epoch seconds, exclusive")
    limit: int = Field(default=100, ge=1, le=MAX_PAGE)
    cursor: int | None = Field(default=None, ge=0, description="next_cursor of the previous page")


class AuditFilters(TypedDict, total=False):
    """The keyword filters of the ``query`` methods of the reader and of the writer's ``AuditLog``:
    those of :class:`ToolAuditQuery`, with ``since``/``until`` also as timezone-aware datetimes and
    ``limit`` clamped to 1..MAX_PAGE (default 100) instead of refused."""

    call_id: str | None
    tool: str | None
    status: AuditStatus | None
    since: float | dt.datetime | None
    until: float | dt.datetime | None
    limit: int
    cursor: int | None


def audit_query(filters: AuditFilters) -> ToolAuditQuery:
    """The :class:`ToolAuditQuery` of keyword filters (a naive datetime is a ValueError)."""
    unknown = filters.keys() - AuditFilters.__optional_keys__
    if unknown:  # the keyword arguments a signature would have refused
        raise TypeError(f"unknown tool audit filters: {sorted(unknown)}")
    return ToolAuditQuery.model_validate(
        {
            **filters,
            "since": to_epoch(filters.get("since")),
            "until": to_epoch(filters.get("until")),
            "limit": min(max(1, filters.get("limit", 100)), MAX_PAGE),
        }
    )


def create_tables(engine: Engine) -> None:
    metadata.create_all(engine)


def insert_entries(engine: Engine, entries: Sequence[ToolAuditEntry]) -> None:
    """Commit ``entries`` in one transaction (synchronous: call it from a worker thread)."""
    if entries:
        with engine.begin() as conn:
            conn.execute(insert(tool_audit_table), [e.model_dump() for e in entries])


def select_entries(engine: Engine, query: ToolAuditQuery) -> ToolAuditPage:
    """The rows matching ``query``, newest first (synchronous: call it from a worker thread)."""
    c = tool_audit_table.c
    stmt = select(tool_audit_table).where(_where(query)).order_by(c.id.desc()).limit(query.limit + 1)
    with engine.connect() as conn:
        rows = [dict(row._mapping) for row in conn.execute(stmt)]
    more = len(rows) > query.limit
    items = [_row(r) for r in rows[: query.limit]]
    return ToolAuditPage(items=items, next_cursor=items[-1].id if more else None)


def _row(r: dict[str, Any]) -> ToolAuditRow:
    return ToolAuditRow.model_validate({**r, "time": dt.datetime.fromtimestamp(r["ts"], dt.UTC)})


def _where(q: ToolAuditQuery) -> ColumnElement[bool]:
    c = tool_audit_table.c
    clauses: list[ColumnElement[bool]] = []
    if q.call_id is not None:
        clauses.append(c.call_id == q.call_id)
    if q.tool is not None:
        clauses.append(c.tool == q.tool)
    if q.status is not None:
        clauses.append(c.status == q.status)
    if q.since is not None:
        clauses.append(c.ts >= q.since)
    if q.until is not None:
        clauses.append(c.ts < q.until)
    if q.cursor is not None:
        clauses.append(c.id < q.cursor)
    return and_(true(), *clauses)


class ToolAuditReader:
    """The edge's read-only view of the audit log; queries run in a worker thread."""

    def __init__(self, url: str = DEFAULT_AUDIT_URL) -> None:
        self.url = url
        self._database = LazyEngine(url, create_tables, owner="ToolAuditReader")

    async def query(
        self, query: ToolAuditQuery | None = None, **filters: Unpack[AuditFilters]
    ) -> ToolAuditPage:
        """Rows matching either ``query`` or the keyword filters (see :class:`AuditFilters`)."""
        if query is None:
            query = audit_query(filters)
        engine = await self._database.open()
        return await asyncio.to_thread(select_entries, engine, query)

    async def close(self) -> None:
        self._database.dispose()


def to_epoch(value: float | dt.datetime | None) -> float | None:
    """UTC epoch seconds for a filter value; a naive datetime is refused (whose local time?)."""
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            raise ValueError("naive datetime: pass a timezone-aware datetime (UTC)")
        return value.timestamp()
    return value
