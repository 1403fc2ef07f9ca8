"""The model roles as their own Serve application: ``smartpbx-roles`` at ``/roles`` (ray_config.yaml).

Not at ``/v1``: Serve routes a request to the application with the longest matching route prefix,
and ``/v1`` would take the live streams (``/v1/calls/{id}/stream``) away from the ingress at ``/``.

Other Ray code (the pipelines, the attendant, a notebook) calls the roles through deployment
handles, e.g. ``serve.get_deployment_handle("LlmDeployment", app_name="smartpbx-roles")``; anything
else uses the small OpenAI-style HTTP gateway here:

Paths under the application's prefix (an OpenAI client's ``base_url`` is ``http://<serve>/roles/v1``):

==============================  ===============================================================
``POST /v1/embeddings``         ``{"input": str | [str], "kind": "query"|"passage"}`` → OpenAI shape
``POST /v1/chat/completions``   ``{"messages": [...], "max_tokens", "temperature", "stop",
                                "response_format": {"type": "json_schema", "json_schema": {...}}}``
``POST /v1/audio/speech``       ``{"input": str, "language": "en"|"ko"|...}`` → ``audio/wav`` 16 kHz
``POST /v1/audio/segments``     body: s16le 16 kHz mono PCM → ``[{"start", "end"}]`` (the VAD)
``POST /v1/knowledge/search``   ``{"query", "k", "language", "business_unit"}`` → the best
                                knowledge items with scores (the RetrieverDeployment)
``GET /v1/healthz``             which roles are up
==============================  ===============================================================

Streaming chat is for handles (``handle.options(stream=True).stream.remote(...)``), not this
gateway; in production the OpenAI-compatible LLM endpoint is vLLM's own (ai_serve/llm/vllm_app.py).
"""

# No ``from __future__ import annotations``: Serve pickles the gateway class by value and FastAPI
# must resolve the route annotations in the replica (see ai_serve/ingress.py).

import io
import os
import time
import wave
from typing import Any, Literal, cast

from fastapi import FastAPI, HTTPException, Request, Response
from pydantic import BaseModel, ConfigDict, Field
from ray import serve
from ray.serve import Application
from ray.serve.deployment import Deployment
from ray.serve.handle import DeploymentHandle

from .deployments.embeddings import EmbeddingDeployment, EmbeddingOptions
from .deployments.llm import LlmDeployment, LlmOptions
from .deployments.retriever import MAX_QUERY_CHARS, RetrieverDeployment, RetrieverOptions
from .deployments.tts import TtsDeployment, TtsOptions
from .deployments.vad import VadDeployment, VadOptions

__all__ = ["RolesArgs", "RolesGateway", "build_roles_app"]

MAX_PCM_BYTES = 16000 * 2 * 600  # /audio/segments: at most 10 minutes per request


class RolesArgs(BaseModel):
    """Builder arguments of the roles application (its ``args`` in ``ray_config.yaml``)."""

    model_config = ConfigDict(extra="forbid")

    embeddings: EmbeddingOptions = Field(default_factory=EmbeddingOptions)
    llm: LlmOptions = Field(default_factory=LlmOptions)
    tts: TtsOptions = Field(default_factory=TtsOptions)
    vad: VadOptions = Field(default_factory=VadOptions)
    # knowledge_base.path relative to where the app is built (the repo root for the run command)
    retriever: RetrieverOptions = Field(default_factory=RetrieverOptions)
    num_cpus: float = Field(0.1, ge=0, description="CPUs reserved per role replica (the config may override)")
    # deployment name -> its user_config, as ``deployments[].user_config`` of a Serve config file
    # (for code that builds the app itself, e.g. a benchmark turning the TTS cache off)
    user_configs: dict[str, dict[str, Any]] = Field(default_factory=dict)


class EmbeddingsRequest(BaseModel):
    input: str | list[str] = Field(min_length=1)
    kind: Literal["query", "passage"] = "passage"
    model: str | None = None  # accepted for OpenAI clients; the deployment's model answers


class ChatCompletionRequest(BaseModel):
    messages: list[dict[str, Any]] = Field(min_length=1)
    max_tokens: int = Field(256, ge=1, le=4096)
    temperature: float = Field(0.0, ge=0, le=2)
    stop: str | list[str] | None = None
    response_format: dict[str, Any] | None = None
    seed: int | None = None
    model: str | None = None


class KnowledgeSearchRequest(BaseModel):
    query: str = Field(min_length=1, max_length=MAX_QUERY_CHARS)
    k: int = Field(5, ge=1, le=50)
    language: str | None = None
    business_unit: str | None = None


class SpeechRequest(BaseModel):
    input: str = Field(min_length=1, max_length=4096)
    language: str | None = None


def _wav(pcm: bytes, rate: int) -> bytes:
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm)
    return out.getvalue()


def _json_schema(response_format: dict[str, Any] | None) -> dict[str, Any] | None:
    """OpenAI's ``response_format`` → the schema for constrained decoding (None: free text)."""
    if response_format is None or response_format.get("type") == "text":
        return None
    if response_format.get("type") == "json_object":
        return {"type": "object"}
    if response_format.get("type") == "json_schema":
        schema = (response_format.get("json_schema") or {}).get("schema")
        if isinstance(schema, dict):
            return schema
    raise HTTPException(400, "response_format must be text, json_object or json_schema with a schema")


