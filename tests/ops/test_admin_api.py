"""The admin API over real HTTP on loopback; only the data sources (node, events, CDRs) are fakes."""

from __future__ import annotations

import asyncio
import csv
import io
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from pbx_edge.ai_link.live import LiveTranscript
from pbx_edge.ai_link.protocol import TranscriptEvent, TranscriptGap
from pbx_edge.ops.admin_api import ROUTES, make_admin_app, start_admin
from pbx_edge.ops.auth import hash_token
from pbx_edge.ops.config import AdminConfig, AdminToken
from pbx_edge.ops.events import EventBus
from pbx_edge.ops.models import CallInfo, CdrRecord, Event, PortUsage, RegistrationInfo
from pbx_edge.ops.tool_audit import ToolAuditReader

VIEWER = "viewer-token-0123456789"
ADMIN = "admin-token-9876543210"
TOKENS = AdminConfig(
    port=0,
    tokens=[
        AdminToken(name="dashboard", sha256=hash_token(VIEWER), role="viewer"),
        AdminToken(name="ops", sha256=hash_token(ADMIN), role="admin"),
    ],
)
PROBLEM_KEYS = {"type", "title", "status", "detail"}


# --- data sources ----------------------------------------------------------------------------------
def _call(call_id: str, caller: str, answered: bool) -> CallInfo:
    return CallInfo(
        call_id=call_id,
        state="confirmed" if answered else "early",
        a_call_id=f"a-{call_id}@host",
        b_call_id=f"b-{call_id}@edge",
        caller=caller,
        callee="200",
        start=1_700_000_000.0,
        answer=1_700_000_002.0 if answered else None,
        codec="PCMU" if answered else None,
        media_ports=[20000, 20001, 20002, 20003],
    )


@dataclass
class FakeNode:
    node_id: str = "edge-test"
    ready: bool = True
    passthrough: bool = False
    calls: dict[str, CallInfo] = field(
        default_factory=lambda: {c.call_id: c for c in (_call("c1", "100", True), _call("c2", "101", False))}
    )
    hung_up: list[str] = field(default_factory=list)
    broken: bool = False

    def active_calls(self) -> list[CallInfo]:
        if self.broken:
            raise RuntimeError("secret internal state")
        return list(self.calls.values())

    def call_info(self, call_id: str) -> CallInfo | None:
        return self.calls.get(call_id)

    def hangup(self, call_id: str) -> bool:
        self.hung_up.append(call_id)
        return self.calls.pop(call_id, None) is not None

    def port_usage(self) -> PortUsage | None:
        if self.passthrough:
            return None
        return PortUsage(
            allocated_calls=2, total_calls=2500, allocated_ports=16, total_ports=20000, unusable_blocks=1
        )

    def registrations(self) -> list[RegistrationInfo]:
        return [
            RegistrationInfo(
                aor="sip:100@pbx.local", contact="sip:100@127.0.0.1:5062", source="udp", expires_in=42
            )
        ]


class FakeEvents:
    def __init__(self, events: list[Event]) -> None:
        self.events = events

    def recent(self, limit: int, name: str | None = None, call_id: str | None = None) -> list[Event]:
        found = [
            e
            for e in self.events
            if (name is None or e.name == name) and (call_id is None or call_id == e.call_id)
        ]
        return found[-limit:]


def _record(i: int) -> CdrRecord:
    answered = i % 3 != 0
    start = 1_700_000_000.0 + 60 * i
    return CdrRecord(
        call_id=f"cdr{i:02d}",
        node_id="edge-test",
        a_call_id=f"a{i}@host",
        caller="100" if i % 2 else "101",
        callee="200",
        start=start,
        answer=start + 2 if answered else None,
        end=start + 30,
        duration=30.0,
        billsec=28.0 if answered else 0.0,
        disposition="answered" if answered else "no_answer",
        end_reason="caller_bye" if answered else "no_answer",
        hangup_side="caller" if answered else "edge",
        sip_code=200 if answered else 480,
    )


