"""IVR flows: the YAML a non-developer edits, validated with line numbers, and a hot-reloading registry.

A flow serves some called numbers. It greets the caller, matches what they say (or the digit they
press) to an *intent*, collects the intent's *slots* and runs its *action* (transfer, answer from the
knowledge base, call a tool, play a message, hang up). ``config/ivr/example.yaml`` shows every part.

Loading is strict (unknown keys are errors) and every problem is reported at once, each with the line
and column of the YAML node at fault: the file is composed into nodes first, each node's mark is
indexed by its path (``("intents", 0, "slots", 1, "type")``), and pydantic's error locations and the
cross-checks' paths are looked up in that index (:class:`FlowError`).

:class:`FlowRegistry` keeps the last good version of every file in a folder: a bad edit is recorded
and the previous version stays live. Flows are immutable, so a call keeps the object it started with
(and its ``version``) while later calls get the new one.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import string
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

__all__ = [
    "CALL_FIELDS",
    "Action",
    "AnswerFromKnowledgeAction",
    "CallToolAction",
    "Choice",
    "CollectSlotsAction",
    "Fallback",
    "FlowError",
    "FlowProblem",
    "FlowRegistry",
    "FlowWatcher",
    "HangupAction",
    "Intent",
    "IvrFlow",
    "Language",
    "NluSettings",
    "PlayMessageAction",
    "ReloadResult",
    "Slot",
    "TransferAction",
    "load_flow",
    "parse_flow",
    "render_template",
    "render_value",
    "template_fields",
    "watch_flows",
]

_LOG = logging.getLogger(__name__)

Language = Literal["en", "ko"]
CALL_FIELDS = frozenset({"caller", "callee", "call_id", "language"})
"""Call fields a template or a tool argument may use besides the intent's slots."""

Loc = tuple[str | int, ...]
Name = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]*$", max_length=64)]
ToolName = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)*$", max_length=128)]
Text = Annotated[str, Field(min_length=1)]
Localized = Annotated[dict[Language, Text], Field(min_length=1)]
_FIELD = r"[a-z_][a-z0-9_]*(\.[a-z0-9_]+)*"


def _scalar_to_str(value: Any) -> Any:
    """YAML reads ``1200`` as an int and ``2025-06-02`` as a date; numbers and versions are strings here."""
    if isinstance(value, int | float | date) and not isinstance(value, bool):
        return value.isoformat() if isinstance(value, date) else str(value)
    return value


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


# ------------------------------------------------------------------------------------------ schema


class Choice(_Strict):
    """One value of a ``choice`` slot; ``synonyms`` are other ways to say it (any language)."""

    value: Text
    synonyms: list[Text] = []

    @model_validator(mode="before")
    @classmethod
    def _from_plain_string(cls, data: Any) -> Any:
        return {"value": data} if isinstance(data, str) else data


class Slot(_Strict):
    name: Name
    type: Literal["string", "number", "phone", "date", "choice"]
    prompt: Localized
    required: bool = True
    choices: list[Choice] | None = None


class Intent(_Strict):
    name: Name
    description: Text
    examples: Annotated[list[Text], Field(min_length=1)]
    slots: list[Slot] = []
    action: Name

    def slot(self, name: str) -> Slot | None:
        return next((s for s in self.slots if s.name == name), None)


class TransferAction(_Strict):
    name: Name
    type: Literal["transfer"]
    target_type: Literal["extension", "queue", "number"]
    target: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.+*#-]+$")]
    say: Localized | None = None

    _coerce = field_validator("target", mode="before")(_scalar_to_str)


class KnowledgeFilter(_Strict):
    business_unit: Text


class AnswerFromKnowledgeAction(_Strict):
    name: Name
    type: Literal["answer_from_knowledge"]
    knowledge: KnowledgeFilter
    on_no_answer: Name | None = None


class ToolSay(_Strict):
    success: Localized
    failure: Localized


class CallToolAction(_Strict):
    """``arguments`` are templates: ``"{caller}"`` passes the raw value, ``"to {plan}"`` a string."""

    name: Name
    type: Literal["call_tool"]
    tool: ToolName
    arguments: dict[Name, str] = {}
    say: ToolSay
    on_success: Name | None = None
    on_failure: Name | None = None


class CollectSlotsAction(_Strict):
    """Ask for the listed slots of the current intent (even optional ones), then run ``then``."""

    name: Name
    type: Literal["collect_slots"]
    slots: Annotated[list[Name], Field(min_length=1)]
    then: Name


