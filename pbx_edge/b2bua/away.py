"""Extensions marked away (``PUT /api/extensions/{ext}/away``): calls to them may go to the AI
attendant at once (the ``away`` trigger) instead of ringing.

Kept in memory by the node; an away flag does not survive a restart (it is a presence state, set
again by whoever manages it).
"""

from __future__ import annotations


class AwayTable:
    def __init__(self) -> None:
        self._away: set[str] = set()

    def set_away(self, extension: str, away: bool) -> None:
        if away:
            self._away.add(extension)
        else:
            self._away.discard(extension)

    def is_away(self, extension: str) -> bool:
        return extension in self._away

    def all(self) -> list[str]:
        return sorted(self._away)
