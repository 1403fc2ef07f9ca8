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
:class:`~pbx_edge.ai_link.protocol.AgentEvent`).

- **Playback clock.** The edge plays what it is sent in real time, one message after another, so the
  attendant knows until when the caller hears it (:attr:`playing_until`). Speech starting before then
  is a barge-in: a ``stop_playback`` for the caller leg goes out at once.
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
  "no, that's all" a goodbye. The summary event, then the ``transfer`` or ``hangup``, go out
  ``end_delay_s`` after the last words were played, so the caller hears them; :meth:`finish` (the
  edge ended the call first) sends the summary if it was not sent yet.
"""

from __future__ import annotations

import enum
import logging
import re
import unicodedata
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pbx_edge.ai_link.protocol import (
    SAMPLE_RATE,
    AgentEvent,
    HangupAction,
    StartMessage,
    StopPlaybackAction,
    TransferAction,
)

from .attendant_config import AttendantConfig, Language, Prompts, TemplateValues

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

Speak = Callable[[str, Language], Awaitable[bytes]]
Retrieve = Callable[[str, Language, str | None], Awaitable[list[dict[str, Any]]]]
Check = Callable[[str, str, Language], Awaitable[bool | None]]


@dataclass(frozen=True, slots=True)
class Say:
    """Words for the caller: a ``play`` action with ``text`` and ``id``, then ``pcm``."""

    text: str
    pcm: bytes
    id: str

    @property
    def seconds(self) -> float:
        return len(self.pcm) / (2 * SAMPLE_RATE)


Output = Say | StopPlaybackAction | TransferAction | HangupAction | AgentEvent


class Phase(enum.Enum):
    LISTENING = "listening"  # an open question: "how can I help?"
    NAME = "name"
    NUMBER = "number"
    REASON = "reason"
    CONFIRM = "confirm"
    ENDING = "ending"  # the last words are playing; the final action waits for them
    DONE = "done"


_NEXT_SLOT = {Phase.NAME: Phase.NUMBER, Phase.NUMBER: Phase.REASON, Phase.REASON: Phase.CONFIRM}


# ------------------------------------------------------------------------------------- text rules


def normalize(text: str) -> str:
    """NFKC, casefolded, punctuation and symbols as spaces, spaces collapsed."""
    text = unicodedata.normalize("NFKC", text).casefold()
    return " ".join("".join(" " if unicodedata.category(c)[0] in "PS" else c for c in text).split())


def _matches(patterns: Sequence[str], text: str) -> bool:
    said = normalize(text)
    return any(re.search(p, said) for p in patterns)


_TRANSFER = (
    r"\b(speak|talk|connect|transfer|put)\b.*\b(person|someone|somebody|human|operator|agent|"
    r"representative|receptionist|staff|doctor|dr|him|her|them|real)\b",
    r"\b(real|live) (person|human)\b",
    r"\b(operator|representative)\b",
    r"\btransfer me\b|\bput me through\b",
    r"상담원|상담사|직원|사람(이랑|과|하고|한테|을|으로)?\s*(통화|연결|바꿔)|연결해|바꿔\s*주",
)
_GOODBYE = (
    r"^(no|nope|nothing|nah)( (thanks|thank you|that s all|that is all|i m good|i am good))*( bye)?$",
    r"\b(that s all|that is all|that s it|that is it|goodbye|bye)\b",
    r"^((아니요|아니오|아뇨|없어요|없습니다|괜찮아요|괜찮습니다|됐어요|됐습니다|감사합니다|고맙습니다)\s?)+$",
    r"^안녕히 (계세요|계십시오)$",
)
_YES = (
    r"^(yes|yeah|yep|yup|correct|right|sure|ok|okay|exactly|that s right|that is right|that s correct)\b",
    r"^(네|예|응|맞아요|맞습니다|맞아|그래요|그렇습니다)",
)
_NO = (
    r"^(no|nope|wrong|incorrect|not (right|correct)|that s wrong|that is wrong)\b",
    r"^(아니요|아니오|아뇨|아니|틀려요|틀렸어요|아닙니다)",
)


def is_transfer_request(text: str) -> bool:
    """ "Can I speak to a person", "operator", "상담원 연결해 주세요"..."""
    return _matches(_TRANSFER, text)


def is_goodbye(text: str) -> bool:
    """ "No, that's all", "bye", "아니요 괜찮아요"... (short answers only)."""
    return len(normalize(text).split()) <= 6 and _matches(_GOODBYE, text)


def is_yes(text: str) -> bool:
    return _matches(_YES, text) and not is_no(text)


def is_no(text: str) -> bool:
    return _matches(_NO, text)


_NAME_PREFIXES = re.compile(
    r"^(hi|hello|yes|yeah|ok|okay|sure|um|uh)?\s*(my name is|my name s|the name is|this is|it is|it s|"
    r"i am|i m|name s|call me)?\s*",
)
_KO_NAME = re.compile(r"^(네|예)?\s*(저는|제 이름은|이름은)?\s*(.+?)\s*(입니다|이에요|예요|이요|요)?$")


def extract_name(text: str, language: Language) -> str:
    """The name in "My name is Jane Doe." / "저는 홍길동입니다" (empty when nothing is left)."""
    said = normalize(text)
    if language == "ko":
        m = _KO_NAME.match(said)
        name = m.group(3) if m else said
    else:
        name = _NAME_PREFIXES.sub("", said, count=1)
        name = re.sub(r"\b(please|thanks|thank you)\b", "", name)
    name = " ".join(name.split()[:4])
    return name.title() if language == "en" else name


_EN_DIGITS = {
    "zero": "0", "oh": "0", "o": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
    "six": "6", "seven": "7", "eight": "8", "nine": "9",
}  # fmt: skip
_KO_DIGITS = {
    "공": "0", "영": "0", "일": "1", "이": "2", "삼": "3", "사": "4", "오": "5", "육": "6", "칠": "7",
    "팔": "8", "구": "9",
}  # fmt: skip


def extract_number(text: str) -> str:
    """The digits of a spoken phone number: written digits, or digit words ("five five five",
    "공일공")."""
    digits = "".join(c for c in unicodedata.normalize("NFKC", text) if c.isdigit())
    if digits:
        return digits
    out = []
    for token in normalize(text).split():
        if token in _EN_DIGITS:
            out.append(_EN_DIGITS[token])
        elif token and all(c in _KO_DIGITS for c in token):
            out.extend(_KO_DIGITS[c] for c in token)
    return "".join(out)


def _spoken_number(digits: str) -> str:
    """Digits read back one by one ("5 5 5, 0 1 0 0"), grouped by 4 from the end."""
    groups: list[str] = []
    rest = digits
    while len(rest) > 4:
        groups.insert(0, rest[-4:])
        rest = rest[:-4]
    groups.insert(0, rest)
    return ", ".join(" ".join(g) for g in groups if g)


def _intelligible(text: str) -> bool:
    return any(c.isalnum() for c in text)


# ---------------------------------------------------------------------------------- conversation


@dataclass(slots=True)
class _Message:
    name: str | None = None
    number: str | None = None
    reason: str | None = None

    def as_dict(self) -> dict[str, str | None]:
        return {"name": self.name, "number": self.number, "reason": self.reason}


@dataclass(slots=True)
class _Pending:
    """The action that ends the attendant's part, sent once the last words have played."""

    action: TransferAction | HangupAction
    reason: str


