"""Final transcripts land in the call store by UTC day, one JSON line per segment or gap (schema 2);
the live view of a call keeps finals, gaps and the newest partial per leg."""

from __future__ import annotations

import json
from pathlib import Path

from pbx_edge.ai_link.live import LiveTranscript, TranscriptItem
from pbx_edge.ai_link.protocol import TranscriptEvent, TranscriptGap
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
        "node_id": "edge-1", "caller": "1001", "callee": "2002", "answered_at": ANSWERED, "kind": "segment",
        "leg": "caller", "speaker": None, "text": "hello", "start": 0.2, "end": 0.9, "confidence": 0.8,
        "language": None, "utterance_id": "u1", "reason": None, "received_at": ANSWERED + 5,
    }  # fmt: skip
    assert "안녕하세요" in path.read_text(encoding="utf-8")  # UTF-8, not escaped
    assert all(json.loads(line) for line in path.read_text(encoding="utf-8").splitlines())
    assert store.read("nope", ANSWERED) == []


def test_gaps_are_stored_and_a_call_is_found_whatever_its_day(tmp_path: Path) -> None:
    store = TranscriptStore(tmp_path, wall=lambda: ANSWERED + 5)
    store.append(_call(), TranscriptEvent(final=True, leg="caller", text="hi", start=0.0, end=0.4))
    store.append(_call(), TranscriptGap(leg="callee", start=3.0, end=7.5, reason="stt_failed"))
    records = store.find("c42")
    assert records is not None
    gap = records[1]
    assert (gap["kind"], gap["leg"], gap["reason"], gap["text"], gap["end"]) == (
        "gap", "callee", "stt_failed", "", 7.5
    )  # fmt: skip
    assert [TranscriptItem.from_record(r).kind for r in records] == ["segment", "gap"]
    assert store.find("other") is None
    for hostile in ("../c42", "*", "", "c42/../../etc"):
        assert store.find(hostile) is None
    with (tmp_path / "2025-11-25" / "c42.jsonl").open("a") as out:
        out.write('{"schema": 2, "kind": "seg')  # a write cut short by a crash
    assert len(store.find("c42") or []) == 2


def test_schema_1_records_read_back_as_segments() -> None:
    old = {"schema": 1, "leg": "caller", "text": "hi", "start": 0.0, "end": 0.5, "speaker": None}
    assert TranscriptItem.from_record(old).kind == "segment"


def _said(final: bool, text: str, uid: str, leg: str = "caller") -> TranscriptEvent:
    return TranscriptEvent.model_validate(
        {"final": final, "leg": leg, "text": text, "start": 1.0, "end": 2.0, "id": uid}
    )


def test_live_transcript_keeps_the_newest_partial_per_leg_until_its_final() -> None:
    live = LiveTranscript("c1")
    live.add(_said(False, "hel", "u1"))
    live.add(_said(False, "hello wor", "u1"))
    live.add(_said(False, "yes", "v1", leg="callee"))
    view = live.view()
    assert view.live and view.items == []
    assert sorted((p.leg, p.text) for p in view.partials) == [("callee", "yes"), ("caller", "hello wor")]
    live.add(_said(True, "hello world", "u1"))
    live.add(TranscriptGap(leg="callee", start=2.0, end=4.0, reason="disconnected"))
    view = live.view()
    assert [(i.kind, i.text) for i in view.items] == [("segment", "hello world"), ("gap", "")]
    assert view.partials == []  # the final replaced the caller's, the gap ended the callee's


def test_live_transcript_bounds_memory_and_says_so() -> None:
    live = LiveTranscript("c1", max_items=20)
    for n in range(25):
        live.add(_said(True, f"t{n}", f"u{n}"))
    view = live.view()
    assert view.truncated and len(view.items) <= 20 and view.items[-1].text == "t24"
