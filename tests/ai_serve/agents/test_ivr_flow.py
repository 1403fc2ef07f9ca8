"""IVR flow files: the schema, errors reported at their line and column, and hot reload.

Each error test writes a flow with one mistake and checks that the problem points at the line of
that mistake (found by searching the text, so the tests survive edits of the base flow).
"""

from __future__ import annotations

import asyncio
import os
import threading
from datetime import date
from pathlib import Path

import pytest
from pydantic import ValidationError

from ai_serve.agents.dialog import DialogState
from ai_serve.agents.ivr_flow import (
    CallToolAction,
    CollectSlotsAction,
    FlowError,
    FlowProblem,
    FlowRegistry,
    FlowWatcher,
    IvrFlow,
    ReloadResult,
    TransferAction,
    load_flow,
    parse_flow,
    render_template,
    render_value,
    template_fields,
    watch_flows,
)

ROOT = Path(__file__).resolve().parents[3]
EXAMPLE = ROOT / "config" / "ivr" / "example.yaml"

BASE = """\
numbers: [2100, "2101"]
language: en
greeting: {en: "Welcome to Acme. How can I help?"}
intents:
  - name: book
    description: Book a service visit.
    examples: [I want to book a visit, schedule a technician]
    slots:
      - name: day
        type: date
        prompt: {en: "Which day suits you?"}
      - name: size
        type: choice
        required: false
        prompt: {en: "Small or large?"}
        choices: [small, {value: large, synonyms: [big]}]
    action: ask_size
  - name: agent
    description: Talk to a person.
    examples: [agent please]
    action: to_desk
  - name: info
    description: Opening hours.
    examples: [when are you open]
    action: hours
actions:
  - name: ask_size
    type: collect_slots
    slots: [size]
    then: book_it
  - name: book_it
    type: call_tool
    tool: visits.book
    arguments: {phone: "{caller}", day: "{day}", note: "size {size}"}
    say:
      success: {en: "Booked for {day}, reference {result.ref}."}
      failure: {en: "Sorry, {caller}, that did not work."}
    on_failure: to_desk
  - name: to_desk
    type: transfer
    target_type: queue
    target: front-desk
    say: {en: "Connecting you."}
  - name: hours
    type: answer_from_knowledge
    knowledge: {business_unit: acme}
    on_no_answer: notice
  - name: notice
    type: play_message
    text: {en: "We are open nine to five."}
    then: bye
  - name: bye
    type: hangup
    say: {en: "Goodbye."}
fallback:
  reprompt: {en: "Sorry?"}
  max_retries: 1
  action: to_desk
dtmf:
  1: book
  "0": agent
"""


def line_of(text: str, snippet: str, nth: int = 1) -> int:
    """The 1-based line of the ``nth`` line containing ``snippet``."""
    hits = [i + 1 for i, line in enumerate(text.splitlines()) if snippet in line]
    assert len(hits) >= nth, f"{snippet!r} not in the text"
    return hits[nth - 1]


def problems(text: str) -> list[FlowProblem]:
    with pytest.raises(FlowError) as info:
        parse_flow(text, "flow.yaml")
    return info.value.problems


def only_problem(text: str) -> FlowProblem:
    found = problems(text)
    assert len(found) == 1, [str(p) for p in found]
    return found[0]


def edit(old: str, new: str, text: str = BASE) -> str:
    assert old in text, old
    return text.replace(old, new, 1)


# ----------------------------------------------------------------------------------------- valid


def test_valid_flow_loads_with_types_and_references() -> None:
    flow = parse_flow(BASE)
    assert flow.numbers == ["2100", "2101"]  # YAML ints read as strings
    assert flow.languages == ("en",)
    assert flow.dtmf == {"1": "book", "0": "agent"}
    assert [i.name for i in flow.intents] == ["book", "agent", "info"]
    book = flow.intent("book")
    size = book.slot("size")
    assert size is not None and size.choices is not None
    assert [(c.value, c.synonyms) for c in size.choices] == [("small", []), ("large", ["big"])]
    assert isinstance(flow.action("ask_size"), CollectSlotsAction)
    tool = flow.action("book_it")
    assert isinstance(tool, CallToolAction) and tool.tool == "visits.book" and tool.on_failure == "to_desk"
    with pytest.raises(KeyError):
        flow.action("nope")


