"""The audit log of tool calls: every call an agent makes, with personal data masked, in a database.

:class:`AuditLog` is the :class:`~ai_serve.agents.tools.CallRecorder` of a tool registry. ``record()``
masks the arguments and appends a row to a :class:`~pbx_edge.ops.db.BatchWriter` (through
:class:`~pbx_edge.ops.buffered_store.BufferedStore`), which commits batches from a worker thread
about every 100 ms: the event loop never waits for the database (``record`` itself costs the
masking regexes, tens of microseconds). The table and the read side live in
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

import json
import re
import time
from typing import Any, Unpack

from sqlalchemy.engine import Engine

from ai_serve.agents.tools import CallerContext, ToolResult
from pbx_edge.ops.buffered_store import BufferedStore
from pbx_edge.ops.tool_audit import (
    DEFAULT_AUDIT_URL,
    AuditFilters,
    ToolAuditEntry,
    ToolAuditPage,
    audit_query,
    create_tables,
    insert_entries,
    select_entries,
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


class AuditLog(BufferedStore[ToolAuditEntry]):
    """Tool-call audit rows in SQLite (default) or PostgreSQL by SQLAlchemy URL.

    Lifecycle: ``await start()`` on the loop that will record, ``record()`` from the registry,
    ``await close()`` to commit what is buffered.
    """

    def __init__(self, url: str = DEFAULT_AUDIT_URL, *, flush_interval: float = 0.1) -> None:
        super().__init__(url, create_tables, name="tool-audit", flush_interval=flush_interval)

    def record(self, tool: str, arguments: Any, who: CallerContext, result: ToolResult) -> None:
        """Mask and buffer one call (never blocks; committed within about ``flush_interval``)."""
        self._put(entry_for(tool, arguments, who, result))

    async def query(self, **filters: Unpack[AuditFilters]) -> ToolAuditPage:
        """Rows matching every filter given, newest first; sees every call recorded before it."""
        return await self._read(select_entries, audit_query(filters))

    def _write(self, engine: Engine, batch: list[ToolAuditEntry]) -> None:
        insert_entries(engine, batch)


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
