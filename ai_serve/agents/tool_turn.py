"""A tool call inside a conversation turn, for the IVR flows and the multi-agent specialists alike.

The call goes through the :class:`~ai_serve.agents.tools.ToolRegistry` (and the audit log); the caller
then hears the success sentence rendered with the tool's ``result``, or the registry's spoken failure:
a failure is never hidden, and an answer that lacks a field the sentence says counts as a bad response
rather than a guess.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import date
from typing import Any

from pbx_edge.ai_link.protocol import StartMessage

from .attendant_config import Language
from .tools import CallerContext, CallRecorder, ToolRegistry, ToolResult, spoken_failure

__all__ = ["ToolTurn", "call_tool", "jsonable", "tool_failure_text", "use_tool", "wire_arguments"]

_LOG = logging.getLogger(__name__)


async def call_tool(
    tools: ToolRegistry,
    tool: str,
    arguments: Mapping[str, Any],
    who: CallerContext,
    audit: CallRecorder | None,
) -> ToolResult:
    """Call ``tool`` through the registry and record the call in ``audit`` (when the registry has no
    recorder of its own; pass the audit log to one of the two, not both)."""
    result = await tools.call(tool, dict(arguments), who=who)
    if audit is not None:
        try:
            audit.record(result.tool, dict(arguments), who, result)
        except Exception:
            _LOG.exception("call %s: recording %s in the audit log failed", who.call_id, tool)
    return result


def tool_failure_text(tools: ToolRegistry, result: ToolResult, language: Language) -> str:
    """What the caller hears when a call failed: the registry's sentence for it, always."""
    return result.spoken or spoken_failure(
        result.error_kind or "bad_response", tools.spec(result.tool), language
    )


def jsonable(value: Any) -> Any:
    return value.isoformat() if isinstance(value, date) else value


def wire_arguments(arguments: Mapping[str, Any]) -> dict[str, Any]:
    """Tool arguments as JSON values: dates as ISO strings, unfilled (None) optional slots left out."""
    return {k: jsonable(v) for k, v in arguments.items() if v is not None}


@dataclass(frozen=True, slots=True)
class ToolTurn:
    """A tool call and what the caller hears of it: ``said_success`` when ``text`` is the success
    sentence, else ``text`` is the failure the registry speaks."""

    result: ToolResult
    text: str
    said_success: bool


async def use_tool(
    tools: ToolRegistry,
    tool: str,
    arguments: Mapping[str, Any],
    *,
    start: StartMessage,
    agent: str,
    language: Language,
    render: Callable[[Mapping[str, Any]], str],
    audit: CallRecorder | None,
    intent: str | None = None,
) -> ToolTurn:
    """Call ``tool`` for the call ``start`` as ``agent``; ``render(result values)`` is the success
    sentence (a KeyError when the answer lacks a field it says)."""
    who = CallerContext(
        call_id=start.call_id, agent=agent, intent=intent, caller=start.caller, language=language
    )
    result = await call_tool(tools, tool, wire_arguments(arguments), who, audit)
    if not result.ok:
        return ToolTurn(result, tool_failure_text(tools, result, language), False)
    data = result.data if isinstance(result.data, Mapping) else {"value": result.data}
    try:
        return ToolTurn(result, render(data), True)
    except KeyError as exc:  # the answer lacks a field the sentence says: not a guess either
        _LOG.warning("call %s: %s answer lacks %s", start.call_id, tool, exc)
        bad = dataclasses.replace(result, ok=False, error_kind="bad_response", spoken=None)
        return ToolTurn(result, tool_failure_text(tools, bad, language), False)