class FakeTranscripts:
    """The AI bridge's view: one live call, c1, with a final, a gap and a partial."""

    def __init__(self) -> None:
        self.live = LiveTranscript("c1")
        said = {"leg": "caller", "start": 0.5, "end": 1.5, "language": "en"}
        self.live.add(TranscriptEvent.model_validate({"final": True, "text": "hello", "id": "u1", **said}))
        self.live.add(TranscriptGap(leg="callee", start=1.0, end=2.0, reason="stt_failed"))
        self.live.add(TranscriptEvent.model_validate({"final": False, "text": "how a", "id": "u2", **said}))

    def transcript(self, call_id: str) -> Any:
        return self.live.view() if call_id == "c1" else None


class FakeCdr:
    def __init__(self, records: list[CdrRecord]) -> None:
        self.records = records
        self.queries: list[dict[str, Any]] = []

    def _match(self, filters: dict[str, Any]) -> list[CdrRecord]:
        out = []
        for r in self.records:
            if filters["since"] is not None and r.start < filters["since"]:
                continue
            if filters["until"] is not None and r.start >= filters["until"]:
                continue
            if any(
                filters[k] is not None and getattr(r, k) != filters[k]
                for k in ("caller", "callee", "disposition")
            ):
                continue
            out.append(r)
        return out

    async def query(self, *, limit: int, offset: int, **filters: Any) -> tuple[list[CdrRecord], int]:
        self.queries.append({**filters, "limit": limit, "offset": offset})
        found = sorted(self._match(filters), key=lambda r: -r.start)
        return found[offset : offset + limit], len(found)

    async def export_csv(self, **filters: Any) -> str:
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=list(CdrRecord.model_fields))
        writer.writeheader()
        for r in self._match(filters):
            writer.writerow(r.model_dump())
        return out.getvalue()


def _events() -> list[Event]:
    names = ["call.started", "call.ringing", "call.answered", "call.started", "dtmf", "call.ended"]
    return [
        Event(
            id=f"e{i}", name=n, time=1_700_000_000.0 + i, node_id="edge-test", call_id="c1" if i < 3 else "c2"
        )
        for i, n in enumerate(names)
    ]


# --- the server ------------------------------------------------------------------------------------
@dataclass
class Api:
    base: str
    node: FakeNode
    cdr: FakeCdr
    http: aiohttp.ClientSession

    async def request(
        self, method: str, path: str, token: str | None = ADMIN, **kwargs: Any
    ) -> tuple[aiohttp.ClientResponse, Any]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with self.http.request(method, self.base + path, headers=headers, **kwargs) as resp:
            if resp.content_type.endswith("json"):
                body: Any = await resp.json(content_type=None)
            else:
                body = await resp.text()
            return resp, body


