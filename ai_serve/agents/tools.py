"""Tool calling for the AI agents: business systems (CRM, billing, orders) behind HTTP, as LLM tools.

:class:`ToolRegistry` holds the tools of ``config/tools.yaml`` (see :mod:`ai_serve.agents.tool_schema`
for the file and its load-time checks), tells which an agent may use, lists them in the OpenAI
function-calling format and calls them.

``await registry.call(name, arguments, who=CallerContext(...))`` never raises for a tool failure: it
returns a :class:`ToolResult` whose ``error_kind`` says what went wrong and whose ``spoken`` is a sentence
in the conversation's language that the agent says as it is ("I can't reach the billing system right
now."), so a failure is never hidden from the caller behind an invented answer. Failure kinds:

- ``not_allowed``: unknown tool, or neither the agent nor the intent is allowed to use it;
- ``bad_arguments``: the arguments are not JSON or fail the tool's JSON Schema (the system is not called);
- ``timeout``: no full answer within ``timeout_s`` (per attempt);
- ``unreachable``: connection refused or reset, DNS failure;
- ``http_error``: a non-2xx status (``status`` holds it);
- ``bad_response``: a 2xx whose body is not JSON, is too large, or lacks a declared ``result`` field.

GET tools with ``retries`` are tried again after a timeout, an unreachable system or a 5xx, with a short
linear backoff; other methods are never repeated (they may not be idempotent). Every call, allowed or
not, is handed to the registry's recorder (the audit log, :mod:`ai_serve.agents.audit`).

All calls share one ``aiohttp.ClientSession`` (connection reuse to the same systems), opened on the
first call and closed by :meth:`ToolRegistry.aclose`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol
from urllib.parse import quote

import aiohttp

from ai_serve.agents.tool_schema import (
    PreparedTool,
    ToolConfigError,
    ToolSpec,
    load_tools,
    openai_function_name,
)

__all__ = [
    "CallRecorder",
    "CallerContext",
    "ErrorKind",
    "ToolConfigError",
    "ToolRegistry",
    "ToolResult",
    "spoken_failure",
]

log = logging.getLogger("ai_serve.agents.tools")

ErrorKind = Literal["not_allowed", "bad_arguments", "timeout", "unreachable", "http_error", "bad_response"]

MAX_RESPONSE_BYTES = 1 << 20
_QUERY_METHODS = frozenset({"GET", "DELETE"})


@dataclass(frozen=True, slots=True)
class CallerContext:
    """Who is calling a tool: the call, the agent, the current intent, the caller, the language."""

    call_id: str
    agent: str
    intent: str | None = None
    caller: str | None = None
    language: str = "en"


@dataclass(frozen=True, slots=True)
class ToolResult:
    """The outcome of one tool call; ``ok`` is False exactly when ``error_kind`` is set.

    ``data`` is the JSON answer (only the ``result`` fields when the tool declares them); ``spoken`` is the
    sentence to say on failure. ``status`` is the last HTTP status, None when no answer came.
    """

    tool: str
    ok: bool
    status: int | None
    data: Any
    error_kind: ErrorKind | None
    latency_ms: float
    spoken: str | None = None
    attempts: int = 0
    detail: str | None = None

    def for_llm(self) -> str:
        """The content of the ``tool`` message that goes back to the LLM."""
        if self.ok:
            return json.dumps({"ok": True, "data": self.data}, ensure_ascii=False)
        body = {"ok": False, "error": self.error_kind, "status": self.status, "say": self.spoken}
        if self.error_kind == "bad_arguments":
            body["detail"] = self.detail  # which rule failed (no values), so the model can fix its call
        return json.dumps(body, ensure_ascii=False)


class CallRecorder(Protocol):
    """Receives every call (the audit log); must not block (it runs on the event loop)."""

    def record(self, tool: str, arguments: Any, who: CallerContext, result: ToolResult) -> None: ...


# -------------------------------------------------------------------------------- spoken failures
_SENTENCES: dict[str, dict[str, str]] = {
    "en": {
        "not_allowed": "I'm not able to use {system} for this request.",
        "bad_arguments": "I don't have the right details to ask {system}, so I couldn't do that.",
        "timeout": "{System} is taking too long to answer right now.",
        "unreachable": "I can't reach {system} right now.",
        "http_error": "{System} returned an error, so I couldn't complete that.",
        "http_404": "{System} couldn't find a matching record.",
        "bad_response": "{System} sent an answer I couldn't understand.",
    },
    "ko": {
        "not_allowed": "이 요청에는 {system} 사용 권한이 없습니다.",
        "bad_arguments": "{system}에 요청하려면 정보가 더 필요합니다.",
        "timeout": "{system}의 응답이 늦어지고 있습니다. 잠시 후 다시 시도해 주세요.",
        "unreachable": "지금은 {system}에 연결할 수 없습니다.",
        "http_error": "{system}에서 오류가 발생해 처리하지 못했습니다.",
        "http_404": "{system}에서 해당 정보를 찾을 수 없습니다.",
        "bad_response": "{system}의 응답을 이해할 수 없습니다.",
    },
}
_UNKNOWN_SYSTEM = {"en": "that system", "ko": "해당 시스템"}


def _language(language: str) -> str:
    base = language.lower().split("-")[0].split("_")[0]
    return base if base in _SENTENCES else "en"


def spoken_failure(kind: ErrorKind, spec: ToolSpec | None, language: str, status: int | None = None) -> str:
    """The sentence the agent says for a failure of ``spec`` ("I can't reach the billing system ...")."""
    lang = _language(language)
    if spec is None:
        system = _UNKNOWN_SYSTEM[lang]
    elif spec.system is not None:
        system = spec.system.ko if lang == "ko" else spec.system.en
    else:
        prefix = spec.name.split(".")[0]
        system = f"{prefix} 시스템" if lang == "ko" else f"the {prefix} system"
    key = "http_404" if kind == "http_error" and status == 404 else kind
    return _SENTENCES[lang][key].format(system=system, System=system[:1].upper() + system[1:])


class _Failure(Exception):
    def __init__(self, kind: ErrorKind, detail: str, status: int | None = None) -> None:
        super().__init__(detail)
        self.kind: ErrorKind = kind
        self.detail = detail
        self.status = status

    @property
    def retryable(self) -> bool:
        return self.kind in ("timeout", "unreachable") or (self.status is not None and self.status >= 500)


# ------------------------------------------------------------------------------------- registry
class ToolRegistry:
    """The agents' tools; see the module docstring."""

    def __init__(self, tools: Sequence[PreparedTool], *, recorder: CallRecorder | None = None) -> None:
        self._tools: dict[str, PreparedTool] = {t.spec.name: t for t in tools}
        self._by_function = {openai_function_name(name): name for name in self._tools}
        self._recorder = recorder
        self._session: aiohttp.ClientSession | None = None
        self._closed = False

    @classmethod
    def from_yaml(
        cls,
        path: str | Path,
        *,
        environ: Mapping[str, str] | None = None,
        recorder: CallRecorder | None = None,
    ) -> ToolRegistry:
        """Load ``path``; raises :class:`ToolConfigError` naming each bad tool and field."""
        return cls(load_tools(path, os.environ if environ is None else environ), recorder=recorder)

    @property
    def names(self) -> list[str]:
        return list(self._tools)

    def spec(self, name: str) -> ToolSpec | None:
        """The tool called ``name`` (dotted, or its OpenAI function name), None if there is none."""
        tool = self._tools.get(self._by_function.get(name, name))
        return None if tool is None else tool.spec

    def allows(self, name: str, who: CallerContext) -> bool:
        spec = self.spec(name)
        if spec is None:
            return False
        agents = spec.allowed.agents
        return (
            "*" in agents
            or who.agent in agents
            or (who.intent is not None and who.intent in spec.allowed.intents)
        )

    def for_agent(self, agent: str, intent: str | None = None) -> list[ToolSpec]:
        """The tools ``agent`` may call (with ``intent``: also those allowed for that intent)."""
        who = CallerContext(call_id="", agent=agent, intent=intent)
        return [t.spec for t in self._tools.values() if self.allows(t.spec.name, who)]

    def openai_tools(self, agent: str, intent: str | None = None) -> list[dict[str, Any]]:
        """The ``tools`` list of an OpenAI chat-completions request for ``agent`` (dots become ``__``)."""
        return [
            {
                "type": "function",
                "function": {
                    "name": spec.function_name,
                    "description": spec.description,
                    "parameters": spec.parameters,
                },
            }
            for spec in self.for_agent(agent, intent)
        ]

    async def call(self, tool: str, arguments: Mapping[str, Any] | str, *, who: CallerContext) -> ToolResult:
        """Call ``tool`` with ``arguments`` (a mapping, or the LLM's JSON string); never raises for a
        failure of the tool, see the module docstring."""
        start = time.perf_counter()
        prepared = self._tools.get(self._by_function.get(tool, tool))
        name = tool if prepared is None else prepared.spec.name
        args: Any = arguments
        attempts = 0
        try:
            if prepared is None:
                raise _Failure("not_allowed", f"unknown tool {tool!r}")
            if not self.allows(name, who):
                raise _Failure("not_allowed", f"agent {who.agent!r} / intent {who.intent!r} may not use it")
            args = _parse_arguments(arguments, prepared)
            data: Any = None
            status: int | None = None
            for attempt in range(prepared.spec.retries + 1):
                attempts += 1
                try:
                    status, data = await self._attempt(prepared, args, who)
                    break
                except _Failure as exc:
                    if not exc.retryable or attempt == prepared.spec.retries:
                        raise
                    log.info("%s: attempt %d failed (%s), retrying", name, attempts, exc.detail)
                    await asyncio.sleep(prepared.spec.retry_backoff_s * (attempt + 1))
            result = ToolResult(name, True, status, data, None, _ms(start), attempts=attempts)
        except _Failure as exc:
            spec = None if prepared is None else prepared.spec
            result = ToolResult(
                name,
                False,
                exc.status,
                None,
                exc.kind,
                _ms(start),
                spoken=spoken_failure(exc.kind, spec, who.language, exc.status),
                attempts=attempts,
                detail=exc.detail,
            )
        self._record(name, args, who, result)
        return result

    async def aclose(self) -> None:
        """Close the shared HTTP session; calls after this fail as ``unreachable``."""
        self._closed = True
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> ToolRegistry:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # --- internals ------------------------------------------------------------------------------

    def _record(self, name: str, args: Any, who: CallerContext, result: ToolResult) -> None:
        if self._recorder is None:
            return
        try:
            self._recorder.record(name, args, who, result)
        except Exception:
            log.exception("%s: recording the call in the audit log failed", name)

    def _http(self) -> aiohttp.ClientSession:
        if self._closed:
            raise _Failure("unreachable", "the tool registry is closed")
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None))
        return self._session

    async def _attempt(self, tool: PreparedTool, args: dict[str, Any], who: CallerContext) -> tuple[int, Any]:
        spec = tool.spec
        url, rest = _fill_url(tool.url, args)
        headers = {"Accept": "application/json", "X-Call-Id": who.call_id, **tool.headers}
        params = _query(rest) if spec.method in _QUERY_METHODS else None
        body = None if spec.method in _QUERY_METHODS else rest
        session = self._http()
        try:
            async with asyncio.timeout(spec.timeout_s):
                async with session.request(
                    spec.method, url, params=params, json=body, headers=headers
                ) as resp:
                    status = resp.status
                    raw = await _read_capped(resp)
        except TimeoutError:
            raise _Failure("timeout", f"no answer within {spec.timeout_s:g}s") from None
        except aiohttp.ClientConnectionError as exc:
            raise _Failure("unreachable", f"{type(exc).__name__}: {exc}") from None
        except aiohttp.ClientError as exc:
            raise _Failure("bad_response", f"{type(exc).__name__}: {exc}") from None
        except _Failure:
            raise
        except Exception as exc:  # a bug or an odd library error: still an answer, never an exception
            log.exception("%s: unexpected error calling %s", spec.name, spec.method)
            raise _Failure("unreachable", f"{type(exc).__name__}: {exc}") from None
        if not 200 <= status < 300:
            raise _Failure("http_error", f"HTTP {status}", status)
        if not raw.strip():
            return status, None
        try:
            payload = json.loads(raw)
        except ValueError:
            raise _Failure("bad_response", "the body is not JSON", status) from None
        return status, _extract(spec, payload, status)


