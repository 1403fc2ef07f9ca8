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

:class:`SessionCore` is the part shared with the multi-agent session: the playback clock and barge-in,
the transcript, silence deadlines and the ending that waits for the last words; :func:`call_tool`
and :func:`tool_failure_text` are the shared tool path.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from pbx_edge.ai_link.protocol import (
    AgentEvent,
    HangupAction,
    StartMessage,
    StopPlaybackAction,
    TransferAction,
)

from . import ivr_flow as fl
from .attendant import Output, Retrieve, Say, Speak, normalize
from .attendant_config import Language
from .dialog import DialogState, Step
from .intents import IntentClassifier, IntentMatch
from .tools import CallerContext, CallRecorder, ToolRegistry, ToolResult, spoken_failure

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
_HANGUL = re.compile(r"[\uac00-\ud7a3\u1100-\u11ff\u3130-\u318f]")
_LATIN = re.compile(r"[A-Za-z]")

_PHRASES: dict[Language, dict[str, str]] = {
    "en": {
        "anything_else": "Is there anything else I can help you with?",
        "how_help": "How can I help you?",
        "unclear": "Sorry, I didn't catch that.",
        "not_sure": "I'm not sure about that, and I don't want to guess.",
        "offer_person": "You can ask me something else, or say 'agent' to talk to a person.",
        "apology": "I'm sorry, something went wrong on my side.",
        "transfer": "Let me connect you to a colleague.",
        "take_message": "Please tell me your name, number and a short message, and we will call you back.",
        "message_taken": "Thank you, I have passed your message on. Goodbye.",
        "handoff": "Let me pass you to {role}.",
        "goodbye_no_response": "I can't hear you, so I'll end the call now. Goodbye.",
    },
    "ko": {
        "anything_else": "더 도와드릴 일이 있을까요?",
        "how_help": "무엇을 도와드릴까요?",
        "unclear": "죄송합니다, 잘 못 들었어요.",
        "not_sure": "그 부분은 정확히 알지 못해 추측으로 답하지 않겠습니다.",
        "offer_person": "다른 것을 물어보시거나, '상담원'이라고 말씀하시면 연결해 드릴게요.",
        "apology": "죄송합니다, 저희 쪽에 문제가 생겼습니다.",
        "transfer": "담당 직원에게 연결해 드릴게요.",
        "take_message": "성함과 연락처, 남기실 말씀을 말씀해 주시면 다시 연락드리겠습니다.",
        "message_taken": "감사합니다, 메시지를 전달해 드리겠습니다. 안녕히 계세요.",
        "handoff": "{role}에게 연결해 드릴게요.",
        "goodbye_no_response": "말씀이 들리지 않아 통화를 종료하겠습니다. 안녕히 계세요.",
    },
}


def phrase(key: str, language: Language, **values: str) -> str:
    """A built-in sentence of the sessions in ``language``."""
    return _PHRASES[language][key].format(**values)


def detect_language(text: str) -> Language | None:
    """``ko`` when the text has Hangul, ``en`` when it has Latin letters only, else None."""
    if _HANGUL.search(text):
        return "ko"
    if _LATIN.search(text):
        return "en"
    return None


def _intelligible(text: str) -> bool:
    return any(c.isalnum() for c in text)


@dataclass(frozen=True, slots=True)
class SessionSettings:
    """Thresholds and timers of the IVR and multi-agent sessions (the attendant's defaults)."""

    min_stt_confidence: float = 0.3  # a final below this is a failed turn
    min_score: float = 0.95  # knowledge answers: the best hit's score (re-ranked scale) ...
    min_margin: float = 0.03  # ... and its lead over the best different answer
    silence_timeout_s: float = 8.0
    max_silences: int = 2  # silence reprompts in a row before the session gives up (multi-agent)
    final_grace_s: float = 15.0  # after speech started, the longest wait for its final
    end_delay_s: float = 0.5  # transfer / hang up this long after the last words played


def best_answer(
    hits: Sequence[Mapping[str, Any]], settings: SessionSettings
) -> tuple[str | None, float, float]:
    """The answer to say (None: below the thresholds, do not guess), its score and margin."""
    if not hits:
        return None, 0.0, 0.0
    ranked = sorted(hits, key=lambda h: -float(h.get("score", 0.0)))
    best = ranked[0]
    score = float(best.get("score", 0.0))
    answer = normalize(str(best.get("answer", "")))
    rival = next((h for h in ranked[1:] if normalize(str(h.get("answer", ""))) != answer), None)
    margin = score - float(rival.get("score", 0.0)) if rival is not None else score
    confident = bool(answer) and score >= settings.min_score and margin >= settings.min_margin
    return (str(best["answer"]) if confident else None), score, margin


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


@dataclass(slots=True)
class _Pending:
    action: TransferAction | HangupAction
    reason: str


@dataclass(slots=True)
class _Stats:
    turns: int = 0
    reprompts: int = 0
    silences: int = 0  # in a row
    barge_ins: int = 0
    tool_calls: list[dict[str, Any]] = field(default_factory=list)


