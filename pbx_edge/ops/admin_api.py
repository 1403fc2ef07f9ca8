"""The admin HTTP API: live calls, ports, registrations, CDRs and events over aiohttp (FR21, FR22).

Everything the server does is driven by :data:`ROUTES`: each entry names the handler, the role it
needs, the pydantic model its query string is validated with and the model it must return; the same
table generates ``GET /api/openapi.json``. The request pipeline is fixed: authenticate, authorize,
validate the query, call the handler, check and serialize its result. Errors of any step leave as RFC
9457 problem details (see :mod:`pbx_edge.ops.problems`).

Security (NFR10): every route except ``/health`` and ``/ready`` needs ``Authorization: Bearer``. With
no tokens configured the API refuses all of them with 401 and :func:`make_admin_app` logs a warning,
so a node started without tokens is never an open door. ``/api/openapi.json`` needs a viewer token too.

Query strings: unknown parameters of a route that takes filters are refused (400) rather than ignored,
because a mistyped filter would otherwise silently widen the answer (a CDR export of every call);
routes without filters ignore the query string.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from importlib import metadata
from typing import Any, Literal, Protocol

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, FiniteFloat, StrictBool, ValidationError

from pbx_edge.ai_link.live import CallTranscript
from pbx_edge.ops.auth import REALM, Principal, Role, TokenAuthenticator, bearer_token
from pbx_edge.ops.config import AdminConfig
from pbx_edge.ops.models import (
    CallInfo,
    CdrRecord,
    Disposition,
    Event,
    NodeView,
    PortUsage,
    RegistrationInfo,
)
from pbx_edge.ops.openapi import Route, build_openapi
from pbx_edge.ops.problems import (
    ABOUT_BLANK,
    CALL_NOT_FOUND,
    INVALID_PARAMETERS,
    NO_TOKENS_CONFIGURED,
    ParameterError,
    Problem,
    ProblemError,
    problem_response,
)
from pbx_edge.ops.tool_audit import ToolAuditPage, ToolAuditQuery

log = logging.getLogger("pbx_edge.ops")

MAX_PAGE = 1000
MAX_OFFSET = 2**53 - 1  # keeps offsets inside what JSON clients and SQL integers both hold


# --- data sources ----------------------------------------------------------------------------------
class EventSource(Protocol):
    """The recent-events ring (``EventBus`` in pbx_edge/ops/events.py)."""

    def recent(self, limit: int, name: str | None = None, call_id: str | None = None) -> list[Event]: ...


class CdrSource(Protocol):
    """The CDR store (``CdrStore`` in pbx_edge/ops/cdr.py). ``query`` returns a page and the total.

    Coroutines: the store runs its SELECTs in a worker thread so the event loop never waits on disk.
    """

    async def query(
        self,
        *,
        since: float | None,
        until: float | None,
        caller: str | None,
        callee: str | None,
        disposition: str | None,
        limit: int,
        offset: int,
    ) -> tuple[list[CdrRecord], int]: ...

    async def export_csv(
        self,
        *,
        since: float | None,
        until: float | None,
        caller: str | None,
        callee: str | None,
        disposition: str | None,
    ) -> str: ...


class TranscriptSource(Protocol):
    """Call transcripts (``AiBridge`` in pbx_edge/ai_link/bridge.py): live, else stored, else None."""

    def transcript(self, call_id: str) -> CallTranscript | None: ...


class AwaySource(Protocol):
    """Extensions marked away (``AwayTable`` in pbx_edge/b2bua/away.py, the core's ``away``)."""

    def set_away(self, extension: str, away: bool) -> None: ...

    def is_away(self, extension: str) -> bool: ...


class ToolAuditSource(Protocol):
    """The agents' tool-call audit log (``ToolAuditReader`` in pbx_edge/ops/tool_audit.py); the
    query runs in a worker thread."""

    async def query(self, query: ToolAuditQuery | None = None) -> ToolAuditPage: ...


class NoTranscripts:
    """The source of a node without an AI layer."""

    def transcript(self, call_id: str) -> CallTranscript | None:
        return None


# --- query models ----------------------------------------------------------------------------------
class _Query(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CdrFilter(_Query):
    since: FiniteFloat | None = Field(None, description="Calls that started at or after (UNIX seconds)")
    until: FiniteFloat | None = Field(None, description="Calls that started before (UNIX seconds)")
    caller: str | None = Field(None, max_length=256, description="Exact caller")
    callee: str | None = Field(None, max_length=256, description="Exact callee")
    disposition: Disposition | None = Field(None, description="Only calls that ended so")

    def filters(self) -> dict[str, Any]:
        return {
            "since": self.since,
            "until": self.until,
            "caller": self.caller,
            "callee": self.callee,
            "disposition": self.disposition,
        }


class CdrQuery(CdrFilter):
    limit: int = Field(100, ge=1, le=MAX_PAGE, description="Page size")
    offset: int = Field(0, ge=0, le=MAX_OFFSET, description="Records to skip")


class EventsQuery(_Query):
    limit: int = Field(100, ge=1, le=MAX_PAGE, description="Most recent events to return")
    name: str | None = Field(
        None, max_length=128, description="Only events of this name; 'call.*' matches a prefix"
    )
    call_id: str | None = Field(None, max_length=256, description="Only events of this call")


class ToolAuditApiQuery(ToolAuditQuery):
    """:class:`ToolAuditQuery` with the bounds a query string needs: finite times and a cursor that
    fits an SQL integer, so out-of-range values are 400s rather than database errors."""

    since: FiniteFloat | None = Field(None, description="Tool calls at or after (UNIX seconds)")
    until: FiniteFloat | None = Field(None, description="Tool calls before (UNIX seconds)")
    cursor: int | None = Field(
        None, ge=0, le=MAX_OFFSET, description="next_cursor of the previous page: the rows after it"
    )


# --- response models -------------------------------------------------------------------------------
class _Body(BaseModel):
    model_config = ConfigDict(frozen=True)


class HealthStatus(_Body):
    status: Literal["ok"] = "ok"


class ReadyStatus(_Body):
    ready: bool
    node_id: str


class CallList(_Body):
    items: list[CallInfo]


class HangupAccepted(_Body):
    """202: the BYE/CANCEL is under way; the call disappears from /api/calls when it has ended."""

    call_id: str
    status: Literal["hangup_requested"] = "hangup_requested"


class PortsView(_Body):
    mode: Literal["relay", "passthrough"]
    usage: PortUsage | None = Field(description="Null when media is pass-through (no port pool)")


class RegistrationList(_Body):
    items: list[RegistrationInfo]


class CdrPage(_Body):
    items: list[CdrRecord]
    total: int = Field(description="Records matching the filters, over all pages")
    limit: int
    offset: int


class EventList(_Body):
    items: list[Event]


class AwayStatus(_Body):
    """Whether calls to ``extension`` count as away (the AI attendant's ``away`` trigger)."""

    extension: str
    away: bool


class AwayUpdate(BaseModel):
    """The body of ``PUT /api/extensions/{extension}/away``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    away: StrictBool


# --- the pipeline ----------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class AdminContext:
    node: NodeView
    events: EventSource
    cdr: CdrSource
    auth: TokenAuthenticator
    openapi: dict[str, Any]
    transcripts: TranscriptSource
    away: AwaySource | None = None
    tool_audit: ToolAuditSource | None = None


@dataclass(frozen=True, slots=True)
class ApiRequest:
    """What a handler gets: the validated query (or None), the path parameters and the caller."""

    request: web.Request
    principal: Principal | None
    query: Any
    path: Mapping[str, str]


CONTEXT = web.AppKey("smartpbx_admin", AdminContext)


def _unauthorized(detail: str, *, invalid: bool = False, type: str = ABOUT_BLANK) -> ProblemError:
    challenge = f'Bearer realm="{REALM}"' + (', error="invalid_token"' if invalid else "")
    return ProblemError(401, detail, type=type, headers={"WWW-Authenticate": challenge})


def _authorize(ctx: AdminContext, request: web.Request, required: Role) -> Principal:
    if not ctx.auth.configured:
        raise _unauthorized(
            "the admin API has no tokens configured (admin.tokens); it refuses every request",
            type=NO_TOKENS_CONFIGURED,
        )
    token = bearer_token(request.headers.get("Authorization"))
    if token is None:
        raise _unauthorized("an 'Authorization: Bearer <token>' header is required")
    principal = ctx.auth.authenticate(token)
    if principal is None:
        log.info("admin API: unknown token from %s for %s %s", request.remote, request.method, request.path)
        raise _unauthorized("the bearer token is not valid", invalid=True)
    if not principal.role.allows(required):
        raise ProblemError(403, f"this operation needs the {required.value} role; token has {principal.role}")
    return principal


def _parse_query(model: type[BaseModel], request: web.Request) -> BaseModel:
    errors: list[ParameterError] = []
    raw: dict[str, str] = {}
    for key in request.query:
        if key in raw:
            continue
        values = request.query.getall(key)
        if len(values) > 1:
            errors.append(ParameterError(parameter=key, detail="given more than once"))
        raw[key] = values[0]
    if not errors:
        try:
            return model.model_validate(raw)
        except ValidationError as exc:
            for err in exc.errors(include_url=False):
                name = ".".join(str(p) for p in err["loc"]) or "(query)"
                reason = "unknown parameter" if err["type"] == "extra_forbidden" else err["msg"]
                errors.append(ParameterError(parameter=name, detail=reason))
    detail = "; ".join(f"{e.parameter}: {e.detail}" for e in errors)
    raise ProblemError(400, f"invalid query parameter(s): {detail}", type=INVALID_PARAMETERS, errors=errors)


def _render(route: Route, result: object) -> web.StreamResponse:
    if isinstance(result, web.StreamResponse):
        return result
    if route.response is not None:
        if not isinstance(result, route.response):
            raise TypeError(f"{route.operation_id} returned {type(result).__name__}, not {route.response}")
        return web.Response(
            status=route.status, text=result.model_dump_json(), content_type="application/json"
        )
    return web.json_response(result, status=route.status)


def _endpoint(route: Route) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def handle(request: web.Request) -> web.StreamResponse:
        ctx = request.app[CONTEXT]
        principal = None if route.role is None else _authorize(ctx, request, route.role)
        query = None if route.query is None else _parse_query(route.query, request)
        result = route.handler(ctx, ApiRequest(request, principal, query, request.match_info))
        if inspect.isawaitable(result):
            result = await result
        return _render(route, result)

    return handle


@web.middleware
async def _problems(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Every error as problem details: ours, aiohttp's (404/405 from the router) and crashes."""
    try:
        return await handler(request)
    except ProblemError as exc:
        return problem_response(exc.problem, exc.headers)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else {}
        if exc.status == 404:
            detail = f"no such resource: {request.path}"
        elif exc.status == 405:
            detail = f"{request.method} is not allowed here; allowed: {headers.get('Allow', '')}"
        else:
            detail = exc.text or exc.reason
        return problem_response(Problem(title=exc.reason, status=exc.status, detail=detail), headers)
    except Exception:
        log.exception("admin API: %s %s failed", request.method, request.path)
        return problem_response(
            Problem(title="Internal Server Error", status=500, detail="internal error; see the node log")
        )


# --- handlers --------------------------------------------------------------------------------------
def _no_such_call(call_id: str) -> ProblemError:
    return ProblemError(404, f"no active call {call_id!r}", type=CALL_NOT_FOUND, title="Call Not Found")


def health(ctx: AdminContext, req: ApiRequest) -> HealthStatus:
    return HealthStatus()


def ready(ctx: AdminContext, req: ApiRequest) -> ReadyStatus:
    if not ctx.node.ready:
        raise ProblemError(503, f"node {ctx.node.node_id} is not ready (starting or draining)")
    return ReadyStatus(ready=True, node_id=ctx.node.node_id)


def list_calls(ctx: AdminContext, req: ApiRequest) -> CallList:
    return CallList(items=ctx.node.active_calls())


def get_call(ctx: AdminContext, req: ApiRequest) -> CallInfo:
    info = ctx.node.call_info(req.path["call_id"])
    if info is None:
        raise _no_such_call(req.path["call_id"])
    return info


def hangup_call(ctx: AdminContext, req: ApiRequest) -> HangupAccepted:
    call_id = req.path["call_id"]
    if not ctx.node.hangup(call_id):
        raise _no_such_call(call_id)
    who = req.principal.name if req.principal else "?"
    log.info("admin API: %s hung up call %s", who, call_id)
    return HangupAccepted(call_id=call_id)


def get_transcript(ctx: AdminContext, req: ApiRequest) -> CallTranscript:
    call_id = req.path["call_id"]
    transcript = ctx.transcripts.transcript(call_id)
    if transcript is None:
        raise ProblemError(
            404,
            f"no transcript for call {call_id!r} (not streamed to the AI layer, or unknown)",
            type=CALL_NOT_FOUND,
            title="Transcript Not Found",
        )
    return transcript


def get_ports(ctx: AdminContext, req: ApiRequest) -> PortsView:
    usage = ctx.node.port_usage()
    return PortsView(mode="passthrough" if usage is None else "relay", usage=usage)


def list_registrations(ctx: AdminContext, req: ApiRequest) -> RegistrationList:
    return RegistrationList(items=ctx.node.registrations())


async def list_cdr(ctx: AdminContext, req: ApiRequest) -> CdrPage:
    q: CdrQuery = req.query
    items, total = await ctx.cdr.query(**q.filters(), limit=q.limit, offset=q.offset)
    return CdrPage(items=items, total=total, limit=q.limit, offset=q.offset)


async def export_cdr(ctx: AdminContext, req: ApiRequest) -> web.Response:
    q: CdrFilter = req.query
    return web.Response(
        text=await ctx.cdr.export_csv(**q.filters()),
        content_type="text/csv",
        headers={"Content-Disposition": 'attachment; filename="cdr.csv"'},
    )


def list_events(ctx: AdminContext, req: ApiRequest) -> EventList:
    q: EventsQuery = req.query
    return EventList(items=ctx.events.recent(q.limit, name=q.name, call_id=q.call_id))


def _away_source(ctx: AdminContext) -> AwaySource:
    if ctx.away is None:
        raise ProblemError(404, "this node keeps no away status (the B2BUA's away table is not wired in)")
    return ctx.away


def get_away(ctx: AdminContext, req: ApiRequest) -> AwayStatus:
    extension = req.path["extension"]
    return AwayStatus(extension=extension, away=_away_source(ctx).is_away(extension))


async def put_away(ctx: AdminContext, req: ApiRequest) -> AwayStatus:
    extension = req.path["extension"]
    away = _away_source(ctx)
    try:
        update = AwayUpdate.model_validate_json(await req.request.read())
    except ValidationError as exc:
        errors = [
            ParameterError(
                parameter=".".join(str(p) for p in err["loc"]) or "(body)",
                detail="unknown field" if err["type"] == "extra_forbidden" else err["msg"],
            )
            for err in exc.errors(include_url=False)
        ]
        detail = "; ".join(f"{e.parameter}: {e.detail}" for e in errors)
        raise ProblemError(
            400,
            f'invalid body (expected {{"away": true|false}}): {detail}',
            type=INVALID_PARAMETERS,
            errors=errors,
        ) from None
    away.set_away(extension, update.away)
    who = req.principal.name if req.principal else "?"
    log.info("admin API: %s set extension %s away=%s", who, extension, update.away)
    return AwayStatus(extension=extension, away=update.away)


async def list_tool_audit(ctx: AdminContext, req: ApiRequest) -> ToolAuditPage:
    if ctx.tool_audit is None:
        raise ProblemError(404, "this node reads no tool audit log (admin.tool_audit_url is not wired in)")
    q: ToolAuditQuery = req.query
    return await ctx.tool_audit.query(q)


def openapi_json(ctx: AdminContext, req: ApiRequest) -> dict[str, Any]:
    return ctx.openapi


ROUTES: tuple[Route, ...] = (
    Route("GET", "/health", "health", "Liveness: 200 while the process runs", health, role=None,
          response=HealthStatus),
    Route("GET", "/ready", "ready", "Readiness: 200 when the node takes calls, else 503", ready,
          role=None, response=ReadyStatus, problems=(503,)),
    Route("GET", "/api/calls", "listCalls", "Active calls (FR21)", list_calls, response=CallList),
    Route("GET", "/api/calls/{call_id}", "getCall", "One active call", get_call, response=CallInfo),
    Route("POST", "/api/calls/{call_id}/hangup", "hangupCall", "End a call from the edge", hangup_call,
          role=Role.ADMIN, response=HangupAccepted, status=202,
          description="BYE to both legs, or 480 to the caller and CANCEL to the callee before answer. "
          "202: the hangup is under way; the call leaves /api/calls once it has ended."),
    Route("GET", "/api/calls/{call_id}/transcript", "getCallTranscript", "A call's transcript",
          get_transcript, response=CallTranscript,
          description="Live while the call is up (final segments, gaps, and the newest partial of each "
          "leg: poll it), then read back from the call store. 404 when the call was not transcribed."),
    Route("GET", "/api/ports", "getPorts", "Media port-pool usage (FR22)", get_ports, response=PortsView),
    Route("GET", "/api/registrations", "listRegistrations", "Registered contacts", list_registrations,
          response=RegistrationList),
    Route("GET", "/api/cdr", "listCdr", "Call detail records, newest first, paginated", list_cdr,
          query=CdrQuery, response=CdrPage),
    Route("GET", "/api/cdr.csv", "exportCdr", "CDRs as CSV, oldest first, unpaged", export_cdr,
          query=CdrFilter, response_schema={"type": "string"}, media_type="text/csv"),
    Route("GET", "/api/events", "listEvents", "The newest matching events, oldest first", list_events,
          query=EventsQuery, response=EventList),
    Route("GET", "/api/extensions/{extension}/away", "getExtensionAway", "Whether an extension is away",
          get_away, response=AwayStatus),
    Route("PUT", "/api/extensions/{extension}/away", "setExtensionAway", "Mark an extension away or back",
          put_away, role=Role.ADMIN, response=AwayStatus, problems=(400,),
          description='Body: {"away": true} or {"away": false}. While away, new calls to the extension go '
          "to the AI attendant at once when its 'away' trigger is 'ai' (else they ring as usual). "
          "Kept in memory by the node."),
    Route("GET", "/api/tools/audit", "listToolAudit", "The AI agents' tool calls, newest first",
          list_tool_audit, query=ToolAuditApiQuery, response=ToolAuditPage, problems=(404,),
          description="One row per tool call an agent made (arguments with personal data masked), read "
          "from admin.tool_audit_url. Page with cursor=next_cursor; since/until are UNIX seconds."),
    Route("GET", "/api/openapi.json", "getOpenapi", "This document", openapi_json,
          response_schema={"type": "object"}),
)  # fmt: skip


def _version() -> str:
    try:
        return metadata.version("smartpbx")
    except metadata.PackageNotFoundError:
        return "0+unknown"


# JSON request bodies, by (method, path): Route has no field for them, so they are added to the
# generated document here (the handler validates the body with the same model).
REQUEST_BODIES: dict[tuple[str, str], type[BaseModel]] = {
    ("PUT", "/api/extensions/{extension}/away"): AwayUpdate,
}


def openapi_document(routes: tuple[Route, ...] = ROUTES) -> dict[str, Any]:
    doc = build_openapi(
        routes,
        title="SmartPBX edge admin API",
        version=_version(),
        description="Live calls, media ports, registrations, CDRs, events and the agents' tool-call audit "
        "log of one edge node. "
        "Errors are RFC 9457 problem details.",
    )
    for (method, path), model in REQUEST_BODIES.items():
        operation = doc["paths"].get(path, {}).get(method.lower())
        if operation is None:
            continue
        schema = model.model_json_schema(mode="validation")
        doc["components"]["schemas"][model.__name__] = schema
        operation["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}},
        }
    return doc


def make_admin_app(
    node: NodeView,
    events: EventSource,
    cdr: CdrSource,
    config: AdminConfig,
    transcripts: TranscriptSource | None = None,
    away: AwaySource | None = None,
    tool_audit: ToolAuditSource | None = None,
) -> web.Application:
    auth = TokenAuthenticator(config.tokens)
    if not auth.configured:
        log.warning(
            "admin API: no tokens configured (admin.tokens); every route except /health and /ready "
            "will answer 401"
        )
    app = web.Application(middlewares=[_problems])
    app[CONTEXT] = AdminContext(
        node, events, cdr, auth, openapi_document(), transcripts or NoTranscripts(), away, tool_audit
    )
    for route in ROUTES:
        if route.method == "GET":
            app.router.add_get(route.path, _endpoint(route))  # and HEAD, which some probes use
        else:
            app.router.add_route(route.method, route.path, _endpoint(route))
    return app


async def start_admin(app: web.Application, host: str, port: int) -> web.AppRunner:
    """Serve ``app``; the caller owns the runner and calls ``await runner.cleanup()`` to stop.

    With ``port=0`` the bound port is ``runner.addresses[0][1]``.
    """
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner
