"""A call's transcript as the admin API shows it: kept in memory while the call lives, read back
from the call store (:mod:`pbx_edge.ai_link.transcripts`) once it has ended.

Finals and gaps are kept in the order they arrived (per leg that is media order; the two legs
interleave as their transcripts come back); partials only as the newest one per leg, dropped when
the final with the same utterance id arrives.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from pbx_edge.ai_link.protocol import LegName, TranscriptEvent, TranscriptGap

__all__ = ["CallTranscript", "LiveTranscript", "TranscriptItem"]

MAX_ITEMS_PER_CALL = 2000  # finals and gaps kept in memory per live call (about 3 h of talk)


class TranscriptItem(BaseModel):
    """One segment, partial or gap; the fields of a stored record (schema 2) that a client needs."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    kind: Literal["segment", "partial", "gap"]
    leg: LegName
    start: float = Field(description="Media seconds on the leg's clock")
    end: float
    text: str = ""
    speaker: str | None = Field(None, description="Diarization label within the leg")
    confidence: float | None = None
    language: str | None = None
    utterance_id: str | None = None
    reason: str | None = Field(None, description="Gaps: disconnected, overflow or stt_failed")

    @classmethod
    def of(cls, message: TranscriptEvent | TranscriptGap) -> TranscriptItem:
        if isinstance(message, TranscriptGap):
            return cls(kind="gap", leg=message.leg, start=message.start, end=message.end,
                       reason=message.reason)  # fmt: skip
        return cls(
            kind="segment" if message.final else "partial",
            leg=message.leg,
            start=message.start,
            end=message.end,
            text=message.text,
            speaker=message.speaker,
            confidence=message.confidence,
            language=message.language,
            utterance_id=message.id,
        )

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> TranscriptItem:
        """A stored record; schema 1 records (no ``kind``) are segments."""
        return cls.model_validate({"kind": "segment", **record})


class CallTranscript(BaseModel):
    model_config = ConfigDict(frozen=True)

    call_id: str
    live: bool = Field(description="True while the call is up (partials may still change)")
    items: list[TranscriptItem] = Field(description="Final segments and gaps, in arrival order")
    partials: list[TranscriptItem] = Field(description="The newest partial of each leg, if any")
    truncated: bool = Field(False, description="Older items were dropped from memory (see the store)")


class LiveTranscript:
    """The transcript of one live call."""

    def __init__(self, call_id: str, max_items: int = MAX_ITEMS_PER_CALL) -> None:
        self.call_id = call_id
        self.max_items = max_items
        self.items: list[TranscriptItem] = []
        self.partials: dict[LegName, TranscriptItem] = {}
        self.truncated = False

    def add(self, message: TranscriptEvent | TranscriptGap) -> None:
        item = TranscriptItem.of(message)
        if item.kind == "partial":
            self.partials[item.leg] = item
            return
        partial = self.partials.get(item.leg)
        if partial is not None and (item.kind == "gap" or partial.utterance_id == item.utterance_id):
            del self.partials[item.leg]
        if len(self.items) >= self.max_items:
            del self.items[: self.max_items // 10]  # drop the oldest tenth; the store has them all
            self.truncated = True
        self.items.append(item)

    def view(self) -> CallTranscript:
        return CallTranscript(
            call_id=self.call_id,
            live=True,
            items=list(self.items),
            partials=list(self.partials.values()),
            truncated=self.truncated,
        )
