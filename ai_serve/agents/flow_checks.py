"""Cross-checks of an IVR flow that pydantic cannot do field by field: references between intents and
actions, unique names, one text per language, placeholders that exist where the text is said, and
actions that do not loop. Each problem is ``(path, message)``; the loader turns paths into lines."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .flow_schema import (
    CALL_FIELDS,
    CallToolAction,
    CollectSlotsAction,
    HangupAction,
    Intent,
    IvrFlow,
    Language,
    PlayMessageAction,
    TransferAction,
    next_actions,
)
from .templates import template_fields
from .yaml_source import Loc

__all__ = ["cross_check", "placeholders", "reaching_intents"]


def reaching_intents(flow: IvrFlow) -> dict[str, list[Intent | None]]:
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


def placeholders(problems: list[tuple[Loc, str]], loc: Loc, text: str) -> list[str]:
    """The placeholder names of ``text``; none when it is malformed (a problem at ``loc``)."""
    try:
        return template_fields(text)
    except ValueError as e:
        problems.append((loc, str(e)))
        return []


def _check_template(
    problems: list[tuple[Loc, str]], loc: Loc, text: str, contexts: list[Intent | None], *, result: bool
) -> None:
    for field in placeholders(problems, loc, text):
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
    reach = reaching_intents(flow)
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
