"""The schema of an IVR flow file (``config/ivr/*.yaml``), as frozen pydantic models.

A flow serves some called numbers. It greets the caller, matches what they say (or the digit they
press) to an *intent*, collects the intent's *slots* and runs its *action* (transfer, answer from the
knowledge base, call a tool, play a message, hang up). ``config/ivr/example.yaml`` shows every part.
:class:`CallConfig` is the part a flow shares with the multi-agent config (``config/agents.yaml``).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from .yaml_source import dotted

__all__ = [
    "CALL_FIELDS",
    "Action",
    "AnswerFromKnowledgeAction",
    "CallConfig",
    "CallToolAction",
    "Choice",
    "CollectSlotsAction",
    "Fallback",
    "HangupAction",
    "Intent",
    "IvrFlow",
    "KnowledgeFilter",
    "Language",
    "Localized",
    "Name",
    "NluSettings",
    "PlayMessageAction",
    "Slot",
    "Strict",
    "Text",
    "ToolName",
    "ToolSay",
    "TransferAction",
    "next_actions",
    "scalar_to_str",
]

Language = Literal["en", "ko"]
CALL_FIELDS = frozenset({"caller", "callee", "call_id", "language"})
"""Call fields a template or a tool argument may use besides the intent's slots."""

Name = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]*$", max_length=64)]
ToolName = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)*$", max_length=128)]
Text = Annotated[str, Field(min_length=1)]
Localized = Annotated[dict[Language, Text], Field(min_length=1)]


def scalar_to_str(value: Any) -> Any:
    """YAML reads ``1200`` as an int and ``2025-06-02`` as a date; numbers and versions are strings here."""
    if isinstance(value, int | float | date) and not isinstance(value, bool):
        return value.isoformat() if isinstance(value, date) else str(value)
    return value


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class Choice(Strict):
    """One value of a ``choice`` slot; ``synonyms`` are other ways to say it (any language)."""

    value: Text
    synonyms: list[Text] = []

    @model_validator(mode="before")
    @classmethod
    def _from_plain_string(cls, data: Any) -> Any:
        return {"value": data} if isinstance(data, str) else data


class Slot(Strict):
    name: Name
    type: Literal["string", "number", "phone", "date", "choice"]
    prompt: Localized
    required: bool = True
    choices: list[Choice] | None = None


class Intent(Strict):
    name: Name
    description: Text
    examples: Annotated[list[Text], Field(min_length=1)]
    slots: list[Slot] = []
    action: Name

    def slot(self, name: str) -> Slot | None:
        return next((s for s in self.slots if s.name == name), None)


class TransferAction(Strict):
    name: Name
    type: Literal["transfer"]
    target_type: Literal["extension", "queue", "number"]
    target: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.+*#-]+$")]
    say: Localized | None = None

    _coerce = field_validator("target", mode="before")(scalar_to_str)


class KnowledgeFilter(Strict):
    business_unit: Text


class AnswerFromKnowledgeAction(Strict):
    name: Name
    type: Literal["answer_from_knowledge"]
    knowledge: KnowledgeFilter
    on_no_answer: Name | None = None


class ToolSay(Strict):
    success: Localized
    failure: Localized


class CallToolAction(Strict):
    """``arguments`` are templates: ``"{caller}"`` passes the raw value, ``"to {plan}"`` a string."""

    name: Name
    type: Literal["call_tool"]
    tool: ToolName
    arguments: dict[Name, str] = {}
    say: ToolSay
    on_success: Name | None = None
    on_failure: Name | None = None


class CollectSlotsAction(Strict):
    """Ask for the listed slots of the current intent (even optional ones), then run ``then``."""

    name: Name
    type: Literal["collect_slots"]
    slots: Annotated[list[Name], Field(min_length=1)]
    then: Name


class PlayMessageAction(Strict):
    name: Name
    type: Literal["play_message"]
    text: Localized
    then: Name | None = None


class HangupAction(Strict):
    name: Name
    type: Literal["hangup"]
    say: Localized | None = None


Action = Annotated[
    TransferAction
    | AnswerFromKnowledgeAction
    | CallToolAction
    | CollectSlotsAction
    | PlayMessageAction
    | HangupAction,
    Field(discriminator="type"),
]
_NEXT_FIELDS = ("then", "on_no_answer", "on_success", "on_failure")


def next_actions(action: Action) -> list[tuple[str, str]]:
    """``(field, action name)`` for each action this one can lead to."""
    return [(f, n) for f in _NEXT_FIELDS if isinstance(n := getattr(action, f, None), str)]


class Fallback(Strict):
    """No intent matched: say ``reprompt`` up to ``max_retries`` times, then run ``action``."""

    reprompt: Localized
    max_retries: int = Field(2, ge=0, le=10)
    action: Name


class NluSettings(Strict):
    """Cosine thresholds of :class:`~ai_serve.agents.intents.IntentClassifier` for this flow."""

    threshold: float = Field(0.89, gt=0.0, le=1.0)
    margin: float = Field(0.015, ge=0.0, lt=1.0)


class CallConfig(Strict):
    """What a flow and the agents config share: the called numbers, a version, the language and the
    keypad's shortcuts; YAML numbers (``1200``, ``2025-06-02``) are read as strings."""

    version: str | None = None
    language: Literal["en", "ko", "auto"] = "auto"

    @field_validator("version", mode="before")
    @classmethod
    def _version_str(cls, v: Any) -> Any:
        return scalar_to_str(v)

    @field_validator("numbers", mode="before", check_fields=False)
    @classmethod
    def _numbers_str(cls, v: Any) -> Any:
        return [scalar_to_str(x) for x in v] if isinstance(v, list) else v

    @field_validator("dtmf", mode="before", check_fields=False)
    @classmethod
    def _dtmf_keys_str(cls, v: Any) -> Any:
        return {scalar_to_str(k): x for k, x in v.items()} if isinstance(v, dict) else v

    @property
    def languages(self) -> tuple[Language, ...]:
        return ("en", "ko") if self.language == "auto" else (self.language,)

    def text(self, localized: Mapping[Language, str], language: str | None) -> str:
        """The text in ``language``, else in the config's first language, else any."""
        for lang in (language, *self.languages):
            if lang in localized:
                return localized[lang]  # type: ignore[index]
        return next(iter(localized.values()))


class IvrFlow(CallConfig):
    numbers: Annotated[list[Annotated[str, Field(pattern=r"^[0-9A-Za-z+*#_.-]+$")]], Field(min_length=1)]
    greeting: Localized
    nlu: NluSettings = NluSettings()
    intents: Annotated[list[Intent], Field(min_length=1)]
    actions: Annotated[list[Action], Field(min_length=1)]
    fallback: Fallback
    dtmf: dict[Annotated[str, Field(pattern=r"^[0-9*#]$")], Name] = {}

    @model_validator(mode="after")
    def _cross_checked(self, info: ValidationInfo) -> IvrFlow:
        if not (info.context or {}).get("skip_cross_checks"):
            from .flow_checks import cross_check  # here: flow_checks imports this module

            problems = cross_check(self)
            if problems:
                raise ValueError("; ".join(f"{dotted(loc)}: {msg}" for loc, msg in problems))
        return self

    def intent(self, name: str) -> Intent:
        for intent in self.intents:
            if intent.name == name:
                return intent
        raise KeyError(f"no intent {name!r}")

    def action(self, name: str) -> Action:
        for action in self.actions:
            if action.name == name:
                return action
        raise KeyError(f"no action {name!r}")