class SessionCore:
    """Playback clock, barge-in, transcript, silence and ending, for a conversation with no I/O."""

    def __init__(
        self,
        start: StartMessage,
        language: Language,
        *,
        speak: Speak,
        clock: Callable[[], float],
        settings: SessionSettings,
    ) -> None:
        self.start = start
        self.language: Language = language
        self.settings = settings
        self._speak, self._clock = speak, clock
        self.started_at = clock()
        self.playing_until = self.started_at
        self.last_input_at = self.started_at
        self.speech_at: float | None = None
        self.transcript: list[dict[str, Any]] = []
        self.stats = _Stats()
        self.pending: _Pending | None = None
        self.done = False
        self.summary_sent = False
        self._said = 0

    # ------------------------------------------------------------------------------ to override

    async def _on_silence(self) -> list[Output]:
        """The caller said nothing for ``silence_timeout_s`` after the AI stopped talking."""
        raise NotImplementedError

    def _summary(self, reason: str) -> AgentEvent:
        raise NotImplementedError

    # ----------------------------------------------------------------------------------- inputs

    @property
    def ending(self) -> bool:
        """The last words are playing (or the call is over): inputs are only recorded."""
        return self.done or self.pending is not None

    def greeted(self, text: str, seconds: float, age: float = 0.0) -> None:
        """The host played the greeting from a cache: ``seconds`` long, started ``age`` s ago."""
        now = self._clock()
        began = now - max(age, 0.0)
        self.started_at = min(self.started_at, began)
        self._record("ai", text, began)
        self.playing_until = max(self.playing_until, began + seconds)
        self.last_input_at = now

    def speech_started(self) -> list[Output]:
        """The caller's VAD detected speech: barge-in when the AI is still being played."""
        now = self._clock()
        self.speech_at = now
        self.last_input_at = now
        return self._barge_in(now)

    def gap(self) -> None:
        """The caller's speech could not be transcribed: nothing heard."""
        self.speech_at = None
        self.last_input_at = self._clock()

    def deadline(self) -> float | None:
        """When :meth:`expire` is due (None: nothing to wait for)."""
        if self.done:
            return None
        if self.pending is not None:
            return self.playing_until + self.settings.end_delay_s
        silence = max(self.playing_until, self.last_input_at) + self.settings.silence_timeout_s
        if self.speech_at is not None:
            return max(silence, self.speech_at + self.settings.final_grace_s)
        return silence

    async def expire(self) -> list[Output]:
        """The deadline passed: the pending ending goes out, or the silence is handled."""
        due = self.deadline()
        if due is None or self._clock() < due:
            return []
        if self.pending is not None:
            pending, self.pending = self.pending, None
            self.done = True
            return [self._summary_once(pending.reason), pending.action]
        self.speech_at = None
        self.last_input_at = self._clock()
        return await self._on_silence()

    def finish(self, reason: str = "caller_hangup") -> list[Output]:
        """The edge ended the call: the summary, unless it went out already."""
        if self.pending is not None:
            reason = self.pending.reason
        self.pending = None
        self.done = True
        return [] if self.summary_sent else [self._summary_once(reason)]

    # ---------------------------------------------------------------------------------- helpers

    def _heard(self, text: str, confidence: float | None) -> str | None:
        """Book a caller final; the text to act on ("" when unclear), None while ending."""
        now = self._clock()
        self.speech_at = None
        self.last_input_at = now
        if self.ending:
            if text.strip():
                self._record("caller", text, now)
            return None
        self.stats.turns += 1
        self.stats.silences = 0
        self._record("caller", text, now, confidence=confidence)
        unclear = confidence is not None and confidence < self.settings.min_stt_confidence
        return "" if unclear or not _intelligible(text) else text

    def _keypad(self, digit: str) -> list[Output] | None:
        """Book a keypad digit (a barge-in too); None while ending."""
        now = self._clock()
        self.last_input_at = now
        if self.ending:
            return None
        self.stats.silences = 0
        self._record("caller", f"[dtmf {digit}]", now)
        return self._barge_in(now)

    def _barge_in(self, now: float) -> list[Output]:
        if self.done or now >= self.playing_until:
            return []
        self.playing_until = now
        self.stats.barge_ins += 1
        if self.transcript and self.transcript[-1]["role"] == "ai":
            self.transcript[-1]["interrupted"] = True
        return [StopPlaybackAction(leg="caller")]

    async def _say(self, text: str) -> list[Output]:
        """Synthesize ``text``; the edge plays it after what it still plays."""
        text = " ".join(text.split())
        if not text:
            return []
        self._said += 1
        try:
            pcm = await self._speak(text, self.language)
        except Exception as exc:  # no voice now: the turn goes on silently (the text is in the log)
            _LOG.warning("call %s: TTS failed: %r", self.start.call_id, exc)
            self._record("ai", text, self._clock(), spoken=False)
            return []
        now = self._clock()
        say = Say(text, pcm, f"{self.start.call_id}:ai:{self._said}")
        self.playing_until = max(self.playing_until, now) + say.seconds
        self._record("ai", text, now)
        return [say]

    async def _end(self, text: str, action: TransferAction | HangupAction, reason: str) -> list[Output]:
        """Say ``text``; ``action`` goes out once it has played."""
        outputs = await self._say(text)
        self.pending = _Pending(action, reason)
        return outputs

    def _record(self, role: str, text: str, now: float, **extra: Any) -> None:
        entry: dict[str, Any] = {"role": role, "text": text, "t": round(now - self.started_at, 3)}
        entry.update({k: v for k, v in extra.items() if v is not None})
        self.transcript.append(entry)

    def _summary_once(self, reason: str) -> AgentEvent:
        self.summary_sent = True
        return self._summary(reason)

    def _book_tool(self, result: ToolResult, by: str) -> None:
        self.stats.tool_calls.append(
            {
                "tool": result.tool,
                "by": by,
                "ok": result.ok,
                "error": result.error_kind,
                "status": result.status,
            }
        )


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
        requested = start.language
        language: Language = requested if requested in flow.languages else flow.languages[0]
        super().__init__(start, language, speak=speak, clock=clock, settings=settings or SessionSettings())
        self.flow = flow
        self.classifier = classifier
        self.tools = tools
        self._retrieve = retrieve
        self._audit = audit
        self._today = today
        self._detect = requested == "auto" and len(flow.languages) > 1
        call = {"caller": start.caller, "callee": start.callee, "call_id": start.call_id}
        self.dialog = DialogState(flow, call=call, language=language)
        self.version = flow.version
        self.request: str | None = None  # the utterance that started the current intent
        self.intents: list[dict[str, Any]] = []
        self.actions: list[dict[str, Any]] = []
        self.answers: list[dict[str, Any]] = []
        self.fallbacks = 0

    # ----------------------------------------------------------------------------------- inputs

    @property
    def greeting(self) -> str:
        return self.dialog.greeting()

    async def greet(self) -> list[Output]:
        return await self._say(self.greeting)

    async def heard(self, text: str, confidence: float | None = None) -> list[Output]:
        """A final transcript of the caller leg."""
        said = self._heard(text, confidence)
        if said is None:
            return []
        if self._detect and (lang := detect_language(said)) is not None:
            self.language = self.dialog.language = lang
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

    async def _on_silence(self) -> list[Output]:
        self.stats.silences += 1
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
            self.pending = _Pending(TransferAction(leg="caller", target=action.target), "transferred")
            return None
        if isinstance(action, fl.HangupAction):
            if action.say:
                parts.append(d.say(action.say))
            self.pending = _Pending(HangupAction(reason="ivr_hangup"), "completed")
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
        who = CallerContext(
            call_id=self.start.call_id,
            agent="ivr",
            intent=intent,
            caller=self.start.caller,
            language=self.language,
        )
        result = await call_tool(
            self.tools, action.tool, wire_arguments(d.tool_arguments(action)), who, self._audit
        )
        self._book_tool(result, "ivr")
        if result.ok:
            try:
                parts.append(d.say(action.say.success, {"result": _as_values(result.data)}))
                return self._next(action.on_success)
            except KeyError as exc:  # the answer lacks a field the template says
                _LOG.warning("call %s: %s answer lacks %s", self.start.call_id, action.tool, exc)
                result = _unusable(result, self.tools, self.language)
        parts.append(tool_failure_text(self.tools, result, self.language))
        parts.append(d.say(action.say.failure))
        return self._next(action.on_failure)

    # ---------------------------------------------------------------------------------- summary

    def _summary(self, reason: str) -> AgentEvent:
        return AgentEvent(
            name="ivr.summary",
            data={
                "call_id": self.start.call_id,
                "caller": self.start.caller,
                "callee": self.start.callee,
                "flow_version": self.version,
                "language": self.language,
                "reason": reason,
                "intents": self.intents,
                "actions": self.actions,
                "slots": {k: _jsonable(v) for k, v in self.dialog.slots.items()},
                "tool_calls": self.stats.tool_calls,
                "answers": self.answers,
                "turns": self.stats.turns,
                "reprompts": self.stats.reprompts,
                "fallbacks": self.fallbacks,
                "barge_ins": self.stats.barge_ins,
                "duration_s": round(self._clock() - self.started_at, 3),
                "transcript": self.transcript,
            },
        )


def wire_arguments(arguments: Mapping[str, Any]) -> dict[str, Any]:
    """Tool arguments as JSON values: dates as ISO strings, unfilled (None) optional slots left out."""
    return {k: _jsonable(v) for k, v in arguments.items() if v is not None}


def _as_values(data: Any) -> Any:
    return data if isinstance(data, Mapping) else {"value": data}


def _jsonable(value: Any) -> Any:
    return value.isoformat() if isinstance(value, date) else value


def _unusable(result: ToolResult, tools: ToolRegistry, language: Language) -> ToolResult:
    spoken = spoken_failure("bad_response", tools.spec(result.tool), language)
    return ToolResult(
        result.tool, False, result.status, None, "bad_response", result.latency_ms, spoken, result.attempts
    )
