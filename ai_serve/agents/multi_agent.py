"""A supervisor and its specialists for one call: route, answer, call tools, hand over, never go silent.

Theory of operation
-------------------
:class:`MultiAgentSession` has the inputs and outputs of :class:`~ai_serve.agents.ivr_session.IvrSession`
(so the same host runs it) over an :class:`~ai_serve.agents.agent_config.AgentsConfig`.

- **Routing.** :class:`AgentRouter` (one per config version) embeds every agent's description and
  examples once; a request's score for an agent is its best cosine with them, and the top agent is
  chosen when it reaches ``routing.threshold`` and leads the runner-up by ``routing.margin`` (the
  approach of :class:`~ai_serve.agents.intents.IntentClassifier`). Below that, an optional LLM router
  (``(utterance, [(agent, description)]) -> agent``, on GPU stacks) may name one; an answer that is not
  an agent is ignored. Keypad digits map to agents by the config's ``dtmf``.
- **Specialists.** The first routed request creates the specialist (:mod:`ai_serve.agents.specialist`)
  that handles it and the following ones, through the session's ``specialists`` factory: in this
  process by default, or as a Ray actor of its own per agent per call
  (:mod:`ai_serve.agents.specialist_actor`, what the live app does), let go when another agent takes
  over and at the end of the call.
- **Hand-offs.** When a later request routes confidently to another agent the current one may hand
  over to (its ``handoff`` list), a new specialist is created with the context (the transcript so far
  and the facts collected, e.g. tool results), an ``agent.handoff`` event goes out and the new agent
  handles the request.
- **Never silence.** If a specialist raises (a bug, a dead retriever, its actor died), the caller hears
  a short apology
  and is transferred to ``human_extension``; without one, a message is taken. A request for a person
  does the same without the apology; so does a request the supervisor still cannot route after
  ``max_retries`` reprompts.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from ai_serve.embeddings import TextEmbedder, l2_normalize
from pbx_edge.ai_link.protocol import AgentEvent, HangupAction, StartMessage, TransferAction

from .agent_config import AgentsConfig, AgentSpec
from .conversation import Output, Retrieve, SessionSettings, Speak
from .intents import EmbedFn, parse_llm_answer
from .session_core import SessionCore, phrase
from .specialist import AgentContext, AgentHandle, Reply, Route, Specialist, SpecialistFactory, ToolMatcher
from .text_rules import is_transfer_request
from .tools import CallRecorder, ToolRegistry

__all__ = [
    "AgentContext",
    "AgentRouter",
    "LlmRouter",
    "MultiAgentSession",
    "Reply",
    "Route",
    "Specialist",
]

_LOG = logging.getLogger(__name__)

LlmRouter = Callable[[str, Sequence[tuple[str, str]]], Awaitable[str | None]]
"""``(utterance, [(agent name, description), ...]) -> agent name or None`` (an LLM, on GPU stacks)."""
SUPERVISOR = "supervisor"


class AgentRouter:
    """Nearest-example routing to agents and to their tool uses (build one per config version)."""

    def __init__(self, config: AgentsConfig, embed: EmbedFn) -> None:
        self.config = config
        self.embed = embed
        self.names = [a.name for a in config.agents]
        texts = [t for a in config.agents for t in (a.description, *a.examples)]
        self._labels = np.array(
            [i for i, a in enumerate(config.agents) for _ in range(1 + len(a.examples))], dtype=np.intp
        )
        self._examples = self._embed(texts)
        self._tools: dict[str, tuple[npt.NDArray[np.float32], npt.NDArray[np.intp]]] = {}
        for agent in config.agents:
            if agent.tools:
                rows = self._embed([e for use in agent.tools for e in use.examples])
                labels = np.array(
                    [j for j, use in enumerate(agent.tools) for _ in use.examples], dtype=np.intp
                )
                self._tools[agent.name] = (rows, labels)

    @classmethod
    def from_embedder(cls, config: AgentsConfig, embedder: TextEmbedder) -> AgentRouter:
        """Requests and examples both embed as queries (short things a caller says)."""
        return cls(config, lambda texts: embedder.embed(texts, "query"))

    def _embed(self, texts: list[str]) -> npt.NDArray[np.float32]:
        rows = np.asarray(self.embed(texts), dtype=np.float32)
        if rows.ndim != 2 or rows.shape[0] != len(texts):
            raise ValueError(f"embedding function returned shape {rows.shape} for {len(texts)} texts")
        return l2_normalize(rows)

    def route(self, utterance: str) -> Route:
        """The agent ``utterance`` is for, when the embedding is confident (see the module docstring)."""
        vector = self._embed([utterance])[0]
        sims = self._examples @ vector
        best = np.full(len(self.names), -1.0, dtype=np.float32)
        np.maximum.at(best, self._labels, sims)
        scores = {name: float(best[i]) for i, name in enumerate(self.names)}
        ranked = sorted(scores.items(), key=lambda kv: kv[1], reverse=True)
        top, score = ranked[0]
        runner = ranked[1][1] if len(ranked) > 1 else -1.0
        nlu = self.config.routing
        confident = score >= nlu.threshold and score - runner >= nlu.margin
        return Route(top if confident else None, "embedding" if confident else None, score, scores, vector)

    def matcher(self, agent: str) -> ToolMatcher | None:
        """The agent's tool uses with their example vectors (None: it has no tools)."""
        if agent not in self._tools:
            return None
        rows, labels = self._tools[agent]
        uses = tuple(self.config.agent(agent).tools)
        return ToolMatcher(uses, rows, labels, self.config.tool_threshold)