app = FastAPI(title="SmartPBX AI roles")


@serve.deployment(name="RolesGateway", ray_actor_options={"num_cpus": 0.05}, max_ongoing_requests=100)
@serve.ingress(app)
class RolesGateway:
    def __init__(
        self,
        embeddings: DeploymentHandle[Any],
        llm: DeploymentHandle[Any],
        tts: DeploymentHandle[Any],
        vad: DeploymentHandle[Any],
        retriever: DeploymentHandle[Any],
    ) -> None:
        self.embeddings, self.llm, self.tts, self.vad = embeddings, llm, tts, vad
        self.retriever = retriever

    @app.get("/v1/healthz")
    async def healthz(self) -> dict[str, Any]:
        return {"status": "ok", "roles": ["embeddings", "llm", "tts", "vad", "retriever"]}

    @app.post("/v1/knowledge/search")
    async def knowledge_route(self, body: KnowledgeSearchRequest) -> dict[str, Any]:
        if not body.query.strip():
            raise HTTPException(400, "query must not be blank")
        hits = await self.retriever.search.remote(
            body.query, k=body.k, language=body.language, business_unit=body.business_unit
        )
        return {"object": "list", "data": hits}

    @app.post("/v1/embeddings")
    async def embeddings_route(self, body: EmbeddingsRequest) -> dict[str, Any]:
        texts = [body.input] if isinstance(body.input, str) else body.input
        if not all(texts):
            raise HTTPException(400, "every input must be a non-empty string")
        vectors = await self.embeddings.embed.remote(texts, body.kind)
        info = await self.embeddings.info.remote()
        return {
            "object": "list",
            "model": info.get("model"),
            "data": [
                {"object": "embedding", "index": i, "embedding": [float(x) for x in row]}
                for i, row in enumerate(vectors)
            ],
        }

    @app.post("/v1/chat/completions")
    async def chat_route(self, body: ChatCompletionRequest) -> dict[str, Any]:
        started = time.time()
        result = await self.llm.chat.remote(
            body.messages,
            max_tokens=body.max_tokens,
            temperature=body.temperature,
            stop=body.stop,
            json_schema=_json_schema(body.response_format),
            seed=body.seed,
        )
        message: dict[str, Any] = {"role": "assistant", "content": result["text"]}
        if result.get("tool_calls"):
            message["tool_calls"] = result["tool_calls"]
        return {
            "id": f"chatcmpl-{int(started * 1000)}",
            "object": "chat.completion",
            "created": int(started),
            "model": result.get("model"),
            "choices": [{"index": 0, "message": message, "finish_reason": result.get("finish_reason")}],
            "usage": result.get("usage") or {},
        }

    @app.post("/v1/audio/speech")
    async def speech_route(self, body: SpeechRequest) -> Response:
        pcm, rate = await self.tts.synthesize.remote(body.input, body.language)
        return Response(_wav(pcm, rate), media_type="audio/wav")

    @app.post("/v1/audio/segments")
    async def segments_route(self, request: Request) -> list[dict[str, float]]:
        pcm = await request.body()
        if not pcm or len(pcm) % 2 or len(pcm) > MAX_PCM_BYTES:
            raise HTTPException(400, f"body must be s16le 16 kHz mono PCM, 2..{MAX_PCM_BYTES} bytes, even")
        segments: list[dict[str, float]] = await self.vad.segments.remote(pcm)
        return segments


def build_roles_app(args: dict[str, Any] | None = None) -> Application:
    """The gateway bound to the role deployments; ``args`` as in :class:`RolesArgs`.

    A relative ``retriever.knowledge_base.path`` is made absolute here, where the app is built (the
    replicas' working directory is Ray's, not the repo)."""
    config = RolesArgs.model_validate(args or {})
    kb = config.retriever.knowledge_base
    if kb.path is not None and not os.path.isabs(kb.path):
        absolute = kb.model_copy(update={"path": os.path.abspath(kb.path)})
        config = config.model_copy(
            update={"retriever": config.retriever.model_copy(update={"knowledge_base": absolute})}
        )
    options: dict[str, Any] = {"ray_actor_options": {"num_cpus": config.num_cpus}}
    unknown = set(config.user_configs) - {d.name for d in _ROLE_DEPLOYMENTS}
    if unknown:
        raise ValueError(f"user_configs: no role deployment named {sorted(unknown)}")
    roles = [
        cast(Deployment, deployment)
        .options(**options, **_user_config(config.user_configs.get(cast(Deployment, deployment).name)))
        .bind(role.model_dump())
        for deployment, role in (
            (EmbeddingDeployment, config.embeddings),
            (LlmDeployment, config.llm),
            (TtsDeployment, config.tts),
            (VadDeployment, config.vad),
            (RetrieverDeployment, config.retriever),
        )
    ]
    return cast(Deployment, RolesGateway).bind(*roles)


_ROLE_DEPLOYMENTS: tuple[Deployment, ...] = tuple(
    cast(Deployment, d)
    for d in (EmbeddingDeployment, LlmDeployment, TtsDeployment, VadDeployment, RetrieverDeployment)
)


def _user_config(override: dict[str, Any] | None) -> dict[str, Any]:
    return {} if override is None else {"user_config": override}