def _ms(start: float) -> float:
    return round((time.perf_counter() - start) * 1000.0, 3)


def _parse_arguments(arguments: Mapping[str, Any] | str, tool: PreparedTool) -> dict[str, Any]:
    if isinstance(arguments, str):
        try:
            parsed = json.loads(arguments) if arguments.strip() else {}
        except ValueError as exc:
            raise _Failure("bad_arguments", f"arguments are not JSON: {exc}") from None
    else:
        parsed = dict(arguments)
    if not isinstance(parsed, dict):
        raise _Failure("bad_arguments", "arguments must be a JSON object")
    errors = sorted(tool.validator.iter_errors(parsed), key=lambda e: list(e.absolute_path))
    if errors:
        raise _Failure("bad_arguments", "; ".join(_schema_error(e) for e in errors[:3]))
    return parsed


def _schema_error(error: Any) -> str:
    """A jsonschema error without the offending value: the detail goes to the audit log, and a value
    that failed a phone pattern is still a phone number."""
    where = "/".join(map(str, error.absolute_path)) or "(arguments)"
    if error.validator in ("required", "additionalProperties", "dependentRequired"):
        return f"{where}: {error.message}"  # these name keys, not values
    rule = json.dumps(error.validator_value, ensure_ascii=False)
    return f"{where}: fails {error.validator} {rule}"