async def _serve(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = await start_admin(app, "127.0.0.1", 0)
    host, port = runner.addresses[0][:2]
    return runner, f"http://{host}:{port}"


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    node, cdr = FakeNode(), FakeCdr([_record(i) for i in range(25)])
    audit = ToolAuditReader(f"sqlite:///{tmp_path}/tool_audit.sqlite3")  # real and empty
    app = make_admin_app(node, FakeEvents(_events()), cdr, TOKENS, FakeTranscripts(), tool_audit=audit)
    runner, base = await _serve(app)
    async with aiohttp.ClientSession() as http:
        yield Api(base, node, cdr, http)
    await runner.cleanup()
    await audit.close()


def _assert_problem(resp: aiohttp.ClientResponse, body: Any, status: int) -> None:
    assert resp.status == status, body
    assert resp.content_type == "application/problem+json"
    assert set(body) >= PROBLEM_KEYS, body
    assert body["status"] == status


# --- probes ----------------------------------------------------------------------------------------
async def test_health_and_ready_need_no_token(api: Api) -> None:
    resp, body = await api.request("GET", "/health", token=None)
    assert (resp.status, body) == (200, {"status": "ok"})
    resp, body = await api.request("GET", "/ready", token=None)
    assert (resp.status, body) == (200, {"ready": True, "node_id": "edge-test"})
    api.node.ready = False
    resp, body = await api.request("GET", "/ready", token=None)
    _assert_problem(resp, body, 503)
    assert "not ready" in body["detail"]
    resp, _ = await api.request("GET", "/health", token=None)
    assert resp.status == 200
    resp, _ = await api.request("HEAD", "/health", token=None)
    assert resp.status == 200


# --- transcripts -----------------------------------------------------------------------------------
async def test_call_transcript_live_and_unknown(api: Api) -> None:
    resp, body = await api.request("GET", "/api/calls/c1/transcript", token=VIEWER)
    assert resp.status == 200, body
    assert (body["call_id"], body["live"], body["truncated"]) == ("c1", True, False)
    assert [(i["kind"], i["leg"], i["text"], i["reason"]) for i in body["items"]] == [
        ("segment", "caller", "hello", None),
        ("gap", "callee", "", "stt_failed"),
    ]
    assert [(p["kind"], p["text"], p["utterance_id"]) for p in body["partials"]] == [
        ("partial", "how a", "u2")
    ]
    resp, body = await api.request("GET", "/api/calls/nope/transcript", token=VIEWER)
    _assert_problem(resp, body, 404)
    assert "no transcript" in body["detail"]


# --- authentication and roles ----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("token", "viewer_route", "admin_route"),
    [(None, 401, 401), ("not-a-token", 401, 401), (VIEWER, 200, 403), (ADMIN, 200, 202)],
    ids=["none", "unknown", "viewer", "admin"],
)
async def test_auth_matrix(api: Api, token: str | None, viewer_route: int, admin_route: int) -> None:
    resp, body = await api.request("GET", "/api/calls", token=token)
    assert resp.status == viewer_route
    resp2, body2 = await api.request("POST", "/api/calls/c1/hangup", token=token)
    assert resp2.status == admin_route
    for r, b in ((resp, body), (resp2, body2)):
        if r.status >= 400:
            _assert_problem(r, b, r.status)
        if r.status == 401:
            challenge = r.headers["WWW-Authenticate"]
            assert challenge.startswith("Bearer realm=")
            assert ('error="invalid_token"' in challenge) == (token is not None)
    assert api.node.hung_up == (["c1"] if token == ADMIN else [])


async def test_every_protected_route_refuses_without_token(api: Api) -> None:
    for route in ROUTES:
        path = route.path.replace("{call_id}", "c1").replace("{extension}", "1001")
        resp, body = await api.request(route.method, path, token=None)
        if route.role is None:
            assert resp.status in (200, 503), path
        else:
            _assert_problem(resp, body, 401)
    assert api.node.hung_up == []


@pytest.mark.parametrize(
    "header", ["Basic dXNlcjpwYXNz", "Bearer", "Bearer ", VIEWER, f"Token {VIEWER}", f"Bearer {VIEWER}x"]
)
async def test_malformed_authorization_is_401(api: Api, header: str) -> None:
    async with api.http.get(api.base + "/api/calls", headers={"Authorization": header}) as resp:
        assert resp.status == 401
        assert resp.headers["WWW-Authenticate"].startswith("Bearer")


async def test_bearer_scheme_is_case_insensitive(api: Api) -> None:
    async with api.http.get(api.base + "/api/calls", headers={"Authorization": f"bearer {VIEWER}"}) as resp:
        assert resp.status == 200


async def test_no_tokens_configured_refuses_all_but_probes(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="pbx_edge.ops"):
        app = make_admin_app(FakeNode(), FakeEvents([]), FakeCdr([]), AdminConfig(port=0))
    assert any("no tokens configured" in r.getMessage() for r in caplog.records)
    runner, base = await _serve(app)
    try:
        async with aiohttp.ClientSession() as http:
            api = Api(base, FakeNode(), FakeCdr([]), http)
            for path in ("/health", "/ready"):
                resp, _ = await api.request("GET", path, token=None)
                assert resp.status == 200
            for token in (None, ADMIN):
                resp, body = await api.request("GET", "/api/calls", token=token)
                _assert_problem(resp, body, 401)
                assert body["type"] == "urn:smartpbx:problem:no-tokens-configured"
    finally:
        await runner.cleanup()


# --- problem details -------------------------------------------------------------------------------
async def test_router_errors_are_problems(api: Api) -> None:
    resp, body = await api.request("GET", "/api/nothing-here")
    _assert_problem(resp, body, 404)
    assert body["type"] == "about:blank" and body["title"] == "Not Found"
    resp, body = await api.request("PUT", "/api/calls")
    _assert_problem(resp, body, 405)
    assert "GET" in resp.headers["Allow"]


