"""The webhook outbox: every (target, event) delivery is a row that stays until the target took it.

Why a table and not a queue in memory: a receiver may be down for hours and the node may restart
meanwhile; nothing published may be lost, and per target the order must hold. So:

* ``enqueue()`` (called from a bus subscriber, on the event loop) only buffers rows; a
  :class:`~pbx_edge.ops.db.BatchWriter` inserts them from a worker thread about every 100 ms and then
  wakes the senders of the targets concerned (:meth:`Outbox.changed`). A delivery is sent only once
  its row is committed ("persist, then send"), so a crash never loses an event that was sent and
  never sends one the database will not remember. The crash window for events not yet sent is one
  flush interval.
* Senders read their target's rows page by page in id order (:meth:`Outbox.fetch`), so memory holds
  one page per target however long a receiver stays down. Ids grow in commit order because one
  writer commits one batch at a time.
* Outcomes (:meth:`mark_delivered`, :meth:`mark_failed`) go through the same buffer. If the process
  dies after a POST succeeded but before ``delivered_at`` was committed, the delivery is sent again
  after restart: delivery is at least once, and receivers dedupe on the event id
  (``X-SmartPBX-Delivery``).
* ``owner`` scopes rows to one node process, so several processes may share one database (e.g. one
  PostgreSQL) without sending each other's rows twice.
* Delivered rows are kept ``retain_delivered`` seconds (for audit) and then pruned by the writer.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    Column,
    Double,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    bindparam,
    delete,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.engine import Connection, Engine

from pbx_edge.ops.db import BatchWriter, BigId, make_engine
from pbx_edge.ops.models import Event

metadata = MetaData()

outbox_table = Table(
    "webhook_outbox",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("owner", String(128), nullable=False, default=""),
    Column("target", String(2048), nullable=False),  # the target URL is its key
    Column("event_id", String(64), nullable=False),
    Column("event_name", String(128), nullable=False),
    Column("body", Text, nullable=False),  # the Event JSON, sent byte for byte
    Column("created", Double, nullable=False),
    Column("attempts", Integer, nullable=False, default=0),
    Column("next_attempt_at", Double, nullable=False),
    Column("last_error", Text),
    Column("delivered_at", Double),
    # The sender's page query: owner = ? AND target = ? AND delivered_at IS NULL AND id > ? ORDER BY id.
    Index("ix_webhook_outbox_pending", "owner", "target", "delivered_at", "id"),
    # Senders page with "id > last id seen": ids must never be reused, even after pruning emptied the
    # table, which a plain SQLite rowid does not promise.
    sqlite_autoincrement=True,
)


@dataclass(slots=True)
class Delivery:
    """One row of the outbox as a sender holds it."""

    id: int
    target: str
    event_id: str
    event_name: str
    body: str
    created: float
    attempts: int
    next_attempt_at: float
    last_error: str | None = None


@dataclass(slots=True, frozen=True)
class _Insert:
    row: dict[str, Any]


@dataclass(slots=True, frozen=True)
class _Update:
    id: int
    values: dict[str, Any]


_Op = _Insert | _Update


class Outbox:
    """Durable pending webhook deliveries; see the module docstring."""

    def __init__(
        self,
        url: str = "sqlite:///data/outbox.sqlite3",
        *,
        owner: str = "",
        flush_interval: float = 0.1,
        retain_delivered: float = 86_400.0,
        prune_every: float = 600.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.url = url
        self.owner = owner
        self.retain_delivered = retain_delivered
        self._prune_every = prune_every
        self._last_prune = 0.0
        self._clock = clock
        self._engine: Engine | None = None
        self._opening = asyncio.Lock()
        self._started = False
        self._pending: Counter[str] = Counter()  # undelivered rows per target
        self._changed: dict[str, asyncio.Event] = {}
        self._writer: BatchWriter[_Op] = BatchWriter(
            "webhook-outbox", self._write, interval=flush_interval, on_written=self._written
        )

    # --- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        """Open the database and count what a previous process left undelivered (idempotent)."""
        async with self._opening:
            if self._started:
                return
            engine = make_engine(self.url)
            await asyncio.to_thread(metadata.create_all, engine)
            self._engine = engine
            # Counted before the writer runs, so rows buffered before start() are not counted twice.
            left = await asyncio.to_thread(self._count_pending)
            self._pending.update(left)
            self._started = True
            self._writer.start()
            for target in left:
                self.changed(target).set()

    async def flush(self) -> None:
        """Commit every enqueued delivery and recorded outcome."""
        await self.start()
        await self._writer.flush()

    async def close(self) -> None:
        """Commit everything, then release the database."""
        await self.start()
        await self._writer.close()
        if self._engine is not None:
            self._engine.dispose()

    # --- producers -------------------------------------------------------------------------------

    def enqueue(self, targets: Iterable[str], event: Event) -> None:
        """Queue ``event`` for each target URL; committed within one flush interval."""
        body = event.model_dump_json()
        now = self._clock()
        for target in targets:
            self._writer.put(
                _Insert(
                    {
                        "owner": self.owner,
                        "target": target,
                        "event_id": event.id,
                        "event_name": event.name,
                        "body": body,
                        "created": now,
                        "attempts": 0,
                        "next_attempt_at": now,
                        "last_error": None,
                        "delivered_at": None,
                    }
                )
            )
            self._pending[target] += 1

    # --- senders ---------------------------------------------------------------------------------

    def changed(self, target: str) -> asyncio.Event:
        """Set after new rows for ``target`` were committed; the sender clears it before fetching."""
        event = self._changed.get(target)
        if event is None:
            event = self._changed[target] = asyncio.Event()
        return event

    async def fetch(self, target: str, after_id: int = 0, limit: int = 100) -> list[Delivery]:
        """Committed, undelivered deliveries for ``target`` with id > ``after_id``, in id order."""
        return await asyncio.to_thread(self._fetch, target, after_id, limit)

    def mark_delivered(self, delivery: Delivery, when: float | None = None) -> None:
        at = self._clock() if when is None else when
        delivery.attempts += 1
        self._writer.put(
            _Update(delivery.id, {"delivered_at": at, "attempts": delivery.attempts, "last_error": None})
        )
        self._pending[delivery.target] -= 1
        if self._pending[delivery.target] <= 0:
            del self._pending[delivery.target]

    def mark_failed(self, delivery: Delivery, error: str, next_attempt_at: float) -> None:
        delivery.attempts += 1
        delivery.last_error = error
        delivery.next_attempt_at = next_attempt_at
        self._writer.put(
            _Update(
                delivery.id,
                {"attempts": delivery.attempts, "last_error": error, "next_attempt_at": next_attempt_at},
            )
        )

    # --- figures ---------------------------------------------------------------------------------

    def depth(self, target: str | None = None) -> int:
        """Undelivered deliveries (committed or still buffered), for one target or all."""
        if target is not None:
            return self._pending.get(target, 0)
        return sum(self._pending.values())

    def pending_targets(self) -> dict[str, int]:
        """Undelivered deliveries per target, including targets no longer configured."""
        return dict(self._pending)

    @property
    def unwritten(self) -> int:
        """Enqueued rows and outcomes not yet committed."""
        return self._writer.pending

    # --- worker-thread side ----------------------------------------------------------------------

    def _db(self) -> Engine:
        if self._engine is None:
            raise RuntimeError("Outbox is not started")
        return self._engine

    def _count_pending(self) -> dict[str, int]:
        t = outbox_table.c
        stmt = (
            select(t.target, func.count())
            .where(t.owner == self.owner, t.delivered_at.is_(None))
            .group_by(t.target)
        )
        with self._db().connect() as conn:
            return {str(target): int(n) for target, n in conn.execute(stmt)}

    def _fetch(self, target: str, after_id: int, limit: int) -> list[Delivery]:
        t = outbox_table.c
        stmt = (
            select(
                t.id,
                t.target,
                t.event_id,
                t.event_name,
                t.body,
                t.created,
                t.attempts,
                t.next_attempt_at,
                t.last_error,
            )
            .where(t.owner == self.owner, t.target == target, t.delivered_at.is_(None), t.id > after_id)
            .order_by(t.id)
            .limit(limit)
        )
        with self._db().connect() as conn:
            return [Delivery(**row._mapping) for row in conn.execute(stmt)]

    def _write(self, batch: list[_Op]) -> None:
        inserts = [op.row for op in batch if isinstance(op, _Insert)]
        updates: dict[int, dict[str, Any]] = {}
        for op in batch:
            if isinstance(op, _Update):
                updates.setdefault(op.id, {}).update(op.values)  # later outcomes win
        with self._db().begin() as conn:
            if inserts:
                conn.execute(insert(outbox_table), inserts)
            for group in _group_by_columns(updates).values():
                columns = [c for c in group[0] if c != "b_id"]
                stmt = (
                    update(outbox_table)
                    .where(outbox_table.c.id == bindparam("b_id"))
                    .values({c: bindparam(c) for c in columns})
                )
                conn.execute(stmt, group)
            self._maybe_prune(conn)

    def _maybe_prune(self, conn: Connection) -> None:
        now = self._clock()
        if now - self._last_prune < self._prune_every:
            return
        self._last_prune = now
        t = outbox_table.c
        conn.execute(
            delete(outbox_table).where(
                t.owner == self.owner,
                t.delivered_at.is_not(None),
                t.delivered_at < now - self.retain_delivered,
            )
        )

    def _written(self, batch: list[_Op]) -> None:
        for target in {op.row["target"] for op in batch if isinstance(op, _Insert)}:
            self.changed(target).set()


def _group_by_columns(updates: dict[int, dict[str, Any]]) -> dict[tuple[str, ...], list[dict[str, Any]]]:
    """executemany needs the same columns in every parameter set: group updates by their columns."""
    groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for row_id, values in updates.items():
        groups.setdefault(tuple(sorted(values)), []).append({"b_id": row_id, **values})
    return groups
