"""``GET``/``PUT /api/extensions/{extension}/away`` over real HTTP, on the B2BUA's real away table."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from pbx_edge.b2bua.away import AwayTable
from pbx_edge.ops.admin_api import make_admin_app, start_admin

from .test_admin_api import ADMIN, TOKENS, VIEWER, FakeCdr, FakeEvents, FakeNode, _schemathesis_run

pytestmark = pytest.mark.timeout(60)


class Server:
    def __init__(self, base: str, http: aiohttp.ClientSession) -> None:
        self.base = base
        self.http = http

    async def call(self, method: str, path: str, token: str | None = ADMIN, **kw: Any) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        headers.update(kw.pop("headers", {}))
        async with self.http.request(method, self.base + path, headers=headers, **kw) as resp:
            return resp.status, await resp.json(content_type=None)


async def _serve(away: AwayTable | None) -> tuple[aiohttp.web.AppRunner, str]:
    app = make_admin_app(FakeNode(), FakeEvents([]), FakeCdr([]), TOKENS, away=away)
    runner = await start_admin(app, "127.0.0.1", 0)
    host, port = runner.addresses[0][:2]
    return runner, f"http://{host}:{port}"


@pytest.fixture
async def table() -> AwayTable:
    return AwayTable()


@pytest.fixture
async def server(table: AwayTable) -> AsyncIterator[Server]:
    runner, base = await _serve(table)
    async with aiohttp.ClientSession() as http:
        yield Server(base, http)
    await runner.cleanup()


async def test_set_and_read_away(server: Server, table: AwayTable) -> None:
    assert await server.call("GET", "/api/extensions/1001/away", VIEWER) == (
        200,
        {"extension": "1001", "away": False},
    )
    assert await server.call("PUT", "/api/extensions/1001/away", json={"away": True}) == (
        200,
        {"extension": "1001", "away": True},
    )
    assert table.is_away("1001") and not table.is_away("1002")
    assert (await server.call("GET", "/api/extensions/1001/away", VIEWER))[1]["away"] is True
    await server.call("PUT", "/api/extensions/1001/away", json={"away": False})
    assert table.all() == []


async def test_only_admins_set_away(server: Server, table: AwayTable) -> None:
    status, body = await server.call("PUT", "/api/extensions/1001/away", VIEWER, json={"away": True})
    assert status == 403 and body["status"] == 403
    status, _ = await server.call("PUT", "/api/extensions/1001/away", None, json={"away": True})
    assert status == 401
    status, _ = await server.call("GET", "/api/extensions/1001/away", None)
    assert status == 401
    assert table.all() == []


@pytest.mark.parametrize(
    ("body", "parameter"),
    [
        (b'{"away": "yes"}', "away"),
        (b'{"away": 1}', "away"),
        (b"{}", "away"),
        (b'{"away": true, "until": 5}', "until"),
        (b"not json", "(body)"),
        (b"", "(body)"),
    ],
)
async def test_a_bad_body_is_400_naming_the_field(
    server: Server, table: AwayTable, body: bytes, parameter: str
) -> None:
    status, problem = await server.call(
        "PUT", "/api/extensions/1001/away", data=body, headers={"Content-Type": "application/json"}
    )
    assert status == 400, problem
    assert parameter in [e["parameter"] for e in problem["errors"]], problem
    assert table.all() == []


async def test_a_node_without_an_away_table_answers_404() -> None:
    runner, base = await _serve(None)
    try:
        async with aiohttp.ClientSession() as http:
            status, problem = await Server(base, http).call("GET", "/api/extensions/1001/away")
        assert status == 404 and "away" in problem["detail"]
    finally:
        await runner.cleanup()


async def test_the_routes_are_documented_and_conform(server: Server) -> None:
    status, doc = await server.call("GET", "/api/openapi.json", VIEWER)
    assert status == 200
    path = doc["paths"]["/api/extensions/{extension}/away"]
    assert path["get"]["x-required-role"] == "viewer" and path["put"]["x-required-role"] == "admin"
    assert set(path["put"]["responses"]) >= {"200", "400", "401", "403", "404"}
    schema = doc["components"]["schemas"]["AwayStatus"]
    assert set(schema["properties"]) == {"extension", "away"}
    failures = await asyncio.to_thread(_schemathesis_run, server.base, ADMIN, 10)
    assert failures == []
