"""Final transcripts land in the call store by UTC day, one JSON line per segment (schema 1)."""

from __future__ import annotations

import json
from pathlib import Path

from pbx_edge.ai_link.protocol import TranscriptEvent
from pbx_edge.ai_link.transcripts import SCHEMA_VERSION, TranscriptStore
from pbx_edge.ops.models import Event

ANSWERED = 1_764_028_800.0 + 3600 * 23.5  # 2025-11-25 23:30 UTC


def _call() -> Event:
    return Event(
        id="e1", name="call.answered", time=ANSWERED, node_id="edge-1", call_id="c42",
        a_call_id="a@x", b_call_id="b@y", caller="1001", callee="2002", data={"codec": "PCMU/8000"},
    )  # fmt: skip


def test_segments_append_in_order_under_the_answer_day(tmp_path: Path) -> None:
    store = TranscriptStore(tmp_path, wall=lambda: ANSWERED + 5)
    first = TranscriptEvent(
        final=True, leg="caller", text="hello", start=0.2, end=0.9, confidence=0.8, id="u1"
    )
    second = TranscriptEvent(final=True, leg="callee", text="안녕하세요", start=1.0, end=2.0, language="ko")
    path = store.append(_call(), first)
    assert store.append(_call(), second) == path
    assert path == tmp_path / "2025-11-25" / "c42.jsonl"
    records = store.read("c42", ANSWERED)
    assert [(r["leg"], r["text"]) for r in records] == [("caller", "hello"), ("callee", "안녕하세요")]
    assert records[0] == {
        "schema": SCHEMA_VERSION, "call_id": "c42", "a_call_id": "a@x", "b_call_id": "b@y",
        "node_id": "edge-1", "caller": "1001", "callee": "2002", "answered_at": ANSWERED, "leg": "caller",
        "speaker": None, "text": "hello", "start": 0.2, "end": 0.9, "confidence": 0.8, "language": None,
        "utterance_id": "u1", "received_at": ANSWERED + 5,
    }  # fmt: skip
    assert "안녕하세요" in path.read_text(encoding="utf-8")  # UTF-8, not escaped
    assert all(json.loads(line) for line in path.read_text(encoding="utf-8").splitlines())
    assert store.read("nope", ANSWERED) == []
