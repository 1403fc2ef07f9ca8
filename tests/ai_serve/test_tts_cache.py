"""The TTS speech cache (ai_serve/tts/cache.py): least recently used out first, bounded in bytes."""

from __future__ import annotations

import pytest

from ai_serve.tts.cache import PcmCache


def test_repeated_texts_come_from_the_cache_and_the_oldest_go_first() -> None:
    cache = PcmCache(max_bytes=400)
    assert cache.get("Hello.", "en") is None
    cache.put("Hello.", "en", b"a" * 100, 16000)
    cache.put("Hello.", "ko", b"b" * 100, 16000)  # another language is another entry
    assert cache.get("Hello.", "en") == (b"a" * 100, 16000)
    cache.put("Bye.", "en", b"c" * 100, 16000)
    cache.put("Again.", "en", b"d" * 100, 16000)  # 400 bytes: full
    assert cache.bytes == 400 and len(cache) == 4
    cache.put("More.", "en", b"e" * 100, 16000)  # evicts the least recently used: Hello./ko
    assert cache.get("Hello.", "ko") is None and cache.get("Hello.", "en") is not None
    assert cache.bytes == 400 and (cache.hits, cache.misses) == (2, 2)
    cache.put("Hello.", "en", b"f" * 50, 22050)  # replaced, not added
    assert cache.get("Hello.", "en") == (b"f" * 50, 22050) and cache.bytes == 350


def test_a_huge_text_is_not_kept_and_a_smaller_budget_evicts() -> None:
    cache = PcmCache(max_bytes=1000)
    cache.put("A long answer.", "en", b"x" * 300, 16000)  # more than a quarter of the budget
    assert len(cache) == 0
    for i in range(4):
        cache.put(f"t{i}", "en", b"y" * 200, 16000)
    cache.resize(450)
    assert len(cache) == 2 and cache.get("t3", "en") is not None and cache.get("t0", "en") is None
    cache.resize(0)
    cache.put("t9", "en", b"z", 16000)
    assert len(cache) == 0 and cache.bytes == 0
    with pytest.raises(ValueError, match="max_bytes"):
        PcmCache(-1)