def test_version_is_the_content_hash_unless_given() -> None:
    first = parse_flow(BASE)
    assert first.version is not None and first.version.startswith("sha256:")
    assert parse_flow(BASE).version == first.version
    assert parse_flow(BASE.replace("Welcome to Acme", "Welcome to ACME")).version != first.version
    assert parse_flow("version: 7\n" + BASE).version == "7"
    assert parse_flow("version: 2025-06-02\n" + BASE).version == "2025-06-02"  # a YAML date


def test_flow_is_immutable() -> None:
    flow = parse_flow(BASE)
    with pytest.raises(ValidationError):
        flow.language = "ko"  # type: ignore[misc]


def test_example_file_validates() -> None:
    flow = load_flow(EXAMPLE)
    assert "1200" in flow.numbers and flow.languages == ("en", "ko")
    names = {i.name for i in flow.intents}
    assert {"check_bill", "report_outage", "change_plan", "talk_to_agent", "opening_hours"} <= names
    bill = flow.action(flow.intent("check_bill").action)
    assert isinstance(bill, CallToolAction) and bill.tool == "billing.lookup"
    assert bill.arguments == {"phone": "{caller}"} and not flow.intent("check_bill").slots
    agent = flow.action(flow.intent("talk_to_agent").action)
    assert isinstance(agent, TransferAction) and (agent.target_type, agent.target) == ("extension", "1201")
    hours = flow.action(flow.intent("opening_hours").action)
    assert hours.type == "answer_from_knowledge" and hours.knowledge.business_unit == "skyline-mobile"
    for intent in flow.intents:
        assert any(ex.isascii() for ex in intent.examples) and not all(ex.isascii() for ex in intent.examples)
    assert set(flow.dtmf.values()) <= names


def test_templates() -> None:
    assert template_fields("Hi {caller}, ref {result.ref} {{literal}}") == ["caller", "result.ref"]
    with pytest.raises(ValueError, match="bad placeholder"):
        template_fields("{caller!r}")
    values = {"caller": "1001", "day": date(2025, 6, 6), "result": {"ref": "A7"}, "size": None}
    assert render_template("{caller} on {day}: {result.ref}{size}", values) == "1001 on 2025-06-06: A7"
    assert render_value("{day}", values) == date(2025, 6, 6)  # a lone placeholder keeps the type
    assert render_value("size {size}", values) == "size "
    with pytest.raises(KeyError, match=r"result\.missing"):
        render_template("{result.missing}", values)


# ---------------------------------------------------------------------------------------- errors


def test_yaml_syntax_error_has_its_line() -> None:
    text = edit('greeting: {en: "Welcome to Acme. How can I help?"}', 'greeting: {en: "Welcome", ko: [}')
    problem = only_problem(text)
    assert problem.line == line_of(text, "greeting:") and problem.path == "(yaml)"
    assert str(problem).startswith(f"flow.yaml:{problem.line}:{problem.column}: (yaml): ")


def test_empty_and_non_mapping_files() -> None:
    assert "empty" in only_problem("# nothing\n").message
    assert "a list" in only_problem("- a\n- b\n").message


def test_unknown_key_points_at_the_key() -> None:
    text = edit("        required: false\n", "        required: false\n        colour: red\n")
    problem = only_problem(text)
    assert (problem.line, problem.column) == (line_of(text, "colour: red"), 9)
    assert problem.path == "intents[0].slots[1].colour" and "Extra inputs" in problem.message


def test_wrong_value_type_points_at_the_value() -> None:
    text = edit("max_retries: 1", "max_retries: two")
    problem = only_problem(text)
    assert (problem.line, problem.column) == (line_of(text, "max_retries: two"), 16)
    assert problem.path == "fallback.max_retries"


def test_bad_slot_type_and_bad_action_type() -> None:
    text = edit("        type: date\n", "        type: weekday\n")
    text = edit("    type: hangup\n", "    type: hang_up\n", text)
    first, second = problems(text)
    assert (first.line, first.path) == (line_of(text, "type: weekday"), "intents[0].slots[0].type")
    assert (second.line, second.path) == (line_of(text, "type: hang_up"), "actions[5].type")
    assert "does not match any of the expected tags" in second.message