class PlayMessageAction(_Strict):
    name: Name
    type: Literal["play_message"]
    text: Localized
    then: Name | None = None


class HangupAction(_Strict):
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


class Fallback(_Strict):
    """No intent matched: say ``reprompt`` up to ``max_retries`` times, then run ``action``."""

    reprompt: Localized
    max_retries: int = Field(2, ge=0, le=10)
    action: Name


class NluSettings(_Strict):
    """Cosine thresholds of :class:`~ai_serve.agents.intents.IntentClassifier` for this flow."""

    threshold: float = Field(0.89, gt=0.0, le=1.0)
    margin: float = Field(0.015, ge=0.0, lt=1.0)


class IvrFlow(_Strict):
    version: str | None = None
    numbers: Annotated[list[Annotated[str, Field(pattern=r"^[0-9A-Za-z+*#_.-]+$")]], Field(min_length=1)]
    language: Literal["en", "ko", "auto"] = "auto"
    greeting: Localized
    nlu: NluSettings = NluSettings()
    intents: Annotated[list[Intent], Field(min_length=1)]
    actions: Annotated[list[Action], Field(min_length=1)]
    fallback: Fallback
    dtmf: dict[Annotated[str, Field(pattern=r"^[0-9*#]$")], Name] = {}

    @field_validator("version", mode="before")
    @classmethod
    def _version_str(cls, v: Any) -> Any:
        return _scalar_to_str(v)

    @field_validator("numbers", mode="before")
    @classmethod
    def _numbers_str(cls, v: Any) -> Any:
        return [_scalar_to_str(x) for x in v] if isinstance(v, list) else v

    @field_validator("dtmf", mode="before")
    @classmethod
    def _dtmf_keys_str(cls, v: Any) -> Any:
        return {_scalar_to_str(k): x for k, x in v.items()} if isinstance(v, dict) else v

    @model_validator(mode="after")
    def _cross_checked(self, info: ValidationInfo) -> IvrFlow:
        if not (info.context or {}).get("skip_cross_checks"):
            problems = cross_check(self)
            if problems:
                raise ValueError("; ".join(f"{_dotted(loc)}: {msg}" for loc, msg in problems))
        return self

    @property
    def languages(self) -> tuple[Language, ...]:
        return ("en", "ko") if self.language == "auto" else (self.language,)

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

    def text(self, localized: Mapping[Language, str], language: str | None) -> str:
        """The text in ``language``, else in the flow's first language, else any."""
        for lang in (language, *self.languages):
            if lang in localized:
                return localized[lang]  # type: ignore[index]
        return next(iter(localized.values()))


# --------------------------------------------------------------------------------------- templates


def template_fields(template: str) -> list[str]:
    """Placeholder names in ``template`` (``{{``/``}}`` are literal braces); ValueError if malformed."""
    names = []
    for _, field, spec, conversion in string.Formatter().parse(template):
        if field is None:
            continue
        if spec or conversion or re.fullmatch(_FIELD, field) is None:
            raise ValueError(f"bad placeholder {{{field}}}: use a plain name such as {{caller}}")
        names.append(field)
    return names


def _lookup(values: Mapping[str, Any], dotted: str) -> Any:
    node: Any = values
    for part in dotted.split("."):
        if isinstance(node, Mapping) and part in node:
            node = node[part]
        elif not isinstance(node, Mapping) and hasattr(node, part):
            node = getattr(node, part)
        else:
            raise KeyError(f"template value {dotted!r} is missing")
    return node


def render_template(template: str, values: Mapping[str, Any]) -> str:
    """Fill ``{name}`` and ``{result.field}`` placeholders from ``values``; KeyError if one is missing."""
    out = []
    for literal, field, _, _ in string.Formatter().parse(template):
        out.append(literal)
        if field is not None:
            value = _lookup(values, field)
            out.append("" if value is None else str(value))
    return "".join(out)


def render_value(template: str, values: Mapping[str, Any]) -> Any:
    """A tool argument: a lone placeholder keeps the value's type (a number, None), else a string."""
    fields = template_fields(template)
    if len(fields) == 1 and template == "{" + fields[0] + "}":
        return _lookup(values, fields[0])
    return render_template(template, values)


# ------------------------------------------------------------------------------------ cross-checks


