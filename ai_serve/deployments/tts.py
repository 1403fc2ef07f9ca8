"""The text-to-speech role as a Ray Serve deployment: text in, s16le 16 kHz mono PCM out.

Callers (the attendant playing an answer into a leg)::

    pcm, rate = await handle.synthesize.remote("Thank you for calling.", "en")
    async for chunk in handle.options(stream=True).stream.remote(answer_text, "ko"):
        send(chunk["pcm"])  # one sentence at a time: playback starts after the first one

The voice per language comes from config (:class:`TtsOptions`, by default en → Piper, ko and every
other language → espeak-ng). Synthesis runs in one worker thread, off the replica's event loop.

``synthesize`` is a ``@serve.batch`` method (knobs in ``user_config``, see :meth:`reconfigure`); the
speech of a text it has said before comes from a per-replica cache (:mod:`ai_serve.tts.cache`,
``cache_mb``), since a phone system says the same greetings and prompts all day. Piper
and espeak-ng synthesize one text at a time, so on CPU a batch runs sequentially and batching only
bounds the queue; a GPU voice with ``device: cuda`` is where one batched forward pass would go.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from ray import serve

from ..tts.backends import TtsChunk, TtsConfig, VoiceRouter
from ..tts.cache import PcmCache

__all__ = ["TtsBatchConfig", "TtsDeployment", "TtsOptions"]

_LOG = logging.getLogger(__name__)
MAX_TEXT_CHARS = 5000


class TtsOptions(TtsConfig):
    """Constructor arguments of :class:`TtsDeployment` (the ``tts`` builder args): voices per
    language, each naming its backend (``piper``/``espeak-ng``), model path and device."""


class TtsBatchConfig(BaseModel):
    """The ``user_config`` of the deployment; changed live by ``serve deploy`` without a restart."""

    model_config = ConfigDict(extra="forbid")

    max_batch_size: int = Field(4, ge=1)
    batch_wait_timeout_s: float = Field(0.005, ge=0)
    cache_mb: float = Field(32.0, ge=0)  # speech of repeated texts (greetings, prompts); 0: off


def _check_text(text: str) -> None:
    if not isinstance(text, str):
        raise TypeError(f"text must be a string, got {type(text).__name__}")
    if len(text) > MAX_TEXT_CHARS:
        raise ValueError(f"text is {len(text)} characters; at most {MAX_TEXT_CHARS} per request")


_END = object()


@serve.deployment(
    name="TtsDeployment",
    ray_actor_options={"num_cpus": 1},
    max_ongoing_requests=16,
    user_config=TtsBatchConfig().model_dump(),
)
class TtsDeployment:
    """A :class:`~ai_serve.tts.VoiceRouter` behind ``synthesize`` (whole) and ``stream`` (per sentence)."""

    def __init__(self, options: dict[str, Any] | None = None) -> None:
        self.options = TtsOptions.model_validate(options or {})
        self.router = VoiceRouter(self.options)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tts")
        self.cache = PcmCache(int(TtsBatchConfig().cache_mb * 2**20))
        _LOG.info("TTS replica ready: %s", ", ".join(b.name for b in self.router.backends))

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Apply ``user_config`` (batching knobs) at start and on every config change."""
        config = TtsBatchConfig.model_validate(user_config or {})
        self._synthesize_batched.set_max_batch_size(config.max_batch_size)  # type: ignore[attr-defined,misc]
        self._synthesize_batched.set_batch_wait_timeout_s(config.batch_wait_timeout_s)  # type: ignore[attr-defined,misc]
        self.cache.resize(int(config.cache_mb * 2**20))

    @property
    def sample_rate(self) -> int:
        return self.options.output_rate

    async def synthesize(self, text: str, language: str | None = None) -> tuple[bytes, int]:
        """The whole text as s16le mono PCM and its sample rate (16 kHz by default)."""
        _check_text(text)
        cached = self.cache.get(text, language)
        if cached is not None:
            return cached
        # Serve's batch wrapper takes one request's arguments; its stubs only know the batch signature.
        result = await self._synthesize_batched(text, language)  # type: ignore[call-arg,misc]
        if isinstance(result, Exception):  # this text's own failure, passed through the batch
            raise result
        pcm, rate = result
        self.cache.put(text, language, pcm, rate)
        return pcm, rate

    def _synthesize_group(self, texts: list[str], languages: list[str | None]) -> list[Any]:
        out: list[Any] = []
        for text, language in zip(texts, languages, strict=True):
            try:
                out.append(self.router.synthesize(text, language))
            except Exception as e:
                # One bad text must not fail the others of its batch: synthesize() raises it.
                _LOG.warning("TTS failed on %d characters (%s)", len(text), language, exc_info=True)
                out.append(e)
        return out

    # Ray's stubs type batch handlers as one-argument functions; Serve batches each argument.
    @serve.batch(max_batch_size=4, batch_wait_timeout_s=0.005)  # type: ignore[arg-type]
    async def _synthesize_batched(  # type: ignore[misc]
        self, texts: list[str], languages: list[str | None]
    ) -> list[Any]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._synthesize_group, texts, languages)

    async def stream(
        self, text: str, language: str | None = None, voice: str | None = None
    ) -> AsyncIterator[dict[str, Any]]:
        """``{"pcm", "sample_rate", "text"}`` per sentence; call with ``handle.options(stream=True)``."""
        _check_text(text)
        chunks: Iterator[TtsChunk] = self.router.stream(text, language, voice)
        loop = asyncio.get_running_loop()
        try:
            while True:
                # Each sentence is synthesized in the worker thread; the loop stays free meanwhile.
                chunk = await loop.run_in_executor(self._executor, next, chunks, _END)
                if chunk is _END:
                    return
                assert isinstance(chunk, TtsChunk)
                yield {"pcm": chunk.pcm, "sample_rate": chunk.sample_rate, "text": chunk.text}
        finally:
            close = getattr(chunks, "close", None)
            if close is not None:
                await loop.run_in_executor(self._executor, close)

    def check_health(self) -> None:
        """Serve's health probe: a closed voice makes the replica restart."""
        for backend in self.router.backends:
            if getattr(backend, "_voice", True) is None:
                raise RuntimeError(f"TTS voice {backend.name} is not loaded")

    def __del__(self) -> None:
        executor = getattr(self, "_executor", None)
        if executor is not None:
            executor.shutdown(wait=False)
