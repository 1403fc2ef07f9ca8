"""A knowledge point's identity and payload (:mod:`pipelines.knowledge_base` stores them): the
deterministic id of a fact, and the fields merged from the items of each run (sources, first/last
seen, support, question wordings), always recomputed from ``runs`` so that a re-run changes nothing
and a run's contribution can be taken out again."""

from __future__ import annotations

import unicodedata
import uuid
from datetime import UTC, datetime
from typing import Any

from .models import QAItem

__all__ = [
    "NAMESPACE",
    "canonical_key",
    "canonical_question",
    "derive_payload",
    "merge_item",
    "month_of",
    "new_payload",
    "point_id",
]

NAMESPACE = uuid.UUID("5b8f0c1e-7a43-5d0e-9a5e-2f6c1b9d4e21")  # fixed forever: ids depend on it


def canonical_question(question: str) -> str:
    """The form two extractions of the same question share: NFKC, casefold, no punctuation/symbols."""
    text = unicodedata.normalize("NFKC", question).casefold()
    return " ".join("".join(" " if unicodedata.category(c)[0] in "PS" else c for c in text).split())


def canonical_key(language: str, business_unit: str | None, question: str) -> str:
    """``language|business unit|canonical question``: what a point id is derived from."""
    return f"{language}|{(business_unit or '').strip().casefold()}|{canonical_question(question)}"


def point_id(language: str, business_unit: str | None, question: str) -> str:
    """The deterministic point id of a fact (uuid5 of :func:`canonical_key`, the same in every process)."""
    return str(uuid.uuid5(NAMESPACE, canonical_key(language, business_unit, question)))


def month_of(ts: float) -> str:
    """``YYYY_MM`` of a UNIX time (UTC)."""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y_%m")


def derive_payload(payload: dict[str, Any], max_wordings: int) -> dict[str, Any]:
    """Recompute the fields that follow from ``runs`` (sources, support, first/last seen, wordings)."""
    runs: dict[str, dict[str, Any]] = payload["runs"]
    said: dict[str, tuple[str, set[str]]] = {}  # canonical wording -> (its text, calls that said it)
    for r in runs.values():
        for canon, entry in r.get("wordings", {}).items():
            text, calls = said.get(canon, (entry["text"], set()))
            said[canon] = (min(text, entry["text"]), calls | set(entry["calls"]))
    own = canonical_question(payload["question"])
    others = sorted((c for c in said if c != own), key=lambda c: (-len(said[c][1]), c))
    payload["questions"] = [payload["question"], *(said[c][0] for c in others)][:max_wordings]
    calls = sorted({c for r in runs.values() for c in r["calls"]})
    payload["source_call_ids"] = calls
    payload["support"] = max(len(calls), 1)
    if runs:
        payload["first_seen"] = min(r["first_seen"] for r in runs.values())
        payload["last_seen"] = max(r["last_seen"] for r in runs.values())
    payload["run_ids"] = sorted(runs)
    payload["month"] = month_of(payload["last_seen"])
    return payload


def new_payload(item: QAItem) -> dict[str, Any]:
    """A new point's payload from its first item (no runs yet: :func:`merge_item` adds the item)."""
    payload = item.model_dump(mode="json")
    payload.update(runs={}, key=canonical_key(item.language, item.business_unit, item.question))
    return payload


def merge_item(payload: dict[str, Any], item: QAItem, run_id: str, max_wordings: int) -> dict[str, Any]:
    """``item`` merged into a copy of ``payload`` (question, answer, review status kept; the item's
    question wording recorded under the run)."""
    out = dict(payload)
    runs = {k: dict(v) for k, v in payload["runs"].items()}
    run = runs.setdefault(run_id, {"calls": [], "first_seen": item.first_seen, "last_seen": item.last_seen})
    run["calls"] = sorted(set(run["calls"]) | set(item.source_call_ids))
    run["first_seen"] = min(run["first_seen"], item.first_seen)
    run["last_seen"] = max(run["last_seen"], item.last_seen)
    wordings = dict(run.get("wordings", {}))
    canon = canonical_question(item.question)
    seen = wordings.get(canon, {"text": item.question, "calls": []})
    wordings[canon] = {
        "text": min(seen["text"], item.question),
        "calls": sorted(set(seen["calls"]) | set(item.source_call_ids)),
    }
    run["wordings"] = wordings
    out["runs"] = runs
    out["labels"] = list(payload["labels"]) + [x for x in item.labels if x not in payload["labels"]]
    return derive_payload(out, max_wordings)
