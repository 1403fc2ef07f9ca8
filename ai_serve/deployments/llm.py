"""The LLM role as a Ray Serve deployment: OpenAI-style chat, whole or streamed.

Callers (the attendant, the IVR dialog, RAG answers)::

    result = ChatResult.from_dict(await handle.chat.remote(messages, max_tokens=64, json_schema=s))
    async for delta in handle.options(stream=True).stream.remote(messages, max_tokens=64):
        ...

Backends by config (:class:`LlmOptions`):

- ``llama-cpp``: the model runs inside this replica (SmolLM2-135M on CPU by default; a bigger GGUF
  with ``device: cuda`` offloads every layer to the GPU of a CUDA build).
- ``openai``: this replica is a thin client of an OpenAI-compatible server. In production that is the
  vLLM app built by :func:`ai_serve.llm.vllm_app.build_vllm_app` (Ray Serve LLM), which owns the GPUs.

No ``@serve.batch`` here, by design: llama.cpp decodes one sequence at a time (batching would only
queue), and vLLM batches continuously across requests itself, at the token level, which beats any
request-level batch this layer could form. ``max_ongoing_requests`` bounds the queue instead.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from typing import Any, Literal, Unpack

from pydantic import BaseModel, ConfigDict, Field, model_validator
from ray import serve

from ..llm.backends import BaseChatBackend, create_chat_backend
from ..llm.types import ChatOptions, ChatRequest, Message, StreamOptions

__all__ = ["LlmDeployment", "LlmOptions"]

_LOG = logging.getLogger(__name__)


class LlmOptions(BaseModel):
    """Constructor arguments of :class:`LlmDeployment` (the ``llm`` builder args)."""

    model_config = ConfigDict(extra="forbid")

    backend: Literal["llama-cpp", "openai"] = "llama-cpp"
    model_path: str | None = None  # llama-cpp: a GGUF file (None: SmolLM2-135M-Instruct, packaged)
    device: Literal["cpu", "cuda"] = "cpu"  # llama-cpp: "cuda" offloads all layers (CUDA build)
    n_ctx: int = Field(2048, ge=256)
    n_threads: int = Field(1, ge=0)  # llama-cpp: match num_cpus of the replica; 0 lets llama.cpp choose
    base_url: str | None = None  # openai: e.g. http://localhost:8000/v1 (the vLLM Serve app)
    model: str | None = None  # openai: the model id the server knows
    api_key_env: str | None = None  # openai: environment variable holding the key
    timeout_s: float = Field(60.0, gt=0)
    grammar_field: Literal["grammar", "structured_outputs", "guided_grammar"] = "grammar"

    @model_validator(mode="after")
    def _check(self) -> LlmOptions:
        if self.backend == "openai" and not (self.base_url and self.model):
            raise ValueError("the openai backend needs base_url and model")
        return self

    def create(self) -> BaseChatBackend:
        if self.backend == "llama-cpp":
            return create_chat_backend(
                "llama-cpp",
                model_path=self.model_path,
                n_ctx=self.n_ctx,
                n_threads=self.n_threads,
                n_gpu_layers=-1 if self.device == "cuda" else 0,
            )
        return create_chat_backend(
            "openai",
            base_url=self.base_url,
            model=self.model,
            api_key_env=self.api_key_env,
            timeout_s=self.timeout_s,
            grammar_field=self.grammar_field,
        )


@serve.deployment(name="LlmDeployment", ray_actor_options={"num_cpus": 1}, max_ongoing_requests=16)
class LlmDeployment:
    """A :class:`~ai_serve.llm.ChatBackend` behind ``chat`` (a ChatResult dict) and ``stream`` (deltas)."""

    def __init__(self, options: dict[str, Any] | None = None) -> None:
        self.options = LlmOptions.model_validate(options or {})
        self.backend = self.options.create()
        _LOG.info("LLM replica ready: %s (%s)", self.backend.model_name, self.options.backend)

    def info(self) -> dict[str, Any]:
        stats = self.backend.stats
        return {
            "model": self.backend.model_name,
            "backend": self.options.backend,
            "calls": stats.calls,
            "errors": stats.errors,
            "tokens_per_s": stats.tokens_per_s,
            "last_first_token_s": stats.last_first_token_s,
        }

    async def chat(self, messages: Sequence[Message], **options: Unpack[ChatOptions]) -> dict[str, Any]:
        """A :class:`~ai_serve.llm.ChatResult` as a dict (``ChatResult.from_dict`` restores it)."""
        return (await self.backend.complete(ChatRequest.create(messages, **options))).to_dict()

    async def stream(
        self, messages: Sequence[Message], **options: Unpack[StreamOptions]
    ) -> AsyncIterator[str]:
        """Text deltas as they are generated; call with ``handle.options(stream=True)``."""
        request = ChatRequest.for_stream(messages, **options)
        # A caller that hangs up or barges in cancels this generator: close the backend's at once
        # so that it stops generating.
        async with contextlib.aclosing(self.backend.stream_request(request)) as deltas:
            async for delta in deltas:
                yield delta

    def check_health(self) -> None:
        """Serve's health probe: a closed in-process model makes the replica restart."""
        if getattr(self.backend, "loaded", True) is False:
            raise RuntimeError("LLM model is not loaded")
