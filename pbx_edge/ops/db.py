"""SQLAlchemy plumbing shared by the CDR store, the tool-call audit log and the webhook outbox.

Three things live here:

* :func:`make_engine` turns a URL from the config into an engine that behaves the same on SQLite
  (the single-machine default) and PostgreSQL: SQLite gets its parent directory created, WAL mode
  (readers never block the writer) and a busy timeout; ``:memory:`` gets one shared connection so
  that threads see the same database.
* :class:`LazyEngine` opens that engine on first use and creates the tables (off the event loop).
* :class:`BatchWriter` keeps database writes off the event loop. Producers ``put()`` rows into an
  in-memory list (O(1), never blocks); a task owned by the writer hands them to a worker thread in
  batches about every ``interval`` seconds. A failed batch stays at the head of the buffer and is
  retried, so rows are only dropped from memory once committed. ``close()`` writes what is left:
  nothing accepted is lost on a clean shutdown. The window that a crash (kill -9, power) can lose is
  therefore one ``interval`` plus the time of one write.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, Generic, TypeVar

from sqlalchemy import BigInteger, Integer, create_engine, event
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.pool import StaticPool
from sqlalchemy.sql.type_api import TypeEngine

log = logging.getLogger("pbx_edge.ops")

T = TypeVar("T")

# 64-bit ids on PostgreSQL; SQLite only auto-increments a column declared exactly INTEGER.
BigId: TypeEngine[int] = BigInteger().with_variant(Integer(), "sqlite")


def make_engine(url: str) -> Engine:
    """An engine for ``url``; see the module docstring for what SQLite gets."""
    parsed = make_url(url)
    kwargs: dict[str, Any] = {}
    is_sqlite = parsed.get_backend_name() == "sqlite"
    if is_sqlite:
        database = parsed.database or ""
        in_memory = database in ("", ":memory:") or "mode=memory" in database
        kwargs["connect_args"] = {"check_same_thread": False}
        if in_memory:
            kwargs["poolclass"] = StaticPool
        elif not database.startswith("file:"):
            Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    else:
        kwargs["pool_pre_ping"] = True
    engine = create_engine(url, **kwargs)
    if is_sqlite:
        event.listen(engine, "connect", _sqlite_pragmas)
    return engine


class LazyEngine:
    """The engine of ``url``, made on the first ``open()``, which also creates the tables.

    ``create_tables`` (DDL, so blocking) runs in a worker thread; concurrent first callers share one
    engine. ``dispose()`` releases the connections, and a later ``open()`` makes a new engine.
    """

    def __init__(self, url: str, create_tables: Callable[[Engine], None], *, owner: str) -> None:
        self.url = url
        self._create_tables = create_tables
        self._owner = owner
        self._engine: Engine | None = None
        self._opening = asyncio.Lock()

    async def open(self) -> Engine:
        async with self._opening:
            if self._engine is None:
                engine = make_engine(self.url)
                await asyncio.to_thread(self._create_tables, engine)
                self._engine = engine
            return self._engine

    @property
    def engine(self) -> Engine:
        """The open engine, for code in worker threads; raises before the first ``open()``."""
        if self._engine is None:
            raise RuntimeError(f"{self._owner} is not started")
        return self._engine

    def dispose(self) -> None:
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
        # With WAL, NORMAL keeps every commit across a process crash; only an OS crash or power loss
        # can roll back the last commits. FULL would fsync on every batch for little gain here.
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA busy_timeout=5000")
    finally:
        cursor.close()


class BatchWriter(Generic[T]):
    """Buffers items in memory and writes them in batches from a worker thread.

    ``write`` runs in a thread (``asyncio.to_thread``) with a list of at most ``max_batch`` items and
    must commit them or raise. ``on_written`` runs on the event loop after each committed batch.
    Only one batch is in flight at a time, so batches commit in the order items were put.
    """

    def __init__(
        self,
        name: str,
        write: Callable[[list[T]], None],
        *,
        interval: float = 0.1,
        max_batch: int = 1000,
        retry_max: float = 5.0,
        on_written: Callable[[list[T]], None] | None = None,
    ) -> None:
        self.name = name
        self._write = write
        self._interval = interval
        self._max_batch = max_batch
        self._retry_max = retry_max
        self._on_written = on_written
        self._buffer: list[T] = []
        self._lock = asyncio.Lock()
        self._nonempty = asyncio.Event()
        self._closing = asyncio.Event()
        self._closed = False
        self._task: asyncio.Task[None] | None = None
        self.batches_written = 0
        self._accepted = 0
        self.items_written = 0
        self.write_errors = 0

    @property
    def pending(self) -> int:
        """Items accepted but not yet committed."""
        return len(self._buffer)

    def put(self, item: T) -> None:
        if self._closed:
            raise RuntimeError(f"{self.name}: writer is closed")
        self._buffer.append(item)
        self._accepted += 1
        self._nonempty.set()

    def start(self) -> None:
        if self._closed:
            raise RuntimeError(f"{self.name}: writer is closed")
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name=f"{self.name}-writer")

    async def flush(self) -> None:
        """Write everything accepted so far; raises if the database refuses it (items are kept).

        Items put while it runs may be written too, but it does not wait for them: a steady stream
        of producers cannot keep a reader that flushes first waiting forever.
        """
        goal = self._accepted
        async with self._lock:
            while self._buffer and self.items_written < goal:
                batch = self._buffer[: self._max_batch]
                try:
                    await asyncio.to_thread(self._write, batch)
                except Exception:
                    self.write_errors += 1
                    raise
                # Items put while the thread ran were appended after the batch: drop only the batch.
                del self._buffer[: len(batch)]
                self.batches_written += 1
                self.items_written += len(batch)
                if self._on_written is not None:
                    try:
                        self._on_written(batch)
                    except Exception:
                        log.exception("%s: on_written callback failed", self.name)
            if not self._buffer:
                self._nonempty.clear()

    async def close(self) -> None:
        """Stop the background task and write what is left (raises if that final write fails)."""
        self._closed = True
        self._closing.set()
        self._nonempty.set()
        if self._task is not None:
            # Not cancelled: cancelling while a batch is in the worker thread would leave it both
            # committed and still buffered, and the final flush would write it twice.
            await self._task
            self._task = None
        await self.flush()

    async def _run(self) -> None:
        failures = 0
        while not self._closing.is_set():
            await self._nonempty.wait()
            if self._closing.is_set():
                break
            await self._pause(self._interval)  # let a batch gather
            try:
                await self.flush()
                failures = 0
            except Exception as exc:
                failures += 1
                delay = min(self._retry_max, self._interval * 2**failures)
                log.error(
                    "%s: writing %d buffered items failed (%s); retrying in %.1fs",
                    self.name,
                    len(self._buffer),
                    exc,
                    delay,
                )
                await self._pause(delay)

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._closing.wait(), seconds)
