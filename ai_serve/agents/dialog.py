"""The multi-turn state of one IVR call: which intent, which slots are filled, what to ask next.

:class:`DialogState` is pure (no model, no clock, no I/O): the runtime feeds it what the caller said
or pressed, together with a classifier and today's date, and gets back a :class:`Step` saying what to
do: ask for a slot, run an action, reprompt, or run the flow's fallback action. It holds the flow
object it was created with, so a call finishes on the flow version it started on.

Theory of operation:

- Speech with no intent pending slots is classified; a decided intent starts (its slots reset) and
  non-string slots are filled from the same utterance ("switch me to unlimited from Friday").
- While a slot is awaited, the next utterance is read as that slot's value; if it holds none but
  clearly means another intent, that intent starts instead; otherwise the slot is asked again.
- Slots asked for: the intent's required ones, then those named by ``collect_slots`` actions at the
  head of its action chain; the action run is the first one after those.
- Each failed turn counts a retry; past the fallback's ``max_retries`` the fallback action runs.
- DTMF: a digit mapped in the flow starts its intent; while a number or phone slot is awaited,
  digits are collected until ``#`` (``*`` clears them).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import date
from typing import Any, Literal

from .flow_schema import (
    Action,
    CallToolAction,
    CollectSlotsAction,
    Intent,
    IvrFlow,
    Language,
    Slot,
)
from .intents import IntentMatch
from .slots import extract_slot
from .templates import render_template, render_value

__all__ = ["DialogState", "Step", "StepKind"]

StepKind = Literal["ask_slot", "run_action", "reprompt", "fallback"]
Classify = Callable[[str], IntentMatch]


@dataclass(frozen=True, slots=True)
class Step:
    """What the runtime does next. ``text`` is ready to speak (in the call's language)."""

    kind: StepKind
    text: str | None = None
    intent: str | None = None
    slot: str | None = None  # ask_slot: the slot asked for
    action: Action | None = None  # run_action, fallback: the action to run
    slots: Mapping[str, Any] = field(default_factory=dict)
    match: IntentMatch | None = None


class DialogState:
    """One call's dialog over one flow version."""

    def __init__(
        self, flow: IvrFlow, *, call: Mapping[str, Any] | None = None, language: Language | None = None
    ) -> None:
        """``call``: the call fields templates may use (caller, callee, call_id)."""
        self.flow = flow
        self.version = flow.version
        self.call = dict(call or {})
        self.language: Language = language or flow.languages[0]
        self.intent: Intent | None = None
        self.slots: dict[str, Any] = {}
        self.awaiting: Slot | None = None
        self.retries = 0
        self.dtmf_buffer = ""

    # ----------------------------------------------------------------------------------- values

    def values(self) -> dict[str, Any]:
        """Template values: the intent's slots (unfilled ones as None) and the call fields."""
        out: dict[str, Any] = {s.name: None for s in self.intent.slots} if self.intent else {}
        out.update(self.slots)
        out.update(self.call)
        out["language"] = self.language
        return out

    def say(self, localized: Mapping[Language, str], extra: Mapping[str, Any] | None = None) -> str:
        """A flow text in the call's language with its placeholders filled (``extra``: e.g. ``result``)."""
        values = self.values()
        values.update(extra or {})
        return render_template(self.flow.text(localized, self.language), values)

    def greeting(self) -> str:
        return self.say(self.flow.greeting)

    def tool_arguments(self, action: CallToolAction) -> dict[str, Any]:
        """The arguments of a ``call_tool`` action from the filled slots and the call fields."""
        values = self.values()
        return {name: render_value(template, values) for name, template in action.arguments.items()}

    # ------------------------------------------------------------------------------------ turns

    def reset(self) -> None:
        self.intent = None
        self.slots = {}
        self.awaiting = None
        self.retries = 0
        self.dtmf_buffer = ""

    def _chain(self, intent: Intent) -> tuple[list[str], Action]:
        """Slots the leading ``collect_slots`` actions ask for, and the action after them."""
        extra: list[str] = []
        action = self.flow.action(intent.action)
        seen: set[str] = set()
        while isinstance(action, CollectSlotsAction) and action.name not in seen:
            seen.add(action.name)
            extra.extend(action.slots)
            action = self.flow.action(action.then)
        return extra, action

    def next_slot(self) -> Slot | None:
        """The slot to ask for next, or None when the intent's action can run."""
        if self.intent is None:
            return None
        extra, _ = self._chain(self.intent)
        wanted = [s.name for s in self.intent.slots if s.required] + extra
        for name in wanted:
            slot = self.intent.slot(name)
            if slot is not None and self.slots.get(name) is None:
                return slot
        return None

    def _advance(self, match: IntentMatch | None) -> Step:
        assert self.intent is not None
        slot = self.next_slot()
        self.awaiting = slot
        self.dtmf_buffer = ""
        if slot is not None:
            return Step("ask_slot", self.say(slot.prompt), self.intent.name, slot.name, match=match)
        _, action = self._chain(self.intent)
        return Step("run_action", None, self.intent.name, action=action, slots=dict(self.slots), match=match)

    def start_intent(
        self,
        name: str,
        *,
        utterance: str | None = None,
        today: date | None = None,
        match: IntentMatch | None = None,
    ) -> Step:
        """Start ``name`` afresh; non-string slots are filled from ``utterance`` when it holds them."""
        self.intent = self.flow.intent(name)
        self.slots = {}
        self.retries = 0
        if utterance and today is not None:
            for slot in self.intent.slots:
                if slot.type != "string":
                    value = self._extract(slot, utterance, today)
                    if value is not None:
                        self.slots[slot.name] = value
        return self._advance(match)

    def _extract(self, slot: Slot, text: str, today: date) -> Any:
        choices = {c.value: c.synonyms for c in slot.choices or []}
        return extract_slot(slot.type, text, today, choices)

    def _retry(self, match: IntentMatch | None) -> Step:
        """One more failed turn: ask again, or past the limit run the fallback action."""
        self.retries += 1
        if self.retries > self.flow.fallback.max_retries:
            self.reset()
            return Step("fallback", action=self.flow.action(self.flow.fallback.action), match=match)
        if self.awaiting is not None and self.intent is not None:
            prompt = self.say(self.awaiting.prompt)
            return Step("ask_slot", prompt, self.intent.name, self.awaiting.name, match=match)
        return Step("reprompt", self.say(self.flow.fallback.reprompt), match=match)

    def on_utterance(self, text: str, classify: Classify, today: date) -> Step:
        """The caller said ``text`` (a final transcript)."""
        if self.awaiting is not None and self.intent is not None:
            value = self._extract(self.awaiting, text, today)
            if value is not None:
                self.slots[self.awaiting.name] = value
                self.retries = 0
                return self._advance(None)
            match = classify(text)
            if match.intent is not None and match.intent != self.intent.name:
                return self.start_intent(match.intent, utterance=text, today=today, match=match)
            return self._retry(match)
        match = classify(text)
        if match.intent is None:
            return self._retry(match)
        return self.start_intent(match.intent, utterance=text, today=today, match=match)

    def on_dtmf(self, digit: str) -> Step | None:
        """The caller pressed ``digit``; None while digits for a slot are still being collected."""
        slot = self.awaiting
        if slot is not None and slot.type in ("number", "phone"):
            if digit == "#":
                digits, self.dtmf_buffer = self.dtmf_buffer, ""
                if digits:
                    self.slots[slot.name] = digits if slot.type == "phone" else int(digits)
                    self.retries = 0
                    return self._advance(None)
                return self._retry(None)
            if digit == "*":
                self.dtmf_buffer = ""
            elif digit.isdigit():
                self.dtmf_buffer += digit
            return None
        intent = self.flow.dtmf.get(digit)
        match = IntentMatch(intent=intent, source="dtmf" if intent else None, confident=intent is not None)
        if intent is None:
            return self._retry(match)
        return self.start_intent(intent, match=match)