def _dotted(loc: Loc) -> str:
    out = ""
    for seg in loc:
        out += f"[{seg}]" if isinstance(seg, int) else (f".{seg}" if out else str(seg))
    return out or "(top level)"


def _reaching_intents(flow: IvrFlow) -> dict[str, list[Intent | None]]:
    """Per action, the intents whose action leads to it (``None``: reached from the fallback)."""
    by_name = {a.name: a for a in flow.actions}
    reach: dict[str, list[Intent | None]] = {name: [] for name in by_name}
    starts: list[tuple[Intent | None, str]] = [(i, i.action) for i in flow.intents]
    starts.append((None, flow.fallback.action))
    for intent, start in starts:
        seen: set[str] = set()
        todo = [start]
        while todo:
            name = todo.pop()
            if name in seen or name not in by_name:
                continue
            seen.add(name)
            reach[name].append(intent)
            todo.extend(n for _, n in next_actions(by_name[name]))
    return reach


def _check_text(
    problems: list[tuple[Loc, str]],
    loc: Loc,
    localized: Mapping[Language, str] | None,
    flow: IvrFlow,
    contexts: list[Intent | None],
    *,
    result: bool = False,
) -> None:
    if localized is None:
        return
    for lang in flow.languages:
        if lang not in localized:
            problems.append((loc, f"missing the {lang!r} text (the flow's language is {flow.language})"))
    for language, text in localized.items():
        _check_template(problems, (*loc, language), text, contexts, result=result)


def _check_template(
    problems: list[tuple[Loc, str]], loc: Loc, text: str, contexts: list[Intent | None], *, result: bool
) -> None:
    try:
        fields = template_fields(text)
    except ValueError as e:
        problems.append((loc, str(e)))
        return
    for field in fields:
        head = field.split(".", 1)[0]
        if head == "result":
            if not result:
                problems.append((loc, f"{{{field}}}: tool results exist only in a call_tool's say.success"))
            continue
        if "." in field:
            problems.append((loc, f"{{{field}}}: only result.<field> may use a dot"))
            continue
        if field in CALL_FIELDS:
            continue
        for intent in contexts:
            if intent is None:
                known = ", ".join(sorted(CALL_FIELDS))
                problems.append((loc, f"{{{field}}}: no intent's slots are known here (known: {known})"))
            elif intent.slot(field) is None:
                known = ", ".join(sorted(CALL_FIELDS | {s.name for s in intent.slots}))
                problems.append(
                    (loc, f"{{{field}}}: intent {intent.name!r} has no such slot (known: {known})")
                )


def _unique(problems: list[tuple[Loc, str]], items: list[Any], loc: Loc, what: str) -> None:
    first: dict[str, int] = {}
    for i, item in enumerate(items):
        if item.name in first:
            problems.append(
                (
                    (*loc, i, "name"),
                    f"duplicate {what} name {item.name!r} (first at index {first[item.name]})",
                )
            )
        else:
            first[item.name] = i


def _find_cycle(flow: IvrFlow) -> list[str] | None:
    by_name = {a.name: a for a in flow.actions}
    state: dict[str, int] = {}  # 1: on the stack, 2: done

    def visit(name: str, stack: list[str]) -> list[str] | None:
        if state.get(name) == 1:
            return [*stack[stack.index(name) :], name]
        if state.get(name) == 2 or name not in by_name:
            return None
        state[name] = 1
        for _, nxt in next_actions(by_name[name]):
            if cycle := visit(nxt, [*stack, name]):
                return cycle
        state[name] = 2
        return None

    for name in by_name:
        if cycle := visit(name, []):
            return cycle
    return None


