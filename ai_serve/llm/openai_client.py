"""The ``openai`` LLM backend: an HTTP client of any OpenAI-compatible ``/v1/chat/completions``.

This is how the rest of the AI layer reaches the production LLM: vLLM behind Ray Serve LLM
(:mod:`ai_serve.llm.vllm_app`, ``base_url`` = the Serve HTTP address + ``/v1``), and equally a
llama.cpp server, :mod:`ai_serve.llm.openai_server` or a hosted API.

Structured output: ``json_schema`` is sent as ``response_format={"type": "json_schema", ...}`` (OpenAI,
vLLM, llama.cpp server). GBNF grammars have no standard field, so ``grammar_field`` names the server's:
``grammar`` (llama.cpp server, ours), ``structured_outputs`` (vLLM >= 0.10) or ``guided_grammar``
(older vLLM). Streaming reads the server-sent events of ``stream: true``.

Errors: connection failures, timeouts, 408/429 and 5xx are :class:`LlmError` with ``retryable=True``;
other 4xx are not retryable.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import AsyncGenerator, Mapping
from typing import Any, Literal

import aiohttp

from .backends import BaseChatBackend, LlmError, register_chat_backend
from .types import ChatRequest, ChatResult, ToolCall, Usage

__all__ = ["OpenAIChatBackend", "request_body"]

GrammarField = Literal["grammar", "structured_outputs", "guided_grammar"]
_RETRYABLE = frozenset({408, 409, 429})


def request_body(
    request: ChatRequest, model: str, *, stream: bool, grammar_field: GrammarField
) -> dict[str, Any]:
    """The JSON body of ``POST /v1/chat/completions`` for ``request``."""
    body: dict[str, Any] = {
        "model": model,
        "messages": [dict(m) for m in request.messages],
        "max_tokens": request.max_tokens,
        "temperature": request.temperature,
        "stream": stream,
    }
    if request.stop:
        body["stop"] = list(request.stop)
    if request.seed is not None:
        body["seed"] = request.seed
    if request.json_schema is not None:
        body["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": "answer", "schema": dict(request.json_schema), "strict": True},
        }
    if request.grammar is not None:
        if grammar_field == "structured_outputs":
            body["structured_outputs"] = {"grammar": request.grammar}
        else:
            body[grammar_field] = request.grammar
    if request.tools:
        body["tools"] = [dict(t) for t in request.tools]
        body["tool_choice"] = (
            dict(request.tool_choice) if isinstance(request.tool_choice, Mapping) else request.tool_choice
        )
    return body


def _parse_result(data: Mapping[str, Any], model: str, latency: float) -> ChatResult:
    try:
        choice = data["choices"][0]
        message = choice["message"]
        calls = tuple(
            ToolCall(
                c.get("id") or f"call_{i}", c["function"]["name"], c["function"].get("arguments") or "{}"
            )
            for i, c in enumerate(message.get("tool_calls") or ())
        )
        usage = data.get("usage") or {}
        return ChatResult(
            text=message.get("content") or "",
            finish_reason=choice.get("finish_reason") or ("tool_calls" if calls else "stop"),
            model=data.get("model") or model,
            usage=Usage(int(usage.get("prompt_tokens", 0)), int(usage.get("completion_tokens", 0))),
            tool_calls=calls,
            latency_s=latency,
        )
    except (KeyError, IndexError, TypeError) as e:
        raise LlmError(f"malformed chat completion from the server: {e!r} in {str(data)[:200]}") from e


@register_chat_backend("openai")
class OpenAIChatBackend(BaseChatBackend):
    """Chat completions over HTTP; one aiohttp session per backend, opened on first use."""

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key: str | None = None,
        api_key_env: str | None = None,
        timeout_s: float = 60.0,
        grammar_field: GrammarField = "grammar",
        headers: Mapping[str, str] | None = None,
    ) -> None:
        """``base_url`` ends before ``/chat/completions`` (e.g. ``http://serve:8000/v1``); the key is
        ``api_key`` or read from the environment variable ``api_key_env`` (keep keys out of config)."""
        super().__init__()
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must be an http(s) URL, got {base_url!r}")
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.grammar_field = grammar_field
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        key = api_key if api_key is not None else (os.environ.get(api_key_env) if api_key_env else None)
        self._headers = {"Content-Type": "application/json", **(headers or {})}
        if key:
            self._headers["Authorization"] = f"Bearer {key}"
        self._session: aiohttp.ClientSession | None = None

    @property
    def model_name(self) -> str:
        return self.model

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(headers=self._headers, timeout=self.timeout)
        return self._session

    async def _check(self, response: aiohttp.ClientResponse) -> None:
        if response.status < 400:
            return
        detail = (await response.text())[:300]
        retryable = response.status in _RETRYABLE or response.status >= 500
        raise LlmError(f"{self.base_url}: HTTP {response.status}: {detail}", retryable=retryable)

    async def _chat_impl(self, request: ChatRequest) -> ChatResult:
        t0 = time.perf_counter()
        body = request_body(request, self.model, stream=False, grammar_field=self.grammar_field)
        try:
            async with self._http().post(f"{self.base_url}/chat/completions", json=body) as response:
                await self._check(response)
                data = await response.json()
        except (aiohttp.ClientError, TimeoutError) as e:
            raise LlmError(f"{self.base_url}: {type(e).__name__}: {e}", retryable=True) from e
        return _parse_result(data, self.model, time.perf_counter() - t0)

    async def _stream_impl(self, request: ChatRequest) -> AsyncGenerator[str, None]:
        body = request_body(request, self.model, stream=True, grammar_field=self.grammar_field)
        try:
            async with self._http().post(f"{self.base_url}/chat/completions", json=body) as response:
                await self._check(response)
                async for raw in response.content:
                    line = raw.decode("utf-8").strip()
                    if not line.startswith("data:"):
                        continue  # blank separators, comments, "event:" lines
                    payload = line[5:].strip()
                    if payload == "[DONE]":
                        return
                    chunk = json.loads(payload)
                    if "error" in chunk:
                        raise LlmError(f"{self.base_url}: error in stream: {chunk['error']}")
                    for choice in chunk.get("choices", ()):
                        delta = (choice.get("delta") or {}).get("content")
                        if delta:
                            yield delta
        except (aiohttp.ClientError, TimeoutError) as e:
            raise LlmError(f"{self.base_url}: {type(e).__name__}: {e}", retryable=True) from e

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
