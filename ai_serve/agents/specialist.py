"""One specialist agent of a multi-agent call: what it knows, how it answers, and how it is reached.

A specialist answers one request at a time (:meth:`Specialist.respond`): a request near one of its
tool uses' examples calls that tool (the IVR's tool path: the success sentence with ``{result.x}``, or
the registry's spoken failure); otherwise it answers from the knowledge base under its filter, only
above the confidence thresholds, else says it is not sure and offers a person. Exceptions escape on
purpose: the supervisor turns them into an apology and a transfer.

Everything a specialist needs travels by value, so the same object runs in the call's actor or in an
actor of its own (:mod:`ai_serve.agents.specialist_actor`): the supervisor embeds the request once
and passes the vector in the :class:`Route`; :class:`ToolMatcher` holds the agent's tool-example
vectors (made by the supervisor's router), so a specialist never loads an embedder.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import numpy as np
import numpy.typing as npt

from pbx_edge.ai_link.protocol import StartMessage

from .agent_config import AgentSpec, ToolUse
from .attendant_config import Language
from .conversation import Retrieve, SessionSettings, best_answer
from .session_core import phrase
from .templates import render_template, render_value
from .tool_turn import use_tool
from .tools import CallRecorder, ToolRegistry

__all__ = [
    "AgentContext",
    "AgentHandle",
    "Reply",
    "Route",
    "Specialist",
    "SpecialistFactory",
    "ToolMatcher",
]


@dataclass(frozen=True, slots=True)
class Route:
    """The supervisor's decision on one request; ``agent`` None: no agent is clearly meant."""

    agent: str | None
    source: Literal["embedding", "llm", "dtmf"] | None
    score: float = 0.0
    scores: Mapping[str, float] = field(default_factory=dict)
    vector: npt.NDArray[np.float32] | None = field(default=None, repr=False)


@dataclass(slots=True)
class AgentContext:
    """What a specialist knows of the call: the transcript so far and the facts collected (tool results
    by tool, dots as ``_``), handed from agent to agent."""

    transcript: list[dict[str, Any]] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)
    handed_from: str | None = None
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class Reply:
    """A specialist's answer to one request, what it learned and the tools it called."""

    text: str
    facts: dict[str, Any] = field(default_factory=dict)
    answered: bool = True
    tool_calls: tuple[dict[str, Any], ...] = ()


@dataclass(frozen=True, slots=True)
class ToolMatcher:
    """One agent's tool uses and the unit vectors of their examples (row ``i`` is an example of use
    ``labels[i]``)."""

    uses: tuple[ToolUse, ...]
    rows: npt.NDArray[np.float32]
    labels: npt.NDArray[np.intp]
    threshold: float

    def match(self, vector: npt.NDArray[np.float32]) -> tuple[ToolUse | None, float]:
        """The tool use nearest to the request, if it reaches ``threshold``."""
        sims = self.rows @ vector
        index = int(np.argmax(sims))
        score = float(sims[index])
        return (self.uses[int(self.labels[index])] if score >= self.threshold else None), score


class AgentHandle(Protocol):
    """A specialist as the supervisor sees it, in its process or in an actor of its own."""

    @property
    def name(self) -> str: ...

    @property
    def spec(self) -> AgentSpec: ...

    @property
    def context(self) -> AgentContext: ...

    async def respond(self, request: str, route: Route, language: Language) -> Reply: ...

    def close(self) -> None: ...


SpecialistFactory = Callable[[AgentSpec, AgentContext, ToolMatcher | None], AgentHandle]
"""``(spec, context, matcher) -> a specialist`` for a new agent of the call."""


class Specialist:
    """One agent for one call (see the module docstring)."""

    def __init__(
        self,
        spec: AgentSpec,
        context: AgentContext,
        matcher: ToolMatcher | None,
        *,
        tools: ToolRegistry,
        retrieve: Retrieve,
        start: StartMessage,
        settings: SessionSettings,
        audit: CallRecorder | None = None,
    ) -> None:
        self.spec = spec
        self.context = context
        self._matcher, self._tools, self._retrieve = matcher, tools, retrieve
        self._start, self._settings, self._audit = start, settings, audit

    @property
    def name(self) -> str:
        return self.spec.name

    def close(self) -> None:
        """Nothing to release: the call's tools and audit log belong to the session's host."""

    def _values(self, request: str, language: Language) -> dict[str, Any]:
        s = self._start
        return {
            "caller": s.caller, "callee": s.callee, "call_id": s.call_id, "language": language,
            "request": request, "agent": self.spec.name, "facts": self.context.facts,
        }  # fmt: skip

    async def respond(self, request: str, route: Route, language: Language) -> Reply:
        """Handle ``request`` with a tool or from the knowledge base."""
        use = None
        if route.vector is not None and self._matcher is not None:
            use, _ = self._matcher.match(route.vector)
        if use is not None:
            return await self._use_tool(use, request, language)
        if self.spec.knowledge is not None:
            hits = await self._retrieve(request, language, self.spec.knowledge.business_unit)
            answer, _, _ = best_answer(hits, self._settings)
            if answer is not None:
                return Reply(answer)
        return Reply(f"{phrase('not_sure', language)} {phrase('offer_person', language)}", answered=False)

    async def _use_tool(self, use: ToolUse, request: str, language: Language) -> Reply:
        values = self._values(request, language)
        arguments = {name: render_value(template, values) for name, template in use.arguments.items()}
        text = use.say.get(language) or next(iter(use.say.values()))
        turn = await use_tool(
            self._tools, use.tool, arguments, start=self._start, agent=self.name, language=language,
            render=lambda result: render_template(text, {**values, "result": result}), audit=self._audit,
        )  # fmt: skip
        result = turn.result
        calls = ({"tool": result.tool, "ok": result.ok, "error": result.error_kind},)
        if not result.ok:
            return Reply(turn.text, answered=False, tool_calls=calls)
        facts = {use.tool.replace(".", "_"): result.data}
        return Reply(turn.text, facts, answered=turn.said_success, tool_calls=calls)