def cross_check(flow: IvrFlow) -> list[tuple[Loc, str]]:
    """Problems pydantic cannot see alone: references, uniqueness, languages and templates."""
    problems: list[tuple[Loc, str]] = []
    intents = {i.name for i in flow.intents}
    actions = {a.name for a in flow.actions}
    known_actions = ", ".join(sorted(actions))
    _unique(problems, flow.intents, ("intents",), "intent")
    _unique(problems, flow.actions, ("actions",), "action")
    seen_numbers: set[str] = set()
    for i, number in enumerate(flow.numbers):
        if number in seen_numbers:
            problems.append((("numbers", i), f"number {number!r} is listed twice"))
        seen_numbers.add(number)
    _check_text(problems, ("greeting",), flow.greeting, flow, [None])
    reach = _reaching_intents(flow)
    for i, intent in enumerate(flow.intents):
        loc: Loc = ("intents", i)
        _unique(problems, intent.slots, (*loc, "slots"), "slot")
        if intent.action not in actions:
            problems.append(
                ((*loc, "action"), f"unknown action {intent.action!r} (defined: {known_actions})")
            )
        for j, slot in enumerate(intent.slots):
            sloc: Loc = (*loc, "slots", j)
            if slot.type == "choice" and not slot.choices:
                problems.append(((*sloc, "type"), "a choice slot needs a non-empty 'choices' list"))
            if slot.type != "choice" and slot.choices is not None:
                problems.append(((*sloc, "choices"), f"'choices' is only for choice slots, not {slot.type}"))
            _check_text(problems, (*sloc, "prompt"), slot.prompt, flow, [intent])
    for i, action in enumerate(flow.actions):
        loc = ("actions", i)
        contexts = reach.get(action.name, [])
        for field, target in next_actions(action):
            if target not in actions:
                problems.append(((*loc, field), f"unknown action {target!r} (defined: {known_actions})"))
        if isinstance(action, TransferAction | HangupAction):
            _check_text(problems, (*loc, "say"), action.say, flow, contexts)
        elif isinstance(action, PlayMessageAction):
            _check_text(problems, (*loc, "text"), action.text, flow, contexts)
        elif isinstance(action, CallToolAction):
            _check_text(problems, (*loc, "say", "success"), action.say.success, flow, contexts, result=True)
            _check_text(problems, (*loc, "say", "failure"), action.say.failure, flow, contexts)
            for arg, template in action.arguments.items():
                _check_template(problems, (*loc, "arguments", arg), template, contexts, result=False)
        elif isinstance(action, CollectSlotsAction):
            for j, slot_name in enumerate(action.slots):
                for context in contexts:
                    owner = "the fallback" if context is None else f"intent {context.name!r}"
                    if context is None or context.slot(slot_name) is None:
                        problems.append(((*loc, "slots", j), f"{owner} has no slot {slot_name!r}"))
    cycle = _find_cycle(flow)
    if cycle:
        index = next(i for i, a in enumerate(flow.actions) if a.name == cycle[0])
        problems.append((("actions", index, "name"), "actions loop forever: " + " -> ".join(cycle)))
    if flow.fallback.action not in actions:
        problems.append(
            (("fallback", "action"), f"unknown action {flow.fallback.action!r} (defined: {known_actions})")
        )
    _check_text(problems, ("fallback", "reprompt"), flow.fallback.reprompt, flow, [None])
    for digit, name in flow.dtmf.items():
        if name not in intents:
            problems.append(
                (("dtmf", digit), f"unknown intent {name!r} (defined: {', '.join(sorted(intents))})")
            )
    return problems


# ------------------------------------------------------------------------------------------ loading


@dataclass(frozen=True, slots=True)
class FlowProblem:
    file: str
    line: int  # 1-based
    column: int  # 1-based
    path: str  # e.g. intents[0].slots[1].type
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}: {self.path}: {self.message}"


class FlowError(ValueError):
    """A flow file is invalid; ``problems`` lists each one with its position in the file."""

    def __init__(self, problems: list[FlowProblem]) -> None:
        self.problems = problems
        super().__init__("invalid IVR flow:\n  " + "\n  ".join(str(p) for p in problems))


@dataclass(frozen=True, slots=True)
class _Where:
    value: yaml.Mark
    key: yaml.Mark | None  # the mapping key's mark when the node is a mapping value


def _index_marks(
    node: yaml.Node,
    loc: Loc,
    key: yaml.Mark | None,
    marks: dict[Loc, _Where],
    dups: list[tuple[Loc, yaml.Mark]],
) -> None:
    marks[loc] = _Where(node.start_mark, key)
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.value == "<<":
                continue
            name = key_node.value
            if name in seen:
                dups.append(((*loc, name), key_node.start_mark))
            seen.add(name)
            _index_marks(value_node, (*loc, name), key_node.start_mark, marks, dups)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _index_marks(item, (*loc, i), None, marks, dups)


