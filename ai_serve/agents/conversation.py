"""The part every call conversation shares: words out, the playback clock, barge-in, silence, the ending.

Theory of operation
-------------------
A conversation (the attendant, an IVR flow, the multi-agent supervisor) has no I/O of its own: it is
given the time (an injected clock) and a ``speak(text, language) -> PCM`` callable (16 kHz s16le), and
its inputs return the outputs for the edge in order: :class:`Say` (a ``play`` action plus the PCM for
the caller leg) and protocol messages (``stop_playback``, ``transfer``, ``hangup``, events).

- **Playback clock.** The edge plays what it is sent in real time, one message after another, so the
  conversation knows until when the caller hears it (:attr:`Conversation.playing_until`). Speech or a
  keypad digit before then is a barge-in: a ``stop_playback`` for the caller leg goes out at once.
- **Turns.** A caller final is booked in the transcript; one that is empty or below
  ``min_stt_confidence`` is a failed turn. After ``silence_timeout_s`` without input once the AI stopped
  talking (or ``final_grace_s`` after speech started without its final) the subclass's silence handler
  runs.
- **Endings.** The ``transfer`` or ``hangup`` waits in :attr:`Conversation.pending` until the last
  words have played, plus ``end_delay_s``; then the action goes out, and with a ``hangup`` the summary
  event. A ``transfer`` waits in :attr:`Conversation.transferring` for the edge's word:
  :meth:`Conversation.transferred` (the target answered) sends the summary; after
  :meth:`Conversation.transfer_failed` the subclass carries on (:meth:`Conversation._on_transfer_failed`:
  the caller is never left in silence). :meth:`finish` (the edge ended the call first) sends the
  summary if it was not sent yet. Every transfer tried is in the summary's ``transfers``.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from pbx_edge.ai_link.protocol import (
    SAMPLE_RATE,
    AgentEvent,
    HangupAction,
    StartMessage,
    StopPlaybackAction,
    TransferAction,
)

from .attendant_config import Language
from .text_rules import intelligible, normalize

__all__ = [
    "Check",
    "Conversation",
    "Output",
    "Pending",
    "Retrieve",
    "Say",
    "SessionSettings",
    "Speak",
    "TurnStats",
    "best_answer",
    "rank_hits",
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


@dataclass(frozen=True, slots=True)
class SessionSettings:
    """Thresholds and timers of the conversations (the attendant's defaults)."""

    min_stt_confidence: float = 0.3  # a final below this is a failed turn
    min_score: float = 0.95  # knowledge answers: the best hit's score (re-ranked scale) ...
    min_margin: float = 0.03  # ... and its lead over the best different answer
    silence_timeout_s: float = 8.0
    max_silences: int = 2  # silence reprompts in a row before the session gives up (multi-agent)
    final_grace_s: float = 15.0  # after speech started, the longest wait for its final
    end_delay_s: float = 0.5  # transfer / hang up this long after the last words played


def rank_hits(hits: Sequence[Mapping[str, Any]]) -> tuple[Mapping[str, Any] | None, float, float]:
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


def best_answer(
    hits: Sequence[Mapping[str, Any]], settings: SessionSettings
) -> tuple[str | None, float, float]:
    """The answer to say (None: below the thresholds, do not guess), its score and margin."""
    best, score, margin = rank_hits(hits)
    if best is None:
        return None, 0.0, 0.0
    answer = normalize(str(best.get("answer", "")))
    confident = bool(answer) and score >= settings.min_score and margin >= settings.min_margin
    return (str(best["answer"]) if confident else None), score, margin


@dataclass(slots=True)
class Pending:
    """The action that ends the conversation's part, sent once the last words have played."""

    action: TransferAction | HangupAction
    reason: str


@dataclass(slots=True)
class TurnStats:
    turns: int = 0  # caller finals heard
    silences: int = 0  # in a row
    barge_ins: int = 0


StatsT = TypeVar("StatsT", bound=TurnStats)


class Conversation(Generic[StatsT]):
    """Playback clock, barge-in, transcript, silence and ending (see the module docstring)."""

    def __init__(
        self,
        start: StartMessage,
        language: Language,
        *,
        speak: Speak,
        clock: Callable[[], float],
        settings: SessionSettings,
        stats: StatsT,
    ) -> None:
        self.start = start
        self.language: Language = language
        self.settings = settings
        self._speak, self._clock = speak, clock
        self.started_at = clock()
        self.playing_until = self.started_at  # the edge plays what we sent until then
        self.last_input_at = self.started_at
        self.speech_at: float | None = None  # speech started, its final not heard yet
        self.transcript: list[dict[str, Any]] = []
        self.stats = stats
        self.pending: Pending | None = None
        self.transferring: Pending | None = None  # a transfer sent; the edge has not said how it went
        self.transfers: list[dict[str, Any]] = []
        self.done = False
        self.summary_sent = False
        self._said = 0

    # ------------------------------------------------------------------------------ to override

    @property
    def greeting(self) -> str:
        raise NotImplementedError

    async def _on_silence(self) -> list[Output]:
        """The caller said nothing for ``silence_timeout_s`` after the AI stopped talking."""
        raise NotImplementedError

    def _summary(self, reason: str) -> AgentEvent:
        raise NotImplementedError

    async def _on_transfer_failed(self, target: str) -> list[Output]:
        """The edge could not connect the caller to ``target``: what the caller hears now."""
        raise NotImplementedError

    # ----------------------------------------------------------------------------------- inputs

    @property
    def ending(self) -> bool:
        """The last words are playing, a transfer is under way, or the call is over: inputs are only
        recorded."""
        return self.done or self.pending is not None or self.transferring is not None

    async def greet(self) -> list[Output]:
        """Say the greeting (when no one played it from a cache)."""
        return await self._say(self.greeting)

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
        """The caller's speech could not be transcribed (the STT failed): nothing heard."""
        self.speech_at = None
        self.last_input_at = self._clock()

    def deadline(self) -> float | None:
        """When :meth:`expire` is due (None: nothing to wait for)."""
        if self.done or self.transferring is not None:
            return None
        if self.pending is not None:
            return self.playing_until + self.settings.end_delay_s
        silence = max(self.playing_until, self.last_input_at) + self.settings.silence_timeout_s
        if self.speech_at is not None:  # the caller spoke: wait for what they said, at most final_grace_s
            return max(silence, self.speech_at + self.settings.final_grace_s)
        return silence

    async def expire(self) -> list[Output]:
        """The deadline passed: the pending ending goes out, or the silence is handled."""
        due = self.deadline()
        if due is None or self._clock() < due:
            return []
        if self.pending is not None:
            pending, self.pending = self.pending, None
            if isinstance(pending.action, TransferAction):
                self.transferring = pending
                self.transfers.append({"target": pending.action.target, "reason": pending.reason, "ok": None})
                return [pending.action]
            self.done = True
            return [self._summary_once(pending.reason), pending.action]
        self.speech_at = None
        return await self._on_silence()

    def transferred(self) -> list[Output]:
        """The edge connected the caller to the transfer target: this conversation's part is over."""
        if self.transferring is None:
            return []
        pending, self.transferring = self.transferring, None
        self.transfers[-1]["ok"] = True
        self.done = True
        return [] if self.summary_sent else [self._summary_once(pending.reason)]

    async def transfer_failed(self, reason: str) -> list[Output]:
        """The edge could not connect the caller (refused, no answer, no route): carry on."""
        if self.transferring is None or self.done:
            return []
        pending, self.transferring = self.transferring, None
        self.transfers[-1].update(ok=False, error=reason)
        now = self._clock()
        self.last_input_at = now
        self._record("system", f"transfer to {self.transfers[-1]['target']} failed: {reason}", now)
        assert isinstance(pending.action, TransferAction)
        return await self._on_transfer_failed(pending.action.target)

    def finish(self, reason: str = "caller_hangup") -> list[Output]:
        """The edge ended the call (or the socket is gone): the summary, unless it went out already."""
        for ending in (self.pending, self.transferring):
            if ending is not None:
                reason = ending.reason
        self.pending = self.transferring = None
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
        return "" if unclear or not intelligible(text) else text

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
        self.pending = Pending(action, reason)
        return outputs

    def _record(self, role: str, text: str, now: float, **extra: Any) -> None:
        entry: dict[str, Any] = {"role": role, "text": text, "t": round(now - self.started_at, 3)}
        entry.update({k: v for k, v in extra.items() if v is not None})
        self.transcript.append(entry)

    def _summary_once(self, reason: str) -> AgentEvent:
        self.summary_sent = True
        return self._summary(reason)

    def _summary_event(self, name: str, reason: str, data: Mapping[str, Any]) -> AgentEvent:
        """The end-of-call event: the call, its language and why it ended, ``data``, then the counts and
        the transcript."""
        start = self.start
        return AgentEvent(
            name=name,
            data={
                "call_id": start.call_id,
                "caller": start.caller,
                "callee": start.callee,
                "language": self.language,
                "reason": reason,
                **data,
                "transfers": self.transfers,
                "turns": self.stats.turns,
                "barge_ins": self.stats.barge_ins,
                "duration_s": round(self._clock() - self.started_at, 3),
                "transcript": self.transcript,
            },
        )
