"""ToolRegistry against a real aiohttp server on 127.0.0.1 (auth checked by the server, no mocks)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web

from ai_serve.agents.tools import CallerContext, ToolConfigError, ToolRegistry, spoken_failure
from tests.ai_serve.agents.session_parts import LocalServer, closed_port

pytestmark = pytest.mark.timeout(30)

TOKEN = "s3cret-token"
API_KEY = "crm-key-1"
REPO = Path(__file__).resolve().parents[3]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
IVR = CallerContext(call_id="call-1", agent="ivr", intent="check_bill", language="en")
IVR_KO = CallerContext(call_id="call-1", agent="ivr", intent="check_bill", language="ko")


class BusinessSystem(LocalServer):
    """A small billing/CRM/orders HTTP service that checks credentials like the real ones would."""

    def __init__(self) -> None:
        super().__init__()
        self.hits: dict[str, int] = {}
        self.headers: list[dict[str, str]] = []
        self.bodies: list[Any] = []
        self.queries: list[dict[str, str]] = []
        self.release = asyncio.Event()

    def routes(self, r: web.UrlDispatcher) -> None:
        r.add_get("/accounts/{phone}/balance", self._balance)
        r.add_get("/slow", self._slow)
        r.add_get("/boom", self._fixed("boom", 500))
        r.add_get("/gone", self._fixed("gone", 404))
        r.add_get("/notjson", self._fixed("notjson", 200, "<html>oops</html>"))
        r.add_get("/flaky", self._flaky)
        r.add_get("/echo/{key}", self._echo)
        r.add_post("/api/v2/tickets", self._ticket)
        r.add_post("/flaky-post", self._fixed("flaky-post", 503))
        r.add_get("/orders/{order_id}", self._order)

    async def stop(self) -> None:
        self.release.set()
        await super().stop()

    def _fixed(self, name: str, status: int, text: str | None = None) -> Handler:
        async def handle(_: web.Request) -> web.StreamResponse:
            return self._count(name, web.Response(status=status, text=text))

        return handle

    def _count(self, name: str, response: web.StreamResponse) -> web.StreamResponse:
        self.hits[name] = self.hits.get(name, 0) + 1
        return response

    async def _balance(self, request: web.Request) -> web.StreamResponse:
        self.headers.append(dict(request.headers))
        if request.headers.get("Authorization") != f"Bearer {TOKEN}":
            return self._count("balance", web.json_response({"error": "unauthorized"}, status=401))
        body = {
            "phone": request.match_info["phone"],
            "balance": 39000,
            "currency": "KRW",
            "due_date": "2026-12-10",
            "last_payment": {"amount": 41000, "date": "2026-11-10"},
            "internal_score": 7,
        }
        return self._count("balance", web.json_response(body))

    async def _slow(self, _: web.Request) -> web.StreamResponse:
        self.hits["slow"] = self.hits.get("slow", 0) + 1
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.release.wait(), 3.0)
        return web.json_response({"late": True})

    async def _flaky(self, _: web.Request) -> web.StreamResponse:
        n = self.hits.get("flaky", 0)
        if n == 0:
            return self._count("flaky", web.Response(status=503))
        return self._count("flaky", web.json_response({"status": "shipped"}))

    async def _echo(self, request: web.Request) -> web.StreamResponse:
        self.queries.append(dict(request.query))
        return self._count("echo", web.json_response({"key": request.match_info["key"]}))

    async def _ticket(self, request: web.Request) -> web.StreamResponse:
        if request.headers.get("X-Api-Key") != API_KEY:
            return self._count("tickets", web.Response(status=403))
        self.bodies.append(await request.json())
        return self._count("tickets", web.json_response({"id": "T-1001", "status": "open"}, status=201))

    async def _order(self, request: web.Request) -> web.StreamResponse:
        expected = "Basic " + base64.b64encode(b"ivr:pa:ss").decode()
        if request.headers.get("Authorization") != expected:
            return self._count("orders", web.Response(status=401))
        return self._count(
            "orders",
            web.json_response(
                {"status": "in transit", "expected_delivery": "2026-11-27", "carrier": "CJ", "id": 42}
            ),
        )


@pytest.fixture
async def system() -> AsyncIterator[BusinessSystem]:
    s = BusinessSystem()
    await s.start()
    yield s
    await s.stop()


def billing_tool(**overrides: Any) -> dict[str, Any]:
    tool: dict[str, Any] = {
        "name": "billing.lookup",
        "description": "Balance of an account by phone number.",
        "method": "GET",
        "url": "${BILLING_URL}/accounts/{phone}/balance",
        "parameters": {
            "type": "object",
            "properties": {"phone": {"type": "string", "pattern": "^\\+?[0-9]{8,15}$"}},
            "required": ["phone"],
            "additionalProperties": False,
        },
        "auth": {"bearer_env": "BILLING_TOKEN"},
        "timeout_s": 2,
        "allowed": {"agents": ["billing"], "intents": ["check_bill"]},
        "result": ["/balance", "/currency", "/due_date", "/last_payment/amount"],
        "system": {"en": "the billing system", "ko": "요금 시스템"},
    }
    tool.update(overrides)
    return tool


def simple_tool(name: str, path: str, **overrides: Any) -> dict[str, Any]:
    tool: dict[str, Any] = {
        "name": name,
        "description": f"test tool {name}",
        "url": "${BILLING_URL}" + path,
        "allowed": {"agents": ["*"]},
        "system": {"en": "the billing system", "ko": "요금 시스템"},
        "timeout_s": 2,
    }
    tool.update(overrides)
    return tool


def write_tools(tmp_path: Path, tools: list[dict[str, Any]]) -> Path:
    path = tmp_path / "tools.yaml"
    path.write_text(yaml.safe_dump({"tools": tools}, allow_unicode=True), encoding="utf-8")
    return path


def env(base: str) -> dict[str, str]:
    return {"BILLING_URL": base + "/", "BILLING_TOKEN": TOKEN, "CRM_API_KEY": API_KEY}


@pytest.fixture
async def registry(system: BusinessSystem, tmp_path: Path) -> AsyncIterator[ToolRegistry]:
    tools = [
        billing_tool(),
        simple_tool("test.slow", "/slow", timeout_s=0.2),
        simple_tool("test.boom", "/boom"),
        simple_tool("test.gone", "/gone"),
        simple_tool("test.notjson", "/notjson"),
        simple_tool("test.flaky", "/flaky", retries=1, retry_backoff_s=0),
        simple_tool("test.missing_field", "/flaky", result=["/nope"]),
        simple_tool(
            "test.echo",
            "/echo/{key}",
            parameters={
                "type": "object",
                "properties": {"key": {"type": "string"}, "n": {"type": "integer"}, "f": {"type": "boolean"}},
                "required": ["key"],
            },
        ),
        simple_tool("test.post_flaky", "/flaky-post", method="POST"),
    ]
    async with ToolRegistry.from_yaml(write_tools(tmp_path, tools), environ=env(system.base)) as reg:
        yield reg


# ------------------------------------------------------------------------------------- success


async def test_success_sends_bearer_and_returns_declared_fields(
    registry: ToolRegistry, system: BusinessSystem
) -> None:
    result = await registry.call("billing.lookup", {"phone": "01012345678"}, who=IVR)
    assert result.ok and result.error_kind is None and result.spoken is None
    assert result.status == 200 and result.attempts == 1
    assert result.data == {"balance": 39000, "currency": "KRW", "due_date": "2026-12-10", "amount": 41000}
    assert system.headers[-1]["Authorization"] == f"Bearer {TOKEN}"
    assert system.headers[-1]["X-Call-Id"] == "call-1"
    assert 0 < result.latency_ms < 2000
    assert json.loads(result.for_llm()) == {"ok": True, "data": result.data}


async def test_server_refuses_a_wrong_token(system: BusinessSystem, tmp_path: Path) -> None:
    environ = env(system.base) | {"BILLING_TOKEN": "wrong"}
    async with ToolRegistry.from_yaml(write_tools(tmp_path, [billing_tool()]), environ=environ) as reg:
        result = await reg.call("billing.lookup", {"phone": "01012345678"}, who=IVR)
    assert (result.ok, result.error_kind, result.status) == (False, "http_error", 401)


async def test_llm_function_name_and_json_string_arguments(registry: ToolRegistry) -> None:
    result = await registry.call("billing__lookup", '{"phone": "+821012345678"}', who=IVR)
    assert result.ok and result.tool == "billing.lookup"


async def test_path_parameters_are_percent_encoded_rest_goes_to_query(
    registry: ToolRegistry, system: BusinessSystem
) -> None:
    result = await registry.call("test.echo", {"key": "a/../b c", "n": 3, "f": True}, who=IVR)
    assert result.ok and result.data == {"key": "a/../b c"}
    assert system.queries[-1] == {"n": "3", "f": "true"}


async def test_post_sends_json_body_with_header_auth(system: BusinessSystem) -> None:
    environ = env(system.base) | {
        "CRM_URL": system.base,
        "ORDERS_URL": system.base,
        "ORDERS_USER": "ivr",
        "ORDERS_PASSWORD": "pa:ss",
    }
    async with ToolRegistry.from_yaml(REPO / "config" / "tools.yaml", environ=environ) as reg:
        args = {"caller_phone": "01012345678", "category": "billing", "summary": "Charged twice in November."}
        who = CallerContext(call_id="c2", agent="attendant", intent="complaint")
        ticket = await reg.call("crm.create_ticket", args, who=who)
        order = await reg.call("orders.status", {"order_id": "ORD-20261101-0042"}, who=who)
    assert ticket.ok and ticket.status == 201 and ticket.data == {"ticket_id": "T-1001", "status": "open"}
    assert system.bodies == [args]
    assert order.ok and order.data == {
        "status": "in transit",
        "expected_delivery": "2026-11-27",
        "carrier": "CJ",
    }


# ------------------------------------------------------------------------------------- failures


@pytest.mark.parametrize(
    "arguments",
    [
        {"phone": "call me"},
        {},
        {"phone": "01012345678", "extra": 1},
        {"phone": 1012345678},
        "{not json",
        "[1]",
    ],
)
async def test_bad_arguments_never_reach_the_system(
    registry: ToolRegistry, system: BusinessSystem, arguments: Any
) -> None:
    result = await registry.call("billing.lookup", arguments, who=IVR)
    assert (result.ok, result.error_kind, result.status) == (False, "bad_arguments", None)
    assert result.detail and result.spoken
    assert json.loads(result.for_llm())["detail"] == result.detail
    assert system.hits.get("balance", 0) == 0


async def test_timeout(registry: ToolRegistry, system: BusinessSystem) -> None:
    result = await registry.call("test.slow", {}, who=IVR)
    assert (result.ok, result.error_kind, result.status) == (False, "timeout", None)
    assert 150 <= result.latency_ms < 1500
    assert system.hits["slow"] == 1
    assert result.spoken == "The billing system is taking too long to answer right now."


async def test_unreachable_spoken_in_english_and_korean(tmp_path: Path) -> None:
    environ = env(f"http://127.0.0.1:{closed_port()}")
    async with ToolRegistry.from_yaml(write_tools(tmp_path, [billing_tool()]), environ=environ) as reg:
        en = await reg.call("billing.lookup", {"phone": "01012345678"}, who=IVR)
        ko = await reg.call("billing.lookup", {"phone": "01012345678"}, who=IVR_KO)
    assert (en.error_kind, ko.error_kind) == ("unreachable", "unreachable")
    assert en.spoken == "I can't reach the billing system right now."
    assert ko.spoken == "지금은 요금 시스템에 연결할 수 없습니다."
    assert json.loads(ko.for_llm())["say"] == ko.spoken


async def test_http_500_and_404(registry: ToolRegistry) -> None:
    boom = await registry.call("test.boom", {}, who=IVR)
    assert (boom.error_kind, boom.status, boom.attempts) == ("http_error", 500, 1)
    assert boom.spoken == "The billing system returned an error, so I couldn't complete that."
    gone = await registry.call("test.gone", {}, who=IVR_KO)
    assert (gone.error_kind, gone.status) == ("http_error", 404)
    assert gone.spoken == "요금 시스템에서 해당 정보를 찾을 수 없습니다."


async def test_bad_json_and_missing_result_field(registry: ToolRegistry, system: BusinessSystem) -> None:
    bad = await registry.call("test.notjson", {}, who=IVR)
    assert (bad.error_kind, bad.status) == ("bad_response", 200)
    system.hits["flaky"] = 1  # the /flaky route answers 200 from now on
    missing = await registry.call("test.missing_field", {}, who=IVR)
    assert missing.error_kind == "bad_response" and "/nope" in (missing.detail or "")


async def test_get_is_retried_once_then_succeeds(registry: ToolRegistry, system: BusinessSystem) -> None:
    result = await registry.call("test.flaky", {}, who=IVR)
    assert result.ok and result.data == {"status": "shipped"}
    assert result.attempts == 2 and system.hits["flaky"] == 2


async def test_post_is_not_retried(registry: ToolRegistry, system: BusinessSystem) -> None:
    result = await registry.call("test.post_flaky", {}, who=IVR)
    assert (result.error_kind, result.status, result.attempts) == ("http_error", 503, 1)
    assert system.hits["flaky-post"] == 1


async def test_permissions(registry: ToolRegistry, system: BusinessSystem) -> None:
    stranger = CallerContext(call_id="c3", agent="sales", intent="buy_phone")
    denied = await registry.call("billing.lookup", {"phone": "01012345678"}, who=stranger)
    assert (denied.ok, denied.error_kind) == (False, "not_allowed")
    assert denied.spoken == "I'm not able to use the billing system for this request."
    unknown = await registry.call("payroll.dump", {}, who=IVR)
    assert (
        unknown.error_kind == "not_allowed"
        and unknown.spoken == "I'm not able to use that system for this request."
    )
    assert system.hits.get("balance", 0) == 0
    by_agent = CallerContext(call_id="c4", agent="billing")
    assert (await registry.call("billing.lookup", {"phone": "01012345678"}, who=by_agent)).ok
    assert "billing.lookup" not in [t.name for t in registry.for_agent("sales")]
    assert "billing.lookup" in [t.name for t in registry.for_agent("sales", intent="check_bill")]
    assert "billing.lookup" in [t.name for t in registry.for_agent("billing")]


async def test_openai_tools_format(registry: ToolRegistry) -> None:
    tools = registry.openai_tools("billing")
    billing = next(t for t in tools if t["function"]["name"] == "billing__lookup")
    assert billing["type"] == "function"
    assert billing["function"]["parameters"]["required"] == ["phone"]
    assert billing["function"]["description"]
    assert all("." not in t["function"]["name"] for t in tools)
    assert [t["function"]["name"] for t in registry.openai_tools("nobody")] == [
        n.replace(".", "__") for n in registry.names if n.startswith("test.")
    ]


async def test_closed_registry_fails_as_unreachable(registry: ToolRegistry) -> None:
    await registry.aclose()
    result = await registry.call("billing.lookup", {"phone": "01012345678"}, who=IVR)
    assert result.error_kind == "unreachable"


def test_every_failure_kind_has_a_sentence_in_both_languages() -> None:
    kinds = ("not_allowed", "bad_arguments", "timeout", "unreachable", "http_error", "bad_response")
    for lang in ("en", "ko", "ko-KR", "fr"):
        sentences = {spoken_failure(k, None, lang) for k in kinds}  # type: ignore[arg-type]
        assert len(sentences) == len(kinds)
    assert spoken_failure("unreachable", None, "fr") == "I can't reach that system right now."


# --------------------------------------------------------------------------------- config errors


def config_error(tmp_path: Path, tools: list[dict[str, Any]], environ: dict[str, str] | None = None) -> str:
    path = write_tools(tmp_path, tools)
    with pytest.raises(ToolConfigError) as info:
        ToolRegistry.from_yaml(path, environ=environ if environ is not None else env("http://h"))
    return str(info.value)


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"timeout": 3}, "tools[0] (billing.lookup).timeout: Extra inputs are not permitted"),
        ({"timeout_s": 0}, "tools[0] (billing.lookup).timeout_s: Input should be greater than 0"),
        ({"method": "FETCH"}, "tools[0] (billing.lookup).method"),
        ({"parameters": {"type": "object", "properties": {"phone": {"type": "strin"}}}}, ".parameters"),
        ({"parameters": {"type": "string"}}, "top level must be"),
        ({"auth": {"bearer_env": "A", "basic": {"username_env": "U", "password_env": "P"}}}, ".auth"),
        ({"auth": {"header": {"name": "X Bad", "env": "K"}}}, "auth.header.name"),
        ({"url": "${BILLING_URL}/accounts/{account}"}, "placeholder {account} must be a required parameter"),
        ({"method": "POST", "retries": 1}, "retries: only GET tools are retried"),
        ({"name": "Billing"}, "tools[0] (Billing).name"),
        ({"result": ["balance"]}, "tools[0] (billing.lookup).result"),
    ],
)
def test_config_errors_name_the_tool_and_field(
    tmp_path: Path, overrides: dict[str, Any], expected: str
) -> None:
    assert expected in config_error(tmp_path, [billing_tool(**overrides)])


def test_missing_env_var_names_tool_and_variable(tmp_path: Path) -> None:
    message = config_error(tmp_path, [billing_tool()], environ={"BILLING_URL": "http://h"})
    assert (
        "tools[0] (billing.lookup).auth.bearer_env: environment variable BILLING_TOKEN is not set" in message
    )
    assert TOKEN not in message
    message = config_error(tmp_path, [billing_tool()], environ={"BILLING_TOKEN": TOKEN})
    assert "tools[0] (billing.lookup).url: environment variable BILLING_URL is not set" in message


def test_duplicate_names_and_bad_files(tmp_path: Path) -> None:
    assert "declared twice" in config_error(tmp_path, [billing_tool(), billing_tool()])
    bad = tmp_path / "bad.yaml"
    bad.write_text("tools: [", encoding="utf-8")
    with pytest.raises(ToolConfigError, match="not valid YAML"):
        ToolRegistry.from_yaml(bad, environ={})
    with pytest.raises(ToolConfigError, match="cannot read"):
        ToolRegistry.from_yaml(tmp_path / "absent.yaml", environ={})


def test_example_config_loads_and_secrets_stay_out_of_repr() -> None:
    environ = {
        "BILLING_URL": "https://billing.example.com/",
        "BILLING_TOKEN": "tok-123",
        "CRM_URL": "https://crm.example.com",
        "CRM_API_KEY": "key-123",
        "ORDERS_URL": "https://orders.example.com",
        "ORDERS_USER": "u",
        "ORDERS_PASSWORD": "p",
    }
    reg = ToolRegistry.from_yaml(REPO / "config" / "tools.yaml", environ=environ)
    assert reg.names == ["billing.lookup", "crm.create_ticket", "plans.change", "orders.status"]
    assert [t.name for t in reg.for_agent("ivr", intent="check_bill")] == ["billing.lookup", "orders.status"]
    assert "tok-123" not in repr(reg._tools) and "key-123" not in repr(reg._tools)
    assert reg._tools["billing.lookup"].url == "https://billing.example.com/accounts/{phone}/balance"