async def test_internal_error_is_a_problem_without_details(
    api: Api, caplog: pytest.LogCaptureFixture
) -> None:
    api.node.broken = True
    with caplog.at_level(logging.ERROR, logger="pbx_edge.ops"):
        resp, body = await api.request("GET", "/api/calls")
    _assert_problem(resp, body, 500)
    assert "secret" not in body["detail"]
    assert any("secret internal state" in (r.exc_text or "") for r in caplog.records)


@pytest.mark.parametrize(
    ("query", "parameter"),
    [
        ("limit=0", "limit"),
        ("limit=1001", "limit"),
        ("limit=ten", "limit"),
        ("offset=-1", "offset"),
        ("since=yesterday", "since"),
        ("until=nan", "until"),
        ("disposition=lost", "disposition"),
        ("callr=100", "callr"),
        ("limit=5&limit=6", "limit"),
    ],
)
async def test_bad_query_parameters_are_400_naming_them(api: Api, query: str, parameter: str) -> None:
    resp, body = await api.request("GET", f"/api/cdr?{query}", token=VIEWER)
    _assert_problem(resp, body, 400)
    assert body["type"] == "urn:smartpbx:problem:invalid-parameters"
    assert [e["parameter"] for e in body["errors"]] == [parameter]
    assert parameter in body["detail"]
    assert api.cdr.queries == []


async def test_bad_query_parameters_are_checked_after_authentication(api: Api) -> None:
    resp, body = await api.request("GET", "/api/cdr?limit=0", token=None)
    _assert_problem(resp, body, 401)


# --- calls -----------------------------------------------------------------------------------------
async def test_calls_list_and_get(api: Api) -> None:
    resp, body = await api.request("GET", "/api/calls", token=VIEWER)
    assert resp.status == 200
    assert [c["call_id"] for c in body["items"]] == ["c1", "c2"]
    assert body["items"][0]["media_ports"] == [20000, 20001, 20002, 20003]
    resp, body = await api.request("GET", "/api/calls/c2", token=VIEWER)
    assert resp.status == 200
    assert CallInfo.model_validate(body) == api.node.calls["c2"]
    resp, body = await api.request("GET", "/api/calls/nope", token=VIEWER)
    _assert_problem(resp, body, 404)
    assert body["type"] == "urn:smartpbx:problem:call-not-found" and "nope" in body["detail"]


async def test_hangup(api: Api) -> None:
    resp, body = await api.request("POST", "/api/calls/c2/hangup")
    assert (resp.status, body) == (202, {"call_id": "c2", "status": "hangup_requested"})
    assert api.node.hung_up == ["c2"]
    resp, body = await api.request("GET", "/api/calls")
    assert [c["call_id"] for c in body["items"]] == ["c1"]
    resp, body = await api.request("POST", "/api/calls/c2/hangup")
    _assert_problem(resp, body, 404)


# --- ports, registrations, events ------------------------------------------------------------------
async def test_ports_relay_and_passthrough(api: Api) -> None:
    resp, body = await api.request("GET", "/api/ports", token=VIEWER)
    assert resp.status == 200
    assert body["mode"] == "relay"
    assert body["usage"] == {
        "allocated_calls": 2,
        "total_calls": 2500,
        "allocated_ports": 16,
        "total_ports": 20000,
        "unusable_blocks": 1,
    }
    api.node.passthrough = True
    resp, body = await api.request("GET", "/api/ports", token=VIEWER)
    assert (resp.status, body) == (200, {"mode": "passthrough", "usage": None})


async def test_registrations(api: Api) -> None:
    resp, body = await api.request("GET", "/api/registrations", token=VIEWER)
    assert resp.status == 200
    assert body["items"][0]["aor"] == "sip:100@pbx.local"


async def test_events_filters(api: Api) -> None:
    resp, body = await api.request("GET", "/api/events", token=VIEWER)
    assert [e["id"] for e in body["items"]] == [f"e{i}" for i in range(6)]
    resp, body = await api.request("GET", "/api/events?limit=2", token=VIEWER)
    assert [e["id"] for e in body["items"]] == ["e4", "e5"]
    resp, body = await api.request("GET", "/api/events?name=call.started", token=VIEWER)
    assert [e["id"] for e in body["items"]] == ["e0", "e3"]
    resp, body = await api.request("GET", "/api/events?call_id=c1&limit=1000", token=VIEWER)
    assert [e["id"] for e in body["items"]] == ["e0", "e1", "e2"]
    resp, body = await api.request("GET", "/api/events?limit=1001", token=VIEWER)
    _assert_problem(resp, body, 400)