def test_error_inside_a_tagged_action_drops_the_tag_from_the_path() -> None:
    text = edit("    target_type: queue\n", "    target_type: desk\n")
    problem = only_problem(text)
    assert (problem.line, problem.path) == (line_of(text, "target_type: desk"), "actions[2].target_type")


def test_missing_field_points_at_its_mapping() -> None:
    text = edit("    examples: [agent please]\n", "")
    problem = only_problem(text)
    assert problem.path == "intents[1].examples" and problem.message == "Field required"
    assert problem.line == line_of(text, "- name: agent")


def test_duplicate_yaml_key() -> None:
    text = edit("  max_retries: 1\n", "  max_retries: 1\n  max_retries: 3\n")
    problem = only_problem(text)
    assert problem.line == line_of(text, "max_retries: 3") and "duplicate key" in problem.message


def test_unknown_action_reference() -> None:
    text = edit("    action: to_desk\n", "    action: to_front_desk\n")
    problem = only_problem(text)
    assert problem.line == line_of(text, "action: to_front_desk") and problem.path == "intents[1].action"
    assert "unknown action 'to_front_desk'" in problem.message and "to_desk" in problem.message


def test_unknown_then_and_fallback_references() -> None:
    text = edit("    then: bye\n", "    then: byebye\n")
    text = edit("  max_retries: 1\n  action: to_desk\n", "  max_retries: 1\n  action: nowhere\n", text)
    found = problems(text)
    assert [(p.line, p.path) for p in found] == [
        (line_of(text, "then: byebye"), "actions[4].then"),
        (line_of(text, "action: nowhere"), "fallback.action"),
    ]


def test_duplicate_names() -> None:
    text = edit("  - name: info\n", "  - name: agent\n")
    text = edit("  - name: notice\n", "  - name: bye\n", text)
    intent, reference, action = problems(text)
    assert (intent.line, intent.path) == (line_of(text, "- name: agent", 2), "intents[2].name")
    assert "duplicate intent name 'agent'" in intent.message
    assert reference.path == "actions[3].on_no_answer" and "unknown action 'notice'" in reference.message
    assert (action.line, action.path) == (line_of(text, "- name: bye", 2), "actions[5].name")
    assert "duplicate action name 'bye' (first at index 4)" in action.message


def test_template_must_reference_known_slots() -> None:
    text = edit('success: {en: "Booked for {day}', 'success: {en: "Booked for {dayz}')
    problem = only_problem(text)
    assert (problem.line, problem.path) == (line_of(text, "{dayz}"), "actions[1].say.success.en")
    assert "intent 'book' has no such slot" in problem.message and "day" in problem.message


def test_result_fields_only_in_a_tool_success_message() -> None:
    text = edit('failure: {en: "Sorry, {caller}', 'failure: {en: "Sorry, {result.ref}')
    problem = only_problem(text)
    assert problem.path == "actions[1].say.failure.en" and "say.success" in problem.message


def test_slot_template_on_a_path_the_fallback_reaches() -> None:
    text = edit('say: {en: "Connecting you."}', 'say: {en: "Connecting you about {day}."}')
    found = problems(text)
    assert all(p.line == line_of(text, "Connecting you about") for p in found)
    # to_desk is reached by "agent" (no slots), by book_it's on_failure (has day) and by the fallback
    assert any("intent 'agent' has no such slot" in p.message for p in found)
    assert any("no intent's slots are known here" in p.message for p in found)
    assert not any("'book'" in p.message for p in found)


def test_tool_argument_templates_are_checked() -> None:
    text = edit('day: "{day}", note', 'day: "{when}", note')
    problem = only_problem(text)
    assert problem.path == "actions[1].arguments.day" and problem.line == line_of(text, '"{when}"')


def test_collect_slots_names_slots_of_the_intent() -> None:
    text = edit("    slots: [size]\n", "    slots: [colour]\n")
    problem = only_problem(text)
    assert (problem.line, problem.path) == (line_of(text, "slots: [colour]"), "actions[0].slots[0]")
    assert "intent 'book' has no slot 'colour'" in problem.message


def test_choice_slot_needs_choices() -> None:
    text = edit("        choices: [small, {value: large, synonyms: [big]}]\n", "")
    problem = only_problem(text)
    assert problem.path == "intents[0].slots[1].type" and "choices" in problem.message


