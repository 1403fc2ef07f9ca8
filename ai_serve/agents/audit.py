"""The audit log of tool calls: every call an agent makes, with personal data masked, in a database.

:class:`AuditLog` is the :class:`~ai_serve.agents.tools.CallRecorder` of a tool registry. ``record()``
masks the arguments and appends a row to a :class:`~pbx_edge.ops.db.BatchWriter`, which commits batches
from a worker thread about every 100 ms: the event loop never waits for the database (``record`` itself
costs the masking regexes, tens of microseconds). The table and the read side live in
:mod:`pbx_edge.ops.tool_audit`, so the edge's admin API reads the same rows without importing
``ai_serve``.

Masking, in two layers, before anything is stored:

1. by argument name: a key that names personal data (``phone``, ``caller``, ``name``, ``email``, ``card``,
   ``rrn``, ``address``, ...) has its whole value replaced by a typed placeholder (``[PHONE]``), since a
   bare value like ``"John Smith"`` carries no cue a text rule could see;
2. by content: every other string goes through :func:`pipelines.pii.mask_pii` (phones, e-mails, card
   numbers, Korean RRNs, addresses and cued names inside free text such as a ticket description).

Known limit: a bare name under a neutral key (``{"customer": "John Smith"}``) is kept; name such
parameters after what they hold.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import re
import time
from typing import Any

from sqlalchemy.engine import Engine

from ai_serve.agents.tools import CallerContext, ToolResult
from pbx_edge.ops.db import BatchWriter, make_engine
from pbx_edge.ops.tool_audit import (
    DEFAULT_AUDIT_URL,
    MAX_PAGE,
    AuditStatus,
    ToolAuditEntry,
    ToolAuditPage,
    ToolAuditQuery,
    create_tables,
    insert_entries,
    select_entries,
    to_epoch,
)
from pipelines.pii import mask_pii

__all__ = ["AuditLog", "mask_arguments"]

# Key name -> placeholder. Matched against the key's words (snake_case / camelCase split), so
# ``caller_phone`` and ``customerEmail`` are caught but ``phone_verified`` (a bool) is left alone.
_KEY_RULES: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"(?:^|_)(?:e_?mail)(?:_|$)"), "EMAIL"),
    (re.compile(r"(?:^|_)(?:rrn|ssn|resident_(?:registration_)?number|jumin)(?:_|$)"), "RRN"),
    (re.compile(r"(?:^|_)(?:card|card_number|pan|cc)(?:_|$)"), "CARD"),
    (re.compile(r"(?:^|_)(?:phone|mobile|msisdn|tel|telephone|caller|callee|cli|ani)(?:_|$)"), "PHONE"),
    (re.compile(r"(?:^|_)(?:address|street|addr)(?:_|$)"), "ADDRESS"),
    (
        re.compile(
            r"^name$|(?:^|_)surname$"
            r"|(?:^|_)(?:first|last|full|given|family|middle|customer|caller|contact|user|person|holder)_name$"
        ),
        "NAME",
    ),
)
_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")


def _key_placeholder(key: str) -> str | None:
    words = _CAMEL.sub("_", key).lower().replace("-", "_")
    for rx, kind in _KEY_RULES:
        if rx.search(words):
            return f"[{kind}]"
    return None


def mask_arguments(value: Any, language: str | None = None) -> Any:
    """A copy of ``value`` (JSON-like) with personal data replaced; see the module docstring."""
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            placeholder = _key_placeholder(str(key))
            if placeholder is not None and item is not None and not isinstance(item, bool):
                out[key] = _replace_leaves(item, placeholder)
            else:
                out[key] = mask_arguments(item, language)
        return out
    if isinstance(value, list):
        return [mask_arguments(v, language) for v in value]
    if isinstance(value, str):
        return mask_pii(value, language).text
    return value


def _replace_leaves(value: Any, placeholder: str) -> Any:
    if isinstance(value, dict):
        return {k: _replace_leaves(v, placeholder) for k, v in value.items()}
    if isinstance(value, list):
        return [_replace_leaves(v, placeholder) for v in value]
    return placeholder


class AuditLog:
    """Tool-call audit rows in SQLite (default) or PostgreSQL by SQLAlchemy URL.

    Lifecycle: ``await start()`` on the loop that will record, ``record()`` from the registry,
    ``await close()`` to commit what is buffered.
    """

    def __init__(self, url: str = DEFAULT_AUDIT_URL, *, flush_interval: float = 0.1) -> None:
        self.url = url
        self._engine: Engine | None = None
        self._opening = asyncio.Lock()
        self._writer: BatchWriter[ToolAuditEntry] = BatchWriter(
            "tool-audit", self._write, interval=flush_interval
        )

    @property
    def pending(self) -> int:
        """Rows accepted but not yet committed."""
        return self._writer.pending

    async def start(self) -> None:
        await self._ensure_engine()
        self._writer.start()

    def record(self, tool: str, arguments: Any, who: CallerContext, result: ToolResult) -> None:
        """Mask and buffer one call (never blocks; committed within about ``flush_interval``)."""
        self._writer.put(entry_for(tool, arguments, who, result))

    async def flush(self) -> None:
        await self._ensure_engine()
        await self._writer.flush()

    async def close(self) -> None:
        await self._ensure_engine()
        await self._writer.close()
        if self._engine is not None:
            self._engine.dispose()

    async def query(
        self,
        *,
        call_id: str | None = None,
        tool: str | None = None,
        status: AuditStatus | None = None,
        since: float | dt.datetime | None = None,
        until: float | dt.datetime | None = None,
        limit: int = 100,
        cursor: int | None = None,
    ) -> ToolAuditPage:
        """Rows matching every filter given, newest first; sees every call recorded before it."""
        query = ToolAuditQuery(
            call_id=call_id,
            tool=tool,
            status=status,
            since=to_epoch(since),
            until=to_epoch(until),
            limit=min(max(1, limit), MAX_PAGE),
            cursor=cursor,
        )
        await self.flush()
        return await asyncio.to_thread(select_entries, self._db(), query)

    async def _ensure_engine(self) -> None:
        async with self._opening:
            if self._engine is None:
                engine = make_engine(self.url)
                await asyncio.to_thread(create_tables, engine)
                self._engine = engine

    def _db(self) -> Engine:
        if self._engine is None:
            raise RuntimeError("AuditLog is not started")
        return self._engine

    def _write(self, batch: list[ToolAuditEntry]) -> None:
        insert_entries(self._db(), batch)


def entry_for(tool: str, arguments: Any, who: CallerContext, result: ToolResult) -> ToolAuditEntry:
    """The row for one call: arguments and failure detail masked, the caller's number left out."""
    language = who.language.split("-")[0] if who.language else None
    if isinstance(arguments, str):  # unparsable LLM output: mask it as text
        masked = mask_pii(arguments, language).text
    else:
        masked = json.dumps(mask_arguments(arguments, language), ensure_ascii=False, sort_keys=True)
    detail = None if result.detail is None else mask_pii(result.detail, language).text
    return ToolAuditEntry(
        ts=time.time() - result.latency_ms / 1000.0,  # when the call started
        call_id=who.call_id[:128],
        agent=who.agent[:64],
        intent=None if who.intent is None else who.intent[:64],
        tool=tool[:128],
        arguments=masked,
        ok=result.ok,
        status=result.error_kind or "ok",
        http_status=result.status,
        latency_ms=result.latency_ms,
        attempts=result.attempts,
        detail=detail,
    )
