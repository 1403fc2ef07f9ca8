"""The CDR store: one row per call, in SQLite by default or PostgreSQL by URL (SQLAlchemy Core).

Why batched: a call ends on the event loop, and a synchronous INSERT + COMMIT (an fsync on SQLite)
would stall every other call for milliseconds. ``add()`` only appends to a buffer; a
:class:`~pbx_edge.ops.db.BatchWriter` commits the buffer from a worker thread about every 100 ms
(the plumbing is :class:`~pbx_edge.ops.buffered_store.BufferedStore`'s).
Reads (``query``, ``export_csv``, ``count``) are coroutines: they first flush the buffer, so they
always see every record accepted before the call, and then run the SELECT in a thread.

Durability: ``close()`` writes everything that was accepted; a crash can lose at most the records
of the last ~100 ms.
"""

from __future__ import annotations

import csv
import io
from typing import Any, TypedDict, Unpack

from sqlalchemy import (
    Column,
    ColumnElement,
    Double,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    and_,
    func,
    insert,
    select,
    true,
)
from sqlalchemy.engine import Engine

from pbx_edge.ops.buffered_store import BufferedStore
from pbx_edge.ops.db import BigId
from pbx_edge.ops.models import CdrRecord

FIELDS: tuple[str, ...] = tuple(CdrRecord.model_fields)

metadata = MetaData()

cdr_table = Table(
    "cdr",
    metadata,
    # A surrogate key: a duplicate call_id (a node bug) must not wedge the writer on a constraint.
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("call_id", String(128), nullable=False),
    Column("node_id", String(128), nullable=False),
    Column("a_call_id", String(256), nullable=False),
    Column("b_call_id", String(256)),
    Column("caller", String(256), nullable=False),
    Column("callee", String(256), nullable=False),
    Column("start", Double, nullable=False),
    Column("answer", Double),
    Column("end", Double, nullable=False),
    Column("duration", Double, nullable=False),
    Column("billsec", Double, nullable=False),
    Column("disposition", String(16), nullable=False),
    Column("end_reason", String(64), nullable=False),
    Column("hangup_side", String(8), nullable=False),
    Column("sip_code", Integer),
    Column("codec", String(32)),
    Index("ix_cdr_start", "start"),
    Index("ix_cdr_caller", "caller"),
    Index("ix_cdr_callee", "callee"),
    Index("ix_cdr_disposition", "disposition"),
    Index("ix_cdr_call_id", "call_id"),
    sqlite_autoincrement=True,
)


class CdrFilters(TypedDict, total=False):
    """The filters of :meth:`CdrStore.query`, ``export_csv`` and ``count``; None matches every call.

    ``since <= start < until``; ``caller``, ``callee`` and ``disposition`` match exactly.
    """

    since: float | None
    until: float | None
    caller: str | None
    callee: str | None
    disposition: str | None


class CdrStore(BufferedStore[dict[str, Any]]):
    """Buffered, batched CDR storage; see the module docstring."""

    def __init__(self, url: str = "sqlite:///data/cdr.sqlite3", *, flush_interval: float = 0.1) -> None:
        super().__init__(url, metadata.create_all, name="cdr", flush_interval=flush_interval)

    def add(self, record: CdrRecord) -> None:
        """Accept a record; it is committed within ~100 ms (never blocks the event loop)."""
        self._put(record.model_dump())

    async def query(
        self, *, limit: int = 100, offset: int = 0, **filters: Unpack[CdrFilters]
    ) -> tuple[list[CdrRecord], int]:
        """Matching records (see :class:`CdrFilters`), newest start first, and how many match."""
        return await self._read(_query, _where(filters), max(0, limit), max(0, offset))

    async def export_csv(
        self, *, limit: int | None = None, offset: int = 0, **filters: Unpack[CdrFilters]
    ) -> str:
        """The matching records as CSV, oldest first; header row = the CdrRecord field names."""
        rows = await self._read(_select_rows, _where(filters), limit, max(0, offset), False)
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=FIELDS, lineterminator="\r\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: "" if v is None else v for k, v in row.items()})
        return out.getvalue()

    async def count(self, **filters: Unpack[CdrFilters]) -> int:
        return await self._read(_count, _where(filters))

    def _write(self, engine: Engine, batch: list[dict[str, Any]]) -> None:
        with engine.begin() as conn:
            conn.execute(insert(cdr_table), batch)


# --- worker-thread side -----------------------------------------------------------------------


def _count(engine: Engine, where: ColumnElement[bool]) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(cdr_table).where(where)).scalar_one())


def _select_rows(
    engine: Engine, where: ColumnElement[bool], limit: int | None, offset: int, newest_first: bool
) -> list[dict[str, Any]]:
    columns = [cdr_table.c[name] for name in FIELDS]
    order = (
        (cdr_table.c.start.desc(), cdr_table.c.id.desc())
        if newest_first
        else (cdr_table.c.start.asc(), cdr_table.c.id.asc())
    )
    stmt = select(*columns).where(where).order_by(*order).offset(offset)
    if limit is not None:
        stmt = stmt.limit(limit)
    with engine.connect() as conn:
        return [dict(row._mapping) for row in conn.execute(stmt)]


def _query(
    engine: Engine, where: ColumnElement[bool], limit: int, offset: int
) -> tuple[list[CdrRecord], int]:
    rows = _select_rows(engine, where, limit, offset, True)
    total = _count(engine, where)
    return [CdrRecord.model_validate(row) for row in rows], total


def _where(filters: CdrFilters) -> ColumnElement[bool]:
    unknown = filters.keys() - CdrFilters.__optional_keys__
    if unknown:  # the keyword arguments a signature would have refused
        raise TypeError(f"unknown CDR filters: {sorted(unknown)}")
    c = cdr_table.c
    clauses: list[ColumnElement[bool]] = []
    if (since := filters.get("since")) is not None:
        clauses.append(c.start >= since)
    if (until := filters.get("until")) is not None:
        clauses.append(c.start < until)
    if (caller := filters.get("caller")) is not None:
        clauses.append(c.caller == caller)
    if (callee := filters.get("callee")) is not None:
        clauses.append(c.callee == callee)
    if (disposition := filters.get("disposition")) is not None:
        clauses.append(c.disposition == disposition)
    return and_(true(), *clauses)


def records_from_csv(text: str) -> list[CdrRecord]:
    """Parse :meth:`CdrStore.export_csv` output back into records (empty cells are None)."""
    reader = csv.DictReader(io.StringIO(text))
    return [CdrRecord.model_validate({k: (None if v == "" else v) for k, v in row.items()}) for row in reader]
