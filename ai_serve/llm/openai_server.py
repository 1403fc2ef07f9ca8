"""An OpenAI-compatible HTTP front for any chat backend (aiohttp): ``/v1/chat/completions``, ``/v1/models``.

It lets a CPU box serve the in-process llama.cpp backend to other processes with the same API the
production vLLM app speaks, so the ``openai`` backend and tools built on the OpenAI API can be run
against it offline. Supported request fields: ``messages``, ``max_tokens`` (or
``max_completion_tokens``), ``temperature``, ``stop``, ``seed``, ``stream``, ``response_format``
(``json_schema``, or ``json_object`` with an optional ``schema``), ``grammar`` (GBNF, as the llama.cpp
server names it), ``tools`` and ``tool_choice``. Bad requests get 400 with OpenAI's error body.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from .backends import BaseChatBackend, LlmError
from .types import ChatRequest, ChatResult

__all__ = ["make_openai_app", "parse_request"]

_BACKEND_KEY = web.AppKey("backend", BaseChatBackend)


def _error(status: int, message: str, kind: str) -> web.Response:
    return web.json_response({"error": {"message": message, "type": kind}}, status=status)


def parse_request(body: Mapping[str, Any]) -> tuple[ChatRequest, bool]:
    """(request, stream) from a chat completion body; ValueError names the bad field."""
    if not isinstance(body, Mapping):
        raise ValueError("the body must be a JSON object")
    schema: Mapping[str, Any] | None = None
    fmt = body.get("response_format")
    if fmt is not None:
        kind = fmt.get("type") if isinstance(fmt, Mapping) else None
        if kind == "json_schema":
            schema = fmt.get("json_schema", {}).get("schema")
            if not isinstance(schema, Mapping):
                raise ValueError("response_format.json_schema.schema must be an object")
        elif kind == "json_object":
            schema = fmt.get("schema") or {"type": "object"}
        elif kind != "text":
            raise ValueError(f"response_format.type must be text, json_object or json_schema, got {kind!r}")
    messages = body.get("messages")
    if not isinstance(messages, list):
        raise ValueError("messages must be a list")
    request = ChatRequest.create(
        messages,
        max_tokens=int(body.get("max_completion_tokens") or body.get("max_tokens") or 256),
        temperature=float(body.get("temperature", 1.0)),
        stop=body.get("stop"),
        json_schema=schema,
        grammar=body.get("grammar"),
        tools=body.get("tools"),
        tool_choice=body.get("tool_choice") or "auto",
        seed=body.get("seed"),
    )
    return request, bool(body.get("stream", False))


def _completion(result: ChatResult, model: str) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": result.text or None}
    if result.tool_calls:
        message["tool_calls"] = [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
            for c in result.tool_calls
        ]
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": result.finish_reason}],
        "usage": {
            "prompt_tokens": result.usage.prompt_tokens,
            "completion_tokens": result.usage.completion_tokens,
            "total_tokens": result.usage.prompt_tokens + result.usage.completion_tokens,
        },
    }


def _chunk(cid: str, model: str, delta: dict[str, Any], finish: str | None) -> bytes:
    data = {
        "id": cid,
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n".encode()


async def _chat_completions(http: web.Request) -> web.StreamResponse:
    backend = http.app[_BACKEND_KEY]
    try:
        request, stream = parse_request(await http.json())
    except (ValueError, TypeError, AttributeError) as e:
        return _error(400, str(e), "invalid_request_error")
    model = backend.model_name
    if not stream:
        try:
            result = await backend.complete(request)
        except ValueError as e:
            return _error(400, str(e), "invalid_request_error")
        except LlmError as e:
            return _error(503 if e.retryable else 500, str(e), "server_error")
        return web.json_response(_completion(result, model))
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    await response.prepare(http)
    cid = f"chatcmpl-{uuid.uuid4().hex}"
    await response.write(_chunk(cid, model, {"role": "assistant"}, None))
    try:
        async for delta in backend.stream_request(request):
            await response.write(_chunk(cid, model, {"content": delta}, None))
        await response.write(_chunk(cid, model, {}, "stop"))
    except (LlmError, ValueError) as e:
        # Headers are sent: report in-band, as OpenAI-compatible servers do.
        await response.write(f"data: {json.dumps({'error': {'message': str(e)}})}\n\n".encode())
    await response.write(b"data: [DONE]\n\n")
    await response.write_eof()
    return response


async def _models(http: web.Request) -> web.Response:
    name = http.app[_BACKEND_KEY].model_name
    return web.json_response(
        {"object": "list", "data": [{"id": name, "object": "model", "owned_by": "smartpbx"}]}
    )


def make_openai_app(backend: BaseChatBackend) -> web.Application:
    """An aiohttp application serving ``backend`` under ``/v1``; the caller runs and closes it."""
    app = web.Application()
    app[_BACKEND_KEY] = backend
    app.router.add_post("/v1/chat/completions", _chat_completions)
    app.router.add_get("/v1/models", _models)
    return app