@dataclass(slots=True)
class _Stats:
    turns: int = 0  # caller finals heard
    reprompts: int = 0  # in a row (reset by a useful turn)
    reprompts_total: int = 0
    barge_ins: int = 0
    confirm_attempts: int = 0
    answers: list[dict[str, Any]] = field(default_factory=list)
    unanswered: list[str] = field(default_factory=list)


class Attendant:
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
        self.start = start
        self.config = config
        self.extension_key, self.extension = config.extension(start.callee)
        self.language: Language = config.language_for(start.language, self.extension)
        self.prompts: Prompts = config.prompts[self.language]
        self._speak, self._retrieve, self._check, self._clock = speak, retrieve, check, clock
        self.phase = Phase.LISTENING
        self.started_at = clock()
        self.playing_until = self.started_at  # the edge plays what we sent until then
        self.last_input_at = self.started_at
        self.speech_at: float | None = None  # speech started, its final not heard yet
        self.message = _Message()
        self.stats = _Stats()
        self.transcript: list[dict[str, Any]] = []
        self.pending: _Pending | None = None
        self.summary_sent = False
        self._said = 0

    # ---------------------------------------------------------------------------- the greeting

    @property
    def greeting(self) -> str:
        return self.config.greeting_text(self.extension, self.language)

    async def greet(self) -> list[Output]:
        """Say the greeting (when no one played it from a cache)."""
        return await self._say(self.greeting)

    def greeted(self, text: str, seconds: float, age: float = 0.0) -> None:
        """The ingress played the greeting from its cache: ``seconds`` long, started ``age`` s ago."""
        now = self._clock()
        self.started_at = min(self.started_at, now - max(age, 0.0))
        self._record("ai", text, now - max(age, 0.0))
        self.playing_until = max(self.playing_until, now - max(age, 0.0) + seconds)
        self.last_input_at = now

    # ---------------------------------------------------------------------------------- inputs

    def speech_started(self) -> list[Output]:
        """The caller's VAD detected speech: barge-in when the AI is still being played."""
        now = self._clock()
        self.speech_at = now
        self.last_input_at = now
        if self.phase is Phase.DONE or now >= self.playing_until:
            return []
        self.playing_until = now
        self.stats.barge_ins += 1
        if self.transcript and self.transcript[-1]["role"] == "ai":
            self.transcript[-1]["interrupted"] = True
        return [StopPlaybackAction(leg="caller")]

    async def heard(self, text: str, confidence: float | None = None) -> list[Output]:
        """A final transcript of the caller leg."""
        now = self._clock()
        self.speech_at = None
        self.last_input_at = now
        if self.phase in (Phase.ENDING, Phase.DONE):
            if text.strip():
                self._record("caller", text, now)
            return []
        self.stats.turns += 1
        self._record("caller", text, now, confidence=confidence)
        unclear = confidence is not None and confidence < self.config.min_stt_confidence
        if unclear or not _intelligible(text):
            return await self._reprompt(self.prompts.reprompt_unclear, silence=False)
        if is_transfer_request(text):
            return await self._end(self.prompts.transfer, "transferred", transfer=True)
        if self.phase is Phase.LISTENING:
            if is_goodbye(text):
                return await self._end(self.prompts.goodbye, "completed")
            return await self._question(text)
        return await self._slot(text)

    def heard_late(self, text: str) -> None:
        """A final that came with the end of the call: recorded, not answered."""
        if text.strip():
            self._record("caller", text, self._clock(), late=True)

    def gap(self) -> None:
        """The caller's speech could not be transcribed (the STT failed): nothing heard."""
        self.speech_at = None
        self.last_input_at = self._clock()

    def deadline(self) -> float | None:
        """When :meth:`expire` is due (None: nothing to wait for)."""
        if self.phase is Phase.DONE:
            return None
        if self.pending is not None:
            return self.playing_until + self.config.end_delay_s
        silence = max(self.playing_until, self.last_input_at) + self.config.silence_timeout_s
        if self.speech_at is not None:  # the caller spoke: wait for what they said, at most final_grace_s
            return max(silence, self.speech_at + self.config.final_grace_s)
        return silence

    async def expire(self) -> list[Output]:
        """The deadline passed: the pending ending goes out, or the silence gets a re-prompt."""
        due = self.deadline()
        if due is None or self._clock() < due:
            return []
        if self.pending is not None:
            pending, self.pending = self.pending, None
            self.phase = Phase.DONE
            return [self._summary(pending.reason), pending.action]
        self.speech_at = None
        prompt = self.prompts.reprompt_silence if self.phase is Phase.LISTENING else self._slot_prompt()
        return await self._reprompt(prompt, silence=True)

    def finish(self, reason: str = "caller_hangup") -> list[Output]:
        """The edge ended the call (or the socket is gone): the summary, unless it went out."""
        if self.summary_sent:
            self.phase = Phase.DONE
            return []
        if self.pending is not None:
            reason = self.pending.reason
        self.pending = None
        self.phase = Phase.DONE
        return [self._summary(reason)]

    # --------------------------------------------------------------------------------- answers

    async def _question(self, text: str) -> list[Output]:
        hits: list[dict[str, Any]] = []
        try:
            hits = await self._retrieve(text, self.language, self.extension.business_unit)
        except Exception as exc:  # no knowledge now: take a message rather than fail the call
            _LOG.warning("call %s: retrieval failed: %r", self.start.call_id, exc)
        best, score, margin = self._best(hits)
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
        self.phase = Phase.NAME
        return await self._say(f"{self._fill(self.prompts.not_sure)} {self._fill(self.prompts.ask_name)}")

    @staticmethod
    def _best(hits: Sequence[dict[str, Any]]) -> tuple[dict[str, Any] | None, float, float]:
        """The best hit, its score and its margin over the best hit with a different answer."""
        if not hits:
            return None, 0.0, 0.0
        ranked = sorted(hits, key=lambda h: -float(h.get("score", 0.0)))
        best = ranked[0]
        score = float(best.get("score", 0.0))
        answer = normalize(str(best.get("answer", "")))
        rival = next((h for h in ranked[1:] if normalize(str(h.get("answer", ""))) != answer), None)
        margin = score - float(rival.get("score", 0.0)) if rival is not None else score
        return best, score, margin

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
        self.phase = _NEXT_SLOT[phase]
        return await self._say(self._slot_prompt())

    async def _confirmed(self, text: str) -> list[Output]:
        self.stats.confirm_attempts += 1
        if is_yes(text) or self.stats.confirm_attempts > self.config.max_confirm_attempts:
            return await self._end(self.prompts.message_taken, "message_taken")
        if is_no(text):
            self.message = _Message()
            self.phase = Phase.NAME
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
        number = _spoken_number(self.message.number) if self.message.number else ""
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
            return await self._end(
                self.prompts.goodbye_no_response, "no_response" if silence else "unintelligible"
            )
        self.stats.reprompts_total += 1
        return await self._say(self._fill(prompt))

    async def _end(self, prompt: str, reason: str, *, transfer: bool = False) -> list[Output]:
        action: TransferAction | HangupAction
        if transfer:
            target = self.extension.transfer_target or self.start.callee or self.extension_key
            action = TransferAction(leg="caller", target=target)
        else:
            action = HangupAction(reason=f"attendant_{reason}")
        outputs = await self._say(self._fill(prompt))
        self.phase = Phase.ENDING
        self.pending = _Pending(action, reason)
        return outputs

    async def _say(self, text: str) -> list[Output]:
        """Synthesize ``text``; the edge plays it after what it still plays."""
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

    def _record(self, role: str, text: str, now: float, **extra: Any) -> None:
        entry = {"role": role, "text": text, "t": round(now - self.started_at, 3)}
        entry.update({k: v for k, v in extra.items() if v is not None})
        self.transcript.append(entry)

    def _summary(self, reason: str) -> AgentEvent:
        self.summary_sent = True
        return AgentEvent(
            name="attendant.summary",
            data={
                "call_id": self.start.call_id,
                "caller": self.start.caller,
                "callee": self.start.callee,
                "extension": self.extension_key,
                "trigger": self.start.trigger,
                "language": self.language,
                "reason": reason,
                "answer_given": bool(self.stats.answers),
                "answers": self.stats.answers,
                "unanswered": self.stats.unanswered,
                "message": self.message.as_dict(),
                "message_complete": self.message_complete(),
                "turns": self.stats.turns,
                "reprompts": self.stats.reprompts_total,
                "barge_ins": self.stats.barge_ins,
                "duration_s": round(self._clock() - self.started_at, 3),
                "transcript": self.transcript,
            },
        )

    def message_complete(self) -> bool:
        """All three slots of the message are filled."""
        return all(self.message.as_dict().values())
