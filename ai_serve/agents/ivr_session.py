"""One call through a natural-language IVR flow: greet, classify, fill slots, act.

Theory of operation
-------------------
:class:`IvrSession` runs one call over one :class:`~ai_serve.agents.ivr_flow.IvrFlow` version, with no
I/O of its own, in the shape of :class:`~ai_serve.agents.attendant.Attendant` so the same host runs it:
it is given the time (an injected clock), ``speak`` and ``retrieve`` callables and a
:class:`~ai_serve.agents.tools.ToolRegistry`; its inputs (:meth:`greet`, :meth:`speech_started`,
:meth:`heard`, :meth:`dtmf`, :meth:`expire` once :meth:`deadline` passed, :meth:`finish`) return the
outputs for the edge in order.

- **Turns.** Each caller final (or keypad digit) goes to the flow's
  :class:`~ai_serve.agents.dialog.DialogState`, which classifies it (the embedding runs in a worker
  thread, off the event loop), fills slots over several turns and answers with a step: ask for a slot,
  reprompt, run the intent's action, or the fallback's. A final that is empty or below
  ``min_stt_confidence``, and silence past ``silence_timeout_s``, count as failed turns, so the flow's
  ``max_retries`` then its fallback action apply to them too.
- **Actions.** ``transfer`` and ``hangup`` end the call after their words have played;
  ``answer_from_knowledge`` says the best retrieved answer only when it reaches ``min_score`` and beats
  the runner-up by ``min_margin`` (else it says it is not sure and goes to ``on_no_answer``, or offers a
  person); ``call_tool`` calls the registry and says the success template with the ``result``, or the
  tool's own spoken failure followed by the flow's failure text (a failure is never hidden), then
  follows ``on_success``/``on_failure``; ``play_message`` says its text and follows ``then``.
- **Events.** ``ivr.intent`` for each recognised intent and ``ivr.summary`` at the end, both carrying the
  version of the flow the call started with.

The playback clock, barge-in, transcript, silence deadlines and the ending that waits for the last
words are :class:`~ai_serve.agents.conversation.Conversation`'s; what the IVR shares with the
multi-agent session is :class:`~ai_serve.agents.session_core.SessionCore`, and the tool path is
:mod:`~ai_serve.agents.tool_turn` (the names they export are re-exported here).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import date
from typing import Any

from pbx_edge.ai_link.protocol import AgentEvent, HangupAction, StartMessage, TransferAction

from . import flow_schema as fl
from .attendant_config import Language
from .conversation import Output, Pending, Retrieve, SessionSettings, Speak, best_answer
from .dialog import DialogState, Step
from .intents import IntentClassifier, IntentMatch
from .session_core import SessionCore, phrase
from .text_rules import detect_language
from .tool_turn import call_tool, jsonable, tool_failure_text, use_tool, wire_arguments
from .tools import CallRecorder, ToolRegistry

__all__ = [
    "IvrSession",
    "SessionCore",
    "SessionSettings",
    "best_answer",
    "call_tool",
    "detect_language",
    "phrase",
    "tool_failure_text",
    "wire_arguments",
]

_LOG = logging.getLogger(__name__)


_SOURCES = {"embedding": "speech", "llm": "llm", "dtmf": "dtmf"}


class IvrSession(SessionCore):
    """One call through an IVR flow (see the module docstring)."""

    def __init__(
        self,
        start: StartMessage,
        flow: fl.IvrFlow,
        classifier: IntentClassifier,
        tools: ToolRegistry,
        *,
        speak: Speak,
        retrieve: Retrieve,
        clock: Callable[[], float],
        audit: CallRecorder | None = None,
        settings: SessionSettings | None = None,
        today: Callable[[], date] = date.today,
    ) -> None:
        """``classifier`` must be built over ``flow`` (the call keeps this flow version to the end);
        ``audit`` records the tool calls when ``tools`` was built without a recorder."""
        if classifier.flow is not flow and classifier.flow != flow:
            raise ValueError("the classifier was built for another flow version")
        super().__init__(
            start, flow, tools, speak=speak, retrieve=retrieve, clock=clock, audit=audit,
            settings=settings,
        )  # fmt: skip
        self.flow = flow
        self.classifier = classifier
        self._today = today
        call = {"caller": start.caller, "callee": start.callee, "call_id": start.call_id}
        self.dialog = DialogState(flow, call=call, language=self.language)
        self.request: str | None = None  # the utterance that started the current intent
        self.intents: list[dict[str, Any]] = []
        self.actions: list[dict[str, Any]] = []
        self.answers: list[dict[str, Any]] = []
        self.fallbacks = 0

    # ----------------------------------------------------------------------------------- inputs

    @property
    def greeting(self) -> str:
        return self.dialog.greeting()

    async def heard(self, text: str, confidence: float | None = None) -> list[Output]:
        """A final transcript of the caller leg."""
        said = self._heard(text, confidence)
        if said is None:
            return []
        step = await asyncio.to_thread(
            self.dialog.on_utterance, said, self.classifier.classify, self._today()
        )
        if step.match is not None and step.match.intent is not None:
            self.request = said
        return await self._step(step)

    async def dtmf(self, digit: str) -> list[Output]:
        """The caller pressed ``digit`` (keypad input works alongside speech)."""
        outputs = self._keypad(digit)
        if outputs is None:
            return []
        step = self.dialog.on_dtmf(digit)
        if step is not None and step.match is not None and step.match.intent is not None:
            self.request = None
        return outputs + (await self._step(step) if step is not None else [])

    def _set_language(self, language: Language) -> None:
        self.language = self.dialog.language = language

    async def _silent_turn(self) -> list[Output]:
        step = await asyncio.to_thread(self.dialog.on_utterance, "", self.classifier.classify, self._today())
        return await self._step(step)

    # ------------------------------------------------------------------------------------ steps

    async def _step(self, step: Step) -> list[Output]:
        outputs: list[Output] = []
        match = step.match
        if match is not None and match.intent is not None and match.intent == step.intent:
            outputs.append(self._intent_event(match))
        if step.kind in ("ask_slot", "reprompt"):
            if step.kind == "reprompt" or self.dialog.retries:
                self.stats.reprompts += 1
            return outputs + await self._say(step.text or "")
        if step.action is None:  # a run_action/fallback step always names its action
            return outputs
        if step.kind == "fallback":
            self.fallbacks += 1
        return outputs + await self._run(step.action, step.intent if step.kind == "run_action" else None)

    def _intent_event(self, match: IntentMatch) -> AgentEvent:
        source = _SOURCES.get(match.source or "", "speech")
        score = 1.0 if source == "dtmf" else round(match.score, 4)
        self.intents.append({"intent": match.intent, "score": score, "source": source})
        data = {"intent": match.intent, "score": score, "source": source, "flow_version": self.version}
        return AgentEvent(name="ivr.intent", data={"call_id": self.start.call_id, **data})

    async def _run(self, first: fl.Action, intent: str | None) -> list[Output]:
        """Run ``first`` and the actions it leads to; say what they say as one turn."""
        parts: list[str] = []
        action: fl.Action | None = first
        seen: set[str] = set()
        while action is not None and action.name not in seen and self.pending is None:
            seen.add(action.name)
            self.actions.append({"action": action.name, "type": action.type, "intent": intent})
            action = await self._act(action, intent, parts)
        text = " ".join(parts)
        if self.pending is not None:
            pending, self.pending = self.pending, None
            return await self._end(text, pending.action, pending.reason)
        self.dialog.reset()
        self.request = None
        return await self._say(f"{text} {phrase('anything_else', self.language)}")

    async def _act(self, action: fl.Action, intent: str | None, parts: list[str]) -> fl.Action | None:
        """One action: its words go to ``parts``, an ending to :attr:`pending`; returns the next one."""
        d = self.dialog
        if isinstance(action, fl.TransferAction):
            parts.append(d.say(action.say) if action.say else phrase("transfer", self.language))
            self.pending = Pending(TransferAction(leg="caller", target=action.target), "transferred")
            return None
        if isinstance(action, fl.HangupAction):
            if action.say:
                parts.append(d.say(action.say))
            self.pending = Pending(HangupAction(reason="ivr_hangup"), "completed")
            return None
        if isinstance(action, fl.PlayMessageAction):
            parts.append(d.say(action.text))
            return self._next(action.then)
        if isinstance(action, fl.AnswerFromKnowledgeAction):
            return await self._answer(action, intent, parts)
        if isinstance(action, fl.CallToolAction):
            return await self._call(action, intent, parts)
        # collect_slots past the head of a chain: the dialog asks slots only at the head, so go on
        return self._next(action.then)

    def _next(self, name: str | None) -> fl.Action | None:
        return None if name is None else self.flow.action(name)

    async def _answer(
        self, action: fl.AnswerFromKnowledgeAction, intent: str | None, parts: list[str]
    ) -> fl.Action | None:
        query = self.request or self._intent_question(intent)
        hits: list[dict[str, Any]] = []
        if query:
            try:
                hits = await self._retrieve(query, self.language, action.knowledge.business_unit)
            except Exception as exc:  # no knowledge now: say so rather than fail the call
                _LOG.warning("call %s: retrieval failed: %r", self.start.call_id, exc)
        answer, score, margin = best_answer(hits, self.settings)
        self.answers.append(
            {
                "question": query,
                "answered": answer is not None,
                "score": round(score, 4),
                "margin": round(margin, 4),
            }
        )
        if answer is not None:
            parts.append(answer)
            return None
        parts.append(phrase("not_sure", self.language))
        if action.on_no_answer is not None:
            return self.flow.action(action.on_no_answer)
        parts.append(phrase("offer_person", self.language))
        return None

    def _intent_question(self, intent: str | None) -> str | None:
        """A question standing for an intent picked by keypad: its first example in the call's language."""
        if intent is None:
            return None
        examples = self.flow.intent(intent).examples
        return next((e for e in examples if detect_language(e) == self.language), examples[0])

    async def _call(
        self, action: fl.CallToolAction, intent: str | None, parts: list[str]
    ) -> fl.Action | None:
        d = self.dialog
        turn = await use_tool(
            self.tools, action.tool, d.tool_arguments(action), start=self.start, agent="ivr",
            language=self.language, render=lambda result: d.say(action.say.success, {"result": result}),
            audit=self._audit, intent=intent,
        )  # fmt: skip
        self._book_tool(turn.result, "ivr")
        parts.append(turn.text)
        if turn.said_success:
            return self._next(action.on_success)
        parts.append(d.say(action.say.failure))
        return self._next(action.on_failure)

    # ---------------------------------------------------------------------------------- summary

    def _summary(self, reason: str) -> AgentEvent:
        return self._summary_event(
            "ivr.summary",
            reason,
            {
                "flow_version": self.version,
                "intents": self.intents,
                "actions": self.actions,
                "slots": {k: jsonable(v) for k, v in self.dialog.slots.items()},
                "tool_calls": self.stats.tool_calls,
                "answers": self.answers,
                "reprompts": self.stats.reprompts,
                "fallbacks": self.fallbacks,
            },
        )