# --- CDRs ------------------------------------------------------------------------------------------
async def test_cdr_pagination(api: Api) -> None:
    resp, body = await api.request("GET", "/api/cdr", token=VIEWER)
    assert (resp.status, body["total"], body["limit"], body["offset"]) == (200, 25, 100, 0)
    assert len(body["items"]) == 25
    seen = []
    for offset in (0, 10, 20):
        resp, body = await api.request("GET", f"/api/cdr?limit=10&offset={offset}", token=VIEWER)
        assert (body["total"], body["limit"], body["offset"]) == (25, 10, offset)
        seen += [r["call_id"] for r in body["items"]]
    assert len(seen) == 25 == len(set(seen))
    assert seen[0] == "cdr24"  # newest first
    resp, body = await api.request("GET", "/api/cdr?offset=100", token=VIEWER)
    assert (body["items"], body["total"]) == ([], 25)


async def test_cdr_filters_reach_the_store(api: Api) -> None:
    since, until = 1_700_000_000.0 + 60 * 5, 1_700_000_000.0 + 60 * 15
    query = f"since={since}&until={until}&caller=100&disposition=answered&limit=3&offset=1"
    resp, body = await api.request("GET", f"/api/cdr?{query}", token=VIEWER)
    assert resp.status == 200
    assert api.cdr.queries[-1] == {
        "since": since,
        "until": until,
        "caller": "100",
        "callee": None,
        "disposition": "answered",
        "limit": 3,
        "offset": 1,
    }
    # odd i in 5..14, answered (i % 3 != 0): 5 7 11 13 -> newest first 13 11 7 5 -> offset 1, limit 3
    assert [r["call_id"] for r in body["items"]] == ["cdr11", "cdr07", "cdr05"]
    assert body["total"] == 4


async def test_cdr_csv(api: Api) -> None:
    resp, text = await api.request("GET", "/api/cdr.csv?disposition=no_answer", token=VIEWER)
    assert resp.status == 200
    assert resp.content_type == "text/csv"
    assert "attachment" in resp.headers["Content-Disposition"]
    rows = list(csv.DictReader(io.StringIO(text)))
    assert [r["call_id"] for r in rows] == [f"cdr{i:02d}" for i in range(0, 25, 3)]
    assert {r["disposition"] for r in rows} == {"no_answer"}
    resp, body = await api.request("GET", "/api/cdr.csv?limit=5", token=VIEWER)
    _assert_problem(resp, body, 400)  # the export is not paged: 'limit' is an unknown parameter


# --- the real data sources -------------------------------------------------------------------------
async def test_real_event_bus_and_cdr_store_fit_the_protocols(tmp_path: Any) -> None:
    """The Protocols match the real EventBus and CdrStore (SQLite), not only the fakes."""
    from pbx_edge.ops.cdr import CdrStore

    bus = EventBus()
    for event in _events():
        bus.publish(event)
    store = CdrStore(f"sqlite:///{tmp_path / 'cdr.sqlite3'}")
    await store.start()
    try:
        for i in range(5):
            store.add(_record(i))
        runner, base = await _serve(make_admin_app(FakeNode(), bus, store, TOKENS))
        try:
            async with aiohttp.ClientSession() as http:
                api = Api(base, FakeNode(), FakeCdr([]), http)
                resp, body = await api.request("GET", "/api/events?name=call.*&call_id=c2")
                assert [e["id"] for e in body["items"]] == ["e3", "e5"]
                resp, body = await api.request("GET", "/api/cdr?limit=2&offset=1&caller=101")
                assert (resp.status, body["total"]) == (200, 3)
                assert [r["call_id"] for r in body["items"]] == ["cdr02", "cdr00"]
                resp, text = await api.request("GET", "/api/cdr.csv?caller=100")
                assert [r["call_id"] for r in csv.DictReader(io.StringIO(text))] == ["cdr01", "cdr03"]
        finally:
            await runner.cleanup()
    finally:
        await store.close()