def _resolve(loc: Loc, data: Any) -> tuple[Loc, bool]:
    """A pydantic location as a YAML path (union tags dropped) and whether it names a dict key."""
    path: list[str | int] = []
    node = data
    for seg in loc:
        if seg == "[key]":
            return tuple(path), True
        if isinstance(node, dict) and seg in node:
            node = node[seg]
        elif isinstance(node, dict) and seg not in node and node.get("type") == seg:
            continue  # the discriminated union's tag
        elif isinstance(node, list) and isinstance(seg, int) and 0 <= seg < len(node):
            node = node[seg]
        else:
            node = None
        path.append(seg)
    return tuple(path), False


def _position(loc: Loc, is_key: bool, marks: dict[Loc, _Where]) -> yaml.Mark | None:
    for n in range(len(loc), -1, -1):
        where = marks.get(loc[:n])
        if where is None:
            continue
        if n < len(loc):  # a missing field: the mapping that lacks it
            return where.key or where.value
        if where.key is not None and (is_key or where.key.line != where.value.line):
            return where.key  # the key itself, or "key:" above a nested block
        return where.value
    return None


def _problem(
    source: str, loc: Loc, message: str, data: Any, marks: dict[Loc, _Where], *, key: bool = False
) -> FlowProblem:
    """``key``: the problem is the key itself (an unknown field), not its value."""
    path, is_key = _resolve(loc, data)
    mark = _position(path, is_key or key, marks)
    line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
    return FlowProblem(source, line, col, _dotted(path), message)


def _content_version(text: str) -> str:
    return "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]


def parse_flow(text: str, source: str = "<string>") -> IvrFlow:
    """Validate a flow's YAML text; raises :class:`FlowError` listing every problem with its line."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        msg = " ".join(str(x) for x in (e.context, e.problem) if x)
        raise FlowError([FlowProblem(source, line, col, "(yaml)", msg or "not valid YAML")]) from None
    finally:
        loader.dispose()
    if node is None or not isinstance(data, dict):
        what = "empty" if node is None else f"a {type(data).__name__}"
        raise FlowError(
            [FlowProblem(source, 1, 1, "(top level)", f"a flow is a mapping, this file is {what}")]
        )
    marks: dict[Loc, _Where] = {}
    dups: list[tuple[Loc, yaml.Mark]] = []
    _index_marks(node, (), None, marks, dups)
    problems = [
        FlowProblem(source, m.line + 1, m.column + 1, _dotted(loc), "duplicate key (the later one would win)")
        for loc, m in dups
    ]
    try:
        flow = IvrFlow.model_validate(data, context={"skip_cross_checks": True})
    except ValidationError as e:
        for err in e.errors():
            loc = tuple(err["loc"])
            if err["type"] in ("union_tag_invalid", "union_tag_not_found"):
                loc = (*loc, "type")
            key = err["type"] == "extra_forbidden"
            problems.append(_problem(source, loc, err["msg"], data, marks, key=key))
        raise FlowError(sorted(problems, key=lambda p: (p.line, p.column))) from None
    problems.extend(_problem(source, loc, msg, data, marks) for loc, msg in cross_check(flow))
    if problems:
        raise FlowError(sorted(problems, key=lambda p: (p.line, p.column)))
    return flow if flow.version else flow.model_copy(update={"version": _content_version(text)})


def load_flow(path: str | Path) -> IvrFlow:
    """Read and validate one flow file (:func:`parse_flow`)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise FlowError([FlowProblem(str(p), 1, 1, "(file)", f"cannot read: {e}")]) from None
    return parse_flow(text, str(p))


# ----------------------------------------------------------------------------------------- registry


@dataclass(frozen=True, slots=True)
class _Stamp:
    mtime_ns: int
    size: int


@dataclass(frozen=True, slots=True)
class ReloadResult:
    loaded: tuple[Path, ...] = ()
    removed: tuple[Path, ...] = ()
    failed: tuple[tuple[Path, FlowError], ...] = ()

    @property
    def changed(self) -> bool:
        return bool(self.loaded or self.removed or self.failed)


