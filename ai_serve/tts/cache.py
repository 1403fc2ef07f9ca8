"""A least-recently-used cache of synthesized speech, bounded in bytes.

A phone system says the same sentences all day: greetings, "Is there anything else I can help you
with?", the IVR's menus and re-prompts. Synthesizing them once per replica takes them off the TTS
queue (a second on a loaded CPU) and makes them play at once. Keys are the exact text, the language
and the voice; answers that differ in a digit are different entries, so cached speech is only ever
the speech of that text.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

__all__ = ["PcmCache"]

Key = tuple[str, str | None]


@dataclass(frozen=True, slots=True)
class _Entry:
    pcm: bytes
    rate: int


class PcmCache:
    """``get``/``put`` of ``(pcm, rate)`` by ``(text, language)``; at most ``max_bytes`` of PCM kept
    (0 turns the cache off); a single text larger than a quarter of the budget is not kept."""

    def __init__(self, max_bytes: int) -> None:
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0, got {max_bytes}")
        self.max_bytes = max_bytes
        self.bytes = 0
        self.hits = 0
        self.misses = 0
        self._entries: OrderedDict[Key, _Entry] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, text: str, language: str | None) -> tuple[bytes, int] | None:
        entry = self._entries.get((text, language))
        if entry is None:
            self.misses += 1
            return None
        self._entries.move_to_end((text, language))
        self.hits += 1
        return entry.pcm, entry.rate

    def put(self, text: str, language: str | None, pcm: bytes, rate: int) -> None:
        size = len(pcm)
        if size * 4 > self.max_bytes:
            return
        old = self._entries.pop((text, language), None)
        if old is not None:
            self.bytes -= len(old.pcm)
        self._entries[(text, language)] = _Entry(pcm, rate)
        self.bytes += size
        while self.bytes > self.max_bytes:
            _, evicted = self._entries.popitem(last=False)
            self.bytes -= len(evicted.pcm)

    def resize(self, max_bytes: int) -> None:
        """A new budget (``user_config``); entries beyond it are dropped, oldest first."""
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0, got {max_bytes}")
        self.max_bytes = max_bytes
        while self.bytes > self.max_bytes and self._entries:
            _, evicted = self._entries.popitem(last=False)
            self.bytes -= len(evicted.pcm)
