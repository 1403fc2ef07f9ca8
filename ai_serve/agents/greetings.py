"""Greetings synthesized once per (extension, language) and reused, so a call hears one at once.

The TTS takes about a second for a greeting on a CPU; the caller should hear the attendant within a
few hundred milliseconds of the hand-over. :class:`GreetingCache` keeps the PCM of each greeting text
by (extension, language): the first call (or :meth:`GreetingCache.warm` at startup) synthesizes it,
every later call gets the same bytes. Concurrent first calls share one synthesis; a failed one is
not cached (the next call tries again); a changed text (new config) is synthesized anew.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

from pbx_edge.ai_link.protocol import SAMPLE_RATE

from .attendant_config import AttendantConfig, Language

__all__ = ["Greeting", "GreetingCache", "Synthesize", "configured_greetings", "to_16k"]

_LOG = logging.getLogger(__name__)

Synthesize = Callable[[str, Language], Awaitable[tuple[bytes, int]]]


@dataclass(frozen=True, slots=True)
class Greeting:
    text: str
    pcm: bytes  # s16le mono 16 kHz

    @property
    def seconds(self) -> float:
        return len(self.pcm) / (2 * SAMPLE_RATE)


def to_16k(pcm: bytes, rate: int) -> bytes:
    """s16le mono at ``rate`` → 16 kHz (the wire's rate)."""
    if rate == SAMPLE_RATE or not pcm:
        return pcm
    import numpy as np
    import soxr  # type: ignore[import-untyped]  # no py.typed in the wheel

    samples = np.frombuffer(pcm[: len(pcm) // 2 * 2], dtype="<i2").astype(np.float32) / 32768.0
    out = np.asarray(soxr.resample(samples, rate, SAMPLE_RATE), dtype=np.float32)
    return bytes((np.clip(out, -1.0, 1.0) * 32767).astype("<i2").tobytes())


class GreetingCache:
    """(extension, language) → :class:`Greeting`; see the module docstring."""

    def __init__(self, synthesize: Synthesize) -> None:
        self._synthesize = synthesize
        self._done: dict[tuple[str, Language], Greeting] = {}
        self._running: dict[tuple[str, Language, str], asyncio.Task[Greeting]] = {}
        self.syntheses = 0  # TTS requests made (a hit makes none)
        self.hits = 0

    @property
    def size(self) -> int:
        return len(self._done)

    def cached(self, extension: str, language: Language, text: str) -> Greeting | None:
        found = self._done.get((extension, language))
        return found if found is not None and found.text == text else None

    async def get(self, extension: str, language: Language, text: str) -> Greeting:
        """The greeting's audio, synthesized at most once per text; raises what the TTS raised."""
        found = self.cached(extension, language, text)
        if found is not None:
            self.hits += 1
            return found
        key = (extension, language, text)
        task = self._running.get(key)
        if task is None:
            task = asyncio.create_task(self._make(extension, language, text), name=f"greeting-{extension}")
            self._running[key] = task
        # shield: one caller hanging up must not cancel the synthesis others wait for
        return await asyncio.shield(task)

    async def _make(self, extension: str, language: Language, text: str) -> Greeting:
        try:
            self.syntheses += 1
            pcm, rate = await self._synthesize(text, language)
            greeting = Greeting(text, to_16k(pcm, rate))
            self._done[(extension, language)] = greeting
            return greeting
        finally:
            self._running.pop((extension, language, text), None)

    async def warm(self, items: Iterable[tuple[str, Language, str]]) -> int:
        """Synthesize every (extension, language, text) not cached yet; returns how many are cached.
        Failures are logged, not raised (the first call will try again)."""
        results = await asyncio.gather(*(self.get(*item) for item in items), return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                _LOG.warning("greeting not synthesized: %r", result)
        return sum(not isinstance(r, BaseException) for r in results)

    async def close(self) -> None:
        """Cancel syntheses still running (the owner is going away)."""
        tasks = list(self._running.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def configured_greetings(config: AttendantConfig) -> list[tuple[str, Language, str]]:
    """(extension, language, text) of every listed extension in its own language."""
    return [
        (key, ext.language, config.greeting_text(ext, ext.language)) for key, ext in config.extensions.items()
    ]