class FlowRegistry:
    """Every ``*.yaml``/``*.yml`` flow in ``folder``, indexed by called number, reloaded on change.

    :meth:`reload_if_changed` compares each file's mtime and size with the last look: a new or
    changed file is parsed, and only a valid one (whose numbers no other file serves) replaces the
    previous version; an invalid one is recorded in :attr:`errors` and its old version stays live.
    Thread-safe: lookups may run while a watcher reloads.
    """

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise FileNotFoundError(f"IVR flow folder {self.folder} does not exist")
        self._lock = threading.Lock()
        self._stamps: dict[Path, _Stamp] = {}
        self._flows: dict[Path, IvrFlow] = {}
        self._errors: dict[Path, FlowError] = {}
        self._by_number: dict[str, IvrFlow] = {}
        self.reload_if_changed()

    def flow_for(self, number: str) -> IvrFlow | None:
        """The current flow for a called number (a new call keeps the object it gets)."""
        with self._lock:
            return self._by_number.get(number)

    @property
    def flows(self) -> dict[Path, IvrFlow]:
        with self._lock:
            return dict(self._flows)

    @property
    def errors(self) -> dict[Path, FlowError]:
        """Files whose latest content is invalid (their previous good version, if any, is live)."""
        with self._lock:
            return dict(self._errors)

    def _files(self) -> list[Path]:
        return sorted(
            p
            for pattern in ("*.yaml", "*.yml")
            for p in self.folder.glob(pattern)
            if p.is_file() and not p.name.startswith(".")
        )

    def _conflict(self, path: Path, flow: IvrFlow) -> FlowError | None:
        for other_path, other in self._flows.items():
            if other_path == path:
                continue
            for i, number in enumerate(flow.numbers):
                if number in other.numbers:
                    where = FlowProblem(
                        str(path), 1, 1, f"numbers[{i}]", f"{number} is served by {other_path.name}"
                    )
                    return FlowError([where])
        return None

    def reload_if_changed(self) -> ReloadResult:
        """Pick up new, changed and deleted files; returns what happened."""
        try:
            files = self._files()
        except OSError as e:
            _LOG.warning("IVR flows: cannot list %s: %s", self.folder, e)
            return ReloadResult()
        loaded: list[Path] = []
        failed: list[tuple[Path, FlowError]] = []
        with self._lock:
            removed = [p for p in self._stamps if p not in files]
            for path in removed:
                self._stamps.pop(path, None)
                self._flows.pop(path, None)
                self._errors.pop(path, None)
            for path in files:
                try:
                    st = path.stat()
                except OSError:
                    continue  # deleted between the listing and now: the next pass sees it gone
                stamp = _Stamp(st.st_mtime_ns, st.st_size)
                if self._stamps.get(path) == stamp:
                    continue
                self._stamps[path] = stamp
                try:
                    flow = load_flow(path)
                    error = self._conflict(path, flow)
                except FlowError as e:
                    error = e
                if error is not None:
                    self._errors[path] = error
                    failed.append((path, error))
                    _LOG.warning("IVR flow %s rejected, keeping the previous version: %s", path, error)
                    continue
                old = self._flows.get(path)
                self._errors.pop(path, None)
                if old == flow:
                    continue
                self._flows[path] = flow
                loaded.append(path)
                _LOG.info("IVR flow %s loaded, version %s", path, flow.version)
            self._by_number = {n: f for f in self._flows.values() for n in f.numbers}
            if loaded or removed:  # a number may have been freed: retry the rejected files next pass
                for path in self._errors:
                    self._stamps.pop(path, None)
        return ReloadResult(tuple(loaded), tuple(removed), tuple(failed))


class FlowWatcher:
    """Polls a registry from a thread; the owner calls :meth:`start` and :meth:`stop` (or uses ``with``)."""

    def __init__(
        self,
        registry: FlowRegistry,
        interval: float = 2.0,
        on_reload: Callable[[ReloadResult], None] | None = None,
    ) -> None:
        if interval <= 0:
            raise ValueError(f"interval must be > 0, got {interval}")
        self.registry = registry
        self.interval = interval
        self.on_reload = on_reload
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("FlowWatcher already started")
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="ivr-flow-watcher", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def __enter__(self) -> FlowWatcher:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            _poll_once(self.registry, self.on_reload)


def _poll_once(registry: FlowRegistry, on_reload: Callable[[ReloadResult], None] | None) -> None:
    try:
        result = registry.reload_if_changed()
        if on_reload is not None and result.changed:
            on_reload(result)
    except Exception:  # a watcher must outlive one bad pass
        _LOG.exception("IVR flow watcher: reload failed")


async def watch_flows(
    registry: FlowRegistry, interval: float = 2.0, on_reload: Callable[[ReloadResult], None] | None = None
) -> None:
    """Poll ``registry`` until cancelled (the task's owner cancels it); file I/O runs in a thread."""
    while True:
        await asyncio.sleep(interval)
        await asyncio.to_thread(_poll_once, registry, on_reload)