class MultiAgentSession(SessionCore):
    """One call through the supervisor and its specialists (see the module docstring)."""

    def __init__(
        self,
        start: StartMessage,
        config: AgentsConfig,
        router: AgentRouter,
        tools: ToolRegistry,
        *,
        speak: Speak,
        retrieve: Retrieve,
        clock: Callable[[], float],
        audit: CallRecorder | None = None,
        llm_router: LlmRouter | None = None,
        settings: SessionSettings | None = None,
        specialists: SpecialistFactory | None = None,
    ) -> None:
        """``specialists`` makes each agent of the call (default: a :class:`Specialist` in this
        process; :class:`~ai_serve.agents.specialist_actor.ActorSpecialists` gives each its own actor)."""
        if router.config is not config and router.config != config:
            raise ValueError("the router was built for another agents config")
        super().__init__(
            start, config, tools, speak=speak, retrieve=retrieve, clock=clock, audit=audit,
            settings=settings,
        )  # fmt: skip
        self.config = config
        self.router = router
        self._llm_router = llm_router
        self._specialists = specialists or self._local_specialist
        self.agent: AgentHandle | None = None
        self.facts: dict[str, Any] = {}
        self.retries = 0
        self.taking_message = False
        self.message: str | None = None
        self.path: list[str] = []
        self.handoffs: list[dict[str, Any]] = []
        self.crashes: list[dict[str, Any]] = []
        self.unanswered: list[str] = []

    def _local_specialist(
        self, spec: AgentSpec, context: AgentContext, matcher: ToolMatcher | None
    ) -> Specialist:
        return Specialist(
            spec, context, matcher, tools=self.tools, retrieve=self._retrieve, start=self.start,
            settings=self.settings, audit=self._audit,
        )  # fmt: skip

    # ----------------------------------------------------------------------------------- inputs

    @property
    def greeting(self) -> str:
        return self.config.text(self.config.greeting, self.language)

    def finish(self, reason: str = "caller_hangup") -> list[Output]:
        """The call is over: the summary, and the agent serving it is let go."""
        outputs = super().finish(reason)
        self._let_go()
        return outputs

    def _let_go(self) -> None:
        if self.agent is not None:
            try:
                self.agent.close()
            except Exception as exc:  # an agent that is already gone
                _LOG.warning("call %s: closing agent %s: %r", self.start.call_id, self.agent.name, exc)

    async def heard(self, text: str, confidence: float | None = None) -> list[Output]:
        """A final transcript of the caller leg."""
        said = self._heard(text, confidence)
        if said is None:
            return []
        if self.taking_message:
            return await self._take_message(said)
        if not said:
            return await self._retry()
        if is_transfer_request(said):
            return await self._person("transfer_requested")
        route = await asyncio.to_thread(self.router.route, said)
        if route.agent is None and self._llm_router is not None:
            route = await self._ask_llm(said, route)
        return await self._dispatch(said, route)

    async def dtmf(self, digit: str) -> list[Output]:
        """A keypad digit: the agent it maps to takes the call."""
        outputs = self._keypad(digit)
        if outputs is None or self.taking_message:
            return outputs or []
        target = self.config.dtmf.get(digit)
        if target is None:
            return outputs + await self._retry()
        if self.agent is None or self.agent.name != target:
            outputs += self._handoff(target, "dtmf", Route(target, "dtmf", 1.0))
        return outputs + await self._say(phrase("how_help", self.language))

    async def _silent_turn(self) -> list[Output]:
        if self.stats.silences > self.settings.max_silences:
            return await self._end(
                phrase("goodbye_no_response", self.language),
                HangupAction(reason="agent_no_response"),
                "no_response",
            )
        if self.taking_message:
            return await self._say(phrase("take_message", self.language))
        if self.agent is None:
            return await self._say(self.config.text(self.config.reprompt, self.language))
        return await self._say(phrase("anything_else", self.language))

    # ---------------------------------------------------------------------------------- routing

    async def _ask_llm(self, said: str, route: Route) -> Route:
        assert self._llm_router is not None
        described = [(a.name, a.description) for a in self.config.agents]
        try:
            answer = await self._llm_router(said, described)
        except Exception as exc:  # routing goes on without the LLM
            _LOG.warning("call %s: LLM router failed: %r", self.start.call_id, exc)
            return route
        name, rejected = parse_llm_answer(answer if isinstance(answer, str) else None, self.router.names)
        if rejected:
            _LOG.info("call %s: LLM router answered %r, not an agent", self.start.call_id, answer)
        if name is None:
            return route
        return Route(name, "llm", route.scores.get(name, 0.0), route.scores, route.vector)

    async def _dispatch(self, said: str, route: Route) -> list[Output]:
        outputs: list[Output] = []
        prefix = ""
        current = self.agent
        if current is None:
            if route.agent is None:
                return await self._retry()
            outputs += self._handoff(route.agent, "routed", route)
        elif route.agent is not None and route.agent != current.name and route.agent in current.spec.handoff:
            outputs += self._handoff(route.agent, f"request belongs to {route.agent}", route)
            role = self.config.text(self.config.agent(route.agent).role, self.language)
            prefix = phrase("handoff", self.language, role=role)
        self.retries = 0
        agent = self.agent
        assert agent is not None
        try:
            reply = await agent.respond(said, route, self.language)
        except Exception as exc:  # a crashed agent ends in a transfer or a message, never silence
            _LOG.exception("call %s: agent %s failed", self.start.call_id, agent.name)
            self.crashes.append({"agent": agent.name, "error": f"{type(exc).__name__}: {exc}"})
            return outputs + await self._person("agent_crashed", apology=True, prefix=prefix)
        self.stats.tool_calls.extend({**c, "by": agent.name} for c in reply.tool_calls)
        self.facts.update(reply.facts)
        agent.context.facts.update(reply.facts)
        if not reply.answered:
            self.unanswered.append(said)
        return outputs + await self._say(f"{prefix} {reply.text} {phrase('anything_else', self.language)}")

    def _handoff(self, target: str, reason: str, route: Route) -> list[Output]:
        """A new specialist for ``target`` takes the call with the context so far."""
        source = self.agent.name if self.agent is not None else SUPERVISOR
        context = AgentContext(
            transcript=[dict(e) for e in self.transcript],
            facts=dict(self.facts),
            handed_from=source,
            reason=reason,
        )
        self._let_go()  # the previous agent (if any) hands over and goes
        self.agent = self._specialists(self.config.agent(target), context, self.router.matcher(target))
        self.path.append(target)
        entry = {
            "from": source,
            "to": target,
            "reason": reason,
            "source": route.source,
            "score": round(route.score, 4),
        }
        self.handoffs.append(entry)
        return [
            AgentEvent(
                name="agent.handoff",
                data={
                    "call_id": self.start.call_id,
                    **entry,
                    "config_version": self.version,
                    "context": {"turns": len(context.transcript), "facts": sorted(context.facts)},
                },
            )
        ]

    # --------------------------------------------------------------------------------- endings

    async def _retry(self) -> list[Output]:
        self.retries += 1
        self.stats.reprompts += 1
        if self.retries > self.config.max_retries:
            return await self._person("not_understood")
        if self.agent is None:
            return await self._say(self.config.text(self.config.reprompt, self.language))
        return await self._say(f"{phrase('unclear', self.language)} {phrase('offer_person', self.language)}")

    async def _person(self, reason: str, *, apology: bool = False, prefix: str = "") -> list[Output]:
        """To the human extension; without one, take a message."""
        sorry = phrase("apology", self.language) if apology else ""
        if self.config.human_extension is not None:
            action = TransferAction(leg="caller", target=self.config.human_extension)
            return await self._end(f"{prefix} {sorry} {phrase('transfer', self.language)}", action, reason)
        self.taking_message = True
        return await self._say(f"{prefix} {sorry} {phrase('take_message', self.language)}")

    async def _take_message(self, said: str) -> list[Output]:
        if not said:
            return await self._say(phrase("take_message", self.language))
        self.message = said
        action = HangupAction(reason="agent_message_taken")
        return await self._end(phrase("message_taken", self.language), action, "message_taken")

    def _summary(self, reason: str) -> AgentEvent:
        return self._summary_event(
            "agent.summary",
            reason,
            {
                "config_version": self.version,
                "agents": self.path,
                "handoffs": self.handoffs,
                "crashes": self.crashes,
                "tool_calls": self.stats.tool_calls,
                "facts": self.facts,
                "unanswered": self.unanswered,
                "message": self.message,
                "reprompts": self.stats.reprompts,
            },
        )