# --- OpenAPI ---------------------------------------------------------------------------------------
async def test_openapi_lists_every_route_with_its_role(api: Api) -> None:
    resp, _ = await api.request("GET", "/api/openapi.json", token=None)
    assert resp.status == 401
    resp, doc = await api.request("GET", "/api/openapi.json", token=VIEWER)
    assert resp.status == 200
    assert doc["openapi"].startswith("3.1")
    scheme = doc["components"]["securitySchemes"]["bearerAuth"]
    assert (scheme["type"], scheme["scheme"]) == ("http", "bearer")
    documented = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops}
    served = {
        (r.method, r.resource.canonical)
        for r in make_admin_app(FakeNode(), FakeEvents([]), FakeCdr([]), TOKENS).router.routes()
        if r.resource is not None and r.method != "HEAD"
    }
    assert documented == served
    expected = {
        ("GET", "/health"): None,
        ("GET", "/ready"): None,
        ("GET", "/api/calls"): "viewer",
        ("GET", "/api/calls/{call_id}"): "viewer",
        ("POST", "/api/calls/{call_id}/hangup"): "admin",
        ("GET", "/api/calls/{call_id}/transcript"): "viewer",
        ("GET", "/api/ports"): "viewer",
        ("GET", "/api/registrations"): "viewer",
        ("GET", "/api/cdr"): "viewer",
        ("GET", "/api/cdr.csv"): "viewer",
        ("GET", "/api/events"): "viewer",
        ("GET", "/api/extensions/{extension}/away"): "viewer",
        ("PUT", "/api/extensions/{extension}/away"): "admin",
        ("GET", "/api/tools/audit"): "viewer",
        ("GET", "/api/openapi.json"): "viewer",
    }
    assert set(expected) == documented
    for (method, path), role in expected.items():
        operation = doc["paths"][path][method.lower()]
        if role is None:
            assert operation["security"] == []
        else:
            assert operation["security"] == [{"bearerAuth": [role]}]
            assert operation["x-required-role"] == role
            assert "401" in operation["responses"]
        assert ("403" in operation["responses"]) == (role == "admin")
    cdr_params = {p["name"] for p in doc["paths"]["/api/cdr"]["get"]["parameters"]}
    assert cdr_params == {"since", "until", "caller", "callee", "disposition", "limit", "offset"}
    audit_params = {p["name"] for p in doc["paths"]["/api/tools/audit"]["get"]["parameters"]}
    assert audit_params == {"call_id", "tool", "status", "since", "until", "limit", "cursor"}


def _schemathesis_run(base: str, token: str, examples: int, derandomize: bool = True) -> list[str]:
    """Every operation, ``examples`` valid and invalid cases each; returns the failures.

    Blocking (schemathesis sends with requests): run it in a thread while the loop serves.
    """
    import schemathesis
    from hypothesis import HealthCheck, Phase, given, settings
    from schemathesis import GenerationMode
    from schemathesis.core.result import Ok

    auth = {"Authorization": f"Bearer {token}"}  # fixed, so negative cases never mangle it
    schema = schemathesis.openapi.from_url(f"{base}/api/openapi.json", headers=auth)
    failures: list[str] = []
    labels = set()
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), result
        operation = result.ok()
        labels.add(operation.label)

        @given(
            case=operation.as_strategy(GenerationMode.POSITIVE, headers=auth)
            | operation.as_strategy(GenerationMode.NEGATIVE, headers=auth)
        )
        @settings(
            max_examples=examples,
            deadline=None,
            database=None,
            derandomize=derandomize,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        def check(case: Any) -> None:
            case.call_and_validate(base_url=base)

        try:
            check()
        except Exception as exc:
            failures.append(f"{operation.label}: {exc}")
    # schemathesis leaves out the path the document itself was loaded from
    assert labels == {f"{r.method} {r.path}" for r in ROUTES} - {"GET /api/openapi.json"}
    return failures


async def test_schemathesis_finds_no_failures(api: Api) -> None:
    failures = await asyncio.to_thread(_schemathesis_run, api.base, ADMIN, 15)
    assert failures == []
