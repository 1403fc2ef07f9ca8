"""The data the knowledge pipeline passes between its stages (pydantic: validated at each boundary).

A :class:`CallRecord` is one call read from the call store (pbx_edge/ai_link/transcripts.py, schema 2:
final segments and gaps per leg); an :class:`Exchange` is a question turn and the turns that answer
it; a :class:`QAItem` is one piece of knowledge as it is stored in Qdrant; a :class:`GoldFact` is what
the sample-data generator knows to be true, for the evaluation.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["CallRecord", "Exchange", "GoldFact", "Language", "QAItem", "ReviewStatus", "Turn"]

Language = Literal["en", "ko"]
ReviewStatus = Literal["unreviewed", "approved", "rejected"]
Leg = Literal["caller", "callee"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Turn(_Model):
    """One final transcript segment of a call (a stored record of kind ``segment``)."""

    leg: Leg
    text: str
    start: float = Field(ge=0)  # media seconds on the leg's clock
    end: float = Field(ge=0)
    speaker: str | None = None
    language: str | None = None
    confidence: float | None = Field(None, ge=0, le=1)


class CallRecord(_Model):
    """One call of the store: metadata and its turns in time order (both legs interleaved)."""

    call_id: str
    day: str  # YYYY-MM-DD, the store's folder (UTC day the call was answered)
    answered_at: float
    node_id: str | None = None
    caller: str | None = None
    callee: str | None = None
    business_unit: str | None = None  # from the store's metadata when present (sample data: the business)
    turns: tuple[Turn, ...]
    gap_seconds: float = 0.0  # media without a transcript (stored gap records)


class Exchange(_Model):
    """A question asked on one leg and the turns of the other leg that answer it."""

    call_id: str
    language: Language
    question: str
    answer: str
    asked_by: Leg
    start: float
    end: float
    answered_at: float  # the call's answer time (UNIX), for first/last seen
    business_unit: str | None = None


class QAItem(_Model):
    """One piece of knowledge (a Qdrant point's payload)."""

    question: str = Field(min_length=3)
    answer: str = Field(min_length=1)
    language: Language
    source_call_ids: tuple[str, ...] = Field(min_length=1)
    first_seen: float
    last_seen: float
    support: int = Field(1, ge=1)  # how many exchanges said it
    labels: tuple[str, ...] = ()
    review_status: ReviewStatus = "unreviewed"
    business_unit: str | None = None


class GoldFact(_Model):
    """A fact the sample-data generator put into calls, and held-out paraphrases to ask it with."""

    fact_id: str
    business_unit: str
    language: Language
    question: str  # canonical form
    answer: str
    paraphrases: tuple[str, ...]  # used in the generated calls
    held_out: tuple[str, ...]  # never in a call: the retrieval evaluation's queries
