"""Extensions marked away (``PUT /api/extensions/{ext}/away``): calls to them may go to the AI
attendant at once (the ``away`` trigger) instead of ringing.

Kept in memory by the node; an away flag does not survive a restart (it is a presence state, set
again by whoever manages it).
"""

from __future__ import annotations

from collections.abc import Callable


class AwayTable:
    def __init__(self) -> None:
        self._away: set[str] = set()
        self.on_back: list[Callable[[str], None]] = []  # called with an extension no longer away

    def set_away(self, extension: str, away: bool) -> None:
        if away:
            self._away.add(extension)
        elif extension in self._away:
            self._away.discard(extension)
            for listener in self.on_back:
                listener(extension)

    def is_away(self, extension: str) -> bool:
        return extension in self._away

    def all(self) -> list[str]:
        return sorted(self._away)