def test_dtmf_errors() -> None:
    text = edit('  "0": agent\n', '  "0": agnet\n  x1: info\n')
    found = problems(text)  # the key pattern fails first: pydantic errors come before cross-checks
    assert [(p.line, p.path) for p in found] == [(line_of(text, "x1: info"), "dtmf.x1")]
    text = edit('  "0": agent\n', '  "0": agnet\n')
    problem = only_problem(text)
    assert (problem.line, problem.path) == (line_of(text, "agnet"), "dtmf.0")
    assert "unknown intent 'agnet'" in problem.message


def test_action_loop_is_an_error() -> None:
    text = edit("    then: bye\n", "    then: notice\n")
    problem = only_problem(text)
    assert problem.line == line_of(text, "- name: notice") and "notice -> notice" in problem.message


def test_every_language_needs_its_text() -> None:
    text = edit("language: en", "language: auto")
    found = problems(text)
    # greeting, 2 slot prompts, tool success + failure, transfer, message, hangup, reprompt
    assert len(found) == 9 and all("missing the 'ko' text" in p.message for p in found)
    assert found[0].line == line_of(text, "greeting:")
    assert [p.line for p in found] == sorted(p.line for p in found)


def test_all_problems_are_reported_at_once() -> None:
    text = edit('numbers: [2100, "2101"]', "numbers: [2100, 2100]")
    text = edit("    action: hours\n", "    action: hour\n", text)
    text = edit("  1: book\n", "  1: booking\n", text)
    found = problems(text)
    assert [p.path for p in found] == ["numbers[1]", "intents[2].action", "dtmf.1"]
    message = str(FlowError(found))
    for p in found:
        assert f"flow.yaml:{p.line}:{p.column}: {p.path}: " in message


def test_model_validate_also_cross_checks() -> None:
    import yaml

    data = yaml.safe_load(edit("    action: hours\n", "    action: hour\n"))
    with pytest.raises(ValidationError, match=r"intents\[2\]\.action: unknown action 'hour'"):
        IvrFlow.model_validate(data)


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(FlowError, match="cannot read"):
        load_flow(tmp_path / "missing.yaml")


# -------------------------------------------------------------------------------------- registry


def write(path: Path, text: str) -> None:
    """Write and move the mtime forward, so that a same-size edit within one tick is still seen."""
    old = path.stat().st_mtime_ns if path.exists() else 0
    path.write_text(text, encoding="utf-8")
    mtime = max(path.stat().st_mtime_ns, old + 1_000_000)
    os.utime(path, ns=(mtime, mtime))


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    write(tmp_path / "acme.yaml", "version: v1\n" + BASE)
    write(tmp_path / "example.yaml", EXAMPLE.read_text(encoding="utf-8"))
    (tmp_path / "notes.txt").write_text("not a flow")
    return tmp_path


def test_registry_indexes_every_number(folder: Path) -> None:
    registry = FlowRegistry(folder)
    assert registry.errors == {}
    acme = registry.flow_for("2100")
    assert acme is not None and acme is registry.flow_for("2101") and acme.version == "v1"
    assert registry.flow_for("1200") is not None and registry.flow_for("1200") is not acme
    assert registry.flow_for("9999") is None
    assert sorted(p.name for p in registry.flows) == ["acme.yaml", "example.yaml"]
    assert registry.reload_if_changed() == ReloadResult()  # nothing changed


def test_missing_folder() -> None:
    with pytest.raises(FileNotFoundError):
        FlowRegistry("/nonexistent/ivr")


def test_reload_picks_up_an_edit_and_calls_keep_their_version(folder: Path) -> None:
    registry = FlowRegistry(folder)
    old = registry.flow_for("2100")
    assert old is not None
    call = DialogState(old, call={"caller": "1001"})
    step = call.start_intent("book")
    assert step.kind == "ask_slot" and step.text == "Which day suits you?"

    write(folder / "acme.yaml", "version: v2\n" + edit("Which day suits you?", "What day works for you?"))
    result = registry.reload_if_changed()
    assert result.loaded == (folder / "acme.yaml",) and not result.failed
    new = registry.flow_for("2100")
    assert new is not None and new.version == "v2"
    assert DialogState(new).start_intent("book").text == "What day works for you?"
    # the call in progress goes on with the flow it started with
    assert call.flow is old and call.version == "v1"
    step = call.on_utterance(
        "Friday", lambda _: pytest.fail("a slot answer is not classified"), date(2025, 6, 4)
    )
    assert step.kind == "ask_slot" and step.slot == "size" and step.text == "Small or large?"