def _fill_url(template: str, args: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """Put path parameters into the URL (percent-encoded, so ``../`` cannot leave the path); the rest
    go to the query string or the body."""
    rest = dict(args)
    url = template
    for key, value in args.items():
        marker = "{" + key + "}"
        if marker in url:
            url = url.replace(marker, quote(_scalar(value), safe=""))
            rest.pop(key)
    return url, rest


def _scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict | list):
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    return str(value)


def _query(args: dict[str, Any]) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for key, value in args.items():
        if value is None:
            continue
        values = value if isinstance(value, list) else [value]
        out.extend((key, _scalar(v)) for v in values)
    return out


async def _read_capped(resp: aiohttp.ClientResponse) -> bytes:
    chunks: list[bytes] = []
    size = 0
    async for chunk in resp.content.iter_chunked(64 * 1024):
        size += len(chunk)
        if size > MAX_RESPONSE_BYTES:
            raise _Failure("bad_response", f"the body is larger than {MAX_RESPONSE_BYTES} bytes", resp.status)
        chunks.append(chunk)
    return b"".join(chunks)


def _extract(spec: ToolSpec, payload: Any, status: int) -> Any:
    """The declared ``result`` fields of ``payload`` (all of it when none are declared)."""
    if spec.result is None:
        return payload
    pointers = spec.result if isinstance(spec.result, dict) else {_last_token(p): p for p in spec.result}
    out: dict[str, Any] = {}
    for key, pointer in pointers.items():
        try:
            out[key] = _resolve(payload, pointer)
        except LookupError:
            raise _Failure("bad_response", f"the answer has no {pointer}", status) from None
    return out


def _last_token(pointer: str) -> str:
    return pointer.rsplit("/", 1)[-1].replace("~1", "/").replace("~0", "~")


def _resolve(document: Any, pointer: str) -> Any:
    """RFC 6901 JSON pointer lookup; LookupError when a step is missing."""
    node = document
    for raw in pointer.split("/")[1:]:
        token = raw.replace("~1", "/").replace("~0", "~")
        if isinstance(node, dict):
            node = node[token]
        elif isinstance(node, list) and token.isdigit():
            node = node[int(token)]
        else:
            raise LookupError(pointer)
    return node
