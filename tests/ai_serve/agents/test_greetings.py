"""The greeting cache (ai_serve/agents/greetings.py) with espeak-ng as the synthesizer: one synthesis
per (extension, language) and text, shared by concurrent first calls, failures not cached; a hit is
what makes the first audio of a call go out at once (its time is printed, not asserted)."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from ai_serve.agents.attendant_config import Language, parse_attendant_config
from ai_serve.agents.greetings import GreetingCache, configured_greetings, to_16k
from ai_serve.eval.speech import ESPEAK

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.skipif(ESPEAK is None, reason="needs espeak-ng (apt-get install espeak-ng)"),
]


class Espeak:
    """espeak-ng at its native 22.05 kHz (the cache resamples), counting requests; can be made to fail."""

    def __init__(self) -> None:
        from ai_serve.tts.backends import TtsConfig, VoiceRouter, VoiceSpec

        voices = {"en": VoiceSpec(backend="espeak-ng"), "ko": VoiceSpec(backend="espeak-ng", voice="ko")}
        self.router = VoiceRouter(TtsConfig(voices=voices, output_rate=22050))
        self.calls: list[str] = []
        self.fail = False

    async def __call__(self, text: str, language: Language) -> tuple[bytes, int]:
        self.calls.append(text)
        await asyncio.sleep(0.05)  # let concurrent callers pile up on the first request
        if self.fail:
            raise RuntimeError("TTS replica unavailable")
        return await asyncio.to_thread(self.router.synthesize, text, language)


async def test_a_greeting_is_synthesized_once_and_reused() -> None:
    tts = Espeak()
    cache = GreetingCache(tts)
    text = "Hello, you have reached the clinic. How can I help?"
    first, second, third = await asyncio.gather(*(cache.get("201", "en", text) for _ in range(3)))
    assert tts.calls == [text] and cache.syntheses == 1
    assert first is second is third and first.text == text
    assert 2.0 < first.seconds < 6.0  # 16 kHz after resampling espeak's 22.05 kHz
    t0 = time.perf_counter()
    again = await cache.get("201", "en", text)
    hit_ms = 1000 * (time.perf_counter() - t0)
    print(
        f"greeting cache: first synthesis for {first.seconds:.1f} s of audio, then a hit in {hit_ms:.3f} ms"
    )
    assert again is first and cache.hits == 1 and tts.calls == [text]
    korean = await cache.get("201", "ko", "안녕하세요")
    assert korean is not first and len(tts.calls) == 2  # per language
    changed = await cache.get("201", "en", "Hello, you have reached the dental clinic.")
    assert changed.text != text and len(tts.calls) == 3  # a new text (new config) is synthesized anew


async def test_a_failed_synthesis_is_not_cached() -> None:
    tts = Espeak()
    cache = GreetingCache(tts)
    tts.fail = True
    with pytest.raises(RuntimeError, match="unavailable"):
        await cache.get("201", "en", "Hello")
    assert cache.cached("201", "en", "Hello") is None
    tts.fail = False
    assert (await cache.get("201", "en", "Hello")).pcm
    assert len(tts.calls) == 2


async def test_warm_synthesizes_the_configured_extensions() -> None:
    config = parse_attendant_config(
        {"extensions": {"201": {"business": {"en": "the clinic"}}, "301": {"language": "ko"}}}
    )
    items = configured_greetings(config)
    assert [(key, language) for key, language, _ in items] == [("201", "en"), ("301", "ko")]
    tts = Espeak()
    cache = GreetingCache(tts)
    assert await cache.warm(items) == 2
    for key, language, text in items:
        assert cache.cached(key, language, text) is not None
    tts.fail = True
    assert await cache.warm([("9", "en", "Hi")]) == 0  # logged, not raised
    await cache.close()


def test_resampling_keeps_the_duration() -> None:
    tone = (np.sin(np.arange(22050) * 2 * np.pi * 440 / 22050) * 8000).astype("<i2").tobytes()
    out = to_16k(tone, 22050)
    assert abs(len(out) // 2 - 16000) <= 2
    assert to_16k(b"\x01\x00" * 10, 16000) == b"\x01\x00" * 10
