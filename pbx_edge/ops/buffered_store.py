"""The wrapper the batched stores share (the CDR store, the tool-call audit log).

A :class:`BufferedStore` is a table opened on first use (:class:`~pbx_edge.ops.db.LazyEngine`) with a
:class:`~pbx_edge.ops.db.BatchWriter` in front: producers on the event loop only append rows, a worker
thread commits them in batches, and every read first flushes the buffer, so it sees every row accepted
before it, and then runs its SELECT in a worker thread.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Concatenate, Generic, ParamSpec, TypeVar

from sqlalchemy.engine import Engine

from pbx_edge.ops.db import BatchWriter, LazyEngine

T = TypeVar("T")
P = ParamSpec("P")
R = TypeVar("R")


class BufferedStore(ABC, Generic[T]):
    """Rows of type ``T`` buffered in memory and committed in batches; see the module docstring.

    A subclass implements :meth:`_write`, hands rows to :meth:`_put` and reads through :meth:`_read`.
    Lifecycle: ``await start()`` on the loop that will write, ``await close()`` to commit the rest.
    """

    def __init__(
        self, url: str, create_tables: Callable[[Engine], None], *, name: str, flush_interval: float
    ) -> None:
        self._database = LazyEngine(url, create_tables, owner=type(self).__name__)
        self._writer: BatchWriter[T] = BatchWriter(name, self._write_batch, interval=flush_interval)

    @property
    def url(self) -> str:
        return self._database.url

    @property
    def pending(self) -> int:
        """Rows accepted but not yet committed."""
        return self._writer.pending

    async def start(self) -> None:
        """Open the database, create the tables if needed and start the writer."""
        await self._database.open()
        self._writer.start()

    async def flush(self) -> None:
        """Commit every row accepted so far."""
        await self._database.open()
        await self._writer.flush()

    async def close(self) -> None:
        """Commit every accepted row, then release the database."""
        await self._database.open()
        await self._writer.close()
        self._database.dispose()

    def _put(self, row: T) -> None:
        """Accept a row (never blocks; committed within about ``flush_interval``)."""
        self._writer.put(row)

    async def _read(
        self, select: Callable[Concatenate[Engine, P], R], *args: P.args, **kwargs: P.kwargs
    ) -> R:
        """``select(engine, *args, **kwargs)`` in a worker thread, after a flush."""
        await self.flush()
        return await asyncio.to_thread(select, self._database.engine, *args, **kwargs)

    def _write_batch(self, batch: list[T]) -> None:
        self._write(self._database.engine, batch)

    @abstractmethod
    def _write(self, engine: Engine, batch: list[T]) -> None:
        """Commit ``batch`` in one transaction or raise (runs in a worker thread)."""