def test_bad_edit_keeps_the_previous_version(folder: Path) -> None:
    registry = FlowRegistry(folder)
    good = registry.flow_for("2100")
    bad = "version: v3\n" + edit("    action: hours\n", "    action: hour\n")
    write(folder / "acme.yaml", bad)
    result = registry.reload_if_changed()
    assert not result.loaded and [p for p, _ in result.failed] == [folder / "acme.yaml"]
    assert registry.flow_for("2100") is good
    error = registry.errors[folder / "acme.yaml"]
    assert error.problems[0].line == line_of(bad, "action: hour") and error.problems[0].file.endswith(
        "acme.yaml"
    )
    assert registry.reload_if_changed() == ReloadResult()  # the bad file is not re-reported every pass

    write(folder / "acme.yaml", "version: v4\n" + BASE)
    result = registry.reload_if_changed()
    assert result.loaded == (folder / "acme.yaml",)
    assert registry.errors == {} and registry.flow_for("2100").version == "v4"  # type: ignore[union-attr]


def test_a_new_bad_file_is_recorded_and_serves_nothing(folder: Path) -> None:
    registry = FlowRegistry(folder)
    write(folder / "broken.yml", "numbers: [3000]\nlanguage: fr\n")
    result = registry.reload_if_changed()
    assert [p.name for p, _ in result.failed] == ["broken.yml"]
    assert registry.flow_for("3000") is None and folder / "broken.yml" in registry.errors


def test_a_number_claimed_twice_is_rejected(folder: Path) -> None:
    registry = FlowRegistry(folder)
    write(folder / "zzz.yaml", edit('numbers: [2100, "2101"]', "numbers: [2101, 2200]"))
    result = registry.reload_if_changed()
    ((path, error),) = result.failed
    assert path.name == "zzz.yaml" and "2101 is served by acme.yaml" in str(error)
    assert registry.flow_for("2200") is None and registry.flow_for("2101") is registry.flow_for("2100")
    (folder / "acme.yaml").unlink()  # frees 2101: zzz.yaml is tried again on the next pass
    assert registry.reload_if_changed().removed == (folder / "acme.yaml",)
    assert registry.reload_if_changed().loaded == (folder / "zzz.yaml",)
    assert registry.flow_for("2101") is registry.flow_for("2200") is not None and registry.errors == {}


def test_deleting_a_file_removes_its_numbers(folder: Path) -> None:
    registry = FlowRegistry(folder)
    (folder / "acme.yaml").unlink()
    result = registry.reload_if_changed()
    assert result.removed == (folder / "acme.yaml",)
    assert registry.flow_for("2100") is None and registry.flow_for("1200") is not None


def test_watcher_thread_reloads(folder: Path) -> None:
    registry = FlowRegistry(folder)
    seen: list[ReloadResult] = []
    changed = threading.Event()

    def on_reload(result: ReloadResult) -> None:
        seen.append(result)
        changed.set()

    with FlowWatcher(registry, interval=0.02, on_reload=on_reload) as watcher:
        with pytest.raises(RuntimeError):
            watcher.start()
        write(folder / "acme.yaml", "version: w2\n" + BASE)
        assert changed.wait(5.0)
    assert registry.flow_for("2100").version == "w2"  # type: ignore[union-attr]
    assert seen[0].loaded == (folder / "acme.yaml",)
    assert watcher._thread is None


async def test_async_watcher_reloads_until_cancelled(folder: Path) -> None:
    registry = FlowRegistry(folder)
    changed = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_reload(_: ReloadResult) -> None:
        loop.call_soon_threadsafe(changed.set)

    task = asyncio.create_task(watch_flows(registry, 0.02, on_reload))
    write(folder / "acme.yaml", "version: a2\n" + BASE)
    await asyncio.wait_for(changed.wait(), 5.0)
    assert registry.flow_for("2100").version == "a2"  # type: ignore[union-attr]
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
