"""The AI attendant's conversation: greet, listen, answer from the knowledge base or take a message.

Theory of operation
-------------------
:class:`Attendant` holds one call's conversation and no I/O: it is given the time (an injected
clock) and three async callables, ``speak(text, language) -> PCM`` (16 kHz s16le), ``retrieve(query,
language, business_unit) -> hits`` (the retriever deployment's dicts) and, optionally, ``check(question,
answer, language) -> bool | None`` (an LLM's opinion of a retrieved answer). Its inputs are the
caller's VAD speech starts (:meth:`speech_started`), final transcripts (:meth:`heard`), timer expiries
(:meth:`expire`, when :meth:`deadline` has passed) and the end of the call (:meth:`finish`); each returns
the outputs to send to the edge, in order: :class:`Say` (a ``play`` action plus the PCM for the caller
leg) and protocol messages (``stop_playback``, ``transfer``, ``hangup``, the ``attendant.summary``
:class:`~pbx_edge.ai_link.protocol.AgentEvent`). The playback clock, barge-in, silence deadlines and the
ending that waits for the last words are :class:`~ai_serve.agents.conversation.Conversation`'s; the
text rules (yes, no, goodbye, names, numbers) are in :mod:`~ai_serve.agents.text_rules`.

- **Answers.** A caller's question is retrieved (filtered by the extension's business unit and the
  call's language). The attendant answers with the best item's answer (a "retrieval answer") only when
  its score reaches ``min_score``, it beats the runner-up (a different answer) by ``min_margin`` and,
  with ``check`` given, the LLM does not reject it; otherwise it does not guess and takes a message.
- **Messages.** One slot per turn: name, callback number (at least ``min_callback_digits`` digits,
  spoken digits understood), reason; then it reads the message back and asks for a yes or no.
- **Silence and noise.** No speech for ``silence_timeout_s`` after the AI stopped talking, or a final
  that is empty or below ``min_stt_confidence``: a re-prompt, at most ``max_reprompts`` in a row, then a
  goodbye and a hang-up.
- **Endings.** A request for a person gives a ``transfer`` to the extension (or its transfer target);
  so does the edge's word that the callee can be reached again (:meth:`Attendant.callee_available`,
  unless ``transfer_when_available`` is off); a transfer that fails turns into taking a message.
  "No, that's all" gives a goodbye. The summary event, then the ``transfer`` or ``hangup``, go out
  ``end_delay_s`` after the last words were played, so the caller hears them; :meth:`finish` (the
  edge ended the call first) sends the summary if it was not sent yet.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pbx_edge.ai_link.protocol import AgentEvent, HangupAction, StartMessage, TransferAction

from .attendant_config import AttendantConfig, Prompts, TemplateValues
from .conversation import (
    Check,
    Conversation,
    Output,
    Retrieve,
    Say,
    SessionSettings,
    Speak,
    TurnStats,
    rank_hits,
)
from .text_rules import (
    extract_name,
    extract_number,
    is_goodbye,
    is_no,
    is_transfer_request,
    is_yes,
    normalize,
    spoken_number,
)

__all__ = [
    "Attendant",
    "Check",
    "Output",
    "Phase",
    "Retrieve",
    "Say",
    "Speak",
    "extract_name",
    "extract_number",
    "is_goodbye",
    "is_no",
    "is_transfer_request",
    "is_yes",
    "normalize",
]

_LOG = logging.getLogger(__name__)


class Phase(enum.Enum):
    LISTENING = "listening"  # an open question: "how can I help?"
    NAME = "name"
    NUMBER = "number"
    REASON = "reason"
    CONFIRM = "confirm"
    ENDING = "ending"  # the last words are playing; the final action waits for them
    DONE = "done"


_NEXT_SLOT = {Phase.NAME: Phase.NUMBER, Phase.NUMBER: Phase.REASON, Phase.REASON: Phase.CONFIRM}


# ---------------------------------------------------------------------------------- conversation


@dataclass(slots=True)
class _Message:
    name: str | None = None
    number: str | None = None
    reason: str | None = None

    def as_dict(self) -> dict[str, str | None]:
        return {"name": self.name, "number": self.number, "reason": self.reason}


@dataclass(slots=True)
class _Stats(TurnStats):
    reprompts: int = 0  # in a row (reset by a useful turn)
    reprompts_total: int = 0
    confirm_attempts: int = 0
    answers: list[dict[str, Any]] = field(default_factory=list)
    unanswered: list[str] = field(default_factory=list)


class Attendant(Conversation[_Stats]):
    """One call's conversation (see the module docstring)."""

    def __init__(
        self,
        start: StartMessage,
        config: AttendantConfig,
        *,
        speak: Speak,
        retrieve: Retrieve,
        clock: Callable[[], float],
        check: Check | None = None,
    ) -> None:
        extension_key, extension = config.extension(start.callee)
        settings = SessionSettings(
            min_stt_confidence=config.min_stt_confidence,
            min_score=config.min_score,
            min_margin=config.min_margin,
            silence_timeout_s=config.silence_timeout_s,
            final_grace_s=config.final_grace_s,
            end_delay_s=config.end_delay_s,
        )
        language = config.language_for(start.language, extension)
        super().__init__(start, language, speak=speak, clock=clock, settings=settings, stats=_Stats())
        self.config = config
        self.extension_key, self.extension = extension_key, extension
        self.prompts: Prompts = config.prompts[self.language]
        self._retrieve, self._check = retrieve, check
        self._phase = Phase.LISTENING
        self.message = _Message()

    @property
    def phase(self) -> Phase:
        """Where the conversation is: ENDING while the last words play, DONE once over."""
        if self.done:
            return Phase.DONE
        return Phase.ENDING if self.pending is not None else self._phase

    @property
    def greeting(self) -> str:
        return self.config.greeting_text(self.extension, self.language)

    # ---------------------------------------------------------------------------------- inputs

    async def heard(self, text: str, confidence: float | None = None) -> list[Output]:
        """A final transcript of the caller leg."""
        said = self._heard(text, confidence)
        if said is None:
            return []
        if not said:
            return await self._reprompt(self.prompts.reprompt_unclear, silence=False)
        if is_transfer_request(said):
            return await self._close(self.prompts.transfer, "transferred", transfer=True)
        if self.phase is Phase.LISTENING:
            if is_goodbye(said):
                return await self._close(self.prompts.goodbye, "completed")
            return await self._question(said)
        return await self._slot(said)

    async def callee_available(self, extension: str, reason: str) -> list[Output]:
        """The edge says the callee can be reached again (``reason``: registered, back, call_ended):
        the caller is connected to it, unless the conversation is ending or this is switched off."""
        if not self.config.transfer_when_available or self.ending:
            return []
        self._record("system", f"{extension} available ({reason})", self._clock())
        return await self._close(
            self.prompts.callee_available, "callee_available", transfer=True, target=extension
        )

    async def _on_transfer_failed(self, target: str) -> list[Output]:
        """The caller could not be connected: take a message instead."""
        self.stats.reprompts = 0
        self._phase = Phase.NAME
        self.message = _Message()
        sorry, ask = self._fill(self.prompts.transfer_failed), self._fill(self.prompts.ask_name)
        return await self._say(f"{sorry} {ask}")

    def heard_late(self, text: str) -> None:
        """A final that came with the end of the call: recorded, not answered."""
        if text.strip():
            self._record("caller", text, self._clock(), late=True)

    async def _on_silence(self) -> list[Output]:
        prompt = self.prompts.reprompt_silence if self.phase is Phase.LISTENING else self._slot_prompt()
        return await self._reprompt(prompt, silence=True)

    # --------------------------------------------------------------------------------- answers

    async def _question(self, text: str) -> list[Output]:
        hits: list[dict[str, Any]] = []
        try:
            hits = await self._retrieve(text, self.language, self.extension.business_unit)
        except Exception as exc:  # no knowledge now: take a message rather than fail the call
            _LOG.warning("call %s: retrieval failed: %r", self.start.call_id, exc)
        best, score, margin = rank_hits(hits)
        confident = best is not None and score >= self.config.min_score and margin >= self.config.min_margin
        checked: bool | None = None
        if confident and best is not None and self._check is not None:
            try:
                checked = await self._check(text, str(best["answer"]), self.language)
            except Exception as exc:
                _LOG.warning("call %s: answer check failed: %r", self.start.call_id, exc)
            confident = checked is not False
        if confident and best is not None:
            self.stats.reprompts = 0
            self.stats.answers.append({
                "question": text, "matched": best.get("question"), "answer": best["answer"],
                "score": round(score, 4), "margin": round(margin, 4), "id": best.get("id"),
                "kind": "retrieval", "checked": checked,
            })  # fmt: skip
            return await self._say(f"{best['answer']} {self.prompts.anything_else}")
        self.stats.unanswered.append(text)
        self.stats.reprompts = 0
        self._phase = Phase.NAME
        return await self._say(f"{self._fill(self.prompts.not_sure)} {self._fill(self.prompts.ask_name)}")

    # -------------------------------------------------------------------------------- messages

    async def _slot(self, text: str) -> list[Output]:
        phase = self.phase
        if phase is Phase.NAME:
            name = extract_name(text, self.language)
            if not name:
                return await self._reprompt(self.prompts.ask_name, silence=False)
            self.message.name = name
        elif phase is Phase.NUMBER:
            number = extract_number(text)
            if len(number) < self.config.min_callback_digits:
                return await self._reprompt(self.prompts.ask_number_again, silence=False)
            self.message.number = number
        elif phase is Phase.REASON:
            self.message.reason = text.strip().rstrip(".!?。 ")
        elif phase is Phase.CONFIRM:
            return await self._confirmed(text)
        self.stats.reprompts = 0
        self._phase = _NEXT_SLOT[phase]
        return await self._say(self._slot_prompt())

    async def _confirmed(self, text: str) -> list[Output]:
        self.stats.confirm_attempts += 1
        if is_yes(text) or self.stats.confirm_attempts > self.config.max_confirm_attempts:
            return await self._close(self.prompts.message_taken, "message_taken")
        if is_no(text):
            self.message = _Message()
            self._phase = Phase.NAME
            return await self._say(
                f"{self._fill(self.prompts.retry_message)} {self._fill(self.prompts.ask_name)}"
            )
        return await self._reprompt(self.prompts.confirm_again, silence=False)

    def _slot_prompt(self) -> str:
        prompt = {
            Phase.NAME: self.prompts.ask_name,
            Phase.NUMBER: self.prompts.ask_number,
            Phase.REASON: self.prompts.ask_reason,
            Phase.CONFIRM: self.prompts.confirm,
        }.get(self.phase, self.prompts.reprompt_silence)
        return self._fill(prompt)

    # --------------------------------------------------------------------------------- outputs

    def _fill(self, template: str) -> str:
        number = spoken_number(self.message.number) if self.message.number else ""
        return template.format_map(
            TemplateValues(
                business=self.extension.text("business", self.language),
                person=self.extension.text("person", self.language),
                name=self.message.name or "",
                number=number,
                reason=self.message.reason or "",
            )
        )

    async def _reprompt(self, prompt: str, *, silence: bool) -> list[Output]:
        self.stats.reprompts += 1
        if self.stats.reprompts > self.config.max_reprompts:
            return await self._close(
                self.prompts.goodbye_no_response, "no_response" if silence else "unintelligible"
            )
        self.stats.reprompts_total += 1
        return await self._say(self._fill(prompt))

    async def _close(
        self, prompt: str, reason: str, *, transfer: bool = False, target: str | None = None
    ) -> list[Output]:
        """Say ``prompt``; then a transfer (to ``target``, else the extension's target) or a hang-up."""
        action: TransferAction | HangupAction
        if transfer:
            target = target or self.extension.transfer_target or self.start.callee or self.extension_key
            action = TransferAction(leg="caller", target=target)
        else:
            action = HangupAction(reason=f"attendant_{reason}")
        return await self._end(self._fill(prompt), action, reason)

    def _summary(self, reason: str) -> AgentEvent:
        return self._summary_event(
            "attendant.summary",
            reason,
            {
                "extension": self.extension_key,
                "trigger": self.start.trigger,
                "answer_given": bool(self.stats.answers),
                "answers": self.stats.answers,
                "unanswered": self.stats.unanswered,
                "message": self.message.as_dict(),
                "message_complete": self.message_complete(),
                "reprompts": self.stats.reprompts_total,
            },
        )

    def message_complete(self) -> bool:
        """All three slots of the message are filled."""
        return all(self.message.as_dict().values())
